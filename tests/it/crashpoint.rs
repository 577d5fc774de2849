//! Crash points without a VM: `ferry` killed (SIGKILL), or its disk failing (EIO, ENOSPC), at
//! the Nth call of each durability-relevant system call, then restarted cleanly; every case
//! must end with each spool file on the server exactly once, nothing sent on an upload URL that
//! was not stored, no file removed early, and no panic or abort.
//!
//! Key idea: an `LD_PRELOAD` shim (tests/support/crashpoint.c, see `shim`) counts fsync,
//! fdatasync, sync_file_range, rename, unlink and pwrite over the whole process (sled writes
//! from a pool of threads, so per-thread counts, as strace's `inject=...:when=N` keeps, would
//! miss calls). A counting run of each sweep learns the totals per kind; the sweep then strikes
//! every call up to `FULL_SWEEP` of each kind and, past that, about `STRIDED` more spread
//! evenly up to the last one (always included), so the plan is deterministic given the totals.
//!
//! Sweeps, each a test: kill with `ferry run` deleting, kill with `ferry run` moving to a done
//! dir, kill with `ferry upload`; EIO and ENOSPC with `ferry run` deleting and with `ferry
//! upload` (one call fails; sled's store stays failed after that, as a real disk would).
//! A failed case does not stop its sweep: each prints a summary (cases, cases reached, failures
//! per invariant with an example) and fails if any case broke an invariant. After a failed
//! write the struck run is watched for `case::FAILED_DISK_WATCH` (36 s) unless ferry exits or
//! finishes first: a ferry that stays up without progress costs that time, and is a failure.
//! A clean restart recovers records that reached the page cache even when their sync failed, so
//! the struck run's uploads are also checked against the time of the failure (see
//! `Invariant::NoDataAfterFailedWrite`).
//!
//! To replay cases: `FERRY_CRASHPOINT_ONLY=pwrite#3,sync_file_range#5 cargo test --test it
//! crashpoint_eio_run -- --nocapture` (each case then prints ferry's logs too);
//! `FERRY_CRASHPOINT_TRACE=<file>` makes the counting run append, per call, its kind, index
//! and thread.
//!
//! Works only natively with a glibc `ferry` (see `shim`): `scripts/arm-test --suite` skips
//! these tests by name.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

mod case;
mod shim;

use case::{Invariant, Mode, Outcome};
use shim::{Action, Strike, KINDS};

/// Every call up to this index is struck.
const FULL_SWEEP: u64 = 40;
/// Past `FULL_SWEEP`, about this many more calls per kind, evenly spread, the last included.
const STRIDED: u64 = 10;
/// Cases run at once in a kill sweep (each case is a ferry, a server and a restart: CPU-bound).
const KILL_JOBS: usize = 3;
/// Cases run at once in a failed-disk sweep: a case may wait out today's 30 s store pause
/// (idle), so more of them overlap.
const FAILED_DISK_JOBS: usize = 12;

/// The call indices to strike for a kind that was called `total` times.
fn plan_indices(total: u64) -> Vec<u64> {
    let mut at: Vec<u64> = (1..=total.min(FULL_SWEEP)).collect();
    if total > FULL_SWEEP {
        let rest = total - FULL_SWEEP;
        let stride = rest.div_ceil(STRIDED).max(1);
        let mut n = FULL_SWEEP + stride;
        while n < total {
            at.push(n);
            n += stride;
        }
        at.push(total);
    }
    at
}

/// One counting run (no strike): the totals per kind. It must itself pass every check.
fn count(mode: Mode) -> [u64; 6] {
    let out = case::run(mode, None);
    assert!(
        out.violations.is_empty(),
        "{}: the counting run (no strike) already fails: {:#?}",
        mode.name(),
        out.violations
    );
    assert!(
        out.counts.calls[KINDS.iter().position(|k| *k == "pwrite").unwrap()] > 0,
        "{}: the shim counted no pwrite: is it loaded? {:?}",
        mode.name(),
        out.counts
    );
    out.counts.calls
}

/// Runs `cases` on `jobs` threads; results in plan order.
fn run_all(mode: Mode, cases: Vec<Strike>, jobs: usize) -> Vec<(Strike, Outcome)> {
    let queue = Mutex::new(cases.into_iter().enumerate().collect::<VecDeque<_>>());
    let done = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let Some((i, strike)) = queue.lock().unwrap().pop_front() else {
                    return;
                };
                let out = case::run(mode, Some(strike));
                done.lock().unwrap().push((i, strike, out));
            });
        }
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _, _)| *i);
    done.into_iter().map(|(_, s, o)| (s, o)).collect()
}

