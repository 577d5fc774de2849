//! End to end: `[network]`: the condition command (on loopback), and, in network namespaces of
//! our own (root, iproute2; native only), the interface rule and `bind_interface`.
//!
//! The namespace set-up ([`netns::Links`]): ferry runs in a namespace with two links, `wifi0`
//! and `modem0` (veth pairs), to a second namespace where @tus/server listens on 10.77.9.1; the
//! route to that address is switched between the two with `ip route replace`. All addresses
//! live in those namespaces only: nothing leaves the machine.

use std::time::Duration;

use crate::daemon::Spool;
use crate::harness::{assert_same_bytes, random_bytes, sigterm, wait_until};
use crate::support::peers::{NodeOpts, Peer};

/// `ferry status --json` as text (the gate's reasons show somewhere in it).
fn status(sp: &Spool) -> String {
    String::from_utf8_lossy(&sp.cmd(&["status", "--json"]).stdout).into_owned()
}

/// The one upload the peer holds, compared with the file written with `len` and `seed`.
fn assert_uploaded_once(peer: &Peer, len: usize, seed: u64) {
    let ids = peer.upload_files();
    assert_eq!(
        ids.len(),
        1,
        "one upload, resumed rather than started again: {ids:?}"
    );
    assert_same_bytes(
        &peer.stored_bytes(&ids[0]),
        &random_bytes(len, seed),
        "the upload",
    );
}

/// `network.condition`: a script whose answer the test flips (a file it reads) holds the
/// upload, with its first output line in the status, and lets it go once it exits 0.
#[test]
fn a_condition_that_says_wait_holds_uploads_until_it_says_go() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let sp = Spool::new("net-condition", &peer.endpoint(), "");
    let flag = sp.s.dir.join("may-upload");
    std::fs::write(&flag, "1").unwrap();
    let script = format!(
        "echo \"metered ($(cat {0}))\"; exit \"$(cat {0})\"",
        flag.display()
    );
    let extra = format!(
        "[network]\ncondition = [\"/bin/sh\", \"-c\", {script:?}]\ncondition_interval = \"1s\"\n"
    );
    let text = std::fs::read_to_string(&sp.config).unwrap();
    std::fs::write(&sp.config, format!("{text}{extra}")).unwrap();
    let mut child = sp.start();
    sp.drop_file("a.bin", 300_000, 81);
    wait_until(
        "the status to show the condition's answer",
        Duration::from_secs(10),
        || status(&sp).contains("condition /bin/sh says wait (exit 1): metered (1)"),
    );
    assert_eq!(peer.upload_count(), 0, "nothing went while it said wait");
    std::fs::write(&flag, "0").unwrap();
    wait_until(
        "the upload once the condition says go",
        Duration::from_secs(10),
        || sp.spool_files().is_empty(),
    );
    sigterm(&child);
    child.wait().unwrap();
    assert_uploaded_once(&peer, 300_000, 81);
}

/// Needs root and iproute2; native only (scripts/arm-test skips `network::netns::`).
mod netns {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use super::{assert_uploaded_once, status};
    use crate::daemon::Spool;
    use crate::harness::{ferry_argv, loopback_command, sigterm, wait_until, Daemon};
    use crate::scheduler::Netns;
    use crate::support::peers::{NodeOpts, Peer};

    const MIB: usize = 1024 * 1024;
    /// The server's address, on `lo` of the server's namespace.
    const SERVER: &str = "10.77.9.1";

    /// Two links from ferry's namespace to the server's. See the module docs.
    struct Links {
        // Dropped first: the server stops before its namespace goes.
        peer: Peer,
        device: Netns,
        _server_side: Netns,
    }

    impl Links {
        fn new(tag: &str) -> Links {
            let device = Netns::new(&format!("{tag}d"));
            let server_side = Netns::new(&format!("{tag}s"));
            for ns in [&device, &server_side] {
                // No IPv6 chatter (router solicitations, MLD) in the byte counters.
                for key in ["all", "default"] {
                    sysctl(ns, &format!("net.ipv6.conf.{key}.disable_ipv6=1"));
                }
            }
            let s = server_side.0.as_str();
            device.ip(
                &[
                    "link", "add", "wifi0", "type", "veth", "peer", "name", "ap0", "netns", s,
                ],
                true,
            );
            device.ip(
                &[
                    "link", "add", "modem0", "type", "veth", "peer", "name", "tower0", "netns", s,
                ],
                true,
            );
            for (dev, addr) in [("wifi0", "10.77.1.1/24"), ("modem0", "10.77.2.1/24")] {
                device.ip(&["addr", "add", addr, "dev", dev], true);
                device.ip(&["link", "set", dev, "up"], true);
            }
            for (dev, addr) in [("ap0", "10.77.1.2/24"), ("tower0", "10.77.2.2/24")] {
                server_side.ip(&["addr", "add", addr, "dev", dev], true);
                server_side.ip(&["link", "set", dev, "up"], true);
            }
            server_side.ip(&["addr", "add", &format!("{SERVER}/32"), "dev", "lo"], true);
            let ns_name: &'static str = Box::leak(server_side.0.clone().into_boxed_str());
            let links = Links {
                peer: Peer::node_tus_server(NodeOpts {
                    netns: Some(ns_name),
                    host: Some(SERVER),
                    ..NodeOpts::default()
                }),
                device,
                _server_side: server_side,
            };
            links.route_via("wifi0");
            links
        }

        /// Sends the traffic to the server out through `dev` (`wifi0` or `modem0`).
        fn route_via(&self, dev: &str) {
            let gateway = if dev == "wifi0" {
                "10.77.1.2"
            } else {
                "10.77.2.2"
            };
            let to = format!("{SERVER}/32");
            self.device
                .ip(&["route", "replace", &to, "via", gateway, "dev", dev], true);
            let got = self.exec(&["ip", "route", "get", SERVER]);
            assert!(got.contains(&format!("dev {dev}")), "ip route get: {got}");
        }

