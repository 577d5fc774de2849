//! The endpoint's addresses for the interface policy: an IP address as written, or a host
//! name looked up by the system's resolver in a thread of its own.
//!
//! Key idea: a lookup can take seconds while the link is down, and the gate asks before every
//! step, so the gate never waits for one: it reads the last answer. The thread looks the name
//! up again every few minutes, and at once when asked ([`Addresses::refresh`], after the
//! routes changed). It is not joined when dropped: a lookup in progress cannot be cut short,
//! and shutdown must not wait for it; it ends after that lookup.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::Clock;

/// How long a looked-up answer is used before it is looked up again.
const REFRESH: Duration = Duration::from_secs(300);
/// How soon a lookup that failed is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// The last lookup's answer.
type Answer = Option<Result<Vec<IpAddr>, String>>;

/// The endpoint host's addresses.
#[derive(Debug)]
pub(crate) enum Addresses {
    /// The endpoint names an IP address.
    Literal(IpAddr),
    /// A host name, looked up in the background.
    Named(Arc<Lookup>),
}

/// What the lookup thread and the policy share.
#[derive(Debug, Default)]
pub(crate) struct Lookup {
    answer: Mutex<Answer>,
    /// Wakes the thread: for a lookup now, or to end.
    wake: AtomicBool,
    stop: AtomicBool,
}

impl Addresses {
    /// For `host` (brackets of an IPv6 literal allowed) on `port`; starts the lookup thread
    /// for a name.
    pub(crate) fn new(host: &str, port: u16, clock: Arc<dyn Clock>) -> Self {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Self::Literal(ip);
        }
        let lookup = Arc::new(Lookup::default());
        let shared = lookup.clone();
        let name = host.to_string();
        let spawned = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(move || look_up_until_stopped(&name, port, &shared, &*clock));
        if let Err(e) = spawned {
            *lookup.answer.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Err(format!("cannot start a thread to look it up: {e}")));
        }
        Self::Named(lookup)
    }

    /// The addresses now: `None` until the first lookup answered, `Err` when it failed and no
    /// earlier lookup had succeeded.
    pub(crate) fn get(&self) -> Answer {
        match self {
            Self::Literal(ip) => Some(Ok(vec![*ip])),
            Self::Named(l) => l.answer.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        }
    }

    /// Asks for a new lookup now (the network changed).
    pub(crate) fn refresh(&self) {
        if let Self::Named(l) = self {
            l.wake.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for Addresses {
    fn drop(&mut self) {
        if let Self::Named(l) = self {
            l.stop.store(true, Ordering::Relaxed);
            l.wake.store(true, Ordering::Relaxed);
        }
    }
}

fn look_up_until_stopped(host: &str, port: u16, shared: &Lookup, clock: &dyn Clock) {
    while !shared.stop.load(Ordering::Relaxed) {
        shared.wake.store(false, Ordering::Relaxed);
        let found = look_up(host, port);
        let wait = {
            let mut answer = shared.answer.lock().unwrap_or_else(|p| p.into_inner());
            match found {
                Ok(addrs) => {
                    *answer = Some(Ok(addrs));
                    REFRESH
                }
                // An earlier answer stays in use: stale addresses beat none.
                Err(_) if matches!(*answer, Some(Ok(_))) => RETRY,
                Err(e) => {
                    *answer = Some(Err(e));
                    RETRY
                }
            }
        };
        clock.sleep(wait, &shared.wake);
    }
}

fn look_up(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let mut addrs: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .map(|a| a.ip())
        .collect();
    addrs.dedup();
    if addrs.is_empty() {
        return Err("the name has no address".into());
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn literals_need_no_lookup_and_names_are_looked_up() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let v6 = Addresses::new("[::1]", 443, clock.clone());
        assert_eq!(v6.get(), Some(Ok(vec!["::1".parse().unwrap()])));
        let named = Addresses::new("localhost", 80, clock.clone());
        let mut answer = named.get();
        for _ in 0..200 {
            if answer.is_some() {
                break;
            }
            clock.sleep(Duration::from_millis(10), &AtomicBool::new(false));
            answer = named.get();
        }
        let addrs = answer
            .expect("an answer within 2 s")
            .expect("localhost resolves");
        assert!(addrs.iter().all(IpAddr::is_loopback), "{addrs:?}");
    }
}
