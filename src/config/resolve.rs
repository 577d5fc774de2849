//! Checks every value of a [`Raw`] file against the [`Env`] and builds the one [`Config`].
//!
//! Defaults are each settings type's `Default` (written once, next to the type); a key that is
//! absent takes it. Secrets (header values, API tokens) are read here, from files or systemd
//! credentials, and never appear in an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::Env;
use super::file::{Raw, RawRetry, RawServer, RawSpool, RawStream};
use super::units::{parse_duration, parse_rate, parse_size};
use super::Config;
use crate::backoff::RetryPolicy;
use crate::daemon::{AfterUpload, DaemonSettings};
use crate::error::{Error, Result};
use crate::hook::HookSettings;
use crate::spool::{self, SpoolRules};
use crate::spool_limits::{MinFree, OnFull, SpoolLimits};
use crate::stream::{self, Target, MEDIA_ID_HEADER};
use crate::transport::cipher::CipherOrder;
use crate::transport::http::{HttpSettings, MAX_CONCURRENT_REQUESTS};
use crate::tus::checksum::Algorithm;
use crate::tus::{metadata, url};
use crate::upload::{ChecksumMode, Header, Settings, MIN_CHUNK_BYTES};

/// `hook.timeout` when unset.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// `spool.settle_time` when unset.
const SETTLE_TIME: Duration = Duration::from_secs(5);
/// `spool.rescan_interval` when unset.
const RESCAN_INTERVAL: Duration = Duration::from_secs(60);
/// `daemon.concurrency` when unset.
const CONCURRENCY: usize = 1;

impl Raw {
    /// Checks every value and reads secret files: the one [`Config`] every command uses.
    /// `[spool]` and `[daemon]` are checked when `spool.dir` is set (`ferry run` needs it).
    pub(crate) fn resolve(self, env: &Env) -> Result<Config> {
        let s = &self.server;
        let target = target_kind(s.target.as_deref())?;
        let mut headers = headers(s, env)?;
        let endpoint = match target {
            Target::CloudflareStream => stream_endpoint(&self.stream, &mut headers, env)?,
            _ => s.endpoint.clone().ok_or_else(|| {
                Error::config(
                    "server.endpoint is not set: give --endpoint URL or set it in the config file",
                )
            })?,
        };
        url::validate(&endpoint).map_err(|e| Error::config(format!("server.endpoint: {e}")))?;
        let chunk_size_bytes = chunk_size(&self.upload.chunk_size)?;
        if let Some(chunk) = chunk_size_bytes.filter(|_| target.stream_rules()) {
            stream::check_chunk_size(chunk)?;
        }
        let mut capture_headers = vec![MEDIA_ID_HEADER.to_string()];
        for h in s.capture_headers.iter().flatten() {
            let h = h.to_ascii_lowercase();
            if !capture_headers.contains(&h) {
                capture_headers.push(h);
            }
        }
        let http_defaults = HttpSettings::default();
        let http = HttpSettings {
            connect_timeout: duration_or(
                &s.connect_timeout,
                "server.connect_timeout",
                http_defaults.connect_timeout,
            )?,
            idle_timeout: duration_or(
                &s.idle_timeout,
                "server.idle_timeout",
                http_defaults.idle_timeout,
            )?,
            response_timeout: duration_or(
                &s.response_timeout,
                "server.response_timeout",
                http_defaults.response_timeout,
            )?,
            min_send_rate_bytes_per_sec: match &s.min_send_rate {
                None => http_defaults.min_send_rate_bytes_per_sec,
                Some(t) => parse_size(t)
                    .map_err(|e| Error::config(format!("server.min_send_rate: {e}")))?,
            },
            ca_file: s.ca_file.clone(),
            client_cert: s.client_cert.clone(),
            client_key: s.client_key.clone(),
            cipher_order: cipher_order(s.cipher_order.as_deref())?,
            bind_interface: super::network::resolve(&self.network)?.bind_interface,
        };
        if http.connect_timeout.is_zero()
            || http.idle_timeout.is_zero()
            || http.response_timeout.is_zero()
        {
            return Err(Error::config(
                "server.connect_timeout, server.idle_timeout and server.response_timeout must be above 0",
            ));
        }
        let defaults = Settings::default();
        let upload = Settings {
            endpoint,
            chunk_size_bytes,
            headers,
            metadata: user_metadata(&self.upload.metadata)?,
            default_metadata: self
                .upload
                .default_metadata
                .unwrap_or(defaults.default_metadata),
            checksum: checksum_mode(self.upload.checksum.as_deref())?,
            creation_with_upload: self
                .upload
                .creation_with_upload
                .unwrap_or(defaults.creation_with_upload),
            auth_cross_origin: s.auth_cross_origin.unwrap_or(defaults.auth_cross_origin),
            retry: retry_policy(&self.retry)?,
            max_checksum_mismatches: defaults.max_checksum_mismatches,
            target,
            capture_headers,
        };
        let state_dir = self.state_dir(env)?;
        let hook = match &self.hook.command {
            None => None,
            Some(argv) if argv.is_empty() || argv[0].is_empty() => {
                return Err(Error::config(
                    "hook.command is empty: give the program and its arguments as a list",
                ))
            }
            Some(argv) => Some(HookSettings {
                argv: argv.clone(),
                timeout: duration_or(&self.hook.timeout, "hook.timeout", HOOK_TIMEOUT)?,
            }),
        };
        let daemon = match self.spool.dir {
            Some(_) => Some(self.resolve_daemon(&state_dir, env)?),
            None => None,
        };
        let rate_limit = self.rate_limit()?;
        let concurrency = daemon.as_ref().map_or(1, |d| d.concurrency);
        let mut http = http;
        http.min_send_rate_bytes_per_sec =
            min_send_rate_under_limit(http.min_send_rate_bytes_per_sec, rate_limit, concurrency);
        Ok(Config {
            state_dir,
            upload,
            http,
            hook,
            daemon,
            rate_limit,
        })
    }

