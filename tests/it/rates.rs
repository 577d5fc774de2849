//! End to end: rate limits against @tus/server. `upload.rate_limit` / `--rate-limit` holds
//! `ferry upload` (it used to be ignored: 10 MB went out in 0.25 s under 2 MB/s), and `ferry
//! limit` changes a running daemon's rate, survives a restart, and `ferry limit off` lifts it.
//! Rates are measured as a ratio to the limit: never above it (beyond the quarter-second
//! burst), and not absurdly below it on a loaded machine.

use std::time::{Duration, Instant};

use crate::daemon::Spool;
use crate::harness::{finished, upload, wait_until, Scratch};
use crate::support::flaky_proxy::{FlakyProxy, ProxyPlan};
use crate::support::peers::{NodeOpts, Peer};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The measured rate over the limit for `bytes` sent in `took`.
fn ratio(bytes: u64, took: Duration, limit: u64) -> f64 {
    bytes as f64 / took.as_secs_f64() / limit as f64
}

#[test]
fn ferry_upload_obeys_the_configured_rate_and_the_flag_overrides_it() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let s = Scratch::new("rate-upload");
    let file = s.file("three.bin", 3 * MIB as usize, 31);
    // The config says 1 MiB/s; the flag says 2 MiB/s and wins.
    let config = s.config(&peer.endpoint(), "[upload]\nrate_limit = \"1MiB/s\"");
    let started = Instant::now();
    let out = upload(&config, &["--rate-limit", "2MiB/s"], &[&file]);
    let took = started.elapsed();
    assert_eq!(finished(&out).len(), 1);
    // The first quarter second of bytes may go at once (the burst).
    let r = ratio(3 * MIB - 2 * MIB / 4, took, 2 * MIB);
    assert!(
        (0.3..=1.1).contains(&r),
        "3 MiB at 2 MiB/s took {took:?}: {r:.2} of the limit"
    );
    let file = s.file("two.bin", 2 * MIB as usize, 32);
    let started = Instant::now();
    let out = upload(&config, &[], &[&file]);
    let took = started.elapsed();
    assert_eq!(finished(&out).len(), 1);
    let r = ratio(2 * MIB - MIB / 4, took, MIB);
    assert!(
        (0.3..=1.1).contains(&r),
        "2 MiB at the configured 1 MiB/s took {took:?}: {r:.2} of the limit"
    );
    assert_eq!(peer.upload_count(), 2);
}

#[test]
fn a_bad_rate_is_refused_with_the_key_and_an_example() {
    let s = Scratch::new("rate-bad");
    let config = s.config(
        "http://127.0.0.1:9/files/",
        "[upload]\nrate_limit = \"fast\"",
    );
    let file = s.file("a.bin", 10, 1);
    let out = upload(&config, &[], &[&file]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upload.rate_limit") && err.contains("2MiB/s"),
        "{err}"
    );
    let config = s.config(
        "http://127.0.0.1:9/files/",
        "[upload]\nrate_limit = \"1MiB\"\n[daemon]\nrate_limit = \"2MiB\"",
    );
    let out = upload(&config, &[], &[&file]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both set"), "{err}");
}

#[test]
fn ferry_limit_paces_a_running_daemon_survives_a_restart_and_off_lifts_it() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let proxy = FlakyProxy::start(peer.addr(), ProxyPlan::default());
    let sp = Spool::new(
        "rate-limit-cmd",
        &proxy.rewrite(&peer.endpoint()),
        "[upload]\nchunk_size = \"256KiB\"",
    );
    // Set before the daemon starts: it starts with it, as after a restart.
    let out = sp.cmd(&["limit", "512KiB/s"]);
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8_lossy(&sp.cmd(&["limit"]).stdout).into_owned();
    assert!(shown.contains("512.0 KiB/s"), "{shown}");
    let mut child = sp.start();
    sp.drop_file("big.bin", 16 * MIB as usize, 40);
    wait_until("the upload to start", Duration::from_secs(20), || {
        proxy.bytes_up() > 256 * KIB
    });
    let (from, at) = (proxy.bytes_up(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let r = ratio(proxy.bytes_up() - from, at.elapsed(), 512 * KIB);
    // Request heads and the burst ride on top: a tenth more at most.
    assert!(
        (0.3..=1.15).contains(&r),
        "sent at {r:.2} of 512 KiB/s: {}",
        sp.log()
    );
    let status = sp.status();
    assert!(
        status.contains("rate limit: 512.0 KiB/s (ferry limit)"),
        "{status}"
    );
    // A lower one applies to the upload in flight.
    assert!(sp.cmd(&["limit", "128KiB/s"]).status.success());
    std::thread::sleep(Duration::from_millis(500));
    let (from, at) = (proxy.bytes_up(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let r = ratio(proxy.bytes_up() - from, at.elapsed(), 128 * KIB);
    assert!((0.3..=1.2).contains(&r), "sent at {r:.2} of 128 KiB/s");
    assert!(sp.cmd(&["limit", "off"]).status.success());
    wait_until(
        "the rest to go at full speed once lifted",
        Duration::from_secs(20),
        || sp.spool_files().is_empty(),
    );
    assert!(
        sp.log()
            .contains("upload rate limit now none (upload.rate_limit)"),
        "{}",
        sp.log()
    );
    crate::harness::sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(peer.upload_count(), 1, "one upload, never restarted");
    let out = sp.cmd(&["limit", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a rate like 2MiB/s"),
        "{out:?}"
    );
}
