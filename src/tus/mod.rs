//! The tus 1.0 protocol, without I/O: requests to send and what each response means.
//!
//! Key idea: every exchange is a [`Request`] value built here, sent by a transport elsewhere, and
//! its [`Response`] turned back into an [`Outcome`] value here. Conflicts, lost uploads, locks and
//! checksum mismatches are ordinary outcomes, not errors; the caller decides what to do next.
//!
//! Extensions used: creation, creation-with-upload, expiration, checksum, termination.

pub mod checksum;
pub mod httpdate;
pub mod metadata;
pub mod request;
pub mod response;
pub mod url;

pub use request::{Body, Method, Request};
pub use response::{Outcome, Response, ServerCaps};

/// The protocol version ferry speaks, sent as `Tus-Resumable` on every request but OPTIONS.
pub const TUS_RESUMABLE: &str = "1.0.0";

/// The PATCH body content type the core protocol requires.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
