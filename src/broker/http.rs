//! HTTP/1.1 messages for the broker's small server: reading a request head within a size
//! limit (parsed by `httparse`), and writing a response. Works on any `BufRead`/`Write`, so it
//! is tested on bytes.
//!
//! Only what the broker needs: no request bodies beyond a small `Content-Length` (read and
//! dropped), no `Transfer-Encoding`, no pipelining guarantees beyond sequential keep-alive.

use std::io::{self, BufRead, Write};

/// Largest request line plus headers (bigger → 431).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in one request (more → 431).
pub(crate) const MAX_HEADERS: usize = 100;

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// Method, as sent (case-sensitive).
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// True for HTTP/1.1, false for HTTP/1.0.
    pub http11: bool,
    /// Header fields in order, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A header's value (case-insensitive name, first occurrence).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The target without its query string (what log lines show).
    pub(crate) fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or_default()
    }

    /// True when the client wants the connection kept open.
    pub(crate) fn keep_alive(&self) -> bool {
        let tokens = |v: &str, t: &str| v.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        match self.header("Connection") {
            Some(v) if tokens(v, "close") => false,
            Some(v) if tokens(v, "keep-alive") => true,
            _ => self.http11,
        }
    }

    /// The body length: `Ok(0)` without one; `Err` for what the broker does not read.
    pub(crate) fn body_length(&self) -> Result<u64, ReadError> {
        if self.header("Transfer-Encoding").is_some() {
            return Err(ReadError::Unsupported("Transfer-Encoding is not supported"));
        }
        let mut lengths = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
            .map(|(_, v)| v.as_str());
        let Some(first) = lengths.next() else {
            return Ok(0);
        };
        if lengths.any(|v| v != first) || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReadError::Bad("bad Content-Length".into()));
        }
        first
            .parse()
            .map_err(|_| ReadError::Bad("bad Content-Length".into()))
    }
}

/// Why no request was read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The connection closed cleanly before a request began.
    Closed,
    /// The head is larger than [`MAX_HEAD_BYTES`] or has too many fields (431).
    TooLarge,
    /// Not HTTP/1.x we can read (400).
    Bad(String),
    /// Valid HTTP the broker does not implement (501).
    Unsupported(&'static str),
    /// The client was too slow (its read timed out).
    TimedOut,
    /// The connection failed (the connection is closed; the reason is not reported).
    Io,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Self::TimedOut,
            _ => Self::Io,
        }
    }
}

/// Reads one request head (up to and including the empty line); the body stays in `r`.
pub(crate) fn read_head(r: &mut impl BufRead) -> Result<Request, ReadError> {
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(if head.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Bad("connection closed in the middle of a request".into())
            });
        }
        let mut used = 0;
        let mut done = false;
        for &b in buf {
            used += 1;
            head.push(b);
            if b == b'\n' {
                // Empty lines before a request line are allowed (RFC 9112 §2.2).
                if head == b"\n" || head == b"\r\n" {
                    head.clear();
                } else if head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n") {
                    done = true;
                    break;
                }
            }
            if head.len() > MAX_HEAD_BYTES {
                break;
            }
        }
        r.consume(used);
        if head.len() > MAX_HEAD_BYTES {
            return Err(ReadError::TooLarge);
        }
        if done {
            return parse_head(&head);
        }
    }
}

