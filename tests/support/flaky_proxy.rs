//! A TCP proxy on loopback that cuts, stalls, throttles or refuses real connections on a plan.
//!
//! The key idea: faults happen at byte positions of the client→server stream, counted across all
//! connections since the current [`ProxyPlan`] was set, so a test can say "reset the link every
//! 256 KiB" and the client sees exactly what a flaky cellular link does to it: a reset socket in
//! the middle of a body, a link that goes silent, a slow uplink, or a link that is down.
//!
//! Each accepted connection gets an upstream connection and two forwarding threads (one per
//! direction) with fixed-size buffers: the shared byte pump, `pump.rs`, whose states are this
//! proxy's too; a broken link is reset (TCP RST to both sides via `SO_LINGER 0`).
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
//! Besides std it needs `socket2` and its sibling modules `pump` and `accept`: an example or
//! bench includes all three with `#[path = "../tests/support/…"]`.
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::accept::{self, Acceptor, Stop, POLL};
use super::pump::{self, Abort, Flow, Link, Way};

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
    _acceptor: Acceptor,
}

impl FlakyProxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `upstream`. Panics if it cannot bind.
    pub fn start(upstream: SocketAddr, plan: ProxyPlan) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the flaky proxy");
        let addr = listener.local_addr().expect("flaky proxy address");
        let shared = Arc::new(Shared {
            upstream,
            addr,
            stop: Stop::default(),
            bytes_up: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            meter: Mutex::new(Meter::new(plan)),
        });
        let for_conns = Arc::clone(&shared);
        let acceptor = Acceptor::start(listener, "proxy", &shared.stop, move |client| {
            open(&for_conns, client);
        });
        FlakyProxy {
            shared,
            _acceptor: acceptor,
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

struct Shared {
    upstream: SocketAddr,
    addr: SocketAddr,
    stop: Stop,
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

/// Counts the connection, then refuses it or connects upstream and forwards both ways (this
/// thread forwards client→server).
fn open(shared: &Arc<Shared>, client: TcpStream) {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    if lock(&shared.meter).plan.refuse {
        return accept::set_reset_on_close(&client);
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        return accept::set_reset_on_close(&client);
    };
    // Writes wait in short steps too, so a write stuck on a stalled reader ends with the link.
    let timeouts = [&client, &upstream]
        .iter()
        .try_for_each(|s| s.set_write_timeout(Some(POLL)));
    let link = timeouts.and_then(|()| Link::new(client, upstream, &shared.stop, Abort::Reset));
    let Ok(link) = link else {
        return;
    };
    let link = Arc::new(link);
    let (down_shared, down_link) = (Arc::clone(shared), Arc::clone(&link));
    let down = move || pump_down(&down_shared, &down_link);
    pump::both_ways(&link, "proxy-down", down, || pump_up(shared, &link));
}

/// Waits while the link is stalled or until `at`, whichever is later.
fn wait(shared: &Shared, link: &Link, at: Option<Instant>) {
    loop {
        let stalled_until = lock(&shared.meter).stalled_until;
        let until = stalled_until.max(at);
        let left = until.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(Instant::now())
        });
        if left.is_zero() || link.is_closed() {
            return;
        }
        thread::sleep(left.min(POLL));
    }
}

/// Client→server: counts bytes and applies cuts, stalls and throttling.
fn pump_up(shared: &Shared, link: &Link) {
    let read_size = |buf_len| lock(&shared.meter).read_size(buf_len);
    let end = pump::pump(link, Way::Up, read_size, |data| {
        forward_up(shared, link, data)
    });
    link.finish(Way::Up, end);
}

fn forward_up(shared: &Shared, link: &Link, mut data: &[u8]) -> Result<Flow, ()> {
    while !data.is_empty() {
        let grant = lock(&shared.meter).grant(data.len());
        wait(shared, link, grant.not_before);
        link.write(Way::Up, &data[..grant.len])?;
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
    Ok(Flow::More)
}

/// Server→client: forwards untouched, except that stalls pause it.
fn pump_down(shared: &Shared, link: &Link) {
    let end = pump::pump(
        link,
        Way::Down,
        |buf_len| buf_len,
        |data| {
            wait(shared, link, None);
            link.write(Way::Down, data).map(|()| Flow::More)
        },
    );
    link.finish(Way::Down, end);
}
