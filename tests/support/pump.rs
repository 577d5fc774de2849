//! The proxies' byte pump: forwards one direction of a proxied connection until it ends.
//!
//! The key idea: a proxied connection is a [`Link`] of two sockets that its two forwarding
//! threads share, and reads wait in short steps, so each thread soon notices when the other one
//! aborted the link or the proxy stopped. What a proxy does to the bytes (count and cut them,
//! stall, throttle, encrypt) is its `forward` function; [`pump`] reads, hands the bytes over,
//! and says how the direction ended, and [`Link::finish`] ends it that way.
//!
//! States of a link: forwarding both ways → half-closed (one direction ended, its FIN passed
//! on) → closed; or aborted, both sockets shut at once (with a TCP RST if the proxy wants one).
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use super::accept::{self, Stop};

/// The size of each direction's read buffer.
pub const BUF_BYTES: usize = 16 * 1024;

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
}

/// How a link is torn down when either direction fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abort {
    /// TCP RST to both sides (`SO_LINGER 0`): what a broken link does to a client.
    Reset,
    /// FIN to both sides.
    Shutdown,
}

/// What `forward` made of the bytes it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    More,
    /// The sender said its last word (e.g. a TLS close_notify): end like at EOF.
    Done,
}

/// How one direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The sender finished: pass the half-close on.
    Eof,
    /// A socket failed, `forward` refused, the link was aborted or the proxy stopped.
    Broken,
}

/// What one read gave.
enum Got {
    Data(usize),
    Eof,
    Gone,
}

/// One proxied connection: the client's socket, the upstream's, and the flag that ends both
/// directions.
pub struct Link {
    pub client: TcpStream,
    pub upstream: TcpStream,
    closed: AtomicBool,
    stop: Stop,
    abort: Abort,
}

impl Link {
    /// Joins two connected sockets: no Nagle delay, and reads that wake every [`accept::POLL`]
    /// to look at the flags. Writes keep the sockets' own timeouts.
    pub fn new(
        client: TcpStream,
        upstream: TcpStream,
        stop: &Stop,
        abort: Abort,
    ) -> io::Result<Link> {
        for socket in [&client, &upstream] {
            socket.set_nodelay(true)?;
            socket.set_read_timeout(Some(accept::POLL))?;
        }
        Ok(Link {
            client,
            upstream,
            closed: AtomicBool::new(false),
            stop: stop.clone(),
            abort,
        })
    }

    fn from(&self, way: Way) -> &TcpStream {
        match way {
            Way::Up => &self.client,
            Way::Down => &self.upstream,
        }
    }

    fn to(&self, way: Way) -> &TcpStream {
        match way {
            Way::Up => &self.upstream,
            Way::Down => &self.client,
        }
    }

    /// Aborted, or the proxy stopped.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.stop.is_set()
    }

    fn read(&self, way: Way, buf: &mut [u8]) -> Got {
        let mut from = self.from(way);
        loop {
            if self.is_closed() {
                return Got::Gone;
            }
            match from.read(buf) {
                Ok(_) if self.is_closed() => return Got::Gone,
                Ok(0) => return Got::Eof,
                Ok(n) => return Got::Data(n),
                Err(e) if is_retry(&e) => {}
                Err(_) => return Got::Gone,
            }
        }
    }

    /// Writes all of `data` towards `way`'s receiver, unless the link closes meanwhile or the
    /// socket fails.
    pub fn write(&self, way: Way, mut data: &[u8]) -> Result<(), ()> {
        let mut to = self.to(way);
        while !data.is_empty() {
            if self.is_closed() {
                return Err(());
            }
            match to.write(data) {
                Ok(0) => return Err(()),
                Ok(n) => data = &data[n..],
                Err(e) if is_retry(&e) => {}
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// Ends `way` as it ended: pass an EOF on as a half-close; abort the link when it broke.
    pub fn finish(&self, way: Way, end: End) {
        match end {
            End::Eof => {
                let _ = self.to(way).shutdown(Shutdown::Write);
            }
            End::Broken => self.abort(),
        }
    }

    /// Tears down both sides. For a reset, SO_LINGER 0 makes the final close send RST and
    /// SHUT_RD wakes the other thread's read without sending anything.
    pub fn abort(&self) {
        if self.abort == Abort::Reset {
            accept::set_reset_on_close(&self.client);
            accept::set_reset_on_close(&self.upstream);
        }
        self.closed.store(true, Ordering::SeqCst);
        let how = match self.abort {
            Abort::Reset => Shutdown::Read,
            Abort::Shutdown => Shutdown::Both,
        };
        let _ = self.client.shutdown(how);
        let _ = self.upstream.shutdown(how);
    }
}

fn is_retry(e: &io::Error) -> bool {
    accept::is_timeout(e) || e.kind() == io::ErrorKind::Interrupted
}

/// Forwards `way` until its sender finishes or the link breaks: reads at most
/// `read_size(buffer length)` bytes at a time and hands them to `forward`.
pub fn pump(
    link: &Link,
    way: Way,
    mut read_size: impl FnMut(usize) -> usize,
    mut forward: impl FnMut(&[u8]) -> Result<Flow, ()>,
) -> End {
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        let size = read_size(buf.len()).clamp(1, buf.len());
        match link.read(way, &mut buf[..size]) {
            Got::Data(n) => match forward(&buf[..n]) {
                Ok(Flow::More) => {}
                Ok(Flow::Done) => return End::Eof,
                Err(()) => return End::Broken,
            },
            Got::Eof => return End::Eof,
            Got::Gone => return End::Broken,
        }
    }
}

/// Runs `down` on a new thread named `name` and `up` on this one; aborts `link` instead when
/// no thread can be had.
pub fn both_ways(link: &Link, name: &str, down: impl FnOnce() + Send + 'static, up: impl FnOnce()) {
    match thread::Builder::new().name(name.to_string()).spawn(down) {
        Ok(_) => up(),
        Err(_) => link.abort(),
    }
}
