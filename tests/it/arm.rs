//! A cross-built `ferry` (ARM) run under qemu-user by this native test binary: `--version`, an
//! end-to-end upload through a link that is cut several times, and a 256 MiB footprint run.
//!
//! These tests are `#[ignore]`d: a plain `cargo test` lists them as ignored, never as passed.
//! `scripts/arm-test` builds each target and runs them with `-- --ignored`, setting
//! - `FERRY_ARM_BIN`: the cross-built binary, e.g. `dist/ferry-arm-unknown-linux-musleabihf`;
//! - `FERRY_ARM_QEMU`: the emulator command, split on spaces, e.g. `qemu-arm-static -cpu arm1176`
//!   (for a dynamically linked glibc binary add `-L /usr/arm-linux-gnueabihf`). An empty value
//!   runs the binary natively, which gives the x86_64 figures beside the emulated ones.
//!
//! Run with `--ignored` but without those variables, each test fails and says what to set.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{
    assert_same_bytes, finished, server_behind_proxy, sigterm, stderr, Daemon, Scratch,
};
use crate::support::flaky_proxy::ProxyPlan;

const MIB: usize = 1024 * 1024;
const HOW: &str = "set FERRY_ARM_BIN to a cross-built ferry and FERRY_ARM_QEMU to the qemu \
                   command (e.g. `qemu-arm-static -cpu arm1176`), or run scripts/arm-test";

/// `qemu... FERRY_ARM_BIN` as a command with a clean, loopback-only environment.
fn emulated_ferry() -> Command {
    let bin = std::env::var("FERRY_ARM_BIN").unwrap_or_else(|_| panic!("{HOW}"));
    let qemu = std::env::var("FERRY_ARM_QEMU").unwrap_or_else(|_| panic!("{HOW}"));
    assert!(
        Path::new(&bin).is_file(),
        "FERRY_ARM_BIN={bin}: no such file"
    );
    crate::harness::loopback_command(&crate::harness::runner_argv(&qemu, &bin))
}

fn upload_url_id(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

#[test]
#[ignore = "needs FERRY_ARM_BIN and FERRY_ARM_QEMU: run scripts/arm-test"]
fn arm_binary_prints_its_version_under_qemu() {
    let out = emulated_ferry().arg("--version").output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("ferry {}", env!("CARGO_PKG_VERSION")),
        "the binary is not this version of ferry"
    );
}

#[test]
#[ignore = "needs FERRY_ARM_BIN and FERRY_ARM_QEMU: run scripts/arm-test"]
fn arm_binary_uploads_3_mib_through_a_cut_link_under_qemu() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        cut_every_bytes: Some(700 * 1024 + 13),
        ..ProxyPlan::default()
    });
    let s = Scratch::new("arm-e2e");
    let file = s.file("camera.bin", 3 * MIB + 5, 6);
    let cfg = s.config(
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"512KiB\"",
    );
    let start = Instant::now();
    let out = emulated_ferry()
        .arg("upload")
        .arg("--config")
        .arg(&cfg)
        .arg(&file)
        .output()
        .unwrap();
    let lines = finished(&out);
    eprintln!(
        "arm e2e: 3 MiB through {} cuts in {:.2}s",
        proxy.cuts(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(lines.len(), 1, "{}", stderr(&out));
    assert!(proxy.cuts() >= 3, "only {} cuts", proxy.cuts());
    assert_eq!(server.uploads().len(), 1, "exactly one upload for one file");
    let want = std::fs::read(&file).unwrap();
    let id = upload_url_id(&lines[0].1);
    assert_same_bytes(&server.upload_bytes(id), &want, "stored upload");
}

/// Not part of the default ARM run (`scripts/arm-test --footprint` runs it): uploads 256 MiB
/// to `@tus/server` on loopback without faults, once without checksums (ferry only moves
/// bytes) and once with `--checksum sha256` (hashing in emulated code), and prints wall time,
/// throughput and the peak RSS (`VmHWM`) of the process started, which under qemu-user
/// includes the emulator.
#[test]
#[ignore = "needs FERRY_ARM_BIN and FERRY_ARM_QEMU: run scripts/arm-test --footprint"]
fn arm_footprint_of_a_256_mib_upload() {
    use crate::support::peers::{NodeOpts, Peer};
    let size = 256 * MIB;
    let peer = Peer::node_tus_server(NodeOpts::default());
    let s = Scratch::new("arm-footprint");
    let file = s.file("big.bin", size, 256);
    let want = std::fs::read(&file).unwrap();
    for checksum in ["off", "sha256"] {
        // A fresh state dir each time, or the second run would find the upload complete.
        let run = Scratch::new("arm-footprint-run");
        let cfg = run.config(&peer.endpoint(), "");
        let start = Instant::now();
        let (out, peak_kib) = run_with_peak_rss(
            emulated_ferry()
                .arg("upload")
                .arg("--config")
                .arg(&cfg)
                .args(["--checksum", checksum])
                .arg(&file),
        );
        let secs = start.elapsed().as_secs_f64();
        let lines = finished(&out);
        assert_eq!(lines.len(), 1, "{}", stderr(&out));
        eprintln!(
            "arm footprint: checksum {checksum:<6}: 256 MiB in {secs:.2}s = {:.1} MiB/s, peak RSS {:.1} MiB",
            size as f64 / MIB as f64 / secs,
            peak_kib as f64 / 1024.0
        );
        let got = std::fs::read(peer.stored_path(&lines[0].1)).unwrap();
        assert_same_bytes(&got, &want, "stored upload");
    }
}

/// Runs `cmd` to completion and returns its output and peak RSS in KiB.
fn run_with_peak_rss(cmd: &mut Command) -> (Output, u64) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let peak = PeakRss::watch(child.id());
    let out = child.wait_with_output().unwrap();
    (out, peak.stop())
}

