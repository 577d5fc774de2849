//! systemd notifications (`Type=notify`): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.
//!
//! A datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace); nothing at
//! all when ferry does not run under systemd. No libsystemd needed.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;

/// Where notifications go, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// A notifier for `socket` (`crate::config::notify_socket()`); `None` makes it silent.
    pub fn new(socket: Option<OsString>) -> Self {
        Self { socket }
    }

    /// Sends `msg` (e.g. `"READY=1\nSTATUS=idle"`); failures are logged once at debug level.
    pub fn send(&self, msg: &str) {
        let Some(path) = &self.socket else { return };
        if let Err(e) = send_to(path, msg) {
            log::debug!("systemd notification failed: {e}");
        }
    }
}

fn send_to(path: &OsString, msg: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
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
