//! ferry as its unit runs it, traced by qemu-user (`-d strace`), against the unit's
//! `SystemCallFilter=`: `ferry run` with `Type=notify` and a watchdog (a `$NOTIFY_SOCKET` this
//! test reads), a credential (`$CREDENTIALS_DIRECTORY`), TLS to a private CA, an after-upload
//! hook, files found by the first scan and by inotify, SIGHUP (the unit's `ExecReload=`) and
//! SIGTERM.
//!
//! Every system call it made must be allowed, compared by number as systemd builds the filter:
//! this host's `systemd-analyze` expands the groups to names, and libseccomp
//! (`scmp_sys_resolver`) resolves them for the target's architecture, skipping names it does
//! not know there. A refused call returns EPERM on the device (`SystemCallErrorNumber=`). On
//! 32-bit ARM, @sync's `sync_file_range2` resolves to nothing, and sled's flushes (syscall
//! 341) failed until the unit allowed `arm_sync_file_range`: the armhf guest of
//! `scripts/vm-test` found it, and this test now does.
//!
//! The calls come from the binary and, for glibc targets, from the glibc qemu loads (`-L`,
//! Debian bookworm's); a device with an older glibc may use older variants of the same calls.
//! With an empty `FERRY_ARM_QEMU` the native binary is traced under qemu-user for the host
//! (e.g. `qemu-x86_64-static`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{ferry_under, poll_for, wait_with_timeout, HOW, MIB};
use crate::harness::{random_bytes, signal, sigterm, Daemon, Scratch};
use crate::support::tls_proxy::TlsProxy;

const TOKEN: &str = "Bearer syscall-test";

#[test]
#[ignore = "needs FERRY_ARM_BIN and FERRY_ARM_QEMU: run scripts/arm-test"]
fn arm_binary_makes_only_system_calls_the_unit_allows() {
    let allowed = crate::systemd_unit::unit_syscall_allow_list();
    let (server, proxy) = crate::tls::tls_server(false);
    let s = Scratch::new("arm-syscalls");
    let run = Run::prepare(&s, &proxy);
    let notify = NotifyListener::bind(&s.dir.join("notify.sock"));
    let qemu = traced_qemu();
    let trace = s.dir.join("strace.log");
    run.drive(&qemu, &trace, &notify.path);
    let messages = notify.messages();

    // The run did what the unit's ferry does.
    assert_eq!(server.uploads().len(), 3, "three files, three uploads");
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(TOKEN)),
        "the credential was not sent on every request"
    );
    let hooked = std::fs::read_to_string(&run.hook_log).unwrap_or_default();
    assert_eq!(
        hooked.lines().count(),
        3,
        "the hook ran once per file: {hooked:?}"
    );
    for m in ["READY=1", "WATCHDOG=1", "STOPPING=1"] {
        assert!(
            messages.contains(m),
            "no {m} on $NOTIFY_SOCKET: {messages:?}"
        );
    }
    assert_only_allowed_calls(&trace, qemu_arch(&qemu), &allowed);
}

/// The scratch spool, credential, hook log and config of one traced run.
struct Run {
    spool: PathBuf,
    creds: PathBuf,
    hook_log: PathBuf,
    cfg: PathBuf,
    log: PathBuf,
}

impl Run {
    /// Two files already settled in the spool (the first scan takes them), one of them empty.
    fn prepare(s: &Scratch, proxy: &TlsProxy) -> Run {
        let run = Run {
            spool: s.dir.join("spool"),
            creds: s.dir.join("credentials"),
            hook_log: s.dir.join("hook.log"),
            cfg: s.dir.join("ferry.toml"),
            log: s.dir.join("ferry.log"),
        };
        for d in [&run.spool, &run.creds] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(run.creds.join("auth"), TOKEN).unwrap();
        for (name, len) in [("a.bin", MIB + 3), ("empty.bin", 0)] {
            let p = run.spool.join(name);
            std::fs::write(&p, random_bytes(len, len as u64)).unwrap();
            let f = std::fs::File::options().write(true).open(&p).unwrap();
            f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
                .unwrap();
        }
        let config = format!(
            "state_dir = {state:?}\n\
             [server]\nendpoint = {endpoint:?}\nca_file = {ca:?}\n\
             header_files = {{ Authorization = \"credential:auth\" }}\n\
             [hook]\ncommand = [\"/bin/sh\", \"-c\", \"echo $FERRY_PATH >> {hook_log}\"]\n\
             [upload]\nchunk_size = \"256KiB\"\n\
             [spool]\ndir = {spool:?}\nsettle_time = \"1s\"\nafter_upload = \"delete\"\n",
            state = s.state(),
            endpoint = proxy.url("/files/"),
            ca = crate::tls::fixture("ca.pem"),
            hook_log = run.hook_log.display(),
            spool = run.spool,
        );
        std::fs::write(&run.cfg, config).unwrap();
        run
    }

