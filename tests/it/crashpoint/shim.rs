//! The crash-point shim (tests/support/crashpoint.c): compiled once per test run, preloaded
//! into `ferry`, read back through its counter file.
//!
//! It only works where the host's dynamic loader starts a glibc `ferry` natively: not for a
//! static (musl) build, not under qemu-user (`FERRY_TEST_RUNNER`), where a host library means
//! nothing to the guest's loader. There the tests fail and say so (scripts/arm-test skips
//! them by name); a shim that did not load is caught too, by its missing counter file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The call kinds the shim counts, in the order of its counter block.
pub const KINDS: [&str; 6] = [
    "fsync",
    "fdatasync",
    "sync_file_range",
    "rename",
    "unlink",
    "pwrite",
];

/// The kinds that only the state store (sled) issues in these runs: a failure of one of them
/// is a failed state write or sync.
pub fn is_store_kind(kind: usize) -> bool {
    matches!(
        KINDS[kind],
        "fsync" | "fdatasync" | "sync_file_range" | "pwrite"
    )
}

/// What the shim does at the chosen call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// SIGKILL to the whole process before the call runs.
    Kill,
    /// The call fails with EIO (and does nothing).
    Eio,
    /// The call fails with ENOSPC (and does nothing).
    Enospc,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Eio => "eio",
            Action::Enospc => "enospc",
        }
    }
}

/// Where and how to strike: `action` at the `at`-th call (1-based, process-wide) of `KINDS[kind]`.
#[derive(Clone, Copy, Debug)]
pub struct Strike {
    pub kind: usize,
    pub at: u64,
    pub action: Action,
}

impl std::fmt::Display for Strike {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}#{}",
            self.action.name(),
            KINDS[self.kind],
            self.at
        )
    }
}

/// The shim's counter block after a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Calls per kind (`KINDS` order), including the one struck.
    pub calls: [u64; 6],
    /// The strike happened.
    pub fired: bool,
    /// When it happened.
    pub fired_at: Option<SystemTime>,
    /// When, after the strike, an fsync, fdatasync or sync_file_range first succeeded.
    pub synced_after: Option<SystemTime>,
}

const MAGIC: u64 = u64::from_le_bytes(*b"FCRASHP1");

impl Counts {
    /// The block in `path`, or `None` if the shim never mapped it (it was not loaded).
    pub fn read(path: &Path) -> Option<Counts> {
        let raw = std::fs::read(path).ok()?;
        let slot = |i: usize| {
            let bytes: [u8; 8] = raw.get(i * 8..i * 8 + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(bytes))
        };
        if slot(0)? != MAGIC {
            return None;
        }
        let mut calls = [0; 6];
        for (i, c) in calls.iter_mut().enumerate() {
            *c = slot(1 + i)?;
        }
        Some(Counts {
            calls,
            fired: slot(7)? != 0,
            fired_at: time(slot(10)?),
            synced_after: time(slot(11)?),
        })
    }
}

/// A time the shim wrote (ns since the epoch; 0 for none).
fn time(ns: u64) -> Option<SystemTime> {
    (ns != 0).then(|| UNIX_EPOCH + Duration::from_nanos(ns))
}

/// Why the shim cannot work for this test run, if it cannot.
fn unsupported() -> Option<String> {
    let runner = std::env::var("FERRY_TEST_RUNNER").unwrap_or_default();
    if !runner.trim().is_empty() {
        return Some(format!(
            "ferry runs under FERRY_TEST_RUNNER={runner:?}: a host LD_PRELOAD library cannot be \
             loaded into an emulated binary, so the crash-point tests cannot run here (scripts/\
             arm-test --suite skips them with `--skip crashpoint::`)"
        ));
    }
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Some(format!(
            "the crash-point shim needs a dynamically linked glibc ferry on Linux; this build \
             targets {}-{}: run these tests natively on a gnu target",
            std::env::consts::ARCH,
            std::env::consts::OS
        ));
    }
    None
}

/// The compiled shim (`cc -shared -fPIC`), built on first use in this test run.
pub fn library() -> &'static Path {
    static LIB: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match LIB.get_or_init(build) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn build() -> Result<PathBuf, String> {
    if let Some(why) = unsupported() {
        return Err(why);
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/crashpoint.c");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let tmp = dir.join(format!("crashpoint.so.{}", std::process::id()));
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg("-ldl")
        .output()
        .map_err(|e| format!("cannot run cc to build the crash-point shim: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc could not build {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Renamed into place: a concurrent test run may be loading the previous copy.
    let lib = dir.join("crashpoint.so");
    std::fs::rename(&tmp, &lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    Ok(lib)
}

/// Preloads the shim into `cmd`, counting into `counts`, striking as `strike` says (or only
/// counting).
pub fn preload(cmd: &mut Command, counts: &Path, strike: Option<Strike>) {
    cmd.env("LD_PRELOAD", library())
        .env("FERRY_CRASH_COUNTS", counts);
    match strike {
        Some(s) => {
            cmd.env("FERRY_CRASH_CALL", KINDS[s.kind])
                .env("FERRY_CRASH_AT", s.at.to_string())
                .env("FERRY_CRASH_ACTION", s.action.name());
        }
        None => {
            cmd.env_remove("FERRY_CRASH_CALL");
            // Which thread makes which call, for people reading a counting run.
            if let Ok(trace) = std::env::var("FERRY_CRASHPOINT_TRACE") {
                cmd.env("FERRY_CRASH_TRACE", trace);
            }
        }
    }
}

/// Makes sure a run of `cmd` sees no shim, whatever the test's own environment holds.
pub fn without(cmd: &mut Command) {
    for v in [
        "FERRY_CRASH_COUNTS",
        "FERRY_CRASH_CALL",
        "FERRY_CRASH_AT",
        "FERRY_CRASH_ACTION",
        "FERRY_CRASH_STICKY",
        "FERRY_CRASH_TRACE",
    ] {
        cmd.env_remove(v);
    }
}
