//! Daemon benchmark: the release `ferry run` against a local `@tus/server`, four figures in one
//! run, each beside a baseline measured in the same run.
//!
//! ```sh
//! scripts/install-peers                 # once: @tus/server and tus-js-client into tests/peers
//! cargo bench --bench daemon            # 60 s idle, 10,000 files, 100,000 queued
//! cargo bench --bench daemon -- --idle-secs 20 --files 2000 --queued 20000
//! ```
//!
//! 1. **Idle CPU**: `ferry run` on an empty spool; after a 2 s warm-up, utime+stime from
//!    `/proc/<pid>/stat` (and the threads' `se.sum_exec_runtime` from `/proc/<pid>/task/*/sched`,
//!    which has nanosecond resolution) over `--idle-secs`, extrapolated to CPU seconds per hour;
//!    wake-ups are the delta of `voluntary_ctxt_switches` summed over `/proc/<pid>/task/*/status`.
//!    Baseline: the idle `@tus/server` process over the same window.
//! 2. **Pickup latency**: the same daemon (after_upload = delete, default settle_time); a 4 KiB
//!    file written as `x.part` and renamed to `x.bin`, or written in place, timed from the rename
//!    or the close until the server's data file holds all its bytes (polled every 0.5 ms).
//!    Baseline: this process creating the same upload itself (POST, then one PATCH, a new
//!    loopback connection each), timed until the PATCH's 204.
//! 3. **Many small files**: `--files` files of 100 KiB, all in the spool before the daemon
//!    starts (mtime set an hour back, so the first scan queues them at once), timed from spawning
//!    `ferry run` until the spool is empty. Baseline: tus-js-client (Node, `benches/tus-js-upload.mjs`,
//!    sequential, chunkSize unset, no fingerprint or URL storage) uploading the same files to the
//!    same server, timed from spawning node until it exits. Every stored upload is checked byte
//!    for byte, and the server's data directory is emptied between the two.
//! 4. **Queued**: `--queued` files of 10 bytes, the daemon started paused (`<state_dir>/paused`),
//!    timed from spawn until `ferry status --json` reports them all `queued` (polled every
//!    100 ms); then peak RSS (`VmHWM`) and the time from SIGTERM to exit. Baselines: this process
//!    listing and lstat-ing the same spool; the idle daemon's VmHWM and stop time from step 1.
//!
//! Machines are shared and noisy: compare the ratios, not the seconds. Linux only (/proc).
//! `FERRY_BENCH_BIN=/path/to/ferry` measures another build (an older commit's release binary,
//! say) with the same benchmark, for a before/after figure from one machine and one session.
#![allow(
    unreachable_pub,
    reason = "a binary: its support modules' pub items are for each other"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "measures and waits in real time, and reads its knobs from the environment"
)]

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

#[path = "../tests/support/peers.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test support")]
mod peers;

use peers::{NodeOpts, Peer};

/// The ferry binary under test: this build's, or `FERRY_BENCH_BIN`.
fn ferry_bin() -> std::ffi::OsString {
    std::env::var_os("FERRY_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ferry").into())
}

const KIB: u64 = 1 << 10;
const SMALL_FILE: u64 = 100 * KIB;
const LATENCY_FILE: u64 = 4 * KIB;
const QUEUED_FILE: u64 = 10;
const WARM_UP: Duration = Duration::from_secs(2);
const STATUS_POLL: Duration = Duration::from_millis(100);
const LATENCY_POLL: Duration = Duration::from_micros(500);
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

