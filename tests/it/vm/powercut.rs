//! Power cuts in a booted guest: the only test of ferry's durability on a real file system.
//!
//! ferry.service runs in a Debian bookworm guest (the amd64 `.deb`, `after_upload = "delete"`,
//! 1 MiB chunks) whose disk is a raw image of its own (`cache=writeback`). The host cuts the
//! power K times (`FERRY_VM_CUTS`, default 5) by killing qemu with SIGKILL: what the guest had
//! written back survives, what was only in its page cache is lost, as on a device whose battery
//! dies; ext4 replays its journal at the next boot, where systemd starts ferry by itself. The
//! moment of each cut rotates between:
//! - mid-PATCH: a PATCH body is arriving at the server (armed 0-3 s after this boot's first
//!   PATCH, then cut at the first poll that sees one in flight);
//! - after a completion: 0-1.5 s after an upload completed on the server (ferry is deleting the
//!   file and updating its state);
//! - at start: 0-3 s after this boot's first request (ferry has just started).
//!
//! A moment that never comes is cut anyway after a bound, and the table says so. A last boot
//! then lets ferry empty the spool and powers off cleanly.
//!
//! `tests/vm/powercut.sh` runs in the guest: the first boot installs the package, writes the
//! config and the first batch of spool files (slices of a random pool the host wrote to the 9p
//! share, so the host knows every byte), syncs them, and starts ferry. Every later boot records,
//! before ferry starts (a unit ordered `Before=ferry.service`), the spool (names, sizes,
//! sha256) and whether `/var/lib/ferry` exists, and tops the spool up with a new batch when
//! fewer than 3 files are left, so that there is always something to cut.
//!
//! The host's tus server logs every upload ever created (one that ferry later terminated still
//! counts), and the host polls it every 50 ms to time the cuts and each creation. Checks:
//! - every spool file has exactly one complete upload on the server, byte-identical to it;
//! - every other upload is empty and was created less than 5 s before a cut (the POST was
//!   answered, the cut came before the URL was durable: tus 1.0 cannot avoid that); these are
//!   counted and printed. Empty means that no PATCH ever reached it, not only that the server
//!   holds 0 bytes: a PATCH cut mid-body with `Upload-Checksum` leaves nothing on the server,
//!   but it was sent on a URL that must have been durable by then;
//! - no spool file is gone at a boot unless the server held all of it at the cut before;
//! - `/var/lib/ferry` exists at every boot; the spool (and the failed directory) is empty at the
//!   end.
//!
//! It prints a table (per cut: the moment, boot to cut, files complete on the server, duplicate
//! uploads made in that boot, whether the state directory survived) and the totals before it
//! asserts, so a failing run still shows the counts. `FERRY_VM_SEED` replays a run's plan (the
//! pool, the batches, the random delays; the guest's own timing still varies).
//!
//! Run: `scripts/vm-test --filter vm::powercut [--power-cuts K]`; about 45 s per cut and 1.5
//! minutes for the last boot on 2 cores (5.5 minutes for K = 5).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::{deb_field, GUEST_SERVER};
use super::{qemu_command, start_guest, tail, wait_poweroff, BootLogs, Disk, Guest, Vm};
use crate::harness::random_bytes;
use crate::support::tus_server::{ServerConfig, TusServer, UploadInfo};

/// How often the host looks at its server.
const POLL: Duration = Duration::from_millis(50);
/// An extra upload is admitted only if it is empty and was created this long before a cut.
const ADMIT_WINDOW: Duration = Duration::from_secs(5);
/// A cut after a completion comes at most this long after it.
const AFTER_COMPLETION_MAX: Duration = Duration::from_millis(1500);
/// A cut at start comes at most this long after the boot's first request; a mid-PATCH cut is
/// armed at most this long after the boot's first PATCH.
const AFTER_START_MAX: Duration = Duration::from_secs(3);
/// The moment not come this long after the boot's first request (or after qemu started, when
/// ferry sent nothing): cut anyway.
const BOUND_AFTER_REQUEST: Duration = Duration::from_secs(60);
const BOUND_AFTER_START: Duration = Duration::from_secs(240);
/// Sizes of one batch of spool files: empty, tiny, small, under one chunk, several chunks, and
/// one big enough that a mid-PATCH cut usually finds it in flight.
const BATCH_SIZES: [usize; 7] = [
    0,
    1,
    3 * 1024 + 5,
    700_001,
    2_621_447,
    7_700_000,
    25_165_827,
];
/// The random bytes the spool files are cut from.
const POOL_BYTES: usize = 40 << 20;

