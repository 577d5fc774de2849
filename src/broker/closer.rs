//! Closing refused connections so that the client reads the refusal (503, 429) instead of a
//! reset: after the answer the socket is half-closed, and what the client still sends (its
//! request) is read and dropped for a moment before the socket is closed (RFC 9112 §9.6).
//!
//! Key idea: refusals happen on the accept thread, at the worst time (the server is full, or a
//! client floods it), so they must cost no thread and no wait there. One thread holds the
//! refused sockets, non-blocking, and drains them all every [`POLL`], each for at most
//! [`LINGER`]; beyond [`MAX_HELD`] sockets the oldest is closed at once.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// How long a refused socket is drained before it is closed.
const LINGER: Duration = Duration::from_secs(1);
/// How often held sockets are drained.
const POLL: Duration = Duration::from_millis(20);
/// Refused sockets held at once.
const MAX_HELD: usize = 1024;

/// Hands refused sockets to the closing thread.
pub(crate) struct Closer {
    tx: Option<Mutex<Sender<TcpStream>>>,
}

impl Closer {
    /// Starts the closing thread (without it, sockets are closed at once).
    pub(crate) fn start(clock: Arc<dyn Clock>) -> Self {
        let (tx, rx) = mpsc::channel();
        let started = std::thread::Builder::new()
            .name("broker-closer".into())
            .spawn(move || run(&rx, clock.as_ref()));
        match started {
            Ok(_) => Self {
                tx: Some(Mutex::new(tx)),
            },
            Err(e) => {
                log::warn!("refused connections are closed at once (no thread: {e})");
                Self { tx: None }
            }
        }
    }

    /// Half-closes `tcp` (whose answer is written) and drains it for a moment before closing.
    pub(crate) fn close(&self, tcp: TcpStream) {
        let _ = tcp.shutdown(Shutdown::Write);
        if tcp.set_nonblocking(true).is_err() {
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(tcp);
        }
    }
}

fn run(rx: &Receiver<TcpStream>, clock: &dyn Clock) {
    let never = AtomicBool::new(false);
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(tcp) => held.push_back((clock.now(), tcp)),
                Err(_) => return, // the server is gone
            }
        }
        loop {
            match rx.try_recv() {
                Ok(tcp) => held.push_back((clock.now(), tcp)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        while held.len() > MAX_HELD {
            held.pop_front();
        }
        let now = clock.now();
        held.retain_mut(|(since, tcp)| {
            now.saturating_duration_since(*since) < LINGER && drain(tcp)
        });
        if !held.is_empty() {
            clock.sleep(POLL, &never);
        }
    }
}

/// Reads what is there; false when the client has closed (or the socket failed).
fn drain(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn a_refused_client_reads_the_answer_even_after_sending_its_request() {
        let closer = Closer::start(Arc::new(SystemClock));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        // The request arrives, unread, before the answer goes out: closing now would reset.
        client.write_all(&[b'x'; 3000]).unwrap();
        server
            .write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
            .unwrap();
        closer.close(server);
        client.write_all(&[b'y'; 3000]).unwrap();
        let mut got = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
    }
}
