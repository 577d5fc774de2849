//! The Cloudflare Stream dialect of tus: target kinds, chunk rules, the media-id header, the
//! endpoint of an account.
//!
//! Key idea: everything ferry knows about Stream that is not plain tus lives here as pure values
//! and functions (no I/O), so the agent (`config`, `upload`, `hook`) and `ferry broker` apply one
//! set of rules. Reading the API token stays in `config` (files are read only there); the
//! broker's `direct_user` request and answer stay in `broker::stream`.

use crate::error::{Error, Result};

/// The header Cloudflare Stream names a new video with.
pub(crate) const MEDIA_ID_HEADER: &str = "stream-media-id";

/// Stream's rules: every chunk but the last a multiple of 256 KiB within [5 MiB, 200 MiB].
pub(crate) const STREAM_CHUNK_MULTIPLE: u64 = 256 * 1024;
/// Stream's smallest chunk (but the last).
pub(crate) const STREAM_MIN_CHUNK: u64 = 5 * 1024 * 1024;
/// Stream's largest chunk.
pub(crate) const STREAM_MAX_CHUNK: u64 = 200 * 1024 * 1024;

/// Cloudflare's API base, when none is configured (`stream.api_base`, `broker.api_base`).
pub(crate) const DEFAULT_API_BASE: &str = "https://api.cloudflare.com/client/v4";

/// What kind of server the endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A tus 1.0 creation endpoint.
    Tus,
    /// Cloudflare Stream's tus endpoint, with the account's API token.
    CloudflareStream,
    /// A back-end that answers the creation POST with a one-time upload URL elsewhere
    /// (`ferry broker`, or the operator's own).
    UrlBroker,
}

impl Target {
    /// True when upload URLs are one-time URLs that a 403 or 404 ends (ask for a new one).
    pub(crate) fn one_time_urls(self) -> bool {
        !matches!(self, Target::Tus)
    }

    /// True when Cloudflare Stream's chunk rules apply.
    pub(crate) fn stream_rules(self) -> bool {
        !matches!(self, Target::Tus)
    }
}

/// Stream's chunk rules, checked before anything is sent.
pub(crate) fn check_chunk_size(chunk: u64) -> Result<()> {
    let ok = chunk % STREAM_CHUNK_MULTIPLE == 0
        && (STREAM_MIN_CHUNK..=STREAM_MAX_CHUNK).contains(&chunk);
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "upload.chunk_size = {chunk} bytes breaks Cloudflare Stream's rule: every chunk but the last must be a multiple of 256 KiB between 5 MiB and 200 MiB (the default 6MiB fits; 50MiB suits good links)"
        )))
    }
}

/// Half of `chunk` after a 413, within Stream's rules: a multiple of 256 KiB, never below 5 MiB
/// (at the floor a 413 then fails the file), never above `chunk`.
pub(crate) fn halve_chunk(chunk: u64) -> u64 {
    let half = chunk / 2 / STREAM_CHUNK_MULTIPLE * STREAM_CHUNK_MULTIPLE;
    half.max(STREAM_MIN_CHUNK).min(chunk)
}

/// True when `id` can be an account id: letters, digits, `-` and `_`, at least one. It goes
/// into a URL path, so nothing else may pass.
pub(crate) fn is_account_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Stream's tus endpoint for `account_id`: `{api_base}/accounts/{account_id}/stream`.
pub(crate) fn endpoint(api_base: &str, account_id: &str) -> String {
    format!("{api_base}/accounts/{account_id}/stream")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn chunk_sizes_within_the_rules_pass() {
        for ok in [5 * MIB, 6 * MIB, 5 * MIB + STREAM_CHUNK_MULTIPLE, 200 * MIB] {
            assert!(check_chunk_size(ok).is_ok(), "{ok}");
        }
        for bad in [0, 2 * MIB, 5 * MIB + 1, 200 * MIB + STREAM_CHUNK_MULTIPLE] {
            let err = check_chunk_size(bad).unwrap_err().to_string();
            assert!(err.contains("Cloudflare Stream's rule"), "{bad}: {err}");
        }
    }

    #[test]
    fn halving_keeps_to_the_multiple_and_the_floor() {
        assert_eq!(halve_chunk(12 * MIB), 6 * MIB);
        assert_eq!(halve_chunk(11 * MIB), 5 * MIB + 2 * STREAM_CHUNK_MULTIPLE);
        assert_eq!(halve_chunk(STREAM_MIN_CHUNK), STREAM_MIN_CHUNK);
        assert_eq!(halve_chunk(MIB), MIB, "never above the chunk it halves");
    }

    #[test]
    fn account_ids_and_endpoints() {
        assert!(is_account_id("acct-1_A"));
        for bad in ["", "a/b", "a b", "a?x", "é"] {
            assert!(!is_account_id(bad), "{bad:?}");
        }
        assert_eq!(
            endpoint(DEFAULT_API_BASE, "acct1"),
            "https://api.cloudflare.com/client/v4/accounts/acct1/stream"
        );
    }
}
