#!/bin/sh
# The guest half of tests/it/vm.rs, run once as root by hostrun.service
# (tests/vm/configure-rootfs.sh) in a booted Debian guest, from the 9p share mounted on
# /mnt/host. It drives ferry.service through install, start, upload, watchdog, upgrades,
# remove and purge, and writes what it saw to /mnt/host/out: `facts` (key=value lines) and
# raw outputs (systemctl status, journal, write probes).
# It judges nothing: the test on the host asserts on these files and on what its tus server
# received. Every wait is bounded, so a broken step leaves its facts and the run goes on.
#
# The share holds (written by the test): ferry_1.deb (the package under test), ferry_2.deb to
# ferry_4.deb (the same package with a higher version, for the upgrades; ferry_2's unit has a
# changed Description=, ferry_4's packaged ferry.toml a new last line), ferry.toml (the
# admin's configuration), auth-header (the secret), cam1.bin and cam2.bin (spool files),
# server-port (the tus server's port on the host) and probe-dirs (the directories to try
# writing to).
set -u
H=/mnt/host
O=$H/out
mkdir -p "$O"
# The console (hostrun.service's stdout) gets one line per step; everything else goes to run.log.
exec 3>&1 >"$O/run.log" 2>&1
set -x

fact() { printf '%s=%s\n' "$1" "$2" >>"$O/facts"; }
step() {
    echo "guest: [$(cut -d' ' -f1 /proc/uptime)] $*" >&3
    echo "=== [$(cut -d' ' -f1 /proc/uptime)] $*"
}
prop() { systemctl show -p "$1" --value ferry.service; }
uptime_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
# wait_for SECONDS COMMAND...: polls COMMAND every 0.2 s; false if it never succeeded.
wait_for() {
    limit=$(($(uptime_ms) + $1 * 1000))
    shift
    until "$@"; do
        [ "$(uptime_ms)" -lt "$limit" ] || return 1
        sleep 0.2
    done
}
is_active() { [ "$(prop ActiveState)" = active ]; }
# The single process state letter of PID $1 (R, S, T ...), from /proc/PID/stat.
proc_state() { sed 's/^.*) \(.\).*/\1/' "/proc/$1/stat" 2>/dev/null; }
is_stopped() { [ "$(proc_state "$1")" = T ]; }
main_pid_is_stopped() {
    p=$(prop MainPID)
    [ "$p" != 0 ] && is_stopped "$p"
}
gone_to_done() { [ ! -e "/var/spool/ferry/$1" ] && [ -e "/var/spool/ferry/done/$1" ]; }
status_says() { prop StatusText | grep -q "$1"; }
main_pid_changed() { p=$(prop MainPID) && [ "$p" != 0 ] && [ "$p" != "$1" ] && is_active; }

step "boot"
fact boot_uptime_ms "$(uptime_ms)"
fact systemd_version "$(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')"
fact guest_arch "$(dpkg --print-architecture)"
fact guest_machine "$(uname -m)"

# qemu's user-mode NIC, restricted: its only way out is the guestfwd 10.0.2.100:80 -> the
# test's tus server. No DHCP client in the image: a static address.
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
# Without the restriction, 10.0.2.2 would be the host's loopback, where the tus server listens.
timeout 10 bash -c "exec 5<>/dev/tcp/10.0.2.2/$(cat "$H/server-port")"
fact net_host_loopback_rc $?

step "install ferry_1.deb"
dpkg -i "$H/ferry_1.deb" >"$O/dpkg-install.log" 2>&1
fact install_rc $?
fact install_version "$(dpkg-query -W -f='${Version}' ferry)"
fact install_enabled "$(systemctl is-enabled ferry.service)"
fact install_active "$(systemctl is-active ferry.service)"
# The files on disk are the packaged ones (md5sums; a corrupt SD card shows here).
dpkg --verify ferry >"$O/dpkg-verify.txt" 2>&1
fact install_verify_lines "$(wc -l <"$O/dpkg-verify.txt")"
fact install_md5sums_lines "$(wc -l </var/lib/dpkg/info/ferry.md5sums)"

# The admin's part: a configuration and the secret (root-only, as the unit's comment says).
install -m 0644 "$H/ferry.toml" /etc/ferry/ferry.toml
install -m 0600 "$H/auth-header" /etc/ferry/auth-header
fact conf_sha_edited "$(sha256sum </etc/ferry/ferry.toml | cut -d' ' -f1)"
# ferry's own user cannot read the secret: only LoadCredential= can hand it over.
setpriv --reuid=ferry --regid=ferry --clear-groups cat /etc/ferry/auth-header \
    >/dev/null 2>"$O/auth-read-as-ferry.txt"
