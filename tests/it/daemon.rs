//! End to end: `ferry run` (the real binary) emptying a spool into real servers, through cut
//! links, kill -9, pauses and signals.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{
    assert_same_bytes, ferry, random_bytes, server_behind_proxy, sigterm, wait_until, Daemon,
    Scratch,
};
use crate::support::flaky_proxy::{FlakyProxy, ProxyPlan};
use crate::support::peers::{NodeOpts, Peer};
use crate::support::tus_server::{Fault, ServerConfig, TusServer};

const MIB: usize = 1024 * 1024;

/// A spool, a state dir and a config for `ferry run`.
pub(crate) struct Spool {
    pub(crate) s: Scratch,
    pub(crate) spool: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) log: PathBuf,
}

impl Spool {
    pub(crate) fn new(name: &str, endpoint: &str, extra: &str) -> Self {
        let s = Scratch::new(name);
        let spool = s.dir.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let config = s.dir.join("ferry.toml");
        let text = format!(
            "state_dir = {:?}\n[server]\nendpoint = {endpoint:?}\nidle_timeout = \"5s\"\nconnect_timeout = \"5s\"\n[retry]\ninitial_delay = \"20ms\"\nmax_delay = \"200ms\"\n[spool]\ndir = {:?}\nsettle_time = \"300ms\"\n{extra}\n",
            s.state(),
            spool
        );
        std::fs::write(&config, text).unwrap();
        let log = s.dir.join("ferry.log");
        Spool {
            s,
            spool,
            config,
            log,
        }
    }

    pub(crate) fn start(&self) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut c = ferry();
        c.arg("run").arg("--config").arg(&self.config);
        Daemon(
            c.stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        )
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> std::process::Output {
        let mut c = ferry();
        c.args(args).arg("--config").arg(&self.config);
        c.output().unwrap()
    }

    /// What `ferry status` prints.
    pub(crate) fn status(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["status"]).stdout).into_owned()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes a file the way cameras do: half written in place, half renamed in.
    pub(crate) fn drop_file(&self, name: &str, len: usize, seed: u64) -> PathBuf {
        let path = self.spool.join(name);
        if seed % 2 == 0 {
            std::fs::write(&path, random_bytes(len, seed)).unwrap();
        } else {
            let part = self.spool.join(format!("{name}.part"));
            std::fs::write(&part, random_bytes(len, seed)).unwrap();
            std::fs::rename(&part, &path).unwrap();
        }
        path
    }

    pub(crate) fn spool_files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.spool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    }
}

/// The mixed sizes of a camera's day: mostly small files, some large ones.
fn size_of(i: usize) -> usize {
    match i {
        0 => 0,
        i if i % 50 == 25 => 50 * MIB + i,
        i if i % 10 == 3 => 4 * MIB + i,
        i => (i * 7919) % (256 * 1024),
    }
}

/// Checks that every file name uploaded completely exactly once with the right bytes.
fn assert_each_uploaded_once(server: &TusServer, names: &HashMap<String, (usize, u64)>) {
    let mut complete: HashMap<String, usize> = HashMap::new();
    for u in server
        .uploads()
        .iter()
        .filter(|u| !u.deleted && u.offset == u.length)
    {
        let name = u
            .metadata
            .iter()
            .find(|(k, _)| k == "filename")
            .and_then(|(_, v)| v.clone())
            .unwrap();
        *complete.entry(name.clone()).or_default() += 1;
        let (len, seed) = names[&name];
        assert_same_bytes(&server.upload_bytes(&u.id), &random_bytes(len, seed), &name);
    }
    for name in names.keys() {
        assert_eq!(
            complete.get(name).copied().unwrap_or(0),
            1,
            "{name}: completed uploads"
        );
    }
}

