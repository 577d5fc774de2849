//! The upload threads: each takes one step of one file from the job channel, runs it, and
//! sends the file back.
//!
//! Key idea: a worker runs exactly one [`Uploader::step`] (one HTTP exchange) per job and
//! never waits out a backoff: the file and what its step ended with go back to the main
//! thread ([`Event::Stepped`]), whose scheduler decides what comes next. Pause and shutdown
//! reach a running step through the uploader's interrupt flag.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::progress::Progress;
use crate::store::FileKey;
use crate::upload::{FileUpload, Step, Uploader};

use super::Event;

/// One step to run.
pub(super) struct Job {
    pub(super) key: FileKey,
    /// The started upload; `None` starts it (opens the file, reads its record).
    pub(super) upload: Option<FileUpload>,
    pub(super) progress: Arc<Progress>,
}

/// A step that ran.
pub(crate) struct Stepped {
    pub(super) key: FileKey,
    /// The upload, to step again; `None` when it could not start.
    pub(super) upload: Option<FileUpload>,
    pub(super) step: Step,
}

impl std::fmt::Debug for Stepped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stepped({}, {:?})", self.key, self.step)
    }
}

pub(super) fn worker(uploader: &Uploader, jobs: &Mutex<Receiver<Job>>, tx: &Sender<Event>) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let key = job.key.clone();
        let (upload, step) = run(uploader, job);
        if tx
            .send(Event::Stepped(Box::new(Stepped { key, upload, step })))
            .is_err()
        {
            return;
        }
    }
}

fn run(uploader: &Uploader, job: Job) -> (Option<FileUpload>, Step) {
    let mut file = match job.upload {
        Some(f) => f,
        None => match uploader.start(job.key.path(), job.progress) {
            Ok(f) => f,
            Err(e) => return (None, Step::Failed(e)),
        },
    };
    if uploader.interrupt_flag().load(Ordering::Relaxed) {
        return (Some(file), Step::Interrupted);
    }
    let step = uploader.step(&mut file);
    (Some(file), step)
}
