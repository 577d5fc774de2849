//! End to end: the daemon's scheduling findings, each against the real binary and our fault
//! server: resume continues the interrupted file at once, paused files stay in the status (the
//! next 32 queued listed, the rest counted), one
//! file's trouble does not hold up the spool, an endpoint that refuses creations fails no
//! file, a reload that moves the spool leaves the old one alone, and four uploads at once
//! reuse four connections.

use std::time::{Duration, Instant};

use crate::daemon::Spool;
use crate::harness::{assert_same_bytes, random_bytes, server_behind_proxy, sigterm, wait_until};
use crate::support::flaky_proxy::ProxyPlan;
use crate::support::tus_server::{Fault, ServerConfig, TusServer};

const MIB: usize = 1024 * 1024;

fn status_json(sp: &Spool) -> serde_json::Value {
    let out = sp.cmd(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// The status lists the next 32 queued files and counts the rest: with the whole queue
/// window listed, `status.json` was about 250 KB for a long queue, rewritten every second.
/// A file written while paused is counted at once.
#[test]
fn the_status_lists_the_next_32_queued_files_and_counts_the_rest() {
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("sched-listed", &server.endpoint(), "");
    assert!(sp.cmd(&["pause"]).status.success());
    // Written a minute ago: queued by the first scan, none left settling.
    let written = std::time::SystemTime::now() - Duration::from_secs(60);
    for i in 0..40 {
        let p = sp.drop_file(&format!("f{i:02}.bin"), 1000, i);
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(written).unwrap();
    }
    let mut child = sp.start();
    let mut json = serde_json::Value::Null;
    wait_until("40 files queued", Duration::from_secs(20), || {
        json = status_json(&sp);
        json["queued"] == 40
    });
    let listed: Vec<&str> = json["files"]
        .as_array()
        .map(|files| files.iter().filter_map(|f| f["state"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, ["paused"; 32], "{json}");
    assert_eq!(json["queued_unlisted"], 8, "{json}");
    let text = sp.status();
    assert!(
        text.contains("files: 32 paused (+8 more queued in the spool)"),
        "{text}"
    );
    // A file written while paused is counted within seconds, not at the next idle status
    // write 30 s later.
    sp.drop_file("late.bin", 1000, 40);
    wait_until("the new file counted", Duration::from_secs(5), || {
        status_json(&sp)["queued"] == 41
    });
    assert!(sp.cmd(&["resume"]).status.success());
    wait_until("the spool to empty", Duration::from_secs(30), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let uploads = server.uploads();
    assert_eq!(uploads.len(), 41, "each file once");
    assert!(uploads.iter().all(|u| u.offset == 1000), "all complete");
}

/// Finding 1 and 2: the file a pause interrupted used to leave the queue until a rescan (which
/// an unchanged spool skipped), vanished from the status while paused, and could be overtaken
/// by a newer file after the resume.
#[test]
fn resume_continues_the_interrupted_file_at_once_and_the_status_shows_it_while_paused() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(2 * MIB as u64),
        ..ProxyPlan::default()
    });
    // Rescans far apart: only the scheduler can bring the interrupted file back.
    let sp = Spool::new(
        "sched-resume",
        &proxy.rewrite(&server.endpoint()),
        "rescan_interval = \"10m\"\n[upload]\nchunk_size = \"1MiB\"",
    );
    let mut child = sp.start();
    sp.drop_file("big.bin", 12 * MIB, 4);
    wait_until("upload progress", Duration::from_secs(30), || {
        proxy.bytes_up() > 2 * MIB as u64
    });
    assert!(sp.cmd(&["pause"]).status.success());
    // A newer file arrives while paused; it must not overtake the interrupted one.
    sp.drop_file("newer.bin", 3 * MIB, 6);
    let file = |json: &serde_json::Value, name: &str| {
        json["files"]
            .as_array()
            .and_then(|files| {
                files
                    .iter()
                    .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with(name)))
                    .cloned()
            })
            .unwrap_or(serde_json::Value::Null)
    };
    let mut json = serde_json::Value::Null;
    wait_until(
        "the status to list both files as paused",
        Duration::from_secs(5),
        || {
            json = status_json(&sp);
            file(&json, "big.bin")["state"] == "paused"
                && file(&json, "newer.bin")["state"] == "paused"
        },
    );
    let big = file(&json, "big.bin");
    assert!(
        big["confirmed"].as_u64().unwrap_or(0) > 0 && big["size"] == 12 * MIB,
        "the paused file shows its confirmed bytes: {big}"
    );
    assert!(sp.status().contains("files: 2 paused"), "{}", sp.status());
    let paused_at = proxy.bytes_up();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(proxy.bytes_up(), paused_at, "nothing sent while paused");
    assert!(sp.cmd(&["resume"]).status.success());
    wait_until(
        "the interrupted file to go on without a rescan",
        Duration::from_secs(5),
        || proxy.bytes_up() > paused_at + 256 * 1024,
    );
    wait_until(
        "the status to show big.bin uploading (it goes first, not the newer file)",
        Duration::from_secs(5),
        || {
            let s = sp.status();
            s.lines()
                .any(|l| l.contains("uploading") && l.contains("big.bin"))
                && !s
                    .lines()
                    .any(|l| l.contains("uploading") && l.contains("newer.bin"))
        },
    );
    wait_until("both uploads to finish", Duration::from_secs(60), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    child.wait().unwrap();
    let uploads = server.uploads();
    assert_eq!(uploads.len(), 2, "{uploads:?}");
    let big = uploads
        .iter()
        .find(|u| u.length == 12 * MIB as u64)
        .unwrap();
    assert_same_bytes(
        &server.upload_bytes(&big.id),
        &random_bytes(12 * MIB, 4),
        "big.bin",
    );
}

/// Finding 3: a file whose own upload keeps failing (a 423 lock the server never releases) used
/// to sleep its backoff inside the only worker, forever, while every other file waited.
#[test]
fn one_files_trouble_does_not_hold_up_the_spool() {
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new(
        "sched-locked",
        &server.endpoint(),
        "[upload]\nchunk_size = \"64KiB\"\ncreation_with_upload = false\n[daemon]\nconcurrency = 1",
    );
    // The first PATCH is held for a while: long enough to pin the lock on that upload.
    server.push_fault(
        "PATCH",
        Fault::StallBeforeResponse {
            dur: Duration::from_millis(1500),
        },
    );
    let mut child = sp.start();
    sp.drop_file("locked.bin", 256 * 1024, 8);
    wait_until("locked.bin's upload", Duration::from_secs(20), || {
        server.uploads().len() == 1
    });
    let id = server.uploads()[0].id.clone();
    let locked = || Fault::Status {
        code: 423,
        body: "locked by another client".into(),
    };
    server.pin_fault("PATCH", &id, locked());
    server.pin_fault("HEAD", &id, locked());
    let fine = sp.drop_file("fine.bin", 200 * 1024, 10);
    wait_until(
        "fine.bin to be uploaded while locked.bin backs off",
        Duration::from_secs(20),
        || !fine.exists(),
    );
    // The status is written about once a second: wait for one after the lock began.
    wait_until(
        "the status to list the locked file with its error",
        Duration::from_secs(5),
        || {
            sp.status().lines().any(|l| {
                l.contains("locked.bin")
                    && (l.contains("backing off") || l.contains("uploading"))
                    && l.contains("423")
            })
        },
    );
    server.unpin_faults();
    wait_until(
        "locked.bin once the lock is gone",
        Duration::from_secs(20),
        || sp.spool_files().is_empty(),
    );
    sigterm(&child);
    child.wait().unwrap();
    let uploads = server.uploads();
    assert_eq!(uploads.len(), 2, "each file uploaded once: {uploads:?}");
    assert!(uploads.iter().all(|u| u.offset == u.length), "{uploads:?}");
}

/// Finding 4: a 404 on POST (a reverse proxy during a deploy) used to move every spool file into
/// the failed directory, one after the other, with an error line that named no file.
#[test]
fn an_endpoint_that_refuses_creations_during_a_deploy_fails_no_file() {
    let server = TusServer::start(ServerConfig::default());
    let failed = crate::harness::Scratch::new("sched-deploy-failed");
    let sp = Spool::new(
        "sched-deploy",
        &server.endpoint(),
        &format!("failed_dir = {:?}", failed.dir),
    );
    for _ in 0..4 {
        server.push_fault(
            "POST",
            Fault::Status {
                code: 404,
                body: "Cannot POST /files/".into(),
            },
        );
    }
    let mut child = sp.start();
    let names = ["a.bin", "b.bin", "c.bin"];
    for (n, name) in names.iter().enumerate() {
        sp.drop_file(name, 50_000 + n, 30 + n as u64);
    }
    wait_until(
        "the refusals to be used up and every file uploaded",
        Duration::from_secs(40),
        || sp.spool_files().is_empty(),
    );
    sigterm(&child);
    child.wait().unwrap();
    let moved: Vec<_> = std::fs::read_dir(&failed.dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    assert!(moved.is_empty(), "no file failed: {moved:?}");
    assert_eq!(server.pending_faults(), 0);
    assert_eq!(server.uploads().len(), 3, "each file once");
    let log = sp.log();
    assert!(
        log.contains("the endpoint refuses new uploads (404"),
        "the log says what happened:\n{log}"
    );
}

/// Finding 6: after a reload that moved `spool.dir`, the watcher kept the old spool, so files
/// written there were still uploaded and deleted.
#[test]
fn a_reload_that_moves_the_spool_leaves_the_old_one_alone() {
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("sched-move", &server.endpoint(), "");
    let new_spool = sp.s.dir.join("spool2");
    std::fs::create_dir_all(&new_spool).unwrap();
    let mut child = sp.start();
    let first = sp.drop_file("first.bin", 1000, 40);
    wait_until("first.bin", Duration::from_secs(20), || !first.exists());
    let text = std::fs::read_to_string(&sp.config).unwrap().replace(
        &format!("dir = {:?}", sp.spool),
        &format!("dir = {new_spool:?}"),
    );
    std::fs::write(&sp.config, text).unwrap();
    crate::harness::signal(&child, "HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        sp.log().contains("configuration reloaded")
    });
    let old = sp.drop_file("old.bin", 1000, 42);
    let new = new_spool.join("new.bin");
    std::fs::write(&new, random_bytes(1000, 44)).unwrap();
    wait_until("new.bin in the new spool", Duration::from_secs(20), || {
        !new.exists()
    });
    // Give the old spool's watcher and a rescan time to do the wrong thing.
    std::thread::sleep(Duration::from_millis(2500));
    sigterm(&child);
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(&old).unwrap(),
        random_bytes(1000, 42),
        "a file of the old spool is neither deleted nor changed"
    );
    assert_eq!(server.uploads().len(), 2, "first.bin and new.bin only");
}

