//! Test support: a fault-injecting tus server, a flaky TCP proxy, and the real peer servers.
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

pub mod accept;
pub mod data;
pub mod flaky_proxy;
pub mod http1;
pub mod peers;
pub mod pump;
pub mod stream_emulator;
pub mod tls_proxy;
pub mod tus_server;
