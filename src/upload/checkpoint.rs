//! Record checkpoints: what each answer proved, written to the store.
//!
//! Key idea: a record is the single truth about a file between restarts. The upload URL is
//! flushed before any data byte (invariant 2); offsets and expiry are written unsynced (HEAD
//! decides where to resume); completion is written once, with its final state.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{unix, Completed, FileUpload, Phase, Step, Uploader};
use crate::error::{Error, Result};
use crate::store::{FileRecord, RecordState, RECORD_VERSION};
use crate::stream::MEDIA_ID_HEADER;
use crate::tus::{url, Response};

impl Uploader<'_> {
    /// Resumes, restarts or forgets according to the stored record of `f` (if any).
    pub(super) fn adopt_record(&self, f: &mut FileUpload) -> Result<()> {
        let Some(rec) = self.store.get(&f.key)? else {
            return Ok(());
        };
        let name = f.source.path().display();
        if rec.identity != f.source.identity() {
            log::info!("{name}: changed since its last upload started; uploading the new content as a new upload");
            if rec.state == RecordState::Uploading {
                f.stale_url = Some(rec.upload_url.clone());
                f.after_discover = Phase::Terminate;
            }
            self.store.remove(&f.key)?;
        } else if rec.endpoint != self.settings.endpoint {
            log::warn!(
                "{name}: was being uploaded to {}; starting a new upload at {}",
                url::redact(&rec.endpoint),
                url::redact(&self.settings.endpoint)
            );
            self.store.remove(&f.key)?;
        } else if rec.state == RecordState::Complete {
            f.best_offset = rec.offset;
            f.phase = Phase::Complete { already: true };
            f.record = Some(rec);
        } else {
            f.best_offset = rec.offset;
            f.after_discover = Phase::Probe;
            f.record = Some(rec);
            f.resuming = true;
        }
        Ok(())
    }

    /// Records a new upload URL durably (invariant 2), then goes on from the offset sent with it.
    pub(super) fn created(
        &self,
        f: &mut FileUpload,
        upload_url: String,
        offset: u64,
        expires: Option<SystemTime>,
        captured: BTreeMap<String, String>,
    ) -> Result<Step> {
        let now = unix(self.clock.wall());
        let record = FileRecord {
            version: RECORD_VERSION,
            path: f.key.clone(),
            identity: f.source.identity(),
            endpoint: self.settings.endpoint.clone(),
            upload_url,
            offset,
            expires_unix: expires.map(unix),
            created_unix: now,
            updated_unix: now,
            state: RecordState::Uploading,
            captured,
            hook: Default::default(),
        };
        // Invariant 2: durable before any PATCH.
        self.store.put(&record)?;
        let media = record
            .captured
            .get(MEDIA_ID_HEADER)
            .map_or(String::new(), |m| format!(" (media id {m})"));
        log::info!(
            "{}: created upload {}{media}",
            f.path().display(),
            url::redact(&record.upload_url)
        );
        f.record = Some(record);
        f.resuming = false;
        f.best_offset = 0;
        self.advanced(f, offset)?;
        Ok(Step::Continue)
    }

    /// The server confirmed `offset` bytes: record progress and choose the next phase.
    pub(super) fn advanced(&self, f: &mut FileUpload, offset: u64) -> Result<()> {
        if offset > f.best_offset {
            f.best_offset = offset;
            f.attempt = 0;
            f.last_progress = self.clock.now();
        }
        f.progress.set_position(offset);
        let complete = offset == f.source.len();
        if let Some(rec) = f.record.as_mut() {
            // At the end, `complete` writes the record once, with its final state. The
            // offset is no checkpoint (the server's HEAD decides where to resume): not synced.
            if rec.offset != offset && !complete {
                rec.offset = offset;
                rec.updated_unix = unix(self.clock.wall());
                self.store.put_unsynced(rec)?;
            }
        }
        f.phase = if complete {
            Phase::Complete { already: false }
        } else {
            Phase::Send { offset }
        };
        Ok(())
    }

    /// Records the server's `Upload-Expires`, so a later run does not probe an expired URL.
    pub(super) fn set_expiry(&self, f: &mut FileUpload, expires: SystemTime) -> Result<()> {
        if let Some(rec) = f.record.as_mut() {
            let e = Some(unix(expires));
            if rec.expires_unix != e {
                rec.expires_unix = e;
                self.store.put_unsynced(rec)?; // the server says it again at every HEAD
            }
        }
        Ok(())
    }

    /// The configured response headers present in `resp`, added to `known`.
    pub(super) fn capture(
        &self,
        resp: &Response,
        known: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut out = known.clone();
        for name in &self.settings.capture_headers {
            if let Some(v) = resp.header(name) {
                out.insert(name.clone(), v.to_string());
            }
        }
        out
    }

    /// Keeps response headers that first arrive after creation.
    pub(super) fn capture_later(&self, f: &mut FileUpload, resp: &Response) -> Result<()> {
        if let Some(rec) = f.record.as_mut() {
            let captured = self.capture(resp, &rec.captured);
            if captured != rec.captured {
                rec.captured = captured;
                self.store.put(rec)?;
            }
        }
        Ok(())
    }

    /// Records completion once and reports it.
    pub(super) fn complete(&self, f: &mut FileUpload, already: bool) -> Step {
        let Some(mut rec) = f.record.clone() else {
            return Step::Failed(Error::source_file(
                f.path(),
                "completed without an upload record",
            ));
        };
        if rec.state != RecordState::Complete {
            rec.state = RecordState::Complete;
            rec.offset = f.source.len();
            rec.updated_unix = unix(self.clock.wall());
            let written = if self.caller_syncs_completion {
                self.store.put_unsynced(&rec)
            } else {
                self.store.put(&rec)
            };
            if let Err(e) = written {
                return Step::Failed(e);
            }
        }
        f.progress.finish();
        Step::Done(Completed {
            path: f.path().to_path_buf(),
            url: rec.upload_url,
            length: f.source.len(),
            already,
            captured: rec.captured,
        })
    }
}
