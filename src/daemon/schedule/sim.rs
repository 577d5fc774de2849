//! A seeded simulation of the scheduler: the real [`Schedule`] driven by a simulated server,
//! spool, link and operator, with the invariants checked after every event.
//!
//! Each seed makes a random world: files appear, vanish and come back; steps take random
//! times; the server answers 5xx and 423 to single uploads, the link drops and returns, the
//! endpoint refuses creations for a while, the server loses uploads, files are rewritten,
//! hooks and after-upload actions fail, the operator pauses, resumes, reloads with the spool
//! moved away and back, restarts the daemon (a new core, the files offered again with what
//! the store and the server hold) and the kernel announces network changes. After a fault horizon the world turns calm, and every file
//! still in the spool must then complete within a bounded simulated time.
//!
//! `FERRY_SIM_SEEDS=N` runs N seeds (default 2000); `FERRY_SIM_SEED=S` replays one seed and
//! prints its trace. A failing seed prints its number and the last events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Action, Input, Outcome, Pacing, Rank, Schedule};
use crate::backoff::Jitter;
use crate::clock::{Clock, ManualClock};
use crate::store::FileKey;
use std::cell::RefCell;

/// Faults stop after this much simulated time; then every file must finish within `CALM`.
const FAULT_HORIZON: Duration = Duration::from_secs(1800);
const CALM: Duration = Duration::from_secs(1800);
/// The most a file's upload and finish take once faults stop (a dozen steps of at most 3 s).
const PER_FILE: Duration = Duration::from_secs(40);
const CHUNK: u64 = 4;

thread_local! {
    /// The last events of the running seed, printed when it fails.
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct File {
    len: u64,
    mtime: SystemTime,
    /// Bumped each time the file is rewritten.
    version: u32,
    in_spool: bool,
}

/// What the state store holds for a file (the real daemon's sled record).
#[derive(Clone, Debug)]
struct Record {
    /// The content it describes.
    version: u32,
    /// Its upload on the server, once created.
    upload: Option<usize>,
    complete: bool,
    hook_done: bool,
}

/// One upload on the server.
struct ServerUpload {
    name: String,
    version: u32,
    offset: u64,
    /// The server lost it (expired, or a 404/410 after a redeploy).
    lost: bool,
    /// Terminated by ferry because its source changed.
    terminated: bool,
}

/// Work in flight in the shell: a worker's step, or the hook thread's run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Work {
    Step(String),
    /// The hook of a file, for the completed upload its record named when the run began.
    Hook(String, Option<usize>),
}

/// Kinds of fault; each world has a random subset of them (so that rarer combinations, such
/// as many files waiting on a refusing endpoint with a steady link, are not drowned out).
const VANISH: u32 = 0;
const REWRITE: u32 = 1;
const LOSS: u32 = 2;
const PAUSE: u32 = 3;
const LINK: u32 = 4;
const REFUSAL: u32 = 5;
const LOCK: u32 = 6;
const RESTART: u32 = 7;
const RELOAD: u32 = 8;
const ACTION_FAILS: u32 = 9;
const HOOK_FAILS: u32 = 10;
const SERVER_ERRORS: u32 = 11;
const KINDS: u32 = 12;

/// What the worlds of a run exercised: a simulation whose worlds all look alike (as once, when
/// every world had one worker) proves little, so the run checks that it covered each case.
#[derive(Default, Debug, Clone)]
struct Coverage {
    worlds: u64,
    /// Worlds by worker count (index = workers).
    workers: [u64; 5],
    hook: u64,
    large_window: u64,
    /// Creations handed out after a hold ended while two or more workers were free.
    held_probes_with_free_workers: u64,
    /// After-upload actions run.
    actions: u64,
    /// Files rewritten while their upload ran or their finish was left.
    rewrites: u64,
    restarts: u64,
    reloads: u64,
}

