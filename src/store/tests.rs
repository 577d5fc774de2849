//! The store's tests: records, reopening, damage set aside, group commit, poisoning.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::damage::{Damage, DAMAGED_RECORD_PREFIX, STORE_ID_FILE};
use super::record::{failed_key, key};
use super::*;
use crate::source::Identity;

fn record(path: &str) -> FileRecord {
    FileRecord {
        version: RECORD_VERSION,
        path: path.into(),
        identity: Identity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_sec: 4,
            mtime_nsec: 5,
        },
        endpoint: "http://h/files/".into(),
        upload_url: "http://h/files/1".into(),
        offset: 0,
        expires_unix: None,
        created_unix: 10,
        updated_unix: 10,
        state: RecordState::Uploading,
        captured: Default::default(),
        hook: Default::default(),
    }
}

#[test]
fn put_get_remove_and_list() {
    let s = Store::open_temporary().unwrap();
    assert_eq!(s.get(&"/a".into()).unwrap(), None);
    s.put(&record("/a")).unwrap();
    s.put(&FileRecord {
        state: RecordState::Complete,
        ..record("/b")
    })
    .unwrap();
    assert_eq!(s.get(&"/a".into()).unwrap(), Some(record("/a")));
    assert_eq!(s.records().unwrap().len(), 2);
    s.remove(&"/a".into()).unwrap();
    assert_eq!(s.get(&"/a".into()).unwrap(), None);
    assert_eq!(s.records().unwrap()[0].state, RecordState::Complete);
}

