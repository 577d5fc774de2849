//! Interop: the real `ferry` binary against tus servers written by others (@tus/server from npm,
//! rustus from crates.io), through a proxy that cuts the TCP connection every few MiB.
//! A missing peer fails these tests (scripts/install-peers installs both).

use crate::harness::{assert_same_bytes, finished, stderr, upload, Scratch};
use crate::support::flaky_proxy::{FlakyProxy, ProxyPlan};
use crate::support::peers::{NodeOpts, Peer};

const CHUNK: usize = 1024 * 1024;

/// Uploads the edge sizes and a 100 MiB file through cuts; returns ferry's stderr.
fn interop(peer: &Peer, name: &str, extra: &str) -> String {
    let proxy = FlakyProxy::start(
        peer.addr(),
        ProxyPlan {
            cut_every_bytes: Some(7 * 1024 * 1024 + 12_345),
            ..ProxyPlan::default()
        },
    );
    let s = Scratch::new(name);
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 100 * 1024 * 1024 + 3];
    let files: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| s.file(&format!("{name}-{i}.bin"), *n, 100 + i as u64))
        .collect();
    let cfg = s.config(
        &proxy.rewrite(&peer.endpoint()),
        &format!("[upload]\nchunk_size = \"1MiB\"\n{extra}"),
    );
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let out = upload(&cfg, &[], &refs);
    let lines = finished(&out);
    assert_eq!(lines.len(), files.len(), "{}", stderr(&out));
    assert!(proxy.cuts() >= 14, "{name}: only {} cuts", proxy.cuts());
    assert_eq!(
        peer.upload_count(),
        files.len(),
        "{name}: exactly one upload per file"
    );
    for ((path, url), file) in lines.iter().zip(&files) {
        assert!(url.starts_with("http://"), "{url}");
        let want = std::fs::read(file).unwrap();
        assert_same_bytes(&peer.stored_bytes(url), &want, path);
    }
    stderr(&out)
}

#[test]
fn tus_node_server_edge_sizes_and_100_mib_through_cuts() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let log = interop(&peer, "node", "");
    assert!(!log.contains("chunk too large"), "{log}");
}

#[test]
fn tus_node_server_with_relative_location_and_creation_with_upload() {
    let peer = Peer::node_tus_server(NodeOpts {
        relative_location: true,
        ..NodeOpts::default()
    });
    let proxy = FlakyProxy::start(
        peer.addr(),
        ProxyPlan {
            cut_every_bytes: Some(400_000),
            ..ProxyPlan::default()
        },
    );
    let s = Scratch::new("node-cwu");
    let small = s.file("small.bin", 300_000, 1);
    let big = s.file("big.bin", 3 * CHUNK + 5, 2);
    let cfg = s.config(
        &proxy.rewrite(&peer.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"\ncreation_with_upload = true",
    );
    let lines = finished(&upload(&cfg, &[], &[&small, &big]));
    for ((path, url), file) in lines.iter().zip([&small, &big]) {
        assert_same_bytes(&peer.stored_bytes(url), &std::fs::read(file).unwrap(), path);
    }
}

#[test]
fn rustus_edge_sizes_and_100_mib_through_cuts() {
    // This rustus refuses PATCH bodies over 256 KiB with 413 (its --max-body-size), like a
    // proxy's body limit: ferry halves its 1 MiB chunks twice, once, and keeps that size.
    let peer = Peer::rustus();
    let log = interop(&peer, "rustus", "");
    assert_eq!(log.matches("chunk too large").count(), 2, "{log}");
}

#[test]
fn tus_node_server_kill_9_mid_file_then_rerun_completes_the_same_upload() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let proxy = FlakyProxy::start(
        peer.addr(),
        ProxyPlan {
            throttle_bytes_per_sec: Some(4 * 1024 * 1024),
            ..ProxyPlan::default()
        },
    );
    let s = Scratch::new("node-kill");
    let f = s.file("a.bin", 24 * 1024 * 1024, 77);
    let cfg = s.config(
        &proxy.rewrite(&peer.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"",
    );
    let mut child = crate::harness::spawn_upload(&cfg, &[], &[&f]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.bytes_up() < 4 * 1024 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL mid-file
    child.wait().unwrap();
    assert_eq!(peer.upload_count(), 1);
    proxy.set_plan(ProxyPlan::default());
    let lines = finished(&upload(&cfg, &[], &[&f]));
    assert_eq!(peer.upload_count(), 1, "the rerun resumed the same upload");
    assert_same_bytes(
        &peer.stored_bytes(&lines[0].1),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
}
