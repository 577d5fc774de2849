#!/bin/sh
# Configures a debootstrapped Debian tree for scripts/vm-test (run on the host, as root):
#   configure-rootfs.sh ROOTFS
# - hostname vmtest, /dev/vda as /, no root password (the serial console is never logged in to);
# - the 9p modules load at boot;
# - hostrun.service: when the kernel command line has hostrun=1, it mounts the 9p share tagged
#   `host` on /mnt/host, runs /mnt/host/run.sh (output to the journal and the serial console),
#   writes its exit status to /mnt/host/run.rc and, with hostrun_poweroff=1, powers off.
#   Type=exec, not oneshot: a oneshot would hold up the end of boot while run.sh runs.
# - no apt timers, no apt cache.
# scripts/vm-test hashes this file into its image cache key: editing it rebuilds the image.
set -eu
R=$1

echo vmtest >"$R/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n' >"$R/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$R/etc/fstab"
chroot "$R" passwd -d root >/dev/null

printf '9p\n9pnet\n9pnet_virtio\n' >"$R/etc/modules-load.d/9p.conf"

cat >"$R/usr/local/sbin/hostrun" <<'SH'
#!/bin/sh
# Runs the host's /mnt/host/run.sh once (see hostrun.service).
grep -qw hostrun=1 /proc/cmdline || exit 0
mkdir -p /mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 host /mnt/host || {
    echo "hostrun: cannot mount the 9p share" >/dev/console
    systemctl --no-block poweroff
    exit 1
}
rc=0
sh /mnt/host/run.sh || rc=$?
echo "$rc" >/mnt/host/run.rc
sync
echo "hostrun: run.sh exited $rc"
if grep -qw hostrun_poweroff=1 /proc/cmdline; then
    systemctl --no-block poweroff
fi
SH
chmod 755 "$R/usr/local/sbin/hostrun"

cat >"$R/etc/systemd/system/hostrun.service" <<'UNIT'
[Unit]
Description=Run the host's /mnt/host/run.sh (scripts/vm-test)
After=multi-user.target

[Service]
Type=exec
ExecStart=/usr/local/sbin/hostrun
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/hostrun.service "$R/etc/systemd/system/multi-user.target.wants/hostrun.service"

rm -f "$R"/etc/systemd/system/timers.target.wants/apt-daily*.timer
rm -f "$R/etc/resolv.conf"
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin
