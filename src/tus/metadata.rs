//! `Upload-Metadata`: encoding and decoding of the tus key/value list.
//!
//! The header is a comma-separated list of `key base64(value)` pairs with no spaces after the
//! commas; a key may stand alone (empty value, e.g. Stream's `requiresignedurls`). Values use
//! standard, padded base64: tusd silently drops anything else.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The most bytes the configured entries may take in `Upload-Metadata`, once encoded. The
/// header is one line of the request head, which must fit in a connection's output buffer
/// (32 KiB) with the file's name; and servers refuse long heads (Node's HTTP server, under
/// @tus/server, takes 16 KiB of headers in all).
pub const MAX_USER_METADATA_BYTES: usize = 8 * 1024;

/// A metadata entry: key and optional value (`None` = flag-style key without a value).
pub type Entry = (String, Option<String>);

/// Why a metadata list cannot be sent or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// A key is empty or contains a space, comma or non-ASCII character.
    BadKey(String),
    /// The same key appears twice.
    DuplicateKey(String),
    /// A value is not standard padded base64 (decoding only).
    BadValue(String),
}

impl std::fmt::Display for MetadataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadKey(k) => write!(
                f,
                "metadata key {k:?} is invalid: keys must be non-empty ASCII without spaces or commas"
            ),
            Self::DuplicateKey(k) => write!(f, "metadata key {k:?} is given twice"),
            Self::BadValue(k) => write!(f, "metadata value of {k:?} is not valid base64"),
        }
    }
}

/// Checks that `key` may be used as an `Upload-Metadata` key.
pub fn validate_key(key: &str) -> Result<(), MetadataError> {
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b',' && b != b' ');
    if ok {
        Ok(())
    } else {
        Err(MetadataError::BadKey(key.to_string()))
    }
}

/// Encodes entries as an `Upload-Metadata` header value; `None` when there are no entries.
pub fn encode(entries: &[Entry]) -> Result<Option<String>, MetadataError> {
    let mut parts = Vec::with_capacity(entries.len());
    for (i, (key, value)) in entries.iter().enumerate() {
        validate_key(key)?;
        if entries[..i].iter().any(|(k, _)| k == key) {
            return Err(MetadataError::DuplicateKey(key.clone()));
        }
        // An empty value is sent as the bare key: a trailing space would be trimmed anyway.
        parts.push(match value.as_deref() {
            Some(v) if !v.is_empty() => format!("{key} {}", STANDARD.encode(v.as_bytes())),
            _ => key.clone(),
        });
    }
    Ok((!parts.is_empty()).then(|| parts.join(",")))
}

/// Decodes an `Upload-Metadata` header value (values that are not UTF-8 are replaced lossily).
pub fn decode(header: &str) -> Result<Vec<Entry>, MetadataError> {
    let mut out: Vec<Entry> = Vec::new();
    for element in header.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut fields = element.split(' ');
        let key = fields.next().unwrap_or_default();
        validate_key(key)?;
        let value = match (fields.next(), fields.next()) {
            (None, _) => None,
            (Some(v), None) => {
                let bytes = STANDARD
                    .decode(v)
                    .map_err(|_| MetadataError::BadValue(key.to_string()))?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            (Some(_), Some(_)) => return Err(MetadataError::BadValue(key.to_string())),
        };
        if out.iter().any(|(k, _)| k == key) {
            return Err(MetadataError::DuplicateKey(key.to_string()));
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// A MIME type for a file name, from its extension; `application/octet-stream` when unknown.
pub fn guess_filetype(file_name: &str) -> &'static str {
    let ext = file_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "avi" => "video/x-msvideo",
        "ts" => "video/mp2t",
        "h264" => "video/h264",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "wav" => "audio/wav",
        "mp3" => "audio/mpeg",
        "json" => "application/json",
        "csv" => "text/csv",
        "txt" | "log" => "text/plain",
        "gz" => "application/gzip",
        "zip" => "application/zip",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: &str, v: Option<&str>) -> Entry {
        (k.to_string(), v.map(str::to_string))
    }

    #[test]
    fn encodes_padded_standard_base64_without_spaces_after_commas() {
        let got = encode(&[e("filename", Some("a b.mp4")), e("x", Some("??>"))]).unwrap();
        assert_eq!(got.as_deref(), Some("filename YSBiLm1wNA==,x Pz8+"));
    }

    #[test]
    fn flag_keys_have_no_value_and_empty_values_encode_empty() {
        let got = encode(&[e("requiresignedurls", None), e("name", Some(""))]).unwrap();
        assert_eq!(got.as_deref(), Some("requiresignedurls,name"));
    }

    #[test]
    fn empty_list_encodes_to_none() {
        assert_eq!(encode(&[]).unwrap(), None);
    }

    #[test]
    fn rejects_bad_and_duplicate_keys() {
        for bad in ["", "a b", "a,b", "kéy", "tab\t"] {
            assert_eq!(
                encode(&[e(bad, Some("v"))]),
                Err(MetadataError::BadKey(bad.to_string()))
            );
        }
        assert_eq!(
            encode(&[e("k", Some("1")), e("k", Some("2"))]),
            Err(MetadataError::DuplicateKey("k".into()))
        );
    }

    #[test]
    fn decode_round_trips_and_tolerates_spaces_around_elements() {
        let entries = vec![e("filename", Some("ünï.mp4")), e("flag", None)];
        let header = encode(&entries).unwrap().unwrap();
        assert_eq!(decode(&header).unwrap(), entries);
        assert_eq!(
            decode("z ").unwrap(),
            vec![e("z", None)],
            "empty value = bare key"
        );
        assert_eq!(
            decode(" a YQ== , b").unwrap(),
            vec![e("a", Some("a")), e("b", None)]
        );
    }

    #[test]
    fn decode_rejects_bad_base64_unpadded_values_and_extra_fields() {
        assert_eq!(decode("a !!!"), Err(MetadataError::BadValue("a".into())));
        assert_eq!(decode("a YQ"), Err(MetadataError::BadValue("a".into())));
        assert_eq!(decode("a YQ== x"), Err(MetadataError::BadValue("a".into())));
        assert_eq!(
            decode("a YQ==,a Yg=="),
            Err(MetadataError::DuplicateKey("a".into()))
        );
    }

    #[test]
    fn guesses_common_types_case_insensitively() {
        assert_eq!(guess_filetype("CAM01.MP4"), "video/mp4");
        assert_eq!(guess_filetype("still.jpeg"), "image/jpeg");
        assert_eq!(guess_filetype("noext"), "application/octet-stream");
        assert_eq!(guess_filetype("archive.tar.gz"), "application/gzip");
    }
}
