//! Connection slots: how many connections the broker serves at once, in all and per client
//! address, and which connection gives way when it is full.
//!
//! Key idea: one client address must not be able to take every slot (a few slow sockets once
//! took the broker offline for every device), and a connection that only idles between
//! requests (keep-alive) is worth less than a new client: when a limit is reached, the idle
//! keep-alive connection that has waited longest (of that address, for the per-address limit)
//! is closed and its slot handed over; only when none is idle is the new connection refused.
//!
//! A client address is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64).
//! States of a slot: busy (reading or answering a request) ⇄ idle (waiting for the next
//! request of a kept-alive connection, evictable); a [`Slot`] frees its place when dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open and none is idle.
    Full(usize),
    /// This address has `max_connections_per_peer` open and none is idle.
    PeerFull(usize),
}

/// A client address as the per-address limit counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PeerKey(IpAddr);

impl PeerKey {
    /// IPv4 as is (also when mapped into IPv6), IPv6 cut to its /64.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => Self(IpAddr::V6(Ipv6Addr::from(
                    u128::from(v6) & !((1u128 << 64) - 1),
                ))),
            },
        }
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}"),
            IpAddr::V6(a) => write!(f, "{a}/64"),
        }
    }
}

/// The slots of one server.
pub(crate) struct Slots {
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    max_total: usize,
    max_per_peer: usize,
    /// Open connections: id → address.
    live: HashMap<u64, PeerKey>,
    per_peer: HashMap<PeerKey, usize>,
    /// Idle connections: id → (when it became idle, as a sequence number; its socket).
    idle: HashMap<u64, (u64, TcpStream)>,
    next_id: u64,
    next_idle: u64,
}

/// What [`Slots::admit`] did to make room, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Evicted(pub PeerKey);