fact auth_read_as_ferry_rc $?

step "start, held before READY=1"
# The unit's own command behind a shell that stops itself first: the main process exists
# (systemd forked it) but ferry has not run, so it cannot have sent READY=1. The shell execs
# ferry, so the main PID stays the same and NotifyAccess=main still admits ferry.
exec_start=$(sed -n 's/^ExecStart=//p' /usr/lib/systemd/system/ferry.service)
fact unit_exec_start "$exec_start"
D=/run/systemd/system/ferry.service.d
mkdir -p "$D"
# "$$$$" in the unit file is "$$" (the shell's PID) to the shell.
printf '[Service]\nExecStart=\nExecStart=/bin/sh -c %s\n' \
    "'kill -STOP \$\$\$\$; exec $exec_start'" >"$D/50-hold.conf"
cat "$D/50-hold.conf"
systemctl daemon-reload
systemctl show -p ExecStart ferry.service
systemctl start --no-block ferry.service
wait_for 30 main_pid_is_stopped
fact held_stopped $?
held_pid=$(prop MainPID)
fact held_pid "$held_pid"
sleep 3
fact held_comm "$(cat "/proc/$held_pid/comm")"
fact held_active_state "$(prop ActiveState)"
fact held_sub_state "$(prop SubState)"
fact held_status_text "$(prop StatusText)"
fact held_exec_main_start_us "$(prop ExecMainStartTimestampMonotonic)"
kill -CONT "$held_pid"
wait_for 30 is_active
fact released_active $?
fact released_main_pid "$(prop MainPID)"
fact released_comm "$(cat "/proc/$(prop MainPID)/comm")"
fact released_active_enter_us "$(prop ActiveEnterTimestampMonotonic)"
fact released_status_text "$(prop StatusText)"

step "restart with a short watchdog"
# WatchdogSec= shortened from 60 s so the test need not wait minutes: a drop-in, as an admin
# would write one (RestartSec= too, to be quick). ferry keeps running normally through the
# hardening and upload steps below, two watchdog periods at least, before it is stopped.
rm "$D/50-hold.conf"
printf '[Service]\nWatchdogSec=6\nRestartSec=1\n' >"$D/50-watchdog.conf"
systemctl daemon-reload
t0=$(uptime_ms)
systemctl restart ferry.service
fact restart_rc $?
fact restart_wall_ms $(($(uptime_ms) - t0))
fact start_exec_main_start_us "$(prop ExecMainStartTimestampMonotonic)"
fact start_active_enter_us "$(prop ActiveEnterTimestampMonotonic)"
fact start_status_text "$(prop StatusText)"
fact wd_watchdog_usec "$(prop WatchdogUSec)"
wd_pid1=$(prop MainPID)
fact wd_pid1 "$wd_pid1"
fact wd_nrestarts1 "$(prop NRestarts)"
wd_started=$(uptime_ms)
systemctl status --no-pager --full ferry.service >"$O/status-started.txt" 2>&1

step "hardening"
pid=$(prop MainPID)
fact hardening_pid "$pid"
grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' \
    "/proc/$pid/status" >"$O/proc-status.txt"
nsenter -t "$pid" -m findmnt -rn -o TARGET,SOURCE,FSTYPE,OPTIONS >"$O/ns-mounts.txt" 2>&1
ferry_uid=$(id -u ferry)
ferry_gid=$(id -g ferry)
spool_gid=$(getent group ferry-spool | cut -d: -f3)
fact ferry_uid "$ferry_uid"
fact spool_gid "$spool_gid"
# One write attempt in each directory listed in probe-dirs, from inside ferry's mount
# namespace: once as root (what the mounts allow) and once as ferry (its user and groups, no
# capabilities). Then whether the file shows in the real directory (PrivateTmp= hides some).
# Dot names: ferry ignores them in the spool.
probe_dirs=$(cat "$H/probe-dirs")
# shellcheck disable=SC2016 # expanded by the shell in the namespace
try_writes='who=$1; shift; for d; do
    err=$( { echo x >"$d/.vm-probe-$who"; } 2>&1 )
    printf "%s\t%s\t%s\n" "$d" "$?" "$(echo $err)"
