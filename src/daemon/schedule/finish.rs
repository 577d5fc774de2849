//! What is left of a file the server holds completely: its hook, then its after-upload action.
//!
//! Key idea: each stage runs in the shell and reports back; a failed run is retried at a due
//! time (the hook doubling from 5 s to 10 minutes, the action every 10 s). The action (delete
//! or move) runs only for the content whose upload reported done, after its hook succeeded:
//! a file rewritten meanwhile (`superseded`) or whose new content completed while an old
//! stage ran (`again`) starts its finish afresh, never with the old content's action.

use std::time::{Duration, Instant};

use crate::store::FileKey;

use super::{Action, Link, Schedule, Stage};

/// How soon a failed after-upload action (delete, move) is tried again.
pub(crate) const AFTER_UPLOAD_RETRY: Duration = Duration::from_secs(10);

/// A file the server holds completely, on its way out.
#[derive(Debug, Clone)]
pub(super) struct Finish {
    pub(super) stage: Stage,
    /// `None` while the shell runs the stage; else when to run it again.
    pub(super) retry_at: Option<Instant>,
    /// Failed runs of the stage so far.
    pub(super) failures: u32,
    /// A newer content of the file completed meanwhile: run the whole finish again for it.
    pub(super) again: bool,
    /// A newer content of the file is to be uploaded: this one's action must not run (it
    /// would delete or move the new content).
    pub(super) superseded: bool,
}

impl Schedule {
    /// The upload of `key` completed: its hook (if any), then its action.
    pub(super) fn done(&mut self, key: FileKey) -> Vec<Action> {
        if self.started.remove(&key).is_none() {
            return Vec::new();
        }
        // A completed answer came back: the link works, and the endpoint takes uploads.
        self.link = Link::Up;
        match self.finishing.get_mut(&key) {
            // The finish of an older content runs now: the new one's follows when it ends.
            Some(f) if f.retry_at.is_none() => {
                f.again = true;
                f.superseded = false;
                Vec::new()
            }
            // None, or one waiting to be retried: what is left to do is the new content's
            // whole finish.
            _ => {
                self.finishing.remove(&key);
                self.finish(key, self.first_stage(false))
            }
        }
    }

    /// Where the finish of a completed file starts: its hook, unless there is none or it
    /// already succeeded.
    pub(super) fn first_stage(&self, hook_done: bool) -> Stage {
        if self.hook && !hook_done {
            Stage::Hook
        } else {
            Stage::Action
        }
    }

    /// Starts `stage` of a completed file now (or, while stopping, leaves it for the next start).
    pub(super) fn finish(&mut self, key: FileKey, stage: Stage) -> Vec<Action> {
        let run = !self.stopping;
        let f = self.finishing.entry(key.clone()).or_insert(Finish {
            stage,
            retry_at: None,
            failures: 0,
            again: false,
            superseded: false,
        });
        f.stage = stage;
        if stage == Stage::Action && f.superseded {
            // The file holds new content now: this action would delete or move that. The
            // new content finishes on its own after its upload.
            self.finishing.remove(&key);
            return Vec::new();
        }
        if !run {
            // The record says Complete: the next start finishes it.
            self.finishing.remove(&key);
            return Vec::new();
        }
        f.retry_at = None;
        vec![stage_action(stage, key)]
    }

    /// A run of `stage` of `key` ended.
    pub(super) fn stage_ended(
        &mut self,
        key: FileKey,
        stage: Stage,
        ok: bool,
        now: Instant,
    ) -> Vec<Action> {
        let Some(f) = self.finishing.get_mut(&key) else {
            return Vec::new();
        };
        if f.stage != stage || f.retry_at.is_some() {
            return Vec::new();
        }
        if f.again {
            // Newer content completed while this ran: whatever this run did for the old
            // content, the new one's finish starts from the top (still superseded if the
            // file was rewritten once more since).
            f.again = false;
            f.failures = 0;
            return self.finish(key, self.first_stage(false));
        }
        if !ok {
            f.failures += 1;
            let delay = match stage {
                Stage::Hook => crate::hook::retry_delay(f.failures),
                Stage::Action => AFTER_UPLOAD_RETRY,
            };
            f.retry_at = Some(now + delay);
            return Vec::new();
        }
        f.failures = 0;
        match stage {
            Stage::Hook => self.finish(key, Stage::Action),
            Stage::Action => {
                self.finishing.remove(&key);
                Vec::new()
            }
        }
    }

    /// True while the file's hook or after-upload action is left to do.
    pub(crate) fn is_finishing(&self, key: &FileKey) -> bool {
        self.finishing.contains_key(key)
    }

    /// Failed runs of the file's hook or action so far.
    pub(crate) fn finish_failures(&self, key: &FileKey) -> u32 {
        self.finishing.get(key).map_or(0, |f| f.failures)
    }
}

pub(super) fn stage_action(stage: Stage, key: FileKey) -> Action {
    match stage {
        Stage::Hook => Action::Hook(key),
        Stage::Action => Action::AfterUpload(key),
    }
}
