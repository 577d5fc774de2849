//! No secret in any log line, at any level: `RUST_LOG=trace` is a normal support request. And
//! a mistyped endpoint is refused as a configuration error, not retried forever.
//! The HTTP client dumps what it sends as hex at trace level, split across lines, so a plain
//! grep for the token misses it: the log is searched as text, with whitespace removed, and as
//! the bytes its hex digits spell.

use std::path::Path;

use crate::harness::{ferry, finished, Scratch};
use crate::support::tus_server::{ServerConfig, TusServer};

const TOKEN: &str = "s3cret-Token_0123456789abcdefXYZ";

/// The bytes that the hex words of `log` spell, in order: a hex dump split over lines (ureq
/// writes groups of two bytes, `6465 6654`; others single bytes, `64 65`) reads back as the
/// bytes that were sent. A word counts when it is 2 or 4 hex digits between whitespace, which
/// leaves out timestamps and the dump's printable column.
fn hex_bytes(log: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for word in log.split_whitespace() {
        if (word.len() == 2 || word.len() == 4) && word.bytes().all(|b| b.is_ascii_hexdigit()) {
            for pair in word.as_bytes().chunks(2) {
                let pair = std::str::from_utf8(pair).unwrap();
                out.push(u8::from_str_radix(pair, 16).unwrap());
            }
        }
    }
    out
}

fn leaks(log: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    if log.contains(TOKEN) {
        found.push("plain text");
    }
    let squeezed: String = log.chars().filter(|c| !c.is_whitespace()).collect();
    if squeezed.contains(TOKEN) {
        found.push("text split by whitespace");
    }
    let bytes = hex_bytes(log);
    if bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()) {
        found.push("hex dump");
    }
    found
}

fn upload_with_log(level: &str, cfg: &Path, file: &Path) -> String {
    let out = ferry()
        .env("RUST_LOG", level)
        .args(["upload", "--config"])
        .arg(cfg)
        .arg(file)
        .output()
        .unwrap();
    finished(&out);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn no_log_level_shows_the_authorization_token() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("secrets");
    let token_file = s.dir.join("auth");
    std::fs::write(&token_file, format!("Bearer {TOKEN}\n")).unwrap();
    let cfg = s.dir.join("ferry.toml");
    let text = format!(
        "state_dir = {:?}\n[server]\nendpoint = {:?}\nheader_files = {{ Authorization = {token_file:?} }}\n",
        s.state(),
        server.endpoint()
    );
    std::fs::write(&cfg, text).unwrap();
    for (i, level) in ["trace", "debug", "info", "ureq=trace,rustls=trace,trace"]
        .iter()
        .enumerate()
    {
        let file = s.file(&format!("f{i}.bin"), 70_000, i as u64);
        let log = upload_with_log(level, &cfg, &file);
        assert!(!log.is_empty(), "RUST_LOG={level}: no log at all");
        let found = leaks(&log);
        assert!(
            found.is_empty(),
            "RUST_LOG={level}: the token is in the log as {found:?}"
        );
    }
    let sent = server.requests();
    assert!(
        sent.iter()
            .any(|r| r.header("authorization") == Some(format!("Bearer {TOKEN}").as_str())),
        "the token was sent (the test checks a real secret)"
    );
}

#[test]
fn the_leak_check_sees_a_hex_dump_split_over_lines() {
    // ureq's trace format: 16 bytes a line in groups of two, then the printable ones.
    let sent = format!("POST /files/ HTTP/1.1\r\nauthorization: Bearer {TOKEN}\r\n\r\n");
    let dump: String = sent
        .as_bytes()
        .chunks(16)
        .map(|line| {
            let hex: Vec<String> = line
                .chunks(2)
                .map(|g| g.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            let text: String = line
                .iter()
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
                .collect();
            format!("[2026-12-03T13:34:39Z TRACE] {}  {text}\n", hex.join(" "))
        })
        .collect();
    assert_eq!(leaks(&dump), ["hex dump"], "{dump}");
    let single: String = TOKEN.bytes().map(|b| format!("{b:02x} ")).collect();
    assert_eq!(leaks(&single), ["hex dump"]);
    assert_eq!(leaks(&format!("x {TOKEN} y")).len(), 2);
    assert!(leaks("nothing here 00 11").is_empty());
}

/// Issue 15, item 9: endpoints a person mistyped were accepted and then retried forever (a
/// trailing space: "invalid uri character"; port 99999). They are configuration errors now:
/// exit 2 at once, naming the key and what is wrong, before any request.
#[test]
fn a_mistyped_endpoint_is_a_configuration_error_not_a_retry_loop() {
    let s = Scratch::new("bad-endpoint");
    let file = s.file("a.bin", 10, 1);
    for (endpoint, says) in [
        ("http://127.0.0.1:1080/files/ ", "position 28"),
        ("http://127.0.0.1:99999/files/", "port \"99999\""),
    ] {
        let out = ferry()
            .args([
                "upload",
                "--max-attempts",
                "2",
                "--endpoint",
                endpoint,
                "--state-dir",
            ])
            .arg(s.state())
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{endpoint:?}: {err}");
        assert!(
            err.contains("server.endpoint") && err.contains(says),
            "{endpoint:?}: {err}"
        );
    }
}
