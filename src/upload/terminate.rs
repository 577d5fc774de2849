//! Ending uploads on the server (tus termination): the stale upload of a changed file, and
//! `ferry upload --cancel`.
//!
//! Key idea: a stale upload is terminated at best effort (a failure only leaves it to expire);
//! a cancel forgets the record only once the server confirmed the upload is gone.

use std::path::Path;

use super::{FileUpload, Phase, Step, Uploader};
use crate::error::{Error, Result};
use crate::store::FileKey;
use crate::tus::{request, response, url, Outcome};

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

    /// Terminates the upload of `path` on the server and forgets it (`ferry upload --cancel`).
    pub(crate) fn cancel(&self, path: &Path) -> Result<String> {
        let key = FileKey::for_path(path)?;
        let Some(rec) = self.store.get(&key)? else {
            return Err(Error::source_file(
                path,
                "has no upload recorded in this state directory; nothing to cancel",
            ));
        };
        let outcome = self
            .send_scoped(&rec.endpoint, request::delete(&rec.upload_url), None)
            .map(|r| (response::deleted(&r), r));
        match outcome {
            Ok((Outcome::Gone { .. }, _)) => {
                self.store.remove(&key)?;
                Ok(rec.upload_url)
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
