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

use crate::harness::{assert_same_bytes, finished, server_behind_proxy, stderr, Scratch};
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
    let mut argv: Vec<&str> = qemu.split_whitespace().collect();
    argv.push(&bin);
    let mut c = Command::new(argv[0]);
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

/// Runs `cmd` to completion, polling the child's `VmHWM` (it only grows: the last reading is
/// the peak) every 10 ms.
fn run_with_peak_rss(cmd: &mut Command) -> (Output, u64) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = format!("/proc/{}/status", child.id());
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::SeqCst) {
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
        })
    };
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    (out, poller.join().unwrap())
}