    /// The state directory (given, or the default), without checking anything else.
    pub(crate) fn state_dir(&self, env: &Env) -> Result<PathBuf> {
        match &self.state_dir {
            Some(d) => Ok(d.clone()),
            None => env
                .default_state_dir()
                .ok_or_else(|| Error::config("no state directory: give --state-dir DIR")),
        }
    }
}

/// `min_send_rate`, lowered to half of each upload's share of the rate limit, so that our
/// own rate limit never makes a body too slow to be sent. A limit that changes while ferry
/// runs (an upload window's, `ferry limit`) lowers it through the transport.
fn min_send_rate_under_limit(min_rate: u64, limit: Option<u64>, concurrency: usize) -> u64 {
    match limit {
        Some(limit) => {
            let share = limit / u64::try_from(concurrency).unwrap_or(u64::MAX).max(1);
            min_rate.min((share / 2).max(1))
        }
        None => min_rate,
    }
}

impl Raw {
    /// `upload.rate_limit` (or its older name `daemon.rate_limit`) in bytes per second.
    pub(crate) fn rate_limit(&self) -> Result<Option<u64>> {
        let (key, text) = match (&self.upload.rate_limit, &self.daemon.rate_limit) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "upload.rate_limit and daemon.rate_limit are both set: keep upload.rate_limit (daemon.rate_limit is its older name)",
                ))
            }
            (Some(t), None) => ("upload.rate_limit", t),
            (None, Some(t)) => ("daemon.rate_limit", t),
            (None, None) => return Ok(None),
        };
        parse_rate(text).map_err(|e| Error::config(format!("{key}: {e}")))
    }
}

/// `spool.order`: true for `newest-first`.
fn newest_first(order: Option<&str>) -> Result<bool> {
    match order {
        None | Some("oldest-first") => Ok(false),
        Some("newest-first") => Ok(true),
        Some(other) => Err(Error::config(format!(
            "spool.order = {other:?}: use \"oldest-first\" (the default) or \"newest-first\""
        ))),
    }
}

/// Most `spool.priority` patterns (each is a class; more would be a list no one can reason about).
const MAX_PRIORITY_PATTERNS: usize = 32;

