//! Moving bytes: `Probe` (HEAD asks the server's offset) ⇄ `Send` (PATCH one chunk).
//!
//! Key idea: the server's `Upload-Offset` is the truth (invariant 3); every answer either
//! advances to the offset it proves or goes back to `Probe`. A 413 halves the chunk (within
//! Stream's rules for Stream targets) and the uploader keeps that limit for later files.

use super::chunking::{self, Cut, CutHandling};
use super::{lock, unix, FileUpload, Phase, Step, Uploader, MIN_CHUNK_BYTES};
use crate::error::{Error, Result};
use crate::progress::human_bytes;
use crate::stream;
use crate::transport::FailureKind;
use crate::tus::response::{self, Sent};
use crate::tus::{request, url, Outcome, Response};

impl Uploader<'_> {
    /// `Probe`: HEAD asks the server's offset (invariant 3); an expired URL is not asked.
    pub(super) fn probe(&self, f: &mut FileUpload) -> Result<Step> {
        let Some(rec) = f.record.clone() else {
            f.phase = Phase::Create;
            return Ok(Step::Continue);
        };
        if rec
            .expires_unix
            .is_some_and(|e| e <= unix(self.clock.wall()))
        {
            return self.forget_upload(f, "its Upload-Expires has passed");
        }
        let resp = match self.exchange(request::head(&rec.upload_url)) {
            Ok(r) => r,
            Err(e) => return self.transport_failure(f, e, Phase::Probe),
        };
        self.capture_later(f, &resp)?;
        match response::head(&resp, f.source.len()) {
            Outcome::Offset { offset, expires } => {
                if let Some(e) = expires {
                    self.set_expiry(f, e)?;
                }
                if let Some(how) = f.cut.take().and_then(|cut| cut.judge(offset)) {
                    self.learn(how);
                }
                if std::mem::take(&mut f.resuming) {
                    log::info!(
                        "{}: resuming {} at {} (server offset)",
                        f.path().display(),
                        url::redact(&rec.upload_url),
                        human_bytes(offset)
                    );
                }
                self.advanced(f, offset)?;
                Ok(Step::Continue)
            }
            Outcome::Gone { why } => self.forget_upload(f, &why),
            Outcome::Fail { status: 403, why } if self.settings.target.one_time_urls() => {
                self.forget_upload(f, &format!("the one-time URL is refused: {why}"))
            }
            Outcome::Retry { why, retry_after } => {
                self.retry_later(f, why, retry_after.as_deref(), Phase::Probe)
            }
            other => Err(self.refused(&rec.upload_url, &resp, other)),
        }
    }

    /// `Send`: PATCH one chunk from `offset`, unless the file changed under us.
    pub(super) fn send(&self, f: &mut FileUpload, offset: u64) -> Result<Step> {
        if let Err(e) = f.source.check_unchanged() {
            return self.source_changed(f, e);
        }
        let Some(rec) = f.record.clone() else {
            f.phase = Phase::Create;
            return Ok(Step::Continue);
        };
        let length = f.source.len();
        let len = self.next_chunk(f).min(length - offset);
        let sum = f
            .checksum
            .map(|a| f.source.digest(offset, len, a))
            .transpose()?;
        let sent = Sent {
            offset,
            len,
            length,
            checksum: sum.is_some(),
        };
        let req = request::patch(&rec.upload_url, offset, len, sum);
        f.progress.set_position(offset);
        let body = f.source.reader(offset, len, self.read_control(f))?;
        let started = self.clock.now();
        let resp = match self.send_body(f, req, Box::new(body)) {
            Ok(r) => r,
            Err(e) if e.kind == FailureKind::Body => {
                let changed = f.source.check_unchanged().err();
                return self.source_changed(
                    f,
                    changed.unwrap_or_else(|| Error::source_file(f.path(), e.to_string())),
                );
            }
            Err(e) => {
                let acked = f.progress.delivery().acked().unwrap_or(0);
                f.cut = Some(Cut {
                    from: offset,
                    len,
                    acked,
                });
                return self.transport_failure(f, e, Phase::Probe);
            }
        };
        let took = self.clock.now().saturating_duration_since(started);
        self.on_patch_answer(f, &rec.upload_url, sent, &resp, took)
    }

    /// Acts on the answer, `took` after it was sent, to a PATCH that carried `sent`.
    fn on_patch_answer(
        &self,
        f: &mut FileUpload,
        upload_url: &str,
        sent: Sent,
        resp: &Response,
        took: std::time::Duration,
    ) -> Result<Step> {
        let (offset, len) = (sent.offset, sent.len);
        self.capture_later(f, resp)?;
        match response::patch(resp, sent) {
            Outcome::Offset {
                offset: new,
                expires,
            } => {
                if let Some(e) = expires {
                    self.set_expiry(f, e)?;
                }
                if new == offset {
                    let why = format!("server accepted none of the {len} bytes sent");
                    return self.retry_later(f, why, None, Phase::Probe);
                }
                f.checksum_mismatches = 0;
                let moved = new.saturating_sub(offset);
                lock(&self.link_rate).record(moved, took.as_secs_f64());
                self.advanced(f, new)?;
                Ok(Step::Continue)
            }
            Outcome::Conflict => Ok(self.conflict(f, offset)),
            Outcome::Gone { why } => self.forget_upload(f, &why),
            Outcome::Retry { why, retry_after } => {
                self.retry_later(f, why, retry_after.as_deref(), Phase::Probe)
            }
            Outcome::ChecksumMismatch => self.checksum_mismatch(f, upload_url, resp.status, offset),
            Outcome::ChecksumRejected { why } => Ok(self.without_checksum(f, &why)),
            Outcome::Fail { status: 403, why } if self.settings.target.one_time_urls() => {
                self.forget_upload(f, &format!("the one-time URL is refused: {why}"))
            }
            Outcome::TooLarge { why } if self.smaller_chunk(len) < len => {
                Ok(self.shrink_chunk(f, len, &why))
            }
            other => Err(self.refused(upload_url, resp, other)),
        }
    }

    /// 409: our offset is not the server's. The first time, ask at once; then back off.
    fn conflict(&self, f: &mut FileUpload, offset: u64) -> Step {
        log::info!(
            "{}: offset conflict at {offset}; asking the server",
            f.path().display()
        );
        let first = f.attempt == 0;
        f.attempt += 1;
        f.phase = Phase::Probe;
        if first {
            Step::Continue
        } else {
            self.backoff(f, "offset conflict".into(), None, Phase::Probe)
        }
    }

    /// 460: send the chunk again, until mismatches in a row say the file or link corrupts data.
    fn checksum_mismatch(
        &self,
        f: &mut FileUpload,
        upload_url: &str,
        status: u16,
        offset: u64,
    ) -> Result<Step> {
        f.checksum_mismatches += 1;
        if f.checksum_mismatches >= self.settings.max_checksum_mismatches {
            return Err(Error::Server {
                url: url::redact(upload_url).into(),
                status,
                message: format!("checksum mismatch {} times in a row at offset {offset}: the file or the link corrupts data", f.checksum_mismatches),
            });
        }
        log::warn!(
            "{}: checksum mismatch at offset {offset}; sending the chunk again",
            f.path().display()
        );
        Ok(Step::Continue)
    }

    /// 413 for a chunk of `len`: halve it, and remember the limit for the files after this one.
    fn shrink_chunk(&self, f: &mut FileUpload, len: u64, why: &str) -> Step {
        f.chunk_bytes = self.smaller_chunk(len);
        *lock(&self.learned_chunk_limit) = Some(f.chunk_bytes);
        log::warn!(
            "{}: chunk too large ({why}); using {} byte chunks",
            f.path().display(),
            f.chunk_bytes
        );
        f.phase = Phase::Probe;
        Step::Continue
    }

    /// The most one PATCH may carry: the configured size (none: no bound but the policy's),
    /// or less if a 413 taught us a limit.
    pub(super) fn chunk_size(&self) -> u64 {
        let configured = self
            .settings
            .chunk_size_bytes
            .map_or(u64::MAX, |c| c.max(1));
        lock(&self.learned_chunk_limit).map_or(configured, |l| l.min(configured))
    }

    /// Bytes for the next PATCH of `f`: a configured chunk size always wins; else the chunk
    /// policy's choice for this endpoint and link (see `chunking`), within a 413's limit.
    pub(super) fn next_chunk(&self, f: &FileUpload) -> u64 {
        if self.settings.chunk_size_bytes.is_some() {
            return f.chunk_bytes;
        }
        let rate = lock(&self.link_rate).get();
        let stream = self.settings.target.stream_rules();
        chunking::chunk_bytes(self.cut_handling(), rate, stream).min(f.chunk_bytes)
    }

    /// What the endpoint does with a cut PATCH: learnt, or known for Stream (drops).
    pub(super) fn cut_handling(&self) -> CutHandling {
        let learnt = lock(&self.cut_handling)
            .get(&self.settings.endpoint)
            .copied();
        match learnt {
            Some(h) => h,
            None if self.settings.target.stream_rules() => CutHandling::Drops,
            None => CutHandling::Unknown,
        }
    }

    /// A cut showed how the endpoint handles cuts: chunks are sized for it from now on.
    fn learn(&self, how: CutHandling) {
        let endpoint = &self.settings.endpoint;
        let before = lock(&self.cut_handling).insert(endpoint.clone(), how);
        if before != Some(how) && self.settings.chunk_size_bytes.is_none() {
            let what = match how {
                CutHandling::Keeps => "keeps the bytes of a cut PATCH: long requests",
                _ => "drops a cut PATCH whole: chunks bounded to a few seconds of the link",
            };
            log::info!("{}: the server {what}", url::redact(endpoint));
        }
    }

    /// Half of `chunk`, within the target's rules (Stream: multiples of 256 KiB, ≥ 5 MiB).
    pub(super) fn smaller_chunk(&self, chunk: u64) -> u64 {
        if self.settings.target.stream_rules() {
            stream::halve_chunk(chunk)
        } else {
            (chunk / 2).max(MIN_CHUNK_BYTES).min(chunk)
        }
    }

    /// The server will not check our checksum algorithm: go on without checksums.
    pub(super) fn without_checksum(&self, f: &mut FileUpload, why: &str) -> Step {
        log::warn!(
            "{}: server rejected our checksum ({why}); sending without",
            f.path().display()
        );
        f.checksum = None;
        Step::Continue
    }
}