impl Coverage {
    fn add(&mut self, o: &Coverage) {
        self.worlds += o.worlds;
        for (a, b) in self.workers.iter_mut().zip(o.workers) {
            *a += b;
        }
        self.hook += o.hook;
        self.large_window += o.large_window;
        self.held_probes_with_free_workers += o.held_probes_with_free_workers;
        self.actions += o.actions;
        self.rewrites += o.rewrites;
        self.restarts += o.restarts;
        self.reloads += o.reloads;
    }
}

struct World {
    rng: Jitter,
    now: Instant,
    start: Instant,
    core: Schedule,
    concurrency: usize,
    window: usize,
    /// The kinds of fault this world has (bit per kind).
    faults: u32,
    cover: Coverage,
    hook: bool,
    files: BTreeMap<String, File>,
    records: HashMap<String, Record>,
    uploads: Vec<ServerUpload>,
    /// Work in flight: when each ends (a sequence number keeps equal instants apart).
    in_flight: BTreeMap<(Instant, u64), Work>,
    seq: u64,
    paused: bool,
    /// A field policy holds uploads (the gate is closed).
    gated: bool,
    /// Files are ranked by priority class (from their names) and, in some worlds, newest first.
    ranked: Option<bool>,
    link_up: bool,
    refusing: bool,
    locked: HashSet<String>,
    /// Files the after-upload action deleted.
    deleted: HashSet<String>,
    /// The spool changed since the last scan.
    spool_changed: bool,
    /// A reload moved `spool.dir` away: the files are outside the daemon's spool.
    moved: bool,
    trace_all: bool,
}

