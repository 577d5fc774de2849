//! End to end: the spool's limits (`spool.max_bytes`, `spool.min_free`, `spool.on_full`).
//!
//! The free-space tests give the spool a 4 MiB tmpfs in a private mount namespace (`unshare`,
//! root, as the full-state-disk test in daemon.rs) and an endpoint on a closed loopback port,
//! so nothing uploads while files are written until free space drops. The in-flight test runs
//! against @tus/server with a rate limit, so one big upload is still running while small files
//! push the spool over `max_bytes`.

use std::path::Path;
use std::time::Duration;

use crate::daemon::{require_root, Spool};
use crate::harness::{assert_same_bytes, random_bytes, sigterm, wait_until};
use crate::support::peers::{NodeOpts, Peer};
use crate::support::tus_server::{Fault, ServerConfig, TusServer};

const KIB: usize = 1024;

/// Runs `ferry run` on a spool that is a 4 MiB tmpfs, writes twelve 256 KiB files 150 ms
/// apart (renamed in, oldest first), waits for the limit check, lists the spool and stops
/// ferry. Returns the script's stdout (`ls` of the spool, then `rc=`).
fn fill_a_small_spool(sp: &Spool) -> String {
    let script = format!(
        "set -u; mount -t tmpfs -o size=4m tmpfs {spool} || exit 9; \
         {ferry} run --config {cfg} 2>>{log} & pid=$!; sleep 0.5; \
         for i in 00 01 02 03 04 05 06 07 08 09 10 11; do \
           head -c 262144 /dev/urandom > {spool}/.f$i.part && mv {spool}/.f$i.part {spool}/f$i.bin; sleep 0.15; \
         done; \
         sleep 4.5; ls {spool}; kill -TERM $pid; wait $pid; echo \"rc=$?\"",
        spool = sp.spool.display(),
        ferry = crate::harness::ferry_shell(),
        cfg = sp.config.display(),
        log = sp.log.display(),
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("rc=0"),
        "ferry ran and stopped cleanly:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        sp.log()
    );
    stdout
}

fn names(ls: &str) -> Vec<String> {
    ls.lines()
        .filter(|l| l.ends_with(".bin"))
        .map(str::to_string)
        .collect()
}

