//! The scheduler's decisions, one finding of the daemon's past per test, on simulated time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::pacing::{HOLD_FIRST, HOLD_MAX, LINK_PROBE_FIRST, LINK_PROBE_MAX};
use super::*;
use crate::clock::Clock;

fn key(name: &str) -> FileKey {
    FileKey::from(format!("/spool/{name}").as_str())
}

fn mtime(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
}

struct Sim {
    core: Schedule,
    now: Instant,
}

impl Sim {
    fn new(concurrency: usize) -> Self {
        Self {
            core: Schedule::new(concurrency, 100, Pacing::default(), 7),
            // A fixed start; the test moves time itself.
            now: crate::clock::ManualClock::new(UNIX_EPOCH).now(),
        }
    }

    fn ready(&mut self, name: &str, age: u64, has_url: bool) {
        let input = Input::Ready {
            key: key(name),
            rank: Rank::by_age(mtime(age)),
            has_url,
            by_scan: false,
        };
        assert!(self.core.handle(input, self.now).is_empty());
    }

    fn handle(&mut self, input: Input) -> Vec<Action> {
        self.core.handle(input, self.now)
    }

    fn stepped(&mut self, name: &str, outcome: Outcome, has_url: bool) -> Vec<Action> {
        self.handle(Input::Stepped {
            key: key(name),
            outcome,
            has_url,
        })
    }

