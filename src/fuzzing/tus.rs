//! What a tus server sends: response headers (offsets, lengths, expiry, `Location`,
//! `Retry-After`), `Upload-Metadata` and HTTP dates.

use std::time::{Duration, UNIX_EPOCH};

use super::{head_and_body, lines};
use crate::backoff::{parse_retry_after, MAX_RETRY_AFTER};
use crate::tus::response::{self, Sent};
use crate::tus::{httpdate, metadata, url, Outcome, Response, ServerCaps};

/// 2026-01-01T00:00:00Z: the "now" that `Retry-After` dates are read against.
const NOW_UNIX: u64 = 1_767_225_600;

/// One exchange: `<request URL> <offset> <len> <length> [checksum]` on the first line (what
/// was sent), then the server's answer as on the wire (status line, fields, empty line, body).
/// Every interpretation of the answer is run; each must keep its promises.
pub fn tus_response(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (sent_line, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let (base, sent) = sent(sent_line);
    let (status_line, headers, body) = head_and_body(rest);
    let resp = Response {
        status: status(status_line),
        headers,
        body,
    };
    let _ = ServerCaps::from_options(&resp);
    let _ = response::deleted(&resp);
    check_message(&resp);
    check_head(&resp, sent.length);
    check_patch(&resp, sent);
    if url::validate(&base).is_ok() {
        check_created(&resp, &base, sent);
        if let Some(location) = resp.header("Location") {
            check_resolved(&base, url::resolve(&base, location));
        }
    }
    if let Some(v) = resp.header("Retry-After") {
        check_retry_after(v);
    }
}

/// The request line of the input; numbers that are missing or too big read as a small upload.
fn sent(line: &str) -> (String, Sent) {
    let mut words = line.split_whitespace();
    let base = words
        .next()
        .unwrap_or("http://127.0.0.1:1080/files/")
        .to_string();
    let mut number = |default: u64| words.next().and_then(|w| w.parse().ok()).unwrap_or(default);
    let (offset, len, length) = (number(0), number(0), number(1000));
    let offset = offset.min(length);
    let sent = Sent {
        offset,
        len: len.min(length - offset),
        length,
        checksum: line.contains("checksum"),
    };
    (base, sent)
}

/// The status code of `HTTP/1.1 204 No Content` (or of a bare `204`); 0 when there is none.
fn status(line: &str) -> u16 {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    let code = if first.starts_with("HTTP/") {
        words.next().unwrap_or_default()
    } else {
        first
    };
    code.parse().unwrap_or(0)
}

fn check_message(resp: &Response) {
    let m = resp.message();
    let limit = format!("HTTP {}: ", resp.status).chars().count() + 200;
    assert!(m.chars().count() <= limit, "message too long: {m:?}");
    assert!(!m.contains(['\n', '\r']), "message spans lines: {m:?}");
}

fn check_head(resp: &Response, length: u64) {
    if let Outcome::Offset { offset, .. } = response::head(resp, length) {
        assert!(
            offset <= length,
            "HEAD offset {offset} past length {length}"
        );
    }
}

fn check_patch(resp: &Response, sent: Sent) {
    if let Outcome::Offset { offset, .. } = response::patch(resp, sent) {
        let end = sent.offset + sent.len;
        assert!(
            (sent.offset..=end).contains(&offset) && offset <= sent.length,
            "PATCH offset {offset} outside {}..={end} (length {})",
            sent.offset,
            sent.length
        );
    }
}

fn check_created(resp: &Response, base: &str, sent: Sent) {
    if let Outcome::Created { url, offset, .. } = response::created(resp, base, sent) {
        assert!(
            offset <= sent.len,
            "creation offset {offset} past {}",
            sent.len
        );
        check_resolved(base, Ok(url));
    }
}

/// A resolved upload URL is one a request can be sent to, and never a downgrade to http.
fn check_resolved(base: &str, resolved: Result<String, url::UrlError>) {
    let Ok(u) = resolved else { return };
    if let Err(e) = url::validate(&u) {
        panic!("{base:?} resolved a Location to {u:?}, which no request can go to: {e}");
    }
    let lower = u.to_ascii_lowercase();
    assert!(
        lower.starts_with("https://") || lower.starts_with("http://"),
        "not http(s): {u:?}"
    );
    if base.to_ascii_lowercase().starts_with("https://") {
        assert!(lower.starts_with("https://"), "downgraded to {u:?}");
    }
    let _ = url::same_origin(base, &u);
    assert!(url::redact(&u).len() <= u.len());
}

fn check_retry_after(value: &str) {
    for now in [UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(NOW_UNIX)] {
        if let Some(wait) = parse_retry_after(value, now) {
            assert!(
                wait <= MAX_RETRY_AFTER,
                "Retry-After {value:?} gave {wait:?}"
            );
        }
    }
}

/// `Upload-Metadata` both ways: a header read and written again reads the same; entries (one
/// `key=value` or bare `key` per line) written and read again come back (an empty value
/// comes back as a bare key, which is how it is sent).
pub fn upload_metadata(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(entries) = metadata::decode(&text) {
        let again = match metadata::encode(&entries) {
            Ok(Some(header)) => metadata::decode(&header),
            Ok(None) => Ok(Vec::new()),
            Err(e) => panic!("decoded {entries:?} from {text:?} but cannot encode it: {e}"),
        };
        assert_eq!(again.as_ref(), Ok(&entries), "round trip of {text:?}");
    }
    let entries: Vec<metadata::Entry> = lines(&text)
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (l.to_string(), None),
        })
        .collect();
    match metadata::encode(&entries) {
        Ok(Some(header)) => {
            let sent: Vec<metadata::Entry> = entries
                .into_iter()
                .map(|(k, v)| (k, v.filter(|v| !v.is_empty())))
                .collect();
            assert_eq!(metadata::decode(&header), Ok(sent), "{header:?}");
        }
        Ok(None) => assert!(entries.is_empty()),
        Err(_) => {}
    }
}

/// HTTP dates (`Upload-Expires`, `Retry-After`): a date read is written back in the preferred
/// form and reads as the same time; `Retry-After` never asks for more than the cap.
pub fn http_date(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(t) = httpdate::parse(&text) {
        let formatted = httpdate::format(t);
        assert_eq!(
            httpdate::parse(&formatted),
            Some(t),
            "{text:?} read as {formatted:?}"
        );
        assert!(t >= UNIX_EPOCH);
    }
    check_retry_after(&text);
}
