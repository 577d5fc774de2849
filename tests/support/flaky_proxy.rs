//! A TCP proxy on loopback that cuts, stalls, throttles or refuses real connections on a plan.
//!
//! The key idea: faults happen at byte positions of the client→server stream, counted across all
//! connections since the current [`ProxyPlan`] was set, so a test can say "reset the link every
//! 256 KiB" and the client sees exactly what a flaky cellular link does to it: a reset socket in
//! the middle of a body, a link that goes silent, a slow uplink, or a link that is down.
//!
//! Each accepted connection gets an upstream connection and two forwarding threads (one per
//! direction) with fixed-size buffers. States of a connection: forwarding → (half-closed, one
//! direction finished) → closed; or reset (TCP RST to both sides via `SO_LINGER 0`).
//!
//! **Location headers bypass the proxy when they name the upstream.** A TCP proxy passes bytes
//! through unchanged, so a client follows whatever `Location` the server wrote:
//! - our `TusServer` with `LocationStyle::Absolute` writes its own `127.0.0.1:<port>`, and the
//!   client's PATCHes go straight to the server. Use `LocationStyle::Relative` (resolved against
//!   the proxy's URL), or `TusServer::set_public_endpoint(&proxy.rewrite(&server.endpoint()))`;
//! - servers that build `Location` from the request's `Host` header (tusd, @tus/server by
//!   default) already point at the proxy, because the client sent the proxy's host:port.
//!
//! When in doubt, check that [`FlakyProxy::bytes_up`] grows during the upload.
//!
//! Self-contained (std plus `socket2`), like the other support files.
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const BUF_BYTES: usize = 16 * 1024;
/// How often blocked reads, writes and sleeps look at the connection's and proxy's stop flags.
const POLL: Duration = Duration::from_millis(50);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does to the traffic; `Default` forwards everything untouched.
///
/// Byte positions count client→server bytes over all connections since the plan was set.
#[derive(Clone, Debug, Default)]
pub struct ProxyPlan {
    /// Each time the count reaches another multiple of this, the current connection is reset on
    /// both sides (after forwarding exactly up to the multiple).
    pub cut_every_bytes: Option<u64>,
    /// Stop cutting after this many cuts under this plan.
    pub max_cuts: Option<u64>,
    /// Each time the count reaches another multiple of this, all forwarding (both directions, all
    /// connections: the link) stops for `stall_for`.
    pub stall_every_bytes: Option<u64>,
    /// Length of each stall.
    pub stall_for: Duration,
    /// Client→server rate limit over all connections.
    pub throttle_bytes_per_sec: Option<u64>,
    /// Accept new connections and reset them at once (link down). Open connections are untouched.
    pub refuse: bool,
}