    /// The files `poll` hands out now.
    fn poll(&mut self) -> Vec<String> {
        self.core
            .poll(self.now)
            .into_iter()
            .map(|a| match a {
                Action::Step(k) => k.path().file_name().unwrap().to_string_lossy().into_owned(),
                other => panic!("poll handed out {other:?}"),
            })
            .collect()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn view(&self, name: &str) -> FileView {
        self.core
            .files(self.now, usize::MAX)
            .into_iter()
            .find(|v| v.key == key(name))
            .unwrap_or_else(|| panic!("{name} is not in the status"))
    }
}

#[test]
fn resume_continues_the_interrupted_file_first_not_a_newer_one() {
    let mut s = Sim::new(1);
    s.ready("old", 1, false);
    assert_eq!(s.poll(), ["old"]);
    s.stepped("old", Outcome::Continue, true);
    s.ready("new", 2, false);
    assert_eq!(s.poll(), ["old"], "a started file goes on before the queue");
    assert_eq!(s.handle(Input::Pause(true)), [Action::Interrupt(true)]);
    s.stepped("old", Outcome::Interrupted, true);
    assert!(s.poll().is_empty(), "nothing steps while paused");
    s.advance(Duration::from_secs(150));
    assert_eq!(s.handle(Input::Pause(false)), [Action::Interrupt(false)]);
    assert_eq!(
        s.poll(),
        ["old"],
        "the interrupted file goes on at once, without waiting for a rescan"
    );
}

#[test]
fn paused_files_stay_in_the_status_with_their_state() {
    let mut s = Sim::new(1);
    s.ready("a", 1, false);
    s.ready("b", 2, false);
    assert_eq!(s.poll(), ["a"]);
    s.handle(Input::Pause(true));
    s.stepped("a", Outcome::Interrupted, true);
    let files = s.core.files(s.now, usize::MAX);
    assert_eq!(files.len(), 2, "both files are listed: {files:?}");
    assert_eq!(s.view("a").state, FileState::Ready);
    assert_eq!(s.view("a").blocked, Some(Blocked::Paused));
    assert_eq!(s.view("b").state, FileState::Queued);
    assert_eq!(s.view("b").blocked, Some(Blocked::Paused));
}

#[test]
fn one_files_backoff_does_not_hold_up_the_spool() {
    let mut s = Sim::new(1);
    s.ready("locked", 1, true);
    s.ready("fine", 2, false);
    assert_eq!(s.poll(), ["locked"]);
    s.stepped("locked", Outcome::Wait(Duration::from_secs(120)), true);
    assert_eq!(
        s.poll(),
        ["fine"],
        "the only worker takes the next file while the first backs off"
    );
    assert_eq!(
        s.core.next_due(s.now),
        Some(s.now + Duration::from_secs(120)),
        "the backoff is a due time"
    );
    s.advance(Duration::from_secs(121));
    s.handle(Input::Pause(true));
    assert_eq!(
        s.core.next_due(s.now),
        None,
        "a due time already past is not waited for (the shell would spin)"
    );
    s.handle(Input::Pause(false));
    s.now -= Duration::from_secs(121);
    s.stepped("fine", Outcome::Ended, true);
    assert!(s.poll().is_empty(), "the backing-off file waits its time");
    s.advance(Duration::from_secs(120));
    assert_eq!(s.poll(), ["locked"]);
}

#[test]
fn an_endpoint_refusal_holds_creations_and_fails_no_file() {
    let mut s = Sim::new(2);
    s.ready("a", 1, false);
    s.ready("b", 2, false);
    s.ready("c", 3, false);
    s.ready("resumed", 4, true);
    assert_eq!(s.poll(), ["a", "b"]);
    let refused = || Outcome::EndpointRefused {
        status: 404,
        message: "Cannot POST /files/".into(),
    };
    s.stepped("a", refused(), false);
    s.stepped("b", refused(), false);
    let hold = s.core.hold().cloned().expect("creations are held");
    assert_eq!(
        (hold.status, hold.failures),
        (404, 1),
        "two refusals at once count once"
    );
    assert_eq!(
        s.poll(),
        ["resumed"],
        "an upload that has its URL goes on; no creation is tried"
    );
    assert_eq!(s.view("c").blocked, Some(Blocked::Endpoint));
    assert_eq!(
        s.view("a").state,
        FileState::Ready,
        "a refused file is not failed"
    );
    s.stepped("resumed", Outcome::Ended, true);
    s.advance(hold.until - s.now);
    assert_eq!(s.poll(), ["a"], "when the hold ends one creation probes");
    s.stepped("a", Outcome::Continue, true);
    assert!(
        s.core.hold().is_none(),
        "a creation that worked lifts the hold"
    );
    assert_eq!(s.poll(), ["a", "b"]);
}

#[test]
fn a_repeated_refusal_holds_longer_up_to_five_minutes() {
    let mut s = Sim::new(1);
    s.ready("a", 1, false);
    let mut holds = Vec::new();
    for _ in 0..6 {
        assert_eq!(s.poll(), ["a"]);
        let refused = Outcome::EndpointRefused {
            status: 401,
            message: "Unauthorized".into(),
        };
        s.stepped("a", refused, false);
        let until = s.core.hold().unwrap().until;
        holds.push((until - s.now).as_secs());
        s.advance(until - s.now);
    }
    assert_eq!(holds, [30, 60, 120, 240, 300, 300]);
}

/// A server that answers only as a setting can mend (TLS refused, a plain-HTTP port at an
/// `https://` endpoint) holds every upload, resumes too, shown as held, the hold doubling like
/// an endpoint refusal's (it was one minute, again and again without end).
#[test]
fn a_refusal_only_a_setting_mends_holds_every_upload_longer_each_time() {
    let mut s = Sim::new(1);
    s.ready("a", 1, true);
    let mut holds = Vec::new();
    for _ in 0..6 {
        assert_eq!(s.poll(), ["a"]);
        let refused = Outcome::LinkRefused("configuration error: plain HTTP".into());
        s.stepped("a", refused, true);
        s.ready("a", 1, true); // the shell offers the file again
        assert_eq!(s.view("a").blocked, Some(Blocked::Endpoint));
        assert!(s.poll().is_empty(), "held");
        let Link::Down {
            probe_at,
            refused: true,
            ..
        } = s.core.link().clone()
        else {
            panic!("{:?}", s.core.link())
        };
        holds.push((probe_at - s.now).as_secs());
        s.advance(probe_at - s.now);
    }
    assert_eq!(holds, [30, 60, 120, 240, 300, 300]);
}

#[test]
fn a_link_that_comes_back_is_used_within_seconds_after_a_long_outage() {
    let mut s = Sim::new(2);
    s.ready("a", 1, true);
    s.ready("b", 2, true);
    assert_eq!(s.poll(), ["a", "b"]);
    s.stepped("a", Outcome::LinkDown("connection refused".into()), true);
    s.stepped("b", Outcome::LinkDown("connection refused".into()), true);
    let outage_end = s.now + Duration::from_secs(600);
    let mut probes = 0;
    loop {
        let due = s.core.next_due(s.now).expect("a probe is due");
        assert!(due - s.now <= LINK_PROBE_MAX, "probes stay seconds apart");
        if due >= outage_end {
            // The link is back at `outage_end`: this probe finds it.
            let idle = due - outage_end;
            assert!(idle <= LINK_PROBE_MAX, "idle {idle:?} on a working link");
            break;
        }
        s.advance(due - s.now);
        let out = s.poll();
        assert_eq!(out.len(), 1, "one probe at a time while the link is down");
        probes += 1;
        s.stepped(&out[0], Outcome::LinkDown("timed out".into()), true);
    }
    assert!(
        (40..=600).contains(&probes),
        "{probes} probes in 10 minutes"
    );
    assert_eq!(s.view("a").blocked, Some(Blocked::Link));
}

#[test]
fn a_network_change_probes_the_link_at_once() {
    let mut s = Sim::new(1);
    s.ready("a", 1, true);
    assert_eq!(s.poll(), ["a"]);
    for _ in 0..6 {
        s.stepped("a", Outcome::LinkDown("timed out".into()), true);
        s.advance(s.core.next_due(s.now).unwrap() - s.now);
        assert_eq!(s.poll(), ["a"]);
    }
    s.stepped("a", Outcome::LinkDown("timed out".into()), true);
    assert!(s.poll().is_empty());
    s.handle(Input::NetworkChanged);
    assert_eq!(s.poll(), ["a"], "a route or address change probes now");
    s.stepped("a", Outcome::Continue, true);
    assert_eq!(*s.core.link(), Link::Up);
}

#[test]
fn a_failure_of_the_link_charges_no_file_and_keeps_its_place() {
    let mut s = Sim::new(1);
    s.ready("a", 1, true);
    s.ready("b", 2, false);
    assert_eq!(s.poll(), ["a"]);
    s.stepped("a", Outcome::LinkDown("reset".into()), true);
    s.advance(LINK_PROBE_MAX);
    assert_eq!(s.poll(), ["a"], "the file in progress is the probe");
}

#[test]
fn pacing_never_waits_longer_than_the_retry_policy_allows() {
    let p = Pacing::within(Duration::from_millis(200));
    assert_eq!(p.link_first, Duration::from_millis(200));
    assert_eq!(p.link_max, Duration::from_millis(200));
    assert_eq!(p.hold_first, Duration::from_millis(200));
    assert_eq!(p.hold_max, HOLD_MAX);
    let d = Pacing::within(Duration::from_secs(120));
    assert_eq!(
        (d.link_first, d.link_max, d.hold_first, d.hold_max),
        (LINK_PROBE_FIRST, LINK_PROBE_MAX, HOLD_FIRST, HOLD_MAX)
    );
}

#[test]
fn a_stop_waits_for_the_steps_in_flight_and_starts_none() {
    let mut s = Sim::new(2);
    s.ready("a", 1, true);
    s.ready("b", 2, true);
    s.ready("c", 3, true);
    assert_eq!(s.poll(), ["a", "b"]);
    assert_eq!(s.handle(Input::Stop), [Action::Interrupt(true)]);
    assert!(s.poll().is_empty());
    s.stepped("a", Outcome::Interrupted, true);
    assert!(!s.core.stopped(), "b still steps");
    s.stepped("b", Outcome::Continue, true);
    assert!(s.core.stopped());
    assert!(s.poll().is_empty());
}

#[test]
fn a_file_gone_mid_step_is_dropped_when_its_step_reports() {
    let mut s = Sim::new(1);
    s.ready("a", 1, true);
    assert_eq!(s.poll(), ["a"]);
    assert!(s.handle(Input::Gone(key("a"))).is_empty());
    assert_eq!(
        s.stepped("a", Outcome::Continue, true),
        [Action::Drop(key("a"))]
    );
    assert!(!s.core.is_started(&key("a")));
    s.ready("b", 2, true);
    assert_eq!(s.poll(), ["b"]);
    s.stepped("b", Outcome::Wait(Duration::from_secs(5)), true);
    assert_eq!(s.handle(Input::Gone(key("b"))), [Action::Drop(key("b"))]);
    assert!(s.core.files(s.now, usize::MAX).is_empty());
}

#[test]
fn a_reload_that_moves_the_spool_forgets_files_of_the_old_one() {
    let mut s = Sim::new(1);
    s.ready("a", 1, true);
    s.ready("b", 2, true);
    s.ready("c", 3, false);
    assert_eq!(s.poll(), ["a"]);
    s.stepped("a", Outcome::Wait(Duration::from_secs(1)), true);
    assert_eq!(s.poll(), ["b"]);
    let drops = s.core.retain(|_| false);
    assert_eq!(drops, [Action::Drop(key("a"))], "b reports first");
    assert_eq!(
        s.stepped("b", Outcome::Continue, true),
        [Action::Drop(key("b"))]
    );
    s.advance(Duration::from_secs(2));
    assert!(s.poll().is_empty(), "nothing of the old spool is stepped");
    assert!(s.core.files(s.now, usize::MAX).is_empty());
}

#[test]
fn started_uploads_waiting_between_steps_are_bounded() {
    let mut s = Sim::new(1);
    for n in 0..100 {
        s.ready(&format!("f{n:03}"), n, true);
    }
    for _ in 0..100 {
        let out = s.poll();
        if out.is_empty() {
            break;
        }
        s.stepped(&out[0], Outcome::Wait(Duration::from_secs(3600)), true);
    }
    assert_eq!(s.core.files(s.now, usize::MAX).len(), 100);
    let started = s
        .core
        .files(s.now, usize::MAX)
        .iter()
        .filter(|v| v.state != FileState::Queued)
        .count();
    assert_eq!(started, 1 + STARTED_MAX_EXTRA);
    // The status asks for the first few queued files only: every started file, then the
    // head of the queue in its order.
    let all = s.core.files(s.now, usize::MAX);
    let few = s.core.files(s.now, 3);
    assert_eq!(few.len(), started + 3);
    let keys = |v: &[FileView]| v.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&few), keys(&all[..started + 3]));
}

