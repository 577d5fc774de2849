//! Config from text to [`Config`]: every key, the errors that name it, secrets never echoed.

use std::path::PathBuf;
use std::time::Duration;

use super::resolve::read_secret;
use super::*;
use crate::backoff::RetryPolicy;
use crate::stream::Target;
use crate::tus::checksum::Algorithm;
use crate::upload::{ChecksumMode, Header};

const FULL: &str = r#"
state_dir = "/var/lib/ferry"
[server]
endpoint = "https://tus.example.com/files/"
headers = { "X-Device" = "cam-17" }
connect_timeout = "5s"
[upload]
chunk_size = "8MiB"
checksum = "sha1"
metadata = { camera = "north" }
[retry]
max_attempts = 4
give_up_after = "10m"
"#;

#[test]
fn parses_and_resolves_a_full_file() {
    let c = from_toml(FULL, "test")
        .unwrap()
        .resolve(&Env::default())
        .unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/ferry"));
    assert_eq!(c.upload.endpoint, "https://tus.example.com/files/");
    assert_eq!(c.upload.chunk_size_bytes, Some(8 << 20));
    assert_eq!(c.upload.checksum, ChecksumMode::Always(Algorithm::Sha1));
    assert_eq!(
        c.upload.headers,
        [Header {
            name: "X-Device".into(),
            value: "cam-17".into(),
            secret: false
        }]
    );
    assert_eq!(
        c.upload.metadata,
        [("camera".to_string(), Some("north".to_string()))]
    );
    assert_eq!(c.upload.retry.max_attempts, Some(4));
    assert_eq!(c.upload.retry.give_up_after, Some(Duration::from_secs(600)));
    assert_eq!(c.http.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.http.idle_timeout, Duration::from_secs(30));
}

#[test]
fn defaults_retry_forever() {
    let raw = from_toml(
        "state_dir = \"/s\"\n[server]\nendpoint = \"http://h/f/\"",
        "t",
    )
    .unwrap();
    let c = raw.resolve(&Env::default()).unwrap();
    assert_eq!(c.upload.retry, RetryPolicy::default());
    assert_eq!(
        c.upload.chunk_size_bytes, None,
        "unset: the chunk policy decides"
    );
    assert!(!c.upload.creation_with_upload);
}

#[test]
fn cipher_order_is_auto_unless_set_to_aes_or_chacha() {
    use crate::transport::cipher::CipherOrder;
    let resolve = |extra: &str| {
        let text = format!("state_dir = \"/s\"\n[server]\nendpoint = \"https://h/f/\"\n{extra}");
        from_toml(&text, "ferry.toml").and_then(|r| r.resolve(&Env::default()))
    };
    assert_eq!(resolve("").unwrap().http.cipher_order, CipherOrder::Auto);
    for (value, order) in [
        ("auto", CipherOrder::Auto),
        ("aes", CipherOrder::Aes),
        ("chacha", CipherOrder::Chacha),
    ] {
        let c = resolve(&format!("cipher_order = {value:?}")).unwrap();
        assert_eq!(c.http.cipher_order, order, "{value}");
    }
    let err = resolve("cipher_order = \"AES-GCM\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.cipher_order = \"AES-GCM\": use auto") && err.contains("chacha"),
        "{err}"
    );
}

#[test]
fn errors_name_the_key() {
    let err = |text: &str| {
        from_toml(text, "ferry.toml")
            .and_then(|r| r.resolve(&Env::default()))
            .unwrap_err()
            .to_string()
    };
    assert!(err("[server]\nendpiont = \"x\"").contains("endpiont"));
    assert!(err("[upload]\nchunk_size = 1.5").contains("chunk_size"));
    assert!(err("state_dir=\"/s\"\n[server]\nendpoint = \"ftp://x\"").contains("server.endpoint"));
    assert!(err(
        "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nchecksum = \"md5\""
    )
    .contains("upload.checksum"));
    assert!(err(
        "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nchunk_size = \"0\""
    )
    .contains("chunk_size"));
    assert!(err(
        "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[retry]\nmax_delay = \"soon\""
    )
    .contains("retry.max_delay"));
    assert!(err(
        "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\nheaders = { \"Bad Name\" = \"v\" }"
    )
    .contains("header name"));
    assert!(err("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nmetadata = { \"a b\" = \"v\" }").contains("upload.metadata"));
    assert!(err("state_dir=\"/s\"\n[server]\n").contains("server.endpoint is not set"));
}

