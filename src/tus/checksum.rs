//! The checksum extension: choosing an algorithm and computing `Upload-Checksum` values.
//!
//! The server lists what it accepts in `Tus-Checksum-Algorithm`; we prefer sha256 and fall back
//! to sha1 (mandatory for servers with the extension). The digest covers exactly one PATCH body.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha1::Digest;

/// A checksum algorithm ferry can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// SHA-1, the one every checksum-capable tus server must accept.
    Sha1,
    /// SHA-256, preferred when offered.
    Sha256,
}

impl Algorithm {
    /// The lowercase token used on the wire.
    pub fn token(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
        }
    }

    /// Parses a token (case-insensitive).
    pub fn from_token(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }
}

/// The strongest algorithm of ours that the server offers.
pub fn choose(offered: &[String]) -> Option<Algorithm> {
    let has = |a: Algorithm| offered.iter().any(|o| Algorithm::from_token(o) == Some(a));
    [Algorithm::Sha256, Algorithm::Sha1]
        .into_iter()
        .find(|a| has(*a))
}

/// Incremental digest of one PATCH body.
pub enum Hasher {
    /// SHA-1 state.
    Sha1(sha1::Sha1),
    /// SHA-256 state.
    Sha256(sha2::Sha256),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha1 => Self::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Self::Sha256(sha2::Sha256::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(bytes),
            Self::Sha256(h) => h.update(bytes),
        }
    }

    /// The `Upload-Checksum` header value: `<algo> <base64 digest>`.
    pub fn header_value(self) -> String {
        let (token, digest) = match self {
            Self::Sha1(h) => ("sha1", h.finalize().to_vec()),
            Self::Sha256(h) => ("sha256", h.finalize().to_vec()),
        };
        format!("{token} {}", STANDARD.encode(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefers_sha256_then_sha1_and_ignores_unknown() {
        assert_eq!(
            choose(&offered(&["md5", "sha1", "SHA256"])),
            Some(Algorithm::Sha256)
        );
        assert_eq!(choose(&offered(&["md5", "sha1"])), Some(Algorithm::Sha1));
        assert_eq!(choose(&offered(&["md5", "crc32"])), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn header_values_match_known_digests() {
        // Expected values from `printf hello | sha1sum` / `sha256sum`, base64 of the raw digest.
        let mut h = Hasher::new(Algorithm::Sha1);
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.header_value(), "sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=");
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"hello");
        assert_eq!(
            h.header_value(),
            "sha256 LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
        );
    }
}