#[test]
fn two_hundred_files_through_a_cut_link_each_arrive_once_and_are_deleted() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        cut_every_bytes: Some(3 * MIB as u64 + 777),
        ..ProxyPlan::default()
    });
    let sp = Spool::new(
        "d200",
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"",
    );
    let mut child = sp.start();
    let mut names = HashMap::new();
    for i in 0..200 {
        let name = format!("cam-{i:03}.mp4");
        sp.drop_file(&name, size_of(i), i as u64);
        names.insert(name, (size_of(i), i as u64));
    }
    wait_until("the spool to empty", Duration::from_secs(300), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert!(proxy.cuts() >= 50, "only {} cuts", proxy.cuts());
    assert_each_uploaded_once(&server, &names);
    let status = String::from_utf8_lossy(&sp.cmd(&["status", "--json"]).stdout).to_string();
    assert!(status.contains("\"files_done\":200"), "{status}");
}

#[test]
fn tus_node_server_receives_two_hundred_files_through_cuts() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let proxy = FlakyProxy::start(
        peer.addr(),
        ProxyPlan {
            cut_every_bytes: Some(3 * MIB as u64 + 99),
            ..ProxyPlan::default()
        },
    );
    let done = Scratch::new("node-done");
    let sp = Spool::new(
        "dnode",
        &proxy.rewrite(&peer.endpoint()),
        &format!(
            "after_upload = \"move:{}\"\n[upload]\nchunk_size = \"1MiB\"",
            done.dir.display()
        ),
    );
    let mut child = sp.start();
    let mut names = HashMap::new();
    for i in 0..200 {
        let name = format!("f{i:03}.bin");
        sp.drop_file(&name, size_of(i), 1000 + i as u64);
        names.insert(name, (size_of(i), 1000 + i as u64));
    }
    wait_until("the spool to empty", Duration::from_secs(300), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        peer.upload_count(),
        names.len(),
        "one upload per file: {}",
        sp.log()
    );
    assert!(proxy.cuts() >= 50, "only {} cuts", proxy.cuts());
    let mut seen = 0;
    for (name, bytes) in peer.uploads_by_filename() {
        let (len, seed) = names[&name];
        assert_same_bytes(
            &std::fs::read(bytes).unwrap(),
            &random_bytes(len, seed),
            &name,
        );
        seen += 1;
    }
    assert_eq!(seen, names.len());
    for (name, (len, seed)) in &names {
        assert_same_bytes(
            &std::fs::read(done.dir.join(name)).unwrap(),
            &random_bytes(*len, *seed),
            "moved copy",
        );
    }
}

#[test]
fn kill_9_thirty_times_loses_nothing_and_duplicates_nothing() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(8 * MIB as u64),
        cut_every_bytes: Some(5 * MIB as u64 + 3),
        ..ProxyPlan::default()
    });
    let sp = Spool::new(
        "soak",
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"512KiB\"",
    );
    let mut names = HashMap::new();
    for i in 0..40 {
        let len = if i % 8 == 0 {
            6 * MIB + i
        } else {
            (i * 104_729) % (700 * 1024)
        };
        let name = format!("soak-{i:02}.bin");
        sp.drop_file(&name, len, 500 + i as u64);
        names.insert(name, (len, 500 + i as u64));
    }
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..30 {
        let mut child = sp.start();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(150 + rng % 600));
        child.kill().unwrap();
        child.wait().unwrap();
        // Invariant 1: a file gone from the spool is complete on the server.
        let present: Vec<String> = sp
            .spool_files()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for (name, (len, _)) in &names {
            if !present.contains(name) {
                let complete = server.uploads().iter().any(|u| {
                    u.offset == u.length
                        && u.length == *len as u64
                        && u.metadata
                            .iter()
                            .any(|(k, v)| k == "filename" && v.as_deref() == Some(name))
                });
                assert!(
                    complete,
                    "round {round}: {name} left the spool before the server held all of it"
                );
            }
        }
    }
    let mut child = sp.start();
    wait_until(
        "the spool to empty after the kills",
        Duration::from_secs(240),
        || sp.spool_files().is_empty(),
    );
    sigterm(&child);
    child.wait().unwrap();
    assert_each_uploaded_once(&server, &names);
}