/// `spool.priority`: glob patterns, highest priority first.
fn priority(patterns: Option<&[String]>) -> Result<Vec<String>> {
    let patterns = patterns.unwrap_or_default();
    if patterns.len() > MAX_PRIORITY_PATTERNS {
        return Err(Error::config(format!(
            "spool.priority has {} patterns; at most {MAX_PRIORITY_PATTERNS} (each one is a priority class)",
            patterns.len()
        )));
    }
    for (i, p) in patterns.iter().enumerate() {
        if p.trim().is_empty() {
            return Err(Error::config(format!(
                "spool.priority[{i}] is empty: give a pattern like \"alarms/*\" or \"*.jpg\""
            )));
        }
        if p.starts_with('/') {
            return Err(Error::config(format!(
                "spool.priority[{i}] = {p:?}: patterns are relative to the spool directory (\"alarms/*\", not an absolute path)"
            )));
        }
    }
    Ok(patterns.to_vec())
}

/// The error of `ferry run` (or a reload) without `spool.dir`.
pub(super) fn no_spool_dir() -> Error {
    Error::config("spool.dir is not set: give --spool DIR or set it in the config file")
}

impl Raw {
    /// Checks the `[spool]`, `[daemon]` and `[schedule]` keys for `ferry run` (at start and on
    /// SIGHUP).
    pub(crate) fn resolve_daemon(&self, state_dir: &Path, env: &Env) -> Result<DaemonSettings> {
        let sp = &self.spool;
        let dir = sp.dir.clone().ok_or_else(no_spool_dir)?;
        let after_upload = after_upload(sp.after_upload.as_deref())?;
        let mut exclude = Vec::new();
        if let AfterUpload::Move(d) = &after_upload {
            exclude.push(d.clone());
        }
        exclude.extend(sp.failed_dir.clone());
        exclude.push(state_dir.to_path_buf());
        let ignore = sp.ignore.clone().unwrap_or_else(spool::default_ignore);
        let rules = SpoolRules {
            dir,
            recursive: sp.recursive.unwrap_or(false),
            ignore,
            settle: duration_or(&sp.settle_time, "spool.settle_time", SETTLE_TIME)?,
            exclude,
            priority: priority(sp.priority.as_deref())?,
            newest_first: newest_first(sp.order.as_deref())?,
        };
        let concurrency = self.daemon.concurrency.unwrap_or(CONCURRENCY);
        if concurrency == 0 || concurrency > MAX_CONCURRENT_REQUESTS {
            return Err(Error::config(format!(
                "daemon.concurrency must be between 1 and {MAX_CONCURRENT_REQUESTS}"
            )));
        }
        let rate = self.rate_limit()?;
        let rescan = duration_or(
            &sp.rescan_interval,
            "spool.rescan_interval",
            RESCAN_INTERVAL,
        )?;
        if rescan.is_zero() {
            return Err(Error::config("spool.rescan_interval must be above 0"));
        }
        Ok(DaemonSettings {
            spool: rules,
            after_upload,
            failed_dir: sp.failed_dir.clone(),
            concurrency,
            rate_limit_bytes_per_sec: rate,
            rescan_interval: rescan,
            metrics_file: self.daemon.metrics_file.clone(),
            network: super::network::resolve(&self.network)?,
            schedule: self.resolve_schedule(env)?,
            limits: spool_limits(sp)?,
        })
    }
}

/// `spool.max_bytes`, `spool.min_free`, `spool.max_age` and `spool.on_full`.
fn spool_limits(sp: &RawSpool) -> Result<SpoolLimits> {
    let max_bytes = match &sp.max_bytes {
        None => None,
        Some(t) => {
            match parse_size(t).map_err(|e| Error::config(format!("spool.max_bytes: {e}")))? {
                0 => {
                    return Err(Error::config(
                        "spool.max_bytes must be above 0; leave it out for no limit",
                    ))
                }
                n => Some(n),
            }
        }
    };
    let min_free = sp.min_free.as_deref().map(min_free).transpose()?;
    let max_age = match &sp.max_age {
        None => None,
        Some(t) => {
            match parse_duration(t).map_err(|e| Error::config(format!("spool.max_age: {e}")))? {
                d if d.is_zero() => {
                    return Err(Error::config(
                        "spool.max_age must be above 0; leave it out for no limit",
                    ))
                }
                d => Some(d),
            }
        }
    };
    let on_full = match sp.on_full.as_deref() {
        None | Some("keep") => OnFull::Keep,
        Some("delete-oldest") => OnFull::DeleteOldest,
        Some(other) => {
            return Err(Error::config(format!(
                "spool.on_full = {other:?}: use keep (never delete a file not yet uploaded) or delete-oldest"
            )))
        }
    };
    let limits = SpoolLimits {
        max_bytes,
        min_free,
        max_age,
        on_full,
    };
    if on_full == OnFull::DeleteOldest && !limits.any() {
        return Err(Error::config(
            "spool.on_full = \"delete-oldest\" needs a limit: set spool.max_bytes, spool.min_free or spool.max_age",
        ));
    }
    Ok(limits)
}

