//! ferry's one integration-test binary: the real `ferry` binary against real loopback servers.
#![allow(
    clippy::unwrap_used,
    reason = "tests: a panic is a failed test with a location"
)]

#[path = "../support/mod.rs"]
mod support;

mod arm;
#[cfg(feature = "broker")]
mod broker;
mod crashpoint;
mod daemon;
mod fault_server;
mod harness;
mod hook;
mod peers_interop;
mod peers_smoke;
mod stream;
mod stream_emulator_selftest;
mod support_selftest;
mod systemd_unit;
mod tls;
mod vm;
