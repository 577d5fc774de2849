//! Cloudflare Stream, device side, against the local Stream emulation: direct uploads with
//! the account token, one-time URLs from a back-end, expiring URLs, the chunk rules.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{assert_same_bytes, ferry, random_bytes, stderr, upload, Scratch};
use crate::support::stream_emulator::{StreamConfig, StreamEmulator};

const MIB: usize = 1024 * 1024;

fn token_file(s: &Scratch, token: &str) -> PathBuf {
    let p = s.dir.join("token");
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

fn direct_config(s: &Scratch, emu: &StreamEmulator, extra: &str) -> PathBuf {
    let p = s.dir.join("stream.toml");
    let text = format!(
        "state_dir = {:?}\n[server]\ntarget = \"cloudflare-stream\"\n[stream]\naccount_id = {:?}\napi_token_file = {:?}\napi_base = {:?}\n[retry]\ninitial_delay = \"20ms\"\nmax_delay = \"200ms\"\n{extra}\n",
        s.state(),
        emu.account_id(),
        token_file(s, &emu.api_token()),
        emu.api_base()
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn direct_upload_with_the_account_token_prints_the_media_id() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let s = Scratch::new("stream-direct");
    let f = s.file("clip.mp4", 12 * MIB + 5, 1);
    let cfg = direct_config(
        &s,
        &emu,
        "[upload]\nmetadata = { name = \"gate camera\", requiresignedurls = \"\" }",
    );
    let out = upload(&cfg, &[], &[&f]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields.len(), 3, "<path> <url> <media id>: {line}");
    let videos = emu.videos();
    assert_eq!(videos.len(), 1);
    assert_eq!(fields[2], videos[0].uid);
    assert!(videos[0].complete && !videos[0].direct_user);
    assert_eq!(videos[0].meta("name"), Some(Some("gate camera")));
    assert_eq!(
        videos[0].meta("requiresignedurls"),
        Some(None),
        "a key without a value"
    );
    assert_same_bytes(
        &emu.video_bytes(&videos[0].uid),
        &random_bytes(12 * MIB + 5, 1),
        "clip.mp4",
    );
}

#[test]
fn chunk_sizes_that_break_streams_rules_are_refused_before_anything_is_sent() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let s = Scratch::new("stream-chunk");
    let f = s.file("clip.mp4", 100, 2);
    let cfg = direct_config(&s, &emu, "[upload]\nchunk_size = \"4MiB\"");
    let out = upload(&cfg, &[], &[&f]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("upload.chunk_size") && stderr(&out).contains("256 KiB"),
        "{}",
        stderr(&out)
    );
    assert!(emu.requests().is_empty());
}

/// A back-end handing out one-time URLs: the emulator's `direct_user` creation stands in for
/// one (`ferry broker` does the same and is tested on its own).
fn broker_config(s: &Scratch, emu: &StreamEmulator, extra: &str) -> PathBuf {
    let p = s.dir.join("broker.toml");
    let spool = s.dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let text = format!(
        "state_dir = {:?}\n[server]\ntarget = \"url-broker\"\nendpoint = \"{}?direct_user=true\"\nheader_files = {{ Authorization = {:?} }}\n[retry]\ninitial_delay = \"20ms\"\nmax_delay = \"200ms\"\n[spool]\ndir = {spool:?}\nsettle_time = \"200ms\"\n{extra}\n",
        s.state(),
        emu.creation_endpoint(),
        {
            let p = s.dir.join("device-credential");
            std::fs::write(&p, format!("Bearer {}\n", emu.api_token())).unwrap();
            p
        }
    );
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn one_time_urls_keep_the_device_credential_home_and_an_expired_one_is_replaced() {
    let emu = StreamEmulator::start(StreamConfig::default());
    let s = Scratch::new("stream-broker");
    // 4 MB/s: the 24 MiB file takes ~6 s, time to expire its URL mid-file. 6 MiB chunks: the
    // chunk policy would send the 19 MiB left after the first 5 MiB in one PATCH (5 s of the
    // rate), which the expiry in its middle would not touch.
    let cfg = broker_config(
        &s,
        &emu,
        "[upload]\nchunk_size = \"6MiB\"\n[daemon]\nrate_limit = \"4MB\"",
    );
    let log = std::fs::File::create(s.dir.join("ferry.log")).unwrap();
    let mut child = ferry()
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let f = s.dir.join("spool/long.mp4");
    std::fs::write(&f, random_bytes(24 * MIB, 3)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while emu
        .videos()
        .first()
        .is_none_or(|v| v.offset < 5 * MIB as u64)
    {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = emu.videos()[0].uid.clone();
    emu.expire(&first);
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.exists() {
        assert!(
            Instant::now() < deadline,
            "not finished: {}",
            std::fs::read_to_string(s.dir.join("ferry.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();
    let videos = emu.videos();
    assert_eq!(videos.len(), 2, "the expired video and its replacement");
    assert!(!videos[0].complete && videos[1].complete && videos[1].direct_user);
    assert_same_bytes(
        &emu.video_bytes(&videos[1].uid),
        &random_bytes(24 * MIB, 3),
        "long.mp4",
    );
    assert!(
        videos.iter().all(|v| !v.authorization_on_upload_origin),
        "the device credential never reached the upload origin"
    );
    let log = std::fs::read_to_string(s.dir.join("ferry.log")).unwrap();
    assert!(log.contains(&format!("abandoning video {first}")), "{log}");
    assert!(
        log.contains(&format!("media id {}", videos[1].uid)),
        "{log}"
    );
    assert!(
        !log.contains(&emu.api_token()),
        "the credential is never logged"
    );
}
