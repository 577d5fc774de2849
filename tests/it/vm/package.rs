//! The package's life on the booted guest: repacked upgrades (running, stopped, disabled with
//! a changed conffile), remove and purge. See `tests/vm/guest.sh` for the steps.

use std::path::Path;
use std::process::Command;

use super::{Guest, Share, UPGRADED_DESCRIPTION};

/// The line ferry_4.deb adds to its packaged ferry.toml.
pub(super) const CONFFILE_LINE: &str = "# added by the upgrade check (tests/it/vm/package.rs)";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a repacked package changes besides its Version.
pub(super) enum Change<'a> {
    Nothing,
    /// The unit's Description=.
    Description(&'a str),
    /// A line appended to the packaged /etc/ferry/ferry.toml (a conffile).
    ConffileLine(&'a str),
}

/// `deb` again as `out` with Version `version` and `change`: the same binary, as the next
/// release would ship it. `work` is an empty scratch directory.
pub(super) fn repack(deb: &Path, work: &Path, out: &Path, version: &str, change: Change) {
    run(Command::new("dpkg-deb").arg("-R").arg(deb).arg(work));
    edit_lines(&work.join("DEBIAN/control"), |l| {
        l.starts_with("Version:")
            .then(|| format!("Version: {version}"))
    });
    if let Change::ConffileLine(line) = change {
        // Conffiles are not in md5sums (dpkg keeps their sums itself).
        let conf = work.join("etc/ferry/ferry.toml");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("{text}{line}\n")).unwrap();
    }
    if let Change::Description(description) = change {
        let unit = "usr/lib/systemd/system/ferry.service";
        edit_lines(&work.join(unit), |l| {
            l.starts_with("Description=")
                .then(|| format!("Description={description}"))
        });
        // Keep the package consistent for debsums: the unit's checksum changed.
        let md5sums = work.join("DEBIAN/md5sums");
        if md5sums.exists() {
            let sum = Command::new("md5sum")
                .arg(unit)
                .current_dir(work)
                .output()
                .unwrap();
            assert!(sum.status.success(), "md5sum: {sum:?}");
            let line = String::from_utf8(sum.stdout).unwrap().trim().to_string();
            edit_lines(&md5sums, |l| l.ends_with(unit).then(|| line.clone()));
        }
    }
    // gzip: quick to unpack under emulation.
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(work)
        .arg(out));
}

