//! TLS cipher benchmark on ARM under emulation: the CPU seconds per GiB that ferry spends
//! uploading over HTTPS with AES-GCM first against ChaCha20-Poly1305 first
//! (`--cipher-order aes` / `chacha`), for the ARMv6 (Pi Zero/1, ARM1176) and ARMv7 (Pi 2,
//! Cortex-A7) binaries under qemu-user, neither CPU having AES instructions.
//!
//! ```sh
//! scripts/dist armv7-unknown-linux-gnueabihf arm-unknown-linux-musleabihf   # the binaries
//! cargo bench --bench tls_arm                              # 64 MiB, 3 runs of each
//! cargo bench --bench tls_arm -- --size 16MiB --runs 5 --targets armv7-unknown-linux-gnueabihf
//! ```
//!
//! The server is the tus test server behind the rustls-terminating test proxy on loopback
//! (native, so its own crypto costs the client nothing); it follows the client's order, and
//! the run checks that the suite it agreed on is the one asked for. Each run is a fresh
//! `ferry upload` of one file of random bytes in one PATCH (`--chunk-size` = the size); its
//! CPU is user + system time of the emulator process (this process's cutime + cstime across
//! the wait). The orders alternate run by run; the figure is the median of the runs, scaled
//! to a GiB, both as run and "marginal": less the CPU of a 64 KiB upload in the same way, i.e.
//! without the fixed cost of starting (qemu translating the program) and the handshake, which
//! would otherwise weigh on the ratio the more the smaller `--size` is. Absolute times are the emulator's and mean little; the ratio AES-first over
//! ChaCha-first is the result. `native` (target/release/ferry on this machine, which has
//! AES instructions) is added when that binary exists, as the counterpoint.
//!
//! Slow (minutes): not part of CI.
#![allow(
    unreachable_pub,
    reason = "a binary: its support modules' pub items are for each other"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "measures and waits in real time, and reads its knobs from the environment"
)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

#[path = "../tests/support/accept.rs"]
mod accept;
#[path = "../tests/support/http1.rs"]
mod http1;
#[path = "../tests/support/pump.rs"]
mod pump;
#[path = "../tests/support/tls_proxy.rs"]
mod tls_proxy;
#[path = "../tests/support/tus_server.rs"]
mod tus_server;

use tls_proxy::TlsProxy;
use tus_server::{ServerConfig, TusServer};

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
/// The small upload whose CPU (start-up, handshake, a few requests) is taken off the big one's.
const SMALL: u64 = 64 << 10;
const ORDERS: [&str; 2] = ["aes", "chacha"];
/// The emulated binaries and how qemu-user runs them (as scripts/arm-test's `qemu_for`).
const ARM_TARGETS: [(&str, &str); 2] = [
    (
        "arm-unknown-linux-musleabihf",
        "qemu-arm-static -cpu arm1176",
    ),
    (
        "armv7-unknown-linux-gnueabihf",
        "qemu-arm-static -cpu cortex-a7 -L /usr/arm-linux-gnueabihf",
    ),
];
/// Variables that could route the loopback traffic through some other proxy.
const PROXY_VARS: [&str; 6] = [
    "ALL_PROXY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "http_proxy",
    "https_proxy",
];

type Res<T> = Result<T, String>;