/// Counts, plans, runs and judges one sweep; panics with the summary if any case failed.
fn sweep(mode: Mode, action: Action, jobs: usize) {
    let start = Instant::now();
    let totals = count(mode);
    let mut cases = Vec::new();
    let only = std::env::var("FERRY_CRASHPOINT_ONLY").unwrap_or_default();
    for (kind, total) in totals.iter().enumerate() {
        for at in plan_indices(*total) {
            let strike = Strike { kind, at, action };
            let name = format!("{}#{at}", KINDS[kind]);
            if only.is_empty() || only.split(',').any(|o| o.trim() == name) {
                cases.push(strike);
            }
        }
    }
    let results = run_all(mode, cases, jobs);
    // Every failed case, one line each; a replay (FERRY_CRASHPOINT_ONLY) shows every case with
    // ferry's logs.
    for (strike, out) in &results {
        if out.violations.is_empty() && only.is_empty() {
            continue;
        }
        let what: Vec<String> = out
            .violations
            .iter()
            .map(|(inv, what)| format!("[{}] {what}", inv.label()))
            .collect();
        println!("{strike}: ferry {}; {}", out.first_run, what.join("; "));
        if !only.is_empty() {
            println!("{}", out.logs);
        }
    }
    let summary = summarize(mode, action, &totals, &results, start);
    println!("{summary}");
    assert!(
        results.iter().all(|(_, o)| o.violations.is_empty()),
        "{summary}"
    );
}

fn summarize(
    mode: Mode,
    action: Action,
    totals: &[u64; 6],
    results: &[(Strike, Outcome)],
    start: Instant,
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let failed = results
        .iter()
        .filter(|(_, o)| !o.violations.is_empty())
        .count();
    let reached = results.iter().filter(|(_, o)| o.reached()).count();
    let _ = writeln!(
        s,
        "crash points: {} with {}: {} cases ({reached} reached), {failed} failed, {:.0} s",
        action.name(),
        mode.name(),
        results.len(),
        start.elapsed().as_secs_f64()
    );
    let _ = write!(s, "  calls in the counting run:");
    for (k, t) in KINDS.iter().zip(totals) {
        let _ = write!(s, " {k} {t}");
    }
    let _ = writeln!(
        s,
        " (struck: every call up to {FULL_SWEEP}, then about {STRIDED} more per kind)"
    );
    for (k, kind) in KINDS.iter().enumerate() {
        let mine: Vec<&(Strike, Outcome)> = results.iter().filter(|(st, _)| st.kind == k).collect();
        if mine.is_empty() {
            continue;
        }
        let bad: Vec<u64> = mine
            .iter()
            .filter(|(_, o)| !o.violations.is_empty())
            .map(|(st, _)| st.at)
            .collect();
        let _ = writeln!(
            s,
            "  {kind}: {} cases, {} failed{}",
            mine.len(),
            bad.len(),
            if bad.is_empty() {
                String::new()
            } else {
                format!(" (at {bad:?})")
            }
        );
    }
    let mut endings: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, out) in results {
        *endings.entry(out.first_run.as_str()).or_default() += 1;
    }
    let endings: Vec<String> = endings.iter().map(|(e, n)| format!("{n} {e}")).collect();
    let _ = writeln!(s, "  struck runs: {}", endings.join(", "));
    let mut by_invariant: BTreeMap<Invariant, (usize, String)> = BTreeMap::new();
    for (strike, out) in results {
        let mut seen = Vec::new();
        for (inv, what) in &out.violations {
            if seen.contains(inv) {
                continue;
            }
            seen.push(*inv);
            let e = by_invariant
                .entry(*inv)
                .or_insert_with(|| (0, format!("{strike}: ferry {}; {what}", out.first_run)));
            e.0 += 1;
        }
    }
    for (inv, (n, example)) in by_invariant {
        let _ = writeln!(s, "  FAILED {}: {n} cases, e.g. {example}", inv.label());
    }
    s
}

#[test]
fn crashpoint_kill_run_delete() {
    sweep(Mode::RunDelete, Action::Kill, KILL_JOBS);
}

#[test]
fn crashpoint_kill_run_move() {
    sweep(Mode::RunMove, Action::Kill, KILL_JOBS);
}

#[test]
fn crashpoint_kill_upload() {
    sweep(Mode::Upload, Action::Kill, KILL_JOBS);
}

#[test]
fn crashpoint_eio_run() {
    sweep(Mode::RunDelete, Action::Eio, FAILED_DISK_JOBS);
}

#[test]
fn crashpoint_enospc_run() {
    sweep(Mode::RunDelete, Action::Enospc, FAILED_DISK_JOBS);
}

#[test]
fn crashpoint_eio_upload() {
    sweep(Mode::Upload, Action::Eio, FAILED_DISK_JOBS);
}

#[test]
fn crashpoint_enospc_upload() {
    sweep(Mode::Upload, Action::Enospc, FAILED_DISK_JOBS);
}
