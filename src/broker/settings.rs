//! The `[broker]` keys, checked: every default is here, and every error names its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::sizing::{Limits, MAX_CONNECTIONS, SPARE_TASKS};
use super::stream::BROKER_KEYS;
use crate::config::{parse_duration, parse_size, read_secret, Env, RawBroker};
use crate::error::{Error, Result};
use crate::stream;
use crate::tus::{metadata, url};

/// Default `broker.listen`.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Default `broker.path`.
pub(crate) const DEFAULT_PATH: &str = "/generate-tus-upload-request";
/// Default `broker.api_base`: the agent's default too.
pub(crate) use crate::stream::DEFAULT_API_BASE;
/// Default `broker.max_connections_per_peer`: room for a few devices behind one NAT address,
/// far from the whole server.
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 16;
/// Default `broker.allowed_metadata`: the keys Stream acts on (protocol.md §3.1), minus the
/// two the broker sets itself.
pub(crate) const DEFAULT_ALLOWED_METADATA: [&str; 7] = [
    "name",
    "filename",
    "filetype",
    "requiresignedurls",
    "allowedorigins",
    "thumbnailtimestamppct",
    "watermark",
];
/// Stream's limits on a direct upload's `expiry`: 2 minutes to 6 hours ahead (protocol.md §3.1).
pub(crate) const EXPIRY_RANGE_SECS: std::ops::RangeInclusive<u64> = 120..=21_600;
/// Stream's limits on `maxDurationSeconds` (Cloudflare API reference for direct uploads:
/// minimum 1, maximum 36000; older schemas said 21600).
pub(crate) const MAX_DURATION_RANGE_SECS: std::ops::RangeInclusive<u64> = 1..=36_000;

/// The API token: never printed, not even by `{:?}`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ApiToken(String);

impl ApiToken {
    /// Wraps a token read from a secret file.
    #[cfg(test)]
    pub(crate) fn new(token: String) -> Self {
        Self(token)
    }

    /// The token, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(redacted)")
    }
}

/// Everything `ferry broker` needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Path of the one-time URL endpoint.
    pub path: String,
    /// Cloudflare API base URL, without a trailing slash.
    pub api_base: String,
    /// Cloudflare account id.
    pub account_id: String,
    /// The Stream API token.
    pub api_token: ApiToken,
    /// The device tokens file.
    pub device_tokens_file: PathBuf,
    /// `maxDurationSeconds` of every video.
    pub max_duration_seconds: u64,
    /// Lifetime of a one-time URL.
    pub url_expiry: Duration,
    /// Largest `Upload-Length` accepted, in bytes.
    pub max_upload_length: u64,
    /// `Upload-Metadata` keys passed on to Stream.
    pub allowed_metadata: Vec<String>,
    /// `Upload-Metadata` entries set on every video, replacing the device's.
    pub forced_metadata: Vec<metadata::Entry>,
    /// Origins allowed by CORS (`*` only if configured).
    pub allowed_origins: Vec<String>,
    /// One-time URLs per device per hour.
    pub urls_per_hour: u32,
    /// Certificate chain and key files (PEM) when serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Stream's time to answer (per connect and per read).
    pub api_timeout: Duration,
    /// A client's time to send a request (head and body), and the keep-alive idle time.
    pub request_timeout: Duration,
    /// A client's time to send a request head, from its connection (TLS handshake included)
    /// or, on a kept-alive connection, from the request's first byte; at most `request_timeout`.
    pub head_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections served at once for one client address (IPv6: one /64).
    pub max_connections_per_peer: usize,
}

impl Settings {
    /// Checks every key and reads the API token; the default connection cap comes from this
    /// machine's (and cgroup's) memory and task limits.
    pub(crate) fn resolve(raw: &RawBroker, env: &Env) -> Result<Self> {
        Self::resolve_with(raw, env, &Limits::read())
    }

