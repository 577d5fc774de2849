//! A cross-built `ferry` (ARM) run under qemu-user by this native test binary: `--version`, an
//! end-to-end upload through a link that is cut several times, footprint runs (256 MiB upload,
//! 1 GiB `ferry run`), and (`syscalls`) `ferry run` traced against the unit's system-call
//! filter.
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

mod syscalls;

const MIB: usize = 1024 * 1024;
const HOW: &str = "set FERRY_ARM_BIN to a cross-built ferry and FERRY_ARM_QEMU to the qemu \
                   command (e.g. `qemu-arm-static -cpu arm1176`), or run scripts/arm-test";

/// `qemu... FERRY_ARM_BIN` as a command with a clean, loopback-only environment.
fn emulated_ferry() -> Command {
    let qemu = std::env::var("FERRY_ARM_QEMU").unwrap_or_else(|_| panic!("{HOW}"));
    ferry_under(&qemu)
}

/// `runner FERRY_ARM_BIN` (the runner split on spaces, possibly empty) as a command with a
/// clean, loopback-only environment.
fn ferry_under(runner: &str) -> Command {
    let bin = std::env::var("FERRY_ARM_BIN").unwrap_or_else(|_| panic!("{HOW}"));
    assert!(
        Path::new(&bin).is_file(),
        "FERRY_ARM_BIN={bin}: no such file"
    );
    crate::harness::loopback_command(&crate::harness::runner_argv(runner, &bin))
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
/// `FERRY_ARM_QEMU`), it fails above the daemon's 8 MiB budget: `scripts/arm-test` does that
/// with the x86_64 release binaries (glibc and musl) on every run. The stored upload is compared
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

/// The daemon's resident memory budget ("≤ 8 MiB peak RSS for any file size"), checked on
/// native runs.
const DAEMON_RSS_BUDGET_KIB: u64 = 8 * 1024;

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
