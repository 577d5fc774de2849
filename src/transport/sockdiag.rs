//! Asking the kernel how many bytes of a TCP connection it still holds: sock_diag over netlink.
//!
//! Key idea: for an established connection the kernel's `inet_diag` answer carries
//! `idiag_wqueue` = `write_seq - snd_una`, the bytes written and not yet acknowledged by the
//! peer (sent or not): what `ss` shows as Send-Q and the `SIOCOUTQ` ioctl returns. The ioctl
//! and `getsockopt(TCP_INFO)` both need `unsafe` code here (socket2 and std offer neither, and
//! we forbid `unsafe_code`); a netlink request is plain bytes over the safe socket of
//! `netlink-sys`, which we already use for network changes. One exact lookup by the
//! connection's four addresses: a `sendto` and a `recv`, no walk over the system's sockets
//! (as `/proc/net/tcp` would be).
//!
//! Layouts from linux/netlink.h, linux/sock_diag.h and linux/inet_diag.h (native byte order,
//! except ports and addresses, which are in network order).

use std::io;
use std::net::{IpAddr, SocketAddr};

use netlink_sys::protocols::NETLINK_SOCK_DIAG;

/// `nlmsghdr` is 16 bytes; `inet_diag_req_v2` 56; `inet_diag_msg` 72.
const NLMSG_HDR: usize = 16;
const REQ_LEN: usize = NLMSG_HDR + 56;
const MSG_LEN: usize = 72;
/// Message types: `NLMSG_ERROR`, and `SOCK_DIAG_BY_FAMILY` for both question and answer.
const NLMSG_ERROR: u16 = 2;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// `idiag_wqueue`'s offset in `inet_diag_msg`.
const WQUEUE_AT: usize = 60;

/// A netlink socket for sock_diag questions.
pub(super) struct SockDiag {
    socket: netlink_sys::Socket,
    seq: u32,
}

impl SockDiag {
    /// Opens the socket; fails where netlink is not allowed (a sandbox, a seccomp filter).
    pub(super) fn open() -> io::Result<Self> {
        let socket = netlink_sys::Socket::new(NETLINK_SOCK_DIAG)?;
        // The kernel answers before `sendto` returns; never wait for an answer that is lost.
        socket.set_non_blocking(true)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Bytes the kernel holds for the TCP connection from `local` to `peer`: written by us and
    /// not yet acknowledged by the peer.
    pub(super) fn unacked(&mut self, local: SocketAddr, peer: SocketAddr) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(local, peer, self.seq);
        self.socket
            .send_to(&req, &netlink_sys::SocketAddr::new(0, 0), 0)?;
        let mut buf = Vec::with_capacity(4096);
        // Skip an answer left over from an earlier question (its seq differs).
        for _ in 0..4 {
            buf.clear();
            self.socket.recv(&mut buf, 0)?;
            if let Some(answer) = parse(&buf, self.seq)? {
                return Ok(answer);
            }
        }
        Err(io::Error::other("sock_diag gave no answer to our question"))
    }
}

/// A `SOCK_DIAG_BY_FAMILY` request for the one TCP socket `local` → `peer`.
fn request(local: SocketAddr, peer: SocketAddr, seq: u32) -> [u8; REQ_LEN] {
    let mut b = [0u8; REQ_LEN];
    b[0..4].copy_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0 at 12..16: the kernel.
    let r = NLMSG_HDR;
    b[r] = if local.is_ipv4() { AF_INET } else { AF_INET6 };
    b[r + 1] = IPPROTO_TCP;
    // idiag_ext 0 (no attributes), pad; idiag_states: all.
    b[r + 4..r + 8].copy_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: sport, dport, src[16], dst[16], if, cookie[2] (none: all ones).
    let id = r + 8;
    b[id..id + 2].copy_from_slice(&local.port().to_be_bytes());
    b[id + 2..id + 4].copy_from_slice(&peer.port().to_be_bytes());
    b[id + 4..id + 20].copy_from_slice(&address(local.ip()));
    b[id + 20..id + 36].copy_from_slice(&address(peer.ip()));
    b[id + 40..id + 48].fill(0xff);
    b
}