impl World {
    fn new(seed: u64, trace_all: bool) -> Self {
        // Mixed first: xorshift's first outputs from small seeds are all near zero, which once
        // gave every world one worker, a hook and a small window.
        let mut rng = Jitter::new(splitmix64(seed));
        let concurrency = 1 + (rng.next_unit() * 4.0) as usize;
        let hook = rng.next_unit() < 0.5;
        // A small queue window makes refill scans frequent, a large one (the daemon's) rare:
        // a file the core lost track of must not hide behind the scans.
        let window = if rng.next_unit() < 0.5 { 8 } else { 1024 };
        // A quarter of the worlds have every kind of fault, the others a random half of them.
        let faults = if rng.next_unit() < 0.25 {
            (1 << KINDS) - 1
        } else {
            (0..KINDS)
                .filter(|_| rng.next_unit() < 0.5)
                .fold(0, |m, k| m | (1 << k))
        };
        // Half the worlds rank files by priority class (oldest or newest first).
        let ranked = (rng.next_unit() < 0.5).then(|| rng.next_unit() < 0.5);
        let now = ManualClock::new(UNIX_EPOCH).now();
        Self {
            core: Schedule::new(concurrency, window, Pacing::default(), seed ^ 0x5eed)
                .with_hook(hook),
            window,
            faults,
            cover: Coverage {
                worlds: 1,
                hook: u64::from(hook),
                large_window: u64::from(window > 8),
                ..Coverage::default()
            },
            rng,
            now,
            start: now,
            concurrency,
            hook,
            files: BTreeMap::new(),
            records: HashMap::new(),
            uploads: Vec::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            paused: false,
            gated: false,
            ranked,
            link_up: true,
            refusing: false,
            locked: HashSet::new(),
            deleted: HashSet::new(),
            spool_changed: false,
            moved: false,
            trace_all,
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.next_unit() < p
    }

    fn log(&mut self, line: String) {
        let t = (self.now - self.start).as_secs_f64();
        let line = format!("{t:9.3} {line}");
        if self.trace_all {
            eprintln!("{line}");
        }
        TRACE.with(|tr| {
            let mut tr = tr.borrow_mut();
            tr.push(line);
            if tr.len() > 60 {
                tr.remove(0);
            }
        });
    }

    fn faulty(&self) -> bool {
        self.now - self.start < FAULT_HORIZON
    }

    /// Whether this world has faults of `kind` now (before the fault horizon).
    fn fault(&self, kind: u32) -> bool {
        self.faulty() && self.faults & (1 << kind) != 0
    }

    fn key(name: &str) -> FileKey {
        FileKey::from(format!("/spool/{name}").as_str())
    }

    fn name(key: &FileKey) -> String {
        key.path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn busy(&self, work: &Work) -> bool {
        self.in_flight.values().any(|w| w == work)
    }

    fn schedule(&mut self, took: Duration, work: Work) {
        self.seq += 1;
        self.in_flight.insert((self.now + took, self.seq), work);
    }

    /// What the shell's scan tells the core about one spool file (as `scan::ready` does).
    fn offer(&mut self, name: &str) {
        let f = &self.files[name];
        if !f.in_spool || self.moved || self.core.is_started(&Self::key(name)) {
            return;
        }
        let (version, mtime) = (f.version, f.mtime);
        let rec = self.records.get(name).filter(|r| r.version == version);
        let input = match rec {
            Some(r) if r.complete => Input::Complete {
                key: Self::key(name),
                hook_done: r.hook_done,
            },
            _ => Input::Ready {
                key: Self::key(name),
                rank: match self.ranked {
                    // Three classes by name, so that files of every class meet.
                    Some(newest_first) => {
                        let class = name.bytes().fold(0u8, u8::wrapping_add) % 3;
                        Rank::new(class, mtime, newest_first)
                    }
                    None => Rank::by_age(mtime),
                },
                has_url: rec.is_some_and(|r| r.upload.is_some()),
                by_scan: false,
            },
        };
        self.handle(input);
    }

    fn handle(&mut self, input: Input) {
        let text = format!("{input:?}");
        let actions = self.core.handle(input, self.now);
        self.log(format!("in  {text} -> {actions:?}"));
        self.run(actions);
    }

    fn run(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Step(key) => self.start_step(Self::name(&key)),
                Action::Interrupt(on) => {
                    assert_eq!(on, self.paused || self.gated, "interrupt flag");
                }
                // The shell looks at the file again: it may be back, or new.
                Action::Drop(key) => self.offer(&Self::name(&key)),
                Action::Hook(key) => {
                    let name = Self::name(&key);
                    assert!(self.hook, "a hook run without a hook configured");
                    let running = self
                        .in_flight
                        .values()
                        .any(|w| matches!(w, Work::Hook(n, _) if *n == name));
                    assert!(!running, "two runs of {name}'s hook at once");
                    // As hook::run_recorded: the run is for the record's completed upload as
                    // it is when the run begins (none: "not complete").
                    let upload = self
                        .records
                        .get(&name)
                        .filter(|r| r.complete)
                        .and_then(|r| r.upload);
                    // Most hooks are quick; some (a thumbnail upload) take long enough for a
                    // rewritten file's new content to be uploaded meanwhile.
                    let longest = if self.chance(0.3) { 20_000.0 } else { 2000.0 };
                    let took = Duration::from_millis(5 + (self.rng.next_unit() * longest) as u64);
                    self.schedule(took, Work::Hook(name, upload));
                }
                Action::AfterUpload(key) => self.after_upload(Self::name(&key)),
            }
        }
    }

    fn start_step(&mut self, name: String) {
        assert!(!self.paused, "a step was handed out while paused");
        assert!(
            !self.gated,
            "a step was handed out while a policy held uploads"
        );
        assert!(
            !self.moved,
            "{name} is stepped after a reload moved the spool away from it"
        );
        assert!(
            self.files.get(&name).is_some_and(|f| f.in_spool),
            "{name} is stepped but not in the spool"
        );
        assert!(
            !self.deleted.contains(&name),
            "{name} is stepped after its action deleted it"
        );
        assert!(
            !self.busy(&Work::Step(name.clone())),
            "two steps of {name} at once"
        );
        let creates = self.step_creates(&name);
        if let (true, Some(hold)) = (creates, self.core.hold()) {
            let free = self.concurrency
                - self
                    .in_flight
                    .values()
                    .filter(|w| matches!(w, Work::Step(_)))
                    .count();
            if free >= 2 {
                self.cover.held_probes_with_free_workers += 1;
            }
            assert!(
                self.now >= hold.until,
                "{name} creates while creations are held"
            );
            let other = self.in_flight.values().any(|w| match w {
                Work::Step(n) => self.step_creates(n),
                Work::Hook(..) => false,
            });
            assert!(!other, "two creations probe a held endpoint at once");
        }
        if matches!(self.core.link(), super::Link::Down { .. }) {
            let others = self
                .in_flight
                .values()
                .filter(|w| matches!(w, Work::Step(_)))
                .count();
            assert_eq!(
                others, 0,
                "{name} probes a dead link beside {others} other steps"
            );
        }
        let took = Duration::from_millis(5 + (self.rng.next_unit() * 3000.0) as u64);
        self.schedule(took, Work::Step(name));
        let steps = self
            .in_flight
            .values()
            .filter(|w| matches!(w, Work::Step(_)))
            .count();
        assert!(
            steps <= self.concurrency,
            "{steps} steps in flight with {} workers",
            self.concurrency
        );
    }