/// `Upload-Metadata` is one line of the request head: what the config adds is bounded, and a
/// config over the bound is refused at start, naming the key, not on the first upload.
#[test]
fn user_metadata_over_8_kib_encoded_is_refused() {
    let with = |len: usize| {
        let text = format!(
            "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nmetadata = {{ k = \"{}\" }}",
            "v".repeat(len)
        );
        from_toml(&text, "ferry.toml").and_then(|r| r.resolve(&Env::default()))
    };
    // "k " and base64: 4 bytes per 3.
    let fits = with(6000).unwrap();
    assert_eq!(
        fits.upload.metadata[0].1.as_deref().map(str::len),
        Some(6000)
    );
    let e = with(6200).unwrap_err().to_string();
    assert!(
        e.contains("upload.metadata takes 8270 bytes") && e.contains("8192"),
        "{e}"
    );
}

#[test]
fn flags_override_the_file_and_add_headers() {
    let file = from_toml(FULL, "t").unwrap();
    let mut over = Raw::default();
    over.server.endpoint = Some("http://127.0.0.1:1/files/".into());
    over.server.headers.insert("X-Other".into(), "1".into());
    let c = file.merge(over).resolve(&Env::default()).unwrap();
    assert_eq!(c.upload.endpoint, "http://127.0.0.1:1/files/");
    assert_eq!(c.upload.headers.len(), 2);
    assert_eq!(
        c.upload.chunk_size_bytes,
        Some(8 << 20),
        "kept from the file"
    );
}

