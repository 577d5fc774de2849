//! Response interpretation: what a server's answer means for the upload, as an [`Outcome`].
//!
//! Servers disagree on status codes (protocol.md §1.3, §1.6), so the rules are: trust
//! `Upload-Offset`, not the status; anything that may pass (locks, overload, 5xx, a request the
//! server killed because a newer one arrived) is [`Outcome::Retry`]; a lost upload is
//! [`Outcome::Gone`]; only answers that retrying cannot change are [`Outcome::Fail`].

use std::time::SystemTime;

use super::{httpdate, url, Method};

/// One HTTP response: status, headers and (a prefix of) the body, as a value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers as received.
    pub headers: Vec<(String, String)>,
    /// The start of the body as text (for error messages).
    pub body: String,
}

impl Response {
    /// A header's value (case-insensitive name, first occurrence).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// The server's message for a log line: status plus the first line of the body.
    pub fn message(&self) -> String {
        let text: String = self.body.split_whitespace().collect::<Vec<_>>().join(" ");
        let text: String = text.chars().take(200).collect();
        if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {text}", self.status)
        }
    }

    fn expires(&self) -> Option<SystemTime> {
        self.header("Upload-Expires").and_then(httpdate::parse)
    }
}

/// What the server told us in answer to OPTIONS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerCaps {
    /// True when OPTIONS answered; false when the server refused it (we then assume core + creation).
    pub discovered: bool,
    /// `Tus-Extension` tokens, lowercased.
    pub extensions: Vec<String>,
    /// `Tus-Max-Size`.
    pub max_size: Option<u64>,
    /// `Tus-Checksum-Algorithm` tokens.
    pub checksum_algorithms: Vec<String>,
}

impl ServerCaps {
    /// True when the server advertised extension `name`.
    pub fn supports(&self, name: &str) -> bool {
        self.extensions.iter().any(|e| e == name)
    }

    /// Reads an OPTIONS response; a refusal (any non-2xx) gives undiscovered, empty capabilities.
    pub fn from_options(resp: &Response) -> Self {
        if !(200..300).contains(&resp.status) {
            return Self::default();
        }
        let list = |name| -> Vec<String> {
            resp.header(name)
                .map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
                .into_iter()
                .flatten()
                .filter(|t| !t.is_empty())
                .collect()
        };
        Self {
            discovered: true,
            extensions: list("Tus-Extension"),
            max_size: resp.header("Tus-Max-Size").and_then(parse_u64),
            checksum_algorithms: list("Tus-Checksum-Algorithm"),
        }
    }
}

/// What an answer means for the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The upload exists at `url` and holds `offset` bytes (creation).
    Created {
        /// Absolute upload URL.
        url: String,
        /// Bytes the server took with creation-with-upload (0 otherwise).
        offset: u64,
        /// `Upload-Expires`, when given.
        expires: Option<SystemTime>,
    },
    /// The server holds `offset` bytes (HEAD or PATCH).
    Offset {
        /// Confirmed offset.
        offset: u64,
        /// `Upload-Expires`, when given.
        expires: Option<SystemTime>,
    },
    /// 409: our offset is not the server's; ask again with HEAD.
    Conflict,
    /// The upload no longer exists (404, 410, or a length that is not ours): create a new one.
    Gone {
        /// Why, for the log.
        why: String,
    },
    /// May pass: back off, ask for the offset, go on.
    Retry {
        /// Why, for the log.
        why: String,
        /// The raw `Retry-After` header, when given.
        retry_after: Option<String>,
    },
    /// 460 (or rustus' 417) to a checksummed PATCH: the chunk was discarded; send it again.
    ChecksumMismatch,
    /// 400 to a checksummed request: the server will not check this algorithm; send without.
    ChecksumRejected {
        /// The server's message.
        why: String,
    },
    /// 413 to a PATCH: probably a proxy body limit; send smaller chunks.
    TooLarge {
        /// The server's message.
        why: String,
    },
    /// Retrying cannot help: the file fails with this status and message.
    Fail {
        /// Status code.
        status: u16,
        /// The server's message, made readable.
        why: String,
    },
}