#[derive(Debug, Clone)]
struct Args {
    idle_secs: u64,
    files: usize,
    queued: usize,
    samples: usize,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("daemon bench: {e}");
            eprintln!(
                "usage: cargo bench --bench daemon [-- --idle-secs N] [--files N] [--queued N] [--samples N]"
            );
            eprintln!("       defaults: --idle-secs 60 --files 10000 --queued 100000 --samples 20");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(failures) if failures.is_empty() => ExitCode::SUCCESS,
        Ok(failures) => {
            for f in &failures {
                eprintln!("FAILED: {f}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("daemon bench: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--idle-secs N`, `--files N`, `--queued N`, `--samples N`; Cargo's `--bench` is ignored.
fn parse_args() -> Res<Args> {
    let mut a = Args {
        idle_secs: 60,
        files: 10_000,
        queued: 100_000,
        samples: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if !["--idle-secs", "--files", "--queued", "--samples"].contains(&name.as_str()) {
            if name.starts_with("--") {
                continue; // `--bench` and other libtest-style flags
            }
            return Err(format!("unexpected argument {arg:?}"));
        }
        let value = match inline {
            Some(v) => v,
            None => it.next().ok_or(format!("{name} needs a value"))?,
        };
        let n: u64 = value
            .parse()
            .map_err(|_| format!("{name} {value:?}: not a whole number"))?;
        if n == 0 {
            return Err(format!("{name} must be above 0"));
        }
        match name.as_str() {
            "--idle-secs" => a.idle_secs = n,
            "--files" => a.files = n as usize,
            "--queued" => a.queued = n as usize,
            _ => a.samples = n as usize,
        }
    }
    Ok(a)
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(args: &Args) -> Res<Vec<String>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let modules = manifest.join("tests/peers/node_modules");
    let tus_js_script = manifest.join("benches/tus-js-upload.mjs");
    if !modules.join("tus-js-client/package.json").is_file() {
        return Err(format!(
            "tus-js-client is not installed in {}: run `scripts/install-peers` \
             (npm ci in tests/peers)",
            modules.display()
        ));
    }
    let tck = clock_ticks_per_sec();
    let dir =
        TempDir(std::env::temp_dir().join(format!("ferry-bench-daemon-{}", std::process::id())));
    fs::create_dir_all(&dir.0).map_err(|e| format!("create {}: {e}", dir.0.display()))?;
    let mut failures = Vec::new();

    let peer = Peer::node_tus_server(NodeOpts::default());
    let data_dir = peer
        .stored_path("/files/probe")
        .parent()
        .map(Path::to_path_buf)
        .ok_or("no peer data dir")?;
    let node_pid = find_pid_with_arg(&data_dir)
        .ok_or("cannot find the @tus/server process in /proc (Linux only)")?;

    // Warm-up, untimed: the first uploads to a fresh node process pay for its JIT.
    for _ in 0..50 {
        raw_tus_upload(peer.addr(), &vec![7u8; LATENCY_FILE as usize])?;
    }
    empty_dir(&data_dir)?;

    // 1. Idle, and 2. pickup latency, with one daemon.
    eprintln!("idle: ferry run on an empty spool, {} s", args.idle_secs);
    let idle_d = Daemon::start(&dir.0, "idle", &peer.endpoint(), false)?;
    thread::sleep(WARM_UP);
    let f0 = ProcSample::take(idle_d.pid())?;
    let n0 = ProcSample::take(node_pid)?;
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(args.idle_secs));
    let f1 = ProcSample::take(idle_d.pid())?;
    let n1 = ProcSample::take(node_pid)?;
    let window = t0.elapsed().as_secs_f64();
    let idle_ferry = IdleFigures::between(&f0, &f1, window, tck);
    let idle_node = IdleFigures::between(&n0, &n1, window, tck);
    let idle_hwm_kib = vm_kib(idle_d.pid(), "VmHWM:").unwrap_or(0);

    eprintln!("pickup latency: {} samples each", args.samples);
    let mut lat_rename = Vec::new();
    let mut lat_inplace = Vec::new();
    let mut gone_rename = Vec::new();
    let mut gone_inplace = Vec::new();
    let content = pattern(LATENCY_FILE as usize, 99);
    for i in 0..args.samples {
        for renamed in [true, false] {
            let name = format!("lat-{}-{i:03}.bin", if renamed { "r" } else { "w" });
            let (server, gone) = pickup(&idle_d.spool, &data_dir, &name, &content, renamed)?;
            if renamed {
                lat_rename.push(server);
                gone_rename.push(gone);
            } else {
                lat_inplace.push(server);
                gone_inplace.push(gone);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    let mut lat_base = Vec::new();
    for _ in 0..args.samples {
        let t = Instant::now();
        raw_tus_upload(peer.addr(), &content)?;
        lat_base.push(t.elapsed());
        thread::sleep(Duration::from_millis(20));
    }
    let uploads_latency = peer.upload_count();
    if uploads_latency != 3 * args.samples {
        failures.push(format!(
            "latency: {uploads_latency} uploads on the server, expected {}",
            3 * args.samples
        ));
    }
    let idle_stop = idle_d.stop()?;
    empty_dir(&data_dir)?;

    // 3. Many small files: tus-js-client, then ferry, on the same files.
    eprintln!(
        "throughput: writing {} files of {} KiB",
        args.files,
        SMALL_FILE / KIB
    );
    let tp_root = dir.0.join("tp");
    let tp_spool = tp_root.join("spool");
    fs::create_dir_all(&tp_spool).map_err(|e| format!("create {}: {e}", tp_spool.display()))?;
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..args.files {
        let path = tp_spool.join(small_name(i));
        write_file(&path, &pattern(SMALL_FILE as usize, i as u64), an_hour_ago)?;
    }
    sync_disks();

    eprintln!("throughput: tus-js-client");
    let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());
    let mut cmd = Command::new(&node);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd.arg(&tus_js_script)
        .arg("--endpoint")
        .arg(peer.endpoint())
        .arg("--dir")
        .arg(&tp_spool)
        .arg("--modules")
        .arg(&modules)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let server_cpu0 = cpu_ticks(node_pid)?;
    let children0 = children_cpu_ticks()?;
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("run {}: {e}", Path::new(&node).display()))?;
    let js_wall = start.elapsed();
    let js_cpu = ticks_secs(children_cpu_ticks()? - children0, tck);
    let js_server_cpu = ticks_secs(cpu_ticks(node_pid)? - server_cpu0, tck);
    if !out.status.success() {
        return Err(format!(
            "tus-js-client upload failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let js_report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("tus-js-upload printed no JSON ({e}): {:?}", out.stdout))?;
    if js_report["files"].as_u64() != Some(args.files as u64) {
        failures.push(format!("tus-js-client: reported {js_report}"));
    }
    verify_small_files(&data_dir, args.files, "tus-js-client", &mut failures)?;
    empty_dir(&data_dir)?;
    sync_disks();

    eprintln!("throughput: ferry run");
    let server_cpu0 = cpu_ticks(node_pid)?;
    let children0 = children_cpu_ticks()?;
    let start = Instant::now();
    let tp_d = Daemon::start_in(&tp_root, &tp_spool, &peer.endpoint(), false)?;
    let limit = Duration::from_secs(600).max(Duration::from_millis(args.files as u64 * 100));
    let emptied = wait_for(limit, Duration::from_millis(50), || {
        Ok(count_entries(&tp_spool)? == 0)
    })?;
    let ferry_wall = start.elapsed();
    let tp_hwm_kib = vm_kib(tp_d.pid(), "VmHWM:").unwrap_or(0);
    let left = count_entries(&tp_spool)?;
    let tp_log = tp_d.log.clone();
    tp_d.stop()?;
    let ferry_cpu = ticks_secs(children_cpu_ticks()? - children0, tck);
    let ferry_server_cpu = ticks_secs(cpu_ticks(node_pid)? - server_cpu0, tck);
    if !emptied {
        return Err(format!(
            "ferry run left {left} of {} files in the spool after {limit:?}; log: {}",
            args.files,
            tail(&tp_log, 20)
        ));
    }
    verify_small_files(&data_dir, args.files, "ferry run", &mut failures)?;
    empty_dir(&data_dir)?;
    let _ = fs::remove_dir_all(&tp_root);

    // 4. Queued, paused.
    eprintln!(
        "queued: writing {} files of {QUEUED_FILE} bytes",
        args.queued
    );
    let q_root = dir.0.join("queued");
    let q_spool = q_root.join("spool");
    fs::create_dir_all(&q_spool).map_err(|e| format!("create {}: {e}", q_spool.display()))?;
    let tiny = pattern(QUEUED_FILE as usize, 5);
    for i in 0..args.queued {
        write_file(&q_spool.join(format!("q{i:07}.bin")), &tiny, an_hour_ago)?;
    }
    sync_disks();
    let t = Instant::now();
    let listed = list_and_lstat(&q_spool)?;
    let list_base = t.elapsed();
    if listed != args.queued {
        return Err(format!("listed {listed} files, wrote {}", args.queued));
    }
    eprintln!("queued: ferry run, paused");
    let uploads_before = peer.upload_count();
    let start = Instant::now();
    let q_d = Daemon::start_in(&q_root, &q_spool, &peer.endpoint(), true)?;
    let mut last_status = serde_json::Value::Null;
    let limit = Duration::from_secs(900);
    let all_queued = wait_for(limit, STATUS_POLL, || {
        if let Some(s) = q_d.status()? {
            last_status = s;
        }
        Ok(last_status["queued"].as_u64() == Some(args.queued as u64))
    })?;
    let scan_time = start.elapsed();
    if !all_queued {
        return Err(format!(
            "the status did not report {} queued within {limit:?}; last: {last_status}; log: {}",
            args.queued,
            tail(&q_d.log, 20)
        ));
    }
    let q_hwm_kib = vm_kib(q_d.pid(), "VmHWM:").unwrap_or(0);
    let q_rss_kib = vm_kib(q_d.pid(), "VmRSS:").unwrap_or(0);
    let q_threads = ProcSample::take(q_d.pid())?.threads.len();
    let q_stop = q_d.stop()?;
    if peer.upload_count() != uploads_before {
        failures.push(format!(
            "paused daemon created {} uploads",
            peer.upload_count() - uploads_before
        ));
    }
    let state_kib = dir_size(&q_root.join("state")) / KIB;
    drop(peer);

    // Report.
    let nproc = thread::available_parallelism().map_or(0, |n| n.get());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let cmdline = format!(
        "cargo bench --bench daemon -- --idle-secs {} --files {} --queued {} --samples {}",
        args.idle_secs, args.files, args.queued, args.samples
    );
    let js_rate = args.files as f64 / js_wall.as_secs_f64();
    let ferry_rate = args.files as f64 / ferry_wall.as_secs_f64();
    println!();
    println!("ferry run benchmark: release binary vs baselines, @tus/server 2.4.5 (FileStore) on 127.0.0.1; nproc = {nproc}");
    if let Some(bin) = std::env::var_os("FERRY_BENCH_BIN") {
        println!(
            "ferry binary: {} (FERRY_BENCH_BIN)",
            Path::new(&bin).display()
        );
    }
    println!("command: {cmdline}");
    println!("All figures are from this one run on a shared machine: compare ratios, not seconds.");
    println!();
    let row = |fig: &str, f: String, b: String, ratio: Option<f64>, what: &str| {
        let r = ratio.map_or("-".to_string(), |r| format!("{r:.2}"));
        println!("{fig:<44} {f:>16} {b:>16} {r:>7}  {what}");
    };
    let head = ["figure", "ferry run", "baseline", "ratio", "baseline is"];
    println!(
        "{:<44} {:>16} {:>16} {:>7}  {}",
        head[0], head[1], head[2], head[3], head[4]
    );
    row(
        &format!("[1] idle CPU s/hour (utime+stime, {} s)", args.idle_secs),
        format!("{:.2}", idle_ferry.cpu_per_hour),
        format!("{:.2}", idle_node.cpu_per_hour),
        ratio(idle_ferry.cpu_per_hour, idle_node.cpu_per_hour),
        "@tus/server idle, same window",
    );
    row(
        "[1] idle CPU s/hour (sum_exec_runtime)",
        format!("{:.3}", idle_ferry.exec_per_hour),
        format!("{:.3}", idle_node.exec_per_hour),
        ratio(idle_ferry.exec_per_hour, idle_node.exec_per_hour),
        "@tus/server idle, same window",
    );
    row(
        "[1] idle wake-ups/hour (voluntary csw)",
        format!("{:.0}", idle_ferry.wakeups_per_hour),
        format!("{:.0}", idle_node.wakeups_per_hour),
        ratio(idle_ferry.wakeups_per_hour, idle_node.wakeups_per_hour),
        "@tus/server idle, same window",
    );
    for (what, lat, gone) in [
        ("rename", &lat_rename, &gone_rename),
        ("in place", &lat_inplace, &gone_inplace),
    ] {
        row(
            &format!("[2] pickup, {what}: median / max ms"),
            format!("{:.1} / {:.1}", ms(median(lat)), ms(max(lat))),
            format!("{:.1} / {:.1}", ms(median(&lat_base)), ms(max(&lat_base))),
            Some(median(lat).as_secs_f64() / median(&lat_base).as_secs_f64().max(1e-9)),
            "POST+PATCH from this process",
        );
        row(
            &format!("[2]   ... until the spool file is gone, {what}"),
            format!("{:.1} / {:.1}", ms(median(gone)), ms(max(gone))),
            "-".into(),
            None,
            "",
        );
    }
    row(
        &format!("[3] {} x 100 KiB: files/s", args.files),
        format!("{ferry_rate:.0}"),
        format!("{js_rate:.0}"),
        Some(ferry_rate / js_rate),
        "tus-js-client 4.3.1, sequential",
    );
    row(
        "[3]   wall s",
        format!("{:.1}", ferry_wall.as_secs_f64()),
        format!("{:.1}", js_wall.as_secs_f64()),
        Some(ferry_wall.as_secs_f64() / js_wall.as_secs_f64()),
        "",
    );
    row(
        "[3]   client CPU s",
        format!("{ferry_cpu:.1}"),
        format!("{js_cpu:.1}"),
        Some(ferry_cpu / js_cpu.max(1e-9)),
        "",
    );
    row(
        "[3]   server CPU s",
        format!("{ferry_server_cpu:.1}"),
        format!("{js_server_cpu:.1}"),
        Some(ferry_server_cpu / js_server_cpu.max(1e-9)),
        "",
    );
    row(
        "[3]   ferry peak RSS MiB",
        format!("{:.1}", tp_hwm_kib as f64 / 1024.0),
        "-".into(),
        None,
        "",
    );
    row(
        &format!("[4] first scan of {} queued files, s", args.queued),
        format!("{:.2}", scan_time.as_secs_f64()),
        format!("{:.2}", list_base.as_secs_f64()),
        Some(scan_time.as_secs_f64() / list_base.as_secs_f64().max(1e-9)),
        "readdir + lstat in this process",
    );
    row(
        "[4] peak RSS (VmHWM) MiB",
        format!("{:.1}", q_hwm_kib as f64 / 1024.0),
        format!("{:.1}", idle_hwm_kib as f64 / 1024.0),
        Some(q_hwm_kib as f64 / (idle_hwm_kib as f64).max(1.0)),
        "the idle daemon, empty spool [1]",
    );
    row(
        "[4] stop (SIGTERM -> exit) ms",
        format!("{:.0}", ms(q_stop)),
        format!("{:.0}", ms(idle_stop)),
        Some(q_stop.as_secs_f64() / idle_stop.as_secs_f64().max(1e-9)),
        "the idle daemon, empty spool [1]",
    );
    println!();
    println!("[1] after a {} s warm-up; /proc/<pid>/stat utime+stime (1/{tck} s ticks) and the sum of /proc/<pid>/task/*/sched se.sum_exec_runtime over {window:.1} s, x 3600/{window:.1}; wake-ups = delta of voluntary_ctxt_switches summed over /proc/<pid>/task/*/status.", WARM_UP.as_secs());
    println!(
        "    ferry threads' wake-ups in the window: {}; @tus/server: {}",
        idle_ferry.by_thread, idle_node.by_thread
    );
    println!("[2] {} samples each of {} KiB, alternating; from rename()/close() returning to the server's data file holding every byte (polled every {} us), and to the spool file's deletion; settle_time default; baseline: new connections, POST then PATCH, until the 204.", args.samples, LATENCY_FILE / KIB, LATENCY_POLL.as_micros());
    println!("[3] files in the spool before the start (mtime 1 h back); ferry: spawn to spool empty (polled every 50 ms), concurrency 1, after_upload delete; tus-js-client: spawn to exit; both verified byte for byte; client CPU = this process's cutime+cstime delta around reaping it.");
    println!("[4] daemon started with <state_dir>/paused; spawn until `ferry status --json` reports queued = {} (polled every {} ms); VmHWM then; {} threads; VmRSS then {:.1} MiB; state dir {:.1} MiB.", args.queued, STATUS_POLL.as_millis(), q_threads, q_rss_kib as f64 / 1024.0, state_kib as f64 / 1024.0);
    Ok(failures)
}

// ---------------------------------------------------------------------------------------------
// The daemon under test.

struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    spool: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// A daemon with its spool, state and config under `root/<name>`.
    fn start(root: &Path, name: &str, endpoint: &str, paused: bool) -> Res<Daemon> {
        let dir = root.join(name);
        let spool = dir.join("spool");
        fs::create_dir_all(&spool).map_err(|e| format!("create {}: {e}", spool.display()))?;
        Daemon::start_in(&dir, &spool, endpoint, paused)
    }

    /// A daemon for `spool`, its state dir, config and log in `dir`.
    fn start_in(dir: &Path, spool: &Path, endpoint: &str, paused: bool) -> Res<Daemon> {
        let state = dir.join("state");
        fs::create_dir_all(&state).map_err(|e| format!("create {}: {e}", state.display()))?;
        if paused {
            fs::write(state.join("paused"), b"paused by the benchmark\n")
                .map_err(|e| format!("write the pause marker: {e}"))?;
        }
        let config = dir.join("ferry.toml");
        let text = format!(
            "state_dir = {:?}\n[server]\nendpoint = {endpoint:?}\n[spool]\ndir = {:?}\nafter_upload = \"delete\"\n",
            utf8(&state)?,
            utf8(spool)?
        );
        fs::write(&config, text).map_err(|e| format!("write {}: {e}", config.display()))?;
        let log = dir.join("ferry.log");
        let log_file = File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut cmd = Command::new(ferry_bin());
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("run ferry: {e}"))?;
        Ok(Daemon {
            child: Some(child),
            config,
            spool: spool.to_path_buf(),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `ferry status --json`, or `None` before the first snapshot.
    fn status(&self) -> Res<Option<serde_json::Value>> {
        let out = Command::new(ferry_bin())
            .args(["status", "--json", "--config"])
            .arg(&self.config)
            .output()
            .map_err(|e| format!("run ferry status: {e}"))?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(serde_json::from_slice(&out.stdout).ok())
    }

    /// SIGTERM, then waits; returns the time from the signal to the exit. A non-zero exit is
    /// an error.
    fn stop(mut self) -> Res<Duration> {
        let mut child = self.child.take().ok_or("the daemon is gone")?;
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map_err(|e| format!("run kill: {e}"))?;
        let t = Instant::now();
        if !sent.success() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("kill -TERM {pid} failed"));
        }
        let status = child.wait().map_err(|e| format!("wait for ferry: {e}"))?;
        let took = t.elapsed();
        if !status.success() {
            return Err(format!(
                "ferry run exited with {status} after SIGTERM; log: {}",
                tail(&self.log, 20)
            ));
        }
        Ok(took)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One pickup sample: returns (until the server holds the file, until the spool file is gone).
fn pickup(
    spool: &Path,
    data_dir: &Path,
    name: &str,
    content: &[u8],
    renamed: bool,
) -> Res<(Duration, Duration)> {
    let before: HashSet<String> = names_in(data_dir)?;
    let path = spool.join(name);
    let t0 = if renamed {
        let part = spool.join(format!("{name}.part"));
        fs::write(&part, content).map_err(|e| format!("write {}: {e}", part.display()))?;
        fs::rename(&part, &path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
        Instant::now()
    } else {
        let mut f = File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
        f.write_all(content)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        drop(f);
        Instant::now()
    };
    let (mut server, mut gone) = (None, None);
    let deadline = t0 + Duration::from_secs(60);
    while server.is_none() || gone.is_none() {
        if Instant::now() > deadline {
            return Err(format!(
                "{name}: not uploaded within 60 s (server: {server:?}, spool file gone: {gone:?})"
            ));
        }
        if server.is_none() {
            let done = names_in(data_dir)?.iter().any(|n| {
                !n.ends_with(".json")
                    && !before.contains(n)
                    && fs::metadata(data_dir.join(n)).is_ok_and(|m| m.len() == content.len() as u64)
            });
            if done {
                server = Some(t0.elapsed());
            }
        }
        if gone.is_none() && fs::symlink_metadata(&path).is_err() {
            gone = Some(t0.elapsed());
        }
        thread::sleep(LATENCY_POLL);
    }
    Ok((server.unwrap_or_default(), gone.unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------------
// The baseline tus client: POST, then one PATCH, each on a new loopback connection.

fn raw_tus_upload(addr: SocketAddr, body: &[u8]) -> Res<()> {
    let post = format!(
        "POST /files/ HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nUpload-Length: {}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (code, headers) = http(addr, post.as_bytes(), &[])?;
    if code != 201 {
        return Err(format!("baseline POST: HTTP {code}"));
    }
    let location = header(&headers, "location").ok_or("baseline POST: no Location")?;
    let path = match location.find("://") {
        Some(i) => location[i + 3..]
            .find('/')
            .map_or("/", |j| &location[i + 3 + j..]),
        None => location,
    };
    let patch = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (code, _) = http(addr, patch.as_bytes(), body)?;
    if code != 204 {
        return Err(format!("baseline PATCH: HTTP {code}"));
    }
    Ok(())
}

/// One request on a new connection; returns the status and the header block.
fn http(addr: SocketAddr, head: &[u8], body: &[u8]) -> Res<(u16, String)> {
    let io = |e: std::io::Error| format!("baseline HTTP to {addr}: {e}");
    let mut s = TcpStream::connect(addr).map_err(io)?;
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    s.write_all(&[head, body].concat()).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let text = String::from_utf8_lossy(&resp);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("baseline HTTP: no status line in {head:?}"))?;
    Ok((code, head))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

// ---------------------------------------------------------------------------------------------
// /proc.

/// CPU time and context switches of a process, per thread.
struct ProcSample {
    ticks: u64,
    /// tid -> (name, voluntary switches, sum_exec_runtime ms)
    threads: HashMap<String, (String, u64, f64)>,
}

impl ProcSample {
    fn take(pid: u32) -> Res<ProcSample> {
        let ticks = cpu_ticks(pid)?;
        let mut threads = HashMap::new();
        let task = format!("/proc/{pid}/task");
        let entries = fs::read_dir(&task).map_err(|e| format!("read {task}: {e}"))?;
        for entry in entries.flatten() {
            let tid = entry.file_name().to_string_lossy().into_owned();
            let base = entry.path();
            let Ok(status) = fs::read_to_string(base.join("status")) else {
                continue; // the thread ended
            };
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let name = fs::read_to_string(base.join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            let exec_ms = fs::read_to_string(base.join("sched"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("se.sum_exec_runtime"))
                        .and_then(|l| l.split(':').nth(1))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                })
                .unwrap_or(0.0);
            threads.insert(tid, (name, field("voluntary_ctxt_switches:"), exec_ms));
        }
        Ok(ProcSample { ticks, threads })
    }
}

struct IdleFigures {
    cpu_per_hour: f64,
    exec_per_hour: f64,
    wakeups_per_hour: f64,
    by_thread: String,
}

impl IdleFigures {
    fn between(a: &ProcSample, b: &ProcSample, secs: f64, tck: u64) -> IdleFigures {
        let per_hour = 3600.0 / secs.max(1e-9);
        let mut wakeups = 0;
        let mut exec_ms = 0.0;
        let mut by_name: Vec<(String, u64)> = Vec::new();
        for (tid, (name, vol, ms)) in &b.threads {
            let (vol0, ms0) = a.threads.get(tid).map_or((0, 0.0), |t| (t.1, t.2));
            let d = vol.saturating_sub(vol0);
            wakeups += d;
            exec_ms += (ms - ms0).max(0.0);
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += d,
                None => by_name.push((name.clone(), d)),
            }
        }
        by_name.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
        let by_thread = by_name
            .iter()
            .map(|(n, d)| format!("{n} {d}"))
            .collect::<Vec<_>>()
            .join(", ");
        IdleFigures {
            cpu_per_hour: ticks_secs(b.ticks.saturating_sub(a.ticks), tck) * per_hour,
            exec_per_hour: exec_ms / 1000.0 * per_hour,
            wakeups_per_hour: wakeups as f64 * per_hour,
            by_thread,
        }
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: &str) -> Res<Vec<u64>> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or(format!("{path}: unexpected format"))?;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// utime + stime (fields 14 and 15).
fn cpu_ticks(pid: u32) -> Res<u64> {
    let f = stat_fields(&pid.to_string())?;
    Ok(f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0))
}

/// This process's cutime + cstime (fields 16 and 17): the CPU time of reaped children.
fn children_cpu_ticks() -> Res<u64> {
    let f = stat_fields("self")?;
    Ok(f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0))
}

fn ticks_secs(ticks: u64, tck: u64) -> f64 {
    ticks as f64 / tck.max(1) as f64
}

fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// A `VmHWM:`/`VmRSS:` line of `/proc/<pid>/status`, in KiB.
fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The process whose command line has `arg` (the @tus/server peer, found by its data dir).
fn find_pid_with_arg(arg: &Path) -> Option<u32> {
    let needle = arg.to_str()?;
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        cmdline
            .split(|b| *b == 0)
            .any(|a| a == needle.as_bytes())
            .then_some(pid)
    })
}

// ---------------------------------------------------------------------------------------------
// Files.

fn small_name(i: usize) -> String {
    format!("f{i:07}.bin")
}

/// Deterministic, incompressible bytes (xorshift64) for file number `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write_file(path: &Path, content: &[u8], mtime: SystemTime) -> Res<()> {
    let io = |e: std::io::Error| format!("write {}: {e}", path.display());
    let mut f = File::create(path).map_err(io)?;
    f.write_all(content).map_err(io)?;
    f.set_modified(mtime).map_err(io)
}

/// Writes dirty pages back, so one run's writeback does not slow down the next timed run.
fn sync_disks() {
    let _ = Command::new("sync").status();
}

fn names_in(dir: &Path) -> Res<HashSet<String>> {
    Ok(fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

fn count_entries(dir: &Path) -> Res<usize> {
    Ok(fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .count())
}

fn list_and_lstat(dir: &Path) -> Res<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("read {}: {e}", dir.display()))?;
        if fs::symlink_metadata(e.path()).is_ok_and(|m| m.is_file()) {
            n += 1;
        }
    }
    Ok(n)
}

fn empty_dir(dir: &Path) -> Res<()> {
    for e in fs::read_dir(dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .flatten()
    {
        fs::remove_file(e.path()).map_err(|err| format!("remove {}: {err}", e.path().display()))?;
    }
    Ok(())
}

fn dir_size(dir: &Path) -> u64 {
    fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Checks that the server holds exactly one complete upload per small file, byte for byte
/// (the file is found by the `filename` in the FileStore's `<id>.json`).
fn verify_small_files(
    data_dir: &Path,
    files: usize,
    who: &str,
    failures: &mut Vec<String>,
) -> Res<()> {
    let mut seen = vec![0u32; files];
    let mut bad = Vec::new();
    for name in names_in(data_dir)? {
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        let info: serde_json::Value = fs::read(data_dir.join(&name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(format!("{who}: unreadable {name}"))?;
        let fname = info["metadata"]["filename"].as_str().unwrap_or_default();
        let index = fname
            .strip_prefix('f')
            .and_then(|s| s.strip_suffix(".bin"))
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|i| *i < files);
        let Some(i) = index else {
            bad.push(format!("unexpected upload {id} ({fname:?})"));
            continue;
        };
        seen[i] += 1;
        let stored = fs::read(data_dir.join(id)).unwrap_or_default();
        if stored != pattern(SMALL_FILE as usize, i as u64) {
            bad.push(format!(
                "{fname}: {} bytes stored differ from the file",
                stored.len()
            ));
        }
    }
    let missing = seen.iter().filter(|n| **n == 0).count();
    let doubled = seen.iter().filter(|n| **n > 1).count();
    if missing > 0 || doubled > 0 || !bad.is_empty() {
        failures.push(format!(
            "{who}: {missing} files not uploaded, {doubled} uploaded more than once, {} bad: {:?}",
            bad.len(),
            bad.iter().take(5).collect::<Vec<_>>()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// Polls `cond` every `every` until it holds (true) or `limit` passes (false).
fn wait_for(limit: Duration, every: Duration, mut cond: impl FnMut() -> Res<bool>) -> Res<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if cond()? {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        thread::sleep(every);
    }
}

/// `a / b`, or `None` when `b` is zero.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

fn max(v: &[Duration]) -> Duration {
    v.iter().max().copied().unwrap_or_default()
}

fn utf8(p: &Path) -> Res<&str> {
    p.to_str()
        .ok_or_else(|| format!("{}: path is not UTF-8", p.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