/// `spool.min_free`: a size, or a percent of the spool's file system from 1% to 99%.
fn min_free(text: &str) -> Result<MinFree> {
    let limit = match text.trim().strip_suffix('%') {
        Some(pct) => {
            let p: u8 = pct.trim().parse().map_err(|_| {
                Error::config(format!(
                    "spool.min_free = {text:?}: a percent is a whole number from 1% to 99%, such as \"10%\""
                ))
            })?;
            if !(1..=99).contains(&p) {
                return Err(Error::config(format!(
                    "spool.min_free = {text:?}: a percent must be from 1% to 99% of the spool's file system"
                )));
            }
            MinFree::Percent(p)
        }
        None => MinFree::Bytes(parse_size(text).map_err(|e| {
            Error::config(format!(
                "spool.min_free: {e}, or a percent of the spool's file system such as \"10%\""
            ))
        })?),
    };
    if limit == MinFree::Bytes(0) {
        return Err(Error::config(
            "spool.min_free must be above 0; leave it out for no limit",
        ));
    }
    Ok(limit)
}

fn target_kind(v: Option<&str>) -> Result<Target> {
    match v {
        None | Some("tus") => Ok(Target::Tus),
        Some("cloudflare-stream") => Ok(Target::CloudflareStream),
        Some("url-broker") => Ok(Target::UrlBroker),
        Some(other) => Err(Error::config(format!(
            "server.target = {other:?}: use tus, cloudflare-stream or url-broker"
        ))),
    }
}

/// Stream's tus endpoint for the account, with the API token as a secret Bearer header.
fn stream_endpoint(st: &RawStream, headers: &mut Vec<Header>, env: &Env) -> Result<String> {
    let account = st.account_id.as_deref().ok_or_else(|| {
        Error::config("stream.account_id is not set (target cloudflare-stream needs it)")
    })?;
    if !stream::is_account_id(account) {
        return Err(Error::config(format!(
            "stream.account_id {account:?} is not an account id"
        )));
    }
    let source = st.api_token_file.as_deref().ok_or_else(|| {
        Error::config("stream.api_token_file is not set (target cloudflare-stream needs an API token with Stream Write)")
    })?;
    let token = read_secret(source, env)
        .map_err(|e| Error::config(format!("stream.api_token_file: {e}")))?;
    check_header("Authorization", &token, "stream.api_token_file")?;
    headers.retain(|h| !h.name.eq_ignore_ascii_case("authorization"));
    headers.push(Header {
        name: "Authorization".into(),
        value: format!("Bearer {token}"),
        secret: true,
    });
    let base = st.api_base.as_deref().unwrap_or(stream::DEFAULT_API_BASE);
    Ok(stream::endpoint(base.trim_end_matches('/'), account))
}

fn after_upload(v: Option<&str>) -> Result<AfterUpload> {
    match v {
        None | Some("delete") => Ok(AfterUpload::Delete),
        Some("keep") => Ok(AfterUpload::Keep),
        Some(other) => match other.strip_prefix("move:") {
            Some(dir) if !dir.is_empty() => Ok(AfterUpload::Move(PathBuf::from(dir))),
            _ => Err(Error::config(format!(
                "spool.after_upload = {other:?}: use delete, keep or move:/path/to/dir"
            ))),
        },
    }
}

/// The configured chunk size; `None` leaves it to the chunk policy.
fn chunk_size(v: &Option<String>) -> Result<Option<u64>> {
    let Some(text) = v else {
        return Ok(None);
    };
    let n = parse_size(text).map_err(|e| Error::config(format!("upload.chunk_size: {e}")))?;
    if n < MIN_CHUNK_BYTES {
        return Err(Error::config(format!(
            "upload.chunk_size = {text:?} is below the smallest chunk, 64KiB (each chunk is one request, so tiny chunks only add round trips); leave it unset and ferry chooses from the link's rate"
        )));
    }
    Ok(Some(n))
}