/// What a request carried, needed to judge its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Offset the body started at.
    pub offset: u64,
    /// Body bytes sent.
    pub len: u64,
    /// Whole upload length (the file size).
    pub length: u64,
    /// True when an `Upload-Checksum` was sent.
    pub checksum: bool,
}

/// Interprets the answer to `POST <request_url>` (creation, maybe with upload).
pub fn created(resp: &Response, request_url: &str, sent: Sent) -> Outcome {
    if !matches!(resp.status, 200 | 201) {
        return failure(resp, Method::Post, sent.checksum);
    }
    if resp.header("Tus-Resumable").is_none() && resp.header("Location").is_none() {
        return retry(
            format!(
                "creation answered {} without tus headers (a captive portal or proxy?)",
                resp.message()
            ),
            None,
        );
    }
    let Some(location) = resp.header("Location") else {
        return fail(resp, "creation answered without a Location header");
    };
    let url = match url::resolve(request_url, location) {
        Ok(u) => u,
        Err(e) => return fail(resp, &format!("unusable Location: {e}")),
    };
    let offset = match (sent.len, resp.header("Upload-Offset")) {
        (0, _) => 0,
        (_, None) => 0, // server ignored the body: it holds nothing yet
        (len, Some(v)) => match parse_u64(v) {
            Some(o) if o <= len => o,
            _ => {
                return fail(
                    resp,
                    &format!("creation answered a bad Upload-Offset {v:?}"),
                )
            }
        },
    };
    Outcome::Created {
        url,
        offset,
        expires: resp.expires(),
    }
}

/// Interprets the answer to `HEAD <upload>` for a file of `length` bytes.
pub fn head(resp: &Response, length: u64) -> Outcome {
    if !(200..300).contains(&resp.status) {
        return failure(resp, Method::Head, false);
    }
    let Some(offset) = resp.header("Upload-Offset").and_then(parse_u64) else {
        return invalid(resp, "HEAD answered without a valid Upload-Offset");
    };
    if let Some(server_len) = resp.header("Upload-Length").and_then(parse_u64) {
        if server_len != length {
            return Outcome::Gone {
                why: format!("the server's upload is {server_len} bytes long, the file {length}"),
            };
        }
    }
    if offset > length {
        return invalid(
            resp,
            &format!("HEAD offset {offset} is past the file's {length} bytes"),
        );
    }
    Outcome::Offset {
        offset,
        expires: resp.expires(),
    }
}

/// Interprets the answer to a PATCH that carried `sent`.
pub fn patch(resp: &Response, sent: Sent) -> Outcome {
    if !(200..300).contains(&resp.status) {
        return failure(resp, Method::Patch, sent.checksum);
    }
    let Some(offset) = resp.header("Upload-Offset").and_then(parse_u64) else {
        return invalid(resp, "PATCH answered without a valid Upload-Offset");
    };
    let max = sent.offset + sent.len;
    if offset < sent.offset || offset > max || offset > sent.length {
        return invalid(
            resp,
            &format!(
                "PATCH offset {offset} outside {}..={max} of what was sent",
                sent.offset
            ),
        );
    }
    Outcome::Offset {
        offset,
        expires: resp.expires(),
    }
}

/// Interprets the answer to DELETE: `Offset { 0 }` stands for "gone now", as do 404 and 410.
pub fn deleted(resp: &Response) -> Outcome {
    match resp.status {
        200..=299 | 404 | 410 => Outcome::Gone {
            why: "terminated".into(),
        },
        _ => failure(resp, Method::Delete, false),
    }
}

