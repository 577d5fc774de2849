//! CORS for browser clients (tus-js-client in a web page): which origins may call the broker,
//! and the headers that let them send tus headers and read `Location` and `Stream-Media-ID`.
//!
//! Only configured origins get `Access-Control-Allow-Origin` (the origin itself, or `*` when
//! `*` is configured); without a match the browser refuses to hand the answer to the page.

use super::http::Response;

/// Request headers a browser may send.
pub(crate) const ALLOW_HEADERS: &str =
    "Authorization, Upload-Length, Upload-Metadata, Tus-Resumable, Content-Type";
/// Response headers a page may read.
pub(crate) const EXPOSE_HEADERS: &str = "Location, Stream-Media-ID, Upload-Offset";
/// Methods allowed on the endpoint.
pub(crate) const ALLOW_METHODS: &str = "POST, OPTIONS";

/// The configured origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cors {
    allowed: Vec<String>,
}

impl Cors {
    /// `allowed`: lowercased origins (`https://app.example.com`) or `*`.
    pub(crate) fn new(allowed: Vec<String>) -> Self {
        Self { allowed }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, when it is allowed.
    pub(crate) fn allow(&self, origin: &str) -> Option<String> {
        let origin = origin.trim().to_ascii_lowercase();
        if self.allowed.contains(&origin) {
            Some(origin)
        } else if self.allowed.iter().any(|a| a == "*") {
            Some("*".into())
        } else {
            None
        }
    }

    /// Adds the headers for an actual (not preflight) response to a request from `origin`.
    pub(crate) fn decorate(&self, origin: Option<&str>, resp: &mut Response) {
        resp.set("Vary", "Origin");
        if let Some(value) = origin.and_then(|o| self.allow(o)) {
            resp.set("Access-Control-Allow-Origin", value);
            resp.set("Access-Control-Expose-Headers", EXPOSE_HEADERS);
        }
    }

    /// The answer to a preflight (`OPTIONS` with `Origin`): 204 with the allowances, or 403.
    pub(crate) fn preflight(&self, origin: &str) -> Response {
        let Some(value) = self.allow(origin) else {
            let mut r = Response::json_error(
                403,
                "this origin is not allowed (broker.allowed_origins)",
                serde_json::Value::Null,
            );
            r.set("Vary", "Origin");
            return r;
        };
        let mut r = Response::new(204);
        r.set("Access-Control-Allow-Origin", value);
        r.set("Access-Control-Allow-Methods", ALLOW_METHODS);
        r.set("Access-Control-Allow-Headers", ALLOW_HEADERS);
        r.set("Access-Control-Expose-Headers", EXPOSE_HEADERS);
        r.set("Access-Control-Max-Age", "600");
        r.set("Vary", "Origin");
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_origins() {
        let c = Cors::new(vec!["https://app.example.com".into()]);
        assert_eq!(
            c.allow("https://APP.example.com").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(c.allow("https://evil.example.com"), None);
        assert_eq!(c.preflight("https://evil.example.com").status, 403);
        let p = c.preflight("https://app.example.com");
        assert_eq!(p.status, 204);
        assert_eq!(
            p.header("Access-Control-Allow-Headers"),
            Some(ALLOW_HEADERS)
        );
        let mut r = Response::new(201);
        c.decorate(Some("https://app.example.com"), &mut r);
        assert_eq!(
            r.header("Access-Control-Expose-Headers"),
            Some(EXPOSE_HEADERS)
        );
        let mut r = Response::new(201);
        c.decorate(None, &mut r);
        assert_eq!(r.header("Access-Control-Allow-Origin"), None);
        assert_eq!(Cors::new(vec![]).allow("https://a"), None);
        assert_eq!(
            Cors::new(vec!["*".into()]).allow("https://a").as_deref(),
            Some("*")
        );
    }
}