/// Rewrites the lines of `path` for which `f` returns a replacement; at least one must change.
fn edit_lines(path: &Path, f: impl Fn(&str) -> Option<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut changed = 0;
    let mut new: String = text
        .lines()
        .map(|l| match f(l) {
            Some(r) => {
                changed += 1;
                r
            }
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    new.push('\n');
    assert!(changed > 0, "{}: no line to change", path.display());
    std::fs::write(path, new).unwrap();
}

pub(super) fn check_upgrades(g: &Guest, share: &Share) {
    let edited = g.fact("conf_sha_edited");
    // A running ferry: restarted by the postinst's try-restart, on the new unit.
    g.expect("up_running_rc", "0", "dpkg -i of the upgrade");
    g.expect(
        "up_running_version",
        &share.versions[1],
        "the upgrade is installed",
    );
    g.expect(
        "up_running_active",
        "0",
        "ferry runs again after the upgrade",
    );
    assert_ne!(
        g.fact("up_running_pid_after"),
        g.fact("up_running_pid_before"),
        "the upgrade did not restart the running ferry (same PID)\n{}",
        g.context()
    );
    assert_ne!(
        g.fact("up_running_invocation_after"),
        g.fact("up_running_invocation_before"),
        "the upgrade did not restart the running ferry (same invocation)\n{}",
        g.context()
    );
    g.expect(
        "up_running_description",
        UPGRADED_DESCRIPTION,
        "systemd was reloaded and runs the upgraded unit",
    );
    g.expect("up_running_need_reload", "no", "no stale unit file");
    g.expect(
        "up_running_watchdog_usec",
        "1min",
        "the watchdog drop-in removed before the upgrade is gone: reloaded",
    );
    g.expect(
        "up_running_conf_sha",
        edited,
        "the admin's /etc/ferry/ferry.toml survives the upgrade",
    );
    g.expect(
        "up_running_etc_ferry",
        "auth-header ferry.toml ",
        "no .dpkg-new/.dpkg-dist beside the conffile",
    );
    // An enabled but stopped ferry: stays stopped.
    g.expect("up_stopped_rc", "0", "dpkg -i of the second upgrade");
    g.expect(
        "up_stopped_version",
        &share.versions[2],
        "the second upgrade is installed",
    );
    g.expect("up_stopped_enabled_before", "enabled", "enabled, stopped");
    g.expect("up_stopped_active_before", "inactive", "enabled, stopped");
    for key in ["up_stopped_active_after", "up_stopped_active_later"] {
        g.expect(
            key,
            "inactive",
            "the upgrade must not start a stopped ferry",
        );
    }
    g.expect(
        "up_stopped_start_us_after",
        g.fact("up_stopped_start_us_before"),
        "no start since the stop",
    );
    g.expect(
        "up_stopped_enabled_after",
        "enabled",
        "still enabled after the upgrade",
    );
    g.expect(
        "up_stopped_conf_sha",
        edited,
        "the admin's /etc/ferry/ferry.toml survives the second upgrade",
    );
}

/// A disabled ferry upgraded to a package whose own ferry.toml changed, as an unattended
/// upgrade runs dpkg (no terminal): plain `dpkg -i` stops at the conffile question;
/// `--force-confdef --force-confold` keeps the admin's file, puts the new one beside it as
/// `.dpkg-dist` and leaves the service disabled and stopped.
pub(super) fn check_conffile_upgrade(g: &Guest, share: &Share) {
    g.expect(
        "up_conf_enabled_before",
        "disabled",
        "disabled by the admin",
    );
    assert_ne!(
        g.fact("up_conf_plain_rc"),
        "0",
        "dpkg -i without a terminal and without --force-conf* cannot ask about the edited \
         ferry.toml, so it must fail (dpkg-upgrade-conffile-plain.log)\n{}",
        g.context()
    );
    g.expect(
        "up_conf_plain_status",
        "install ok unpacked",
        "the failed upgrade leaves the package unpacked, not configured",
    );
    g.expect("up_conf_rc", "0", "dpkg -i --force-confdef --force-confold");
    g.expect(
        "up_conf_version",
        &share.versions[3],
        "the upgrade is installed",
    );
    g.expect("up_conf_status", "install ok installed", "configured");
    g.expect(
        "up_conf_sha",
        g.fact("conf_sha_edited"),
        "the admin's ferry.toml is kept",
    );
    g.expect(
        "up_conf_dist_note",
        CONFFILE_LINE,
        "the new packaged ferry.toml is beside it as ferry.toml.dpkg-dist",
    );
    g.expect(
        "up_conf_enabled_after",
        "disabled",
        "a disabled ferry stays disabled",
    );
    g.expect("up_conf_active_after", "inactive", "and is not started");
}

/// `dpkg -r` of a running ferry stops it and keeps config and state; `dpkg -P` then deletes
/// the config and state, and keeps the spool (files there may never have been uploaded), the
/// admin's secret in /etc/ferry and the ferry user.
pub(super) fn check_remove_and_purge(g: &Guest) {
    g.expect("rm_active_before", "0", "ferry running before the remove");
    g.expect("rm_rc", "0", "dpkg -r ferry");
    g.expect("rm_active_after", "inactive", "the remove stops ferry");
    g.expect("rm_processes", "0", "no process of user ferry left");
    g.expect("rm_binary", "gone", "/usr/bin/ferry removed");
    g.expect(
        "rm_conf_sha",
        g.fact("conf_sha_edited"),
        "remove keeps the admin's ferry.toml",
    );
    g.expect("rm_state", "present", "remove keeps /var/lib/ferry");
    g.expect("purge_rc", "0", "dpkg -P ferry");
    g.expect(
        "purge_etc_ferry",
        "auth-header ",
        "purge deletes ferry.toml and its .dpkg-dist, not the admin's secret",
    );
    g.expect("purge_state", "gone", "purge deletes /var/lib/ferry");
    g.expect(
        "purge_spool_done",
        "cam1.bin cam2.bin ",
        "purge keeps the spool",
    );
    g.expect(
        "purge_user",
        "present",
        "the ferry user stays (Debian practice)",
    );
    g.expect("purge_unit", "not-found", "no unit left");
    g.expect("purge_wants", "0", "no enablement link left");
}
