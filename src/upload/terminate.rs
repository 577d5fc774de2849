//! Ending uploads on the server (tus termination): the stale upload of a changed file, and
//! `ferry upload --cancel`.
//!
//! Key idea: a stale upload is terminated at best effort (a failure only leaves it to expire);
//! a cancel forgets the record only once the server confirmed the upload is gone.

use std::path::Path;

use super::{FileUpload, Phase, Step, Uploader};
use crate::error::{Error, Result};
use crate::store::{FileKey, RecordState};
use crate::tus::{request, response, url, Outcome};

/// An upload that `--cancel` terminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cancelled {
    /// Its URL.
    pub url: String,
    /// The server held the whole file (terminated with `--force`).
    pub complete: bool,
}

impl Uploader<'_> {
    /// `Terminate`: DELETE the upload of a file that changed, at best effort, then create anew.
    pub(super) fn terminate_stale(&self, f: &mut FileUpload) -> Result<Step> {
        f.phase = Phase::Create;
        let (Some(stale), caps) = (f.stale_url.take(), self.caps()) else {
            return Ok(Step::Continue);
        };
        if caps.discovered && !caps.supports("termination") {
            log::info!(
                "{}: server lacks termination; the old upload {} will expire there",
                f.path().display(),
                url::redact(&stale)
            );
            return Ok(Step::Continue);
        }
        match self.exchange(request::delete(&stale)) {
            Ok(resp) => match response::deleted(&resp) {
                Outcome::Gone { .. } => log::info!(
                    "{}: terminated the old upload {}",
                    f.path().display(),
                    url::redact(&stale)
                ),
                _ => log::warn!(
                    "{}: could not terminate the old upload {}: {}",
                    f.path().display(),
                    url::redact(&stale),
                    resp.message()
                ),
            },
            Err(e) => log::warn!(
                "{}: could not terminate the old upload {}: {e}",
                f.path().display(),
                url::redact(&stale)
            ),
        }
        Ok(Step::Continue)
    }

    /// Terminates the upload at `upload_url` (created at `endpoint`) at best effort, for a file
    /// the spool limits evicted: its record is already gone, so a failure only leaves the
    /// upload to expire on the server. `Err` says why it was not terminated.
    pub(crate) fn terminate_evicted(
        &self,
        endpoint: &str,
        upload_url: &str,
    ) -> std::result::Result<(), String> {
        let caps = self.caps();
        if caps.discovered && !caps.supports("termination") {
            return Err("the server lacks termination".into());
        }
        match self.send_scoped(endpoint, request::delete(upload_url), None) {
            Ok(resp) => match response::deleted(&resp) {
                Outcome::Gone { .. } => Ok(()),
                _ => Err(resp.message()),
            },
            Err(e) => Err(e.to_string()),
        }
    }

    /// Terminates the upload of `path` on the server and forgets it (`ferry upload --cancel`).
    /// A complete upload is the server's copy of the whole file: it is terminated only with
    /// `force`, so that a cancel meant for an unfinished upload never deletes a finished one.
    pub(crate) fn cancel(&self, path: &Path, force: bool) -> Result<Cancelled> {
        let key = FileKey::for_path(path)?;
        let Some(rec) = self.store.get(&key)? else {
            return Err(Error::source_file(
                path,
                "has no upload recorded in this state directory; nothing to cancel",
            ));
        };
        let complete = rec.state == RecordState::Complete;
        if complete && !force {
            return Err(Error::source_file(
                path,
                format!(
                    "its upload {} is complete: the server holds all of it, and --cancel would delete it there; add --force to do so",
                    url::redact(&rec.upload_url)
                ),
            ));
        }
        let outcome = self
            .send_scoped(&rec.endpoint, request::delete(&rec.upload_url), None)
            .map(|r| (response::deleted(&r), r));
        match outcome {
            Ok((Outcome::Gone { .. }, _)) => {
                self.store.remove(&key)?;
                Ok(Cancelled {
                    url: rec.upload_url,
                    complete,
                })
            }
            Ok((_, resp)) => Err(Error::Server {
                url: url::redact(&rec.upload_url).into(),
                status: resp.status,
                message: format!(
                    "could not terminate the upload ({}); its record is kept, try again",
                    resp.message()
                ),
            }),
            Err(e) => Err(Error::Network {
                url: url::redact(&rec.upload_url).into(),
                problem: format!("{e}; its record is kept, try again"),
            }),
        }
    }
}