/// Regression: the spool watcher asks for a rescan once its watch is in place, and that
/// request arrived while the first scan ran, so every start walked the spool twice (0.5 s
/// more for 100,000 files here, seconds on a Pi Zero) and a stop during the second walk
/// waited for it. The watch is now in place before the first scan begins.
#[test]
fn a_start_walks_the_spool_once() {
    let sp = Spool::new("one-walk", "http://127.0.0.1:1/files/", "");
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for i in 0..3000 {
        let path = sp.spool.join(format!("f{i:05}.bin"));
        std::fs::write(&path, b"0123456789").unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(hour_ago).unwrap();
    }
    assert!(sp.cmd(&["pause"]).status.success());
    let log = std::fs::File::create(&sp.log).unwrap();
    let mut c = ferry();
    c.env("RUST_LOG", "debug")
        .arg("run")
        .arg("--config")
        .arg(&sp.config);
    let child = Daemon(
        c.stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    // The limits check follows the scan; a second scan would follow within milliseconds.
    wait_until("the first check", Duration::from_secs(20), || {
        sp.log().contains("spool check: 3000 waiting files")
    });
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&child);
    let mut child = child;
    assert!(child.0.wait().unwrap().success());
    let log = sp.log();
    assert_eq!(
        log.matches("DEBUG] scan: 3000 entries").count(),
        1,
        "the spool was walked more than once by scans:\n{}",
        log.lines()
            .filter(|l| l.contains("scan:") || l.contains("check:"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn pause_takes_effect_within_a_second_survives_a_restart_and_resume_finishes() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(2 * MIB as u64),
        ..ProxyPlan::default()
    });
    let sp = Spool::new(
        "pause",
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"",
    );
    let mut child = sp.start();
    sp.drop_file("big.bin", 12 * MIB, 4);
    wait_until("upload progress", Duration::from_secs(30), || {
        proxy.bytes_up() > 2 * MIB as u64
    });
    let out = sp.cmd(&["pause"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("no ferry daemon"), "the daemon runs: {err}");
    std::thread::sleep(Duration::from_millis(1000));
    let after_pause = proxy.bytes_up();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(proxy.bytes_up(), after_pause, "nothing sent while paused");
    let status = sp.cmd(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("paused"), "{text}");
    assert_eq!(status.status.code(), Some(0), "a daemon runs: {text}");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    // Issue 13: without a daemon, status exits 3 (still saying what it knows) and pause warns.
    let status = sp.cmd(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(3), "{text}");
    assert!(text.contains("not running (last state: stopped)"), "{text}");
    let again = sp.cmd(&["pause"]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "no ferry daemon is running on {}; it will start paused",
            sp.s.state().display()
        )),
        "{err}"
    );
    let mut child = sp.start();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        proxy.bytes_up(),
        after_pause,
        "a paused agent stays paused after a restart"
    );
    assert!(sp.cmd(&["resume"]).status.success());
    wait_until("the upload to finish", Duration::from_secs(60), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    child.wait().unwrap();
    assert_eq!(server.uploads().len(), 1, "resumed the same upload");
    assert_same_bytes(
        &server.upload_bytes(&server.uploads()[0].id),
        &random_bytes(12 * MIB, 4),
        "big.bin",
    );
}

#[test]
fn sigterm_mid_upload_stops_within_5_seconds_and_the_restart_resumes() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(MIB as u64),
        ..ProxyPlan::default()
    });
    let sp = Spool::new(
        "term",
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"6MiB\"",
    );
    let mut child = sp.start();
    sp.drop_file("big.bin", 8 * MIB, 6);
    wait_until("upload progress", Duration::from_secs(30), || {
        proxy.bytes_up() > MIB as u64
    });
    let t = Instant::now();
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        t.elapsed()
    );
    assert!(status.success(), "{status:?}\n{}", sp.log());
    proxy.set_plan(ProxyPlan::default());
    let mut child = sp.start();
    wait_until("the upload to finish", Duration::from_secs(60), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    child.wait().unwrap();
    assert_eq!(server.uploads().len(), 1);
    assert_same_bytes(
        &server.upload_bytes(&server.uploads()[0].id),
        &random_bytes(8 * MIB, 6),
        "big.bin",
    );
}

