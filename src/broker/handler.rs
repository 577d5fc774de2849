//! One request in, one answer out: the broker's endpoint.
//!
//! `POST <path>`: device token → `Upload-Length` → metadata → rate limit → Stream, answered
//! 201 + `Location` (+ `Stream-Media-ID`), or 400/401/412/429 for the device's mistakes, and
//! 502/504 when Stream refuses or does not answer within `api_timeout` (the whole exchange),
//! 503 when earlier calls are still hanging ([`super::call`]). `OPTIONS <path>`: CORS preflight, or tus
//! discovery without `Origin`. `GET /healthz`: the device tokens file's state ([`health`]).
//! The API token goes into one header of one request to Stream;
//! it is never put in an answer or a log line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::call::{CallError, Caller};
use super::cors::Cors;
use super::devices::Devices;
use super::health;
use super::http::{Request, Response};
use super::limit::{retry_after_secs, RateLimits, STREAM_API_REQUESTS, STREAM_API_WINDOW};
use super::settings::{ApiToken, Settings};
use super::stream::{self, Answer, Ask};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::transport::{FailureKind, Transport};
use crate::tus::{metadata, TUS_RESUMABLE};

/// The answer when Stream's account-wide API limit is reached.
const STREAM_LIMIT_MESSAGE: &str =
    "the Cloudflare Stream account's API limit is reached: try again after Retry-After";

/// An answer and what the log line says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handled {
    /// The answer.
    pub response: Response,
    /// The authenticated device.
    pub device: Option<String>,
    /// The Stream video id handed out.
    pub media_id: Option<String>,
    /// Why the request failed, for operators (never a secret).
    pub note: Option<String>,
}

impl Handled {
    fn error(status: u16, message: &str, device: Option<&str>) -> Self {
        Self {
            response: Response::json_error(status, message, Value::Null),
            device: device.map(str::to_string),
            media_id: None,
            note: Some(message.to_string()),
        }
    }
}

/// The endpoint's state: settings, device tokens, rate limits, and the way to Stream.
pub(crate) struct Broker {
    path: String,
    api_base: String,
    account_id: String,
    api_token: ApiToken,
    max_duration_seconds: u64,
    url_expiry: Duration,
    max_upload_length: u64,
    allowed_metadata: Vec<String>,
    forced_metadata: Vec<metadata::Entry>,
    api_timeout: Duration,
    devices: Devices,
    limits: RateLimits,
    /// Stream's account-wide API limit, as the broker spends it.
    account: RateLimits,
    /// Until when Stream said (429) to make no calls.
    stream_paused_until: Mutex<Option<Instant>>,
    cors: Cors,
    stream: Caller,
    clock: Arc<dyn Clock>,
}

impl Broker {
    /// A broker for `settings`; reads the device tokens file. A file that cannot be read is a
    /// configuration error (a wrong path shows at start); bad lines are logged and skipped.
    pub(crate) fn new(
        settings: &Settings,
        transport: Box<dyn Transport>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let devices = Devices::load(&settings.device_tokens_file)
            .map_err(|e| Error::config(format!("broker.device_tokens_file: {e}")))?;
        if devices.count() == 0 {
            log::warn!(
                "{} lists no devices: every request is refused until it does",
                settings.device_tokens_file.display()
            );
        }
        Ok(Self {
            path: settings.path.clone(),
            api_base: settings.api_base.clone(),
            account_id: settings.account_id.clone(),
            api_token: settings.api_token.clone(),
            max_duration_seconds: settings.max_duration_seconds,
            url_expiry: settings.url_expiry,
            max_upload_length: settings.max_upload_length,
            allowed_metadata: settings.allowed_metadata.clone(),
            forced_metadata: settings.forced_metadata.clone(),
            api_timeout: settings.api_timeout,
            devices,
            limits: RateLimits::new(settings.urls_per_hour),
            account: RateLimits::per_window(STREAM_API_REQUESTS, STREAM_API_WINDOW),
            stream_paused_until: Mutex::new(None),
            cors: Cors::new(settings.allowed_origins.clone()),
            stream: Caller::new(Arc::from(transport)),
            clock,
        })
    }

    /// Number of device tokens known.
    pub(crate) fn device_count(&self) -> usize {
        self.devices.count()
    }

    /// Re-reads the device tokens file (SIGHUP).
    pub(crate) fn reload_devices(&self) {
        self.devices.reload();
    }

