//! How much of a request body the peer has acknowledged: the truth a progress display needs.
//!
//! Key idea: a write returns once the kernel took the bytes, not once they left. A send buffer
//! of a few MiB holds many seconds of a slow uplink, so counting written bytes showed 100 %
//! while most of a chunk was still on the device (issue 13, item 2). What we wrote since the
//! body began, less what the kernel still holds unacknowledged ([`SockDiag`]), the peer has.
//!
//! ureq tells a connection nothing of the request it carries, but the thread that runs a
//! request is the thread that writes it: [`watching`] names the request's [`Delivery`] in a
//! thread-local for the call, and the connection that writes the first body byte takes it.
//! Asking the kernel costs a netlink round trip, so it is done only when someone looks
//! ([`Delivery::acked`]: a progress line four times a second, a status snapshot once).
//!
//! Where netlink is not allowed, the socket's send buffer size bounds what the kernel can hold:
//! a lower bound that lags by up to a buffer and never runs ahead. Through a CONNECT proxy
//! the peer that acknowledges is the proxy.

use std::cell::Cell;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::sockdiag::SockDiag;
use super::tcp::Socket;

/// The body being sent on behalf of one upload, and what of it the peer acknowledged.
#[derive(Default)]
pub(crate) struct Delivery {
    state: Mutex<State>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    body: Option<Body>,
    /// The netlink socket: not opened yet, open, or refused (then the buffer bound is used).
    diag: Diag,
}

#[derive(Default)]
enum Diag {
    #[default]
    Unopened,
    Open(SockDiag),
    Refused,
}

/// A body on its connection.
struct Body {
    socket: Weak<Socket>,
    /// The connection's written-byte count when the body's first byte was written.
    base: u64,
    /// Body bytes known to be acknowledged (never decreases: acknowledgements do not).
    acked: u64,
}

impl Delivery {
    /// Forgets the body: the next one starts from nothing.
    pub(crate) fn forget(&self) {
        lock(&self.state).body = None;
    }

    /// Bytes of the current body the peer has acknowledged (with TLS, its records' framing
    /// too: a fraction of a percent); `None` before a body started.
    pub(crate) fn acked(&self) -> Option<u64> {
        let mut state = lock(&self.state);
        let State { body, diag } = &mut *state;
        let body = body.as_mut()?;
        if let Some(socket) = body.socket.upgrade() {
            let written = socket.written().saturating_sub(body.base);
            if let Some(held) = held(&socket, diag) {
                body.acked = body.acked.max(written.saturating_sub(held));
            }
        }
        Some(body.acked)
    }

    fn start(&self, socket: &Arc<Socket>) {
        lock(&self.state).body = Some(Body {
            socket: Arc::downgrade(socket),
            base: socket.written(),
            acked: 0,
        });
    }
}

/// Bytes the kernel holds for `socket` (unsent, or sent and unacknowledged), or an upper bound.
fn held(socket: &Socket, diag: &mut Diag) -> Option<u64> {
    if let Diag::Unopened = diag {
        *diag = match SockDiag::open() {
            Ok(d) => Diag::Open(d),
            Err(e) => {
                log::debug!("no sock_diag ({e}): progress counts a send buffer as unsent");
                Diag::Refused
            }
        };
    }
    let asked = match (diag, socket.ends()) {
        (Diag::Open(d), Some((local, peer))) => d.unacked(local, peer).map(u64::from),
        _ => Err(io::Error::from(io::ErrorKind::Unsupported)),
    };
    asked
        .or_else(|e| {
            log::trace!("sock_diag: {e}");
            socket.send_buffer_size()
        })
        .ok()
}

thread_local! {
    /// The delivery of the request this thread is running, until its body starts.
    static WATCHING: Cell<Option<Arc<Delivery>>> = const { Cell::new(None) };
}

/// Runs `call` (one request) with `delivery` told of its body's acknowledged bytes.
pub(super) fn watching<R>(delivery: &Arc<Delivery>, call: impl FnOnce() -> R) -> R {
    struct Unwatch;
    impl Drop for Unwatch {
        fn drop(&mut self) {
            WATCHING.with(|w| w.set(None));
        }
    }
    delivery.forget();
    WATCHING.with(|w| w.set(Some(delivery.clone())));
    let _unwatch = Unwatch;
    call()
}

/// Called by a connection about to write body bytes: the first such write of a watched request
/// starts its body on this connection, and gets its delivery (to tell it a last time what was
/// acknowledged when the connection closes: a cut's acknowledged bytes tell the chunk policy
/// whether the server drops a cut PATCH).
pub(super) fn body_starts(socket: &Arc<Socket>) -> Option<Weak<Delivery>> {
    let delivery = WATCHING.with(Cell::take)?;
    delivery.start(socket);
    Some(Arc::downgrade(&delivery))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