/// When a cut comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    MidPatch,
    AfterCompletion,
    AtStart,
}

impl Moment {
    const ROTATION: [Moment; 3] = [Moment::MidPatch, Moment::AfterCompletion, Moment::AtStart];

    fn name(self) -> &'static str {
        match self {
            Moment::MidPatch => "mid-PATCH",
            Moment::AfterCompletion => "after completion",
            Moment::AtStart => "at start",
        }
    }
}

/// xorshift64*: the plan's randomness, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.below(max.as_millis() as u64 + 1))
    }
}

/// One spool file the guest may create (batches.txt says which bytes of the pool).
struct SpoolFile {
    batch: usize,
    size: usize,
    sha256: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The 9p share: the guest script, the package, the config, the pool and the batches.
struct Share {
    dir: PathBuf,
    files: BTreeMap<String, SpoolFile>,
}

impl Share {
    fn prepare(vm: &Vm, work: &Path, batches: usize, rng: &mut Rng) -> Share {
        let dir = work.join("share");
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/powercut.sh");
        std::fs::copy(&script, dir.join("run.sh")).unwrap();
        assert_eq!(
            deb_field(&vm.deb, "Architecture"),
            vm.arch,
            "{}: not the {} package",
            vm.deb.display(),
            vm.arch
        );
        std::fs::copy(&vm.deb, dir.join("ferry.deb")).unwrap();
        std::fs::write(dir.join("ferry.toml"), guest_config()).unwrap();
        // The last boot's budget for emptying the spool: the whole boot has vm.timeout.
        let drain = vm.timeout.as_secs().saturating_sub(45).max(60);
        std::fs::write(dir.join("drain-seconds"), format!("{drain}\n")).unwrap();
        let pool = random_bytes(POOL_BYTES, rng.next());
        let mut files = BTreeMap::new();
        let mut list = String::new();
        for batch in 0..batches {
            for (i, &size) in BATCH_SIZES.iter().enumerate() {
                let offset = rng.below((POOL_BYTES - size) as u64) as usize;
                let name = format!("b{batch:02}-{i}-{size}.bin");
                writeln!(list, "{batch} {name} {size} {offset}").unwrap();
                let sha256 = sha256_hex(&pool[offset..offset + size]);
                files.insert(
                    name,
                    SpoolFile {
                        batch,
                        size,
                        sha256,
                    },
                );
            }
        }
        std::fs::write(dir.join("pool.bin"), &pool).unwrap();
        std::fs::write(dir.join("batches.txt"), list).unwrap();
        Share { dir, files }
    }

    fn out(&self, boot: usize) -> PathBuf {
        self.dir.join(format!("out/boot-{boot}"))
    }

    /// Tells the next boot who it is (read by both of powercut.sh's modes).
    fn set_boot(&self, boot: usize, mode: &str) {
        std::fs::write(self.dir.join("boot"), format!("{boot} {mode}\n")).unwrap();
    }
}

/// The admin's /etc/ferry/ferry.toml: delete after upload, quick retries, 1 MiB chunks so that
/// a file takes several PATCHes.
fn guest_config() -> String {
    format!(
        r#"# Written by the admin (tests/it/vm/powercut.rs).
state_dir = "/var/lib/ferry"

[server]
endpoint = "http://{GUEST_SERVER}/files/"
connect_timeout = "5s"
idle_timeout = "10s"

[upload]
chunk_size = "1MiB"

[retry]
initial_delay = "200ms"
max_delay = "2s"

[spool]
dir = "/var/spool/ferry"
settle_time = "1s"
after_upload = "delete"
failed_dir = "/var/spool/ferry/failed"
"#
    )
}

/// What the host saw of its server: when each upload was first seen, in which boot, and the
/// sha256 of complete uploads (computed once: a complete upload does not change).
struct Watch {
    created: HashMap<String, (Instant, usize)>,
    complete_sha: HashMap<String, String>,
}

impl Watch {
    fn poll(&mut self, server: &TusServer, boot: usize) -> Vec<UploadInfo> {
        let now = Instant::now();
        let uploads = server.uploads();
        for u in &uploads {
            self.created.entry(u.id.clone()).or_insert((now, boot));
        }
        uploads
    }