/// `server.cipher_order`: `auto` (default), `aes` or `chacha`.
fn cipher_order(v: Option<&str>) -> Result<CipherOrder> {
    match v {
        None => Ok(CipherOrder::Auto),
        Some(text) => CipherOrder::parse(text).ok_or_else(|| {
            Error::config(format!(
                "server.cipher_order = {text:?}: use auto (ChaCha20 first on a CPU without AES instructions), aes or chacha"
            ))
        }),
    }
}

fn checksum_mode(v: Option<&str>) -> Result<ChecksumMode> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("auto") => Ok(ChecksumMode::Auto),
        Some("off") => Ok(ChecksumMode::Off),
        Some(other) => Algorithm::from_token(other)
            .map(ChecksumMode::Always)
            .ok_or_else(|| {
                Error::config(format!(
                    "upload.checksum = {other:?}: use auto, off, sha1 or sha256"
                ))
            }),
    }
}

fn retry_policy(r: &RawRetry) -> Result<RetryPolicy> {
    let defaults = RetryPolicy::default();
    let give_up = duration_or(&r.give_up_after, "retry.give_up_after", Duration::ZERO)?;
    let policy = RetryPolicy {
        initial_delay: duration_or(
            &r.initial_delay,
            "retry.initial_delay",
            defaults.initial_delay,
        )?,
        max_delay: duration_or(&r.max_delay, "retry.max_delay", defaults.max_delay)?,
        max_attempts: r.max_attempts.filter(|n| *n > 0),
        give_up_after: (!give_up.is_zero()).then_some(give_up),
    };
    if policy.max_delay < policy.initial_delay {
        return Err(Error::config(
            "retry.max_delay must not be below retry.initial_delay",
        ));
    }
    Ok(policy)
}

fn headers(s: &RawServer, env: &Env) -> Result<Vec<Header>> {
    let mut out = Vec::new();
    for (name, value) in &s.headers {
        check_header(name, value, "server.headers")?;
        out.push(Header {
            name: name.clone(),
            value: value.clone(),
            secret: false,
        });
    }
    for (name, source) in &s.header_files {
        let value = read_secret(source, env)
            .map_err(|e| Error::config(format!("server.header_files.{name}: {e}")))?;
        check_header(name, &value, "server.header_files")?;
        out.push(Header {
            name: name.clone(),
            value,
            secret: true,
        });
    }
    Ok(out)
}

fn check_header(name: &str, value: &str, key: &str) -> Result<()> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !name_ok {
        return Err(Error::config(format!(
            "{key}: {name:?} is not a valid header name"
        )));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        // The value is a secret: never print it.
        return Err(Error::config(format!(
            "{key}.{name}: the value contains a line break or NUL"
        )));
    }
    Ok(())
}

/// Reads a secret from a file path or `credential:NAME` (systemd's `$CREDENTIALS_DIRECTORY`).
pub(crate) fn read_secret(source: &str, env: &Env) -> std::result::Result<String, String> {
    let path = match source.strip_prefix("credential:") {
        Some(name) => {
            let dir = env.credentials_directory.as_ref().ok_or_else(|| {
                format!("credential {name:?} requested but $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)")
            })?;
            dir.join(name)
        }
        None => PathBuf::from(source),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\r', '\n']).to_string();
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(value)
}

fn user_metadata(m: &BTreeMap<String, String>) -> Result<Vec<metadata::Entry>> {
    let entries = m
        .iter()
        .map(|(k, v)| {
            metadata::validate_key(k)
                .map_err(|e| Error::config(format!("upload.metadata: {e}")))?;
            Ok((k.clone(), Some(v.clone())))
        })
        .collect::<Result<Vec<_>>>()?;
    let encoded = metadata::encode(&entries)
        .map_err(|e| Error::config(format!("upload.metadata: {e}")))?
        .map_or(0, |h| h.len());
    if encoded > metadata::MAX_USER_METADATA_BYTES {
        return Err(Error::config(format!(
            "upload.metadata takes {encoded} bytes once encoded (base64), over the {} ferry sends: servers refuse long request heads (Node's, under @tus/server, takes 16 KiB in all); shorten the values or send fewer",
            metadata::MAX_USER_METADATA_BYTES
        )));
    }
    Ok(entries)
}

fn duration_or(v: &Option<String>, key: &str, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(text) => parse_duration(text).map_err(|e| Error::config(format!("{key}: {e}"))),
    }
}
