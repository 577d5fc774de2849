#!/bin/sh
# The guest half of tests/it/vm/powercut.rs: ferry.service in a Debian guest whose power the
# host cuts (kill -9 of qemu) again and again. It judges nothing: it sets the guest up, and at
# every boot it records what it finds, to the 9p share, for the host to check.
#
#   run.sh          (hostrun.service, every boot, after multi-user.target)
#       boot 0 ("first"): install the package and the admin's config, forward the journal to
#       the serial console (a file on the host: ferry's log up to the cut survives it), create
#       the first batch of spool files, make all of that durable (sync), start ferry, and wait
#       for the power to go. Later cut boots only wait. The final boot waits until ferry has
#       emptied the spool, records the end state and ferry's journal, and returns
#       (hostrun.service then powers off cleanly).
#   run.sh record SHARE   (ferry-vm-record.service, every boot after the first, ordered
#       Before=ferry.service, so nothing has touched the spool or the state yet): records the
#       kernel's lines about the disk (ext4's journal recovery), the spool (names and sizes),
#       whether /var/lib/ferry exists and what is in it; then, in a cut boot, tops the
#       spool up with the next batch when fewer than 3 files are left, and syncs the batch
#       before ferry starts (the spool's durability is the writer's job).
#
# The share holds (written by the host): ferry.deb, ferry.toml, pool.bin (random bytes),
# batches.txt (lines "BATCH NAME SIZE OFFSET": spool file NAME of batch BATCH is SIZE bytes of
# pool.bin from OFFSET), boot ("N MODE", MODE first|cut|final) and drain-seconds. It writes
# out/boot-N/: facts (key=value), kernel-disk.txt, spool.txt, state.txt, added.txt, and in the
# final boot end-spool.txt, end-state.txt, journal-ferry.txt and boot-time.txt. 9p writes reach the host at once: they
# survive the cut.
set -u
H=${2:-/mnt/host}
SPOOL=/var/spool/ferry
read -r N MODE <"$H/boot"
O=$H/out/boot-$N
mkdir -p "$O"

fact() { printf '%s=%s\n' "$1" "$2" >>"$O/facts"; }
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# The spool's regular files, dot files included: "NAME SIZE" (failed/NAME for the failed
# directory). Sizes, not checksums: hashing tens of MB under TCG would hold up ferry's start
# by seconds at every boot, and the batches are synced before ferry ever sees them.
list_spool() {
    for d in "$SPOOL" "$SPOOL/failed"; do
        [ -d "$d" ] || continue
        find "$d" -mindepth 1 -maxdepth 1 -type f | sort | while read -r f; do
            printf '%s %s\n' "${f#"$SPOOL"/}" "$(stat -c %s "$f")"
        done
    done
}
spool_count() { find "$SPOOL" -maxdepth 1 -type f ! -name '.*' | wc -l; }
# record_state KEY FILE: fact KEY (present or absent) and the state directory's tree in FILE.
record_state() {
    if [ -d /var/lib/ferry ]; then
        fact "$1" present
        find /var/lib/ferry -printf '%y %m %u %s %p\n' | sort -k5 >"$O/$2"
    else
        fact "$1" absent
        : >"$O/$2"
    fi
}
# add_batch B: spool files of batch B from pool.bin, written under ignored names, synced, then
# renamed into place and the directory synced: as a careful camera would write them.
add_batch() {
    grep "^$1 " "$H/batches.txt" | while read -r _ name size offset; do
        dd if="$H/pool.bin" of="$SPOOL/.$name.part" iflag=skip_bytes,count_bytes \
            skip="$offset" count="$size" bs=1M status=none
    done
    sync
    grep "^$1 " "$H/batches.txt" | while read -r _ name _; do
        mv "$SPOOL/.$name.part" "$SPOOL/$name"
        echo "$name" >>"$O/added.txt"
    done
    sync
    fact added_batch "$1"
}

if [ "${1:-}" = record ]; then
    fact record_uptime_ms "$(uptime_ms)"
    dmesg | grep -iE 'ext4|vda|i/o error' >"$O/kernel-disk.txt"
    list_spool >"$O/spool.txt"
    record_state state_dir state.txt
    if [ "$MODE" = cut ] && [ "$(spool_count)" -lt 3 ]; then
        add_batch "$N"
    fi
    fact recorded_ms "$(uptime_ms)"
    exit 0
