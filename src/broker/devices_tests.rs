//! The file's parsing and report, and re-reading it as it changes, breaks and vanishes.

use std::path::PathBuf;

use super::*;

fn hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn line(name: &str, token: &str) -> String {
    format!("{name} {}\n", hex(token))
}

fn names(p: &Parsed) -> Vec<&str> {
    p.devices.iter().map(|d| d.name.as_str()).collect()
}

/// A temp directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ferry-devices-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("devices")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn parses_names_hashes_comments_and_rotation() {
    let text = format!(
        "# devices\n\ncam-1 {}\ncam-1 {}\r\n  cam-2\t{}  \n",
        hex("a"),
        hex("b"),
        hex("c").to_uppercase()
    );
    let p = parse(text.as_bytes());
    assert_eq!(names(&p), ["cam-1", "cam-1", "cam-2"]);
    assert_eq!(p.problems, Vec::<String>::new());
    assert_eq!(
        p.devices[2].token_sha256,
        <[u8; 32]>::from(Sha256::digest(b"c"))
    );
}

#[test]
fn bad_lines_are_skipped_and_named_by_number_never_by_text() {
    let h = hex("a");
    let mut text = line("ok-1", "a").into_bytes();
    text.extend_from_slice(b"tok-only-a-raw-token\n");
    text.extend_from_slice(format!("cam-x {}\n", &h[..40]).as_bytes());
    text.extend_from_slice(format!("dup {h}\n").as_bytes());
    text.extend_from_slice(format!("cam-y {h} extra\n").as_bytes());
    text.extend_from_slice(b"cam-\xff-z 00\n");
    text.extend_from_slice(format!("cam-w {}zz\n", &hex("b")[..62]).as_bytes());
    text.extend_from_slice(line("ok-8", "c").as_bytes());
    let p = parse(&text);
    assert_eq!(names(&p), ["ok-1", "ok-8"]);
    let form = "expected `<device name> <sha256 hex of its token>`";
    let not_hex = "the second field is not 64 hex digits (a SHA-256)";
    assert_eq!(
        p.problems,
        [
            format!("line 2: {form}"),
            format!("line 3: {not_hex}"),
            "line 4: the same token hash as an earlier line".to_string(),
            format!("line 5: {form}"),
            "line 6: not UTF-8 text".to_string(),
            format!("line 7: {not_hex}"),
        ]
    );
    for p in &p.problems {
        assert!(!p.contains("raw-token") && !p.contains(&h[..40]), "{p}");
    }
}

/// A file read while it is being written: wherever it is cut, every complete line counts and
/// only the cut line is reported.
#[test]
fn a_half_written_file_keeps_its_complete_lines_wherever_it_is_cut() {
    let lines = [
        line("cam-1", "a"),
        line("caméra-2", "b"),
        line("cam-3", "c"),
    ];
    let text = lines.concat().into_bytes();
    for cut in 0..=text.len() {
        let p = parse(&text[..cut]);
        let mut start = 0;
        let (mut complete, mut cut_line) = (Vec::new(), None);
        for (i, l) in lines.iter().enumerate() {
            let end_of_hash = start + l.len() - 1;
            if cut >= end_of_hash {
                complete.push(l.split(' ').next().unwrap());
            } else if cut > start {
                cut_line = Some(i + 1);
            }
            start += l.len();
        }
        assert_eq!(names(&p), complete, "cut at byte {cut}");
        let reported: Vec<String> = p.problems.iter().map(|p| p[..7].to_string()).collect();
        let expected: Vec<String> = cut_line.map(|n| format!("line {n}:")).into_iter().collect();
        assert_eq!(reported, expected, "cut at byte {cut}: {:?}", p.problems);
    }
}

#[test]
fn many_bad_lines_are_cut_to_twenty_and_counted() {
    let text = "bad\n".repeat(25);
    let loaded = Loaded::parsed(None, text.as_bytes());
    assert_eq!(loaded.problems.len(), 21);
    assert!(loaded.problems[19].starts_with("line 20:"));
    assert_eq!(loaded.problems[20], "and 5 more bad lines");
}