struct Args {
    size: u64,
    runs: usize,
    targets: Vec<String>,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tls_arm bench: {e}");
            eprintln!(
                "usage: cargo bench --bench tls_arm [-- --size 64MiB] [--runs 3] [--targets T,T]"
            );
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls_arm bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Res<Args> {
    let mut args = Args {
        size: 64 * MIB,
        runs: 3,
        targets: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--size" => args.size = parse_mib(&value()?)?,
            "--runs" => args.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--targets" => args.targets = value()?.split(',').map(String::from).collect(),
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.size <= SMALL {
        return Err(format!("--size must be above {} KiB", SMALL >> 10));
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(args)
}

/// `64MiB` or `64` (MiB).
fn parse_mib(text: &str) -> Res<u64> {
    let n = text.trim_end_matches("MiB");
    n.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n * MIB)
        .ok_or(format!("--size {text:?}: use e.g. 64MiB"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (name, argv prefix) of each binary to measure.
fn binaries(args: &Args) -> Res<Vec<(String, Vec<String>)>> {
    let mut out = Vec::new();
    for (target, qemu) in ARM_TARGETS {
        if !args.targets.is_empty() && !args.targets.iter().any(|t| t == target) {
            continue;
        }
        let bin = root().join("dist").join(format!("ferry-{target}"));
        if !bin.exists() {
            return Err(format!(
                "{} is missing: build it with scripts/dist {target}",
                bin.display()
            ));
        }
        let mut argv: Vec<String> = qemu.split_whitespace().map(String::from).collect();
        argv.push(bin.display().to_string());
        // "-cpu arm1176": the emulated CPU, without qemu's library path.
        let cpu = qemu.split(" -L").next().unwrap_or(qemu);
        out.push((
            format!("{target} ({})", &cpu["qemu-arm-static ".len()..]),
            argv,
        ));
    }
    let native = root().join("target/release/ferry");
    let want_native = args.targets.is_empty() || args.targets.iter().any(|t| t == "native");
    if want_native && native.exists() {
        out.push((
            "native (target/release/ferry)".into(),
            vec![native.display().to_string()],
        ));
    }
    if out.is_empty() {
        return Err("no binary to measure".into());
    }
    Ok(out)
}

fn run(args: &Args) -> Res<()> {
    let bins = binaries(args)?;
    let scratch = std::env::temp_dir().join(format!("ferry-tls-bench-{}", std::process::id()));
    fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let file = scratch.join("data.bin");
    write_random(&file, args.size)?;
    let small = scratch.join("small.bin");
    write_random(&small, SMALL)?;
    let fixtures = root().join("tests/fixtures/tls");
    let tck = clock_ticks_per_sec();
    let mut rows = Vec::new();
    for (name, argv) in &bins {
        // Per order: the big run's CPU, and that minus the small run's (start-up, handshake).
        let mut whole: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut marginal: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for run in 0..args.runs {
            // Alternate which order goes first, so drift hits both alike.
            for k in [run % 2, 1 - run % 2] {
                let order = ORDERS[k];
                let fixed = one_upload(argv, order, &small, &fixtures, &scratch, SMALL, tck)?;
                let secs = one_upload(argv, order, &file, &fixtures, &scratch, args.size, tck)?;
                eprintln!(
                    "{name}: {order}-first run {}: {secs:.2} CPU s ({} KiB file: {fixed:.2} s)",
                    run + 1,
                    SMALL >> 10
                );
                whole[k].push(secs);
                marginal[k].push(secs - fixed);
            }
        }
        let per_gib = |v: &mut Vec<f64>, bytes: u64| median(v) * GIB / bytes as f64;
        rows.push((
            name.clone(),
            per_gib(&mut whole[0], args.size),
            per_gib(&mut whole[1], args.size),
            per_gib(&mut marginal[0], args.size - SMALL),
            per_gib(&mut marginal[1], args.size - SMALL),
        ));
    }
    let _ = fs::remove_dir_all(&scratch);
    println!(
        "\nferry upload over HTTPS (TLS 1.3), CPU s/GiB = user + sys of the ferry process, median of {} runs.",
        args.runs
    );
    println!(
        "\"run\": one {} MiB upload, scaled; \"marginal\": minus a {} KiB upload's CPU (start-up, handshake).",
        args.size / MIB,
        SMALL >> 10
    );
    println!(
        "{:<46} {:>9} {:>9} {:>8}   {:>9} {:>9} {:>8}",
        "binary", "run AES", "ChaCha", "ratio", "marg AES", "ChaCha", "ratio"
    );
    for (name, aes, chacha, m_aes, m_chacha) in rows {
        println!(
            "{name:<46} {aes:>9.1} {chacha:>9.1} {:>7.2}x   {m_aes:>9.1} {m_chacha:>9.1} {:>7.2}x",
            aes / chacha.max(1e-9),
            m_aes / m_chacha.max(1e-9)
        );
    }
    Ok(())
}

/// One `ferry upload --cipher-order ORDER` of `file` through a fresh TLS proxy: the CPU seconds
/// it took. Fails if the upload fails or the server agreed on another cipher than asked for.
fn one_upload(
    argv: &[String],
    order: &str,
    file: &Path,
    fixtures: &Path,
    scratch: &Path,
    size: u64,
    tck: u64,
) -> Res<f64> {
    let server = TusServer::start(ServerConfig::default());
    let proxy = TlsProxy::start(
        server.addr(),
        &fixtures.join("server.pem"),
        &fixtures.join("server.key"),
        None,
    );
    server.set_public_endpoint(&proxy.url("/files/"));
    let state = scratch.join(format!("state-{order}"));
    let _ = fs::remove_dir_all(&state);
    let config = scratch.join("ferry.toml");
    fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[server]\nendpoint = {:?}\nidle_timeout = \"120s\"\nresponse_timeout = \"600s\"\n",
            state.display().to_string(),
            proxy.url("/files/")
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .arg("upload")
        .arg("--config")
        .arg(&config)
        .arg("--ca-file")
        .arg(fixtures.join("ca.pem"))
        .args(["--cipher-order", order])
        .args(["--chunk-size", &format!("{}MiB", (size / MIB).max(1))])
        .arg(file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    let before = children_cpu_ticks()?;
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
    let ticks = children_cpu_ticks()? - before;
    let _ = fs::remove_dir_all(&state);
    if !out.status.success() {
        return Err(format!(
            "{} ({order}) failed: {}\n{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let want = if order == "aes" {
        "_AES_"
    } else {
        "_CHACHA20_"
    };
    let suites = proxy.suites();
    if suites.is_empty() || suites.iter().any(|s| !s.contains(want)) {
        return Err(format!(
            "cipher_order {order}: the server agreed on {suites:?}"
        ));
    }
    if server.uploads().iter().map(|u| u.offset).sum::<u64>() != size {
        return Err(format!("{order}: the server did not get all {size} bytes"));
    }
    Ok(ticks as f64 / tck.max(1) as f64)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `size` bytes that do not compress (xorshift), written once.
fn write_random(path: &Path, size: u64) -> Res<()> {
    let mut f = std::io::BufWriter::new(
        fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..size.div_ceil(MIB) {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&buf).map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())?;
    let file = f.into_inner().map_err(|e| e.to_string())?;
    file.set_len(size).map_err(|e| e.to_string())
}

/// This process's cutime + cstime (fields 16 and 17 of /proc/self/stat): the CPU time of
/// reaped children.
fn children_cpu_ticks() -> Res<u64> {
    let text = fs::read_to_string("/proc/self/stat").map_err(|e| e.to_string())?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("/proc/self/stat: unexpected format")?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Ok(f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0))
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}