    fn sha(&mut self, server: &TusServer, u: &UploadInfo) -> Option<String> {
        if u.deleted || u.offset != u.length {
            return None;
        }
        let sha = self.complete_sha.entry(u.id.clone()).or_insert_with(|| {
            let bytes = std::fs::read(server.upload_path(&u.id)).unwrap_or_default();
            sha256_hex(&bytes)
        });
        Some(sha.clone())
    }

    /// The spool files that have a complete, byte-identical upload on the server now.
    fn complete_files(&mut self, server: &TusServer, share: &Share) -> BTreeSet<String> {
        let uploads = server.uploads();
        let mut done = BTreeSet::new();
        for u in &uploads {
            let Some(name) = filename(u) else { continue };
            let Some(file) = share.files.get(&name) else {
                continue;
            };
            if u.length == file.size as u64 && self.sha(server, u).as_ref() == Some(&file.sha256) {
                done.insert(name);
            }
        }
        done
    }
}

fn filename(u: &UploadInfo) -> Option<String> {
    u.metadata
        .iter()
        .find(|(k, _)| k == "filename")
        .and_then(|(_, v)| v.clone())
}

/// One cut, as it happened.
struct Cut {
    boot: usize,
    moment: Moment,
    /// The moment came; `false`: cut at the bound.
    came: bool,
    started: Instant,
    at: Instant,
    first_request: Option<Duration>,
    requests: usize,
    /// Spool files with a complete, byte-identical upload on the server at the cut.
    complete: BTreeSet<String>,
}

/// Boots `boot` (qemu from `started`), waits for `moment` and kills qemu.
fn run_until_cut(
    server: &TusServer,
    watch: &mut Watch,
    share: &Share,
    mut qemu: super::Qemu,
    started: Instant,
    (boot, moment): (usize, Moment),
    rng: &mut Rng,
) -> Cut {
    let logs = BootLogs::in_dir(share.dir.parent().unwrap(), &format!("boot-{boot}"));
    let req_base = server.requests().len();
    let complete_before: BTreeSet<String> = server
        .uploads()
        .iter()
        .filter(|u| u.offset == u.length)
        .map(|u| u.id.clone())
        .collect();
    let delay = match moment {
        Moment::MidPatch | Moment::AtStart => rng.delay(AFTER_START_MAX),
        Moment::AfterCompletion => rng.delay(AFTER_COMPLETION_MAX),
    };
    let (mut first_request, mut first_patch, mut completion) = (None, None, None);
    let came = loop {
        std::thread::sleep(POLL);
        if let Some(status) = qemu.0.try_wait().unwrap() {
            panic!(
                "boot {boot}: qemu exited by itself ({status}) before the cut:\n{}\nserial console:\n{}",
                tail(&logs.stderr, 20),
                tail(&logs.serial, 40)
            );
        }
        let now = Instant::now();
        let uploads = watch.poll(server, boot);
        let requests = server.requests();
        let fresh = &requests[req_base.min(requests.len())..];
        if first_request.is_none() && !fresh.is_empty() {
            first_request = Some(now);
        }
        if first_patch.is_none() && fresh.iter().any(|r| r.method == "PATCH") {
            first_patch = Some(now);
        }
        let completed = uploads
            .iter()
            .any(|u| u.offset == u.length && !complete_before.contains(&u.id));
        if completion.is_none() && completed {
            completion = Some(now);
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| now >= t + delay);
        let hit = match moment {
            Moment::AtStart => due(first_request),
            Moment::AfterCompletion => due(completion),
            Moment::MidPatch => due(first_patch) && patch_in_flight(server, fresh),
        };
        if hit {
            break true;
        }
        let bound = first_request.map_or(started + BOUND_AFTER_START, |t| t + BOUND_AFTER_REQUEST);
        if now >= bound {
            break false;
        }
    };
    let at = Instant::now();
    drop(qemu); // SIGKILL: the power cut
                // Bytes already in the forwarder's pipe may still reach the server: let them land before
                // looking at what it holds.
    std::thread::sleep(Duration::from_millis(500));
    watch.poll(server, boot);
    let requests = server.requests().len() - req_base;
    Cut {
        boot,
        moment,
        came,
        started,
        at,
        first_request: first_request.map(|t| t - started),
        requests,
        complete: watch.complete_files(server, share),
    }
}

/// A PATCH of this boot is receiving its body: the upload's file has grown past its offset.
fn patch_in_flight(server: &TusServer, fresh: &[crate::support::tus_server::RequestLog]) -> bool {
    fresh
        .iter()
        .filter(|r| r.method == "PATCH" && r.status.is_none())
        .filter_map(|r| r.path.rsplit('/').next())
        .any(|id| {
            let held = server.upload(id).map_or(u64::MAX, |u| u.offset);
            std::fs::metadata(server.upload_path(id)).is_ok_and(|m| m.len() > held)
        })
}

fn start(vm: &Vm, share: &Share, disk: &Path, port: u16, boot: usize) -> (super::Qemu, Instant) {
    let logs = BootLogs::in_dir(share.dir.parent().unwrap(), &format!("boot-{boot}"));
    let mut cmd = qemu_command(vm, &logs, &share.dir, port, Disk::Persistent(disk));
    let started = Instant::now();
    (start_guest(&mut cmd, vm), started)
}

/// A spool listing written by powercut.sh: name -> size.
fn read_listing(path: &Path) -> Option<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (name, size) = l.split_once(' ')?;
                Some((name.to_string(), size.parse().ok()?))
            })
            .collect(),
    )
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "boots a Debian guest under qemu and cuts its power: run scripts/vm-test"]
fn power_cuts_lose_nothing_and_upload_nothing_twice() {
    let vm = Vm::from_env();
    let cuts: usize = std::env::var("FERRY_VM_CUTS").map_or(5, |k| {
        k.parse()
            .unwrap_or_else(|_| panic!("FERRY_VM_CUTS={k}: not a number of cuts"))
    });
    assert!(cuts >= 1, "FERRY_VM_CUTS must be at least 1");
    let seed = std::env::var("FERRY_VM_SEED").map_or_else(
        |_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        },
        |s| s.parse().unwrap_or_else(|_| panic!("FERRY_VM_SEED={s}")),
    );
    let mut rng = Rng(seed);
    let test_start = Instant::now();
    let server = TusServer::start(ServerConfig::default());
    server.set_public_endpoint(&format!("http://{GUEST_SERVER}/files/"));
    let port = server.addr().port();
    let work = std::env::temp_dir().join(format!("ferry-vm-powercut-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let share = Share::prepare(&vm, &work, cuts, &mut rng);
    // The guest's own disk: a sparse copy of the pristine image, written in place.
    let disk = work.join("disk.img");
    let cp = Command::new("cp")
        .arg("--sparse=always")
        .arg(&vm.image)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(cp.success(), "cp {} {}", vm.image.display(), disk.display());
    std::fs::set_permissions(&disk, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    eprintln!(
        "powercut: {cuts} cuts, seed {seed} (FERRY_VM_SEED), {} in {}",
        vm.deb.display(),
        work.display()
    );

    let mut watch = Watch {
        created: HashMap::new(),
        complete_sha: HashMap::new(),
    };
    let mut done = Vec::new();
    for boot in 0..cuts {
        share.set_boot(boot, if boot == 0 { "first" } else { "cut" });
        let moment = Moment::ROTATION[boot % Moment::ROTATION.len()];
        let (qemu, started) = start(&vm, &share, &disk, port, boot);
        let cut = run_until_cut(
            &server,
            &mut watch,
            &share,
            qemu,
            started,
            (boot, moment),
            &mut rng,
        );
        eprintln!(
            "powercut: boot {boot}: cut {} ({}) {:.1} s after qemu started; {} requests; {} files complete on the server",
            moment.name(),
            if cut.came { "came" } else { "BOUND: the moment never came" },
            (cut.at - started).as_secs_f64(),
            cut.requests,
            cut.complete.len()
        );
        if boot == 0 {
            let g = Guest::load(&share.out(0), &work);
            assert_eq!(
                g.facts.get("start_rc").map(String::as_str),
                Some("0"),
                "the first boot did not get ferry started:\n{}",
                tail(&share.out(0).join("first.log"), 30)
            );
        }
        done.push(cut);
    }

    // The last boot: ferry empties the spool, then the guest powers off.
    share.set_boot(cuts, "final");
    let (qemu, started) = start(&vm, &share, &disk, port, cuts);
    let logs = BootLogs::in_dir(&work, &format!("boot-{cuts}"));
    let last_boot = wait_poweroff(
        &vm,
        qemu,
        started,
        &logs,
        &share.out(cuts).join("journal-ferry.txt"),
        &work,
        || {
            watch.poll(&server, cuts);
        },
    );
    watch.poll(&server, cuts);
    let report = Report::build(&server, &mut watch, &share, &done, cuts);
    report.print(&done, &share, (started, last_boot), test_start.elapsed());
    assert!(
        report.violations.is_empty(),
        "{} violations of exactly-once through power cuts (seed {seed}; the guest's files are in {}):\n{}",
        report.violations.len(),
        work.display(),
        report.violations.join("\n")
    );
    if std::env::var_os("FERRY_VM_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("powercut: guest files kept in {}", work.display());
    }
}

/// What the server and the guest's records say, against the rules.
struct Report {
    violations: Vec<String>,
    /// Spool files the guest created (every batch it added).
    files: Vec<String>,
    uploads: usize,
    /// Extra uploads that are not admitted, per boot they were created in; with data.
    duplicates: BTreeMap<usize, usize>,
    duplicates_with_data: usize,
    /// Empty extra uploads created less than 5 s before a cut.
    admitted: Vec<String>,
    lost: usize,
    /// Boots at whose start /var/lib/ferry did not exist.
    state_absent: Vec<usize>,
    /// Per boot: what ferry logged besides its routine lines (created, uploaded, watching).
    notable: BTreeMap<usize, Vec<String>>,
}

impl Report {
    fn build(
        server: &TusServer,
        watch: &mut Watch,
        share: &Share,
        cuts: &[Cut],
        last: usize,
    ) -> Report {
        let mut r = Report {
            violations: Vec::new(),
            files: Vec::new(),
            uploads: 0,
            duplicates: BTreeMap::new(),
            duplicates_with_data: 0,
            admitted: Vec::new(),
            lost: 0,
            state_absent: Vec::new(),
            notable: BTreeMap::new(),
        };
        // Which files the guest created, and in which boot.
        let mut added_in = BTreeMap::new();
        for boot in 0..=last {
            for name in read_lines(&share.out(boot).join("added.txt")) {
                if share.files.contains_key(&name) {
                    added_in.insert(name, boot);
                } else {
                    r.violations
                        .push(format!("the guest added {name}, which no batch has"));
                }
            }
        }
        r.files = added_in.keys().cloned().collect();
        r.check_boots(share, cuts, &added_in, last);
        r.check_uploads(server, watch, share, cuts, &added_in);
        r
    }

    /// What each boot found before ferry started, and the end state.
    fn check_boots(
        &mut self,
        share: &Share,
        cuts: &[Cut],
        added_in: &BTreeMap<String, usize>,
        last: usize,
    ) {
        for boot in 0..=last {
            let mut notable: Vec<String> = Vec::new();
            for line in ferry_log(share, boot, last) {
                let msg = line.split_once("]: ").map_or(line.as_str(), |(_, m)| m);
                let routine = msg.contains(": created upload ")
                    || msg.contains(": uploaded, ")
                    || msg.starts_with("watching ");
                if !routine && !notable.iter().any(|n| n == msg) {
                    notable.push(msg.to_string());
                }
            }
            self.notable.insert(boot, notable);
            if boot == 0 {
                continue;
            }
            let g = Guest::load(&share.out(boot), &share.dir);
            match g.facts.get("state_dir").map(String::as_str) {
                Some("present") => {}
                Some(_) => {
                    self.state_absent.push(boot);
                    self.violations.push(format!(
                        "boot {boot}: /var/lib/ferry did not exist after the cut in boot {}",
                        boot - 1
                    ));
                }
                None => self.violations.push(format!(
                    "boot {boot}: no record before ferry started (ferry-vm-record.service)"
                )),
            }
            let Some(spool) = read_listing(&share.out(boot).join("spool.txt")) else {
                continue;
            };
            let held = &cuts[boot - 1].complete;
            for (name, &added) in added_in {
                if added >= boot {
                    continue;
                }
                match spool.get(name) {
                    None if held.contains(name) => {}
                    None => self.violations.push(format!(
                        "boot {boot}: {name} was gone from the spool, but the server did not hold \
                         all of it at the cut before"
                    )),
                    Some(&size) if size != share.files[name].size as u64 => {
                        self.violations.push(format!(
                            "boot {boot}: spool file {name} has {size} bytes, want {}",
                            share.files[name].size
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let g = Guest::load(&share.out(last), &share.dir);
        if g.facts.get("drained").map(String::as_str) != Some("yes") {
            self.violations.push(format!(
                "the last boot: the spool was not empty within drain-seconds (journal: {})",
                share.out(last).join("journal-ferry.txt").display()
            ));
        }
        match read_listing(&share.out(last).join("end-spool.txt")) {
            Some(left) if left.is_empty() => {}
            Some(left) => self.violations.push(format!(
                "the spool is not empty at the end: {:?}",
                left.keys().collect::<Vec<_>>()
            )),
            None => self
                .violations
                .push("the last boot recorded no end-spool.txt".to_string()),
        }
        if g.facts.get("end_state_dir").map(String::as_str) != Some("present") {
            self.violations
                .push("/var/lib/ferry does not exist at the end".to_string());
        }
    }

    /// Every file once on the server, byte-identical; the extras admitted or counted.
    fn check_uploads(
        &mut self,
        server: &TusServer,
        watch: &mut Watch,
        share: &Share,
        cuts: &[Cut],
        added_in: &BTreeMap<String, usize>,
    ) {
        let uploads = server.uploads();
        self.uploads = uploads.len();
        let mut by_file: BTreeMap<String, Vec<&UploadInfo>> = BTreeMap::new();
        for u in &uploads {
            match filename(u).filter(|n| added_in.contains_key(n)) {
                Some(name) => by_file.entry(name).or_default().push(u),
                None => self.violations.push(format!(
                    "upload {} is of no spool file: metadata {:?}",
                    u.id, u.raw_metadata
                )),
            }
        }
        // Empty (no PATCH ever reached it; the guest's config has no creation-with-upload, so
        // POSTs carry no data), and created (first seen) less than ADMIT_WINDOW before a cut.
        let patched: BTreeSet<String> = server
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .filter_map(|r| r.path.rsplit('/').next().map(str::to_string))
            .collect();
        let admissible: BTreeSet<String> = uploads
            .iter()
            .filter(|u| u.offset == 0 && !patched.contains(&u.id))
            .filter(|u| {
                watch.created.get(&u.id).is_some_and(|&(c, _)| {
                    cuts.iter()
                        .any(|cut| cut.at >= c && cut.at - c < ADMIT_WINDOW)
                })
            })
            .map(|u| u.id.clone())
            .collect();
        let admissible = |u: &UploadInfo| admissible.contains(&u.id);
        for name in added_in.keys() {
            let file = &share.files[name];
            let ups = by_file.remove(name).unwrap_or_default();
            let whole: Vec<&UploadInfo> = ups
                .iter()
                .copied()
                .filter(|u| {
                    u.length == file.size as u64
                        && watch.sha(server, u).as_ref() == Some(&file.sha256)
                })
                .collect();
            let kept = whole
                .iter()
                .find(|u| !admissible(u))
                .or(whole.last())
                .map(|u| u.id.clone());
            if kept.is_none() {
                self.lost += 1;
                self.violations.push(format!(
                    "{name} ({} bytes): no complete, byte-identical upload on the server ({} uploads: {})",
                    file.size,
                    ups.len(),
                    describe(&ups)
                ));
            }
            for u in ups.iter().filter(|u| Some(&u.id) != kept.as_ref()) {
                let boot = watch.created.get(&u.id).map_or(usize::MAX, |c| c.1);
                if admissible(u) {
                    self.admitted
                        .push(format!("{name} (upload {}, boot {boot})", u.id));
                    continue;
                }
                *self.duplicates.entry(boot).or_default() += 1;
                if u.offset > 0 || patched.contains(&u.id) {
                    self.duplicates_with_data += 1;
                }
                self.violations.push(format!(
                    "{name} ({} bytes): extra upload {} created in boot {boot} holds {} of {} bytes{}{}",
                    file.size,
                    u.id,
                    u.offset,
                    u.length,
                    if u.deleted { " (terminated)" } else { "" },
                    if u.offset == 0 && patched.contains(&u.id) {
                        " (data was sent on it: a PATCH reached it)"
                    } else {
                        ""
                    }
                ));
            }
        }
    }

    /// `last_started`: when the last boot's qemu started (the end of the last cut cycle).
    fn print(
        &self,
        cuts: &[Cut],
        share: &Share,
        (last_started, last_boot): (Instant, Duration),
        total: Duration,
    ) {
        let mut t = String::new();
        writeln!(
            t,
            "cut  moment            came   qemu-to-cut  request-to-cut  requests  complete  dups-made  state-dir-after  other-log-lines"
        )
        .unwrap();
        for (i, c) in cuts.iter().enumerate() {
            let next = Guest::load(&share.out(c.boot + 1), &share.dir);
            writeln!(
                t,
                "{:<4} {:<17} {:<6} {:>9.1} s  {:>14}  {:>8}  {:>3}/{:<4}  {:>9}  {:<15}  {}",
                i + 1,
                c.moment.name(),
                if c.came { "yes" } else { "BOUND" },
                (c.at - c.started).as_secs_f64(),
                c.first_request.map_or("-".into(), |d| format!(
                    "{:.1} s",
                    (c.at - c.started - d).as_secs_f64()
                )),
                c.requests,
                c.complete.len(),
                self.files_added_by(share, c.boot),
                self.duplicates.get(&c.boot).copied().unwrap_or(0),
                next.facts.get("state_dir").map_or("?", String::as_str),
                self.notable.get(&c.boot).map_or(0, Vec::len),
            )
            .unwrap();
        }
        let last = cuts.len();
        writeln!(
            t,
            "last boot: {:.1} s to power-off, {} duplicate uploads made, {} other log lines",
            last_boot.as_secs_f64(),
            self.duplicates.get(&last).copied().unwrap_or(0),
            self.notable.get(&last).map_or(0, Vec::len)
        )
        .unwrap();
        for (boot, lines) in &self.notable {
            for line in lines.iter().take(4) {
                writeln!(t, "boot {boot}: ferry logged: {line}").unwrap();
            }
            if lines.len() > 4 {
                writeln!(t, "boot {boot}: ... and {} more", lines.len() - 4).unwrap();
            }
        }
        let starts: Vec<Instant> = cuts
            .iter()
            .map(|c| c.started)
            .chain([last_started])
            .collect();
        let cycles: Vec<f64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        let mean = cycles.iter().sum::<f64>() / cycles.len().max(1) as f64;
        let dups: usize = self.duplicates.values().sum();
        writeln!(
            t,
            "totals: {} spool files, {} uploads on the server; {} duplicate uploads ({} with data); \
             {} admitted empty uploads; {} lost files; /var/lib/ferry absent at {} of {} boots {:?}",
            self.files.len(),
            self.uploads,
            dups,
            self.duplicates_with_data,
            self.admitted.len(),
            self.lost,
            self.state_absent.len(),
            last,
            self.state_absent
        )
        .unwrap();
        writeln!(
            t,
            "time: {mean:.1} s per cut cycle (qemu start to next qemu start, {} cycles), {:.1} s in all",
            cycles.len(),
            total.as_secs_f64()
        )
        .unwrap();
        for a in &self.admitted {
            writeln!(t, "admitted empty upload: {a}").unwrap();
        }
        eprintln!("powercut: summary\n{t}");
    }

    /// How many spool files existed by the end of `boot`.
    fn files_added_by(&self, share: &Share, boot: usize) -> usize {
        self.files
            .iter()
            .filter(|n| share.files.get(*n).is_some_and(|f| f.batch <= boot))
            .count()
    }
}

/// ferry's log lines in `boot`: from the serial console (journald forwards every line to it, and
/// qemu writes it to a file on the host as it comes, so it survives the cut), or, for the last
/// boot, from its journal.
fn ferry_log(share: &Share, boot: usize, last: usize) -> Vec<String> {
    let path = if boot == last {
        share.out(boot).join("journal-ferry.txt")
    } else {
        BootLogs::in_dir(share.dir.parent().unwrap(), &format!("boot-{boot}")).serial
    };
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains(" ferry["))
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect()
}

fn describe(ups: &[&UploadInfo]) -> String {
    ups.iter()
        .map(|u| {
            format!(
                "{}: {}/{} bytes{}",
                u.id,
                u.offset,
                u.length,
                if u.deleted { " terminated" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