    /// Whether a step of `name` would send a creation (POST) now, as `step_outcome` decides.
    fn step_creates(&self, name: &str) -> bool {
        let version = self.files[name].version;
        match self.records.get(name) {
            Some(r) if r.version == version => r.upload.is_none() && !r.complete,
            // New content: an unfinished old upload is terminated first (a step of its own).
            Some(r) if !r.complete && r.upload.is_some() => false,
            _ => true,
        }
    }

    /// The shell's after-upload action (delete), with the one promise that matters most
    /// checked first: the core never asks to delete a file whose current content the server
    /// does not hold completely, nor before its hook succeeded. (The real shell checks the
    /// file's identity again before it deletes; this one does not, so that the core's
    /// decisions are what is tested.)
    fn after_upload(&mut self, name: String) {
        let key = Self::key(&name);
        assert!(
            !self.moved,
            "the action would touch {name} after a reload moved the spool away from it"
        );
        let f = &self.files[&name];
        if f.in_spool {
            let rec = self.records.get(&name).cloned();
            let held = rec.as_ref().and_then(|r| {
                let u = &self.uploads[r.upload?];
                (r.complete
                    && r.version == f.version
                    && u.version == f.version
                    && u.offset == f.len
                    && !u.lost)
                    .then_some(r)
            });
            let Some(rec) = held else {
                panic!("the action would delete {name} (version {}), which the server does not hold completely: record {rec:?}", f.version);
            };
            assert!(
                !self.hook || rec.hook_done,
                "the action would delete {name} before its hook succeeded"
            );
        }
        let ok = !(self.fault(ACTION_FAILS) && self.chance(0.15));
        self.cover.actions += 1;
        if ok && self.files[&name].in_spool {
            if let Some(f) = self.files.get_mut(&name) {
                f.in_spool = false;
            }
            self.deleted.insert(name.clone());
            self.spool_changed = true;
        }
        self.log(format!("action on {name}: ok {ok}"));
        self.handle(Input::ActionEnded { key, ok });
    }