/// Parses a whole head (httparse), then what httparse leaves to the server: field values are
/// UTF-8, trimmed of spaces and tabs only (never of Unicode whitespace), and there is exactly
/// one `Host` (none is allowed in HTTP/1.0), as RFC 9112 §3.2 asks.
fn parse_head(head: &[u8]) -> Result<Request, ReadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(ReadError::Bad("malformed request head".into())),
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::TooLarge),
        Err(httparse::Error::Version) => {
            return Err(ReadError::Bad(
                "only HTTP/1.0 and HTTP/1.1 are served".into(),
            ))
        }
        Err(e) => return Err(ReadError::Bad(format!("malformed request head: {e}"))),
    }
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(ReadError::Bad("bad request line".into()));
    };
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let value = std::str::from_utf8(field.value)
            .map_err(|_| ReadError::Bad(format!("the {} header is not UTF-8", field.name)))?;
        headers.push((
            field.name.to_string(),
            value.trim_matches([' ', '\t']).to_string(),
        ));
    }
    let req = Request {
        method: method.to_string(),
        target: target.to_string(),
        http11: version == 1,
        headers,
    };
    match req
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Host"))
        .count()
    {
        0 if req.http11 => Err(ReadError::Bad("the Host header is missing".into())),
        0 | 1 => Ok(req),
        _ => Err(ReadError::Bad("more than one Host header".into())),
    }
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields (without `Content-Length` and `Connection`, which [`write()`] adds).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response.
    pub(crate) fn new(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// A JSON error body `{"error": message}` plus `extra` fields.
    pub(crate) fn json_error(status: u16, message: &str, extra: serde_json::Value) -> Self {
        let mut body = serde_json::json!({ "error": message });
        if let (Some(b), serde_json::Value::Object(more)) = (body.as_object_mut(), extra) {
            b.extend(more);
        }
        let mut r = Self::new(status);
        r.set("Content-Type", "application/json");
        r.body = body.to_string().into_bytes();
        r
    }

    /// Adds a header field.
    pub(crate) fn set(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push((name.to_string(), value.into()));
    }

    /// A header's value (case-insensitive name).
    #[cfg(test)]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Writes `resp`; `head_only` leaves the body out (HEAD requests).
pub(crate) fn write(
    w: &mut impl Write,
    resp: &Response,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + resp.body.len());
    write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status))?;
    for (n, v) in &resp.headers {
        // A value with a line break would split the response: such a value is a bug upstream.
        if !v.contains(['\r', '\n']) {
            write!(out, "{n}: {v}\r\n")?;
        }
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    write!(
        out,
        "Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
        resp.body.len()
    )?;
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    w.write_all(&out)?;
    w.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Request, ReadError> {
        read_head(&mut io::BufReader::with_capacity(7, bytes))
    }

    #[test]
    fn reads_a_head_and_leaves_the_body() {
        let mut r = io::BufReader::new(
            &b"\r\nPOST /p?x=1 HTTP/1.1\r\nHost: h\r\nUpload-Length:  5 \r\nContent-Length: 2\r\n\r\nokGET"[..],
        );
        let req = read_head(&mut r).unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path(), "/p");
        assert_eq!(req.header("upload-length"), Some("5"));
        assert_eq!(req.body_length().unwrap(), 2);
        assert!(req.keep_alive());
        let mut rest = String::new();
        io::Read::read_to_string(&mut r, &mut rest).unwrap();
        assert_eq!(rest, "okGET");
    }

    #[test]
    fn bare_lf_http10_and_connection_tokens() {
        let req = read(b"GET / HTTP/1.0\nConnection: Keep-Alive\n\n").unwrap();
        assert!(!req.http11 && req.keep_alive());
        let req = read(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x, close\r\n\r\n").unwrap();
        assert!(!req.keep_alive());
    }

    #[test]
    fn limits_and_malformed_heads() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert!(matches!(read(big.as_bytes()), Err(ReadError::TooLarge)));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n");
        assert!(matches!(read(many.as_bytes()), Err(ReadError::TooLarge)));
        assert!(matches!(read(b""), Err(ReadError::Closed)));
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\nHost: h\r\n\r\n",
            b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX: 1\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h",
        ] {
            assert!(matches!(read(bad), Err(ReadError::Bad(_))), "{bad:?}");
        }
        let te = read(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert!(matches!(te.body_length(), Err(ReadError::Unsupported(_))));
        let cl =
            read(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert!(matches!(cl.unwrap().body_length(), Err(ReadError::Bad(_))));
    }

    /// Heads the old hand-written parser took (issue 15, item 5) and others a strict parser
    /// must refuse: each is a 400, with what the message names.
    #[test]
    fn refuses_what_a_lenient_parser_let_through() {
        for (head, names) in [
            (
                &b"GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n"[..],
                "header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n",
                "header value",
            ),
            (b"GET / HTTP/1.1\rHost: h\r\n\r\n", ""),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
                "header value",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x7fb\r\n\r\n",
                "header value",
            ),
            (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", ""),
            (b"GET / HTTP/1.1\r\n\r\n", "Host header is missing"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                "more than one Host",
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n",
                "more than one Host",
            ),
            (b"GET / HTTP/1.1\r\nHost: h\r\nX: \xff\r\n\r\n", "not UTF-8"),
            (b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", ""),
            (b"G@T / HTTP/1.1\r\nHost: h\r\n\r\n", ""),
            (
                b"GET / HTTP/1.2\r\nHost: h\r\n\r\n",
                "only HTTP/1.0 and HTTP/1.1",
            ),
        ] {
            match read(head) {
                Err(ReadError::Bad(m)) => assert!(m.contains(names), "{head:?}: {m}"),
                other => panic!("{head:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn trims_only_spaces_and_tabs() {
        // U+00A0 (no-break space) before the digits: the old parser's trim() made this 5.
        let nbsp = read("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \u{a0}5\r\n\r\n".as_bytes())
            .unwrap();
        assert_eq!(nbsp.header("Content-Length"), Some("\u{a0}5"));
        assert!(matches!(nbsp.body_length(), Err(ReadError::Bad(_))));
        let em = read("POST / HTTP/1.1\r\nHost: h\r\nUpload-Length: 5\u{2003}\r\n\r\n".as_bytes())
            .unwrap();
        assert_eq!(em.header("Upload-Length"), Some("5\u{2003}"));
        let tabs = read(b"GET / HTTP/1.1\r\nHost:\t h \t\r\nX-Empty:\r\n\r\n").unwrap();
        assert_eq!(tabs.header("host"), Some("h"));
        assert_eq!(tabs.header("x-empty"), Some(""));
        let http10 = read(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!http10.http11, "HTTP/1.0 needs no Host");
    }

    #[test]
    fn writes_length_and_connection_and_drops_broken_values() {
        let mut r = Response::json_error(400, "no", serde_json::json!({ "k": 1 }));
        r.set("X-Bad", "a\r\nInjected: 1");
        let mut out = Vec::new();
        write(&mut out, &r, false, false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"));
        assert!(text.contains("Content-Length: 20\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with(r#"{"error":"no","k":1}"#), "{text}");
        assert!(!text.contains("Injected"));
    }
}
