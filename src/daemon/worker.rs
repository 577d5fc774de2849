//! The upload threads: each takes a file from the job channel and drives it to an end.
//!
//! Key idea: a worker only steps its [`Uploader`] and publishes what the status shows
//! ([`JobInfo`]); every decision about the file is the main thread's, on the
//! [`Event::Finished`] the worker sends back. Pause and shutdown reach it through the
//! uploader's interrupt flag, which also cuts its retry sleeps short.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::clock::Clock;
use crate::progress::Progress;
use crate::store::FileKey;
use crate::upload::{Step, Uploader};

use super::{Event, JobResult};

/// What a worker publishes about its file for the status.
#[derive(Debug, Default, Clone)]
pub(super) struct JobInfo {
    pub(super) attempts: u32,
    pub(super) next_retry: Option<SystemTime>,
    pub(super) last_error: Option<String>,
}

pub(super) struct Job {
    pub(super) key: FileKey,
    pub(super) progress: Arc<Progress>,
    pub(super) info: Arc<Mutex<JobInfo>>,
}

pub(super) fn worker(
    uploader: &Uploader,
    clock: &dyn Clock,
    jobs: &Mutex<Receiver<Job>>,
    tx: &Sender<Event>,
    retries: &AtomicU64,
) {
    loop {
        let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(j) => j,
            Err(_) => return,
        };
        let result = upload_one(uploader, clock, &job, retries);
        if tx.send(Event::Finished(job.key, result)).is_err() {
            return;
        }
    }
}

fn upload_one(uploader: &Uploader, clock: &dyn Clock, job: &Job, retries: &AtomicU64) -> JobResult {
    let interrupt = uploader.interrupt_flag();
    let mut file = match uploader.start(job.key.path(), job.progress.clone()) {
        Ok(f) => f,
        Err(e) => return JobResult::Failed(e),
    };
    loop {
        if interrupt.load(Ordering::Relaxed) {
            return JobResult::Interrupted;
        }
        let step = uploader.step(&mut file);
        {
            let mut info = job.info.lock().unwrap_or_else(|e| e.into_inner());
            info.attempts = file.attempts();
            info.last_error = file.last_error().map(str::to_string);
            info.next_retry = match &step {
                Step::Wait(d) => Some(clock.wall() + *d),
                _ => None,
            };
        }
        match step {
            Step::Continue => {}
            Step::Wait(d) => {
                retries.fetch_add(1, Ordering::Relaxed);
                clock.sleep(d, interrupt);
            }
            Step::Done(c) => return JobResult::Done(c),
            Step::Failed(e) => return JobResult::Failed(e),
            Step::Interrupted => return JobResult::Interrupted,
        }
    }
}