fn hooked() -> Sim {
    let mut s = Sim::new(1);
    s.core = Schedule::new(1, 100, Pacing::default(), 7).with_hook(true);
    s
}

#[test]
fn the_hook_runs_before_the_after_upload_action_and_a_failed_one_is_retried() {
    let mut s = hooked();
    s.ready("a", 1, false);
    assert_eq!(s.poll(), ["a"]);
    assert_eq!(
        s.stepped("a", Outcome::Done, true),
        [Action::Hook(key("a"))],
        "the hook first, not the action"
    );
    assert!(s
        .handle(Input::HookEnded {
            key: key("a"),
            ok: false
        })
        .is_empty());
    let retry = s.core.next_due(s.now).expect("a retry is due");
    assert!(retry > s.now, "the retry waits");
    assert!(matches!(
        s.view("a").state,
        FileState::Finishing {
            stage: Stage::Hook,
            retry_at: Some(_)
        }
    ));
    s.now = retry;
    assert_eq!(s.core.poll(s.now), [Action::Hook(key("a"))]);
    assert_eq!(
        s.handle(Input::HookEnded {
            key: key("a"),
            ok: true
        }),
        [Action::AfterUpload(key("a"))]
    );
    assert!(s
        .handle(Input::ActionEnded {
            key: key("a"),
            ok: true
        })
        .is_empty());
    assert!(
        s.core.files(s.now, usize::MAX).is_empty(),
        "done and forgotten"
    );
}

