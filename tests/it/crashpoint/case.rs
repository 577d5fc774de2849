//! One crash-point case: a small spool, a tus server of its own, a `ferry` struck at one call
//! (or only counted), a clean restart, then every invariant checked.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{ferry, random_bytes, sigterm, Scratch};
use crate::support::tus_server::{RequestLog, ServerConfig, TusServer, UploadInfo};

use super::shim::{self, Action, Counts, Strike};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The spool: an empty file, one byte, one PATCH, and twelve 256 KiB PATCHes.
pub const FILES: [(&str, usize); 4] = [
    ("a-empty.bin", 0),
    ("b-one.bin", 1),
    ("c-300k.bin", 300 * KIB + 7),
    ("d-3m.bin", 3 * MIB + 11),
];

/// Long enough for today's 30 s state-store pause to end and the next attempt to run.
pub const FAILED_DISK_WATCH: Duration = Duration::from_secs(36);
/// A struck or counted run that neither ends nor drains within this is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// The clean restart must drain the spool (or `ferry upload` end) within this.
const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// SIGTERM must end `ferry run` within this (it promises 5 s).
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// How ferry is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `ferry run`, `after_upload = "delete"`.
    RunDelete,
    /// `ferry run`, `after_upload = "move:<done>"`.
    RunMove,
    /// `ferry upload FILES...` (files stay in place).
    Upload,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::RunDelete => "ferry run, delete",
            Mode::RunMove => "ferry run, move",
            Mode::Upload => "ferry upload",
        }
    }
}

/// The things that must hold; each failed case names the ones it broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// The shim was not loaded (static or emulated ferry): nothing was tested.
    ShimLoaded,
    /// No panic, no abort on an I/O error.
    NoPanic,
    /// After a failed write or sync ferry exits (non-zero, with a message) or finishes; it does
    /// not stay up without progress.
    NoLimping,
    /// A struck run ends the way the strike says (SIGKILL for kill).
    StrikeOutcome,
    /// Invariant 1: no spool file deleted or moved before the server held all of it.
    RemovedOnlyWhenComplete,
    /// The clean restart finishes the spool (and exits 0).
    RestartFinishes,
    /// Every spool file ends on the server exactly once, complete.
    UploadedExactlyOnce,
    /// The complete upload holds the file's bytes.
    SameBytes,
    /// Invariant 2: no data byte on an upload other than the file's final one (an extra upload
    /// may exist only empty: POST answered, killed before its URL was durable).
    NoDataOnUnstoredUrl,
    /// Invariant 2 while the disk fails: after a failed state write or sync, and until a sync
    /// succeeds again, no upload starts receiving data (no URL can have become durable then).
    /// A clean restart that recovers the record from the page cache hides this from the end
    /// state, so the struck run is checked against the server's request times.
    NoDataAfterFailedWrite,
    /// Delete: spool empty; move: each file in the done dir once, not in the spool; upload: the
    /// files untouched.
    FilesEndInPlace,
}

impl Invariant {
    pub fn label(self) -> &'static str {
        match self {
            Invariant::ShimLoaded => "shim loaded",
            Invariant::NoPanic => "no panic/abort",
            Invariant::NoLimping => "no limping after a failed write",
            Invariant::StrikeOutcome => "strike outcome",
            Invariant::RemovedOnlyWhenComplete => "inv 1: removed only when complete",
            Invariant::RestartFinishes => "clean restart finishes",
            Invariant::UploadedExactlyOnce => "uploaded exactly once",
            Invariant::SameBytes => "same bytes",
            Invariant::NoDataOnUnstoredUrl => "inv 2: no data on an unstored URL",
            Invariant::NoDataAfterFailedWrite => "inv 2: no new upload's data after a failed write",
            Invariant::FilesEndInPlace => "files end in place",
        }
    }
}

