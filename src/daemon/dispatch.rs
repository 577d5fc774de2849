//! Running what the scheduler decides, and feeding it what each step ended with.
//!
//! Key idea: the scheduler ([`Schedule`](super::schedule::Schedule)) decides which file steps
//! next; this file carries its actions out (a job for a worker, the interrupt flag, dropping
//! a started upload) and turns each step's [`Step`] into a scheduling
//! [`Outcome`]. An upload that ends goes on by its cause: done (the core asks for the hook
//! and the after-upload action), the source's fault, the state store's (the daemon ends), or a
//! permanent failure of this file.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::progress::{Progress, Rate};
use crate::spool;
use crate::store::FileKey;
use crate::tus::url;
use crate::upload::{Completed, Step};

use super::schedule::{Action, Input, Link, Outcome};
use super::{unix, Job, JobInfo, Main, Stepped, Upload};

impl<'p, 'a> Main<'p, 'a> {
    /// Hands the steps the scheduler decides on to the workers.
    pub(super) fn dispatch(&mut self) -> Result<()> {
        let now = self.parts.clock.now();
        for action in self.core.poll(now) {
            self.act(action)?;
        }
        if self.core.needs_refill() && self.next_rescan > now && self.stopping.is_none() {
            self.next_rescan = now;
            self.force_scan = true;
        }
        Ok(())
    }

    /// Feeds `input` to the scheduler and carries out what it says at once.
    pub(super) fn tell(&mut self, input: Input) -> Result<()> {
        let now = self.parts.clock.now();
        for action in self.core.handle(input, now) {
            self.act(action)?;
        }
        Ok(())
    }

    pub(super) fn act(&mut self, action: Action) -> Result<()> {
        match action {
            Action::Step(key) => {
                let upload = self.uploads.entry(key.clone()).or_insert_with(|| Upload {
                    file: None,
                    progress: Arc::new(Progress::default()),
                    info: JobInfo::default(),
                    rate: Rate::default(),
                });
                upload.info.next_retry = None;
                let job = Job {
                    key,
                    upload: upload.file.take(),
                    progress: upload.progress.clone(),
                };
                if self.jobs.send(job).is_err() {
                    return Err(Error::Internal("upload threads ended unexpectedly".into()));
                }
                self.status_soon();
            }
            Action::Interrupt(on) => self.interrupt.store(on, Ordering::Relaxed),
            Action::Drop(key) => {
                self.uploads.remove(&key);
                // It may be back with new content, or was never gone (a reload): look again.
                let path = key.path().to_path_buf();
                if self.in_spool(&path) {
                    self.consider(&path, false)?;
                }
            }
            Action::Hook(key) => self.start_hook(&key)?,
            Action::AfterUpload(key) => self.finish_upload(&key)?,
        }
        Ok(())
    }

    /// A worker ran one step of a file.
    pub(super) fn stepped(&mut self, report: Stepped) -> Result<()> {
        let Stepped { key, upload, step } = report;
        let has_url = upload.as_ref().is_some_and(|f| !f.needs_creation());
        if let Some(u) = self.uploads.get_mut(&key) {
            if let Some(f) = &upload {
                u.info.attempts = f.attempts();
                u.info.last_error = f.last_error().map(str::to_string);
                u.info.confirmed = f.confirmed_and_length().0;
            }
            u.file = upload;
        }
        let outcome = match step {
            Step::Continue => Outcome::Continue,
            Step::Interrupted => Outcome::Interrupted,
            Step::Wait(d) => {
                self.retries += 1;
                if let Some(u) = self.uploads.get_mut(&key) {
                    u.info.next_retry = Some(self.parts.clock.wall() + d);
                }
                Outcome::Wait(d)
            }
            Step::LinkDown(why) => {
                if *self.core.link() == Link::Up {
                    log::warn!("no answer from the server ({why}); uploads wait for the link, which is tried every few seconds");
                }
                Outcome::LinkDown(why)
            }
            Step::EndpointRefused { status, message } => {
                let now = self.parts.clock.now();
                if self.core.hold().is_none_or(|h| now >= h.until) {
                    log::error!(
                        "{}: the endpoint refuses new uploads ({status} {message}); no file is failed, new uploads wait and are tried again",
                        url::redact(&self.parts.upload.endpoint)
                    );
                }
                Outcome::EndpointRefused { status, message }
            }
            Step::Done(c) => {
                self.uploads.remove(&key);
                self.completed(&key, &c);
                Outcome::Done
            }
            Step::Failed(e @ Error::Network { .. }) => {
                // TLS settings (or the server's certificate) are wrong, or the endpoint's
                // scheme is: not this file's fault. It stays in the spool; uploads are held,
                // then tried again.
                self.uploads.remove(&key);
                let before = self.core.link().clone();
                self.tell(Input::Stepped {
                    key: key.clone(),
                    outcome: Outcome::LinkRefused(e.to_string()),
                    has_url,
                })?;
                // One line per hold (files refused at once share one).
                let link = self.core.link();
                if let (true, Link::Down { probe_at, .. }) = (*link != before, link) {
                    let wait = probe_at.saturating_duration_since(self.parts.clock.now());
                    log::error!(
                        "{e}; no file is failed, uploads are held and tried again in {} s",
                        wait.as_secs()
                    );
                }
                return self.consider(key.path(), false);
            }
            Step::Failed(e) => return self.ended(&key, e),
        };
        let was_down = *self.core.link() != Link::Up;
        self.tell(Input::Stepped {
            key,
            outcome,
            has_url,
        })?;
        if was_down && *self.core.link() == Link::Up {
            log::info!("the server answers again; uploads go on");
        }
        self.status_soon();
        Ok(())
    }

    /// The upload of `key` completed: totals and the log line (the core runs what follows).
    fn completed(&mut self, key: &FileKey, c: &Completed) {
        let path = key.path();
        self.totals.files_done += 1;
        if !c.already && self.parts.store.damage().reset.is_some() && self.predates_start(path) {
            self.totals_reuploaded += 1;
        }
        self.totals.last_success_unix = Some(unix(self.parts.clock.wall()));
        let media = c
            .media_id()
            .map_or(String::new(), |m| format!(", media id {m}"));
        log::info!(
            "{}: uploaded, {} bytes, {}{media}",
            path.display(),
            c.length,
            url::redact(&c.url)
        );
    }

    /// The upload of `key` failed: the scheduler forgets it, the cause decides what follows.
    fn ended(&mut self, key: &FileKey, result: Error) -> Result<()> {
        self.uploads.remove(key);
        self.tell(Input::Stepped {
            key: key.clone(),
            outcome: Outcome::Ended,
            has_url: true,
        })?;
        self.status_soon();
        let path = key.path().to_path_buf();
        match result {
            // Cut before it started: it is still in the spool, offered again.
            Error::Interrupted => self.consider(&path, false)?,
            e @ Error::State { .. } => return Err(e),
            e @ Error::Source { .. } => self.source_failed(&path, key, e)?,
            e => {
                let status = match &e {
                    Error::Server { status, .. } => Some(*status),
                    _ => None,
                };
                // Every line about a file names it.
                let message = e.to_string();
                let name = path.display().to_string();
                let message = if message.contains(&name) {
                    message
                } else {
                    format!("{name}: {message}")
                };
                self.fail(&path, key, status, &message)?;
            }
        }
        Ok(())
    }

    /// Whether the file at `path` was last written before this daemon started.
    fn predates_start(&self, path: &Path) -> bool {
        spool::stat(path)
            .ok()
            .flatten()
            .is_some_and(|e| spool::mtime_of(&e.identity) < self.started)
    }
}
