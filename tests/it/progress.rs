//! End to end: the progress `ferry status` reports is what the server has, not what a socket
//! buffer took (issue 13, item 2).

use std::time::{Duration, Instant};

use crate::daemon::Spool;
use crate::harness::{server_behind_proxy, sigterm};
use crate::support::flaky_proxy::ProxyPlan;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// One look at `ferry status --json` and at the link right after it.
#[derive(Debug)]
struct Sample {
    secs: f64,
    position: u64,
    confirmed: u64,
    size: u64,
    bytes_per_sec: f64,
    forwarded: u64,
}

/// The uploading file of a `ferry status --json` answer: (position, confirmed, size, rate).
fn uploading(sp: &Spool) -> Option<(u64, u64, u64, f64)> {
    let out = sp.cmd(&["status", "--json"]);
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let file = snap["files"]
        .as_array()?
        .iter()
        .find(|f| f["state"] == "uploading")?
        .clone();
    Some((
        file["position"].as_u64()?,
        file["confirmed"].as_u64()?,
        file["size"].as_u64()?,
        file["bytes_per_sec"].as_f64()?,
    ))
}

/// A 3 MiB file in one PATCH through a 256 KiB/s link: before the fix, status said 100 % and
/// 17 MiB/s within a second, because the client's send buffer took the whole chunk at once.
#[test]
fn status_progress_through_a_throttled_link_never_runs_ahead_of_the_link() {
    const RATE: u64 = 256 * KIB;
    // The proxy's kernel acknowledges what its receive buffer holds before the proxy forwards
    // it at the link's rate (up to about 500 KiB seen here): that much ahead is the truth as
    // ferry's kernel knows it. Counting the send buffer ran ahead by the whole chunk.
    const SLACK: u64 = MIB;
    let (_server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(RATE),
        ..ProxyPlan::default()
    });
    let sp = Spool::new("progress", &proxy.rewrite(&_server.endpoint()), "");
    // The answer is awaited from the moment the kernel took the last byte, and a send buffer
    // on loopback takes seconds of this link (see the report): do not let that time out.
    let text = std::fs::read_to_string(&sp.config).unwrap();
    std::fs::write(
        &sp.config,
        text.replace("idle_timeout = \"5s\"", "idle_timeout = \"60s\""),
    )
    .unwrap();
    let mut child = sp.start();
    let t0 = Instant::now();
    sp.drop_file("slow.bin", 3 * MIB as usize, 31);
    let mut samples = Vec::new();
    while !sp.spool_files().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(90), "upload too slow");
        if let Some((position, confirmed, size, bytes_per_sec)) = uploading(&sp) {
            samples.push(Sample {
                secs: t0.elapsed().as_secs_f64(),
                position,
                confirmed,
                size,
                bytes_per_sec,
                forwarded: proxy.bytes_up(),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    sigterm(&child);
    child.wait().unwrap();
    for s in &samples {
        eprintln!("{s:?}");
    }
    assert!(samples.len() >= 10, "few samples: {samples:?}");
    for s in &samples {
        assert!(
            s.position <= s.forwarded + SLACK,
            "ran ahead of the link by {} bytes: {s:?}",
            s.position - s.forwarded
        );
        assert!(
            s.position < s.size || s.confirmed == s.size,
            "100 % before the server confirmed it: {s:?}"
        );
    }
    // The rate is the link's: within a factor of 2 after 4 s (the proxy's receive buffer
    // filled at once at the start), of 1.3 after 8 s.
    let mid: Vec<&Sample> = samples.iter().filter(|s| s.secs > 4.0).collect();
    assert!(mid.len() >= 8, "few samples mid-upload: {samples:?}");
    for s in mid {
        let r = s.bytes_per_sec / RATE as f64;
        let factor = if s.secs > 8.0 { 1.3 } else { 2.0 };
        assert!(
            (1.0 / factor..factor).contains(&r),
            "rate {:.0} B/s through a {RATE} B/s link: {s:?}",
            s.bytes_per_sec
        );
    }
}
