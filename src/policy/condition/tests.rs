//! The condition policy: its texts, and real small commands run by its thread.

use super::*;
use crate::clock::SystemClock;

const PROGRAM: &str = "/usr/local/bin/may-upload";

fn exit(code: i32) -> Outcome {
    Outcome::Exited(ExitStatus::from_raw(code << 8))
}

#[test]
fn texts_say_what_the_command_said() {
    assert_eq!(
        answer(PROGRAM, exit(0), "unmetered"),
        Answer {
            closed: None,
            note: Some("unmetered".into())
        }
    );
    assert_eq!(answer(PROGRAM, exit(0), "").note, None);
    assert_eq!(
        answer(PROGRAM, exit(1), &first_line(b"  metered \nsecond line\n")).closed,
        Some("condition /usr/local/bin/may-upload says wait (exit 1): metered".into())
    );
    assert_eq!(
        answer(PROGRAM, exit(3), "").closed,
        Some("condition /usr/local/bin/may-upload says wait (exit 3)".into())
    );
    assert_eq!(
        answer(PROGRAM, Outcome::Exited(ExitStatus::from_raw(9)), "").closed,
        Some("condition /usr/local/bin/may-upload says wait (it was ended by signal 9)".into())
    );
    assert_eq!(
        answer(PROGRAM, Outcome::TimedOut(Duration::from_secs(10)), "x").closed,
        Some("condition /usr/local/bin/may-upload gave no answer within 10 s and was killed (network.condition_timeout)".into())
    );
    let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
    let text = answer(PROGRAM, Outcome::NoStart(missing), "")
        .closed
        .unwrap();
    assert!(
        text.starts_with("condition /usr/local/bin/may-upload cannot start: "),
        "{text}"
    );
}

#[test]
fn the_first_line_is_cleaned_and_bounded() {
    assert_eq!(first_line(b""), "");
    assert_eq!(first_line(b"\nsecond"), "");
    assert_eq!(first_line(b"a\tb\x1b[31mc\r\n"), "a b [31mc");
    assert_eq!(first_line(&[0xff, b'o', b'k']), "\u{fffd}ok");
    let long = "é".repeat(300);
    let cut = first_line(long.as_bytes());
    assert_eq!(cut.chars().count(), MAX_LINE + 1);
    assert!(cut.ends_with('…'));
}

fn settings(argv: &[&str], interval_ms: u64, timeout_ms: u64) -> ConditionSettings {
    ConditionSettings {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn sh(script: &str, interval_ms: u64, timeout_ms: u64) -> ConditionSettings {
    settings(&["/bin/sh", "-c", script], interval_ms, timeout_ms)
}

/// The verdict once the first answer is in (at most 5 s).
fn first_answer(p: &mut ConditionPolicy) -> Verdict {
    let clock = SystemClock;
    for _ in 0..500 {
        let v = p.check(clock.now(), clock.wall());
        if !v
            .closed
            .as_deref()
            .is_some_and(|c| c.starts_with("waiting for the first answer"))
        {
            return v;
        }
        clock.sleep(Duration::from_millis(10), &AtomicBool::new(false));
    }
    panic!("no answer within 5 s");
}

fn start(s: ConditionSettings) -> ConditionPolicy {
    ConditionPolicy::start(s, Arc::new(SystemClock))
}

#[test]
fn real_commands_say_go_wait_or_nothing() {
    let mut go = start(sh("echo unmetered; echo more; exit 0", 60_000, 5_000));
    let v = first_answer(&mut go);
    assert_eq!((v.closed, v.note.as_deref()), (None, Some("unmetered")));
    let mut wait = start(sh("echo metered; exit 1", 60_000, 5_000));
    assert_eq!(
        first_answer(&mut wait).closed.as_deref(),
        Some("condition /bin/sh says wait (exit 1): metered")
    );
    let mut slow = start(sh("sleep 5", 60_000, 300));
    let v = first_answer(&mut slow);
    assert_eq!(
        v.closed.as_deref(),
        Some("condition /bin/sh gave no answer within 0.3 s and was killed (network.condition_timeout)")
    );
    let mut missing = start(settings(&["/nonexistent/may-upload"], 60_000, 5_000));
    let text = first_answer(&mut missing).closed.unwrap();
    // Under qemu-user a failed exec shows as exit 127 (see hook.rs's test).
    let emulated = !cfg!(target_arch = "x86_64") && text.contains("(exit 127)");
    assert!(
        text.starts_with("condition /nonexistent/may-upload cannot start: ") || emulated,
        "{text}"
    );
}

#[test]
fn a_chatty_command_is_read_to_its_end_and_not_killed_by_a_closed_pipe() {
    // 1 MiB of output, then exit 0: a closed pipe would end it by SIGPIPE ("wait").
    let mut p = start(sh(
        "echo first; head -c 1048576 /dev/zero; exit 0",
        60_000,
        5_000,
    ));
    let v = first_answer(&mut p);
    assert_eq!((v.closed, v.note.as_deref()), (None, Some("first")));
}

#[test]
fn until_the_first_answer_it_is_closed_and_answers_follow_the_command() {
    let dir = std::env::temp_dir().join(format!("ferry-condition-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flag = dir.join("answer");
    std::fs::write(&flag, "1").unwrap();
    let script = format!(
        "sleep 0.3; echo \"said $(cat {0})\"; exit \"$(cat {0})\"",
        flag.display()
    );
    let mut p = start(sh(&script, 200, 5_000));
    let clock = SystemClock;
    let v = p.check(clock.now(), clock.wall());
    assert_eq!(
        v.closed.as_deref(),
        Some("waiting for the first answer of condition /bin/sh")
    );
    assert!(v.recheck_at.is_some(), "asked again soon");
    let v = first_answer(&mut p);
    assert_eq!(
        v.closed.as_deref(),
        Some("condition /bin/sh says wait (exit 1): said 1")
    );
    let due = v.recheck_at.unwrap();
    assert!(due > clock.now(), "the next answer is due later");
    std::fs::write(&flag, "0").unwrap();
    let mut opened = false;
    for _ in 0..300 {
        let v = p.check(clock.now(), clock.wall());
        if v.closed.is_none() {
            assert_eq!(v.note.as_deref(), Some("said 0"));
            opened = true;
            break;
        }
        clock.sleep(Duration::from_millis(10), &AtomicBool::new(false));
    }
    assert!(opened, "the answer followed the flipped file within 3 s");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dropping_the_policy_kills_a_run_in_progress_at_once() {
    let dir = std::env::temp_dir().join(format!("ferry-condition-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("pid");
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let p = start(sh(&script, 60_000, 60_000));
    let clock = SystemClock;
    let mut pid = String::new();
    for _ in 0..500 {
        pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if pid.ends_with('\n') {
            break;
        }
        clock.sleep(Duration::from_millis(10), &AtomicBool::new(false));
    }
    let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(proc.exists(), "the command runs ({pid:?})");
    let before = clock.now();
    drop(p);
    let took = clock.now() - before;
    assert!(took < Duration::from_secs(1), "drop took {took:?}");
    assert!(!proc.exists(), "the run was killed and reaped");
    let _ = std::fs::remove_dir_all(&dir);
}
