//! Request builders: the exact headers each tus operation needs.

use super::{OFFSET_OCTET_STREAM, TUS_RESUMABLE};

/// HTTP methods tus uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Discovery.
    Options,
    /// Creation.
    Post,
    /// Offset retrieval.
    Head,
    /// Data transfer.
    Patch,
    /// Termination.
    Delete,
    /// Not tus: `ferry check-config --probe` asks a URL broker's health with it.
    Get,
}

impl Method {
    /// The method name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Options => "OPTIONS",
            Self::Post => "POST",
            Self::Head => "HEAD",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::Get => "GET",
        }
    }
}

/// What goes in the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (`Content-Length: 0` where a length is due).
    Empty,
    /// `len` bytes of the source file starting at `offset`, streamed by the transport.
    File {
        /// First byte of the file to send.
        offset: u64,
        /// Number of bytes; sent as `Content-Length`.
        len: u64,
    },
}

impl Body {
    /// Number of body bytes.
    pub fn len(&self) -> u64 {
        match self {
            Self::Empty => 0,
            Self::File { len, .. } => *len,
        }
    }

    /// True when there are no body bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One HTTP request, as a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Absolute URL.
    pub url: String,
    /// Headers in the order they are sent.
    pub headers: Vec<(String, String)>,
    /// Body description.
    pub body: Body,
}

impl Request {
    fn new(method: Method, url: &str) -> Self {
        let mut req = Self {
            method,
            url: url.to_string(),
            headers: Vec::new(),
            body: Body::Empty,
        };
        if method != Method::Options {
            req.set("Tus-Resumable", TUS_RESUMABLE);
        }
        req
    }

    /// Adds a header.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn with_body(mut self, body: Body, checksum: Option<String>) -> Self {
        self.set("Content-Type", OFFSET_OCTET_STREAM);
        if let Some(c) = checksum {
            self.set("Upload-Checksum", c);
        }
        self.body = body;
        self
    }
}

/// `OPTIONS <endpoint>`: discovery (no `Tus-Resumable`, as the spec asks).
pub fn options(endpoint: &str) -> Request {
    Request::new(Method::Options, endpoint)
}

/// `POST <endpoint>`: create an upload of `length` bytes.
///
/// With `first` (creation-with-upload) the body carries the first `first.len()` bytes of the
/// file, with an optional `Upload-Checksum` over them.
pub fn create(
    endpoint: &str,
    length: u64,
    metadata: Option<&str>,
    first: Option<(u64, Option<String>)>,
) -> Request {
    let mut req = Request::new(Method::Post, endpoint);
    req.set("Upload-Length", length.to_string());
    if let Some(m) = metadata {
        req.set("Upload-Metadata", m);
    }
    match first {
        Some((len, checksum)) if len > 0 => req.with_body(Body::File { offset: 0, len }, checksum),
        _ => req,
    }
}

/// `HEAD <upload>`: ask how many bytes the server holds.
pub fn head(url: &str) -> Request {
    Request::new(Method::Head, url)
}

/// `PATCH <upload>`: send `len` bytes of the file from `offset`.
pub fn patch(url: &str, offset: u64, len: u64, checksum: Option<String>) -> Request {
    let mut req = Request::new(Method::Patch, url);
    req.set("Upload-Offset", offset.to_string());
    req.with_body(Body::File { offset, len }, checksum)
}

/// `DELETE <upload>`: terminate an upload.
pub fn delete(url: &str) -> Request {
    Request::new(Method::Delete, url)
}

/// `GET <url>`: not tus; a health check.
pub fn get(url: &str) -> Request {
    Request::new(Method::Get, url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tus_resumable_on_everything_but_options() {
        let u = "http://h/files/1";
        assert_eq!(options(u).header("tus-resumable"), None);
        for req in [
            create(u, 1, None, None),
            head(u),
            patch(u, 0, 1, None),
            delete(u),
        ] {
            assert_eq!(
                req.header("Tus-Resumable"),
                Some("1.0.0"),
                "{:?}",
                req.method
            );
        }
    }

    #[test]
    fn patch_carries_offset_type_checksum_and_body_range() {
        let req = patch("http://h/f/1", 5, 7, Some("sha1 x".into()));
        assert_eq!(req.method, Method::Patch);
        assert_eq!(req.header("Upload-Offset"), Some("5"));
        assert_eq!(
            req.header("Content-Type"),
            Some("application/offset+octet-stream")
        );
        assert_eq!(req.header("Upload-Checksum"), Some("sha1 x"));
        assert_eq!(req.body, Body::File { offset: 5, len: 7 });
    }

    #[test]
    fn create_plain_and_with_upload() {
        let plain = create("http://h/f/", 10, Some("filename YQ=="), None);
        assert_eq!(plain.header("Upload-Length"), Some("10"));
        assert_eq!(plain.header("Upload-Metadata"), Some("filename YQ=="));
        assert_eq!(plain.header("Content-Type"), None);
        assert!(plain.body.is_empty());
        let cwu = create("http://h/f/", 10, None, Some((10, None)));
        assert_eq!(
            cwu.header("Content-Type"),
            Some("application/offset+octet-stream")
        );
        assert_eq!(cwu.body, Body::File { offset: 0, len: 10 });
        let empty = create("http://h/f/", 0, None, Some((0, None)));
        assert_eq!(
            empty.header("Content-Type"),
            None,
            "no body for an empty file"
        );
    }
}
