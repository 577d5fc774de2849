//! Which interface the kernel's route to an address goes out through right now: what
//! `ip route get ADDRESS` says, asked over rtnetlink.
//!
//! Key idea: one `RTM_GETROUTE` question for the address (the kernel runs its real route
//! lookup, policy rules included, and answers with the chosen route), its `RTA_OIF` then named
//! with one `RTM_GETLINK` question. Two small messages each way on a netlink socket of
//! `netlink-sys` (no `unsafe`, no new crate): cheap enough to ask before every step. The
//! kernel answers before `sendto` returns, so the socket never blocks.
//!
//! Layouts from linux/netlink.h and linux/rtnetlink.h (native byte order; addresses in
//! network order). Not asked: the source address, mark or uid a socket would carry, so a
//! policy rule keyed on those can route a real connection differently (`bind_interface`
//! holds whatever the rules say).

use std::io;
use std::net::IpAddr;

use netlink_sys::protocols::NETLINK_ROUTE;

const NLMSG_HDR: usize = 16;
/// `struct rtmsg` and `struct ifinfomsg`.
const RTMSG: usize = 12;
const IFINFOMSG: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const NLM_F_REQUEST: u16 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const IFLA_IFNAME: u16 = 3;
/// Route types that carry nothing anywhere: blackhole, unreachable, prohibit, throw.
const RTN_NOWHERE: [u8; 4] = [6, 7, 8, 9];
/// The errors of a route lookup that finds no way out: ENETUNREACH, EHOSTUNREACH, EACCES
/// (a prohibit route), EINVAL (a blackhole route: `ip route get` shows the same).
const NO_ROUTE_ERRNOS: [i32; 4] = [101, 113, 13, 22];

/// A netlink socket for route questions.
pub(crate) struct Routes {
    socket: netlink_sys::Socket,
    seq: u32,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("seq", &self.seq).finish()
    }
}

impl Routes {
    /// Opens the socket; fails where netlink is not allowed (a sandbox, a seccomp filter).
    pub(crate) fn open() -> io::Result<Self> {
        let socket = netlink_sys::Socket::new(NETLINK_ROUTE)?;
        socket.set_non_blocking(true)?;
        Ok(Self { socket, seq: 0 })
    }

    /// The name of the interface the route to `dst` goes out through now; `None` when there is
    /// no route (none matches, or it is unreachable, prohibit or blackhole).
    pub(crate) fn out_interface(&mut self, dst: IpAddr) -> io::Result<Option<String>> {
        self.seq = self.seq.wrapping_add(1);
        let answer = match self.ask(&route_request(dst, self.seq)) {
            Err(e)
                if e.raw_os_error()
                    .is_some_and(|n| NO_ROUTE_ERRNOS.contains(&n)) =>
            {
                return Ok(None)
            }
            other => other?,
        };
        let Some(index) = route_oif(&answer)? else {
            return Ok(None);
        };
        self.seq = self.seq.wrapping_add(1);
        let answer = self.ask(&link_request(index, self.seq))?;
        link_name(&answer).map(Some)
    }

    /// Sends `req` and returns the answer to it (an error answer as the error it carries).
    fn ask(&mut self, req: &[u8]) -> io::Result<Vec<u8>> {
        self.socket
            .send_to(req, &netlink_sys::SocketAddr::new(0, 0), 0)?;
        let mut buf = Vec::with_capacity(32 * 1024);
        // Skip an answer left over from an earlier question (its seq differs).
        for _ in 0..4 {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            if u32_at(&buf, 8)? == self.seq {
                if u16_at(&buf, 4)? == NLMSG_ERROR {
                    let errno = i32::from_ne_bytes(u32_at(&buf, NLMSG_HDR)?.to_ne_bytes());
                    return Err(io::Error::from_raw_os_error(errno.saturating_neg()));
                }
                return Ok(buf);
            }
        }
        Err(io::Error::other("rtnetlink gave no answer to our question"))
    }
}

/// `nlmsghdr` for a request of `len` bytes.
fn header(b: &mut [u8], kind: u16, seq: u32) {
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&kind.to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
}

/// `RTM_GETROUTE` for `dst` (a host route: prefix length 32 or 128).
fn route_request(dst: IpAddr, seq: u32) -> Vec<u8> {
    let (family, addr): (u8, Vec<u8>) = match dst {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    };
    let mut b = vec![0u8; NLMSG_HDR + RTMSG + 4 + addr.len()];
    header(&mut b, RTM_GETROUTE, seq);
    b[NLMSG_HDR] = family;
    b[NLMSG_HDR + 1] = u8::try_from(addr.len() * 8).unwrap_or(128);
    let at = NLMSG_HDR + RTMSG;
    let rta_len = u16::try_from(4 + addr.len()).unwrap_or(u16::MAX);
    b[at..at + 2].copy_from_slice(&rta_len.to_ne_bytes());
    b[at + 2..at + 4].copy_from_slice(&RTA_DST.to_ne_bytes());
    b[at + 4..].copy_from_slice(&addr);
    b
}