done'
nsenter -t "$pid" -m sh -c "$try_writes" sh root $probe_dirs >"$O/probe-root.raw" 2>&1
nsenter -t "$pid" -m setpriv --reuid="$ferry_uid" --regid="$ferry_gid" --groups="$spool_gid" \
    --inh-caps=-all --bounding-set=-all --no-new-privs \
    sh -c "$try_writes" sh ferry $probe_dirs >"$O/probe-ferry.raw" 2>&1
tab=$(printf '\t')
: >"$O/probes.txt"
for who in root ferry; do
    while IFS=$tab read -r dir rc err; do
        seen=no
        [ -e "$dir/.vm-probe-$who" ] && seen=yes
        printf '%s\t%s\t%s\t%s\n' "$who" "$dir" "$rc/$seen" "$err" >>"$O/probes.txt"
    done <"$O/probe-$who.raw"
done
# shellcheck disable=SC2016 # expanded by sh -c
remove_probes='for d; do rm -f "$d"/.vm-probe-*; done'
sh -c "$remove_probes" sh $probe_dirs
nsenter -t "$pid" -m sh -c "$remove_probes" sh $probe_dirs

step "upload cam1.bin"
# As a spool writer should: write under an ignored name, then rename into place.
cp "$H/cam1.bin" /var/spool/ferry/.cam1.bin.part
mv /var/spool/ferry/.cam1.bin.part /var/spool/ferry/cam1.bin
t0=$(uptime_ms)
wait_for 90 gone_to_done cam1.bin
fact cam1_moved $?
fact cam1_ms $(($(uptime_ms) - t0))
cmp "$H/cam1.bin" /var/spool/ferry/done/cam1.bin
fact cam1_done_same $?
wait_for 20 status_says '1 done'
fact cam1_status_1_done $?
systemctl status --no-pager --full ferry.service >"$O/status-uploaded.txt" 2>&1
ls -la /var/spool/ferry /var/spool/ferry/done /var/spool/ferry/failed

step "watchdog"
# ferry has run for two watchdog periods (6 s) or more: it pings, so it was left alone.
while [ $(($(uptime_ms) - wd_started)) -lt 12000 ]; do sleep 0.5; done
fact wd_alive_ms $(($(uptime_ms) - wd_started))
fact wd_pid_alive "$(prop MainPID)"
fact wd_nrestarts_alive "$(prop NRestarts)"
# Hung: stopped, it sends nothing.
kill -STOP "$wd_pid1"
t0=$(uptime_ms)
wait_for 60 main_pid_changed "$wd_pid1"
fact wd_restarted $?
fact wd_restart_ms $(($(uptime_ms) - t0))
fact wd_pid2 "$(prop MainPID)"
fact wd_nrestarts2 "$(prop NRestarts)"
fact wd_pid1_alive "$([ -e "/proc/$wd_pid1" ] && echo yes || echo no)"
# No daemon-reload here: the upgrade's postinst must do it (checked by WatchdogUSec= and the
# new Description= after the upgrade).
rm "$D/50-watchdog.conf"

step "upgrade a running ferry to ferry_2.deb"
fact up_running_pid_before "$(prop MainPID)"
fact up_running_invocation_before "$(prop InvocationID)"
dpkg -i "$H/ferry_2.deb" >"$O/dpkg-upgrade-running.log" 2>&1
fact up_running_rc $?
fact up_running_version "$(dpkg-query -W -f='${Version}' ferry)"
wait_for 30 is_active
fact up_running_active $?
fact up_running_pid_after "$(prop MainPID)"
fact up_running_invocation_after "$(prop InvocationID)"
fact up_running_description "$(prop Description)"
fact up_running_need_reload "$(prop NeedDaemonReload)"
fact up_running_watchdog_usec "$(prop WatchdogUSec)"
fact up_running_conf_sha "$(sha256sum </etc/ferry/ferry.toml | cut -d' ' -f1)"
fact up_running_etc_ferry "$(ls -A /etc/ferry | tr '\n' ' ')"

step "upload cam2.bin with the upgraded ferry"
cp "$H/cam2.bin" /var/spool/ferry/.cam2.bin.part
mv /var/spool/ferry/.cam2.bin.part /var/spool/ferry/cam2.bin
wait_for 90 gone_to_done cam2.bin
fact cam2_moved $?
cmp "$H/cam2.bin" /var/spool/ferry/done/cam2.bin
fact cam2_done_same $?

