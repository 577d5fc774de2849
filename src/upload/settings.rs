//! How files are uploaded: the settings an [`Uploader`](super::Uploader) runs with.
//!
//! Key idea: plain values with the defaults of `ferry upload`; `config` fills them from the
//! config file and flags, and nothing here does I/O.

use crate::backoff::RetryPolicy;
use crate::stream::{Target, MEDIA_ID_HEADER};
use crate::tus::checksum::Algorithm;
use crate::tus::metadata;

/// The smallest chunk, configured or after a 413: each chunk is one request, so smaller ones
/// only add round trips (a chunk of 1 byte made a 3 KB file take 9 s on loopback).
pub(crate) const MIN_CHUNK_BYTES: u64 = 64 * 1024;

/// A request header to send, and whether it is a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// Header name.
    pub name: String,
    /// Header value (never logged).
    pub value: String,
    /// True when it came from a secret file; such headers, like `Authorization`, `Cookie` and
    /// `Proxy-Authorization`, go only to the endpoint's origin unless configured otherwise.
    pub secret: bool,
}

/// Whether to send `Upload-Checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChecksumMode {
    /// When the server advertises the checksum extension, with its strongest common algorithm.
    Auto,
    /// Never.
    Off,
    /// Always, with this algorithm.
    Always(Algorithm),
}

/// How files are uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The tus creation endpoint.
    pub endpoint: String,
    /// Bytes per PATCH, as configured; `None`: the chunk policy decides (see `chunking`).
    pub chunk_size_bytes: Option<u64>,
    /// Extra request headers (auth and the like).
    pub headers: Vec<Header>,
    /// Extra `Upload-Metadata` entries.
    pub metadata: Vec<metadata::Entry>,
    /// Send `filename` and `filetype` metadata unless given explicitly.
    pub default_metadata: bool,
    /// Checksums per PATCH.
    pub checksum: ChecksumMode,
    /// Send a file that fits in one chunk with the POST itself (one round trip instead of two).
    /// Off by default: tus 1.0 returns the URL only after the data, so a crash during that POST
    /// can leave one orphaned upload on the server (see the README).
    pub creation_with_upload: bool,
    /// Send credential headers to an upload URL on another origin too.
    pub auth_cross_origin: bool,
    /// Backoff and give-up rules.
    pub retry: RetryPolicy,
    /// How many checksum mismatches in a row fail the file.
    pub max_checksum_mismatches: u32,
    /// What kind of server the endpoint is.
    pub target: Target,
    /// Response headers to keep (lowercase), e.g. `stream-media-id`.
    pub capture_headers: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            chunk_size_bytes: None,
            headers: Vec::new(),
            metadata: Vec::new(),
            default_metadata: true,
            checksum: ChecksumMode::Auto,
            creation_with_upload: false,
            auth_cross_origin: false,
            retry: RetryPolicy::default(),
            max_checksum_mismatches: 5,
            target: Target::Tus,
            capture_headers: vec![MEDIA_ID_HEADER.to_string()],
        }
    }
}