        /// Bytes sent out through `dev` of ferry's namespace so far.
        fn tx_bytes(&self, dev: &str) -> u64 {
            let path = format!("/sys/class/net/{dev}/statistics/tx_bytes");
            self.exec(&["cat", &path]).trim().parse().unwrap()
        }

        /// Runs `argv` in ferry's namespace; its stdout.
        fn exec(&self, argv: &[&str]) -> String {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.device.0])
                .args(argv)
                .output()
                .unwrap();
            assert!(out.status.success(), "{argv:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }

        /// `ferry run` in ferry's namespace.
        fn start(&self, sp: &Spool) -> Daemon {
            let mut argv = vec![
                "ip".to_string(),
                "netns".into(),
                "exec".into(),
                self.device.0.clone(),
            ];
            argv.extend(ferry_argv());
            argv.extend(["run".into(), "--config".into()]);
            argv.push(sp.config.display().to_string());
            let log = std::fs::File::create(&sp.log).unwrap();
            Daemon(
                loopback_command(&argv)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        }

        fn spool(&self, name: &str, extra: &str) -> Spool {
            Spool::new(name, &self.peer.endpoint(), extra)
        }
    }

    fn sysctl(ns: &Netns, setting: &str) {
        let ok = Command::new("ip")
            .args(["netns", "exec", &ns.0, "sysctl", "-q", "-w", setting])
            .status()
            .unwrap()
            .success();
        assert!(ok, "sysctl {setting} in {}", ns.0);
    }

    /// (a) `network.interfaces = ["wifi0"]` while the route goes through `modem0`: nothing is
    /// sent (not a byte through the modem), the status says why; the route switched to
    /// `wifi0`, the file goes.
    #[test]
    fn uploads_wait_while_the_route_leaves_through_an_interface_not_listed() {
        let links = Links::new("nia");
        links.route_via("modem0");
        let sp = links.spool("net-ifaces", "[network]\ninterfaces = [\"wifi0\"]");
        let modem_before = links.tx_bytes("modem0");
        let mut child = links.start(&sp);
        sp.drop_file("a.bin", 300_000, 91);
        wait_until("the status to say why", Duration::from_secs(10), || {
            status(&sp).contains(&format!(
                "the route to {SERVER} goes out through modem0, not wifi0 (network.interfaces)"
            ))
        });
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(links.peer.upload_count(), 0, "nothing was created");
        let leaked = links.tx_bytes("modem0") - modem_before;
        assert!(leaked < 4096, "{leaked} bytes went out through the modem");
        links.route_via("wifi0");
        wait_until("the upload through wifi0", Duration::from_secs(10), || {
            sp.spool_files().is_empty()
        });
        sigterm(&child);
        child.wait().unwrap();
        assert_uploaded_once(&links.peer, 300_000, 91);
    }

    /// (b) The route switched to `modem0` mid-upload stops the upload (the server's bytes stop
    /// growing); switched back, it resumes from the server's offset and completes.
    #[test]
    fn a_route_switched_mid_upload_stops_it_and_it_resumes_when_switched_back() {
        let links = Links::new("nib");
        let sp = links.spool(
            "net-switch",
            "[daemon]\nrate_limit = \"1MiB\"\n[upload]\nchunk_size = \"1MiB\"\n[network]\ninterfaces = [\"wifi0\"]",
        );
        let mut child = links.start(&sp);
        sp.drop_file("big.bin", 4 * MIB, 92);
        wait_until("a megabyte on the server", Duration::from_secs(10), || {
            links.peer.bytes_stored() > MIB as u64
        });
        links.route_via("modem0");
        std::thread::sleep(Duration::from_millis(1500));
        let held = links.peer.bytes_stored();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(
            links.peer.bytes_stored(),
            held,
            "the server's bytes stopped growing after the route changed\n{}",
            sp.log()
        );
        assert!(held < 4 * MIB as u64, "stopped mid-upload ({held} bytes)");
        assert!(
            status(&sp).contains("goes out through modem0, not wifi0"),
            "{}",
            status(&sp)
        );
        links.route_via("wifi0");
        wait_until("the rest of the upload", Duration::from_secs(10), || {
            sp.spool_files().is_empty()
        });
        sigterm(&child);
        child.wait().unwrap();
        assert_uploaded_once(&links.peer, 4 * MIB, 92);
    }

    /// (c) `network.bind_interface = "wifi0"` while the route goes through `modem0`: the upload
    /// goes through wifi0, and the modem's byte counter does not grow by it.
    #[test]
    fn bind_interface_keeps_every_byte_off_the_routed_interface() {
        let links = Links::new("nic");
        links.route_via("modem0");
        let sp = links.spool("net-bind", "[network]\nbind_interface = \"wifi0\"");
        let (modem, wifi) = (links.tx_bytes("modem0"), links.tx_bytes("wifi0"));
        let mut child = links.start(&sp);
        sp.drop_file("a.bin", 2 * MIB, 93);
        wait_until("the upload", Duration::from_secs(10), || {
            sp.spool_files().is_empty()
        });
        sigterm(&child);
        child.wait().unwrap();
        let through_modem = links.tx_bytes("modem0") - modem;
        let through_wifi = links.tx_bytes("wifi0") - wifi;
        assert!(
            through_modem < 4096,
            "{through_modem} bytes went out through the modem"
        );
        assert!(
            through_wifi > 2 * MIB as u64,
            "the upload went through wifi0 ({through_wifi} bytes)"
        );
        assert_uploaded_once(&links.peer, 2 * MIB, 93);
    }
}