    /// [`Settings::resolve`] with the limits given.
    pub(crate) fn resolve_with(raw: &RawBroker, env: &Env, limits: &Limits) -> Result<Self> {
        let listen = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            Error::config(format!(
                "broker.listen = {listen:?}: use ADDRESS:PORT, e.g. 127.0.0.1:8787"
            ))
        })?;
        let path = raw.path.clone().unwrap_or_else(|| DEFAULT_PATH.into());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(Error::config(format!(
                "broker.path = {path:?}: use an absolute path like {DEFAULT_PATH}"
            )));
        }
        let request_timeout =
            positive_duration(raw.request_timeout.as_deref(), "broker.request_timeout", 10)?;
        Ok(Self {
            listen,
            path,
            api_base: api_base(raw.api_base.as_deref())?,
            account_id: account_id(raw.account_id.as_deref())?,
            api_token: api_token(raw.api_token_file.as_deref(), env)?,
            device_tokens_file: raw.device_tokens_file.clone().ok_or_else(|| {
                required("broker.device_tokens_file", "--device-tokens-file FILE")
            })?,
            max_duration_seconds: max_duration(raw.max_duration_seconds)?,
            url_expiry: url_expiry(raw.url_expiry_seconds)?,
            max_upload_length: max_upload_length(raw.max_upload_length.as_deref())?,
            allowed_metadata: allowed_metadata(raw.allowed_metadata.as_deref())?,
            forced_metadata: forced_metadata(raw.forced_metadata.as_ref())?,
            allowed_origins: allowed_origins(raw.allowed_origins.as_deref())?,
            urls_per_hour: match raw.urls_per_hour {
                None => 60,
                Some(0) => return Err(Error::config("broker.urls_per_hour must be at least 1")),
                Some(n) => n,
            },
            tls: tls(raw)?,
            api_timeout: positive_duration(raw.api_timeout.as_deref(), "broker.api_timeout", 30)?,
            request_timeout,
            head_timeout: positive_duration(raw.head_timeout.as_deref(), "broker.head_timeout", 5)?
                .min(request_timeout),
            max_connections: max_connections(raw.max_connections, limits, raw.tls_cert.is_some())?,
            max_connections_per_peer: match raw.max_connections_per_peer {
                None => DEFAULT_MAX_CONNECTIONS_PER_PEER,
                Some(n @ 1..=MAX_CONNECTIONS) => n,
                Some(_) => {
                    return Err(Error::config(format!(
                        "broker.max_connections_per_peer must be between 1 and {MAX_CONNECTIONS}"
                    )))
                }
            },
        })
    }
}

/// `broker.max_connections`: sized to `limits` unless set, and never above the task limit (a
/// thread that cannot start would reset its connection instead of answering 503).
fn max_connections(v: Option<usize>, limits: &Limits, tls: bool) -> Result<usize> {
    let n = match v {
        None => return Ok(limits.default_max_connections(tls)),
        Some(n @ 1..=MAX_CONNECTIONS) => n,
        Some(_) => {
            return Err(Error::config(format!(
                "broker.max_connections must be between 1 and {MAX_CONNECTIONS}"
            )))
        }
    };
    match limits.task_cap() {
        Some(cap) if n > cap => {
            log::warn!(
                "broker.max_connections = {n} is above what the task limit allows (TasksMax= \
                 or ulimit -u: {} tasks, {SPARE_TASKS} kept for the broker): serving {cap}",
                limits.tasks.unwrap_or_default()
            );
            Ok(cap)
        }
        _ => Ok(n),
    }
}

fn required(key: &str, flag: &str) -> Error {
    Error::config(format!(
        "{key} is not set: give {flag} or set it in the config file's [broker] section"
    ))
}

fn api_base(v: Option<&str>) -> Result<String> {
    let base = v.unwrap_or(DEFAULT_API_BASE).trim_end_matches('/');
    url::validate(base).map_err(|e| Error::config(format!("broker.api_base: {e}")))?;
    if base.contains(['?', '#']) {
        return Err(Error::config(format!(
            "broker.api_base = {base:?}: no query or fragment, e.g. {DEFAULT_API_BASE}"
        )));
    }
    // The API token goes in every request: never in clear text beyond this machine.
    let origin = url::origin(base).unwrap_or_default();
    let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"];
    if origin.starts_with("http://") && !loopback.iter().any(|l| origin.starts_with(l)) {
        return Err(Error::config(format!(
            "broker.api_base = {base:?}: use https:// (plain http only to a loopback address), \
             the API token must not travel in clear text"
        )));
    }
    Ok(base.to_string())
}