step "upgrade a stopped (enabled) ferry to ferry_3.deb"
systemctl stop ferry.service
fact up_stopped_enabled_before "$(systemctl is-enabled ferry.service)"
fact up_stopped_active_before "$(systemctl is-active ferry.service)"
fact up_stopped_start_us_before "$(prop ExecMainStartTimestampMonotonic)"
dpkg -i "$H/ferry_3.deb" >"$O/dpkg-upgrade-stopped.log" 2>&1
fact up_stopped_rc $?
fact up_stopped_version "$(dpkg-query -W -f='${Version}' ferry)"
# A start would be under way or done by now; look twice, 3 s apart.
fact up_stopped_active_after "$(systemctl is-active ferry.service)"
sleep 3
fact up_stopped_active_later "$(systemctl is-active ferry.service)"
fact up_stopped_start_us_after "$(prop ExecMainStartTimestampMonotonic)"
fact up_stopped_enabled_after "$(systemctl is-enabled ferry.service)"
fact up_stopped_conf_sha "$(sha256sum </etc/ferry/ferry.toml | cut -d' ' -f1)"

step "systemd-analyze security"
systemd-analyze security --no-pager ferry.service >"$O/security.txt" 2>&1
fact security_rc $?

step "upgrade a disabled ferry to ferry_4.deb, whose packaged ferry.toml changed"
systemctl disable ferry.service
fact up_conf_enabled_before "$(systemctl is-enabled ferry.service)"
# As an unattended upgrade runs it: no terminal to answer dpkg's conffile question.
dpkg -i "$H/ferry_4.deb" </dev/null >"$O/dpkg-upgrade-conffile-plain.log" 2>&1
fact up_conf_plain_rc $?
fact up_conf_plain_status "$(dpkg-query -W -f='${Status}' ferry)"
# What the README tells operators to use: keep their file, put the new one beside it.
dpkg -i --force-confdef --force-confold "$H/ferry_4.deb" </dev/null \
    >"$O/dpkg-upgrade-conffile.log" 2>&1
fact up_conf_rc $?
fact up_conf_version "$(dpkg-query -W -f='${Version}' ferry)"
fact up_conf_status "$(dpkg-query -W -f='${Status}' ferry)"
fact up_conf_sha "$(sha256sum </etc/ferry/ferry.toml | cut -d' ' -f1)"
fact up_conf_dist_note "$(tail -n1 /etc/ferry/ferry.toml.dpkg-dist 2>/dev/null)"
fact up_conf_enabled_after "$(systemctl is-enabled ferry.service)"
fact up_conf_active_after "$(systemctl is-active ferry.service)"

step "remove a running ferry, then purge"
systemctl start ferry.service
wait_for 30 is_active
fact rm_active_before $?
dpkg -r ferry >"$O/dpkg-remove.log" 2>&1
fact rm_rc $?
fact rm_active_after "$(systemctl is-active ferry.service)"
fact rm_processes "$(pgrep -c -u ferry)"
fact rm_binary "$([ -e /usr/bin/ferry ] && echo present || echo gone)"
fact rm_conf_sha "$(sha256sum </etc/ferry/ferry.toml | cut -d' ' -f1)"
fact rm_state "$([ -d /var/lib/ferry ] && echo present || echo gone)"
dpkg -P ferry >"$O/dpkg-purge.log" 2>&1
fact purge_rc $?
fact purge_etc_ferry "$(ls -A /etc/ferry 2>/dev/null | tr '\n' ' ')"
fact purge_state "$([ -e /var/lib/ferry ] && echo present || echo gone)"
fact purge_spool_done "$(ls /var/spool/ferry/done | tr '\n' ' ')"
fact purge_user "$(getent passwd ferry >/dev/null && echo present || echo gone)"
fact purge_unit "$(systemctl show -p LoadState --value ferry.service)"
fact purge_wants "$(ls /etc/systemd/system/multi-user.target.wants | grep -c ferry)"

# Boot is long finished by now (hostrun.service is part of it, so not at the start of run.sh).
systemd-analyze >"$O/boot-time.txt" 2>&1
journalctl -b --no-pager -o short-monotonic -u ferry.service >"$O/journal-ferry.txt" 2>&1
journalctl -b --no-pager -o short-monotonic >"$O/journal-all.txt" 2>&1
step "done"
fact finished yes