    /// Answers one request.
    pub(crate) fn handle(&self, req: &Request) -> Handled {
        if req.path() != self.path {
            if req.path() == health::PATH {
                return self.health(req);
            }
            return Handled::error(404, "not found", None);
        }
        let origin = req.header("Origin");
        let mut handled = match req.method.as_str() {
            "OPTIONS" => return self.options(origin),
            "POST" => self.create(req),
            _ => {
                let mut h = Handled::error(405, "use POST", None);
                h.response.set("Allow", "POST, OPTIONS");
                h
            }
        };
        self.cors.decorate(origin, &mut handled.response);
        handled
    }

    /// `GET /healthz`; the devices file is re-read first if it changed.
    fn health(&self, req: &Request) -> Handled {
        let response = match req.method.as_str() {
            "GET" | "HEAD" => health::answer(&self.devices.health()),
            _ => {
                let mut r = Response::json_error(405, "use GET", Value::Null);
                r.set("Allow", "GET, HEAD");
                r
            }
        };
        Handled {
            response,
            device: None,
            media_id: None,
            note: None,
        }
    }

    fn options(&self, origin: Option<&str>) -> Handled {
        let response = match origin {
            Some(o) => self.cors.preflight(o),
            None => {
                let mut r = Response::new(204);
                r.set("Tus-Resumable", TUS_RESUMABLE);
                r.set("Tus-Version", TUS_RESUMABLE);
                r.set("Tus-Extension", "creation");
                r.set("Tus-Max-Size", self.max_upload_length.to_string());
                r
            }
        };
        let note = (response.status == 403).then(|| "origin not allowed".to_string());
        Handled {
            response,
            device: None,
            media_id: None,
            note,
        }
    }

    fn create(&self, req: &Request) -> Handled {
        let Some(device) = self.devices.authenticate(req.header("Authorization")) else {
            let mut h = Handled::error(401, "missing or unknown device token", None);
            h.response.set("WWW-Authenticate", "Bearer");
            return h;
        };
        let dev = Some(device.as_str());
        if req
            .header("Tus-Resumable")
            .is_some_and(|v| v != TUS_RESUMABLE)
        {
            let mut h = Handled::error(412, "only tus 1.0.0 is supported", dev);
            h.response.set("Tus-Version", TUS_RESUMABLE);
            return h;
        }
        let ask = match self.ask(req) {
            Ok(ask) => ask,
            Err(message) => return Handled::error(400, &message, dev),
        };
        let now = self.clock.now();
        if let Err(wait) = self.limits.take(&device, now) {
            let mut h = Handled::error(429, "too many upload URLs for this device", dev);
            h.response
                .set("Retry-After", retry_after_secs(wait).to_string());
            return h;
        }
        if let Err(wait) = self.take_account(now) {
            self.limits.refund(&device);
            let mut h = Handled::error(429, STREAM_LIMIT_MESSAGE, dev);
            h.response
                .set("Retry-After", retry_after_secs(wait).to_string());
            h.note = Some("Stream's API limit reached (1,200 requests per 5 minutes)".into());
            return h;
        }
        let body = req.body_length().unwrap_or(0);
        let handled = self.call_stream(&device, &ask, body);
        // Only URLs handed out count against the device.
        if handled.response.status != 201 {
            self.limits.refund(&device);
        }
        handled
    }

    /// One request's worth of Stream's account-wide API limit, unless Stream asked for a pause.
    fn take_account(&self, now: Instant) -> std::result::Result<(), Duration> {
        let paused = *self
            .stream_paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match paused {
            Some(until) if until > now => Err(until - now),
            _ => self.account.take("", now),
        }
    }

    /// Stream answered 429 (its API limit): no call until its `Retry-After` (at most the
    /// limit's window, 60 s without one); the device is told to come back then.
    fn stream_said_429(&self, device: &str, resp: &crate::tus::Response) -> Handled {
        let wait = resp
            .header("Retry-After")
            .and_then(|v| crate::backoff::parse_retry_after(v, self.clock.wall()))
            .unwrap_or(Duration::from_secs(60))
            .min(STREAM_API_WINDOW);
        *self
            .stream_paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(self.clock.now() + wait);
        let mut h = Handled::error(429, STREAM_LIMIT_MESSAGE, Some(device));
        h.response
            .set("Retry-After", retry_after_secs(wait).to_string());
        h.note = Some(format!(
            "Stream 429 (its API limit): no calls for {} s",
            wait.as_secs()
        ));
        h
    }

