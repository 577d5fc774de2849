//! Accepts loopback connections until told to stop, one thread a connection: the loop under
//! every test server and proxy.
//!
//! The key idea: a blocking `accept()` cannot be interrupted, so stopping sets a shared [`Stop`]
//! flag and then connects once to the listener itself; the woken loop sees the flag and ends.
//! Connection threads are not joined: they watch the same flag between short reads and end
//! within a poll interval.
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked reads and sleeps look at the stop flag.
pub const POLL: Duration = Duration::from_millis(50);

/// The flag that tells every thread of one server (or proxy) to finish.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Sleeps for `dur`, or less when the server stops meanwhile (so a stalled answer does not
    /// hold up a test's teardown).
    pub fn sleep(&self, dur: Duration) {
        let until = Instant::now() + dur;
        while !self.is_set() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            thread::sleep(left.min(POLL));
        }
    }
}

/// A listener served on its own thread; stops (and joins that thread) on drop.
pub struct Acceptor {
    addr: SocketAddr,
    stop: Stop,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Serves `listener`: every accepted connection runs `serve` on a new thread named
    /// `<name>-conn`. Panics if the thread cannot be spawned.
    pub fn start<F>(listener: TcpListener, name: &str, stop: &Stop, serve: F) -> Acceptor
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let addr = listener.local_addr().expect("listener address");
        let (loop_stop, conn_name) = (stop.clone(), format!("{name}-conn"));
        let thread = thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || accept_loop(&listener, &loop_stop, &conn_name, Arc::new(serve)))
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Acceptor {
            addr,
            stop: stop.clone(),
            thread: Some(thread),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets the stop flag and waits for the accept loop to end; later calls do nothing.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.set();
        // Wake the blocking accept() so the thread sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let _ = thread.join();
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop<F>(listener: &TcpListener, stop: &Stop, conn_name: &str, serve: Arc<F>)
where
    F: Fn(TcpStream) + Send + Sync + 'static,
{
    for conn in listener.incoming() {
        if stop.is_set() {
            return;
        }
        let Ok(stream) = conn else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let serve = Arc::clone(&serve);
        let _ = thread::Builder::new()
            .name(conn_name.to_string())
            .spawn(move || serve(stream));
    }
}

/// Makes the last close of `stream` send a TCP RST instead of a FIN (SO_LINGER 0).
pub fn set_reset_on_close(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// A read or write that gave up after its socket timeout: the caller looks at its flags and
/// tries again.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
