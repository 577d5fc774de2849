//! Upload benchmark: the release `ferry` binary against curl, both uploading one file of random
//! bytes to a local `@tus/server`, plus one ferry run through a proxy that cuts the connection
//! about 20 times.
//!
//! ```sh
//! scripts/install-peers                           # once: @tus/server into tests/peers
//! cargo bench --bench upload                      # 1 GiB file, 3 alternating rounds
//! cargo bench --bench upload -- --size 256MiB --runs 5
//! ```
//!
//! Machines are shared and noisy, so every figure that matters is a ratio against a baseline
//! measured in the same run: `ferry upload FILE` with default settings against curl (one POST
//! plus one PATCH of the whole file, streamed from disk by `curl -T`), alternating, the median
//! of `--runs` rounds for wall time and for CPU time (user + system, from the bench's
//! `cutime`/`cstime` in `/proc/self/stat` around each reaped child); then one run each with
//! fixed chunk sizes, and the cut run's wall time over the uncut default run.
//! Peak RSS is the last `VmHWM` read from `/proc/<pid>/status`, polled every 10 ms while ferry
//! runs (the high-water mark only grows, so the last reading is the peak).
//!
//! Issue 16's targets for the default run: wall ≤ 0.9× curl's, CPU ≤ 1.5× curl's, peak RSS
//! ≤ 8 MiB; the report says whether each is met. Exits non-zero if a stored upload differs from
//! the file, if an upload fails, or if ferry's peak RSS is over the 8 MiB budget.
#![allow(
    unreachable_pub,
    reason = "a binary: its support modules' pub items are for each other"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "measures and waits in real time, and reads its knobs from the environment"
)]

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "../tests/support/accept.rs"]
mod accept;
#[path = "../tests/support/flaky_proxy.rs"]
mod flaky_proxy;
#[path = "../tests/support/peers.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test support")]
mod peers;
#[path = "../tests/support/pump.rs"]
mod pump;

use flaky_proxy::{FlakyProxy, ProxyPlan};
use peers::{NodeOpts, Peer};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The project's hard budget for ferry's resident memory (issue 16, target 6).
const RSS_BUDGET_KIB: u64 = 8 * 1024;
/// Issue 16, target 1: ferry's wall time and CPU time over curl's, at most.
const WALL_TARGET: f64 = 0.9;
const CPU_TARGET: f64 = 1.5;
/// `USER_HZ`: the unit of `/proc/*/stat` times (100 on every Linux port this runs on).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;
const RSS_POLL: Duration = Duration::from_millis(10);
const CHUNK_SIZES: [&str; 2] = ["6MiB", "64MiB"];
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