/// A thread that reads a process's `VmHWM` every 10 ms (it only grows: the last reading is the
/// peak) until stopped or the process is gone.
struct PeakRss {
    done: Arc<AtomicBool>,
    poller: std::thread::JoinHandle<u64>,
}

impl PeakRss {
    fn watch(pid: u32) -> PeakRss {
        let status = format!("/proc/{pid}/status");
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let poller = std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                let Ok(text) = std::fs::read_to_string(&status) else {
                    break;
                };
                if let Some(kib) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    peak = kib;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        });
        PeakRss { done, poller }
    }

    /// The peak in KiB. Call it before the process is reaped, or the last 10 ms are not seen.
    fn stop(self) -> u64 {
        self.done.store(true, Ordering::SeqCst);
        self.poller.join().unwrap()
    }
}

/// Not part of the default ARM run (`scripts/arm-test --footprint` runs it): `ferry run` with
/// its default settings (6 MiB chunks, one upload at a time) and a 1 GiB file already in the
/// spool when it starts, uploaded to the tus test server on loopback (it runs natively, in this
/// test process). Prints the time from the start of the process to
/// the first PATCH reaching the server (startup, first scan, OPTIONS and POST, the URL flushed to
/// sled), the time until the file was deleted after a complete upload, and the process's peak RSS
/// (under qemu-user an upper bound: it includes the emulator). Run natively (empty
/// `FERRY_ARM_QEMU`), it fails above the daemon's 16 MiB budget: `scripts/arm-test` does that
/// with the x86_64 release binary on every run. The stored upload is compared
/// with the file's content, streamed, so that this test holds no gigabyte in memory.
#[test]
#[ignore = "needs FERRY_ARM_BIN and FERRY_ARM_QEMU: run scripts/arm-test --footprint"]
fn arm_footprint_of_ferry_run_on_a_1_gib_spool_file() {
    use crate::support::tus_server::{ServerConfig, TusServer};
    use std::io::{Read, Write};
    const PIECE: usize = 8 * MIB;
    const PIECES: u64 = 128; // 1 GiB
    let piece = |i: u64| crate::harness::random_bytes(PIECE, 1000 + i);

    // No checksum extension: the test server would verify every chunk's sha256 in this
    // unoptimised test binary and become the bottleneck; `--footprint`'s 256 MiB run measures
    // ferry's hashing against @tus/server.
    let server = TusServer::start(ServerConfig {
        extensions: ["creation", "termination", "expiration"]
            .map(String::from)
            .to_vec(),
        ..ServerConfig::default()
    });
    let s = Scratch::new("arm-run-footprint");
    let spool = s.dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let file = spool.join("video.bin");
    {
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 0..PIECES {
            f.write_all(&piece(i)).unwrap();
        }
        // Already settled when ferry starts: the first scan takes it.
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    }
    let cfg = s.dir.join("ferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {:?}\n[server]\nendpoint = {:?}\n[spool]\ndir = {:?}\n",
            s.state(),
            server.endpoint(),
            spool
        ),
    )
    .unwrap();

    let log = s.dir.join("ferry.log");
    let start = Instant::now();
    let mut child = Daemon(
        emulated_ferry()
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let peak = PeakRss::watch(child.id());
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let first_patch = poll_for(start, Duration::from_secs(60), || {
        server.requests().iter().any(|r| r.method == "PATCH")
    })
    .unwrap_or_else(|| panic!("no PATCH within 60 s; ferry's log:\n{}", log_text()));
    let done = poll_for(start, Duration::from_secs(900), || !file.exists())
        .unwrap_or_else(|| panic!("the file was not uploaded within 900 s:\n{}", log_text()));
    sigterm(&child);
    let peak_kib = peak.stop();
    let exit = wait_with_timeout(&mut child, Duration::from_secs(10));
    assert_eq!(
        exit.code(),
        Some(0),
        "ferry run after SIGTERM; log:\n{}",
        log_text()
    );

    let uploads = server.uploads();
    assert_eq!(uploads.len(), 1, "one upload for one file");
    assert_eq!(uploads[0].offset, PIECE as u64 * PIECES);
    let mut stored = std::fs::File::open(server.upload_path(&uploads[0].id)).unwrap();
    let mut got = vec![0u8; PIECE];
    for i in 0..PIECES {
        stored.read_exact(&mut got).unwrap();
        assert_same_bytes(&got, &piece(i), &format!("stored upload, piece {i}"));
    }
    assert_eq!(stored.read(&mut got).unwrap(), 0, "stored upload is longer");
    let upload_secs = (done - first_patch).as_secs_f64();
    eprintln!(
        "arm run footprint: start to first PATCH {:.0} ms; 1 GiB uploaded and deleted after {:.2} s \
         ({:.1} MiB/s from the first PATCH); peak RSS {:.1} MiB",
        first_patch.as_secs_f64() * 1000.0,
        done.as_secs_f64(),
        1024.0 / upload_secs,
        peak_kib as f64 / 1024.0
    );
    assert!(peak_kib > 0, "no VmHWM reading of ferry's process");
    // The daemon's memory budget holds for the process itself; under qemu-user the figure
    // includes the emulator and is only reported.
    if std::env::var("FERRY_ARM_QEMU").is_ok_and(|q| q.trim().is_empty()) {
        assert!(
            peak_kib <= DAEMON_RSS_BUDGET_KIB,
            "ferry run's peak RSS {:.1} MiB is over the {} MiB budget",
            peak_kib as f64 / 1024.0,
            DAEMON_RSS_BUDGET_KIB / 1024
        );
    }
}