#[test]
fn symlinks_and_fifos_are_refused_and_never_touched() {
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("links", &server.endpoint(), "");
    let outside = sp.s.dir.join("secret.txt");
    std::fs::write(&outside, b"not for upload").unwrap();
    // One link is there before the start (found by the first scan) ...
    std::os::unix::fs::symlink(&outside, sp.spool.join("early-link.txt")).unwrap();
    let mut child = sp.start();
    sp.drop_file("real.bin", 1000, 2);
    wait_until("real.bin to be uploaded", Duration::from_secs(20), || {
        !sp.spool.join("real.bin").exists()
    });
    // ... the others appear while it runs: only inotify can report them before the next
    // rescan (60 s), so this checks the events.
    std::os::unix::fs::symlink(&outside, sp.spool.join("link.txt")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(sp.spool.join("pipe"))
        .status()
        .unwrap()
        .success());
    let refused = |name: &str, why: &str| {
        sp.log()
            .lines()
            .any(|l| l.contains(name) && l.contains(why))
    };
    wait_until("the refusals to be logged", Duration::from_secs(10), || {
        refused("early-link.txt", "symbolic link")
            && refused("/link.txt:", "symbolic link")
            && refused("/pipe:", "not a regular file")
    });
    sigterm(&child);
    child.wait().unwrap();
    assert_eq!(server.uploads().len(), 1);
    assert!(
        sp.spool.join("link.txt").symlink_metadata().is_ok(),
        "the link is left alone"
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"not for upload");
}

#[test]
fn a_file_changed_mid_upload_starts_over_and_its_old_upload_is_terminated() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(2 * MIB as u64),
        ..ProxyPlan::default()
    });
    let sp = Spool::new(
        "changed",
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"",
    );
    let mut child = sp.start();
    let path = sp.drop_file("grow.bin", 6 * MIB, 8);
    wait_until("upload progress", Duration::from_secs(30), || {
        proxy.bytes_up() > 2 * MIB as u64
    });
    let mut content = random_bytes(6 * MIB, 8);
    content.extend_from_slice(b"appended later");
    // The new content appears at once (written aside, renamed over): written in place, the
    // file is empty for a moment after the truncation, and ferry may upload and delete that
    // empty file while the test still writes into the unlinked inode (a flake under load).
    let aside = sp.s.dir.join("grow.bin.new");
    std::fs::write(&aside, &content).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    proxy.set_plan(ProxyPlan::default());
    wait_until(
        "the new content to be uploaded",
        Duration::from_secs(60),
        || !path.exists(),
    );
    sigterm(&child);
    child.wait().unwrap();
    let uploads = server.uploads();
    assert_eq!(uploads.len(), 2, "{}", sp.log());
    assert!(uploads[0].deleted, "the old upload was terminated");
    assert_same_bytes(&server.upload_bytes(&uploads[1].id), &content, "grow.bin");
}

#[test]
fn a_file_deleted_mid_upload_is_forgotten_and_the_others_go_on() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(2 * MIB as u64),
        ..ProxyPlan::default()
    });
    let sp = Spool::new(
        "deleted",
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"",
    );
    let mut child = sp.start();
    let doomed = sp.drop_file("a-doomed.bin", 8 * MIB, 10);
    wait_until("upload progress", Duration::from_secs(30), || {
        proxy.bytes_up() > MIB as u64
    });
    sp.drop_file("b-next.bin", 100_000, 12);
    std::fs::remove_file(&doomed).unwrap();
    proxy.set_plan(ProxyPlan::default());
    wait_until("b-next.bin to be uploaded", Duration::from_secs(30), || {
        sp.spool_files().is_empty()
    });
    wait_until(
        "the vanished file to be forgotten",
        Duration::from_secs(10),
        || sp.log().contains("vanished"),
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let b = server
        .uploads()
        .into_iter()
        .find(|u| u.length == 100_000)
        .unwrap();
    assert_same_bytes(
        &server.upload_bytes(&b.id),
        &random_bytes(100_000, 12),
        "b-next.bin",
    );
}