fi

fact hostrun_uptime_ms "$(uptime_ms)"

if [ "$MODE" = first ]; then
    exec >"$O/first.log" 2>&1
    set -x
    # qemu's restricted user-mode NIC (its only way out is the guestfwd 10.0.2.100:80 to the
    # host's test server): a static address, set up at every boot before network-online.target,
    # which ferry.service waits for.
    cat >/etc/systemd/system/ferry-vm-net.service <<'UNIT'
[Unit]
Description=Static address on the test NIC (tests/vm/powercut.sh)
Before=network-online.target
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/ip link set eth0 up
ExecStart=/sbin/ip addr replace 10.0.2.15/24 dev eth0
[Install]
WantedBy=network-online.target
UNIT
    cat >/usr/local/sbin/ferry-vm-record <<'SH'
#!/bin/sh
# Runs the host's run.sh in record mode before ferry starts (tests/vm/powercut.sh).
grep -qw hostrun=1 /proc/cmdline || exit 0
mkdir -p /run/ferry-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /run/ferry-vm || exit 0
sh /run/ferry-vm/run.sh record /run/ferry-vm
umount /run/ferry-vm
exit 0
SH
    chmod 755 /usr/local/sbin/ferry-vm-record
    cat >/etc/systemd/system/ferry-vm-record.service <<'UNIT'
[Unit]
Description=Record the spool and ferry's state before ferry starts (tests/vm/powercut.sh)
# Early (it needs only the root file system and the 9p modules): it is done before ferry can
# start, instead of holding it up by several seconds under TCG.
DefaultDependencies=no
After=local-fs.target systemd-modules-load.service
Before=ferry.service shutdown.target
Conflicts=shutdown.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ferry-vm-record
StandardOutput=journal+console
[Install]
WantedBy=multi-user.target
UNIT
    systemctl enable ferry-vm-net.service ferry-vm-record.service
    # e2scrub_reap.service takes 15 s of every boot under TCG and checks nothing here.
    systemctl mask e2scrub_reap.service
    # Every journal line on the serial console, which the host writes to a file as it comes.
    mkdir -p /etc/systemd/journald.conf.d
    printf '[Journal]\nForwardToConsole=yes\nMaxLevelConsole=info\n' \
        >/etc/systemd/journald.conf.d/ferry-vm-console.conf
    systemctl restart systemd-journald.service
    systemctl start ferry-vm-net.service
    dpkg -i "$H/ferry.deb" >"$O/dpkg-install.log" 2>&1
    fact install_rc $?
    install -m 0644 "$H/ferry.toml" /etc/ferry/ferry.toml
    add_batch 0
    # The setup (package, units, config, spool) is durable before ferry starts: what the cuts
    # can lose from here on is ferry's own doing.
    sync
    fact ready_ms "$(uptime_ms)"
    systemctl start ferry.service
    fact start_rc $?
    fact started_ms "$(uptime_ms)"
    set +x
fi

if [ "$MODE" = final ]; then
    limit=$(($(uptime_ms) + $(cat "$H/drain-seconds") * 1000))
    while [ "$(spool_count)" -gt 0 ] && [ "$(uptime_ms)" -lt "$limit" ]; do
        sleep 0.5
    done
    fact drained "$([ "$(spool_count)" = 0 ] && echo yes || echo no)"
    fact drained_ms "$(uptime_ms)"
    # ferry's last state writes after the last delete.
    sleep 2
    list_spool >"$O/end-spool.txt"
    record_state end_state_dir end-state.txt
    journalctl -b --no-pager -o short-monotonic -u ferry.service >"$O/journal-ferry.txt" 2>&1
    {
        systemd-analyze
        systemd-analyze critical-chain ferry.service
        systemd-analyze blame | head -n 15
    } >"$O/boot-time.txt" 2>&1
    systemctl stop ferry.service
    fact stop_rc $?
    fact finished yes
    exit 0
fi

# A cut boot: ferry runs until the power goes (returning would power off).
exec sleep infinity