    /// Runs `ferry run` under `qemu -d strace -D trace` through the scan, an inotify file,
    /// SIGHUP, a watchdog interval and SIGTERM; checks it exits 0.
    fn drive(&self, qemu: &str, trace: &Path, notify: &Path) {
        let runner = format!("{qemu} -d strace -D {}", trace.display());
        let mut child = Daemon(
            ferry_under(&runner)
                .arg("run")
                .arg("--config")
                .arg(&self.cfg)
                .env("NOTIFY_SOCKET", notify)
                .env("WATCHDOG_USEC", "2000000")
                .env("CREDENTIALS_DIRECTORY", &self.creds)
                // The malloc settings a glibc ferry would start itself again with
                // (crates/lazyzero), given up front: started again, the native binary would
                // leave qemu, and the trace would end before the run begins.
                .env("GLIBC_TUNABLES", ferry_lazyzero::TUNABLES)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&self.log).unwrap())
                .spawn()
                .unwrap(),
        );
        let start = Instant::now();
        self.wait_for(start, "the first scan's files uploaded", || {
            self.gone("a.bin") && self.gone("empty.bin")
        });
        std::fs::write(self.spool.join("b.bin"), random_bytes(300_000, 7)).unwrap();
        self.wait_for(start, "b.bin (inotify) uploaded", || self.gone("b.bin"));
        signal(&child, "HUP");
        self.wait_for(start, "a reload after SIGHUP", || {
            self.log_text().contains("reloaded")
        });
        // At least one watchdog interval, so that a WATCHDOG=1 ping is traced too.
        std::thread::sleep(Duration::from_millis(2500));
        sigterm(&child);
        let exit = wait_with_timeout(&mut child, Duration::from_secs(30));
        assert_eq!(
            exit.code(),
            Some(0),
            "ferry run after SIGTERM:\n{}",
            self.log_text()
        );
    }

    fn gone(&self, name: &str) -> bool {
        !self.spool.join(name).exists()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, start: Instant, what: &str, cond: impl FnMut() -> bool) {
        poll_for(start, Duration::from_secs(120), cond)
            .unwrap_or_else(|| panic!("no {what} within 120 s; ferry's log:\n{}", self.log_text()));
    }
}

/// `$NOTIFY_SOCKET`, read all the time as systemd reads it: a datagram socket whose queue is
/// full makes the sender wait (ferry gives up after a moment, see notify.rs).
struct NotifyListener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    reader: JoinHandle<String>,
}

impl NotifyListener {
    fn bind(path: &Path) -> NotifyListener {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut messages, mut buf) = (String::new(), [0u8; 4096]);
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = socket.recv(&mut buf) {
                        messages.push_str(&String::from_utf8_lossy(&buf[..n]));
                        messages.push('\n');
                    }
                }
                messages
            })
        };
        NotifyListener {
            path: path.to_path_buf(),
            stop,
            reader,
        }
    }

    /// Everything received, one message per line (after a last 200 ms for stragglers).
    fn messages(self) -> String {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.reader.join().unwrap()
    }
}

/// The qemu command that traces: `FERRY_ARM_QEMU`, or qemu-user for the host when it is empty.
fn traced_qemu() -> String {
    let qemu = std::env::var("FERRY_ARM_QEMU").unwrap_or_else(|_| panic!("{HOW}"));
    if qemu.trim().is_empty() {
        format!("qemu-{}-static", std::env::consts::ARCH)
    } else {
        qemu
    }
}

/// libseccomp's name for the architecture `qemu` emulates.
fn qemu_arch(qemu: &str) -> &'static str {
    let program = qemu.split_whitespace().next().unwrap_or_default();
    ["aarch64", "x86_64", "arm"]
        .into_iter()
        .find(|a| program.contains(&format!("qemu-{a}")))
        .unwrap_or_else(|| panic!("which architecture does `{qemu}` emulate?"))
}

