//! Network changes from the kernel: a link, an address or a route that comes or goes.
//!
//! Key idea: while the link gives no answer the daemon probes it every few seconds; when the
//! kernel announces a change (a modem that got a new address, Wi-Fi that came back, a route
//! switched), the probe goes at once. A netlink socket subscribed to the route groups costs a
//! blocked thread and no wake-ups while nothing changes.

use std::sync::mpsc::Sender;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::daemon::Event;

/// rtnetlink multicast groups (linux/rtnetlink.h): links, IPv4/IPv6 addresses and routes.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// Starts a thread that sends [`Event::NetworkChanged`] for every batch of network changes;
/// without netlink (a sandbox that forbids it) the daemon only probes on its timer.
pub(crate) fn spawn(tx: Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("netwatch".into())
        .spawn(move || {
            if let Err(e) = watch(&tx) {
                // Not silent: the shipped unit once forbade netlink and nobody noticed.
                log::warn!(
                    "no network change events ({e}); a dead link is probed every few seconds only (a service sandbox must allow AF_NETLINK for the network's return to be noticed at once)"
                );
            }
        });
    if let Err(e) = spawned {
        log::warn!(
            "cannot start the network watcher: {e}; a dead link is probed every few seconds only"
        );
    }
}

fn watch(tx: &Sender<Event>) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    let groups = RTMGRP_LINK
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    socket.bind(&SocketAddr::new(0, groups))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0)?;
        if tx.send(Event::NetworkChanged).is_err() {
            return Ok(());
        }
    }
}