fn account_id(v: Option<&str>) -> Result<String> {
    let id = v.ok_or_else(|| required("broker.account_id", "--account-id ID"))?;
    if id.len() > 64 || !stream::is_account_id(id) {
        return Err(Error::config(format!(
            "broker.account_id = {id:?}: expected the account's id (letters and digits)"
        )));
    }
    Ok(id.to_string())
}

fn api_token(v: Option<&str>, env: &Env) -> Result<ApiToken> {
    let source = v.ok_or_else(|| required("broker.api_token_file", "--api-token-file FILE"))?;
    let token = read_secret(source, env)
        .map_err(|e| Error::config(format!("broker.api_token_file: {e}")))?;
    // Never print the value: only say what is wrong with it.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::config(
            "broker.api_token_file: the token contains spaces, line breaks or other \
             characters a token cannot have (the file must hold the token alone)",
        ));
    }
    Ok(ApiToken(token))
}

fn max_duration(v: Option<u64>) -> Result<u64> {
    let n = v.ok_or_else(|| required("broker.max_duration_seconds", "--max-duration-seconds N"))?;
    if !MAX_DURATION_RANGE_SECS.contains(&n) {
        return Err(Error::config(format!(
            "broker.max_duration_seconds = {n}: Stream accepts {} to {}",
            MAX_DURATION_RANGE_SECS.start(),
            MAX_DURATION_RANGE_SECS.end()
        )));
    }
    Ok(n)
}

fn url_expiry(v: Option<u64>) -> Result<Duration> {
    let n = v.unwrap_or(1800);
    if !EXPIRY_RANGE_SECS.contains(&n) {
        return Err(Error::config(format!(
            "broker.url_expiry_seconds = {n}: Stream accepts {} to {} (2 minutes to 6 hours)",
            EXPIRY_RANGE_SECS.start(),
            EXPIRY_RANGE_SECS.end()
        )));
    }
    Ok(Duration::from_secs(n))
}

fn max_upload_length(v: Option<&str>) -> Result<u64> {
    let Some(text) = v else {
        return Ok(30_000_000_000);
    };
    match parse_size(text) {
        Ok(0) => Err(Error::config("broker.max_upload_length must be above 0")),
        Ok(n) => Ok(n),
        Err(e) => Err(Error::config(format!("broker.max_upload_length: {e}"))),
    }
}

fn allowed_metadata(v: Option<&[String]>) -> Result<Vec<String>> {
    let Some(keys) = v else {
        return Ok(DEFAULT_ALLOWED_METADATA.map(String::from).to_vec());
    };
    for k in keys {
        metadata::validate_key(k)
            .map_err(|e| Error::config(format!("broker.allowed_metadata: {e}")))?;
        if BROKER_KEYS.iter().any(|b| b.eq_ignore_ascii_case(k)) {
            return Err(Error::config(format!(
                "broker.allowed_metadata: {k:?} is set by the broker (max_duration_seconds, \
                 url_expiry_seconds) and cannot come from clients"
            )));
        }
    }
    Ok(keys.to_vec())
}

/// `broker.forced_metadata`: valid keys, none of the broker's own; "" is a key without a value
/// (`requiresignedurls`).
fn forced_metadata(v: Option<&BTreeMap<String, String>>) -> Result<Vec<metadata::Entry>> {
    let mut out = Vec::new();
    for (k, value) in v.into_iter().flatten() {
        metadata::validate_key(k)
            .map_err(|e| Error::config(format!("broker.forced_metadata: {e}")))?;
        if BROKER_KEYS.iter().any(|b| b.eq_ignore_ascii_case(k)) {
            return Err(Error::config(format!(
                "broker.forced_metadata: {k:?} is set by the broker (max_duration_seconds, \
                 url_expiry_seconds)"
            )));
        }
        out.push((k.clone(), (!value.is_empty()).then(|| value.clone())));
    }
    Ok(out)
}