impl Slots {
    /// Slots for `max_total` connections, `max_per_peer` per address.
    pub(crate) fn new(max_total: usize, max_per_peer: usize) -> Self {
        Self {
            table: Arc::new(Mutex::new(Table {
                max_total,
                max_per_peer,
                ..Table::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.lock().live.len()
    }

    /// A slot for a connection from `ip`, closing an idle keep-alive connection if that is
    /// what it takes; the evicted connection's address is returned for the log.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<(Slot, Option<Evicted>), Refusal> {
        let peer = PeerKey::of(ip);
        let mut t = self.lock();
        let mut evicted = None;
        if t.per_peer.get(&peer).copied().unwrap_or(0) >= t.max_per_peer {
            evicted = Some(
                t.evict(Some(peer))
                    .ok_or(Refusal::PeerFull(t.max_per_peer))?,
            );
        }
        if t.live.len() >= t.max_total {
            evicted = Some(t.evict(None).ok_or(Refusal::Full(t.max_total))?);
        }
        let id = t.next_id;
        t.next_id += 1;
        t.live.insert(id, peer);
        *t.per_peer.entry(peer).or_default() += 1;
        let slot = Slot {
            table: self.table.clone(),
            id,
        };
        Ok((slot, evicted.map(Evicted)))
    }
}

impl Table {
    /// Closes the longest-idle connection (of `peer`, if given) and frees its slot.
    fn evict(&mut self, peer: Option<PeerKey>) -> Option<PeerKey> {
        let (&id, _) = self
            .idle
            .iter()
            .filter(|(id, _)| peer.is_none() || self.live.get(id) == peer.as_ref())
            .min_by_key(|(_, (since, _))| *since)?;
        let (_, tcp) = self.idle.remove(&id)?;
        // Its thread sees the end of the stream and ends; the slot is free already.
        let _ = tcp.shutdown(Shutdown::Both);
        self.release(id)
    }

    fn release(&mut self, id: u64) -> Option<PeerKey> {
        self.idle.remove(&id);
        let peer = self.live.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        Some(peer)
    }
}

/// One connection's place; dropping it frees the place.
pub(crate) struct Slot {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Slot {
    /// The connection waits for its next request: it may be closed to make room (`tcp` is
    /// shut down then). No effect when the socket cannot be cloned (it stays unevictable).
    pub(crate) fn idle(&self, tcp: &TcpStream) {
        let Ok(tcp) = tcp.try_clone() else {
            return;
        };
        let mut t = lock(&self.table);
        if t.live.contains_key(&self.id) {
            let since = t.next_idle;
            t.next_idle += 1;
            t.idle.insert(self.id, (since, tcp));
        }
    }

    /// The next request began: the connection is no longer evictable. False when it was
    /// evicted meanwhile (then it must end).
    pub(crate) fn busy(&self) -> bool {
        let mut t = lock(&self.table);
        t.idle.remove(&self.id);
        t.live.contains_key(&self.id)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.table).release(self.id);
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair on loopback: (server side, client side).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn peer_keys_are_ipv4_addresses_and_ipv6_64s() {
        assert_eq!(PeerKey::of(ip("10.0.0.1")), PeerKey(ip("10.0.0.1")));
        assert_eq!(PeerKey::of(ip("::ffff:10.0.0.1")), PeerKey(ip("10.0.0.1")));
        assert_eq!(
            PeerKey::of(ip("2001:db8:1:2:aaaa::1")),
            PeerKey::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            PeerKey::of(ip("2001:db8:1:2::1")),
            PeerKey::of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn limits_per_peer_and_in_all_and_frees_on_drop() {
        let slots = Slots::new(3, 2);
        let a1 = slots.admit(ip("10.0.0.1")).unwrap();
        let _a2 = slots.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            slots.admit(ip("10.0.0.1")).err(),
            Some(Refusal::PeerFull(2))
        );
        let _b1 = slots.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(slots.admit(ip("10.0.0.3")).err(), Some(Refusal::Full(3)));
        assert_eq!(slots.open(), 3);
        drop(a1);
        assert_eq!(slots.open(), 2);
        assert!(slots.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn a_full_server_closes_the_longest_idle_connection_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (s1, mut c1) = pair(&listener);
        let (s2, mut c2) = pair(&listener);
        let slots = Slots::new(2, 2);
        let (first, _) = slots.admit(ip("10.0.0.1")).unwrap();
        let (second, _) = slots.admit(ip("10.0.0.2")).unwrap();
        first.idle(&s1);
        second.idle(&s2);
        let (third, evicted) = slots.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(evicted, Some(Evicted(PeerKey(ip("10.0.0.1")))));
        assert_eq!(
            c1.read(&mut [0u8; 1]).unwrap(),
            0,
            "the evicted socket is closed"
        );
        assert!(!first.busy(), "an evicted connection learns it must end");
        assert!(second.busy(), "the other one goes on");
        drop(first); // its slot was handed over already: nothing freed twice
        assert_eq!(slots.open(), 2);
        // Nobody idle now: refused.
        assert_eq!(slots.admit(ip("10.0.0.4")).err(), Some(Refusal::Full(2)));
        drop((third, second));
        c2.set_nonblocking(true).unwrap();
        assert!(
            c2.read(&mut [0u8; 1]).is_err(),
            "a busy socket is left open"
        );
    }

    #[test]
    fn a_peer_at_its_limit_gives_way_only_with_its_own_idle_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (s_other, _c_other) = pair(&listener);
        let (s_own, _c_own) = pair(&listener);
        let slots = Slots::new(10, 1);
        let (other, _) = slots.admit(ip("10.0.0.2")).unwrap();
        other.idle(&s_other);
        let (own, _) = slots.admit(ip("10.0.0.1")).unwrap();
        own.idle(&s_own);
        let (_next, evicted) = slots.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(evicted, Some(Evicted(PeerKey(ip("10.0.0.1")))));
        assert!(
            other.busy(),
            "another address's idle connection is not taken"
        );
        assert_eq!(
            slots.admit(ip("10.0.0.1")).err(),
            Some(Refusal::PeerFull(1))
        );
    }
}
