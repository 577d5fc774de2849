//! ferry: resumable tus uploads from field devices over flaky links.
//!
//! ```text
//!  files ──► source (safe reads) ──► upload (one exchange per step) ──► transport ──► tus server
//!                                     │        ▲                       (ureq+rustls)
//!                                     ▼        │
//!                                   store (sled: URL + state, flushed at checkpoints)
//! ```
//!
//! Invariants: a file's upload URL is on disk before its first byte is sent; after any failure
//! the offset comes from the server (HEAD); a file that changed is never mixed into its old
//! upload; memory does not grow with file size; only regular files are read, never symlinks.
//!
//! Modules: [`tus`] and [`backoff`] are pure (no I/O); [`transport`] is the only user of ureq,
//! [`store`] of sled, [`clock`] of time; [`durable`] decides what is synced (files and their
//! directory entries, so a checkpoint survives a power cut); [`upload`] is the protocol logic
//! over those; [`config`] and [`cli`] read settings; `main.rs` wires the real parts.

pub mod app;
pub mod backoff;
#[cfg(feature = "broker")]
pub mod broker;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod durable;
pub mod error;
pub mod hook;
pub mod notify;
pub mod progress;
pub mod queue;
pub mod ratelimit;
pub mod signals;
pub mod source;
pub mod spool;
pub mod status;
pub mod store;
pub mod stream;
pub mod transport;
pub mod tus;
pub mod upload;
pub mod watch;