/// `RTM_GETLINK` for interface number `index`.
fn link_request(index: u32, seq: u32) -> Vec<u8> {
    let mut b = vec![0u8; NLMSG_HDR + IFINFOMSG];
    header(&mut b, RTM_GETLINK, seq);
    b[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// The outgoing interface's number in an `RTM_NEWROUTE` answer; `None` for a route that
/// leads nowhere.
fn route_oif(msg: &[u8]) -> io::Result<Option<u32>> {
    if u16_at(msg, 4)? != RTM_NEWROUTE {
        return Err(strange("a route"));
    }
    let route_type = *msg.get(NLMSG_HDR + 7).ok_or_else(|| strange("a route"))?;
    if RTN_NOWHERE.contains(&route_type) {
        return Ok(None);
    }
    match attribute(msg, NLMSG_HDR + RTMSG, RTA_OIF)? {
        Some(v) => u32_at(v, 0).map(Some),
        None => Ok(None),
    }
}

/// The interface name in an `RTM_NEWLINK` answer.
fn link_name(msg: &[u8]) -> io::Result<String> {
    if u16_at(msg, 4)? != RTM_NEWLINK {
        return Err(strange("a link"));
    }
    let v = attribute(msg, NLMSG_HDR + IFINFOMSG, IFLA_IFNAME)?.ok_or_else(|| strange("a link"))?;
    let name = v.split(|b| *b == 0).next().unwrap_or_default();
    Ok(String::from_utf8_lossy(name).into_owned())
}

/// The value of the first attribute of type `kind` in the message `msg` (its own length in
/// its header), attributes starting at `from`.
fn attribute(msg: &[u8], from: usize, kind: u16) -> io::Result<Option<&[u8]>> {
    let end = usize::try_from(u32_at(msg, 0)?)
        .unwrap_or(usize::MAX)
        .min(msg.len());
    let mut at = from;
    while at + 4 <= end {
        let len = usize::from(u16_at(msg, at)?);
        if len < 4 || at + len > end {
            return Err(strange("an attribute"));
        }
        if u16_at(msg, at + 2)? & 0x3fff == kind {
            return Ok(Some(&msg[at + 4..at + len]));
        }
        at += (len + 3) & !3;
    }
    Ok(None)
}

fn strange(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("rtnetlink answered with something that is not {what}"),
    )
}

fn u16_at(b: &[u8], at: usize) -> io::Result<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
        .ok_or_else(|| strange("a whole message"))
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or_else(|| strange("a whole message"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_request_asks_for_one_host() {
        let b = route_request("10.1.2.3".parse().unwrap(), 9);
        assert_eq!(b.len(), 36);
        assert_eq!(u32_at(&b, 0).unwrap(), 36);
        assert_eq!(u16_at(&b, 4).unwrap(), RTM_GETROUTE);
        assert_eq!(u32_at(&b, 8).unwrap(), 9);
        assert_eq!(&b[16..18], &[AF_INET, 32]);
        assert_eq!(u16_at(&b, 28).unwrap(), 8, "rta_len");
        assert_eq!(u16_at(&b, 30).unwrap(), RTA_DST);
        assert_eq!(&b[32..36], &[10, 1, 2, 3]);
        let b = route_request("::1".parse().unwrap(), 1);
        assert_eq!((b.len(), b[16], b[17]), (48, AF_INET6, 128));
    }

    #[test]
    fn answers_are_read_and_malformed_ones_refused() {
        // An RTM_NEWROUTE of type unicast with RTA_TABLE (4 bytes) then RTA_OIF = 7.
        let mut m = vec![0u8; NLMSG_HDR + RTMSG + 16];
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
        m[NLMSG_HDR + 7] = 1;
        let a = NLMSG_HDR + RTMSG;
        m[a..a + 2].copy_from_slice(&8u16.to_ne_bytes());
        m[a + 2..a + 4].copy_from_slice(&15u16.to_ne_bytes());
        m[a + 8..a + 10].copy_from_slice(&8u16.to_ne_bytes());
        m[a + 10..a + 12].copy_from_slice(&RTA_OIF.to_ne_bytes());
        m[a + 12..a + 16].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(route_oif(&m).unwrap(), Some(7));
        m[NLMSG_HDR + 7] = 7;
        assert_eq!(route_oif(&m).unwrap(), None, "unreachable");
        m[NLMSG_HDR + 7] = 1;
        m[a + 8..a + 10].copy_from_slice(&80u16.to_ne_bytes());
        assert!(route_oif(&m).is_err(), "an attribute past the end");
        assert!(route_oif(&m[..10]).is_err(), "truncated");
    }

    #[test]
    fn the_route_to_loopback_goes_out_through_lo() {
        let mut routes = Routes::open().expect("rtnetlink (qemu-user emulates it too)");
        for dst in ["127.0.0.1", "127.3.4.5"] {
            let out = routes.out_interface(dst.parse().unwrap()).unwrap();
            assert_eq!(out.as_deref(), Some("lo"), "{dst}");
        }
        // Asked again and again on the same socket: each answer is matched to its question.
        for _ in 0..50 {
            let out = routes.out_interface("127.0.0.1".parse().unwrap()).unwrap();
            assert_eq!(out.as_deref(), Some("lo"));
        }
    }
}