#[test]
fn permanent_failures_go_to_the_failed_dir_with_a_sidecar() {
    let server = TusServer::start(ServerConfig::default());
    let failed = Scratch::new("failed-dir");
    let sp = Spool::new(
        "fail",
        &server.endpoint(),
        &format!("failed_dir = {:?}", failed.dir),
    );
    server.push_fault(
        "POST",
        Fault::Status {
            code: 415,
            body: "we do not take videos".into(),
        },
    );
    let mut child = sp.start();
    sp.drop_file("rejected.mp4", 5000, 14);
    wait_until(
        "the file to be moved aside",
        Duration::from_secs(20),
        || failed.dir.join("rejected.mp4").exists(),
    );
    let sidecar =
        std::fs::read_to_string(failed.dir.join("rejected.mp4.ferry-error.json")).unwrap();
    assert!(
        sidecar.contains("415") && sidecar.contains("we do not take videos"),
        "{sidecar}"
    );
    wait_until(
        "the status to show the failure",
        Duration::from_secs(10),
        || {
            let status = sp.status();
            status.contains("rejected.mp4") && status.contains("415")
        },
    );
    sigterm(&child);
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(failed.dir.join("rejected.mp4")).unwrap(),
        random_bytes(5000, 14),
        "nothing lost"
    );
}

#[test]
fn a_missing_spool_is_waited_for_and_keep_never_uploads_twice() {
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("missing", &server.endpoint(), "after_upload = \"keep\"");
    std::fs::remove_dir(&sp.spool).unwrap();
    let mut child = sp.start();
    wait_until(
        "the missing spool to be reported",
        Duration::from_secs(10),
        || sp.log().contains("waiting for it"),
    );
    std::fs::create_dir(&sp.spool).unwrap();
    let f = sp.drop_file("late.bin", 20_000, 16);
    wait_until("late.bin to be uploaded", Duration::from_secs(20), || {
        server.uploads().iter().any(|u| u.offset == 20_000)
    });
    sigterm(&child);
    child.wait().unwrap();
    let mut child = sp.start();
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&child);
    child.wait().unwrap();
    assert!(f.exists(), "keep leaves the file");
    assert_eq!(
        server.uploads().len(),
        1,
        "kept files are remembered as done: {}",
        sp.log()
    );
}

#[test]
fn config_errors_exit_2_before_anything_runs() {
    let sp = Spool::new(
        "badcfg",
        "http://127.0.0.1:9/files/",
        "after_upload = \"shred\"",
    );
    let out = sp.cmd(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spool.after_upload"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let check = sp.cmd(&["check-config"]);
    assert_eq!(check.status.code(), Some(2));
}

#[test]
fn the_rate_limit_holds_uploads_below_it() {
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("rate", &server.endpoint(), "[daemon]\nrate_limit = \"1MB\"");
    let mut child = sp.start();
    let t = Instant::now();
    sp.drop_file("limited.bin", 3_000_000, 18);
    wait_until("the upload", Duration::from_secs(30), || {
        sp.spool_files().is_empty()
    });
    // 3 MB at 1 MB/s with a quarter-second burst cannot take less than 2.75 s (a lower bound:
    // a busy machine only makes it slower).
    assert!(
        t.elapsed() >= Duration::from_millis(2750),
        "took {:?}",
        t.elapsed()
    );
    sigterm(&child);
    child.wait().unwrap();
    assert_same_bytes(
        &server.upload_bytes(&server.uploads()[0].id),
        &random_bytes(3_000_000, 18),
        "limited.bin",
    );
}

#[test]
fn sighup_reloads_the_spool_settings_and_metrics_are_written() {
    let server = TusServer::start(ServerConfig::default());
    let metrics = Scratch::new("metrics");
    let prom = metrics.dir.join("ferry.prom");
    let sp = Spool::new(
        "hup",
        &server.endpoint(),
        &format!("after_upload = \"keep\"\n[daemon]\nmetrics_file = {prom:?}"),
    );
    let mut child = sp.start();
    let kept = sp.drop_file("kept.bin", 1000, 20);
    wait_until("kept.bin to be uploaded", Duration::from_secs(20), || {
        server.uploads().len() == 1 && server.uploads()[0].offset == 1000
    });
    let text = std::fs::read_to_string(&sp.config)
        .unwrap()
        .replace("after_upload = \"keep\"", "after_upload = \"delete\"");
    std::fs::write(&sp.config, text).unwrap();
    crate::harness::signal(&child, "HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        sp.log().contains("configuration reloaded")
    });
    let deleted = sp.drop_file("deleted.bin", 1000, 22);
    wait_until(
        "deleted.bin to be uploaded and deleted",
        Duration::from_secs(20),
        || !deleted.exists(),
    );
    // Files kept earlier are done: the new action applies to them too, without a new upload.
    wait_until(
        "kept.bin to be deleted by the new action",
        Duration::from_secs(20),
        || !kept.exists(),
    );
    wait_until("the metrics", Duration::from_secs(40), || {
        std::fs::read_to_string(&prom).is_ok_and(|m| m.contains("ferry_files_done_total 2"))
    });
    sigterm(&child);
    child.wait().unwrap();
    assert_eq!(server.uploads().len(), 2);
}

