//! Sending one request: the [`Transport`] trait the upload logic talks to, and its ureq/rustls
//! implementation in [`http`].
//!
//! Key idea: a transport moves bytes and reports what happened; it never interprets tus.
//! Every HTTP status comes back as a [`Response`] (never as an error), so 409, 404 and 460 reach
//! the protocol layer as values; only failures to get any answer are [`TransportError`]s.

use std::io::Read;
use std::sync::Arc;

use crate::tus::{Request, Response};

pub(crate) mod cipher;
mod delivery;
mod drain;
pub(crate) mod http;
mod sockdiag;
mod tcp;
mod tls;
mod zerocopy;

use crate::source::SpanSource;
pub(crate) use delivery::Delivery;

/// Sends requests.
pub(crate) trait Transport: Send + Sync {
    /// Sends `req`. When `req.body` is a file range, `body` yields exactly its bytes, which are
    /// streamed with that `Content-Length`.
    fn send(
        &self,
        req: &Request,
        body: Option<Box<dyn Read + Send + 'static>>,
    ) -> Result<Response, TransportError>;

    /// Sends `req` as [`Transport::send`] does, telling `delivery` how much of the body the
    /// peer has acknowledged as it goes. A transport that cannot tell leaves it empty.
    fn send_watched(
        &self,
        req: &Request,
        body: Option<Box<dyn Read + Send + 'static>>,
        delivery: &Arc<Delivery>,
    ) -> Result<Response, TransportError> {
        delivery.forget();
        self.send(req, body)
    }

    /// Sends `req` as [`Transport::send_watched`] does, with a body that is a range of a file:
    /// a transport that can sends the file's bytes without copying them (`sendfile`).
    fn send_file(
        &self,
        req: &Request,
        body: Box<dyn SpanSource>,
        delivery: &Arc<Delivery>,
    ) -> Result<Response, TransportError> {
        self.send_watched(req, Some(Box::new(zerocopy::Copied(body))), delivery)
    }

    /// Our own rate limit now lets each upload send about `per_upload` bytes per second
    /// (`None`: no limit): the bound on how long a body may take allows for it.
    fn pace(&self, _per_upload: Option<u64>) {}

    /// Ends every exchange in flight at once (reads and writes blocked in other threads
    /// return an error) and refuses new ones: for a shutdown that must not wait out a
    /// timeout. For good: the transport is not used again.
    fn shut_down(&self) {}

    /// The TLS version and cipher suite of the last handshake, e.g.
    /// `TLS 1.3 TLS13_CHACHA20_POLY1305_SHA256`; `None` before any (or over plain HTTP).
    fn tls_suite(&self) -> Option<String> {
        None
    }
}

/// Why no answer came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Connect, read or write took longer than its timeout (a stalled link).
    Timeout,
    /// Could not connect, the connection broke, or the name did not resolve.
    Connection,
    /// The server's certificate was refused, or our TLS settings are wrong: retrying won't help.
    Tls,
    /// Reading the request body from the file failed (the file changed or is unreadable).
    Body,
    /// The server's answer was not HTTP we can read.
    Protocol,
    /// We stopped sending because of a pause or shutdown.
    Interrupted,
    /// The endpoint URL is wrong in a way no retry mends: `https://` to a port that answers
    /// in plain HTTP. A configuration error.
    Endpoint,
}

/// A request that got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransportError {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Details for the log.
    pub message: String,
}

impl TransportError {
    /// True when retrying the same request later might work.
    pub(crate) fn is_transient(&self) -> bool {
        !matches!(self.kind, FailureKind::Tls | FailureKind::Endpoint)
    }

    /// True when the link failed (name lookup, connect refused or timed out, a TLS handshake
    /// broken off, a reset, no progress within a deadline), not this file or our settings:
    /// every upload through the same link would fail alike until it is back.
    pub(crate) fn is_link_level(&self) -> bool {
        matches!(self.kind, FailureKind::Timeout | FailureKind::Connection)
    }
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            FailureKind::Timeout => "timed out",
            FailureKind::Connection => "connection failed",
            FailureKind::Tls => "TLS failed",
            FailureKind::Body => "reading the file failed",
            FailureKind::Protocol => "bad HTTP answer",
            FailureKind::Interrupted => "interrupted",
            FailureKind::Endpoint => "wrong endpoint",
        };
        write!(f, "{what}: {}", self.message)
    }
}

#[cfg(test)]
mod tests;