#[test]
fn secrets_come_from_files_and_are_never_echoed() {
    let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("token");
    std::fs::write(&good, "Bearer s3cret\n").unwrap();
    assert_eq!(
        read_secret(good.to_str().unwrap(), &Env::default()),
        Ok("Bearer s3cret".into())
    );
    let bad = dir.join("bad");
    std::fs::write(&bad, "Bearer s3cret\ninjected: 1\n").unwrap();
    let text = format!("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\nheader_files = {{ Authorization = {:?} }}", bad.to_str().unwrap());
    let e = from_toml(&text, "t")
        .unwrap()
        .resolve(&Env::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("line break") && !e.contains("s3cret"), "{e}");
    assert!(
        read_secret(dir.join("missing").to_str().unwrap(), &Env::default())
            .unwrap_err()
            .contains("cannot read")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stream_targets_build_the_endpoint_and_enforce_the_chunk_rules() {
    let dir = std::env::temp_dir().join(format!("ferry-cfg-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "cf-token\n").unwrap();
    let base = format!("state_dir=\"/s\"\n[server]\ntarget = \"cloudflare-stream\"\n[stream]\naccount_id = \"acct1\"\napi_token_file = {:?}\n", token.to_str().unwrap());
    let c = from_toml(&base, "t")
        .unwrap()
        .resolve(&Env::default())
        .unwrap();
    assert_eq!(
        c.upload.endpoint,
        "https://api.cloudflare.com/client/v4/accounts/acct1/stream"
    );
    assert_eq!(c.upload.target, Target::CloudflareStream);
    let auth = c
        .upload
        .headers
        .iter()
        .find(|h| h.name == "Authorization")
        .unwrap();
    assert_eq!(
        (auth.value.as_str(), auth.secret),
        ("Bearer cf-token", true)
    );
    let bad = format!("{base}[upload]\nchunk_size = \"1MiB\"\n");
    let e = from_toml(&bad, "t")
        .unwrap()
        .resolve(&Env::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("upload.chunk_size") && e.contains("256 KiB") && e.contains("5 MiB"),
        "{e}"
    );
    let odd = format!("{base}[upload]\nchunk_size = \"5000000\"\n");
    assert!(
        from_toml(&odd, "t")
            .unwrap()
            .resolve(&Env::default())
            .is_err(),
        "not a 256 KiB multiple"
    );
    let broker = "state_dir=\"/s\"\n[server]\ntarget = \"url-broker\"\nendpoint = \"https://b.example/x\"\n[upload]\nchunk_size = \"2MiB\"";
    assert!(from_toml(broker, "t")
        .unwrap()
        .resolve(&Env::default())
        .unwrap_err()
        .to_string()
        .contains("Cloudflare Stream's rule"));
    let no_acct = "state_dir=\"/s\"\n[server]\ntarget = \"cloudflare-stream\"";
    assert!(from_toml(no_acct, "t")
        .unwrap()
        .resolve(&Env::default())
        .unwrap_err()
        .to_string()
        .contains("stream.account_id"));
    let typo = "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\ntarget = \"vimeo\"";
    assert!(from_toml(typo, "t")
        .unwrap()
        .resolve(&Env::default())
        .unwrap_err()
        .to_string()
        .contains("server.target"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn answer_deadline_and_send_rate_floor() {
    let resolve = |extra: &str| {
        from_toml(
            &format!("state_dir = \"/s\"\n[server]\nendpoint = \"http://h/f/\"\n{extra}"),
            "ferry.toml",
        )
        .and_then(|r| r.resolve(&Env::default()))
    };
    let c = resolve("").unwrap();
    assert_eq!(c.http.response_timeout, Duration::from_secs(60));
    assert_eq!(c.http.min_send_rate_bytes_per_sec, 1024);
    let c = resolve("response_timeout = \"90s\"\nmin_send_rate = \"4KiB\"").unwrap();
    assert_eq!(c.http.response_timeout, Duration::from_secs(90));
    assert_eq!(c.http.min_send_rate_bytes_per_sec, 4096);
    assert_eq!(
        resolve("min_send_rate = \"0\"")
            .unwrap()
            .http
            .min_send_rate_bytes_per_sec,
        0
    );
    let err = resolve("response_timeout = \"0s\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("server.response_timeout"), "{err}");
    let err = resolve("min_send_rate = \"fast\"").unwrap_err().to_string();
    assert!(err.contains("server.min_send_rate"), "{err}");
    // Our own rate limit must never make a body too slow to send: the floor drops to half of
    // each upload's share (2000 B/s over 2 uploads: 500 B/s).
    let c = resolve("min_send_rate = \"4KiB\"\n[spool]\ndir = \"/sp\"\n[daemon]\nconcurrency = 2\nrate_limit = \"2000\"").unwrap();
    assert_eq!(c.http.min_send_rate_bytes_per_sec, 500);
}

/// Issue 13: the shipped example said sizes may be `262144`, yet an integer was refused
/// ("expected a string"); and a count written as a string said "expected u32".
#[test]
fn integer_sizes_and_durations_mean_bytes_and_seconds() {
    let resolve = |extra: &str| {
        from_toml(
            &format!("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n{extra}"),
            "t",
        )
        .and_then(|r| r.resolve(&Env::default()))
    };
    let ints = resolve("idle_timeout = 45\nmin_send_rate = 2048\n[upload]\nchunk_size = 262144\n[retry]\nmax_delay = 90\nmax_attempts = 4").unwrap();
    let texts = resolve("idle_timeout = \"45s\"\nmin_send_rate = \"2KiB\"\n[upload]\nchunk_size = \"256KiB\"\n[retry]\nmax_delay = \"90s\"\nmax_attempts = 4").unwrap();
    assert_eq!(ints, texts);
    assert_eq!(ints.upload.chunk_size_bytes, Some(262_144));
    assert_eq!(ints.http.idle_timeout, Duration::from_secs(45));
    let err = |extra: &str| resolve(extra).unwrap_err().to_string();
    let e = err("[retry]\nmax_attempts = \"3\"");
    assert!(
        e.contains("max_attempts") && e.contains("expected a whole number such as 3"),
        "{e}"
    );
    assert!(!e.contains("u32"), "{e}");
    let e = err("[upload]\nchunk_size = 6.5");
    assert!(
        e.contains("chunk_size") && e.contains("a size such as \"6MiB\""),
        "{e}"
    );
    let e = err("connect_timeout = \"soon\"");
    assert!(
        e.contains("server.connect_timeout") && e.contains("30s"),
        "{e}"
    );
}

/// Issue 13: `--chunk-size 1` was taken, and a 3 KB file took 9 s, one byte per request.
#[test]
fn a_chunk_below_64_kib_is_refused() {
    let resolve = |chunk: &str| {
        from_toml(
            &format!("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nchunk_size = {chunk}"),
            "t",
        )
        .and_then(|r| r.resolve(&Env::default()))
    };
    for small in ["1", "\"0\"", "65535", "\"63KiB\""] {
        let e = resolve(small).unwrap_err().to_string();
        assert!(
            e.contains("upload.chunk_size") && e.contains("below the smallest chunk, 64KiB"),
            "{small}: {e}"
        );
    }
    assert_eq!(
        resolve("\"64KiB\"").unwrap().upload.chunk_size_bytes,
        Some(65_536)
    );
}

/// `[schedule]` with `TZ` set to `tz` in the environment: the daemon's schedule settings.
fn schedule(
    text: &str,
    tz: Option<&str>,
) -> Result<Option<crate::policy::schedule::ScheduleSettings>> {
    let env = Env {
        tz: tz.map(Into::into),
        ..Env::default()
    };
    from_toml(
        &format!(
            "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[spool]\ndir = \"/sp\"\n{text}"
        ),
        "ferry.toml",
    )
    .and_then(|r| r.resolve(&env))
    .map(|c| c.daemon.unwrap().schedule)
}

#[test]
fn schedule_windows_resolve_with_days_times_rates_and_the_zone() {
    use crate::policy::schedule::{Days, UnsyncedClock, Window};
    let s = schedule(
        "[schedule]\nunsynced_clock = \"trust\"\n\
         [[schedule.window]]\ndays = \"Mon-Fri\"\nfrom = \"22:00\"\nto = \"06:00\"\nrate_limit = \"2MiB\"\n\
         [[schedule.window]]\ndays = \"sat, SUN\"\nfrom = \"00:00:30\"\nto = \"24:00\"\nrate_limit = 0\n\
         [[schedule.window]]\nfrom = \"12:00\"\nto = \"12:00\"",
        Some("CET-1CEST,M3.5.0,M10.5.0/3"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.unsynced_clock, UnsyncedClock::Trust);
    assert_eq!(
        s.windows,
        [
            Window {
                days: Days(0x1f),
                from_secs: 22 * 3600,
                to_secs: 6 * 3600,
                rate_limit: Some(2 << 20)
            },
            Window {
                days: Days(0x60),
                from_secs: 30,
                to_secs: 0,
                rate_limit: None
            },
            Window {
                days: Days::ALL,
                from_secs: 12 * 3600,
                to_secs: 12 * 3600,
                rate_limit: None
            },
        ]
    );
    assert_eq!(s.zone.offset_at(0), 3600);
    assert_eq!(s.zone.name, "TZ=CET-1CEST,M3.5.0,M10.5.0/3");
    // No windows: no policy, whatever the rest says (the zone is not even read).
    assert_eq!(
        schedule(
            "[schedule]\nunsynced_clock = \"trust\"",
            Some("Not a zone!")
        )
        .unwrap(),
        None
    );
    assert_eq!(schedule("", None).unwrap(), None);
    let d = schedule(
        "[[schedule.window]]\nfrom = \"01:00\"\nto = \"02:00\"",
        Some("UTC0"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(d.unsynced_clock, UnsyncedClock::Wait);
}

#[test]
fn day_specs() {
    use super::schedule::parse_days;
    let bits = |t: &str| parse_days(t).map(|d| d.0);
    assert_eq!(bits("*"), Ok(0x7f));
    assert_eq!(bits("Mon-Fri"), Ok(0x1f));
    assert_eq!(bits("Sat,Sun"), Ok(0x60));
    assert_eq!(bits("fri-mon"), Ok(0x71));
    assert_eq!(bits("Sun-Sun"), Ok(0x40));
    assert_eq!(bits("Wed"), Ok(0x04));
    assert_eq!(bits(" Tue , THU "), Ok(0x0a));
    assert_eq!(bits("Mon,*"), Ok(0x7f));
    assert!(bits("Monday")
        .unwrap_err()
        .contains("\"Monday\" is not a day"));
    assert!(bits("").unwrap_err().contains("no days given"));
    assert!(bits("Mon,,Tue").is_err());
    assert!(bits("Mon-").is_err());
}

#[test]
fn schedule_errors_name_the_window_and_the_key() {
    let err = |text: &str| schedule(text, Some("UTC0")).unwrap_err().to_string();
    let w = |body: &str| {
        format!(
            "[[schedule.window]]\nfrom = \"01:00\"\nto = \"02:00\"\n[[schedule.window]]\n{body}"
        )
    };
    let e = err(&w("days = \"Mon-Fry\"\nfrom = \"01:00\"\nto = \"02:00\""));
    assert!(
        e.contains("schedule.window[1].days = \"Mon-Fry\"") && e.contains("\"Fry\" is not a day"),
        "{e}"
    );
    let e = err(&w("days = \"\"\nfrom = \"01:00\"\nto = \"02:00\""));
    assert!(
        e.contains("schedule.window[1].days") && e.contains("no days given"),
        "{e}"
    );
    let e = err(&w("from = \"25:00\"\nto = \"02:00\""));
    assert!(
        e.contains("schedule.window[1].from = \"25:00\"")
            && e.contains("not a local time like \"22:00\""),
        "{e}"
    );
    let e = err(&w("from = \"24:00\"\nto = \"02:00\""));
    assert!(e.contains("schedule.window[1].from"), "{e}");
    let e = err(&w("from = \"1:00\"\nto = \"02:00\""));
    assert!(e.contains("schedule.window[1].from"), "{e}");
    let e = err(&w("from = \"01:00\"\nto = \"02:60\""));
    assert!(e.contains("schedule.window[1].to = \"02:60\""), "{e}");
    let e = err(&w("from = \"01:00\""));
    assert!(e.contains("schedule.window[1].to is not set"), "{e}");
    let e = err(&w("from = \"01:00\"\nto = \"02:00\"\nform = \"03:00\""));
    assert!(
        e.contains("schedule.window[1]: unknown key \"form\""),
        "{e}"
    );
    let e = err(&w(
        "from = \"01:00\"\nto = \"02:00\"\nrate_limit = \"fast\"",
    ));
    assert!(e.contains("schedule.window[1].rate_limit"), "{e}");
    let e = err(&w("from = \"01:00\"\nto = \"02:00\"\nrate_limit = 1.5"));
    assert!(
        e.contains("rate_limit") && e.contains("a size such as"),
        "{e}"
    );
    let e = err("[schedule]\nunsynced_clock = \"maybe\"");
    assert!(
        e.contains("schedule.unsynced_clock = \"maybe\"") && e.contains("\"trust\""),
        "{e}"
    );
    let e = err("[schedule]\nwindows = []");
    assert!(e.contains("windows"), "{e}");
    let e = schedule(&w("from = \"01:00\"\nto = \"02:00\""), Some("Not a zone!"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TZ=Not a zone!") && e.contains("Europe/Berlin"),
        "{e}"
    );
}

#[test]
fn the_zone_comes_from_tz_names_files_and_rules() {
    let one = "[[schedule.window]]\nfrom = \"01:00\"\nto = \"02:00\"";
    let zone = |tz: Option<&str>| schedule(one, tz).map(|s| s.unwrap().zone);
    // 2025-07-01 00:00 UTC: summer.
    let july = 1_751_328_000;
    assert_eq!(zone(Some("")).unwrap().offset_at(july), 0);
    assert_eq!(zone(Some("<+0530>-5:30")).unwrap().offset_at(july), 19_800);
    assert_eq!(
        zone(Some("EST5EDT,M3.2.0,M11.1.0"))
            .unwrap()
            .offset_at(july),
        -4 * 3600
    );
    // Zone files from the repository's copy of tzdata (a machine may have none), by name
    // under TZDIR and by absolute path.
    let tzdir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/zoneinfo");
    let named = |tz: &str| {
        let env = Env {
            tz: Some(tz.into()),
            tzdir: Some(tzdir.into()),
            ..Env::default()
        };
        from_toml(
            &format!("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[spool]\ndir = \"/sp\"\n{one}"),
            "ferry.toml",
        )
        .and_then(|r| r.resolve(&env))
        .map(|c| c.daemon.unwrap().schedule.unwrap().zone)
    };
    assert_eq!(named("Europe/Berlin").unwrap().offset_at(july), 7200);
    assert_eq!(named(":Europe/Berlin").unwrap().offset_at(july), 7200);
    assert_eq!(
        zone(Some(&format!("{tzdir}/Asia/Tokyo")))
            .unwrap()
            .offset_at(july),
        9 * 3600
    );
    let e = zone(Some(":Europe/Atlantis")).unwrap_err().to_string();
    assert!(
        e.contains("TZ=:Europe/Atlantis") && e.contains("cannot read"),
        "{e}"
    );
    let e = zone(Some(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a zone file"), "{e}");
    let e = zone(Some("../../etc/passwd")).unwrap_err().to_string();
    assert!(e.contains("not a zone under"), "{e}");
}

#[test]
fn spool_limits_are_read_and_default_to_none_and_keep() {
    use crate::spool_limits::{MinFree, OnFull, SpoolLimits};
    let resolve = |extra: &str| {
        from_toml(
            &format!("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[spool]\ndir = \"/sp\"\n{extra}"),
            "ferry.toml",
        )
        .and_then(|r| r.resolve(&Env::default()))
    };
    let limits = |extra: &str| resolve(extra).unwrap().daemon.unwrap().limits;
    assert_eq!(limits(""), SpoolLimits::default());
    assert_eq!(SpoolLimits::default().on_full, OnFull::Keep);
    assert_eq!(
        limits("max_bytes = \"20GiB\"\nmin_free = \"10%\"\nmax_age = \"7d\"\non_full = \"delete-oldest\""),
        SpoolLimits {
            max_bytes: Some(20 << 30),
            min_free: Some(MinFree::Percent(10)),
            max_age: Some(Duration::from_secs(7 * 86_400)),
            on_full: OnFull::DeleteOldest,
        }
    );
    assert_eq!(
        limits("min_free = \"500MiB\"").min_free,
        Some(MinFree::Bytes(500 << 20))
    );
    assert_eq!(
        limits("min_free = 4096").min_free,
        Some(MinFree::Bytes(4096))
    );
    assert_eq!(
        limits("min_free = \" 5 %\"").min_free,
        Some(MinFree::Percent(5))
    );
    assert_eq!(
        limits("max_age = 3600").max_age,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        limits("on_full = \"keep\"\nmax_bytes = 1").on_full,
        OnFull::Keep
    );
}

#[test]
fn bad_spool_limits_name_the_key_and_what_to_do() {
    let err = |extra: &str| {
        from_toml(
            &format!("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[spool]\ndir = \"/sp\"\n{extra}"),
            "ferry.toml",
        )
        .and_then(|r| r.resolve(&Env::default()))
        .unwrap_err()
        .to_string()
    };
    let cases = [
        ("min_free = \"101%\"", "spool.min_free = \"101%\": a percent must be from 1% to 99%"),
        ("min_free = \"100%\"", "from 1% to 99%"),
        ("min_free = \"0%\"", "from 1% to 99%"),
        ("min_free = \"2.5%\"", "a whole number from 1% to 99%"),
        ("min_free = \"0\"", "spool.min_free must be above 0; leave it out for no limit"),
        ("min_free = \"lots\"", "spool.min_free: \"lots\" is not a size"),
        ("min_free = true", "min_free"),
        ("max_bytes = \"0\"", "spool.max_bytes must be above 0; leave it out for no limit"),
        ("max_bytes = \"20 parsecs\"", "spool.max_bytes: \"20 parsecs\": unknown unit"),
        ("max_age = \"0s\"", "spool.max_age must be above 0"),
        ("max_age = \"a week\"", "spool.max_age: \"a week\" is not a duration"),
        ("on_full = \"delete\"\nmax_bytes = 1", "spool.on_full = \"delete\": use keep (never delete a file not yet uploaded) or delete-oldest"),
        ("on_full = \"delete-oldest\"", "needs a limit: set spool.max_bytes, spool.min_free or spool.max_age"),
        ("max_size = 1", "max_size"),
    ];
    for (extra, want) in cases {
        let e = err(extra);
        assert!(e.contains(want), "{extra}: {e}");
    }
}
