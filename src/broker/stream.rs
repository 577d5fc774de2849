//! The Cloudflare Stream side, without I/O: the `direct_user` creation request, the metadata
//! the broker lets through, and what Stream's answer means (protocol.md §3.1).
//!
//! `POST {api_base}/accounts/{id}/stream?direct_user=true` with the API token,
//! `Tus-Resumable`, `Upload-Length` and `Upload-Metadata` answers 201 with the one-time URL in
//! `Location` (not the body) and the video's id in `stream-media-id`. `expiry` and
//! `maxDurationSeconds` count only on this first request, which is why the broker sets them.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::tus::metadata::{self, Entry, MetadataError};
use crate::tus::{url, Body, Method, Request, Response, TUS_RESUMABLE};

/// Metadata keys only the broker sets (compared without case: Stream has been seen to read
/// `maxdurationseconds` too).
pub(crate) const BROKER_KEYS: [&str; 2] = ["maxDurationSeconds", "expiry"];

/// What the device asked for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ask {
    /// `Upload-Length`.
    pub length: u64,
    /// The metadata Stream gets: the client's allowed keys, then the broker's.
    pub metadata: Vec<Entry>,
}

/// The metadata to send: `client`'s entries whose key is in `allowed` (exact match), minus any
/// spelling of the broker's own keys and of the `forced` ones, then `forced` (the operator's
/// `forced_metadata`), then `maxDurationSeconds` and `expiry`.
pub(crate) fn metadata_for_stream(
    client: Option<&str>,
    allowed: &[String],
    forced: &[Entry],
    max_duration_seconds: u64,
    expiry: SystemTime,
) -> Result<Vec<Entry>, MetadataError> {
    let entries = match client {
        Some(h) => metadata::decode(h)?,
        None => Vec::new(),
    };
    let mut out: Vec<Entry> = entries
        .into_iter()
        .filter(|(k, _)| allowed.iter().any(|a| a == k))
        .filter(|(k, _)| !BROKER_KEYS.iter().any(|b| b.eq_ignore_ascii_case(k)))
        .filter(|(k, _)| !forced.iter().any(|(f, _)| f.eq_ignore_ascii_case(k)))
        .collect();
    out.extend(forced.iter().cloned());
    out.push((
        "maxDurationSeconds".into(),
        Some(max_duration_seconds.to_string()),
    ));
    out.push(("expiry".into(), Some(rfc3339(expiry))));
    Ok(out)
}

/// The creation request to Stream.
pub(crate) fn creation_request(
    api_base: &str,
    account_id: &str,
    api_token: &str,
    ask: &Ask,
) -> Request {
    let mut headers = vec![
        ("Authorization".to_string(), format!("Bearer {api_token}")),
        ("Tus-Resumable".to_string(), TUS_RESUMABLE.to_string()),
        ("Upload-Length".to_string(), ask.length.to_string()),
    ];
    // The keys were validated on decoding and the broker's own are plain: encoding succeeds.
    if let Ok(Some(m)) = metadata::encode(&ask.metadata) {
        headers.push(("Upload-Metadata".to_string(), m));
    }
    Request {
        method: Method::Post,
        url: creation_url(api_base, account_id),
        headers,
        body: Body::Empty,
    }
}

/// `{api_base}/accounts/{account_id}/stream?direct_user=true`.
pub(crate) fn creation_url(api_base: &str, account_id: &str) -> String {
    format!(
        "{}?direct_user=true",
        crate::stream::endpoint(api_base, account_id)
    )
}

/// What Stream's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A one-time upload URL (absolute) and the video's id when Stream gave one.
    Created {
        /// The one-time upload URL.
        location: String,
        /// `stream-media-id`.
        media_id: Option<String>,
    },
    /// Stream refused, or answered something unusable: its status and messages.
    Refused {
        /// Stream's status.
        status: u16,
        /// Stream's own messages (`errors[].message`), or a description of the answer.
        messages: Vec<String>,
    },
}

/// Reads Stream's answer to [`creation_request`] sent to `request_url`.
pub(crate) fn interpret(request_url: &str, resp: &Response) -> Answer {
    if resp.status != 201 {
        return Answer::Refused {
            status: resp.status,
            messages: error_messages(resp),
        };
    }
    let location = resp
        .header("Location")
        .filter(|l| !l.is_empty())
        .map(|l| url::resolve(request_url, l));
    match location {
        Some(Ok(location)) => Answer::Created {
            location,
            media_id: resp
                .header(crate::stream::MEDIA_ID_HEADER)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))
                .map(str::to_string),
        },
        Some(Err(e)) => Answer::Refused {
            status: 201,
            messages: vec![format!(
                "Stream answered 201 with an unusable Location: {e}"
            )],
        },
        None => Answer::Refused {
            status: 201,
            messages: vec!["Stream answered 201 without a Location".into()],
        },
    }
}