    /// What a step of `name` ends with, as the uploader, the simulated server and the link
    /// decide it.
    fn step_outcome(&mut self, name: &str) -> (Outcome, bool) {
        let f = &self.files[name];
        let (len, version, in_spool) = (f.len, f.version, f.in_spool);
        let rec = self.records.get(name).cloned();
        let has_url = rec
            .as_ref()
            .is_some_and(|r| r.version == version && r.upload.is_some());
        if !in_spool {
            return (Outcome::Ended, has_url); // the source vanished under it
        }
        if (self.paused || self.gated) && self.chance(0.7) {
            return (Outcome::Interrupted, has_url);
        }
        if !self.link_up {
            return (Outcome::LinkDown("refused".into()), has_url);
        }
        let rec = match rec {
            // Completed before (its answer was lost): the uploader says so again.
            Some(r) if r.version == version && r.complete => return (Outcome::Done, true),
            Some(r) if r.version == version => r,
            old => {
                // New content (or none yet): an unfinished old upload is terminated, a new
                // record starts.
                let old_url = old.filter(|r| !r.complete).and_then(|r| r.upload);
                if let Some(u) = old_url {
                    self.uploads[u].terminated = true;
                }
                let fresh = Record {
                    version,
                    upload: None,
                    complete: false,
                    hook_done: false,
                };
                let step_spent = old_url.is_some();
                self.records.insert(name.to_string(), fresh.clone());
                if step_spent {
                    // This step went on the DELETE of the old upload; the next one creates.
                    return (Outcome::Continue, false);
                }
                fresh
            }
        };
        let Some(id) = rec.upload else {
            if self.refusing {
                let refused = Outcome::EndpointRefused {
                    status: 404,
                    message: "Cannot POST".into(),
                };
                return (refused, false);
            }
            self.uploads.push(ServerUpload {
                name: name.to_string(),
                version,
                offset: 0,
                lost: false,
                terminated: false,
            });
            let id = self.uploads.len() - 1;
            if let Some(r) = self.records.get_mut(name) {
                r.upload = Some(id);
            }
            return (Outcome::Continue, true);
        };
        if self.uploads[id].lost {
            // 404 on HEAD: the server lost it; the record drops the URL, the next step creates.
            if let Some(r) = self.records.get_mut(name) {
                r.upload = None;
            }
            return (Outcome::Continue, false);
        }
        if self.locked.contains(name) {
            return (Outcome::Wait(Duration::from_secs(2)), true);
        }
        if self.fault(SERVER_ERRORS) && self.chance(0.05) {
            return (Outcome::Wait(Duration::from_millis(500)), true);
        }
        self.send_chunk(id, len);
        if self.uploads[id].offset == len {
            if let Some(r) = self.records.get_mut(name) {
                r.complete = true;
            }
            (Outcome::Done, true)
        } else {
            (Outcome::Continue, true)
        }
    }

    /// The server takes one chunk of upload `id`; no second upload of the same content may
    /// hold data beside it (unless the server lost that one, or ferry terminated it).
    fn send_chunk(&mut self, id: usize, len: u64) {
        let (name, version) = (self.uploads[id].name.clone(), self.uploads[id].version);
        let twin = self.uploads.iter().enumerate().any(|(i, u)| {
            i != id && u.name == name && u.version == version && u.offset > 0 && !u.lost
        });
        assert!(!twin, "{name} version {version} is uploaded twice");
        let u = &mut self.uploads[id];
        u.offset = (u.offset + CHUNK).min(len);
    }

    fn finish_work(&mut self, work: Work) {
        match work {
            Work::Step(name) => {
                let (outcome, has_url) = self.step_outcome(&name);
                self.handle(Input::Stepped {
                    key: Self::key(&name),
                    outcome,
                    has_url,
                });
            }
            Work::Hook(name, upload) => {
                // A run with no completed upload to run for ends as "not complete", which the
                // shell takes as done (the new content's hook runs after its own upload).
                let ok = upload.is_none() || !(self.fault(HOOK_FAILS) && self.chance(0.2));
                // As hook::run_recorded: success is recorded only if the record still names
                // the upload the run was for.
                if let Some(r) = self.records.get_mut(&name) {
                    if ok && upload.is_some() && r.upload == upload && r.complete {
                        r.hook_done = true;
                    }
                }
                self.log(format!("hook of {name}: ok {ok}"));
                self.handle(Input::HookEnded {
                    key: Self::key(&name),
                    ok,
                });
            }
        }
    }