    /// The device's request, checked: length and metadata; the message names the problem.
    fn ask(&self, req: &Request) -> std::result::Result<Ask, String> {
        if req.header("Upload-Defer-Length").is_some() {
            return Err(
                "Upload-Defer-Length is not supported: Stream needs the length up front".into(),
            );
        }
        let length = upload_length(req.header("Upload-Length"), self.max_upload_length)?;
        let expiry = self.clock.wall() + self.url_expiry;
        let metadata = stream::metadata_for_stream(
            req.header("Upload-Metadata"),
            &self.allowed_metadata,
            &self.forced_metadata,
            self.max_duration_seconds,
            expiry,
        )
        .map_err(|e| format!("Upload-Metadata: {e}"))?;
        Ok(Ask { length, metadata })
    }

    /// Asks Stream for the URL; `req_body` is how many body bytes the device sent (dropped).
    fn call_stream(&self, device: &str, ask: &Ask, req_body: u64) -> Handled {
        let req = stream::creation_request(
            &self.api_base,
            &self.account_id,
            self.api_token.expose(),
            ask,
        );
        // One deadline for the whole exchange, however the answer trickles in.
        let e = match self.stream.call(&req, self.api_timeout) {
            Ok(resp) if resp.status == 429 => return self.stream_said_429(device, &resp),
            Ok(resp) => return self.answer(device, stream::interpret(&req.url, &resp), req_body),
            Err(e) => e,
        };
        let secs = self.api_timeout.as_secs_f32();
        let late = format!("Cloudflare Stream did not answer within {secs} s");
        let (mut h, note) = match e {
            CallError::Deadline => (
                Handled::error(504, &late, Some(device)),
                "Stream: no whole answer by the deadline".to_string(),
            ),
            CallError::Transport(e) if e.kind == FailureKind::Timeout => (
                Handled::error(504, &late, Some(device)),
                format!("Stream: {e}"),
            ),
            CallError::Transport(e) => (
                Handled::error(502, "cannot reach Cloudflare Stream", Some(device)),
                format!("Stream: {e}"),
            ),
            CallError::Busy => {
                self.account.refund(""); // no call was made
                let mut h = Handled::error(
                    503,
                    "Cloudflare Stream is not answering: try again later",
                    Some(device),
                );
                h.response.set("Retry-After", secs.ceil().to_string());
                let n = self.stream.late();
                (
                    h,
                    format!("Stream: {n} calls past their deadline, no new call made"),
                )
            }
        };
        h.note = Some(self.redact(&note));
        h
    }

    /// The device's answer to Stream's.
    fn answer(&self, device: &str, answer: Answer, req_body: u64) -> Handled {
        match answer {
            Answer::Created { location, media_id } => {
                let mut r = Response::new(201);
                r.set("Location", location);
                r.set("Tus-Resumable", TUS_RESUMABLE);
                if let Some(id) = &media_id {
                    r.set("Stream-Media-ID", id.clone());
                }
                r.set("Cache-Control", "no-store");
                if req_body > 0 {
                    // creation-with-upload: none of the body was stored; the client sends
                    // it again to the Location (tus allows a partial acceptance; 0 is one).
                    r.set("Upload-Offset", "0");
                }
                Handled {
                    response: r,
                    device: Some(device.to_string()),
                    media_id,
                    note: None,
                }
            }
            Answer::Refused { status, messages } => {
                let messages: Vec<String> = messages.iter().map(|m| self.redact(m)).collect();
                let response = Response::json_error(
                    502,
                    "Cloudflare Stream refused to create the upload",
                    json!({ "stream_status": status, "messages": messages }),
                );
                Handled {
                    response,
                    device: Some(device.to_string()),
                    media_id: None,
                    note: Some(format!("Stream {status}: {}", messages.join("; "))),
                }
            }
        }
    }

    /// Text from Stream or the transport with the API token cut out, should it ever echo it.
    fn redact(&self, text: &str) -> String {
        text.replace(self.api_token.expose(), "[api token]")
    }
}

/// `Upload-Length`, checked against `max`; the error names the problem.
fn upload_length(v: Option<&str>, max: u64) -> std::result::Result<u64, String> {
    let Some(v) = v else {
        return Err("Upload-Length is missing: Stream needs the file size up front".into());
    };
    let shown: String = v.chars().take(40).collect();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("Upload-Length {shown:?} is not a whole number"));
    }
    let n: u64 = v
        .parse()
        .map_err(|_| format!("Upload-Length {shown} is above the limit of {max} bytes"))?;
    if n == 0 {
        return Err("Upload-Length must be above 0".into());
    }
    if n > max {
        return Err(format!(
            "Upload-Length {n} is above the limit of {max} bytes"
        ));
    }
    Ok(n)
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
