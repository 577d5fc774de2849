//! End to end against @tus/server: `spool.priority` puts an alarm image before a long video
//! already uploading (the video yields at its next step and resumes later from the server's
//! offset, on the same upload), and `spool.order = "newest-first"` sends the newest first.

use std::time::Duration;

use crate::daemon::Spool;
use crate::harness::{sigterm, wait_until};
use crate::support::flaky_proxy::{FlakyProxy, ProxyPlan};
use crate::support::peers::{NodeOpts, Peer};

const MIB: usize = 1024 * 1024;

#[test]
fn an_alarm_image_preempts_a_long_video_in_flight() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let proxy = FlakyProxy::start(peer.addr(), ProxyPlan::default());
    let sp = Spool::new(
        "prio-alarm",
        &proxy.rewrite(&peer.endpoint()),
        "recursive = true\npriority = [\"alarms/*\", \"*.jpg\"]\n[upload]\nchunk_size = \"256KiB\"\nrate_limit = \"1MiB/s\"",
    );
    std::fs::create_dir_all(sp.spool.join("alarms")).unwrap();
    let mut child = sp.start();
    let video = sp.drop_file("video.mp4", 12 * MIB, 50);
    wait_until("the video to be uploading", Duration::from_secs(20), || {
        proxy.bytes_up() > MIB as u64
    });
    let alarm = sp.drop_file("alarms/door.jpg", 50_000, 52);
    wait_until(
        "the alarm image to be uploaded and deleted",
        Duration::from_secs(10),
        || !alarm.exists(),
    );
    assert!(
        video.exists(),
        "the alarm went first; the video (12 MiB at 1 MiB/s) is not done yet"
    );
    assert!(sp.cmd(&["limit", "0"]).status.success());
    wait_until("the video to finish", Duration::from_secs(30), || {
        !video.exists()
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        peer.upload_count(),
        2,
        "the video resumed its own upload after yielding: {}",
        sp.log()
    );
}

#[test]
fn newest_first_sends_the_latest_file_before_older_ones() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let proxy = FlakyProxy::start(peer.addr(), ProxyPlan::default());
    let sp = Spool::new(
        "prio-newest",
        &proxy.rewrite(&peer.endpoint()),
        "order = \"newest-first\"",
    );
    // Written while paused, oldest first, with distinct modification times.
    assert!(sp.cmd(&["pause"]).status.success());
    let mut child = sp.start();
    let names = ["a.bin", "b.bin", "c.bin"];
    for (i, n) in names.iter().enumerate() {
        let p = sp.drop_file(n, 100_000, 60 + i as u64);
        let t = std::time::SystemTime::now() - Duration::from_secs(100 - i as u64 * 10);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    wait_until("all three queued", Duration::from_secs(10), || {
        sp.status().contains("files: 3 paused")
    });
    assert!(sp.cmd(&["resume"]).status.success());
    wait_until("the spool to empty", Duration::from_secs(20), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    // The order the bytes were last written in is the order of the uploads (one worker, one
    // PATCH each).
    let mut written: Vec<_> = peer
        .uploads_by_filename()
        .into_iter()
        .map(|(name, bytes)| (std::fs::metadata(bytes).unwrap().modified().unwrap(), name))
        .collect();
    written.sort();
    let order: Vec<&str> = written.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(order, ["c.bin", "b.bin", "a.bin"], "newest first");
}

#[test]
fn bad_order_and_priority_values_are_refused_by_key() {
    for (extra, want) in [
        (
            "order = \"random\"",
            "spool.order = \"random\": use \"oldest-first\"",
        ),
        ("priority = [\"\"]", "spool.priority[0] is empty"),
        (
            "priority = [\"/abs/*\"]",
            "spool.priority[0] = \"/abs/*\": patterns are relative",
        ),
    ] {
        let sp = Spool::new("prio-bad", "http://127.0.0.1:9/files/", extra);
        let out = sp.cmd(&["check-config"]);
        assert_eq!(out.status.code(), Some(2), "{extra}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{extra}: {err}");
    }
}
