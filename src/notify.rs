//! systemd notifications (`Type=notify`): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.
//!
//! A datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace); nothing at
//! all when ferry does not run under systemd. No libsystemd needed.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;

/// Where notifications go, if anywhere.
#[derive(Debug, Clone, Default)]
pub(crate) struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// A notifier for `socket` (the `NOTIFY_SOCKET` systemd sets); `None` makes it silent.
    pub(crate) fn new(socket: Option<OsString>) -> Self {
        Self { socket }
    }

    /// Sends `msg` (e.g. `"READY=1\nSTATUS=idle"`); failures are logged once at debug level.
    pub(crate) fn send(&self, msg: &str) {
        let Some(path) = &self.socket else { return };
        if let Err(e) = send_to(path, msg) {
            log::debug!("systemd notification failed: {e}");
        }
    }
}

/// How long a notification may wait for room in the receiver's queue. A datagram send blocks
/// while the queue is full (`net.unix.max_dgram_qlen`, 10 without systemd's sysctl.d): a PID 1
/// that stops reading must not stop ferry's uploads with it. A lost STATUS= is harmless, and
/// WATCHDOG=1 is sent twice per watchdog interval.
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

fn send_to(path: &OsString, msg: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let p = path.to_string_lossy();
    if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(msg.as_bytes(), &addr)?;
    } else {
        sock.send_to(msg.as_bytes(), p.as_ref())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket_and_stays_silent_without_one() {
        let dir = std::env::temp_dir().join(format!("ferry-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        Notifier::new(Some(path.clone().into_os_string())).send("READY=1\nSTATUS=ok");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok");
        Notifier::new(None).send("READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_receiver_that_stops_reading_does_not_block_the_sender() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ferry-test-full-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::new(Some(format!("@{name}").into()));
        // More than the receive queue holds: without the timeout, the first send after the
        // queue fills never returns.
        let qlen: u64 = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(10);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..qlen + 4 {
                notifier.send(&format!("STATUS={i}"));
            }
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("notifications to a full queue blocked");
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=0", "the first ones were queued");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ferry-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(Some(format!("@{name}").into())).send("WATCHDOG=1");
        let mut buf = [0u8; 16];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