/// Every call in `trace` is one of `allowed` on `arch`, compared by number: each name resolved
/// by libseccomp for `arch`, where a name it cannot resolve allows nothing. On failure the
/// trace is kept beside the temporary directory and named.
fn assert_only_allowed_calls(trace: &Path, arch: &str, allowed: &BTreeSet<String>) {
    let calls = syscall_names(&std::fs::read_to_string(trace).unwrap());
    // Files opened (musl on 32-bit ARM opens with `open`), watched, a hook started.
    for expected in ["open|openat", "inotify_add_watch", "execve"] {
        assert!(
            expected
                .split('|')
                .any(|name| calls.contains_key(&Call::Name(name.into()))),
            "the trace has no {expected}: is it complete? {:?}",
            calls.keys()
        );
    }
    let allowed: BTreeSet<u32> = allowed
        .iter()
        .filter_map(|name| syscall_number(arch, name))
        .collect();
    let refused: Vec<String> = calls
        .iter()
        .filter(|(call, _)| {
            let number = match call {
                Call::Name(name) => syscall_number(arch, name),
                Call::Number(n) => Some(*n),
            };
            !number.is_some_and(|n| allowed.contains(&n))
        })
        .map(|(call, n)| format!("{call:?} ({n}x)"))
        .collect();
    eprintln!(
        "arm syscalls: {} distinct system calls, {} in all, traced from `ferry run`; \
         {} allowed on {arch}",
        calls.len(),
        calls.values().sum::<usize>(),
        allowed.len()
    );
    if !refused.is_empty() {
        let kept = std::env::temp_dir().join(format!("ferry-syscalls-{arch}.log"));
        std::fs::copy(trace, &kept).unwrap();
        panic!(
            "ferry made system calls that the unit's SystemCallFilter= refuses on {arch} (EPERM \
             on the device; a name that libseccomp cannot resolve there counts as refused): \
             {refused:?}\nall of them: {calls:?}\n(the trace: {})",
            kept.display()
        );
    }
}

/// A traced system call: by name, or by number where qemu could not name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    Name(String),
    Number(u32),
}

/// The system calls in a qemu-user `-d strace` log, with how often each was made. A line
/// starts `PID name(`; threads may interleave, so every `PID name(` is taken, not only at the
/// start of a line. A call qemu cannot name (newer than its tables: rseq, clone3, ...; or
/// ARM's sync_file_range, number 341) is traced as `Unknown syscall N`, and kept by number.
fn syscall_names(trace: &str) -> BTreeMap<Call, usize> {
    let mut calls = BTreeMap::new();
    for piece in trace.split(['\n', ')', '=']) {
        let words: Vec<&str> = piece.split_whitespace().collect();
        for pair in words.windows(2) {
            let (pid, call) = (pair[0], pair[1]);
            let Some((name, _)) = call.split_once('(') else {
                continue;
            };
            if pid.bytes().all(|b| b.is_ascii_digit())
                && !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                *calls.entry(Call::Name(name.to_string())).or_insert(0) += 1;
            }
        }
    }
    for line in trace.lines() {
        let Some((_, rest)) = line.split_once("Unknown syscall ") else {
            continue;
        };
        let number = rest.split_whitespace().next().unwrap_or_default();
        let n = number
            .parse()
            .unwrap_or_else(|_| panic!("qemu traced {line:?}: no syscall number"));
        *calls.entry(Call::Number(n)).or_insert(0) += 1;
    }
    calls
}

/// The number of system call `name` on `arch` (`x86_64`, `aarch64`, `arm`) as libseccomp,
/// which systemd uses to build the filter, resolves it; `None` where it does not exist there.
fn syscall_number(arch: &str, name: &str) -> Option<u32> {
    let out = Command::new("scmp_sys_resolver")
        .args(["-a", arch, name])
        .output()
        .unwrap_or_else(|e| {
            panic!("scmp_sys_resolver: {e} (apt-get install seccomp: libseccomp's resolver)")
        });
    assert!(
        out.status.success(),
        "scmp_sys_resolver -a {arch} {name}: {out:?}"
    );
    // Negative: a pseudo-number for a call this architecture does not have.
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
