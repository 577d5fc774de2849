//! Who holds the state directory: the process whose lock on sled's `db` file stops this one.
//!
//! Key idea: the kernel lists every file lock with its owner's pid in `/proc/locks`
//! (`1: FLOCK  ADVISORY  WRITE 4242 fd:01:1311 0 EOF`); the lock on the inode of `db` names the
//! other ferry. Only its pid and command (`ferry upload`) are shown, never its other arguments,
//! which may hold a secret (`--header 'Authorization: ...'`). Linux only; elsewhere, or when
//! `/proc` says nothing, the message goes without.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The commands whose name is worth showing after `ferry`.
const COMMANDS: [&str; 4] = ["upload", "run", "check-config", "broker"];

/// The pid of the process that locks `file`, if it can be told.
pub(super) fn owner(file: &Path) -> Option<u32> {
    let meta = std::fs::metadata(file).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    lock_owner(&locks, meta.dev(), meta.ino())
}

/// "pid 4242, `ferry upload`" for the process that locks `file`, if it can be told.
pub(super) fn describe(file: &Path) -> Option<String> {
    let pid = owner(file)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    Some(match command(&cmdline) {
        Some(cmd) => format!("pid {pid}, `{cmd}`"),
        None => format!("pid {pid}"),
    })
}

/// The pid that holds a lock on inode `ino` of device `dev`, from `/proc/locks` text.
fn lock_owner(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let want = format!("{:02x}:{:02x}:{ino}", major(dev), minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // "N:" kind advisory mode pid dev:ino start end; a blocked waiter has "->" first.
        let fields = fields.strip_prefix(&["->"]).unwrap_or(&fields);
        match fields {
            [_, _, _, _, pid, id, ..] if *id == want => pid.parse().ok(),
            _ => None,
        }
    })
}

/// `ferry upload` from a NUL-separated command line, when it is a ferry command.
fn command(cmdline: &[u8]) -> Option<String> {
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let base = |a: &str| a.rsplit('/').next().unwrap_or_default().to_string();
    let mut name = base(&args.next()?);
    if name.starts_with("qemu-") {
        // A ferry of another architecture under qemu-user (`qemu-arm -cpu … /path/ferry
        // upload …`): the emulator is the process; ferry is the first argument named so.
        if args.by_ref().any(|a| base(&a) == "ferry") {
            name = "ferry".into();
        }
    }
    match args.next() {
        Some(cmd) if COMMANDS.contains(&cmd.as_ref()) => Some(format!("{name} {cmd}")),
        _ => (!name.is_empty()).then_some(name),
    }
}

/// The major number of a Linux `dev_t` (glibc's `gnu_dev_major`).
fn major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}

/// The minor number of a Linux `dev_t` (glibc's `gnu_dev_minor`).
fn minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_of_the_inode_on_the_device() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 100 fd:01:77 0 EOF
2: FLOCK  ADVISORY  WRITE 4242 fd:01:1311 0 EOF
2: -> FLOCK  ADVISORY  WRITE 4343 fd:01:1311 0 EOF
3: FLOCK  ADVISORY  WRITE 999 08:02:1311 0 EOF
";
        let dev = (0xfd << 8) | 0x01;
        assert_eq!(lock_owner(locks, dev, 1311), Some(4242));
        assert_eq!(lock_owner(locks, (0x08 << 8) | 0x02, 1311), Some(999));
        assert_eq!(lock_owner(locks, dev, 1312), None);
        assert_eq!(lock_owner("", dev, 1311), None);
        // Large device numbers: major 259 (NVMe), minor 300.
        let big = (259 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!((major(big), minor(big)), (259, 300));
    }

    #[test]
    fn shows_the_command_but_never_its_arguments() {
        let line = b"/usr/bin/ferry\0upload\0--header\0Authorization: Bearer s3cret\0a.bin\0";
        assert_eq!(command(line).as_deref(), Some("ferry upload"));
        assert_eq!(command(b"ferry\0run\0").as_deref(), Some("ferry run"));
        assert_eq!(
            command(b"/opt/x/ferry\0--bogus\0").as_deref(),
            Some("ferry")
        );
        assert_eq!(command(b""), None);
        assert_eq!(
            command(b"qemu-arm-static\0-cpu\0arm1176\0/t/ferry\0upload\0--header\0x\0").as_deref(),
            Some("ferry upload"),
            "under qemu-user, ferry's command, not the emulator's"
        );
    }
}