fn metrics(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn min_free_with_delete_oldest_evicts_the_oldest_waiting_files_on_a_full_tmpfs() {
    require_root("the spool-limit tmpfs test");
    let sp = Spool::new(
        "limits-evict",
        "http://127.0.0.1:1/files/",
        "min_free = \"50%\"\non_full = \"delete-oldest\"",
    );
    let prom = sp.s.dir.join("ferry.prom");
    let text = std::fs::read_to_string(&sp.config).unwrap()
        + &format!("[daemon]\nmetrics_file = {:?}\n", prom);
    std::fs::write(&sp.config, text).unwrap();
    let ls = fill_a_small_spool(&sp);
    let left = names(&ls);
    let log = sp.log();
    // 12 × 256 KiB = 3 MiB on 4 MiB: 1 MiB free, 2 MiB wanted: four go (a fifth if the
    // tmpfs keeps a page of its own), oldest first, except f00: the first file ready, ferry
    // started uploading it and it waits for the link (the one in flight is never evicted).
    assert!(
        left.contains(&"f00.bin".to_string()),
        "the file in flight is kept: {left:?}\n{log}"
    );
    let evicted: Vec<String> = (0..12)
        .map(|i| format!("f{i:02}.bin"))
        .filter(|n| !left.contains(n))
        .collect();
    assert!(
        evicted.len() == 4 || evicted.len() == 5,
        "evicted {evicted:?}, left {left:?}\n{log}"
    );
    for (i, name) in evicted.iter().enumerate() {
        assert_eq!(
            name,
            &format!("f{:02}.bin", i + 1),
            "oldest first: {evicted:?}"
        );
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{name}: evicted before upload (256.0 KiB, ")))
            .unwrap_or_else(|| panic!("no WARN line for {name}:\n{log}"));
        assert!(
            line.contains("WARN")
                && line.contains("spool.min_free: ")
                && line.contains("free on the spool's file system, below 2.0 MiB")
                && line.contains("(spool.on_full = delete-oldest)"),
            "{line}"
        );
    }
    for i in 8..12 {
        assert!(
            left.contains(&format!("f{i:02}.bin")),
            "newest kept: {left:?}"
        );
    }
    let n = evicted.len();
    let m = metrics(&prom);
    assert!(
        m.contains(&format!("ferry_spool_evicted_files_total {n}\n"))
            && m.contains(&format!(
                "ferry_spool_evicted_bytes_total {}\n",
                n * 256 * KIB
            ))
            && m.contains(&format!("ferry_spool_waiting_files {}\n", 12 - n))
            && m.contains("ferry_spool_over_limit 0\n")
            && m.contains("# TYPE ferry_spool_free_bytes gauge\n"),
        "{m}"
    );
    let status = sp.status();
    assert!(
        status.contains(&format!("evicted {n} files, "))
            && status.contains(&format!("waiting {} files", 12 - n))
            && !status.contains("over limit"),
        "{status}"
    );
    let json = String::from_utf8_lossy(&sp.cmd(&["status", "--json"]).stdout).into_owned();
    assert!(json.contains(&format!("\"evicted_files\":{n}")), "{json}");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn min_free_with_keep_deletes_nothing_and_says_so_once() {
    require_root("the spool-limit tmpfs test");
    let sp = Spool::new(
        "limits-keep",
        "http://127.0.0.1:1/files/",
        "min_free = \"50%\"",
    );
    let prom = sp.s.dir.join("ferry.prom");
    let text = std::fs::read_to_string(&sp.config).unwrap()
        + &format!("[daemon]\nmetrics_file = {:?}\n", prom);
    std::fs::write(&sp.config, text).unwrap();
    let ls = fill_a_small_spool(&sp);
    assert_eq!(names(&ls).len(), 12, "nothing deleted:\n{ls}");
    let log = sp.log();
    assert!(!log.contains("evicted"), "{log}");
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("spool over its limit"))
        .collect();
    // Checks ran several times while over the limit (arrivals, then 3 s later): one WARN.
    assert_eq!(warns.len(), 1, "{log}");
    assert!(
        warns[0].contains("WARN")
            && warns[0].contains("spool.min_free: ")
            && warns[0].contains("files are kept (spool.on_full = keep)"),
        "{}",
        warns[0]
    );
    let status = sp.status();
    assert!(
        status.contains("over limit: spool.min_free: ")
            && status.contains("files are kept (spool.on_full = keep)")
            && status.contains("waiting 12 files, 3.0 MiB"),
        "{status}"
    );
    let m = metrics(&prom);
    assert!(
        m.contains("ferry_spool_over_limit 1\n")
            && m.contains("ferry_spool_evicted_files_total 0\n")
            && m.contains("ferry_spool_waiting_bytes 3145728\n"),
        "{m}"
    );
}

/// A 3 MiB upload at 512 KiB/s (one PATCH: the default chunk is 6 MiB) is the oldest file
/// while six 256 KiB files push the spool to 4.5 MiB over a 3.5 MiB limit: the four oldest
/// small files go, never the big one in flight, which arrives whole; the rest follow.
#[test]
fn eviction_never_deletes_the_file_in_flight() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let sp = Spool::new(
        "limits-flight",
        &peer.endpoint(),
        "max_bytes = \"3584KiB\"\non_full = \"delete-oldest\"\n[daemon]\nrate_limit = \"512KiB\"",
    );
    let mut child = sp.start();
    let big = sp.drop_file("big.bin", 3 << 20, 40);
    wait_until("the big upload to send", Duration::from_secs(10), || {
        sp.status().contains("sending at")
    });
    for i in 0..6 {
        sp.drop_file(&format!("s{i}.bin"), 256 * KIB, 50 + i);
        std::thread::sleep(Duration::from_millis(30));
    }
    wait_until("four evictions", Duration::from_secs(8), || {
        sp.log().matches("evicted before upload").count() >= 4
    });
    assert!(
        big.exists(),
        "the big file is still uploading:\n{}",
        sp.log()
    );
    wait_until("the spool to empty", Duration::from_secs(20), || {
        sp.spool_files().is_empty()
    });
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let log = sp.log();
    for i in 0..4 {
        assert!(
            log.contains(&format!("s{i}.bin: evicted before upload (256.0 KiB, ")),
            "s{i}:\n{log}"
        );
    }
    assert!(!log.contains("big.bin: evicted"), "{log}");
    assert_eq!(log.matches("evicted before upload").count(), 4, "{log}");
    // big, s4 and s5 arrived, each once, whole.
    let url_of = |name: &str| {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("{name}: uploaded, ")))
            .unwrap_or_else(|| panic!("{name} not uploaded:\n{log}"));
        line.rsplit(", ").next().unwrap().to_string()
    };
    assert_same_bytes(
        &peer.stored_bytes(&url_of("big.bin")),
        &random_bytes(3 << 20, 40),
        "big.bin",
    );
    for i in 4..6 {
        assert_same_bytes(
            &peer.stored_bytes(&url_of(&format!("s{i}.bin"))),
            &random_bytes(256 * KIB, 50 + i),
            "small",
        );
    }
    assert_eq!(
        peer.upload_count(),
        3,
        "evicted files never uploaded:\n{log}"
    );
}