/// These tests change users or mount filesystems: they need root (CI runs as root).
pub(crate) fn require_root(what: &str) {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap();
    assert_eq!(
        uid, "0",
        "{what} needs root (to run ferry as another user or mount a tmpfs); run the tests as root"
    );
}

#[test]
fn an_unreadable_file_is_reported_and_uploaded_once_its_permissions_are_fixed() {
    use std::os::unix::fs::PermissionsExt;
    require_root("the unreadable-file test");
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("unreadable", &server.endpoint(), "rescan_interval = \"1s\"");
    for d in [&sp.s.dir, &sp.spool] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let f = sp.drop_file("locked.bin", 4000, 24);
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
    let log = std::fs::File::create(&sp.log).unwrap();
    let mut child = Daemon(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(crate::harness::ferry_argv())
            .args(["run", "--config"])
            .arg(&sp.config)
            .env("RUST_LOG", "info")
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_until(
        "the permission problem to be logged",
        Duration::from_secs(15),
        || sp.log().contains("permission denied"),
    );
    assert!(server.uploads().is_empty());
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    wait_until(
        "the file to be uploaded once readable",
        Duration::from_secs(15),
        || !f.exists(),
    );
    sigterm(&child);
    child.wait().unwrap();
    assert_same_bytes(
        &server.upload_bytes(&server.uploads()[0].id),
        &random_bytes(4000, 24),
        "locked.bin",
    );
}

#[test]
fn a_full_state_disk_is_a_clear_error_and_nothing_is_lost() {
    require_root("the disk-full test");
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("full", &server.endpoint(), "");
    let f = sp.drop_file("waiting.bin", 50_000, 26);
    std::fs::create_dir_all(sp.s.state()).unwrap();
    // A private mount namespace: a 1 MiB tmpfs over the state dir, filled up; ferry must say
    // so and keep the spool file; then, with space freed, the same state dir works.
    let script = format!(
        "set -u; mount -t tmpfs -o size=1m tmpfs {state}; head -c 1040000 /dev/zero > {state}/filler 2>/dev/null; \
         timeout -s TERM 4 {ferry} run --config {cfg}; echo \"rc=$?\"; ls {spool}; rm {state}/filler; \
         {ferry} upload --config {cfg} {file}; echo \"rc2=$?\"",
        state = sp.s.state().display(),
        ferry = crate::harness::ferry_shell(),
        cfg = sp.config.display(),
        file = f.display(),
        spool = sp.spool.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // The daemon says why and exits with status 1 (its service manager starts it again)
    // instead of staying up with a store that cannot keep a URL; the file stays.
    assert!(
        stdout.contains("rc=1\n"),
        "ferry run exits with status 1:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("waiting.bin"),
        "the spool file is still there:\n{stdout}"
    );
    assert!(stderr.contains("the disk is full"), "{stderr}");
    assert!(
        stdout.contains("rc2=0"),
        "after freeing space it works:\n{stdout}\n{stderr}"
    );
    assert!(f.exists(), "upload (not run) leaves the file");
    // The run on the full disk may have created an upload whose URL it could not store: it
    // then sent no data to it (invariant 2), and the later upload is the complete one.
    let uploads = server.uploads();
    let complete: Vec<_> = uploads.iter().filter(|u| u.offset == u.length).collect();
    assert_eq!(complete.len(), 1, "{uploads:?}");
    assert!(
        uploads
            .iter()
            .all(|u| u.offset == 0 || u.offset == u.length),
        "no data went to an unrecorded upload"
    );
    assert_same_bytes(
        &server.upload_bytes(&complete[0].id),
        &random_bytes(50_000, 26),
        "waiting.bin",
    );
}

#[test]
fn a_systemd_credential_supplies_the_authorization_header() {
    let server = TusServer::start(ServerConfig::default());
    let creds = Scratch::new("creds");
    std::fs::write(creds.dir.join("auth-header"), "Bearer device-secret\n").unwrap();
    let sp = Spool::new("cred", &server.endpoint(), "");
    let text = std::fs::read_to_string(&sp.config).unwrap().replace(
        "[server]\n",
        "[server]\nheader_files = { Authorization = \"credential:auth-header\" }\n",
    );
    std::fs::write(&sp.config, text).unwrap();
    let log = std::fs::File::create(&sp.log).unwrap();
    let mut child = Daemon(
        ferry()
            .args(["run", "--config"])
            .arg(&sp.config)
            .env("CREDENTIALS_DIRECTORY", &creds.dir)
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    sp.drop_file("a.bin", 100, 28);
    wait_until("the upload", Duration::from_secs(15), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    child.wait().unwrap();
    let reqs = server.requests();
    assert!(reqs
        .iter()
        .filter(|r| r.method != "OPTIONS")
        .all(|r| r.header("authorization") == Some("Bearer device-secret")));
    assert!(
        !sp.log().contains("device-secret"),
        "the secret is never logged"
    );
}

#[test]
fn sigterm_while_the_server_sits_on_an_answer_still_stops_within_5_seconds() {
    let server = TusServer::start(ServerConfig::default());
    let sp = Spool::new("stall-term", &server.endpoint(), "");
    server.push_fault(
        "PATCH",
        Fault::StallBeforeResponse {
            dur: Duration::from_secs(20),
        },
    );
    let mut child = sp.start();
    sp.drop_file("stuck.bin", 50_000, 30);
    wait_until("the PATCH to arrive", Duration::from_secs(15), || {
        server.requests().iter().any(|r| r.method == "PATCH")
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        t.elapsed()
    );
    assert!(status.success(), "{status:?}");
    let log = sp.log();
    assert!(log.contains("did not stop in time"), "{log}");
    assert!(
        log.contains("closing their connections") && !log.contains("exiting anyway"),
        "the stuck read ends by shutting its connection down, not by exiting the process: {log}"
    );
    let mut child = sp.start();
    wait_until(
        "the upload after the restart",
        Duration::from_secs(30),
        || sp.spool_files().is_empty(),
    );
    sigterm(&child);
    child.wait().unwrap();
    assert_same_bytes(
        &server.upload_bytes(&server.uploads()[0].id),
        &random_bytes(50_000, 30),
        "stuck.bin",
    );
}

/// How the state is damaged while ferry is stopped.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// sled's log file cut to nothing: sled itself opens it as an empty database.
    Truncated,
    /// The first 4 KiB of sled's log file inverted.
    FlippedBytes,
    /// The database directory removed (the state directory and its `store-id` stay).
    DatabaseDeleted,
    /// The whole state directory removed: indistinguishable from a first start.
    StateDirDeleted,
}

fn damage_state(state: &std::path::Path, damage: Damage) {
    let log = state.join("db/db");
    match damage {
        Damage::Truncated => std::fs::File::options()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(0)
            .unwrap(),
        Damage::FlippedBytes => {
            let mut bytes = std::fs::read(&log).unwrap();
            for b in bytes.iter_mut().take(4096) {
                *b ^= 0xff;
            }
            std::fs::write(&log, bytes).unwrap();
        }
        Damage::DatabaseDeleted => std::fs::remove_dir_all(state.join("db")).unwrap(),
        Damage::StateDirDeleted => std::fs::remove_dir_all(state).unwrap(),
    }
}

/// Three files uploaded and kept (`after_upload = "keep"`: their Complete records are what
/// keeps them from being uploaded again), the state damaged while ferry is stopped, ferry
/// started again: it must start, say what happened, finish the spool and count what it
/// uploaded again.
fn damaged_state_is_set_aside_and_the_spool_finishes(damage: Damage) {
    let server = TusServer::start(ServerConfig::default());
    let name = format!("damage-{damage:?}").to_lowercase();
    let sp = Spool::new(&name, &server.endpoint(), "after_upload = \"keep\"");
    for i in 0..3 {
        sp.drop_file(&format!("f{i}.bin"), 10_000 + i, 40 + i as u64);
    }
    let done = |n: usize| {
        let status = String::from_utf8_lossy(&sp.cmd(&["status", "--json"]).stdout).to_string();
        status.contains(&format!("\"files_done\":{n}"))
    };
    let mut child = sp.start();
    wait_until("3 files uploaded", Duration::from_secs(60), || done(3));
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(server.uploads().len(), 3);

    damage_state(&sp.s.state(), damage);
    let mut child = sp.start();
    wait_until("the spool uploaded again", Duration::from_secs(60), || {
        done(3)
            && server
                .uploads()
                .iter()
                .filter(|u| u.offset == u.length)
                .count()
                == 6
    });
    let status = sp.status();
    sigterm(&child);
    assert!(child.wait().unwrap().success(), "{}", sp.log());
    let log = sp.log();
    match damage {
        Damage::StateDirDeleted => {
            assert!(log.contains("or the state was deleted"), "{log}");
            assert!(!status.contains("DAMAGED"), "{status}");
        }
        _ => {
            assert!(
                log.contains("ERROR") && log.contains("state database"),
                "{log}"
            );
            assert!(
                status.contains("state   DAMAGED at start")
                    && status.contains("3 files uploaded again"),
                "{status}\n{log}"
            );
        }
    }
    if matches!(damage, Damage::Truncated | Damage::FlippedBytes) {
        assert!(
            sp.s.state().join("damaged/db.1/db").is_file(),
            "kept for inspection"
        );
    }
    // Started again on the new state: nothing is uploaded a third time, no damage reported.
    let mut child = sp.start();
    wait_until("a fresh status", Duration::from_secs(30), || done(0));
    std::thread::sleep(Duration::from_secs(1));
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(server.uploads().len(), 6, "{}", sp.log());
    let status = sp.status();
    assert!(!status.contains("DAMAGED"), "{status}");
}

#[test]
fn a_truncated_state_database_is_set_aside_and_the_spool_finishes() {
    damaged_state_is_set_aside_and_the_spool_finishes(Damage::Truncated);
}

#[test]
fn a_state_database_with_flipped_bytes_is_set_aside_and_the_spool_finishes() {
    damaged_state_is_set_aside_and_the_spool_finishes(Damage::FlippedBytes);
}

#[test]
fn a_deleted_state_database_is_reported_and_the_spool_finishes() {
    damaged_state_is_set_aside_and_the_spool_finishes(Damage::DatabaseDeleted);
}

#[test]
fn a_deleted_state_directory_is_a_new_start_and_the_spool_finishes() {
    damaged_state_is_set_aside_and_the_spool_finishes(Damage::StateDirDeleted);
}
