//! Zero-copy bodies: over plain TCP a file's bytes go from the page cache to the socket with
//! `sendfile(2)`, never through a buffer of ours.
//!
//! Key idea: ureq sends a body without chunked encoding as "read into the output buffer, then
//! transmit exactly what was read" (ureq 3.5 `run.rs`, `send_body`). A body that is a range
//! of a file ([`SpanSource`]) is wrapped in [`SpanBody`], whose `read` moves the file position
//! on (counters, rate limit, interruption, as a real read) but copies nothing: it leaves the
//! [`Span`] it stands for in a slot of this thread (ureq runs a request on the caller's
//! thread), and our TCP layer's `transmit_output` takes it and sends those file bytes instead
//! of the buffer. The buffer then holds stale bytes, so every mismatch is an error, never a
//! send: a transmit of another length, a span left over when another read comes, or a span
//! reaching any layer but plain TCP (the TLS layer refuses it). An error ends the request; the
//! retry resumes at the server's offset, with only right bytes ever sent before it.
//!
//! Only [`super::http::UreqTransport`] turns this on, for `http://` URLs without a proxy.

use std::cell::RefCell;
use std::io::{self, Read};

pub(super) use crate::source::{Span, SpanSource};

thread_local! {
    /// The span the last body read stood for, until the TCP layer sends it.
    static PENDING: RefCell<Option<Span>> = const { RefCell::new(None) };
}

/// Takes the span waiting to be sent on this thread, if any.
pub(super) fn take() -> Option<Span> {
    PENDING.with(|p| p.borrow_mut().take())
}

/// True when a span waits to be sent on this thread.
pub(super) fn is_pending() -> bool {
    PENDING.with(|p| p.borrow().is_some())
}

/// The error for a span that cannot be sent as it should (a bug of ours or a changed ureq).
pub(super) fn mismatch(what: &str) -> io::Error {
    io::Error::other(format!("zero-copy body: {what}; nothing wrong was sent"))
}

/// True when `sendfile` failed because it cannot be used here (a file system without it, a
/// system-call filter), not because the link failed: the span is copied instead.
pub(super) fn refused(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let refusals = [Errno::INVAL, Errno::NOSYS, Errno::OPNOTSUPP, Errno::PERM];
    let refused = refusals
        .iter()
        .any(|r| e.raw_os_error() == Some(r.raw_os_error()));
    if refused && !REFUSAL_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        log::debug!("sendfile refused ({e}): file bodies are copied instead");
    }
    refused
}

static REFUSAL_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads the span's bytes after its first `sent` into `buf` (as long as the rest).
pub(super) fn copy_rest(span: &Span, sent: usize, buf: &mut [u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    span.file
        .read_exact_at(buf, span.offset + sent as u64)
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => crate::source::shrank(),
            _ => e,
        })
}

/// A body whose reads hand spans to the TCP layer instead of filling the buffer.
pub(super) struct SpanBody(pub(super) Box<dyn SpanSource>);

impl Read for SpanBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if is_pending() {
            return Err(mismatch("a body read came before the last span was sent"));
        }
        match self.0.next_span(buf.len())? {
            Some(span) => {
                let n = span.len;
                PENDING.with(|p| *p.borrow_mut() = Some(span));
                Ok(n)
            }
            None => Ok(0),
        }
    }
}

/// A span source read the usual way (into the buffer), for transports that copy.
pub(super) struct Copied(pub(super) Box<dyn SpanSource>);

impl Read for Copied {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// Drops a span left on this thread by a request that ended early; on drop too, so that no
/// span outlives the request that made it.
pub(super) struct Scope;

impl Scope {
    pub(super) fn begin() -> Self {
        drop(take());
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        drop(take());
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use std::fs::File;
    use std::sync::Arc;

    use super::*;
    use crate::source::{ReadControl, Source};
    use crate::transport::http::{HttpSettings, UreqTransport};
    use crate::transport::{Delivery, FailureKind, Transport};
    use crate::tus::request;

    thread_local! {
        /// Makes the TCP layer's `sendfile` fail with `EINVAL`, as a file system without it.
        pub(in crate::transport) static REFUSE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// A file range that must go as spans: reading it the usual way panics.
    struct SpansOnly(crate::source::RangeReader);

    impl Read for SpansOnly {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            unreachable!("a zero-copy body was copied")
        }
    }

    impl SpanSource for SpansOnly {
        fn next_span(&mut self, max: usize) -> io::Result<Option<Span>> {
            self.0.next_span(max)
        }
    }

    /// A server that reads one request's head and `Content-Length` body (or what comes before
    /// the client closes), sends the body back on a channel, and answers 204.
    fn recording_server() -> (String, mpsc::Receiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/files/x", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut r = BufReader::new(conn);
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = Vec::new();
            let _ = r.by_ref().take(len).read_to_end(&mut body);
            let complete = body.len() as u64 == len;
            tx.send(body).unwrap();
            if complete {
                let _ = r
                    .get_mut()
                    .write_all(b"HTTP/1.1 204 No Content\r\nUpload-Offset: 0\r\n\r\n");
            }
        });
        (url, rx)
    }