/// What one case found.
#[derive(Debug)]
pub struct Outcome {
    /// The struck (or counting) run's shim counters.
    pub counts: Counts,
    /// How the struck run ended, in words.
    pub first_run: String,
    pub violations: Vec<(Invariant, String)>,
    /// The struck run's and the restart's logs.
    pub logs: String,
}

impl Outcome {
    pub fn reached(&self) -> bool {
        self.counts.fired
    }
}

/// A spool, a state dir, a done dir and a server of its own.
struct Fixture {
    s: Scratch,
    server: TusServer,
    mode: Mode,
    spool: PathBuf,
    done: PathBuf,
    config: PathBuf,
}

impl Fixture {
    fn new(mode: Mode) -> Self {
        let s = Scratch::new("crashpoint");
        let server = TusServer::start(ServerConfig::default());
        let spool = s.dir.join("spool");
        let done = s.dir.join("done");
        std::fs::create_dir_all(&spool).unwrap();
        for (i, (name, len)) in FILES.iter().enumerate() {
            std::fs::write(spool.join(name), random_bytes(*len, seed(i))).unwrap();
        }
        let after = match mode {
            Mode::RunMove => format!("move:{}", done.display()),
            _ => "delete".to_string(),
        };
        let config = s.dir.join("ferry.toml");
        let text = format!(
            "state_dir = {:?}\n[server]\nendpoint = {:?}\nidle_timeout = \"5s\"\n\
             connect_timeout = \"5s\"\n[retry]\ninitial_delay = \"20ms\"\nmax_delay = \"200ms\"\n\
             [upload]\nchunk_size = \"256KiB\"\nchecksum = \"off\"\n[spool]\ndir = {spool:?}\nsettle_time = \"0s\"\n\
             rescan_interval = \"1s\"\nafter_upload = {after:?}\n",
            s.state(),
            server.endpoint(),
        );
        std::fs::write(&config, text).unwrap();
        Fixture {
            s,
            server,
            mode,
            spool,
            done,
            config,
        }
    }

    fn command(&self) -> Command {
        let mut c = ferry();
        match self.mode {
            Mode::RunDelete | Mode::RunMove => {
                c.arg("run").arg("--config").arg(&self.config);
            }
            Mode::Upload => {
                c.arg("upload").arg("--config").arg(&self.config);
                c.args(FILES.iter().map(|(n, _)| self.spool.join(n)));
            }
        }
        c
    }

    fn spawn(&self, mut c: Command, log: &str) -> Child {
        let log = std::fs::File::create(self.s.dir.join(log)).unwrap();
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.s.dir.join(name)).unwrap_or_default()
    }

    /// `ferry run` has nothing left to do: every file left the spool.
    fn drained(&self) -> bool {
        FILES.iter().all(|(n, _)| !self.spool.join(n).exists())
    }

    /// Runs ferry until it exits, or (`ferry run`) drains the spool (then SIGTERM), or `limit`
    /// passes (then SIGTERM too). Returns how it ended and whether it was still stuck.
    fn run(&self, c: Command, log: &str, limit: Duration) -> Ended {
        let mut child = self.spawn(c, log);
        let start = Instant::now();
        let daemon = self.mode != Mode::Upload;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Ended {
                    status: Some(status),
                    by_itself: true,
                    stuck: false,
                };
            }
            // SIGTERM before the handler is installed would kill it: wait for its first words.
            let drained = daemon && self.drained() && self.log(log).contains("watching ");
            let stuck = start.elapsed() >= limit;
            if drained || stuck {
                return Ended {
                    status: stop(&mut child),
                    by_itself: false,
                    stuck: stuck && !drained,
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// How a run ended.
struct Ended {
    /// `None`: it did not stop after SIGTERM (it was then killed).
    status: Option<ExitStatus>,
    /// It exited before we asked it to.
    by_itself: bool,
    /// It was still running, not done, when its time was up.
    stuck: bool,
}

impl Ended {
    fn describe(&self) -> String {
        let how = match self.status {
            None => "did not stop on SIGTERM".to_string(),
            Some(s) => describe_status(s),
        };
        if self.by_itself {
            format!("exited by itself: {how}")
        } else if self.stuck {
            format!("still running at the limit, stopped: {how}")
        } else {
            format!("drained, stopped: {how}")
        }
    }
}

fn describe_status(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s:?}"),
    }
}

