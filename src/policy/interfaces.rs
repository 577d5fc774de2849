//! `network.interfaces`: uploads go only while the kernel's route to the endpoint leaves
//! through one of the listed interfaces ("Wi-Fi only, never the modem").
//!
//! Key idea: before every step (and after every network change, when the gate asks again) the
//! kernel is asked where it would send a packet to each of the endpoint's addresses now
//! ([`super::route`]); any address routed through another interface closes the gate, so a
//! connection cannot pick that one. It fails closed: when the kernel cannot be asked, or the
//! name has no address yet, nothing goes. A route that changes mid-upload closes the gate at
//! the next check, which stops the upload in flight; `network.bind_interface` closes the gap
//! between a check and the bytes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::addresses::Addresses;
use super::route::Routes;
use super::{Policy, Verdict};
use crate::clock::Clock;

/// How soon to ask again while the endpoint's address or the kernel's answer is missing.
const RETRY: Duration = Duration::from_secs(1);

/// Where the route to one address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Way {
    /// Out through this interface.
    Out(String),
    /// Nowhere: no route.
    NoRoute,
}

/// The interface policy. See the module docs.
#[derive(Debug)]
pub(crate) struct InterfacePolicy {
    /// The endpoint's host, for the texts.
    host: String,
    allowed: Vec<String>,
    addresses: Addresses,
    /// Opened at the first check (and again after it failed).
    routes: Option<Routes>,
    /// The ways of the last check, to notice a change (and look the name up again).
    last: Vec<Way>,
}

impl InterfacePolicy {
    /// The policy for uploads to `endpoint` (an http(s) URL), allowing `allowed` interfaces.
    pub(crate) fn new(endpoint: &str, allowed: Vec<String>, clock: Arc<dyn Clock>) -> Self {
        let (host, port) = host_port(endpoint);
        Self {
            addresses: Addresses::new(&host, port, clock),
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            allowed,
            routes: None,
            last: Vec::new(),
        }
    }

    /// Where the routes to `addrs` go, asking the kernel.
    fn ways(&mut self, addrs: &[IpAddr]) -> std::io::Result<Vec<Way>> {
        let routes = match self.routes.as_mut() {
            Some(r) => r,
            None => self.routes.insert(Routes::open()?),
        };
        let mut ways = Vec::with_capacity(addrs.len());
        for ip in addrs {
            match routes.out_interface(*ip) {
                Ok(Some(name)) => ways.push(Way::Out(name)),
                Ok(None) => ways.push(Way::NoRoute),
                Err(e) => {
                    self.routes = None;
                    return Err(e);
                }
            }
        }
        Ok(ways)
    }
}

impl Policy for InterfacePolicy {
    fn name(&self) -> &'static str {
        "interfaces"
    }

    fn check(&mut self, now: Instant, _wall: SystemTime) -> Verdict {
        let retry = |closed: String| Verdict {
            closed: Some(closed),
            recheck_at: Some(now + RETRY),
            ..Verdict::default()
        };
        let addrs = match self.addresses.get() {
            None => return retry(format!("looking up the address of {}", self.host)),
            Some(Err(e)) => {
                return retry(format!("cannot look up the address of {}: {e}", self.host))
            }
            Some(Ok(a)) => a,
        };
        let ways = match self.ways(&addrs) {
            Ok(w) => w,
            Err(e) => {
                return retry(format!(
                    "cannot ask the kernel for the route to {} ({e}); nothing is sent until it answers (network.interfaces)",
                    self.host
                ))
            }
        };
        if !self.last.is_empty() && ways != self.last {
            // The network changed: the name may point elsewhere now.
            self.addresses.refresh();
        }
        let verdict = judge(&self.host, &self.allowed, &ways);
        self.last = ways;
        verdict
    }
}

/// The verdict for the routes `ways` to `host`'s addresses: open when each address with a
/// route goes out through an allowed interface and one at least has a route.
pub(crate) fn judge(host: &str, allowed: &[String], ways: &[Way]) -> Verdict {
    let wrong = ways.iter().find_map(|w| match w {
        Way::Out(name) if !allowed.contains(name) => Some(name),
        _ => None,
    });
    let closed = if let Some(name) = wrong {
        Some(format!(
            "the route to {host} goes out through {name}, not {} (network.interfaces)",
            either(allowed)
        ))
    } else if ways.iter().all(|w| *w == Way::NoRoute) {
        Some(format!(
            "no route to {host} (network.interfaces: {})",
            either(allowed)
        ))
    } else {
        None
    };
    Verdict {
        closed,
        ..Verdict::default()
    }
}

/// `a`, `a or b`, `a, b or c`.
fn either(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// Host (as written, IPv6 in brackets) and port of an http(s) URL, the port made explicit.
fn host_port(endpoint: &str) -> (String, u16) {
    let origin = crate::tus::url::origin(endpoint).unwrap_or_default();
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    match authority.rsplit_once(':') {
        Some((host, port)) if !authority.ends_with(']') => {
            (host.to_string(), port.parse().unwrap_or(443))
        }
        _ => (authority.to_string(), 443),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn out(n: &str) -> Way {
        Way::Out(n.into())
    }

    #[test]
    fn the_texts_say_where_the_route_goes_and_what_is_allowed() {
        let allowed = names(&["wlan0", "eth0"]);
        let host = "upload.example.com";
        assert_eq!(judge(host, &allowed, &[out("wlan0")]), Verdict::open());
        assert_eq!(
            judge(host, &allowed, &[out("eth0"), Way::NoRoute]),
            Verdict::open(),
            "an address without a route cannot carry a byte"
        );
        assert_eq!(
            judge(host, &allowed, &[out("wlan0"), out("wwan0")]).closed.as_deref(),
            Some("the route to upload.example.com goes out through wwan0, not wlan0 or eth0 (network.interfaces)")
        );
        assert_eq!(
            judge(host, &allowed, &[Way::NoRoute]).closed.as_deref(),
            Some("no route to upload.example.com (network.interfaces: wlan0 or eth0)")
        );
        assert_eq!(
            judge(host, &names(&["a", "b", "c"]), &[out("d")]).closed.as_deref(),
            Some("the route to upload.example.com goes out through d, not a, b or c (network.interfaces)")
        );
    }

    #[test]
    fn hosts_and_ports_come_from_the_endpoint() {
        assert_eq!(
            host_port("https://u.example.com/files/"),
            ("u.example.com".into(), 443)
        );
        assert_eq!(
            host_port("http://10.0.0.1:1080/f"),
            ("10.0.0.1".into(), 1080)
        );
        assert_eq!(host_port("http://h/f"), ("h".into(), 80));
        assert_eq!(host_port("https://[::1]:8443/f"), ("[::1]".into(), 8443));
        assert_eq!(host_port("https://[::1]/f"), ("[::1]".into(), 443));
    }

    /// Against the real kernel: the route to 127.0.0.1 goes out through `lo`.
    #[test]
    fn loopback_is_allowed_through_lo_only() {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let now = clock.now();
        let wall = clock.wall();
        let mut lo = InterfacePolicy::new(
            "http://127.0.0.1:1080/files/",
            names(&["lo"]),
            clock.clone(),
        );
        assert_eq!(lo.check(now, wall), Verdict::open());
        let mut wifi =
            InterfacePolicy::new("http://127.0.0.1:1080/files/", names(&["wlan0"]), clock);
        assert_eq!(
            wifi.check(now, wall).closed.as_deref(),
            Some("the route to 127.0.0.1 goes out through lo, not wlan0 (network.interfaces)")
        );
    }
}