/// An address as `inet_diag_sockid` holds it: IPv4 in the first four bytes.
fn address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// `idiag_wqueue` of the answer to question `seq`; `None` for a message that answers another.
fn parse(buf: &[u8], seq: u32) -> io::Result<Option<u32>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short sock_diag answer");
    let u32_at = |at: usize| -> io::Result<u32> {
        let bytes = buf.get(at..at + 4).ok_or_else(short)?;
        Ok(u32::from_ne_bytes(bytes.try_into().map_err(|_| short())?))
    };
    let kind = u16::from_ne_bytes(
        buf.get(4..6)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?,
    );
    if u32_at(8)? != seq {
        return Ok(None);
    }
    match kind {
        NLMSG_ERROR => {
            let errno = i32::from_ne_bytes(u32_at(NLMSG_HDR)?.to_ne_bytes());
            Err(io::Error::from_raw_os_error(errno.saturating_neg()))
        }
        SOCK_DIAG_BY_FAMILY if buf.len() >= NLMSG_HDR + MSG_LEN => {
            u32_at(NLMSG_HDR + WQUEUE_AT).map(Some)
        }
        _ => Err(short()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_request_names_the_connection_in_network_order() {
        let local: SocketAddr = "127.0.0.1:4660".parse().unwrap();
        let peer: SocketAddr = "10.1.2.3:443".parse().unwrap();
        let b = request(local, peer, 7);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 72);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 7);
        assert_eq!(&b[16..18], &[AF_INET, IPPROTO_TCP]);
        assert_eq!(&b[24..28], &[0x12, 0x34, 0x01, 0xbb], "ports");
        assert_eq!(&b[28..32], &[127, 0, 0, 1]);
        assert_eq!(&b[44..48], &[10, 1, 2, 3]);
        assert_eq!(&b[64..72], &[0xff; 8], "no cookie");
    }

    #[test]
    fn answers_errors_and_strangers_are_told_apart() {
        let mut answer = vec![0u8; NLMSG_HDR + MSG_LEN];
        answer[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        answer[8..12].copy_from_slice(&3u32.to_ne_bytes());
        answer[NLMSG_HDR + WQUEUE_AT..][..4].copy_from_slice(&65536u32.to_ne_bytes());
        assert_eq!(parse(&answer, 3).unwrap(), Some(65536));
        assert_eq!(
            parse(&answer, 4).unwrap(),
            None,
            "another question's answer"
        );
        assert!(parse(&answer[..40], 3).is_err(), "truncated");
        let mut error = vec![0u8; NLMSG_HDR + 4];
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[8..12].copy_from_slice(&3u32.to_ne_bytes());
        error[16..20].copy_from_slice(&(-2i32).to_ne_bytes());
        assert_eq!(parse(&error, 3).unwrap_err().raw_os_error(), Some(2));
    }

    /// The kernel's count on a real connection: what a reader that stopped reading has not
    /// taken stays unacknowledged once its receive buffer is full; it all goes once it reads.
    #[test]
    fn the_kernel_counts_what_a_stalled_peer_has_not_acknowledged() {
        let Ok(mut diag) = SockDiag::open() else {
            eprintln!("skipped: no netlink here");
            return;
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (local, peer) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        assert_eq!(diag.unacked(local, peer).unwrap(), 0, "nothing written");
        client.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0usize;
        while let Ok(n) = (&client).write(&chunk) {
            written += n;
        }
        let held = diag.unacked(local, peer).unwrap() as usize;
        assert!(held > 0 && held < written, "{held} of {written} held");
        let mut sink = vec![0u8; written];
        server.read_exact(&mut sink[..written - held]).unwrap();
        let mut rest = 0;
        while rest < held {
            rest += server.read(&mut sink[..held - rest]).unwrap();
        }
        // The last acknowledgement may be a delayed one (up to 40 ms).
        let mut left = diag.unacked(local, peer).unwrap();
        for _ in 0..100 {
            if left == 0 {
                break;
            }
            #[allow(clippy::disallowed_methods, reason = "waits for a real kernel's ACK")]
            std::thread::sleep(std::time::Duration::from_millis(10));
            left = diag.unacked(local, peer).unwrap();
        }
        assert_eq!(left, 0, "all acknowledged");
    }
}