#[test]
fn survives_reopen_and_refuses_a_second_process_view() {
    let dir = std::env::temp_dir().join(format!("ferry-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let s = Store::open(&dir).unwrap();
        s.put(&record("/x")).unwrap();
        // sled's lock is per open file description, so a second open in this process
        // meets it exactly as a second ferry process would.
        let e = Store::open(&dir)
            .err()
            .expect("a second open must be refused");
        assert!(
            e.to_string().contains(&format!(
                "is in use by another ferry process (pid {}",
                std::process::id()
            )),
            "{e}"
        );
        assert!(e.to_string().contains("its own --state-dir"), "{e}");
        assert_eq!(super::holder(&dir), Some(std::process::id()));
    }
    let s = reopen(&dir);
    assert_eq!(s.get(&"/x".into()).unwrap(), Some(record("/x")));
    assert_eq!(s.damage(), Damage::default());
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Opens the store in `dir` again. sled's I/O threads hold the file (and its lock) for a
/// moment after the last handle is dropped; slow machines (qemu) see it. Only an
/// in-process reopen meets this.
fn reopen(dir: &Path) -> Store {
    use crate::clock::{Clock, SystemClock};
    let clock = SystemClock;
    let deadline = clock.now() + std::time::Duration::from_secs(20);
    loop {
        match Store::open(dir) {
            Ok(s) => break s,
            Err(e) if clock.now() < deadline => {
                assert!(e.to_string().contains("in use"), "{e}");
                let never = std::sync::atomic::AtomicBool::new(false);
                clock.sleep(std::time::Duration::from_millis(20), &never);
            }
            Err(e) => panic!("the lock was not released: {e}"),
        }
    }
}

/// A state directory holding two records, closed.
fn populated(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = Store::open(&dir).unwrap();
    s.put(&record("/a")).unwrap();
    s.put(&record("/b")).unwrap();
    drop(s);
    dir
}

/// Opens a damaged state directory: it must open, say what happened, keep the damaged
/// database, and work.
fn assert_reset(dir: &Path, problem: &str) {
    let s = reopen(dir);
    let reset = s.damage().reset.expect("the damage must be reported");
    assert!(reset.problem.contains(problem), "{reset:?}");
    if problem == "missing" {
        assert_eq!(reset.moved_to, None);
    } else {
        assert_eq!(reset.moved_to, Some(dir.join("damaged/db.1")));
        assert!(dir.join("damaged/db.1/db").is_file(), "kept for inspection");
    }
    assert_eq!(s.records().unwrap(), []);
    s.put(&record("/c")).unwrap();
    drop(s);
    // The new database is whole: no second reset.
    let s = reopen(dir);
    assert_eq!(s.damage(), Damage::default());
    assert_eq!(s.get(&"/c".into()).unwrap(), Some(record("/c")));
    drop(s);
    std::fs::remove_dir_all(dir).unwrap();
}

/// New stores use 128 KiB log segments (sled's log buffers are that size, in memory). A store
/// that an earlier version created with sled's default (512 KiB), which sled refuses to open
/// with another size, opens with its own: records kept, no reset.
#[test]
fn a_store_made_with_sleds_default_segments_opens_as_it_is() {
    let segment = |dir: &Path| super::created_segment_size(&dir.join("db"));
    let new = populated("segment-new");
    assert_eq!(segment(&new), Some(SEGMENT_BYTES));
    assert_eq!(SEGMENT_BYTES, 128 * 1024);
    std::fs::remove_dir_all(&new).unwrap();

    let dir = std::env::temp_dir().join(format!("ferry-store-segment-old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        // As earlier versions made it: sled's defaults but for the cache, an identity, a record.
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .unwrap();
        db.insert(b"meta/store-id", &b"0123456789abcdef"[..])
            .unwrap();
        db.insert(
            key(&"/old".into()),
            serde_json::to_vec(&record("/old")).unwrap(),
        )
        .unwrap();
        db.flush().unwrap();
        std::fs::write(dir.join(STORE_ID_FILE), "0123456789abcdef").unwrap();
    }
    assert_eq!(segment(&dir), Some(512 * 1024));
    let s = reopen(&dir);
    assert_eq!(s.damage(), Damage::default(), "not reset");
    assert_eq!(s.get(&"/old".into()).unwrap(), Some(record("/old")));
    s.put(&record("/new")).unwrap();
    drop(s);
    let s = reopen(&dir);
    assert_eq!(s.records().unwrap().len(), 2);
    assert_eq!(segment(&dir), Some(512 * 1024), "kept its own");
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_deleted_database_is_reported_not_silently_recreated() {
    let dir = populated("deleted");
    std::fs::remove_dir_all(dir.join("db")).unwrap();
    assert_reset(&dir, "missing");
}

#[test]
fn a_truncated_database_is_moved_aside() {
    let dir = populated("truncated");
    std::fs::File::options()
        .write(true)
        .open(dir.join("db/db"))
        .unwrap()
        .set_len(0)
        .unwrap();
    assert_reset(&dir, "");
}

#[test]
fn a_database_with_flipped_bytes_is_moved_aside() {
    let dir = populated("flipped");
    let path = dir.join("db/db");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in bytes.iter_mut().take(4096).skip(8) {
        *b ^= 0x5a;
    }
    std::fs::write(&path, bytes).unwrap();
    assert_reset(&dir, "");
}

#[test]
fn a_garbled_sled_conf_is_moved_aside_not_a_crash_loop() {
    let dir = populated("conf");
    std::fs::write(
        dir.join("db/conf"),
        b"this is not sled's configuration at all",
    )
    .unwrap();
    assert_reset(&dir, "");
}

#[test]
fn a_database_from_another_state_directory_is_moved_aside() {
    let dir = populated("swapped");
    std::fs::write(dir.join(STORE_ID_FILE), b"0123456789abcdef").unwrap();
    assert_reset(&dir, "not the database");
}

#[test]
fn a_damaged_record_is_set_aside_and_the_others_kept() {
    let s = Store::open_temporary().unwrap();
    s.put(&record("/a")).unwrap();
    s.db.insert(key(&"/b".into()), b"{\"version\":1,\"path\":".to_vec())
        .unwrap();
    s.db.insert(failed_key(&"/f".into()), b"garbage".to_vec())
        .unwrap();
    assert_eq!(s.records().unwrap(), [record("/a")]);
    assert_eq!(s.failed().unwrap(), []);
    assert_eq!(s.damage().records, 2);
    assert_eq!(s.records().unwrap(), [record("/a")]);
    assert_eq!(s.damage().records, 2, "set aside once, not at every look");
}

#[test]
fn damaged_databases_kept_are_bounded() {
    let dir = populated("bounded");
    for _ in 0..5 {
        std::fs::write(dir.join("db/conf"), b"not sled's configuration, again").unwrap();
        let s = reopen(&dir);
        assert!(s.damage().reset.is_some());
    }
    let mut kept: Vec<_> = std::fs::read_dir(dir.join("damaged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["db.3", "db.4", "db.5"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_writers_share_syncs_and_every_record_is_durable() {
    let dir = std::env::temp_dir().join(format!("ferry-store-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = Store::open(&dir).unwrap();
    let before = s.commits.syncs.load(Ordering::Relaxed);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..40 {
                    s.put(&record(&format!("/t{t}/{i}"))).unwrap();
                }
            });
        }
    });
    let syncs = s.commits.syncs.load(Ordering::Relaxed) - before;
    assert!(syncs <= 320, "at most one sync per put: {syncs}");
    eprintln!("320 puts from 8 threads: {syncs} syncs");
    drop(s);
    let s = reopen(&dir);
    assert_eq!(s.records().unwrap().len(), 320);
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_poisoned_store_refuses_everything_until_reopened() {
    let s = Store::open_temporary().unwrap();
    s.put(&record("/a")).unwrap();
    let _ = s.poison(state_err(Path::new("/state"), "EIO".into()));
    for e in [
        s.get(&"/a".into()).unwrap_err(),
        s.put(&record("/b")).unwrap_err(),
        s.records().unwrap_err(),
        s.remove(&"/a".into()).unwrap_err(),
    ] {
        assert!(
            e.to_string().contains("an earlier write failed (EIO)"),
            "{e}"
        );
    }
}

#[test]
fn failures_are_recorded_and_forgotten() {
    let s = Store::open_temporary().unwrap();
    let rec = FailedRecord {
        path: "/f".into(),
        identity: record("/f").identity,
        status: Some(415),
        message: "no".into(),
        failed_unix: 9,
    };
    s.put_failed(&rec).unwrap();
    assert_eq!(s.get_failed(&"/f".into()).unwrap(), Some(rec.clone()));
    assert_eq!(s.failed().unwrap(), [rec]);
    s.remove_failed(&"/f".into()).unwrap();
    assert_eq!(s.get_failed(&"/f".into()).unwrap(), None);
}

#[test]
fn sets_aside_records_of_another_version() {
    let s = Store::open_temporary().unwrap();
    s.db.insert(key(&"/v".into()), br#"{"version":99}"#.to_vec())
        .unwrap();
    assert_eq!(s.get(&"/v".into()).unwrap(), None);
    assert_eq!(s.damage().records, 1);
    assert!(s.db.get(key(&"/v".into())).unwrap().is_none());
    assert!(s
        .db
        .get([DAMAGED_RECORD_PREFIX.as_bytes(), &key(&"/v".into())].concat())
        .unwrap()
        .is_some());
}

/// The stored_record fuzz target's seeds are records exactly as this version writes them, so
/// the fuzzer starts from the real format; a change of the format fails here until the seeds
/// in fuzz/corpus/stored_record/ are written again (the message shows the new bytes).
#[test]
fn the_fuzz_seeds_are_records_as_this_version_writes_them() {
    let mut captured = std::collections::BTreeMap::new();
    captured.insert(
        "stream-media-id".to_string(),
        "90c68cb5cd4fd5350b1962279c90bec0".to_string(),
    );
    let identity = |ino, size, mtime_sec, mtime_nsec| Identity {
        dev: 45826,
        ino,
        size,
        mtime_sec,
        mtime_nsec,
    };
    let file = FileRecord {
        version: RECORD_VERSION,
        path: "/var/spool/ferry/cam01-20260520-100000.mp4".into(),
        identity: identity(131_074, 104_857_600, 1_779_271_200, 123_456_789),
        endpoint:
            "https://api.cloudflare.com/client/v4/accounts/023e105f4ecef8ad9ca31a8372d0c353/stream"
                .into(),
        upload_url:
            "https://upload.videodelivery.net/tus/90c68cb5cd4fd5350b1962279c90bec0?tusv2=true"
                .into(),
        offset: 50_331_648,
        expires_unix: Some(1_779_274_800),
        created_unix: 1_779_271_205,
        updated_unix: 1_779_271_260,
        state: RecordState::Uploading,
        captured,
        hook: Default::default(),
    };
    let failed = FailedRecord {
        path: "/var/spool/ferry/cam01-20260520-090000.mp4".into(),
        identity: identity(131_070, 2_097_152, 1_779_267_600, 0),
        status: Some(413),
        message: "HTTP 413: the upload is larger than the server's Tus-Max-Size".into(),
        failed_unix: 1_779_267_700,
    };
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/stored_record");
    for (name, written) in [
        ("seed-file-record", serde_json::to_string(&file).unwrap()),
        (
            "seed-failed-record",
            serde_json::to_string(&failed).unwrap(),
        ),
    ] {
        let seed = std::fs::read_to_string(seeds.join(name)).unwrap();
        assert_eq!(seed, written, "fuzz/corpus/stored_record/{name}");
    }
}