#[test]
fn content_rewritten_while_its_hook_ran_is_never_deleted_by_the_old_action() {
    let mut s = hooked();
    s.ready("a", 1, false);
    s.poll();
    s.stepped("a", Outcome::Done, true);
    // The camera writes the same name again while the hook of the first content runs.
    s.ready("a", 2, false);
    assert!(
        s.handle(Input::HookEnded {
            key: key("a"),
            ok: true
        })
        .is_empty(),
        "no action for the old content: the file holds new content"
    );
    assert_eq!(s.poll(), ["a"], "the new content is uploaded");
    assert_eq!(
        s.stepped("a", Outcome::Done, true),
        [Action::Hook(key("a"))]
    );
}

#[test]
fn a_failed_after_upload_action_is_tried_again_without_a_rescan() {
    let mut s = Sim::new(1);
    s.ready("a", 1, false);
    s.poll();
    assert_eq!(
        s.stepped("a", Outcome::Done, true),
        [Action::AfterUpload(key("a"))]
    );
    s.handle(Input::ActionEnded {
        key: key("a"),
        ok: false,
    });
    assert_eq!(s.core.next_due(s.now), Some(s.now + AFTER_UPLOAD_RETRY));
    s.handle(Input::Pause(true));
    s.advance(AFTER_UPLOAD_RETRY);
    assert_eq!(
        s.core.poll(s.now),
        [Action::AfterUpload(key("a"))],
        "an action sends no upload bytes: it goes on while paused"
    );
}