fn allowed_origins(v: Option<&[String]>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for o in v.unwrap_or_default() {
        let o = o.trim_end_matches('/');
        let bare = o == "*"
            || (url::validate(o).is_ok()
                && o.split_once("://")
                    .is_some_and(|(_, rest)| !rest.contains(['/', '?', '#'])));
        if !bare {
            return Err(Error::config(format!(
                "broker.allowed_origins: {o:?} is not an origin like https://app.example.com (or \"*\")"
            )));
        }
        out.push(o.to_ascii_lowercase());
    }
    Ok(out)
}

fn tls(raw: &RawBroker) -> Result<Option<(PathBuf, PathBuf)>> {
    match (&raw.tls_cert, &raw.tls_key) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        _ => Err(Error::config(
            "broker.tls_cert and broker.tls_key must be given together",
        )),
    }
}

fn positive_duration(v: Option<&str>, key: &str, default_secs: u64) -> Result<Duration> {
    let d = match v {
        None => return Ok(Duration::from_secs(default_secs)),
        Some(t) => parse_duration(t).map_err(|e| Error::config(format!("{key}: {e}")))?,
    };
    if d.is_zero() {
        return Err(Error::config(format!("{key} must be above 0")));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(f: impl FnOnce(RawBroker)) {
        let dir = std::env::temp_dir().join(format!(
            "ferry-broker-settings-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "cf-secret-token\n").unwrap();
        f(RawBroker {
            account_id: Some("acct123".into()),
            api_token_file: Some(token.to_str().unwrap().into()),
            device_tokens_file: Some(dir.join("devices")),
            max_duration_seconds: Some(600),
            ..RawBroker::default()
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults() {
        with_token(|raw| {
            let s = Settings::resolve(&raw, &Env::default()).unwrap();
            assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
            assert_eq!(s.path, DEFAULT_PATH);
            assert_eq!(s.api_base, DEFAULT_API_BASE);
            assert_eq!(s.api_token.expose(), "cf-secret-token");
            assert_eq!(s.url_expiry, Duration::from_secs(1800));
            assert_eq!(s.max_upload_length, 30_000_000_000);
            assert_eq!(s.allowed_metadata.len(), 7);
            assert!(s.allowed_origins.is_empty());
            assert_eq!(s.urls_per_hour, 60);
            assert_eq!(s.tls, None);
            assert_eq!(s.request_timeout, Duration::from_secs(10));
            assert_eq!(s.head_timeout, Duration::from_secs(5));
            assert_eq!(s.max_connections_per_peer, 16);
            assert!(
                (64..=4096).contains(&s.max_connections),
                "{}",
                s.max_connections
            );
            assert!(!format!("{s:?}").contains("cf-secret-token"));
        });
    }

    #[test]
    fn connection_limits_follow_memory_and_tasks_and_the_head_deadline_its_request() {
        with_token(|raw| {
            let limits = Limits {
                memory_bytes: Some(128 << 20),
                tasks: Some(1024),
            };
            let resolve = |f: &dyn Fn(&mut RawBroker)| {
                let mut r = raw.clone();
                f(&mut r);
                Settings::resolve_with(&r, &Env::default(), &limits)
            };
            assert_eq!(resolve(&|_| {}).unwrap().max_connections, 960, "tasks - 64");
            let set = resolve(&|r| r.max_connections = Some(500)).unwrap();
            assert_eq!(set.max_connections, 500);
            let above = resolve(&|r| r.max_connections = Some(4000)).unwrap();
            assert_eq!(above.max_connections, 960, "never above the task limit");
            let err = resolve(&|r| r.max_connections = Some(4097)).unwrap_err();
            assert!(err.to_string().contains("broker.max_connections"), "{err}");
            let err = resolve(&|r| r.max_connections_per_peer = Some(0)).unwrap_err();
            assert!(
                err.to_string().contains("max_connections_per_peer"),
                "{err}"
            );
            let short = resolve(&|r| r.request_timeout = Some("3s".into())).unwrap();
            assert_eq!(
                short.head_timeout,
                Duration::from_secs(3),
                "at most the request's"
            );
            let err = resolve(&|r| r.head_timeout = Some("0s".into())).unwrap_err();
            assert!(err.to_string().contains("broker.head_timeout"), "{err}");
        });
    }

    #[test]
    fn errors_name_the_key() {
        with_token(|raw| {
            let err = |f: &dyn Fn(&mut RawBroker)| {
                let mut r = raw.clone();
                f(&mut r);
                Settings::resolve(&r, &Env::default())
                    .unwrap_err()
                    .to_string()
            };
            assert!(err(&|r| r.account_id = None).contains("broker.account_id"));
            assert!(err(&|r| r.account_id = Some("a/b".into())).contains("broker.account_id"));
            assert!(err(&|r| r.max_duration_seconds = None).contains("max_duration_seconds"));
            assert!(err(&|r| r.max_duration_seconds = Some(0)).contains("max_duration_seconds"));
            assert!(err(&|r| r.url_expiry_seconds = Some(60)).contains("url_expiry_seconds"));
            assert!(err(&|r| r.url_expiry_seconds = Some(21_601)).contains("url_expiry_seconds"));
            assert!(err(&|r| r.listen = Some("localhost".into())).contains("broker.listen"));
            assert!(err(&|r| r.path = Some("x".into())).contains("broker.path"));
            assert!(err(&|r| r.api_base = Some("ftp://x".into())).contains("broker.api_base"));
            assert!(
                err(&|r| r.api_base = Some("http://api.example/v4".into())).contains("clear text")
            );
            let mut local = raw.clone();
            local.api_base = Some("http://127.0.0.1:9/client/v4/".into());
            assert_eq!(
                Settings::resolve(&local, &Env::default()).unwrap().api_base,
                "http://127.0.0.1:9/client/v4"
            );
            assert!(err(&|r| r.api_token_file = Some("/nonexistent".into()))
                .contains("broker.api_token_file"));
            assert!(err(&|r| r.device_tokens_file = None).contains("device_tokens_file"));
            assert!(err(&|r| r.max_upload_length = Some("0".into())).contains("max_upload_length"));
            assert!(err(&|r| r.allowed_metadata = Some(vec!["expiry".into()]))
                .contains("allowed_metadata"));
            assert!(
                err(&|r| r.allowed_origins = Some(vec!["https://a/b".into()]))
                    .contains("allowed_origins")
            );
            assert!(err(&|r| r.urls_per_hour = Some(0)).contains("urls_per_hour"));
            assert!(err(&|r| r.tls_cert = Some("/c".into())).contains("tls_key"));
            assert!(err(&|r| r.api_timeout = Some("0s".into())).contains("api_timeout"));
            assert!(err(&|r| r.max_connections = Some(0)).contains("max_connections"));
            let forced = |k: &str| Some(BTreeMap::from([(k.to_string(), String::new())]));
            assert!(err(&|r| r.forced_metadata = forced("Expiry")).contains("forced_metadata"));
            assert!(err(&|r| r.forced_metadata = forced("a b")).contains("forced_metadata"));
            let mut ok = raw.clone();
            ok.forced_metadata = Some(BTreeMap::from([
                ("requiresignedurls".to_string(), String::new()),
                ("allowedorigins".to_string(), "app.example.com".to_string()),
            ]));
            assert_eq!(
                Settings::resolve(&ok, &Env::default())
                    .unwrap()
                    .forced_metadata,
                [
                    (
                        "allowedorigins".to_string(),
                        Some("app.example.com".to_string())
                    ),
                    ("requiresignedurls".to_string(), None),
                ]
            );
        });
    }

    #[test]
    fn a_token_with_two_lines_is_refused_without_echoing_it() {
        with_token(|mut raw| {
            let path = PathBuf::from(raw.api_token_file.clone().unwrap());
            std::fs::write(&path, "cf-secret\nsecond line\n").unwrap();
            raw.api_token_file = Some(path.to_str().unwrap().into());
            let e = Settings::resolve(&raw, &Env::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("broker.api_token_file") && !e.contains("cf-secret"),
                "{e}"
            );
        });
    }
}