/// Stream's `errors[].message` strings; the start of the body when it is not that JSON.
fn error_messages(resp: &Response) -> Vec<String> {
    let parsed: Option<Vec<String>> = serde_json::from_str::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| {
            v.get("errors")?.as_array().map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e.get("message")?.as_str().map(str::to_string))
                    .collect()
            })
        });
    match parsed {
        Some(m) if !m.is_empty() => m,
        _ => vec![resp.message()],
    }
}

/// A time as RFC 3339 in UTC, to the second: `2024-05-01T12:30:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = crate::tus::httpdate::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(at(1_714_566_645)), "2024-05-01T12:30:45Z");
        assert_eq!(rfc3339(at(4_102_444_799)), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn keeps_allowed_keys_and_sets_the_brokers_own() {
        let allowed: Vec<String> = ["name", "filetype", "requiresignedurls"]
            .map(String::from)
            .to_vec();
        let client = metadata::encode(&[
            ("name".into(), Some("clip".into())),
            ("scheduleddeletion".into(), Some("2030-01-01".into())),
            ("maxDurationSeconds".into(), Some("99999".into())),
            ("expiry".into(), Some("2099-01-01T00:00:00Z".into())),
            ("requiresignedurls".into(), None),
        ])
        .unwrap();
        let m = metadata_for_stream(client.as_deref(), &allowed, &[], 600, at(0)).unwrap();
        assert_eq!(
            m,
            vec![
                ("name".to_string(), Some("clip".to_string())),
                ("requiresignedurls".to_string(), None),
                ("maxDurationSeconds".to_string(), Some("600".to_string())),
                (
                    "expiry".to_string(),
                    Some("1970-01-01T00:00:00Z".to_string())
                ),
            ]
        );
        assert!(metadata_for_stream(Some("name !!"), &allowed, &[], 600, at(0)).is_err());
    }

    #[test]
    fn forced_metadata_replaces_the_devices_whatever_its_spelling() {
        let allowed: Vec<String> = [
            "name",
            "requiresignedurls",
            "allowedorigins",
            "RequireSignedURLs",
        ]
        .map(String::from)
        .to_vec();
        let forced = vec![
            ("requiresignedurls".to_string(), None),
            (
                "allowedorigins".to_string(),
                Some("app.example.com".to_string()),
            ),
        ];
        let client = metadata::encode(&[
            ("name".into(), Some("clip".into())),
            ("allowedorigins".into(), Some("*".into())),
            ("RequireSignedURLs".into(), Some("false".into())),
        ])
        .unwrap();
        let m = metadata_for_stream(client.as_deref(), &allowed, &forced, 600, at(0)).unwrap();
        assert_eq!(
            m[..3],
            [
                ("name".to_string(), Some("clip".to_string())),
                ("requiresignedurls".to_string(), None),
                (
                    "allowedorigins".to_string(),
                    Some("app.example.com".to_string())
                ),
            ]
        );
        assert_eq!(m.len(), 5, "then maxDurationSeconds and expiry: {m:?}");
    }

    #[test]
    fn builds_the_direct_user_request() {
        let ask = Ask {
            length: 12,
            metadata: vec![("maxDurationSeconds".into(), Some("600".into()))],
        };
        let r = creation_request("http://127.0.0.1:1/client/v4", "acct", "tok", &ask);
        assert_eq!(
            r.url,
            "http://127.0.0.1:1/client/v4/accounts/acct/stream?direct_user=true"
        );
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.header("authorization"), Some("Bearer tok"));
        assert_eq!(r.header("Tus-Resumable"), Some("1.0.0"));
        assert_eq!(r.header("Upload-Length"), Some("12"));
        assert_eq!(r.header("Upload-Metadata"), Some("maxDurationSeconds NjAw"));
    }

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
        }
    }

    #[test]
    fn reads_created_and_refused_answers() {
        let base = "https://api.example/client/v4/accounts/a/stream?direct_user=true";
        assert_eq!(
            interpret(
                base,
                &resp(
                    201,
                    &[
                        ("Location", "https://upload.example/tus/abc?tusv2=true"),
                        ("stream-media-id", "abc")
                    ],
                    ""
                )
            ),
            Answer::Created {
                location: "https://upload.example/tus/abc?tusv2=true".into(),
                media_id: Some("abc".into())
            }
        );
        assert!(matches!(
            interpret(base, &resp(201, &[("Location", "/tus/x")], "")),
            Answer::Created { location, media_id: None } if location == "https://api.example/tus/x"
        ));
        assert!(matches!(
            interpret(base, &resp(201, &[], "")),
            Answer::Refused { status: 201, .. }
        ));
        let body = r#"{"success":false,"errors":[{"code":10005,"message":"Insufficient storage"},{"code":1,"message":"two"}]}"#;
        assert_eq!(
            interpret(base, &resp(403, &[], body)),
            Answer::Refused {
                status: 403,
                messages: vec!["Insufficient storage".into(), "two".into()]
            }
        );
        assert_eq!(
            interpret(base, &resp(500, &[], "oops")),
            Answer::Refused {
                status: 500,
                messages: vec!["HTTP 500: oops".into()]
            }
        );
    }
}