/// Found by the simulation: a file rewritten while its after-upload action waited to be
/// retried; the new content's upload completed, and the old action's retry then deleted the
/// new content before its hook ran.
#[test]
fn new_content_completed_while_the_old_action_waits_gets_its_own_hook_first() {
    let mut s = hooked();
    s.ready("a", 1, false);
    s.poll();
    s.stepped("a", Outcome::Done, true);
    s.handle(Input::HookEnded {
        key: key("a"),
        ok: true,
    });
    s.handle(Input::ActionEnded {
        key: key("a"),
        ok: false,
    });
    s.ready("a", 2, false);
    assert_eq!(s.poll(), ["a"]);
    assert_eq!(
        s.stepped("a", Outcome::Done, true),
        [Action::Hook(key("a"))],
        "the new content's finish starts with its hook"
    );
    s.advance(AFTER_UPLOAD_RETRY);
    assert!(
        s.core.poll(s.now).is_empty(),
        "the old action's retry is gone"
    );
}

/// Found by the simulation: new content completed while the old content's hook ran, and the
/// file was rewritten once more before that hook ended; the restarted finish forgot the last
/// rewrite and its action deleted content the server did not hold.
#[test]
fn a_third_content_written_while_the_second_waits_for_the_first_hook_is_not_deleted() {
    let mut s = hooked();
    s.ready("a", 1, false);
    s.poll();
    s.stepped("a", Outcome::Done, true); // content 1: its hook runs
    s.ready("a", 2, false); // content 2
    assert_eq!(s.poll(), ["a"]);
    assert!(s.stepped("a", Outcome::Done, true).is_empty()); // content 2 waits for the hook
    s.ready("a", 3, false); // content 3
    assert_eq!(
        s.handle(Input::HookEnded {
            key: key("a"),
            ok: true
        }),
        [Action::Hook(key("a"))],
        "content 2's hook runs"
    );
    assert!(
        s.handle(Input::HookEnded {
            key: key("a"),
            ok: true
        })
        .is_empty(),
        "but no action: the file holds content 3 now"
    );
    assert_eq!(s.poll(), ["a"], "content 3 is uploaded");
}

