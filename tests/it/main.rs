//! ferry's one integration-test binary: the real `ferry` binary against real loopback servers.
#![allow(
    unreachable_pub,
    reason = "a binary: its support modules' pub items are for each other"
)]
#![allow(
    clippy::unwrap_used,
    reason = "tests: a panic is a failed test with a location"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "end-to-end tests wait for real processes in real time and read FERRY_* knobs"
)]

#[path = "../support/mod.rs"]
mod support;

mod arm;
#[cfg(feature = "broker")]
mod broker;
#[cfg(feature = "broker")]
mod broker_limits;
mod chunking;
mod cli;
mod crashpoint;
mod daemon;
mod deadlines;
mod fault_server;
mod harness;
mod hook;
mod layers;
mod network;
mod peers_interop;
mod peers_smoke;
mod priority;
mod probe;
mod progress;
mod rates;
mod scheduler;
mod secrets;
mod spool_limits;
mod stream;
mod stream_emulator_selftest;
mod support_selftest;
mod systemd_unit;
mod tls;
mod tls_suites;
mod vm;
mod windows;

/// A plain `cargo test` builds without the broker (the feature is off by default), which would
/// leave the broker's tests out without a word: say so instead of passing.
#[cfg(not(feature = "broker"))]
#[test]
fn broker_tests_need_the_broker_feature() {
    panic!("the broker's tests were not built: run scripts/test, or cargo test --features broker");
}