/// Finding 5: after a long outage each file's own backoff (full jitter up to `max_delay`, 2
/// minutes by default) could leave ferry idle for a minute or more on a link that was back.
/// Now the link backs off on its own, one probe at a time, and the probe cap (15 s) bounds
/// the wait after the link returns, whatever the retry policy; no file is charged an attempt.
#[test]
fn after_a_long_outage_the_link_is_used_again_within_the_probe_cap() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        refuse: true,
        ..ProxyPlan::default()
    });
    let sp = Spool::new("sched-outage", &proxy.rewrite(&server.endpoint()), "");
    // The shipped retry policy (1 s doubling to 2 minutes), not the tests' fast one.
    let text = std::fs::read_to_string(&sp.config)
        .unwrap()
        .replace("initial_delay = \"20ms\"", "initial_delay = \"1s\"")
        .replace("max_delay = \"200ms\"", "max_delay = \"2m\"");
    std::fs::write(&sp.config, text).unwrap();
    let mut child = sp.start();
    sp.drop_file("a.bin", 200_000, 51);
    sp.drop_file("b.bin", 200_000, 52);
    // Long enough for a per-file backoff to have grown past 30 s.
    std::thread::sleep(Duration::from_secs(40));
    let status = status_json(&sp);
    let probes = proxy.connections();
    proxy.set_plan(ProxyPlan::default());
    let back = Instant::now();
    wait_until(
        "a request after the link came back",
        Duration::from_secs(40),
        || !server.requests().is_empty(),
    );
    let idle = back.elapsed();
    wait_until("both files uploaded", Duration::from_secs(30), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    child.wait().unwrap();
    assert!(
        idle < Duration::from_secs(16),
        "the first request came {idle:?} after the link returned (probe cap 15 s)"
    );
    // 1, 2, 4, 8, then every 15 s at most (each delay jittered to half of it at least).
    assert!(
        (3..=20).contains(&probes),
        "{probes} connections in 40 s of outage: one probe at a time, backing off"
    );
    let blocked = status["blocked"].as_str().unwrap_or_default();
    assert!(
        blocked.contains("no answer from the server"),
        "the status says why nothing moves: {status}"
    );
    for f in status["files"].as_array().into_iter().flatten() {
        assert_eq!(f["attempts"], 0, "no file is charged for the link: {f}");
    }
    for (name, seed) in [("a.bin", 51), ("b.bin", 52)] {
        let id = server
            .uploads()
            .into_iter()
            .find(|u| {
                u.metadata
                    .iter()
                    .any(|(k, v)| k == "filename" && v.as_deref() == Some(name))
            })
            .map(|u| u.id)
            .unwrap_or_else(|| panic!("{name} was uploaded"));
        assert_same_bytes(
            &server.upload_bytes(&id),
            &random_bytes(200_000, seed),
            name,
        );
    }
}