/// The daemon's resident memory budget (the "≤ 16 MiB"), checked on native runs.
const DAEMON_RSS_BUDGET_KIB: u64 = 16 * 1024;

/// Polls `cond` every millisecond; returns the time from `since` until it held, or `None`
/// once `timeout` has passed since `since`.
fn poll_for(since: Instant, timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    while since.elapsed() < timeout {
        if cond() {
            return Some(since.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// Waits for `child` to exit; fails the test after `timeout` (the guard kills it then).
fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            panic!("ferry did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// ferry as its unit runs it, traced by qemu-user (`-d strace`): `ferry run` with `Type=notify`
/// and a watchdog (a `$NOTIFY_SOCKET` this test reads), a credential
/// (`$CREDENTIALS_DIRECTORY`), TLS to a private CA, an after-upload hook, files found by the
/// first scan and by inotify, SIGHUP (the unit's `ExecReload=`) and SIGTERM. Every system call
/// it made must be one the unit's `SystemCallFilter=` allows, compared by number as systemd
/// builds the filter: this host's `systemd-analyze` expands the groups to names, libseccomp
/// (`scmp_sys_resolver`) resolves them for the target's architecture. A refused call returns
/// EPERM on the device (`SystemCallErrorNumber=`): on 32-bit ARM, @sync's `sync_file_range2`
/// resolves to nothing, and sled's flushes (syscall 341) failed until the unit allowed
/// `arm_sync_file_range`, which this test and the armhf guest of scripts/vm-test found. The
/// syscalls come from the
/// binary and, for glibc targets, from the glibc qemu loads (`-L`, Debian bookworm's); a
/// device with an older glibc may use older variants of the same calls. With an empty
/// `FERRY_ARM_QEMU` the native binary is traced under qemu-user for the host (e.g.
/// `qemu-x86_64-static`).
#[test]
#[ignore = "needs FERRY_ARM_BIN and FERRY_ARM_QEMU: run scripts/arm-test"]
fn arm_binary_makes_only_system_calls_the_unit_allows() {
    use std::os::unix::net::UnixDatagram;
    let allowed = crate::systemd_unit::unit_syscall_allow_list();
    let (server, proxy) = crate::tls::tls_server(false);
    let s = Scratch::new("arm-syscalls");
    let spool = s.dir.join("spool");
    let creds = s.dir.join("credentials");
    for d in [&spool, &creds] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(creds.join("auth"), "Bearer syscall-test").unwrap();
    let settled = |p: &Path| {
        let f = std::fs::File::options().write(true).open(p).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    };
    for (name, len) in [("a.bin", MIB + 3), ("empty.bin", 0)] {
        let p = spool.join(name);
        std::fs::write(&p, crate::harness::random_bytes(len, len as u64)).unwrap();
        settled(&p);
    }
    let hook_log = s.dir.join("hook.log");
    let cfg = s.dir.join("ferry.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = {state:?}\n\
             [server]\nendpoint = {endpoint:?}\nca_file = {ca:?}\n\
             header_files = {{ Authorization = \"credential:auth\" }}\n\
             [hook]\ncommand = [\"/bin/sh\", \"-c\", \"echo $FERRY_PATH >> {hook_log}\"]\n\
             [upload]\nchunk_size = \"256KiB\"\n\
             [spool]\ndir = {spool:?}\nsettle_time = \"1s\"\nafter_upload = \"delete\"\n",
            state = s.state(),
            endpoint = proxy.url("/files/"),
            ca = crate::tls::fixture("ca.pem"),
            hook_log = hook_log.display(),
        ),
    )
    .unwrap();
    // Read as systemd does, all the time: a datagram socket whose queue is full makes the
    // sender wait (ferry gives up after a moment, see notify.rs).
    let notify_path = s.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop_reading.clone();
        std::thread::spawn(move || {
            let (mut messages, mut buf) = (String::new(), [0u8; 4096]);
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = notify.recv(&mut buf) {
                    messages.push_str(&String::from_utf8_lossy(&buf[..n]));
                    messages.push('\n');
                }
            }
            messages
        })
    };

    let bin = std::env::var("FERRY_ARM_BIN").unwrap_or_else(|_| panic!("{HOW}"));
    let qemu = std::env::var("FERRY_ARM_QEMU").unwrap_or_else(|_| panic!("{HOW}"));
    let qemu = if qemu.trim().is_empty() {
        format!("qemu-{}-static", std::env::consts::ARCH)
    } else {
        qemu
    };
    let trace = s.dir.join("strace.log");
    let runner = format!("{qemu} -d strace -D {}", trace.display());
    let log = s.dir.join("ferry.log");
    let mut child = Daemon(
        crate::harness::loopback_command(&crate::harness::runner_argv(&runner, &bin))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "2000000")
            .env("CREDENTIALS_DIRECTORY", &creds)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let gone = |name: &str| !spool.join(name).exists();
    let start = Instant::now();
    poll_for(start, Duration::from_secs(120), || {
        gone("a.bin") && gone("empty.bin")
    })
    .unwrap_or_else(|| panic!("the first scan's files were not uploaded:\n{}", log_text()));
    // A file that appears while ferry runs (inotify), then a reload.
    std::fs::write(
        spool.join("b.bin"),
        crate::harness::random_bytes(300_000, 7),
    )
    .unwrap();
    poll_for(start, Duration::from_secs(120), || gone("b.bin"))
        .unwrap_or_else(|| panic!("b.bin was not uploaded:\n{}", log_text()));
    let hup = Command::new("kill")
        .arg("-HUP")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(hup.success());
    poll_for(start, Duration::from_secs(60), || {
        log_text().contains("reloaded")
    })
    .unwrap_or_else(|| panic!("no reload after SIGHUP:\n{}", log_text()));
    // At least one watchdog interval, so that a WATCHDOG=1 ping is traced too.
    std::thread::sleep(Duration::from_millis(2500));
    sigterm(&child);
    let exit = wait_with_timeout(&mut child, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    stop_reading.store(true, Ordering::Relaxed);
    let messages = reader.join().unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "ferry run after SIGTERM:\n{}",
        log_text()
    );

    // The run did what the unit's ferry does.
    assert_eq!(server.uploads().len(), 3, "three files, three uploads");
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer syscall-test")),
        "the credential was not sent on every request"
    );
    let hooked = std::fs::read_to_string(&hook_log).unwrap_or_default();
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

    let traced = std::fs::read_to_string(&trace).unwrap();
    let arch = ["aarch64", "x86_64", "arm"]
        .into_iter()
        .find(|a| {
            qemu.split_whitespace()
                .next()
                .unwrap()
                .contains(&format!("qemu-{a}"))
        })
        .unwrap_or_else(|| panic!("which architecture does `{qemu}` emulate?"));
    let calls = syscall_names(&traced);
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
    // By number, as systemd builds the filter: each name resolved by libseccomp for `arch`;
    // a name it cannot resolve there is skipped, so it allows nothing.
    let allowed: std::collections::BTreeSet<u32> = allowed
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
    assert!(
        refused.is_empty(),
        "ferry made system calls that the unit's SystemCallFilter= refuses on {arch} (EPERM \
         on the device; a name that libseccomp cannot resolve there counts as refused): \
         {refused:?}\nall of them: {calls:?}\n(the trace: {})",
        trace.display()
    );
    // Keep the trace for a failure only.
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
fn syscall_names(trace: &str) -> std::collections::BTreeMap<Call, usize> {
    let mut calls = std::collections::BTreeMap::new();
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
