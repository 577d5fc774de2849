//! Failures that are not the end: lost uploads, changed files, network faults, backoff.
//!
//! Key idea: every failure turns into a next [`Phase`] and a [`Step`]: create again, start
//! over with the new content, or wait out a delay the retry policy decides (honouring
//! `Retry-After`); only the policy's give-up, or an answer no retry can mend, fails the file.

use super::{lock, FileUpload, Phase, Step, Uploader};
use crate::backoff::{parse_retry_after, Decision};
use crate::error::{Error, Result};
use crate::stream::MEDIA_ID_HEADER;
use crate::transport::{FailureKind, TransportError};
use crate::tus::{url, Outcome, Response};

/// How often a file may change under us before `ferry upload` gives up on it.
const MAX_RESTARTS_FOR_CHANGES: u32 = 3;

impl Uploader<'_> {
    /// The server lost or expired the upload: forget it and create a new one.
    pub(super) fn forget_upload(&self, f: &mut FileUpload, why: &str) -> Result<Step> {
        if let Some(rec) = f.record.take() {
            if let Some(media) = rec.captured.get(MEDIA_ID_HEADER) {
                log::warn!(
                    "{}: abandoning video {media} (its upload URL is gone)",
                    f.path().display()
                );
            }
            log::warn!(
                "{}: upload {} is gone ({why}); creating a new upload",
                f.path().display(),
                url::redact(&rec.upload_url)
            );
        }
        self.store.remove(&f.key)?;
        f.best_offset = 0;
        f.phase = Phase::Create;
        Ok(Step::Continue)
    }

    /// The file changed under us: terminate its upload and start over with the new content.
    pub(super) fn source_changed(&self, f: &mut FileUpload, e: Error) -> Result<Step> {
        f.restarts += 1;
        if f.restarts > MAX_RESTARTS_FOR_CHANGES {
            return Err(Error::source_file(
                f.path(),
                format!("keeps changing while being uploaded ({e}); upload it once it is complete"),
            ));
        }
        log::warn!("{e}; starting over with its new content");
        let progress = f.progress.clone();
        let stale = f.record.take().map(|r| r.upload_url);
        self.store.remove(&f.key)?;
        let restarts = f.restarts;
        *f = self.start(f.source.path().to_path_buf().as_path(), progress)?;
        f.restarts = restarts;
        f.stale_url = stale;
        f.after_discover = Phase::Terminate;
        Ok(Step::Continue)
    }

    /// No answer: an interrupt resumes with a probe, a transient failure backs off, others fail.
    pub(super) fn transport_failure(
        &self,
        f: &mut FileUpload,
        e: TransportError,
        next: Phase,
    ) -> Result<Step> {
        let target = match next {
            Phase::Discover | Phase::Create => self.settings.endpoint.clone(),
            _ => f
                .record
                .as_ref()
                .map_or_else(|| self.settings.endpoint.clone(), |r| r.upload_url.clone()),
        };
        if e.kind == FailureKind::Interrupted {
            f.phase = match next {
                Phase::Send { .. } => Phase::Probe,
                other => other,
            };
            return Ok(Step::Interrupted);
        }
        if self.failure_scopes && e.is_link_level() {
            // The link, not this file: the daemon backs off the link and charges no attempt.
            f.phase = match next {
                Phase::Send { .. } => Phase::Probe,
                other => other,
            };
            let why = format!("{e} ({})", url::redact(&target));
            f.last_error = Some(why.clone());
            return Ok(Step::LinkDown(why));
        }
        if !e.is_transient() {
            let problem = match e.kind {
                // https:// to a port that answers without TLS: the URL is wrong, not the CA.
                FailureKind::Endpoint => format!("configuration error: {}", e.message),
                _ => format!("{e}; check ca_file / client_cert settings"),
            };
            return Err(Error::Network {
                url: url::redact(&target).into(),
                problem,
            });
        }
        self.retry_later(f, e.to_string(), None, next)
    }

    /// Counts a failed attempt and backs off.
    pub(super) fn retry_later(
        &self,
        f: &mut FileUpload,
        why: String,
        retry_after: Option<&str>,
        next: Phase,
    ) -> Result<Step> {
        f.attempt += 1;
        Ok(self.backoff(f, why, retry_after, next))
    }

    /// How long to wait, as the retry policy decides (honouring `Retry-After`), or give up.
    pub(super) fn backoff(
        &self,
        f: &mut FileUpload,
        why: String,
        retry_after: Option<&str>,
        next: Phase,
    ) -> Step {
        let ra = retry_after.and_then(|v| parse_retry_after(v, self.clock.wall()));
        let stalled = self.clock.now().saturating_duration_since(f.last_progress);
        let jitter = lock(&self.jitter).next_unit();
        match self.settings.retry.decide(f.attempt, stalled, ra, jitter) {
            Decision::RetryAfter(d) => {
                f.last_error = Some(why.clone());
                log::warn!(
                    "{}: {why}; retrying in {:.1} s (attempt {})",
                    f.path().display(),
                    d.as_secs_f64(),
                    f.attempt
                );
                f.phase = next;
                Step::Wait(d)
            }
            Decision::GiveUp => Step::Failed(Error::GaveUp {
                path: f.path().to_path_buf(),
                attempts: f.attempt,
                last: why,
            }),
        }
    }

    /// The error for an answer that no retry mends.
    pub(super) fn refused(&self, target: &str, resp: &Response, outcome: Outcome) -> Error {
        let message = match outcome {
            Outcome::Fail { why, .. } => why,
            // A tus answer that does not fit the request (a HEAD answered as a creation).
            _ => format!(
                "an answer that does not fit the request ({})",
                resp.message()
            ),
        };
        Error::Server {
            url: url::redact(target).into(),
            status: resp.status,
            message,
        }
    }
}