/// Maps a non-success status to an outcome for `method`.
fn failure(resp: &Response, method: Method, checksum_sent: bool) -> Outcome {
    let retry_after = resp.header("Retry-After").map(str::to_string);
    let msg = resp.message();
    let lower = resp.body.to_ascii_lowercase();
    match resp.status {
        409 if method == Method::Patch => Outcome::Conflict,
        404 | 410 if matches!(method, Method::Head | Method::Patch) => Outcome::Gone { why: msg },
        460 if checksum_sent => Outcome::ChecksumMismatch,
        417 if checksum_sent => Outcome::ChecksumMismatch,
        400 if ["interrupted", "aborted", "unexpected eof", "unexpected_eof"]
            .iter()
            .any(|w| lower.contains(w)) =>
        {
            retry(format!("server stopped the request ({msg})"), retry_after)
        }
        400 if checksum_sent => Outcome::ChecksumRejected { why: msg },
        413 if method == Method::Patch => Outcome::TooLarge { why: msg },
        412 => {
            let versions = resp.header("Tus-Version").unwrap_or("not given");
            fail(
                resp,
                &format!("server does not speak tus 1.0.0 (its Tus-Version: {versions})"),
            )
        }
        408 | 423 | 425 | 429 => retry(msg, retry_after),
        501 => fail(resp, "server does not implement this request"),
        500..=599 => retry(msg, retry_after),
        300..=399 => {
            let to = resp.header("Location").unwrap_or("?");
            fail(
                resp,
                &format!(
                    "server redirected to {}; set the endpoint to the final URL",
                    url::redact(to)
                ),
            )
        }
        _ => Outcome::Fail {
            status: resp.status,
            why: msg,
        },
    }
}

fn retry(why: String, retry_after: Option<String>) -> Outcome {
    Outcome::Retry { why, retry_after }
}

fn fail(resp: &Response, why: &str) -> Outcome {
    Outcome::Fail {
        status: resp.status,
        why: format!("{why} ({})", resp.message()),
    }
}

/// A success status that is not a tus answer (a proxy or captive portal): retry via HEAD.
fn invalid(resp: &Response, why: &str) -> Outcome {
    retry(format!("{why} ({})", resp.message()), None)
}

