//! The records the store keeps: one [`FileRecord`] per file, one [`FailedRecord`] per file
//! kept after a permanent failure, their keys in the database and how their bytes are read.
//!
//! Key idea: a record is JSON carrying its format version; a record of another version, or one
//! that does not parse, is not guessed at but reported as a problem (the store sets it aside and
//! the file is uploaded again). Everything in a record is defined here, the hook's part too, so
//! the store depends on no layer above it.

use serde::{Deserialize, Serialize};

use super::FileKey;
use crate::source::Identity;

/// The record format written by this version.
pub(crate) const RECORD_VERSION: u32 = 1;

pub(super) const FILE_PREFIX: &str = "file/";
pub(super) const FAILED_PREFIX: &str = "failed/";

/// A file that failed permanently and was kept in place (not retried until it changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FailedRecord {
    /// The file (its absolute path).
    pub path: FileKey,
    /// Identity of the content that failed.
    pub identity: Identity,
    /// HTTP status, when the server refused.
    pub status: Option<u16>,
    /// Why.
    pub message: String,
    /// When, seconds since the epoch.
    pub failed_unix: u64,
}

/// Where a file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RecordState {
    /// An upload exists on the server (URL known) and is not known to be complete.
    Uploading,
    /// The server confirmed offset == length.
    Complete,
}

/// Everything ferry remembers about one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    /// Format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// The file (its absolute path).
    pub path: FileKey,
    /// The file's identity when its upload was created.
    pub identity: Identity,
    /// The creation endpoint the upload belongs to.
    pub endpoint: String,
    /// The upload URL.
    pub upload_url: String,
    /// Last offset the server confirmed (for display; HEAD decides).
    pub offset: u64,
    /// `Upload-Expires`, seconds since the epoch.
    pub expires_unix: Option<u64>,
    /// When the upload was created, seconds since the epoch.
    pub created_unix: u64,
    /// Last change, seconds since the epoch.
    pub updated_unix: u64,
    /// Where the file stands.
    pub state: RecordState,
    /// Response headers kept (e.g. `stream-media-id`).
    #[serde(default)]
    pub captured: std::collections::BTreeMap<String, String>,
    /// The after-upload hook's runs (see `hook`).
    #[serde(default)]
    pub hook: HookState,
}

/// What the record says about the hook of one upload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HookState {
    /// Runs started (a run that was started but never finished counts).
    pub runs: u32,
    /// True once a run exited 0.
    pub done: bool,
    /// Why the last run failed.
    pub last_error: Option<String>,
}

pub(super) fn decode(raw: &[u8]) -> std::result::Result<FileRecord, String> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned =
        serde_json::from_slice(raw).map_err(|e| format!("unreadable record: {e}"))?;
    if v.version != RECORD_VERSION {
        return Err(format!(
            "record version {} is not {RECORD_VERSION}: written by another ferry version",
            v.version
        ));
    }
    serde_json::from_slice(raw).map_err(|e| format!("unreadable record: {e}"))
}

pub(super) fn decode_failed(raw: &[u8]) -> std::result::Result<FailedRecord, String> {
    serde_json::from_slice(raw).map_err(|e| format!("unreadable failure record: {e}"))
}

pub(super) fn key(path: &FileKey) -> Vec<u8> {
    [FILE_PREFIX.as_bytes(), path.as_str().as_bytes()].concat()
}

pub(super) fn failed_key(path: &FileKey) -> Vec<u8> {
    [FAILED_PREFIX.as_bytes(), path.as_str().as_bytes()].concat()
}
