//! A seeded simulation of the scheduler: the real [`Schedule`] driven by a simulated server,
//! spool, link and operator, with the invariants checked after every event.
//!
//! Each seed makes a random world: files appear, vanish and come back; steps take random
//! times; the server answers 5xx and 423 to single uploads, the link drops and returns, the
//! endpoint refuses creations for a while, the operator pauses, resumes, restarts the daemon
//! (a new core, the files offered again with what the server holds) and the kernel
//! announces network changes. After a fault horizon the world turns calm, and every file
//! still in the spool must then complete within a bounded simulated time.
//!
//! `FERRY_SIM_SEEDS=N` runs N seeds (default 2000); `FERRY_SIM_SEED=S` replays one seed and
//! prints its trace. A failing seed prints its number and the last events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Action, Input, Outcome, Pacing, Schedule};
use crate::backoff::Jitter;
use crate::clock::{Clock, ManualClock};
use crate::store::FileKey;
use std::cell::RefCell;

/// Faults stop after this much simulated time; then every file must finish within `CALM`.
const FAULT_HORIZON: Duration = Duration::from_secs(1800);
const CALM: Duration = Duration::from_secs(1800);
const CHUNK: u64 = 4;

thread_local! {
    /// The last events of the running seed, printed when it fails.
    static TRACE: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct File {
    len: u64,
    mtime: SystemTime,
    in_spool: bool,
}

/// What the server holds of one file.
#[derive(Default, Clone)]
struct Upload {
    created: bool,
    offset: u64,
}

struct World {
    rng: Jitter,
    now: Instant,
    start: Instant,
    core: Schedule,
    concurrency: usize,
    files: BTreeMap<String, File>,
    server: HashMap<String, Upload>,
    /// Steps in flight: when each ends.
    in_flight: BTreeMap<(Instant, String), ()>,
    paused: bool,
    link_up: bool,
    refusing: bool,
    locked: HashSet<String>,
    done: HashSet<String>,
    trace_all: bool,
}

impl World {
    fn new(seed: u64, trace_all: bool) -> Self {
        let mut rng = Jitter::new(seed);
        let concurrency = 1 + (rng.next_unit() * 3.0) as usize;
        let now = ManualClock::new(UNIX_EPOCH).now();
        Self {
            core: Schedule::new(concurrency, 8, Pacing::default(), seed ^ 0x5eed),
            rng,
            now,
            start: now,
            concurrency,
            files: BTreeMap::new(),
            server: HashMap::new(),
            in_flight: BTreeMap::new(),
            paused: false,
            link_up: true,
            refusing: false,
            locked: HashSet::new(),
            done: HashSet::new(),
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
            if tr.len() > 40 {
                tr.remove(0);
            }
        });
    }

    fn faulty(&self) -> bool {
        self.now - self.start < FAULT_HORIZON
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

    fn offer(&mut self, name: &str) {
        let f = &self.files[name];
        if !f.in_spool || self.done.contains(name) {
            return;
        }
        let input = Input::Ready {
            key: Self::key(name),
            mtime: f.mtime,
            has_url: self.server.get(name).is_some_and(|u| u.created),
            by_scan: false,
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
                Action::Step(key) => {
                    let name = Self::name(&key);
                    assert!(!self.paused, "a step was handed out while paused");
                    assert!(
                        self.files.get(&name).is_some_and(|f| f.in_spool),
                        "{name} is stepped but not in the spool"
                    );
                    assert!(
                        !self.done.contains(&name),
                        "{name} is stepped after it ended"
                    );
                    let creates = !self.server.get(&name).is_some_and(|u| u.created);
                    if let (true, Some(hold)) = (creates, self.core.hold()) {
                        assert!(
                            self.now >= hold.until,
                            "{name} creates while creations are held"
                        );
                        let other = self
                            .in_flight
                            .keys()
                            .any(|(_, n)| !self.server.get(n).is_some_and(|u| u.created));
                        assert!(!other, "two creations probe a held endpoint at once");
                    }
                    let took = Duration::from_millis(5 + (self.rng.next_unit() * 3000.0) as u64);
                    self.in_flight.insert((self.now + took, name), ());
                    assert!(
                        self.in_flight.len() <= self.concurrency,
                        "{} steps in flight with {} workers",
                        self.in_flight.len(),
                        self.concurrency
                    );
                }
                Action::Interrupt(on) => assert_eq!(on, self.paused, "interrupt flag"),
                Action::Drop(_) => {}
            }
        }
    }

    /// What a step of `name` ends with, as the simulated server and link decide.
    fn step_outcome(&mut self, name: &str) -> (Outcome, bool) {
        let len = self.files[name].len;
        let upload = self.server.get(name).cloned().unwrap_or_default();
        if !self.files[name].in_spool {
            return (Outcome::Ended, upload.created); // the source vanished under it
        }
        if self.paused && self.chance(0.7) {
            return (Outcome::Interrupted, upload.created);
        }
        if !self.link_up {
            return (Outcome::LinkDown("refused".into()), upload.created);
        }
        if !upload.created {
            if self.refusing {
                let refused = Outcome::EndpointRefused {
                    status: 404,
                    message: "Cannot POST".into(),
                };
                return (refused, false);
            }
            self.server.insert(
                name.to_string(),
                Upload {
                    created: true,
                    offset: 0,
                },
            );
            return (Outcome::Continue, true);
        }
        if self.locked.contains(name) {
            return (Outcome::Wait(Duration::from_secs(2)), true);
        }
        if self.faulty() && self.chance(0.05) {
            return (Outcome::Wait(Duration::from_millis(500)), true);
        }
        let u = self.server.get_mut(name).expect("created");
        u.offset = (u.offset + CHUNK).min(len);
        if u.offset == len {
            (Outcome::Ended, true)
        } else {
            (Outcome::Continue, true)
        }
    }

    fn finish_step(&mut self, name: String) {
        let (outcome, has_url) = self.step_outcome(&name);
        let ended = outcome == Outcome::Ended;
        if ended && self.files[&name].in_spool {
            let u = &self.server[&name];
            assert_eq!(
                u.offset, self.files[&name].len,
                "{name} ended before the server held all of it"
            );
            self.done.insert(name.clone());
        }
        self.handle(Input::Stepped {
            key: Self::key(&name),
            outcome,
            has_url,
        });
        if ended && !self.files[&name].in_spool {
            self.offer(&name);
        }
    }

    fn random_event(&mut self, n_files: &mut usize) {
        let r = self.rng.next_unit();
        let faulty = self.faulty();
        if r < 0.25 {
            // Cameras write in bursts.
            let burst = 1 + (self.rng.next_unit() * 4.0) as usize;
            for _ in 0..burst {
                let name = format!("f{n_files:03}");
                *n_files += 1;
                let len = 1 + (self.rng.next_unit() * 40.0) as u64;
                let mtime = UNIX_EPOCH + Duration::from_secs(1_000_000 + *n_files as u64);
                self.files.insert(
                    name.clone(),
                    File {
                        len,
                        mtime,
                        in_spool: true,
                    },
                );
                self.offer(&name);
            }
        } else if r < 0.32 && faulty {
            if let Some(name) = self.pick_file() {
                if let Some(f) = self.files.get_mut(&name) {
                    f.in_spool = false;
                }
                self.server.remove(&name);
                self.handle(Input::Gone(Self::key(&name)));
            }
        } else if r < 0.42 && faulty {
            let paused = !self.paused;
            self.paused = paused;
            self.handle(Input::Pause(paused));
        } else if r < 0.52 && faulty {
            self.link_up = !self.link_up;
            self.log(format!("link up: {}", self.link_up));
            if self.link_up && self.chance(0.5) {
                self.handle(Input::NetworkChanged);
            }
        } else if r < 0.58 && faulty {
            self.refusing = !self.refusing;
            self.log(format!("refusing: {}", self.refusing));
        } else if r < 0.64 && faulty {
            if let Some(name) = self.pick_file() {
                if !self.locked.insert(name.clone()) {
                    self.locked.remove(&name);
                }
            }
        } else if r < 0.67 && faulty {
            self.restart();
        } else if r < 0.72 {
            self.scan();
        }
    }

    /// A full scan: the queue is filled again with every ready file of the spool.
    fn scan(&mut self) {
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
            .filter(|(n, f)| f.in_spool && !self.done.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return None;
        }
        let i = (self.rng.next_unit() * names.len() as f64) as usize;
        names.get(i.min(names.len() - 1)).cloned()
    }

    /// The daemon restarts: steps in flight are lost (their bytes may have reached the server),
    /// a new core gets every file still in the spool, the pause marker survives.
    fn restart(&mut self) {
        self.log("restart".into());
        self.in_flight.clear();
        let seed = (self.rng.next_unit() * 1e9) as u64;
        self.core = Schedule::new(self.concurrency, 8, Pacing::default(), seed);
        let paused = self.paused;
        if paused {
            self.handle(Input::Pause(true));
        }
        self.scan();
    }

    fn check_status(&self) {
        let listed: HashSet<FileKey> = self
            .core
            .files(self.now)
            .into_iter()
            .map(|v| v.key)
            .collect();
        for (name, _) in self.in_flight.keys().map(|(t, n)| (n, t)) {
            assert!(
                listed.contains(&Self::key(name)),
                "{name} steps but is not in the status"
            );
        }
    }
}

fn run_seed(seed: u64, trace_all: bool) -> Result<(), String> {
    TRACE.with(|t| t.borrow_mut().clear());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = World::new(seed, trace_all);
        let mut n_files = 0;
        let end = w.start + FAULT_HORIZON + CALM;
        while w.now < end {
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
                let ((_, name), ()) = w.in_flight.pop_first().expect("a step");
                w.finish_step(name);
            } else if t == random_at {
                if w.faulty() {
                    w.random_event(&mut n_files);
                } else {
                    // Calm: faults end, the link is up, nothing is refused or locked.
                    if w.paused {
                        w.paused = false;
                        w.handle(Input::Pause(false));
                    }
                    w.link_up = true;
                    w.refusing = false;
                    w.locked.clear();
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
            .filter(|(n, f)| f.in_spool && !w.done.contains(*n))
            .map(|(n, _)| n)
            .collect();
        assert!(
            left.is_empty(),
            "after {CALM:?} of calm these files never finished: {left:?}"
        );
        w
    }));
    match result {
        Ok(_) => Ok(()),
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
    let failures: Vec<String> = (1..=seeds)
        .filter_map(|s| run_seed(s, false).err())
        .take(3)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