/// Found by the simulation: a reload moved the spool away while a file's hook ran and then
/// back; the file's action never ran, and it stayed in the spool for good.
#[test]
fn a_file_whose_spool_was_moved_away_and_back_while_its_hook_ran_is_finished() {
    let mut s = hooked();
    s.ready("a", 1, false);
    s.poll();
    s.stepped("a", Outcome::Done, true);
    assert!(s.core.retain(|_| false).is_empty(), "the hook runs on");
    // Back: the scan finds the file with its complete record.
    s.handle(Input::Complete {
        key: key("a"),
        hook_done: false,
    });
    assert_eq!(
        s.handle(Input::HookEnded {
            key: key("a"),
            ok: true
        }),
        [Action::AfterUpload(key("a"))]
    );
}

/// Found by the simulation (once its worlds had more than one worker): after a hold ended and
/// one creation went out to probe the endpoint, the next poll (another file's step ended)
/// sent a second creation before the probe had answered.
#[test]
fn one_creation_probes_after_a_hold_until_it_answers() {
    let mut s = Sim::new(3);
    s.ready("a", 1, false);
    s.ready("b", 2, false);
    s.ready("resumed", 3, true);
    assert_eq!(s.poll(), ["a", "b", "resumed"]);
    let refused = || Outcome::EndpointRefused {
        status: 404,
        message: "Cannot POST /files/".into(),
    };
    s.stepped("a", refused(), false);
    s.stepped("b", refused(), false);
    let until = s.core.hold().expect("held").until;
    s.advance(until - s.now);
    assert_eq!(s.poll(), ["a"], "one creation probes");
    s.stepped("resumed", Outcome::Continue, true);
    assert_eq!(
        s.poll(),
        ["resumed"],
        "the next poll sends no second creation while the probe is out"
    );
    s.stepped("a", Outcome::Continue, true);
    assert!(
        s.core.hold().is_none(),
        "the probe's creation lifts the hold"
    );
    assert_eq!(s.poll(), ["a", "b"], "then creations go again");
}

impl Sim {
    fn ready_ranked(&mut self, name: &str, class: u8, age: u64) {
        let input = Input::Ready {
            key: key(name),
            rank: Rank::new(class, mtime(age), false),
            has_url: false,
            by_scan: false,
        };
        assert!(self.core.handle(input, self.now).is_empty());
    }
}

#[test]
fn a_closed_gate_holds_like_a_pause_and_both_must_open() {
    let mut s = Sim::new(1);
    s.ready("a", 1, false);
    assert_eq!(s.poll(), ["a"]);
    let closed = Some("outside upload window until Mon 22:00".to_string());
    assert_eq!(
        s.handle(Input::Gate(closed.clone())),
        [Action::Interrupt(true)],
        "the step in flight is cut, as by a pause"
    );
    s.stepped("a", Outcome::Interrupted, true);
    assert!(
        s.poll().is_empty(),
        "nothing steps while the gate is closed"
    );
    assert_eq!(s.view("a").blocked, Some(Blocked::Policy));
    assert_eq!(s.core.gate(), closed.as_deref());
    assert!(
        s.handle(Input::Gate(Some("another reason".into())))
            .is_empty(),
        "a new reason for a closed gate changes no interrupt"
    );
    assert!(s.handle(Input::Pause(true)).is_empty(), "already held");
    assert!(s.handle(Input::Gate(None)).is_empty(), "still paused");
    assert!(s.poll().is_empty(), "paused: still nothing");
    assert_eq!(s.view("a").blocked, Some(Blocked::Paused));
    assert_eq!(s.handle(Input::Pause(false)), [Action::Interrupt(false)]);
    assert_eq!(s.poll(), ["a"], "the interrupted file goes on first");
}

#[test]
fn a_stop_keeps_the_interrupt_when_the_gate_opens() {
    let mut s = Sim::new(1);
    s.handle(Input::Gate(Some("condition says wait".into())));
    assert_eq!(s.handle(Input::Stop), [Action::Interrupt(true)]);
    assert!(
        s.handle(Input::Gate(None)).is_empty(),
        "stopping: the interrupt stays set"
    );
}