    fn random_event(&mut self, n_files: &mut usize) {
        let r = self.rng.next_unit();
        if r < 0.25 {
            let burst = 1 + (self.rng.next_unit() * 4.0) as usize;
            self.burst(burst, n_files);
        } else if r < 0.30 && self.fault(VANISH) {
            if let Some(name) = self.pick_file() {
                self.log(format!("{name} vanishes"));
                self.spool_changed = true;
                if let Some(f) = self.files.get_mut(&name) {
                    f.in_spool = false;
                }
                self.handle(Input::Gone(Self::key(&name)));
            }
        } else if r < 0.36 && self.fault(REWRITE) {
            // Rewritten in place (a writer that ignores the rename rule).
            if let Some(name) = self.pick_file() {
                let len = 1 + (self.rng.next_unit() * 40.0) as u64;
                if let Some(f) = self.files.get_mut(&name) {
                    f.version += 1;
                    f.len = len;
                    f.mtime += Duration::from_secs(1);
                }
                self.log(format!("{name} rewritten"));
                self.cover.rewrites += 1;
                self.spool_changed = true;
                // A started upload finds out at its next step; otherwise the scan offers it.
                self.offer(&name);
            }
        } else if r < 0.39 && self.fault(LOSS) {
            // The server loses one upload (expiry, a redeploy that lost its store).
            let live: Vec<usize> = (0..self.uploads.len())
                .filter(|i| !self.uploads[*i].lost && !self.uploads[*i].terminated)
                .collect();
            if !live.is_empty() {
                let i =
                    live[((self.rng.next_unit() * live.len() as f64) as usize).min(live.len() - 1)];
                self.log(format!(
                    "server loses upload {i} of {}",
                    self.uploads[i].name
                ));
                self.uploads[i].lost = true;
                if let Some(r) = self.records.values_mut().find(|r| r.upload == Some(i)) {
                    if r.complete {
                        // Lost after completion: the record still says complete, and the
                        // file's action may go on (the server held all of it once).
                        self.uploads[i].lost = false;
                    }
                }
            }
        } else if r < 0.47 && self.fault(PAUSE) {
            if self.chance(0.5) {
                let paused = !self.paused;
                self.paused = paused;
                self.handle(Input::Pause(paused));
            } else {
                // A field policy (an upload window, the route's interface) holds or frees.
                self.gated = !self.gated;
                let why = self.gated.then(|| "outside upload window".to_string());
                self.handle(Input::Gate(why));
            }
        } else if r < 0.55 && self.fault(LINK) {
            self.link_up = !self.link_up;
            self.log(format!("link up: {}", self.link_up));
            if self.link_up && self.chance(0.5) {
                self.handle(Input::NetworkChanged);
            }
        } else if r < 0.61 && self.fault(REFUSAL) {
            self.refusing = !self.refusing;
            self.log(format!("refusing: {}", self.refusing));
            if self.refusing {
                // A deploy while the cameras go on writing: several files wait to be created.
                let burst = 2 + (self.rng.next_unit() * 5.0) as usize;
                self.burst(burst, n_files);
            }
        } else if r < 0.66 && self.fault(LOCK) {
            if let Some(name) = self.pick_file() {
                if !self.locked.insert(name.clone()) {
                    self.locked.remove(&name);
                }
            }
        } else if r < 0.69 && self.fault(RESTART) {
            self.restart();
        } else if r < 0.77 && self.fault(RELOAD) {
            self.reload();
        } else if r < 0.80 && self.spool_changed {
            // A scan of an unchanged spool is skipped (as the real shell does while inotify
            // works): a file the core lost track of would stay stranded.
            self.scan();
        }
    }

    /// SIGHUP with `spool.dir` changed: away from the files (the new spool is empty), or
    /// back to them.
    fn reload(&mut self) {
        self.moved = !self.moved;
        self.cover.reloads += 1;
        self.log(format!("reload: spool moved away {}", self.moved));
        if self.moved {
            let actions = self.core.retain(|_| false);
            self.run(actions);
        } else {
            self.scan();
        }
    }

    /// Cameras write in bursts.
    fn burst(&mut self, n: usize, n_files: &mut usize) {
        for _ in 0..n {
            let name = format!("f{n_files:03}");
            *n_files += 1;
            let len = 1 + (self.rng.next_unit() * 40.0) as u64;
            let mtime = UNIX_EPOCH + Duration::from_secs(1_000_000 + *n_files as u64);
            self.files.insert(
                name.clone(),
                File {
                    len,
                    mtime,
                    version: 0,
                    in_spool: true,
                },
            );
            self.spool_changed = true;
            self.offer(&name);
        }
    }

