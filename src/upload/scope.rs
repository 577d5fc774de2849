//! Per-origin credential scoping: which configured headers go with which request.
//!
//! Key idea: credentials (`Authorization`, `Cookie`, `Proxy-Authorization` and headers from
//! secret files) go only to the origin of the endpoint they were configured for; an upload
//! URL on another origin (Stream's, a broker's) gets them only with `auth_cross_origin`.

use super::{FileUpload, Header, Settings, Uploader};
use crate::source::SpanSource;
use crate::transport::TransportError;
use crate::tus::{url, Request, Response};

impl Header {
    /// True for headers that prove who we are: they stay on the configured origin.
    fn is_credential(&self) -> bool {
        self.secret
            || ["authorization", "proxy-authorization", "cookie"]
                .iter()
                .any(|n| self.name.eq_ignore_ascii_case(n))
    }
}

impl Uploader<'_> {
    /// Sends a body-less request with the endpoint as the credentials' origin.
    pub(super) fn exchange(&self, req: Request) -> std::result::Result<Response, TransportError> {
        self.send_scoped(&self.settings.endpoint, req, None)
    }

    /// Sends `req` with `body` and the configured headers (as [`Self::send_scoped`]); the
    /// body's acknowledged bytes go to `f`'s progress.
    pub(super) fn send_body(
        &self,
        f: &FileUpload,
        mut req: Request,
        body: Box<dyn SpanSource>,
    ) -> std::result::Result<Response, TransportError> {
        self.scope_headers(&self.settings.endpoint, &mut req);
        self.transport.send_file(&req, body, f.progress.delivery())
    }

    /// Sends `req` with the configured headers; credentials only to `endpoint`'s origin unless
    /// `auth_cross_origin` is set.
    pub(super) fn send_scoped(
        &self,
        endpoint: &str,
        mut req: Request,
        body: Option<Box<dyn std::io::Read + Send>>,
    ) -> std::result::Result<Response, TransportError> {
        self.scope_headers(endpoint, &mut req);
        self.transport.send(&req, body)
    }

    fn scope_headers(&self, endpoint: &str, req: &mut Request) {
        scope_headers(self.settings, endpoint, req);
    }
}

/// Sets the configured headers on `req`; credentials only when `req` goes to `endpoint`'s
/// origin, unless `auth_cross_origin` is set. (Also for `ferry check-config --probe`.)
pub(crate) fn scope_headers(settings: &Settings, endpoint: &str, req: &mut Request) {
    let cross = !url::same_origin(&req.url, endpoint);
    for h in &settings.headers {
        if cross && h.is_credential() && !settings.auth_cross_origin {
            log::debug!(
                "not sending {} to {}, another origin",
                h.name,
                url::redact(&req.url)
            );
            continue;
        }
        req.set(&h.name, h.value.clone());
    }
    log::debug!("{} {}", req.method.as_str(), url::redact(&req.url));
}