/// A running proxy; stops on drop (open connections are reset).
pub struct FlakyProxy {
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FlakyProxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `upstream`. Panics if it cannot bind.
    pub fn start(upstream: SocketAddr, plan: ProxyPlan) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the flaky proxy");
        let addr = listener.local_addr().expect("flaky proxy address");
        let shared = Arc::new(Shared {
            upstream,
            addr,
            stop: AtomicBool::new(false),
            bytes_up: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            meter: Mutex::new(Meter::new(plan)),
        });
        let for_thread = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("proxy-accept".to_string())
            .spawn(move || accept_loop(&listener, &for_thread))
            .expect("spawn the flaky proxy");
        FlakyProxy {
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `url` with the upstream's `host:port` replaced by the proxy's (also `localhost:<port>`
    /// when the upstream is on loopback).
    pub fn rewrite(&self, url: &str) -> String {
        let (upstream, proxy) = (self.shared.upstream, self.shared.addr.to_string());
        let rewritten = url.replacen(&upstream.to_string(), &proxy, 1);
        if upstream.ip().is_loopback() {
            rewritten.replacen(&format!("localhost:{}", upstream.port()), &proxy, 1)
        } else {
            rewritten
        }
    }

    /// Replaces the plan; byte positions and `max_cuts` count afresh from the next byte.
    pub fn set_plan(&self, plan: ProxyPlan) {
        lock(&self.shared.meter).set_plan(plan);
    }

    /// Client→server bytes forwarded in total.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Connections reset by `cut_every_bytes` in total.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections accepted in total (refused ones included).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the stop flag.
        let _ = TcpStream::connect_timeout(&self.shared.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

struct Shared {
    upstream: SocketAddr,
    addr: SocketAddr,
    stop: AtomicBool,
    bytes_up: AtomicU64,
    cuts: AtomicU64,
    connections: AtomicU64,
    meter: Mutex<Meter>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The plan and the byte count it is applied to.
struct Meter {
    plan: ProxyPlan,
    /// Client→server bytes granted to forward under this plan.
    counted: u64,
    cuts_in_plan: u64,
    /// When the bytes granted so far may all have been sent (throttling).
    throttle_until: Instant,
    /// Forwarding is paused until then (stalls).
    stalled_until: Option<Instant>,
}

/// Permission to forward the next `len` client→server bytes, and what follows them.
struct Grant {
    len: usize,
    /// Reset the connection after forwarding.
    cut: bool,
    /// Stall the link after forwarding.
    stall: Option<Duration>,
    /// Throttling: do not forward before then.
    not_before: Option<Instant>,
}

impl Meter {
    fn new(plan: ProxyPlan) -> Self {
        let now = Instant::now();
        Meter {
            plan,
            counted: 0,
            cuts_in_plan: 0,
            throttle_until: now,
            stalled_until: None,
        }
    }

    fn set_plan(&mut self, plan: ProxyPlan) {
        *self = Meter {
            stalled_until: self.stalled_until,
            ..Meter::new(plan)
        };
    }

    /// Bytes left before the next multiple of `every` (a full `every` right at a multiple).
    fn left_to_multiple(&self, every: Option<u64>) -> Option<u64> {
        every.filter(|e| *e > 0).map(|e| e - self.counted % e)
    }

    /// Grants up to `available` bytes, stopping at the next cut or stall position.
    fn grant(&mut self, available: usize) -> Grant {
        let cuts_left = self.plan.max_cuts.is_none_or(|max| self.cuts_in_plan < max);
        let to_cut = self.left_to_multiple(self.plan.cut_every_bytes.filter(|_| cuts_left));
        let to_stall = self.left_to_multiple(self.plan.stall_every_bytes);
        let len = [to_cut, to_stall]
            .into_iter()
            .flatten()
            .fold(available as u64, u64::min);
        self.counted += len;
        let cut = to_cut == Some(len);
        self.cuts_in_plan += u64::from(cut);
        let stall = (to_stall == Some(len)).then_some(self.plan.stall_for);
        let not_before = self
            .plan
            .throttle_bytes_per_sec
            .filter(|r| *r > 0)
            .map(|rate| {
                let start = self.throttle_until.max(Instant::now());
                self.throttle_until = start + Duration::from_secs_f64(len as f64 / rate as f64);
                self.throttle_until
            });
        Grant {
            len: usize::try_from(len).unwrap_or(available),
            cut,
            stall,
            not_before,
        }
    }

    /// How much to read at once: small under throttling, so the rate is smooth.
    fn read_size(&self, buf_len: usize) -> usize {
        match self.plan.throttle_bytes_per_sec.filter(|r| *r > 0) {
            Some(rate) => usize::try_from(rate / 20)
                .unwrap_or(buf_len)
                .clamp(1, buf_len),
            None => buf_len,
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        if lock(&shared.meter).plan.refuse {
            reset_now(client);
            continue;
        }
        let shared = Arc::clone(shared);
        let _ = thread::Builder::new()
            .name("proxy-conn".to_string())
            .spawn(move || open(&shared, client));
    }
}

fn reset_now(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Connects upstream and starts both forwarding threads (this thread forwards client→server).
fn open(shared: &Arc<Shared>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        return reset_now(client);
    };
    let setup = [&client, &upstream].iter().try_for_each(|s| {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(POLL))?;
        s.set_write_timeout(Some(POLL))
    });
    if setup.is_err() {
        return reset_now(client);
    }
    let conn = Arc::new(Conn {
        client,
        upstream,
        closed: AtomicBool::new(false),
    });
    let (down_shared, down_conn) = (Arc::clone(shared), Arc::clone(&conn));
    let spawned = thread::Builder::new()
        .name("proxy-down".to_string())
        .spawn(move || pump_down(&down_shared, &down_conn));
    if spawned.is_err() {
        return conn.abort();
    }
    pump_up(shared, &conn);
}

/// One proxied connection. Both threads hold it; the sockets close when both are done, with an
/// RST if [`Conn::abort`] set `SO_LINGER 0`.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    closed: AtomicBool,
}

/// What one read from a socket gave.
enum Step {
    Data(usize),
    /// The peer finished sending (FIN).
    Eof,
    /// The connection was aborted or the proxy stopped.
    Closed,
    /// The peer reset the connection or the socket failed.
    Failed,
}

impl Conn {
    fn is_closed(&self, shared: &Shared) -> bool {
        self.closed.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst)
    }

    fn read(&self, shared: &Shared, mut from: &TcpStream, buf: &mut [u8]) -> Step {
        loop {
            if self.is_closed(shared) {
                return Step::Closed;
            }
            match from.read(buf) {
                Ok(_) if self.is_closed(shared) => return Step::Closed,
                Ok(0) => return Step::Eof,
                Ok(n) => return Step::Data(n),
                Err(e) if is_retry(&e) => {}
                Err(_) => return Step::Failed,
            }
        }
    }

    /// Writes all of `data`, unless the connection is closed meanwhile or the socket fails.
    fn write(&self, shared: &Shared, mut to: &TcpStream, mut data: &[u8]) -> Result<(), ()> {
        while !data.is_empty() {
            if self.is_closed(shared) {
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

    /// Resets both sides: SO_LINGER 0 makes the final close send RST; SHUT_RD wakes the other
    /// thread's read without sending anything.
    fn abort(&self) {
        for stream in [&self.client, &self.upstream] {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
        self.closed.store(true, Ordering::SeqCst);
        for stream in [&self.client, &self.upstream] {
            let _ = stream.shutdown(Shutdown::Read);
        }
    }

    /// Waits while the link is stalled or until `at`, whichever is later.
    fn wait(&self, shared: &Shared, at: Option<Instant>) {
        loop {
            let stalled_until = lock(&shared.meter).stalled_until;
            let until = stalled_until.max(at);
            let left = until.map_or(Duration::ZERO, |t| {
                t.saturating_duration_since(Instant::now())
            });
            if left.is_zero() || self.is_closed(shared) {
                return;
            }
            thread::sleep(left.min(POLL));
        }
    }
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Client→server: counts bytes and applies cuts, stalls and throttling.
fn pump_up(shared: &Shared, conn: &Conn) {
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        let size = lock(&shared.meter).read_size(buf.len());
        match conn.read(shared, &conn.client, &mut buf[..size]) {
            Step::Data(n) => {
                if forward_up(shared, conn, &buf[..n]).is_err() {
                    return conn.abort();
                }
            }
            Step::Eof => {
                let _ = conn.upstream.shutdown(Shutdown::Write);
                return;
            }
            Step::Closed | Step::Failed => return conn.abort(),
        }
    }
}

fn forward_up(shared: &Shared, conn: &Conn, mut data: &[u8]) -> Result<(), ()> {
    while !data.is_empty() {
        let grant = lock(&shared.meter).grant(data.len());
        conn.wait(shared, grant.not_before);
        conn.write(shared, &conn.upstream, &data[..grant.len])?;
        shared
            .bytes_up
            .fetch_add(grant.len as u64, Ordering::SeqCst);
        data = &data[grant.len..];
        if grant.cut {
            shared.cuts.fetch_add(1, Ordering::SeqCst);
            return Err(());
        }
        if let Some(dur) = grant.stall {
            lock(&shared.meter).stalled_until = Some(Instant::now() + dur);
        }
    }
    Ok(())
}

/// Server→client: forwards untouched, except that stalls pause it.
fn pump_down(shared: &Shared, conn: &Conn) {
    let mut buf = vec![0u8; BUF_BYTES];
    loop {
        match conn.read(shared, &conn.upstream, &mut buf) {
            Step::Data(n) => {
                conn.wait(shared, None);
                if conn.write(shared, &conn.client, &buf[..n]).is_err() {
                    return conn.abort();
                }
            }
            Step::Eof => {
                let _ = conn.client.shutdown(Shutdown::Write);
                return;
            }
            Step::Closed | Step::Failed => return conn.abort(),
        }
    }
}