/// A file whose upload started (its record has a URL) and that waits out a backoff between
/// steps may be evicted: its record goes, and its upload is terminated on the server.
#[test]
fn an_evicted_started_upload_is_terminated_on_the_server() {
    let server = TusServer::start(ServerConfig::default());
    let busy = Fault::Status {
        code: 503,
        body: "busy".into(),
    };
    // Three refusals in the queue, so that a retry whose jittered delay is near 0 (the first
    // backoff is random up to initial_delay) is refused too until the fault is pinned below;
    // under emulation that retry once came before the pin and the upload completed. A refusal
    // left over may meet new.bin's first PATCH: it retries within 4 s.
    for _ in 0..3 {
        server.push_fault("PATCH", busy.clone());
    }
    let sp = Spool::new(
        "limits-term",
        &server.endpoint(),
        "max_bytes = \"150KiB\"\non_full = \"delete-oldest\"",
    );
    // Longer backoffs: the old file waits between steps, not stepping when the check runs.
    let text = std::fs::read_to_string(&sp.config)
        .unwrap()
        .replace("initial_delay = \"20ms\"", "initial_delay = \"2s\"")
        .replace("max_delay = \"200ms\"", "max_delay = \"4s\"");
    std::fs::write(&sp.config, text).unwrap();
    let mut child = sp.start();
    let old = sp.drop_file("old.bin", 100 * KIB, 61);
    wait_logged(
        &sp,
        "a refused PATCH of old.bin",
        Duration::from_secs(10),
        || {
            server
                .requests()
                .iter()
                .any(|r| r.method == "PATCH" && r.status == Some(503))
        },
    );
    let id = server.uploads()[0].id.clone();
    server.pin_fault("PATCH", &id, busy);
    // A check follows an arrival within 3 s, and checks come at least 3 s apart: 6.5 s after
    // old.bin arrived, new.bin's arrival is checked at once, before new.bin's first step.
    std::thread::sleep(Duration::from_millis(6500));
    sp.drop_file("new.bin", 100 * KIB, 62);
    wait_logged(&sp, "new.bin uploaded", Duration::from_secs(20), || {
        sp.log().contains("new.bin: uploaded")
    });
    wait_logged(
        &sp,
        "old.bin's upload terminated",
        Duration::from_secs(5),
        || server.uploads().iter().any(|u| u.id == id && u.deleted),
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let log = sp.log();
    assert!(!old.exists(), "{log}");
    assert!(
        log.contains("old.bin: evicted before upload (100.0 KiB, ")
            && log.contains("spool.max_bytes: 200.0 KiB waiting, above 150.0 KiB")
            && log.contains("old.bin: terminated its upload"),
        "{log}"
    );
    let status = sp.status();
    assert!(
        !status.contains("old.bin") && status.contains("evicted 1 files, 100.0 KiB"),
        "{status}"
    );
}

/// `wait_until`, with ferry's log in the failure message.
fn wait_logged(sp: &Spool, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}:\n{}",
            sp.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A spool far over `max_bytes` holds more files than one check lists (it keeps only the
/// oldest 1,024 in memory): checks follow each other until the limit is met, oldest first,
/// and the newest files stay. Nothing uploads (the endpoint is a closed port).
#[test]
fn a_spool_larger_than_one_checks_list_is_brought_under_its_limit() {
    const FILES: usize = 2600;
    const KEEP: usize = 100;
    let sp = Spool::new(
        "limits-many",
        "http://127.0.0.1:1/files/",
        &format!("max_bytes = \"{KEEP}KiB\"\non_full = \"delete-oldest\""),
    );
    // 1 KiB each, a second apart, the first an hour old: the age order is the name order.
    let start = std::time::SystemTime::now() - Duration::from_secs(3600 + FILES as u64);
    for i in 0..FILES {
        let path = sp.spool.join(format!("f{i:05}.bin"));
        std::fs::write(&path, [b'x'; KIB]).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(start + Duration::from_secs(i as u64))
            .unwrap();
    }
    let mut child = sp.start();
    // Within the limit: KEEP files (one of them perhaps an old one whose upload started and
    // waits for the link: the file in flight is never evicted).
    wait_logged(
        &sp,
        "the spool under its limit",
        Duration::from_secs(60),
        || sp.spool_files().len() <= KEEP,
    );
    std::thread::sleep(Duration::from_millis(500));
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    let log = sp.log();
    let left: Vec<String> = sp
        .spool_files()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // At most the limit stays: the newest files, all but perhaps one older one in flight
    // (counted towards the limit, so one newest file fewer stays with it).
    let index = |n: &String| n[1..6].parse::<usize>().unwrap();
    let newest: Vec<&String> = left.iter().filter(|n| index(n) >= FILES - KEEP).collect();
    let contiguous = newest
        .iter()
        .enumerate()
        .all(|(k, n)| index(n) == FILES - newest.len() + k);
    assert!(
        left.len() <= KEEP
            && newest.len() >= KEEP - 1
            && left.len() - newest.len() <= 1
            && contiguous,
        "the newest files stay, within {KEEP} KiB: {left:?}"
    );
    let evicted = log.matches("evicted before upload").count();
    assert_eq!(evicted, FILES - left.len(), "each eviction logged once");
    // The first eviction's reason counts every file, listed or not.
    assert!(
        log.contains("f00001.bin: evicted before upload (1.0 KiB, ")
            || log.contains("f00000.bin: evicted before upload (1.0 KiB, "),
        "{}",
        &log[..log.len().min(3000)]
    );
    assert!(
        log.contains("spool.max_bytes: 2.5 MiB waiting, above 100.0 KiB")
            || log.contains("spool.max_bytes: 2.4 MiB waiting, above 100.0 KiB"),
        "{}",
        &log[..log.len().min(3000)]
    );
    let status = sp.status();
    assert!(
        status.contains(&format!("evicted {evicted} files, ")) && !status.contains("over limit"),
        "{status}"
    );
}