    /// A full scan: the queue is filled again with every ready file of the spool.
    fn scan(&mut self) {
        self.spool_changed = false;
        self.handle(Input::BeginScan);
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            self.offer(&name);
        }
    }

    fn pick_file(&mut self) -> Option<String> {
        let names: Vec<String> = self
            .files
            .iter()
            .filter(|(_, f)| f.in_spool)
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return None;
        }
        let i = (self.rng.next_unit() * names.len() as f64) as usize;
        names.get(i.min(names.len() - 1)).cloned()
    }

    /// The daemon restarts (a crash, a power cut): work in flight is lost, though a step's
    /// request may have reached the server and a hook may have run; a new core gets every
    /// file still in the spool; the pause marker survives.
    fn restart(&mut self) {
        self.log("restart".into());
        self.cover.restarts += 1;
        let lost: Vec<Work> = std::mem::take(&mut self.in_flight).into_values().collect();
        for work in lost {
            match work {
                Work::Step(name) => {
                    let version = self.files[&name].version;
                    let rec = self.records.get(&name).cloned();
                    match rec.filter(|r| r.version == version) {
                        // A creation's POST may have reached the server: an upload with no
                        // data whose URL no record holds (admitted: no byte of it is sent).
                        None | Some(Record { upload: None, .. }) => {
                            if self.chance(0.5) {
                                self.uploads.push(ServerUpload {
                                    name: name.clone(),
                                    version,
                                    offset: 0,
                                    lost: false,
                                    terminated: false,
                                });
                            }
                        }
                        // A PATCH may have reached the server.
                        Some(Record {
                            upload: Some(id),
                            complete: false,
                            ..
                        }) if !self.uploads[id].lost && self.chance(0.5) => {
                            let len = self.files[&name].len;
                            self.send_chunk(id, len);
                        }
                        Some(_) => {}
                    }
                }
                Work::Hook(name, upload) => {
                    if self.chance(0.5) && upload.is_some() {
                        if let Some(r) = self
                            .records
                            .get_mut(&name)
                            .filter(|r| r.complete && r.upload == upload)
                        {
                            r.hook_done = true;
                        }
                    }
                }
            }
        }
        let seed = (self.rng.next_unit() * 1e9) as u64;
        self.core = Schedule::new(self.concurrency, self.window, Pacing::default(), seed)
            .with_hook(self.hook);
        let paused = self.paused;
        if paused {
            self.handle(Input::Pause(true));
        }
        if self.gated {
            self.handle(Input::Gate(Some("outside upload window".into())));
        }
        self.scan();
    }

    fn check_status(&self) {
        let listed: HashSet<FileKey> = self
            .core
            .files(self.now, usize::MAX)
            .into_iter()
            .map(|v| v.key)
            .collect();
        for work in self.in_flight.values() {
            let (Work::Step(name) | Work::Hook(name, _)) = work;
            assert!(
                listed.contains(&Self::key(name)),
                "{work:?} runs but {name} is not in the status"
            );
        }
    }
}