fn main() -> ExitCode {
    let (size, runs) = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("upload bench: {e}");
            eprintln!("usage: cargo bench --bench upload [-- --size SIZE] [--runs N]");
            eprintln!("       SIZE e.g. 1GiB (the default), 256MiB, 100MB");
            return ExitCode::from(2);
        }
    };
    match run(size, runs) {
        Ok(failures) if failures.is_empty() => ExitCode::SUCCESS,
        Ok(failures) => {
            for f in &failures {
                eprintln!("FAILED: {f}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("upload bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--size SIZE`, `--runs N`; anything else Cargo passes (`--bench`) is ignored.
fn parse_args() -> Res<(u64, usize)> {
    let mut size = GIB;
    let mut runs = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if let Some(v) = arg.strip_prefix("--size=") {
            size = parse_size(v)?;
        } else if arg == "--size" {
            size = parse_size(&args.next().ok_or("--size needs a value")?)?;
        } else if arg == "--runs" {
            let v = args.next().ok_or("--runs needs a value")?;
            runs = v
                .parse()
                .map_err(|_| format!("--runs {v:?}: not a count"))?;
        } else if arg.starts_with("--") {
            // `cargo bench` passes `--bench`; libtest-style flags mean nothing here.
        } else {
            return Err(format!("unexpected argument {arg:?}"));
        }
    }
    if size == 0 || runs == 0 {
        return Err("--size and --runs must be above 0".into());
    }
    Ok((size, runs))
}

fn parse_size(text: &str) -> Res<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("--size {text:?}: not a size"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => MIB,
        "G" | "GiB" => GIB,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "--size {text:?}: unknown unit (use KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("--size {text:?}: too large"))
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One ferry run.
struct FerryRun {
    wall: Duration,
    /// User + system CPU seconds.
    cpu: f64,
    peak_rss_kib: u64,
}

/// CPU seconds (user + system) of this process's reaped children so far.
fn children_cpu() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3, `state`.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // cutime and cstime are fields 16 and 17: indices 13 and 14 after `state` (field 3).
    (ticks(13) + ticks(14)) / CLOCK_TICKS_PER_SEC
}

/// CPU seconds (user + system) of process `pid` so far, all its threads; 0 if unreadable.
fn process_cpu(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15: indices 11 and 12 after `state` (field 3).
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SEC
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run(size: u64, runs: usize) -> Res<Vec<String>> {
    check_curl()?;
    let dir = TempDir(std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id())));
    fs::create_dir_all(&dir.0).map_err(|e| format!("create {}: {e}", dir.0.display()))?;
    let file = dir.0.join("random.bin");

    eprintln!(
        "generating {} of random bytes in {}",
        human(size),
        file.display()
    );
    write_random(&file, size)?;

    let peer = Peer::node_tus_server(NodeOpts::default());
    let mut failures = Vec::new();

    // Warm-up, untimed: the first upload to a fresh node process pays for its JIT.
    let warm = dir.0.join("warm-up.bin");
    let warm_size = size.min(16 * MIB);
    write_random(&warm, warm_size)?;
    let (_, url) = curl_upload(&peer.endpoint(), &warm, warm_size)?;
    verify(&peer, &url, &warm, "warm-up (curl)", &mut failures)?;

    // 1. Default settings against curl, alternating: `runs` rounds, and who goes first
    // alternates too (the server may still be collecting the garbage of the upload before).
    let (mut curl_walls, mut curl_cpus, mut curl_server) = (Vec::new(), Vec::new(), Vec::new());
    let (mut default_runs, mut default_server) = (Vec::new(), Vec::new());
    let server_pid = peer.pid();
    for round in 1..=runs {
        for ferry_turn in [round % 2 == 0, round % 2 == 1] {
            let server0 = process_cpu(server_pid);
            if ferry_turn {
                eprintln!("round {round}/{runs}: ferry upload (default settings)");
                let name = format!("default-{round}");
                let config = write_config(&dir.0, &name, &peer.endpoint(), "")?;
                let (run, url) = run_ferry(&config, &file, None, &dir.0)?;
                default_server.push(process_cpu(server_pid) - server0);
                verify(&peer, &url, &file, "ferry (default)", &mut failures)?;
                check_rss("ferry (default)", &run, &mut failures);
                default_runs.push(run);
            } else {
                eprintln!("round {round}/{runs}: curl (POST + one PATCH)");
                let cpu0 = children_cpu();
                let (wall, url) = curl_upload(&peer.endpoint(), &file, size)?;
                curl_cpus.push(children_cpu() - cpu0);
                curl_server.push(process_cpu(server_pid) - server0);
                curl_walls.push(wall.as_secs_f64());
                verify(&peer, &url, &file, "curl", &mut failures)?;
            }
        }
    }
    // Each round's ferry wall over its curl wall: their spread says how much the median of
    // `runs` rounds can be trusted on this machine.
    let paired: Vec<f64> = default_runs
        .iter()
        .zip(&curl_walls)
        .map(|(f, c)| f.wall.as_secs_f64() / c.max(1e-9))
        .collect();
    let curl_server_cpu = median(curl_server);
    let default_server_cpu = median(default_server);
    let curl_wall = Duration::from_secs_f64(median(curl_walls));
    let curl_cpu = median(curl_cpus);

    // 2. ferry with fixed chunk sizes, once each.
    let mut ferry_runs = Vec::new();
    for chunk in CHUNK_SIZES {
        eprintln!("ferry: --chunk-size {chunk}");
        let config = write_config(&dir.0, &format!("plain-{chunk}"), &peer.endpoint(), "")?;
        let (run, url) = run_ferry(&config, &file, Some(chunk), &dir.0)?;
        let what = format!("ferry --chunk-size {chunk}");
        verify(&peer, &url, &file, &what, &mut failures)?;
        check_rss(&what, &run, &mut failures);
        ferry_runs.push((chunk, run));
    }

    // 3. ferry through a proxy that resets the connection every size/21 bytes (about 20 cuts).
    eprintln!(
        "ferry: through a proxy cutting every {} bytes",
        (size / 21).max(1)
    );
    let proxy = FlakyProxy::start(
        peer.addr(),
        ProxyPlan {
            cut_every_bytes: Some((size / 21).max(1)),
            ..Default::default()
        },
    );
    let retry = "[retry]\ninitial_delay = \"50ms\"\nmax_delay = \"500ms\"\n";
    let config = write_config(&dir.0, "cut", &proxy.rewrite(&peer.endpoint()), retry)?;
    let uploads_before = peer.upload_count();
    let (cut_run, url) = run_ferry(&config, &file, None, &dir.0)?;
    let uploads_created = peer.upload_count().saturating_sub(uploads_before);
    verify(
        &peer,
        &url,
        &file,
        "ferry through the cutting proxy",
        &mut failures,
    )?;
    check_rss("ferry through the cutting proxy", &cut_run, &mut failures);
    let (cuts, bytes_up) = (proxy.cuts(), proxy.bytes_up());
    drop(proxy);
    drop(peer);

    // Report.
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let secs = |d: Duration| d.as_secs_f64();
    let mib_s = |d: Duration| size as f64 / MIB as f64 / secs(d).max(1e-9);
    let def_wall =
        Duration::from_secs_f64(median(default_runs.iter().map(|r| secs(r.wall)).collect()));
    let def_cpu = median(default_runs.iter().map(|r| r.cpu).collect());
    let def_rss = default_runs
        .iter()
        .map(|r| r.peak_rss_kib)
        .max()
        .unwrap_or(0);
    println!();
    println!(
        "ferry upload benchmark: {} of random bytes to @tus/server on 127.0.0.1; nproc = {nproc}",
        human(size)
    );
    println!("All figures are from this one run; compare the ratios, not the absolute times.");
    println!("curl and the default ferry ran alternately, {runs} rounds; their rows are medians.");
    println!(
        "Peak RSS = last VmHWM read from /proc/<pid>/status, polled every {} ms while ferry runs.",
        RSS_POLL.as_millis()
    );
    println!();
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>13}",
        "run", "wall s", "MiB/s", "vs curl", "CPU s", "vs curl", "peak RSS MiB"
    );
    let row = |name: &str, wall: Duration, cpu: f64, rss: Option<u64>| {
        println!(
            "{:<32} {:>9.2} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>13}",
            name,
            secs(wall),
            mib_s(wall),
            secs(wall) / secs(curl_wall).max(1e-9),
            cpu,
            cpu / curl_cpu.max(1e-9),
            rss.map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
        );
    };
    row("curl (POST + 1 PATCH)", curl_wall, curl_cpu, None);
    row("ferry upload (defaults)", def_wall, def_cpu, Some(def_rss));
    for (chunk, run) in &ferry_runs {
        let name = format!("ferry --chunk-size {chunk}");
        row(&name, run.wall, run.cpu, Some(run.peak_rss_kib));
    }
    row(
        "ferry (defaults) via cutting proxy",
        cut_run.wall,
        cut_run.cpu,
        Some(cut_run.peak_rss_kib),
    );
    println!();
    let (lo, hi) = paired
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "per round, ferry's wall over curl's: {} (median {:.2}, range {lo:.2}-{hi:.2}; ferry faster in {} of {runs})",
        paired
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        median(paired.clone()),
        paired.iter().filter(|&&r| r < 1.0).count()
    );
    println!(
        "server CPU per upload (median): {default_server_cpu:.2} s under ferry, {curl_server_cpu:.2} s under curl ({:.2}x); \
         a server busier than the wall time is the limit for both",
        default_server_cpu / curl_server_cpu.max(1e-9)
    );
    let wall_ratio = secs(def_wall) / secs(curl_wall).max(1e-9);
    let cpu_ratio = def_cpu / curl_cpu.max(1e-9);
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "issue 16 targets, default settings: wall {wall_ratio:.2}x curl (<= {WALL_TARGET}: {}); \
         CPU {cpu_ratio:.2}x curl (<= {CPU_TARGET}: {}); peak RSS {:.1} MiB (<= {} MiB: {})",
        met(wall_ratio <= WALL_TARGET),
        met(cpu_ratio <= CPU_TARGET),
        def_rss as f64 / 1024.0,
        RSS_BUDGET_KIB / 1024,
        met(def_rss <= RSS_BUDGET_KIB)
    );
    println!(
        "cut run: {cuts} cuts; bytes sent (client->server, HTTP headers included) / file size \
         = {:.3}; wall time / uncut default run = {:.2}; uploads created = {uploads_created}",
        bytes_up as f64 / size as f64,
        secs(cut_run.wall) / secs(def_wall).max(1e-9)
    );
    println!("(the cut run's wall time includes the test proxy's forwarding and the retry delays)");
    if failures.is_empty() {
        println!("all uploads verified byte for byte; peak RSS within the 8 MiB budget");
    }
    Ok(failures)
}

/// Records a failure if `run`'s peak RSS is over the budget.
fn check_rss(what: &str, run: &FerryRun, failures: &mut Vec<String>) {
    if run.peak_rss_kib > RSS_BUDGET_KIB {
        failures.push(format!(
            "{what}: peak RSS {:.1} MiB is over the {} MiB budget",
            run.peak_rss_kib as f64 / 1024.0,
            RSS_BUDGET_KIB / 1024
        ));
    }
}

fn check_curl() -> Res<()> {
    match Command::new("curl").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(
            "curl is needed for the baseline and was not found on PATH; install it \
                  (Debian/Ubuntu: `sudo apt-get install curl`, Fedora: `sudo dnf install curl`, \
                  macOS: `brew install curl`)"
                .into(),
        ),
    }
}

/// Writes `size` incompressible bytes (xorshift64) in 1 MiB blocks.
fn write_random(path: &Path, size: u64) -> Res<()> {
    let f = File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut w = BufWriter::with_capacity(MIB as usize, f);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        w.write_all(&block[..n])
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        left -= n as u64;
    }
    // Flushed to disk now, so that its writeback does not slow down the first timed upload.
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn curl() -> Command {
    let mut c = Command::new("curl");
    for v in PROXY_VARS {
        c.env_remove(v);
    }
    c.args(["--noproxy", "*"]);
    c
}

/// POST to create, then one PATCH of the whole file; returns the wall time of both and the URL.
fn curl_upload(endpoint: &str, file: &Path, size: u64) -> Res<(Duration, String)> {
    let start = Instant::now();
    let post = curl()
        .args(["-sS", "-X", "POST", "-H", "Tus-Resumable: 1.0.0", "-H"])
        .arg(format!("Upload-Length: {size}"))
        .args(["-D", "-", "-o", "/dev/null", endpoint])
        .output()
        .map_err(|e| format!("run curl: {e}"))?;
    let headers = String::from_utf8_lossy(&post.stdout);
    if !post.status.success() {
        return Err(format!(
            "curl POST failed ({}): {}",
            post.status,
            String::from_utf8_lossy(&post.stderr)
        ));
    }
    let url = headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("location")
                .then(|| value.trim().to_string())
        })
        .ok_or_else(|| format!("curl POST: no Location in the response:\n{headers}"))?;
    let patch = curl()
        .args(["-sS", "-X", "PATCH", "-T"])
        .arg(file)
        .args([
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Upload-Offset: 0",
            "-H",
            "Content-Type: application/offset+octet-stream",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])
        .output()
        .map_err(|e| format!("run curl: {e}"))?;
    let wall = start.elapsed();
    let code = String::from_utf8_lossy(&patch.stdout);
    if !patch.status.success() || code.trim() != "204" {
        return Err(format!(
            "curl PATCH {url} failed ({}, HTTP {code}): {}",
            patch.status,
            String::from_utf8_lossy(&patch.stderr)
        ));
    }
    Ok((wall, url))
}

/// A config file with its own state directory (so no run resumes another's upload).
fn write_config(dir: &Path, name: &str, endpoint: &str, extra: &str) -> Res<PathBuf> {
    let state = dir.join(format!("state-{name}"));
    let path = dir.join(format!("ferry-{name}.toml"));
    let state = state
        .to_str()
        .ok_or("the temporary directory's path is not UTF-8")?;
    let text = format!("state_dir = {state:?}\n[server]\nendpoint = {endpoint:?}\n{extra}");
    fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs `ferry upload`, polling its peak RSS; returns the run and the upload URL it printed.
fn run_ferry(
    config: &Path,
    file: &Path,
    chunk: Option<&str>,
    dir: &Path,
) -> Res<(FerryRun, String)> {
    let log_path = dir.join("ferry-stderr.log");
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd.arg("upload").arg("--config").arg(config);
    if let Some(chunk) = chunk {
        cmd.args(["--chunk-size", chunk]);
    }
    cmd.arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);

    let cpu0 = children_cpu();
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("run ferry: {e}"))?;
    let status_path = PathBuf::from(format!("/proc/{}/status", child.id()));
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut peak = 0;
            // Stops once the process is reaped (its /proc entry is gone) or the wait returned.
            while !done.load(Ordering::SeqCst) {
                match fs::read_to_string(&status_path) {
                    Ok(status) => {
                        if let Some(kib) = vm_hwm_kib(&status) {
                            peak = kib;
                        }
                    }
                    Err(_) => break,
                }
                thread::sleep(RSS_POLL);
            }
            peak
        })
    };
    let out = child.wait_with_output();
    let wall = start.elapsed();
    let cpu = children_cpu() - cpu0;
    done.store(true, Ordering::SeqCst);
    let peak_rss_kib = poller.join().unwrap_or(0);
    let out = out.map_err(|e| format!("wait for ferry: {e}"))?;

    let stdout = String::from_utf8_lossy(&out.stdout);
    let url = stdout
        .lines()
        .find_map(|l| l.split_once('\t').map(|(_, url)| url.trim().to_string()));
    match url {
        Some(url) if out.status.success() => {
            if peak_rss_kib == 0 {
                return Err("could not read ferry's VmHWM from /proc (Linux only)".into());
            }
            Ok((
                FerryRun {
                    wall,
                    cpu,
                    peak_rss_kib,
                },
                url,
            ))
        }
        _ => {
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "ferry upload failed ({}); stdout: {stdout:?}; last stderr lines:\n{}",
                out.status,
                tail.join("\n")
            ))
        }
    }
}

/// The `VmHWM:   1234 kB` line of `/proc/<pid>/status`.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Compares the server's stored bytes with the file (streaming), records a failure if they
/// differ, then deletes the stored copy to keep disk use down.
fn verify(peer: &Peer, url: &str, file: &Path, what: &str, failures: &mut Vec<String>) -> Res<()> {
    let stored = peer.stored_path(url);
    match same_bytes(file, &stored) {
        Ok(None) => {}
        Ok(Some(why)) => failures.push(format!("{what}: stored bytes differ from the file: {why}")),
        Err(e) => failures.push(format!("{what}: cannot compare the stored upload: {e}")),
    }
    let _ = fs::remove_file(&stored);
    Ok(())
}

/// `None` if equal, else where they differ.
fn same_bytes(a: &Path, b: &Path) -> Res<Option<String>> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let len = |f: &File, p: &Path| {
        f.metadata()
            .map(|m| m.len())
            .map_err(|e| format!("stat {}: {e}", p.display()))
    };
    let (la, lb) = (len(&fa, a)?, len(&fb, b)?);
    if la != lb {
        return Ok(Some(format!("{lb} bytes stored, file has {la}")));
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    let mut offset = 0u64;
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let m = read_full(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        if let Some(i) = ba[..n.min(m)]
            .iter()
            .zip(&bb[..n.min(m)])
            .position(|(x, y)| x != y)
        {
            return Ok(Some(format!(
                "first difference at byte {}",
                offset + i as u64
            )));
        }
        if n != m {
            return Ok(Some(format!(
                "lengths differ near byte {}",
                offset + n.min(m) as u64
            )));
        }
        if n == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn human(bytes: u64) -> String {
    if bytes >= GIB && bytes % GIB == 0 {
        format!("{} GiB", bytes / GIB)
    } else if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}
