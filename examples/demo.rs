//! The demo: ferry uploading over a link that keeps breaking, with nothing else installed.
//!
//! `cargo run --release --example demo` starts the project's own tus test server on loopback,
//! puts a proxy in front of it that throttles the link and resets the TCP connection every few
//! MiB, writes a demo spool of random files, runs `ferry upload` on them (live progress on
//! stderr), then compares what the server stored with each file, byte for byte.
#![allow(
    unreachable_pub,
    reason = "a binary: its support modules' pub items are for each other"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "measures and waits in real time, and reads its knobs from the environment"
)]
#![allow(
    dead_code,
    reason = "the test support modules offer more than the demo uses"
)]
#![allow(
    clippy::unwrap_used,
    reason = "a demo: any failure should stop it loudly"
)]

#[path = "../tests/support/accept.rs"]
mod accept;
#[path = "../tests/support/data.rs"]
mod data;
#[path = "../tests/support/flaky_proxy.rs"]
mod flaky_proxy;
#[path = "../tests/support/http1.rs"]
mod http1;
#[path = "../tests/support/pump.rs"]
mod pump;
#[path = "../tests/support/tus_server.rs"]
mod tus_server;

use std::path::PathBuf;

use data::random_bytes;
use flaky_proxy::{FlakyProxy, ProxyPlan};
use tus_server::{ServerConfig, TusServer};

const MIB: usize = 1024 * 1024;

fn main() {
    ferry::app::init_logging();
    let dir = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("spool")).unwrap();
    let server = TusServer::start(ServerConfig::default());
    let plan = ProxyPlan {
        cut_every_bytes: Some(5 * MIB as u64 + 12_345),
        throttle_bytes_per_sec: Some(6 * MIB as u64),
        ..ProxyPlan::default()
    };
    let proxy = FlakyProxy::start(server.addr(), plan);
    let endpoint = proxy.rewrite(&server.endpoint());
    server.set_public_endpoint(&endpoint);
    println!(
        "tus server on {}, reached through a flaky link at {endpoint}",
        server.endpoint()
    );
    println!("(the link is throttled to 6 MiB/s and reset every ~5 MiB)\n");

    let files: Vec<PathBuf> = [
        ("camera-0001.mp4", 24 * MIB + 7),
        ("camera-0002.mp4", 9 * MIB),
        ("still-0001.jpg", 300_000),
        ("empty.log", 0),
    ]
    .iter()
    .enumerate()
    .map(|(i, (name, len))| {
        let p = dir.join("spool").join(name);
        std::fs::write(&p, random_bytes(*len, i as u64 + 1)).unwrap();
        p
    })
    .collect();
    let config = dir.join("ferry.toml");
    let toml = format!(
        "state_dir = {:?}\n[server]\nendpoint = {endpoint:?}\n[upload]\nchunk_size = \"2MiB\"\n[retry]\ninitial_delay = \"200ms\"\nmax_delay = \"1s\"\n",
        dir.join("state")
    );
    std::fs::write(&config, toml).unwrap();

    let mut args = vec![
        "upload".into(),
        "--config".into(),
        config.clone().into_os_string(),
    ];
    args.extend(files.iter().map(|f| f.clone().into_os_string()));
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    println!(
        "$ ferry upload --config {} {}\n",
        config.display(),
        names.join(" ")
    );
    let code = ferry::app::run(args);

    let uploads = server.uploads();
    let mut ok = code == 0 && uploads.len() == files.len();
    for (file, upload) in files.iter().zip(&uploads) {
        let want = std::fs::read(file).unwrap();
        let same = server.upload_bytes(&upload.id) == want;
        ok &= same;
        println!(
            "{:<18} {:>10} bytes  server copy {}",
            file.file_name().unwrap().to_string_lossy(),
            want.len(),
            if same { "identical" } else { "DIFFERENT" }
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\nlink resets survived: {}; uploads created: {} for {} files",
        proxy.cuts(),
        uploads.len(),
        files.len()
    );
    if ok {
        println!("OK: every file arrived byte for byte, each exactly once.");
    } else {
        println!("FAILED: see above.");
        std::process::exit(1);
    }
}
