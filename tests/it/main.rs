//! ferry's one integration-test binary: the real `ferry` binary against real loopback servers.

#[path = "../support/mod.rs"]
mod support;

mod support_selftest;
mod peers_smoke;