#[test]
fn authenticates_bearer_tokens_and_rereads_a_changed_file() {
    let dir = TempDir::new("auth");
    let path = dir.file();
    std::fs::write(&path, line("cam-1", "tok-1")).unwrap();
    let devices = Devices::load(&path).unwrap();
    assert_eq!(
        devices.authenticate(Some("Bearer tok-1")).as_deref(),
        Some("cam-1")
    );
    assert_eq!(devices.authenticate(Some("Bearer tok-2")), None);
    assert_eq!(devices.authenticate(Some("Basic tok-1")), None);
    assert_eq!(devices.authenticate(Some("Bearer ")), None);
    assert_eq!(devices.authenticate(None), None);
    // A different size makes the change visible even within one mtime tick.
    std::fs::write(&path, line("cam-22", "tok-2")).unwrap();
    assert_eq!(
        devices.authenticate(Some("Bearer tok-2")).as_deref(),
        Some("cam-22")
    );
    assert_eq!(devices.authenticate(Some("Bearer tok-1")), None);
    assert_eq!(devices.health().problems, Vec::<String>::new());
}

/// Issue 15: a token removed from the file while another line was broken stayed valid,
/// because a file with a bad line kept the whole previous set.
#[test]
fn regression_a_revoked_token_is_refused_while_another_line_is_broken() {
    let dir = TempDir::new("revoke");
    let path = dir.file();
    let before = [
        line("cam-1", "t1"),
        line("cam-2", "t2"),
        line("cam-3", "t3"),
    ];
    std::fs::write(&path, before.concat()).unwrap();
    let devices = Devices::load(&path).unwrap();
    assert_eq!(devices.count(), 3);
    let after = format!("{}cam-9 not-a-hash\n{}", before[0], before[2]);
    std::fs::write(&path, after).unwrap();
    assert_eq!(devices.authenticate(Some("Bearer t2")), None);
    assert_eq!(
        devices.authenticate(Some("Bearer t1")).as_deref(),
        Some("cam-1")
    );
    assert_eq!(
        devices.authenticate(Some("Bearer t3")).as_deref(),
        Some("cam-3")
    );
    let health = devices.health();
    assert_eq!((health.devices, health.readable), (2, true));
    assert_eq!(
        health.problems,
        ["line 2: the second field is not 64 hex digits (a SHA-256)"]
    );
}

/// Issue 15: a deleted (or unreadable) file kept the previous set; it now means no devices.
#[test]
fn regression_a_deleted_file_refuses_every_device_until_it_is_back() {
    let dir = TempDir::new("deleted");
    let path = dir.file();
    std::fs::write(&path, line("cam-1", "t1")).unwrap();
    let devices = Devices::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(devices.authenticate(Some("Bearer t1")), None);
    let health = devices.health();
    assert_eq!((health.devices, health.readable), (0, false));
    assert_eq!(health.problems.len(), 1);
    assert!(
        health.problems[0].starts_with("the file cannot be read: "),
        "{:?}",
        health.problems
    );
    // The health check itself notices the change, before any device asks.
    std::fs::write(&path, line("cam-1", "t1")).unwrap();
    let health = devices.health();
    assert_eq!((health.devices, health.readable), (1, true));
    assert_eq!(health.problems, Vec::<String>::new());
    assert_eq!(
        devices.authenticate(Some("Bearer t1")).as_deref(),
        Some("cam-1")
    );
}

#[test]
fn sighup_rereads_even_an_unchanged_stamp() {
    let dir = TempDir::new("sighup");
    let path = dir.file();
    std::fs::write(&path, line("cam-1", "t1")).unwrap();
    let devices = Devices::load(&path).unwrap();
    devices.reload();
    assert_eq!(
        devices.authenticate(Some("Bearer t1")).as_deref(),
        Some("cam-1")
    );
    std::fs::remove_file(&path).unwrap();
    devices.reload();
    assert_eq!(devices.count(), 0);
    assert!(!devices.health().readable);
}

/// At start a file that cannot be read stops the broker (a wrong path shows at once); a bad
/// line does not: the valid lines are served and the problem is reported.
#[test]
fn at_start_an_unreadable_file_is_an_error_and_a_bad_line_is_not() {
    let dir = TempDir::new("start");
    let path = dir.file();
    let e = Devices::load(&path).err().unwrap();
    assert!(
        e.starts_with(&format!("cannot read device tokens {}: ", path.display())),
        "{e}"
    );
    std::fs::write(&path, format!("garbage\n{}", line("cam-1", "t1"))).unwrap();
    let devices = Devices::load(&path).unwrap();
    assert_eq!(devices.count(), 1);
    assert_eq!(
        devices.health().problems,
        ["line 1: expected `<device name> <sha256 hex of its token>`"]
    );
}