#[test]
fn an_alarm_goes_before_a_started_video_at_its_next_step() {
    let mut s = Sim::new(1);
    s.ready_ranked("video.mp4", 2, 1);
    assert_eq!(s.poll(), ["video.mp4"]);
    s.stepped("video.mp4", Outcome::Continue, true);
    assert_eq!(s.poll(), ["video.mp4"], "no other file: the video goes on");
    s.ready_ranked("still.jpg", 1, 5);
    s.ready_ranked("alarm.jpg", 0, 9);
    s.stepped("video.mp4", Outcome::Continue, true);
    assert_eq!(
        s.poll(),
        ["alarm.jpg"],
        "the newest file, but of the highest class: it preempts the video at its step's end"
    );
    s.stepped("alarm.jpg", Outcome::Done, true);
    assert_eq!(s.poll(), ["still.jpg"], "then the next class");
    s.stepped("still.jpg", Outcome::Done, true);
    assert_eq!(s.poll(), ["video.mp4"], "the video resumes last");
    assert_eq!(s.view("video.mp4").state, FileState::Stepping);
}

#[test]
fn within_a_class_a_started_file_goes_on_before_the_queue() {
    let mut s = Sim::new(1);
    s.ready_ranked("b.jpg", 1, 9);
    assert_eq!(s.poll(), ["b.jpg"]);
    s.stepped("b.jpg", Outcome::Continue, true);
    s.ready_ranked("a.jpg", 1, 1);
    assert_eq!(
        s.poll(),
        ["b.jpg"],
        "same class: the started file finishes first, older queued files wait"
    );
}

#[test]
fn newest_first_ranks_the_newest_file_first_in_its_class() {
    let (old, new) = (mtime(1), mtime(2));
    assert!(Rank::new(0, new, true) < Rank::new(0, old, true));
    assert!(Rank::new(0, old, false) < Rank::new(0, new, false));
    assert!(
        Rank::new(0, old, true) < Rank::new(1, new, true),
        "the class decides first"
    );
    let before_epoch = UNIX_EPOCH - Duration::from_secs(5);
    assert!(Rank::new(0, before_epoch, false) < Rank::new(0, UNIX_EPOCH, false));
}

/// The spool limits may evict a queued file or one backing off after its own failure (its
/// upload is terminated), but never one whose upload is in flight (stepping, waiting for a
/// worker or for the link) or whose hook or action is left.
#[test]
fn busy_means_in_flight_or_finishing() {
    let mut s = Sim::new(1);
    s.ready("a", 1, false);
    s.ready("b", 2, false);
    assert!(!s.core.busy(&key("a")), "queued");
    assert_eq!(s.poll(), ["a"]);
    assert!(s.core.busy(&key("a")), "stepping");
    assert!(!s.core.busy(&key("b")), "queued behind it");
    s.stepped("a", Outcome::Continue, true);
    assert!(
        s.core.busy(&key("a")),
        "between steps, waiting for the worker"
    );
    assert_eq!(s.poll(), ["a"]);
    s.stepped("a", Outcome::LinkDown("no answer".into()), true);
    assert!(
        s.core.busy(&key("a")),
        "waiting for the link: still in flight"
    );
    s.advance(Duration::from_secs(60));
    assert_eq!(s.poll(), ["a"]);
    s.stepped("a", Outcome::Wait(Duration::from_secs(5)), true);
    assert!(
        !s.core.busy(&key("a")),
        "backing off after its own failure: evictable"
    );
    s.advance(Duration::from_secs(5));
    assert_eq!(s.poll(), ["a"]);
    assert_eq!(
        s.stepped("a", Outcome::Done, true),
        [Action::AfterUpload(key("a"))]
    );
    assert!(s.core.busy(&key("a")), "its after-upload action runs");
    s.handle(Input::ActionEnded {
        key: key("a"),
        ok: true,
    });
    assert!(!s.core.busy(&key("a")), "forgotten");
}