/// A network namespace of our own with `lo` up, removed on drop. Needs root.
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn new(tag: &str) -> Netns {
        let name = format!("ferry-{tag}-{}", std::process::id());
        let ns = Netns(name);
        ns.ip(&["netns", "add", &ns.0], false);
        ns.ip(&["link", "set", "lo", "up"], true);
        ns
    }

    /// Runs `ip ARGS` (inside the namespace when `inside`); panics with what to do if it fails.
    pub(crate) fn ip(&self, args: &[&str], inside: bool) {
        let mut c = std::process::Command::new("ip");
        if inside {
            c.args(["netns", "exec", &self.0, "ip"]);
        }
        let out = c.args(args).output().expect("run ip (iproute2)");
        assert!(
            out.status.success(),
            "ip {args:?} failed: {} (this test needs root and iproute2, as CI has: it makes a network namespace)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// The kernel's announcement that a link is up probes the link at once: `lo` of a network
/// namespace of our own (with @tus/server and ferry in it) goes down, ferry's probes back off,
/// and when `lo` comes back the upload goes on within a second or two instead of waiting out
/// the probe delay.
#[test]
fn a_network_change_probes_the_link_at_once() {
    let ns = Netns::new("nc");
    let ns_name: &'static str = Box::leak(ns.0.clone().into_boxed_str());
    let peer = crate::support::peers::Peer::node_tus_server(crate::support::peers::NodeOpts {
        netns: Some(ns_name),
        ..Default::default()
    });
    let sp = Spool::new("sched-netns", &peer.endpoint(), "");
    // The shipped retry policy and a short connect timeout: probes are short, their delays long.
    let text = std::fs::read_to_string(&sp.config)
        .unwrap()
        .replace("initial_delay = \"20ms\"", "initial_delay = \"1s\"")
        .replace("max_delay = \"200ms\"", "max_delay = \"2m\"")
        .replace("connect_timeout = \"5s\"", "connect_timeout = \"1s\"");
    std::fs::write(&sp.config, text).unwrap();
    ns.ip(&["link", "set", "lo", "down"], true);
    let mut argv = vec![
        "ip".to_string(),
        "netns".into(),
        "exec".into(),
        ns.0.clone(),
    ];
    argv.extend(crate::harness::ferry_argv());
    argv.extend(["run".into(), "--config".into()]);
    argv.push(sp.config.display().to_string());
    let log = std::fs::File::create(&sp.log).unwrap();
    let mut child = crate::harness::Daemon(
        crate::harness::loopback_command(&argv)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    sp.drop_file("a.bin", 100_000, 61);
    // Wait until the next probe is at least 6 s away, as the status says right after a probe.
    let mut next_probe_in = 0;
    wait_until(
        "the link's probes to back off to 6 s or more",
        Duration::from_secs(90),
        || {
            let status = status_json(&sp);
            let blocked = status["blocked"].as_str().unwrap_or_default();
            let updated = status["updated_unix"].as_u64().unwrap_or(0);
            let secs = blocked
                .split("trying again in ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            next_probe_in = (updated + secs).saturating_sub(now);
            next_probe_in >= 6
        },
    );
    assert!(
        sp.spool_files().len() == 1 && peer.upload_count() == 0,
        "nothing went through a link that was down"
    );
    ns.ip(&["link", "set", "lo", "up"], true);
    let back = Instant::now();
    wait_until(
        "the upload after lo came up",
        Duration::from_secs(30),
        || sp.spool_files().is_empty(),
    );
    let took = back.elapsed();
    sigterm(&child);
    child.wait().unwrap();
    assert!(
        took < Duration::from_secs(3),
        "uploaded {took:?} after lo came up; the next probe was due in {next_probe_in} s: the network change did not probe at once\n{}",
        sp.log()
    );
}

/// Four uploads at once keep four connections: ureq's pool kept 3 per host by default, so each
/// time all four workers handed theirs back one was closed, and the next request opened
/// another (101 connections for 300 small files; on a cellular link each is a TCP and a TLS
/// handshake more).
#[test]
fn four_uploads_at_once_reuse_four_connections() {
    let (server, proxy) = server_behind_proxy(ProxyPlan::default());
    let sp = Spool::new(
        "sched-pool",
        &proxy.rewrite(&server.endpoint()),
        "[daemon]\nconcurrency = 4",
    );
    let files = 48;
    for i in 0..files {
        sp.drop_file(&format!("f{i:02}.bin"), 20_000, i as u64);
    }
    // Settled before the start, so that the four workers take files back to back.
    std::thread::sleep(Duration::from_millis(400));
    let mut child = sp.start();
    wait_until("every file uploaded", Duration::from_secs(60), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    child.wait().unwrap();
    let complete = server
        .uploads()
        .iter()
        .filter(|u| u.offset == u.length && u.length == 20_000)
        .count();
    assert_eq!(complete, files, "{}", sp.log());
    let connections = proxy.connections();
    assert!(
        (1..=4).contains(&connections),
        "{connections} connections for {files} files with 4 uploads at once"
    );
}