/// Parses a non-negative decimal integer header value strictly (digits only).
pub fn parse_u64(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        }
    }

    const EP: &str = "http://127.0.0.1:1080/files/";
    const SENT: Sent = Sent {
        offset: 100,
        len: 50,
        length: 1000,
        checksum: false,
    };
    const SUMMED: Sent = Sent {
        checksum: true,
        ..SENT
    };

    fn is_retry(o: &Outcome) -> bool {
        matches!(o, Outcome::Retry { .. })
    }

    #[test]
    fn options_reads_capabilities_and_tolerates_refusal() {
        let r = resp(
            204,
            &[
                ("Tus-Version", "1.0.0"),
                (
                    "Tus-Extension",
                    "creation, creation-with-upload,Termination,checksum",
                ),
                ("Tus-Max-Size", "1073741824"),
                ("Tus-Checksum-Algorithm", "md5,sha1,sha256"),
            ],
            "",
        );
        let caps = ServerCaps::from_options(&r);
        assert!(caps.discovered);
        assert!(caps.supports("termination") && caps.supports("creation-with-upload"));
        assert!(!caps.supports("expiration"));
        assert_eq!(caps.max_size, Some(1 << 30));
        assert_eq!(caps.checksum_algorithms, ["md5", "sha1", "sha256"]);
        assert_eq!(
            ServerCaps::from_options(&resp(405, &[], "")),
            ServerCaps::default()
        );
        assert!(ServerCaps::from_options(&resp(200, &[], "")).discovered);
    }

    #[test]
    fn created_resolves_every_location_form() {
        for (loc, want) in [
            (
                "http://127.0.0.1:1080/files/a",
                "http://127.0.0.1:1080/files/a",
            ),
            ("/files/b", "http://127.0.0.1:1080/files/b"),
            ("//127.0.0.1:9/files/c", "http://127.0.0.1:9/files/c"),
        ] {
            let r = resp(201, &[("Location", loc), ("Tus-Resumable", "1.0.0")], "");
            let plain = Sent {
                offset: 0,
                len: 0,
                length: 10,
                checksum: false,
            };
            assert_eq!(
                created(&r, EP, plain),
                Outcome::Created {
                    url: want.into(),
                    offset: 0,
                    expires: None
                }
            );
        }
    }

    #[test]
    fn created_with_upload_reads_offset_and_expiry() {
        let r = resp(
            201,
            &[
                ("Location", "/files/a"),
                ("Upload-Offset", "7"),
                ("Upload-Expires", "Wed, 25 Jun 2014 16:00:00 GMT"),
            ],
            "",
        );
        let sent = Sent {
            offset: 0,
            len: 10,
            length: 10,
            checksum: false,
        };
        let Outcome::Created {
            offset, expires, ..
        } = created(&r, EP, sent)
        else {
            panic!()
        };
        assert_eq!(offset, 7);
        assert_eq!(expires, httpdate::parse("Wed, 25 Jun 2014 16:00:00 GMT"));
        let over = resp(201, &[("Location", "/f/a"), ("Upload-Offset", "11")], "");
        assert!(matches!(created(&over, EP, sent), Outcome::Fail { .. }));
    }

    #[test]
    fn created_without_location_fails_but_captive_portal_retries() {
        let plain = Sent {
            offset: 0,
            len: 0,
            length: 10,
            checksum: false,
        };
        let tus = resp(201, &[("Tus-Resumable", "1.0.0")], "");
        assert!(matches!(
            created(&tus, EP, plain),
            Outcome::Fail { status: 201, .. }
        ));
        let portal = resp(200, &[("Content-Type", "text/html")], "<html>login</html>");
        assert!(is_retry(&created(&portal, EP, plain)));
        let bad = resp(201, &[("Location", "ftp://x/1")], "");
        assert!(matches!(created(&bad, EP, plain), Outcome::Fail { .. }));
        // Found by fuzzing: a Location no request can go to failed every request after it.
        let unsendable = resp(201, &[("Location", "/files/a b")], "");
        let Outcome::Fail { why, .. } = created(&unsendable, EP, plain) else {
            panic!()
        };
        assert!(
            why.contains("unusable Location") && why.contains("%20"),
            "{why}"
        );
    }

    #[test]
    fn creation_statuses() {
        let plain = Sent {
            offset: 0,
            len: 0,
            length: 10,
            checksum: false,
        };
        let c = |s| created(&resp(s, &[], "nope"), EP, plain);
        assert!(
            matches!(c(413), Outcome::Fail { status: 413, .. }),
            "413 on POST is final"
        );
        assert!(
            matches!(c(404), Outcome::Fail { status: 404, .. }),
            "no creation endpoint"
        );
        assert!(matches!(c(409), Outcome::Fail { status: 409, .. }));
        assert!(matches!(c(401), Outcome::Fail { status: 401, .. }));
        assert!(is_retry(&c(503)));
        assert!(is_retry(&c(429)));
    }

    #[test]
    fn head_requires_a_sane_offset() {
        let ok = resp(
            200,
            &[("Upload-Offset", "10"), ("Upload-Length", "1000")],
            "",
        );
        assert_eq!(
            head(&ok, 1000),
            Outcome::Offset {
                offset: 10,
                expires: None
            }
        );
        let no_len = resp(204, &[("Upload-Offset", "1000")], "");
        assert_eq!(
            head(&no_len, 1000),
            Outcome::Offset {
                offset: 1000,
                expires: None
            }
        );
        for bad in [
            vec![],
            vec![("Upload-Offset", "-1")],
            vec![("Upload-Offset", "1001")],
            vec![("Upload-Offset", "1e3")],
        ] {
            assert!(is_retry(&head(&resp(200, &bad, ""), 1000)), "{bad:?}");
        }
        let other = resp(200, &[("Upload-Offset", "0"), ("Upload-Length", "5")], "");
        assert!(matches!(head(&other, 1000), Outcome::Gone { .. }));
    }

    #[test]
    fn head_statuses() {
        let h = |s| head(&resp(s, &[], ""), 1000);
        assert!(matches!(h(404), Outcome::Gone { .. }));
        assert!(matches!(h(410), Outcome::Gone { .. }));
        assert!(
            matches!(h(403), Outcome::Fail { status: 403, .. }),
            "403 may be auth: keep the URL"
        );
        assert!(is_retry(&h(423)));
        assert!(is_retry(&h(500)));
    }

    #[test]
    fn patch_offset_must_lie_within_what_was_sent() {
        let p = |o: &str| patch(&resp(204, &[("Upload-Offset", o)], ""), SENT);
        assert_eq!(
            p("150"),
            Outcome::Offset {
                offset: 150,
                expires: None
            }
        );
        assert_eq!(
            p("120"),
            Outcome::Offset {
                offset: 120,
                expires: None
            },
            "partial acceptance"
        );
        assert_eq!(
            p("100"),
            Outcome::Offset {
                offset: 100,
                expires: None
            }
        );
        assert!(is_retry(&p("99")));
        assert!(is_retry(&p("151")));
        assert!(is_retry(&p("x")));
        let at_end = Sent {
            offset: 990,
            len: 50,
            length: 1000,
            checksum: false,
        };
        assert!(is_retry(&patch(
            &resp(204, &[("Upload-Offset", "1001")], ""),
            at_end
        )));
        assert!(is_retry(&patch(&resp(204, &[], ""), SENT)));
    }

    #[test]
    fn every_status_of_the_reference_table_on_patch() {
        let p = |s: u16, body: &str, sent| patch(&resp(s, &[("Retry-After", "7")], body), sent);
        assert_eq!(p(409, "", SENT), Outcome::Conflict);
        assert!(matches!(p(404, "", SENT), Outcome::Gone { .. }));
        assert!(matches!(p(410, "", SENT), Outcome::Gone { .. }));
        assert_eq!(p(460, "", SUMMED), Outcome::ChecksumMismatch);
        assert_eq!(p(417, "", SUMMED), Outcome::ChecksumMismatch, "rustus");
        assert!(matches!(
            p(417, "", SENT),
            Outcome::Fail { status: 417, .. }
        ));
        assert!(matches!(
            p(460, "", SENT),
            Outcome::Fail { status: 460, .. }
        ));
        assert!(matches!(
            p(400, "unsupported algo", SUMMED),
            Outcome::ChecksumRejected { .. }
        ));
        assert!(matches!(
            p(400, "bad offset", SENT),
            Outcome::Fail { status: 400, .. }
        ));
        for body in [
            "ERR_UPLOAD_INTERRUPTED",
            "Request aborted",
            "ERR_UNEXPECTED_EOF",
        ] {
            assert!(is_retry(&p(400, body, SENT)), "{body}");
        }
        assert!(matches!(p(413, "", SENT), Outcome::TooLarge { .. }));
        let Outcome::Fail { why, .. } = patch(&resp(412, &[("Tus-Version", "0.2.2")], ""), SENT)
        else {
            panic!()
        };
        assert!(why.contains("0.2.2"), "{why}");
        for s in [401, 403, 402, 415, 418] {
            assert!(
                matches!(p(s, "x", SENT), Outcome::Fail { status, .. } if status == s),
                "{s}"
            );
        }
        for s in [408, 423, 429, 500, 502, 503, 504] {
            let o = p(s, "", SENT);
            assert_eq!(
                o,
                Outcome::Retry {
                    why: format!("HTTP {s}"),
                    retry_after: Some("7".into())
                },
                "{s}"
            );
        }
        assert!(matches!(
            p(501, "", SENT),
            Outcome::Fail { status: 501, .. }
        ));
        assert!(matches!(
            p(307, "", SENT),
            Outcome::Fail { status: 307, .. }
        ));
    }

    #[test]
    fn delete_accepts_gone_as_done() {
        for s in [204, 200, 404, 410] {
            assert!(
                matches!(deleted(&resp(s, &[], "")), Outcome::Gone { .. }),
                "{s}"
            );
        }
        assert!(is_retry(&deleted(&resp(503, &[], ""))));
        assert!(matches!(deleted(&resp(403, &[], "")), Outcome::Fail { .. }));
    }

    #[test]
    fn message_is_one_short_line() {
        let r = resp(500, &[], "line one\n  line two\t");
        assert_eq!(r.message(), "HTTP 500: line one line two");
        assert_eq!(resp(502, &[], "").message(), "HTTP 502");
        assert_eq!(
            resp(502, &[], &"x".repeat(500)).message().len(),
            "HTTP 502: ".len() + 200
        );
    }
}