/// SplitMix64's finaliser: spreads nearby seeds over the whole range.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn run_seed(seed: u64, trace_all: bool) -> Result<Coverage, String> {
    TRACE.with(|t| t.borrow_mut().clear());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = World::new(seed, trace_all);
        let mut n_files = 0;
        let mut end = w.start + FAULT_HORIZON + CALM;
        let mut calm = None;
        while w.now < end {
            if calm.is_none() && !w.faulty() {
                // What the spool holds when the faults stop must fit in the calm time: each
                // file needs at most a dozen steps of at most 3 s each, on `concurrency` workers.
                let pending = w.files.values().filter(|f| f.in_spool).count() as u32;
                let work = PER_FILE * pending / w.concurrency as u32;
                calm = Some(CALM.max(work));
                end = w.now + CALM.max(work);
            }
            // The next thing to happen: a step ending, the core's due time, or a random event.
            let next_step = w.in_flight.keys().next().map(|(t, _)| *t);
            let next_due = w.core.next_due(w.now);
            let random_at = w.now + Duration::from_millis((w.rng.next_unit() * 20_000.0) as u64);
            let t = [next_step, next_due, Some(random_at)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(random_at)
                .max(w.now);
            w.now = t;
            if next_step == Some(t) {
                let (_, work) = w.in_flight.pop_first().expect("work in flight");
                w.finish_work(work);
            } else if t == random_at {
                if w.faulty() {
                    w.random_event(&mut n_files);
                } else {
                    // Calm: faults end, the link is up, nothing is refused or locked.
                    if w.paused {
                        w.paused = false;
                        w.handle(Input::Pause(false));
                    }
                    if w.gated {
                        w.gated = false;
                        w.handle(Input::Gate(None));
                    }
                    w.link_up = true;
                    w.refusing = false;
                    w.locked.clear();
                    if w.moved {
                        w.reload();
                    }
                }
            }
            let actions = w.core.poll(w.now);
            if !actions.is_empty() {
                w.log(format!("poll -> {actions:?}"));
            }
            w.run(actions);
            if w.core.needs_refill() {
                // The queue's window ran dry while the spool holds more: the shell scans.
                w.scan();
                let actions = w.core.poll(w.now);
                w.run(actions);
            }
            w.check_status();
        }
        let left: Vec<&String> = w
            .files
            .iter()
            .filter(|(_, f)| f.in_spool)
            .map(|(n, _)| n)
            .collect();
        assert!(
            left.is_empty(),
            "after {calm:?} of calm these files are still in the spool: {left:?}"
        );
        let known = w.core.files(w.now, usize::MAX);
        assert!(
            known.is_empty(),
            "after {calm:?} of calm the core still knows {known:?}"
        );
        w
    }));
    match result {
        Ok(mut w) => {
            w.cover.workers[w.concurrency.min(4)] += 1;
            Ok(w.cover)
        }
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let trace = TRACE.with(|t| t.borrow().join("\n"));
            Err(format!("seed {seed} failed: {why}\nlast events:\n{trace}\nreplay: FERRY_SIM_SEED={seed} cargo test --lib daemon::schedule::sim -- --nocapture"))
        }
    }
}

#[test]
fn thousands_of_random_worlds_keep_the_schedulers_promises() {
    #[allow(clippy::disallowed_methods, reason = "a test knob, read here only")]
    let one = std::env::var("FERRY_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    #[allow(clippy::disallowed_methods, reason = "a test knob, read here only")]
    let seeds = std::env::var("FERRY_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(2000);
    if let Some(seed) = one {
        if let Err(e) = run_seed(seed, true) {
            panic!("{e}");
        }
        return;
    }
    // Seeds are independent: spread them over the cores (each thread keeps its own trace).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let (mut failures, cover) = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut cover = Coverage::default();
                    let mut failures = Vec::new();
                    for s in (1..=seeds).filter(|s| s % threads == t) {
                        match run_seed(s, false) {
                            Ok(c) => cover.add(&c),
                            Err(e) if failures.len() < 3 => failures.push(e),
                            Err(_) => {}
                        }
                    }
                    (failures, cover)
                })
            })
            .collect();
        let mut all = (Vec::new(), Coverage::default());
        for r in runs {
            let (f, c) = r.join().unwrap_or_default();
            all.0.extend(f);
            all.1.add(&c);
        }
        all
    });
    failures.truncate(3);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!("simulation coverage: {cover:?}");
    // Each case in a fair share of the worlds (the shares expected are 20-50 %).
    let share = |n: u64| n * 10 >= cover.worlds;
    for (workers, n) in cover.workers.iter().enumerate().skip(1) {
        assert!(
            share(*n),
            "{n} of {} worlds had {workers} workers: {cover:?}",
            cover.worlds
        );
    }
    assert!(
        share(cover.hook) && share(cover.worlds - cover.hook),
        "{cover:?}"
    );
    assert!(
        share(cover.large_window) && share(cover.worlds - cover.large_window),
        "{cover:?}"
    );
    for (what, n) in [
        (
            "held creations with free workers",
            cover.held_probes_with_free_workers,
        ),
        ("after-upload actions", cover.actions),
        ("rewrites", cover.rewrites),
        ("restarts", cover.restarts),
        ("reloads", cover.reloads),
    ] {
        assert!(
            n >= cover.worlds / 20,
            "only {n} {what} in {} worlds: {cover:?}",
            cover.worlds
        );
    }
}