    fn file_of(name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
        let path = std::env::temp_dir().join(format!("ferry-zc-{name}-{}", std::process::id()));
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        (path, bytes)
    }

    /// What came of sending `len` bytes from `offset` of a file of `file_len` bytes through
    /// `send_file` to a recording server, as spans only.
    struct Sent {
        result: Result<crate::tus::Response, crate::transport::TransportError>,
        /// What the server received.
        got: Vec<u8>,
        /// The file's bytes.
        bytes: Vec<u8>,
        /// The body's byte counter.
        counted: u64,
    }

    fn send_range(name: &str, file_len: usize, offset: u64, len: u64) -> Sent {
        let (path, bytes) = file_of(name, file_len);
        let (url, rx) = recording_server();
        let transport = UreqTransport::new(&HttpSettings::default()).unwrap();
        let control = ReadControl::default();
        let source = Source::open(&path).unwrap();
        let body = SpansOnly(source.reader(offset, len, control.clone()).unwrap());
        let req = request::patch(&url, offset, len, None);
        let result = transport.send_file(&req, Box::new(body), &Arc::new(Delivery::default()));
        let got = rx.recv().unwrap();
        assert!(!is_pending(), "no span outlives its request");
        let _ = std::fs::remove_file(path);
        Sent {
            result,
            got,
            bytes,
            counted: control.counter.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    #[test]
    fn a_file_range_goes_by_sendfile_and_arrives_whole() {
        let (offset, len) = (1000, 700_001);
        let sent = send_range("whole", (1 << 20) + 4099, offset, len);
        assert_eq!(sent.result.unwrap().status, 204);
        assert!(
            sent.got == sent.bytes[offset as usize..(offset + len) as usize],
            "the body is the file's range ({} bytes came)",
            sent.got.len()
        );
        assert_eq!(sent.counted, len);
    }

    #[test]
    fn where_sendfile_is_refused_the_span_is_copied_and_arrives_whole() {
        REFUSE.with(|r| r.set(true));
        let sent = send_range("refused", 500_000, 7, 400_000);
        REFUSE.with(|r| r.set(false));
        assert_eq!(sent.result.unwrap().status, 204);
        assert!(
            sent.got == sent.bytes[7..400_007],
            "{} bytes came",
            sent.got.len()
        );
    }

    #[test]
    fn a_file_that_ends_before_its_range_is_a_body_failure_not_a_short_body() {
        // The record says 1 MB; the file holds 300 kB (it shrank after it was opened).
        let sent = send_range("short", 300_000, 0, 1_000_000);
        let err = sent.result.unwrap_err();
        assert_eq!(err.kind, FailureKind::Body, "{err}");
        assert!(err.message.contains("shrank while uploading"), "{err}");
        assert!(sent.got.len() <= sent.bytes.len() && sent.got == sent.bytes[..sent.got.len()]);
    }

    #[test]
    fn only_plain_http_without_a_proxy_goes_by_sendfile() {
        let (url, rx) = recording_server();
        let transport = UreqTransport::new(&HttpSettings::default()).unwrap();
        let https = url.replace("http://", "https://");
        assert!(transport.zero_copy(&url) || !cfg!(target_os = "linux"));
        assert!(!transport.zero_copy(&https));
        assert!(!transport.zero_copy(&url.replace("http://", "HTTPS://")));
        drop(rx);
    }

    #[test]
    fn a_span_never_reaches_a_buffer_send() {
        // A span left over from a read that was not sent: the next read refuses to stand
        // for more bytes, and a Scope clears it.
        let (path, _) = file_of("left", 10);
        let file = Arc::new(File::open(&path).unwrap());
        PENDING.with(|p| {
            *p.borrow_mut() = Some(Span {
                file,
                offset: 0,
                len: 10,
            })
        });
        let source = Source::open(&path).unwrap();
        let mut body = SpanBody(Box::new(
            source.reader(0, 10, ReadControl::default()).unwrap(),
        ));
        let err = body.read(&mut [0u8; 10]).unwrap_err();
        assert!(err.to_string().contains("nothing wrong was sent"), "{err}");
        drop(Scope::begin());
        assert!(!is_pending());
        assert_eq!(body.read(&mut [0u8; 10]).unwrap(), 10);
        assert!(take().is_some_and(|s| s.len == 10 && s.offset == 0));
        let _ = std::fs::remove_file(path);
    }
}
