//! Running the real `ferry` binary from tests: temp dirs, test files, config files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// A scratch directory with a spool of test files and a state dir, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ferry-it-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("files")).unwrap();
        Scratch { dir }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Writes a file of `len` pseudo-random bytes (seeded by `seed`) and returns its path.
    pub fn file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let p = self.dir.join("files").join(name);
        std::fs::write(&p, random_bytes(len, seed)).unwrap();
        p
    }

    /// A config file for `endpoint` with fast retries (tests must not wait for real backoff).
    pub fn config(&self, endpoint: &str, extra: &str) -> PathBuf {
        let p = self.dir.join("ferry.toml");
        let text = format!(
            "state_dir = {:?}\n[server]\nendpoint = {endpoint:?}\nidle_timeout = \"5s\"\nconnect_timeout = \"5s\"\n[retry]\ninitial_delay = \"20ms\"\nmax_delay = \"200ms\"\n{extra}\n",
            self.state().to_str().unwrap()
        );
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub use crate::support::data::random_bytes;

/// The `ferry` binary under test, as an argv prefix: `CARGO_BIN_EXE_ferry`, preceded by the
/// emulator in `FERRY_TEST_RUNNER` (split on spaces) when one is set. A suite cross-built for
/// ARM (`cargo test --target ...`, run under qemu-user by the runner in .cargo/config.toml)
/// spawns an ARM `ferry`, which the kernel cannot start without binfmt_misc: scripts/arm-test
/// sets `FERRY_TEST_RUNNER` to the same qemu command, so every `ferry` a test starts runs
/// under qemu on the same CPU model as the tests themselves.
pub fn ferry_argv() -> Vec<String> {
    runner_argv(
        &std::env::var("FERRY_TEST_RUNNER").unwrap_or_default(),
        env!("CARGO_BIN_EXE_ferry"),
    )
}

/// `runner` (a command split on spaces, possibly empty) followed by `bin`.
pub fn runner_argv(runner: &str, bin: &str) -> Vec<String> {
    let mut argv: Vec<String> = runner.split_whitespace().map(str::to_owned).collect();
    argv.push(bin.to_owned());
    argv
}

/// `ferry_argv()` joined for a `sh -c` script (no argument there contains a space or quote).
pub fn ferry_shell() -> String {
    ferry_argv().join(" ")
}

pub fn ferry() -> Command {
    loopback_command(&ferry_argv())
}

/// `argv` as a command for a ferry that talks to loopback only, logging at `info`: a proxy in
/// the environment must not reroute it.
pub fn loopback_command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    for v in [
        "ALL_PROXY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "http_proxy",
        "https_proxy",
    ] {
        c.env_remove(v);
    }
    c.env("RUST_LOG", "info");
    c
}

/// A running `ferry run`, killed and reaped when dropped if it is still running: a test that
/// fails half-way must not leave a daemon uploading in the background.
pub struct Daemon(pub Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    signal(child, "TERM");
}

/// Sends signal `name` (e.g. `HUP`) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}: {status}");
}

/// `ferry upload --config CFG <args> FILES...`, waited for.
pub fn upload(config: &Path, args: &[&str], files: &[&Path]) -> Output {
    let mut c = ferry();
    c.arg("upload")
        .arg("--config")
        .arg(config)
        .args(args)
        .args(files);
    c.output().unwrap()
}

/// Same, started in the background.
pub fn spawn_upload(config: &Path, args: &[&str], files: &[&Path]) -> Child {
    let mut c = ferry();
    c.arg("upload")
        .arg("--config")
        .arg(config)
        .args(args)
        .args(files);
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The `<path>\t<url>` lines of a successful run, as (path, url) pairs; panics with stderr otherwise.
pub fn finished(out: &Output) -> Vec<(String, String)> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ferry failed ({:?}):\n{stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (p, u) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (p.to_string(), u.to_string())
        })
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts equality of two byte strings without printing megabytes.
pub fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// Polls `cond` every 50 ms until it holds; fails the test naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A tus test server with relative Locations behind a proxy with `plan`: clients keep going
/// through the proxy (the usual set-up of the end-to-end tests).
pub fn server_behind_proxy(
    plan: crate::support::flaky_proxy::ProxyPlan,
) -> (
    crate::support::tus_server::TusServer,
    crate::support::flaky_proxy::FlakyProxy,
) {
    use crate::support::tus_server::{LocationStyle, ServerConfig, TusServer};
    let server = TusServer::start(ServerConfig {
        location: LocationStyle::Relative,
        ..ServerConfig::default()
    });
    let proxy = crate::support::flaky_proxy::FlakyProxy::start(server.addr(), plan);
    (server, proxy)
}
