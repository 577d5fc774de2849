//! Before any data: `Discover` (OPTIONS, once per endpoint) and `Create` (POST).
//!
//! Key idea: discovery learns what the server supports (checksums, creation-with-upload,
//! Tus-Max-Size) once per endpoint; creation asks for an upload URL and hands the answer to
//! the checkpoint `created`, which makes the URL durable before the first PATCH.

use std::path::Path;

use super::{lock, ChecksumMode, FileUpload, Phase, Step, Uploader};
use crate::error::{Error, Result};
use crate::tus::checksum;
use crate::tus::response::{self, Sent};
use crate::tus::{metadata, request, url, Body, Outcome, ServerCaps};

/// Answers to a creation that refuse the endpoint, not the file: not found, unauthorized,
/// forbidden, method not allowed.
const ENDPOINT_REFUSALS: [u16; 4] = [401, 403, 404, 405];

impl Uploader<'_> {
    /// `Discover`: learns the endpoint's capabilities (once per endpoint) and picks the checksum.
    pub(super) fn discover(&self, f: &mut FileUpload) -> Result<Step> {
        let endpoint = &self.settings.endpoint;
        let cached = lock(&self.caps).get(endpoint).cloned();
        let caps = match cached {
            Some(c) => c,
            None => match self.exchange(request::options(endpoint)) {
                Ok(resp) => {
                    let caps = ServerCaps::from_options(&resp);
                    if !caps.discovered {
                        log::info!(
                            "{}: OPTIONS refused ({}); assuming tus core + creation",
                            url::redact(endpoint),
                            resp.message()
                        );
                    }
                    lock(&self.caps).insert(endpoint.clone(), caps.clone());
                    caps
                }
                Err(e) => return self.transport_failure(f, e, Phase::Discover),
            },
        };
        let length = f.source.len();
        if let Some(max) = caps.max_size.filter(|m| length > *m) {
            return Err(Error::Server {
                url: url::redact(endpoint).to_string(),
                status: 413,
                message: format!("the file is {length} bytes and the server accepts at most {max} (Tus-Max-Size)"),
            });
        }
        f.checksum = match self.settings.checksum {
            ChecksumMode::Off => None,
            ChecksumMode::Always(a) => Some(a),
            ChecksumMode::Auto if caps.supports("checksum") => {
                checksum::choose(&caps.checksum_algorithms)
            }
            ChecksumMode::Auto => None,
        };
        f.phase = f.after_discover;
        Ok(Step::Continue)
    }

    /// What discovery learned of the endpoint (nothing yet: the defaults).
    pub(super) fn caps(&self) -> ServerCaps {
        lock(&self.caps)
            .get(&self.settings.endpoint)
            .cloned()
            .unwrap_or_default()
    }

    /// `Create`: POST for an upload URL, with the whole file when creation-with-upload fits.
    pub(super) fn create(&self, f: &mut FileUpload) -> Result<Step> {
        let length = f.source.len();
        let meta = metadata::encode(&self.metadata_for(f.source.path()))
            .map_err(|e| Error::config(e.to_string()))?;
        let with_upload = self.settings.creation_with_upload
            && self.caps().supports("creation-with-upload")
            && length > 0
            && length <= self.next_chunk(f);
        let first = if with_upload {
            let sum = f
                .checksum
                .map(|a| f.source.digest(0, length, a))
                .transpose()?;
            Some((length, sum))
        } else {
            None
        };
        let sent = Sent {
            offset: 0,
            len: first.as_ref().map_or(0, |(l, _)| *l),
            length,
            checksum: first.as_ref().is_some_and(|(_, s)| s.is_some()),
        };
        let req = request::create(&self.settings.endpoint, length, meta.as_deref(), first);
        let body: Option<Box<dyn crate::source::SpanSource>> = match req.body {
            Body::File { offset, len } => {
                f.progress.set_position(offset);
                Some(Box::new(f.source.reader(
                    offset,
                    len,
                    self.read_control(f),
                )?))
            }
            Body::Empty => None,
        };
        let sent_with = match body {
            Some(body) => self.send_body(f, req, body),
            None => self.send_scoped(&self.settings.endpoint, req, None),
        };
        let resp = match sent_with {
            Ok(r) => r,
            Err(e) => return self.transport_failure(f, e, Phase::Create),
        };
        match response::created(&resp, &self.settings.endpoint, sent) {
            Outcome::Created {
                url,
                offset,
                expires,
            } => {
                let captured = self.capture(&resp, &Default::default());
                self.created(f, url, offset, expires, captured)
            }
            Outcome::Retry { why, retry_after } => {
                self.retry_later(f, why, retry_after.as_deref(), Phase::Create)
            }
            Outcome::ChecksumRejected { why } => Ok(self.without_checksum(f, &why)),
            // Not about this file: the endpoint (a wrong path, a proxy during a deploy, an
            // expired credential) refuses every creation. The daemon holds creations.
            _ if self.failure_scopes && ENDPOINT_REFUSALS.contains(&resp.status) => {
                f.last_error = Some(format!("{} {}", resp.status, resp.message()));
                Ok(Step::EndpointRefused {
                    status: resp.status,
                    message: resp.message(),
                })
            }
            other => Err(self.refused(&self.settings.endpoint, &resp, other)),
        }
    }

    fn metadata_for(&self, path: &Path) -> Vec<metadata::Entry> {
        let mut entries = self.settings.metadata.clone();
        if self.settings.default_metadata {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let has = |entries: &[metadata::Entry], k: &str| entries.iter().any(|(e, _)| e == k);
            if !has(&entries, "filetype") {
                entries.insert(
                    0,
                    (
                        "filetype".into(),
                        Some(metadata::guess_filetype(&name).into()),
                    ),
                );
            }
            if !has(&entries, "filename") {
                entries.insert(0, ("filename".into(), Some(name)));
            }
        }
        entries
    }
}