/// SIGTERM, then wait up to `STOP_LIMIT`; SIGKILL if that is not enough.
fn stop(child: &mut Child) -> Option<ExitStatus> {
    if let Some(s) = child.try_wait().unwrap() {
        return Some(s);
    }
    sigterm(child);
    let start = Instant::now();
    while start.elapsed() < STOP_LIMIT {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn seed(i: usize) -> u64 {
    0xC0FFEE + i as u64
}

/// Runs one case: `strike` (or counting only), then a clean restart, then the checks.
pub fn run(mode: Mode, strike: Option<Strike>) -> Outcome {
    let fx = Fixture::new(mode);
    let counts_file = fx.s.dir.join("counts");
    let mut c = fx.command();
    shim::preload(&mut c, &counts_file, strike);
    let limit = match strike.map(|s| s.action) {
        Some(Action::Eio | Action::Enospc) => FAILED_DISK_WATCH,
        _ => RUN_LIMIT,
    };
    let first = fx.run(c, "first.log", limit);
    let first_ended = SystemTime::now();
    let mut v = Vec::new();
    let Some(counts) = Counts::read(&counts_file) else {
        v.push((
            Invariant::ShimLoaded,
            format!(
                "no counter block in {}: the shim was not loaded into ferry (static or \
                 emulated binary?); ferry {}",
                counts_file.display(),
                first.describe()
            ),
        ));
        return Outcome {
            counts: Counts::default(),
            first_run: first.describe(),
            violations: v,
            logs: fx.log("first.log"),
        };
    };
    check_first_run(&fx, strike, &counts, &first, &mut v);
    if let Some(s) = strike.filter(|s| s.action != Action::Kill && shim::is_store_kind(s.kind)) {
        check_failure_window(&fx, s, &counts, first_ended, &mut v);
    }
    check_removed_only_when_complete(&fx, &mut v);
    restart(&fx, &mut v);
    check_server(&fx, &mut v);
    check_places(&fx, &mut v);
    Outcome {
        counts,
        first_run: first.describe(),
        violations: v,
        logs: format!(
            "--- struck run:\n{}--- restart:\n{}",
            fx.log("first.log"),
            fx.log("restart.log")
        ),
    }
}

fn check_first_run(
    fx: &Fixture,
    strike: Option<Strike>,
    counts: &Counts,
    first: &Ended,
    v: &mut Vec<(Invariant, String)>,
) {
    use std::os::unix::process::ExitStatusExt;
    let log = fx.log("first.log");
    let status = first.status;
    let aborted = status.is_some_and(|s| s.signal() == Some(6) || s.code() == Some(134));
    if aborted || log.contains("panicked") {
        let line = log
            .lines()
            .find(|l| l.contains("panicked"))
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        let how = status.map_or("killed after SIGTERM".into(), describe_status);
        v.push((Invariant::NoPanic, format!("{how}{line}")));
    }
    let killed = status.and_then(|s| s.signal()) == Some(9);
    match strike {
        Some(s) if s.action == Action::Kill && counts.fired && !killed => {
            v.push((
                Invariant::StrikeOutcome,
                format!("struck with SIGKILL, but {}", first.describe()),
            ));
        }
        Some(s) if s.action == Action::Kill && counts.fired => {}
        Some(s) if s.action != Action::Kill && counts.fired && first.stuck => {
            let errors = log.lines().filter(|l| l.contains("ERROR")).count();
            v.push((
                Invariant::NoLimping,
                format!(
                    "still up after {} s with the spool not done ({errors} error lines){}",
                    FAILED_DISK_WATCH.as_secs(),
                    last_error(&log)
                ),
            ));
        }
        _ if !counts.fired && !status.is_some_and(|s| s.success()) => {
            v.push((
                Invariant::StrikeOutcome,
                format!("not struck, yet {}{}", first.describe(), last_error(&log)),
            ));
        }
        _ => {}
    }
}

/// Between the failed state write or sync and the next sync that succeeded (or the end of the
/// struck run), no upload that had no data byte yet may receive one.
fn check_failure_window(
    fx: &Fixture,
    strike: Strike,
    counts: &Counts,
    ended: SystemTime,
    v: &mut Vec<(Invariant, String)>,
) {
    let Some(from) = counts.fired_at else {
        return;
    };
    let to = counts.synced_after.map_or(ended, |t| t.min(ended));
    let requests = fx.server.requests();
    let uploads = fx.server.uploads();
    let data = |r: &&RequestLog| r.method == "PATCH" && r.body_bytes > 0;
    let mut judged = Vec::new();
    for r in requests.iter().filter(data) {
        if r.received <= from || r.received >= to || judged.contains(&r.path) {
            continue;
        }
        let before = requests
            .iter()
            .filter(data)
            .any(|e| e.path == r.path && e.received <= from);
        if before {
            continue;
        }
        judged.push(r.path.clone());
        let bytes: u64 = requests
            .iter()
            .filter(data)
            .filter(|e| e.path == r.path && e.received > from && e.received < to)
            .map(|e| e.body_bytes)
            .sum();
        let name = uploads
            .iter()
            .find(|u| u.url_path == r.path)
            .and_then(filename)
            .unwrap_or("?");
        let after = r.received.duration_since(from).unwrap_or_default();
        v.push((
            Invariant::NoDataAfterFailedWrite,
            format!(
                "{name}: {bytes} data bytes sent on {} from {:.1} s after the failed {} on, \
                 with no successful sync since: its URL record cannot be on disk",
                r.path,
                after.as_secs_f64(),
                shim::KINDS[strike.kind]
            ),
        ));
    }
}

fn last_error(log: &str) -> String {
    log.lines()
        .rev()
        .find(|l| l.contains("ERROR"))
        .map(|l| format!("; last: {}", l.trim()))
        .unwrap_or_default()
}

/// Invariant 1, right after the struck run: a file that left the spool is complete on the
/// server (and, with move, sits in the done dir).
fn check_removed_only_when_complete(fx: &Fixture, v: &mut Vec<(Invariant, String)>) {
    if fx.mode == Mode::Upload {
        return;
    }
    let uploads = fx.server.uploads();
    for (name, len) in FILES {
        if fx.spool.join(name).exists() {
            continue;
        }
        let complete = uploads
            .iter()
            .any(|u| filename(u) == Some(name) && is_complete(u, len));
        if !complete {
            v.push((
                Invariant::RemovedOnlyWhenComplete,
                format!("{name} left the spool before the server held all of it"),
            ));
        }
        if fx.mode == Mode::RunMove && !fx.done.join(name).exists() {
            v.push((
                Invariant::RemovedOnlyWhenComplete,
                format!("{name} is neither in the spool nor in the done dir"),
            ));
        }
    }
}

/// Runs ferry again without the shim until the spool is done.
fn restart(fx: &Fixture, v: &mut Vec<(Invariant, String)>) {
    let mut c = fx.command();
    shim::without(&mut c);
    let ended = fx.run(c, "restart.log", RESTART_LIMIT);
    let ok = ended.status.is_some_and(|s| s.success()) && !ended.stuck;
    let finished = match fx.mode {
        Mode::Upload => ended.by_itself,
        _ => fx.drained() && !ended.by_itself,
    };
    if !ok || !finished {
        let log = fx.log("restart.log");
        v.push((
            Invariant::RestartFinishes,
            format!("restart {}{}", ended.describe(), last_error(&log)),
        ));
    }
}

fn filename(u: &UploadInfo) -> Option<&str> {
    u.metadata
        .iter()
        .find(|(k, _)| k == "filename")
        .and_then(|(_, v)| v.as_deref())
}

fn is_complete(u: &UploadInfo, len: usize) -> bool {
    !u.deleted && u.length == len as u64 && u.offset == u.length
}

/// Each file complete exactly once with its bytes; no other upload got a data byte.
fn check_server(fx: &Fixture, v: &mut Vec<(Invariant, String)>) {
    let uploads = fx.server.uploads();
    let requests = fx.server.requests();
    let data_bytes = |u: &UploadInfo| -> u64 {
        let sent: u64 = requests
            .iter()
            .filter(|r| r.method == "PATCH" && r.path == u.url_path)
            .map(|r| r.body_bytes)
            .sum();
        sent.max(u.offset)
    };
    for (i, (name, len)) in FILES.iter().enumerate() {
        let mine: Vec<&UploadInfo> = uploads
            .iter()
            .filter(|u| filename(u) == Some(name))
            .collect();
        let complete: Vec<&&UploadInfo> = mine.iter().filter(|u| is_complete(u, *len)).collect();
        // An empty file is complete at creation: a second POST for it sends no data byte.
        if complete.is_empty() || (complete.len() > 1 && *len > 0) {
            v.push((
                Invariant::UploadedExactlyOnce,
                format!(
                    "{name}: {} complete uploads (of {} created)",
                    complete.len(),
                    mine.len()
                ),
            ));
        }
        let final_id = complete.last().map(|u| u.id.clone());
        if let Some(u) = complete.last() {
            let got = fx.server.upload_bytes(&u.id);
            if got != random_bytes(*len, seed(i)) {
                v.push((
                    Invariant::SameBytes,
                    format!("{name}: upload {} differs from the file", u.id),
                ));
            }
        }
        for u in mine.iter().filter(|u| Some(&u.id) != final_id.as_ref()) {
            let n = data_bytes(u);
            if n > 0 {
                v.push((
                    Invariant::NoDataOnUnstoredUrl,
                    format!(
                        "{name}: {n} data bytes sent on upload {} besides its final upload{}",
                        u.id,
                        if is_complete(u, *len) {
                            " (both complete)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
    }
}

/// Where the files end: per mode, each in exactly one place.
fn check_places(fx: &Fixture, v: &mut Vec<(Invariant, String)>) {
    let mut problems = String::new();
    for (i, (name, len)) in FILES.iter().enumerate() {
        let in_spool = fx.spool.join(name).exists();
        match fx.mode {
            Mode::RunDelete if in_spool => {
                let _ = write!(problems, "{name} still in the spool; ");
            }
            Mode::RunMove => {
                let done = match std::fs::read(fx.done.join(name)) {
                    Err(_) => "no",
                    Ok(b) if b == random_bytes(*len, seed(i)) => "yes",
                    Ok(_) => "with other bytes",
                };
                if in_spool || done != "yes" {
                    let _ = write!(
                        problems,
                        "{name}: in the spool {in_spool}, in the done dir {done}; "
                    );
                }
            }
            Mode::Upload if !in_spool => {
                let _ = write!(problems, "{name} vanished from its directory; ");
            }
            _ => {}
        }
    }
    if fx.mode == Mode::RunMove {
        let extra: Vec<String> = entries(&fx.done)
            .into_iter()
            .filter(|n| !FILES.iter().any(|(f, _)| f == n))
            .collect();
        if !extra.is_empty() {
            let _ = write!(problems, "done dir also holds {extra:?}; ");
        }
    }
    if !problems.is_empty() {
        v.push((Invariant::FilesEndInPlace, problems));
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
