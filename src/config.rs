//! Configuration: the TOML file (parsed from text, so it is tested without files), command-line
//! overrides of the same keys, and secrets read from files. The only module that reads the
//! environment or config files.
//!
//! ```toml
//! state_dir = "/var/lib/ferry"        # where upload state lives (default: $STATE_DIRECTORY, else ~/.local/state/ferry)
//!
//! [server]
//! endpoint = "https://tus.example.com/files/"   # tus creation endpoint (required)
//! headers = { "X-Device" = "cam-17" }           # extra request headers
//! header_files = { Authorization = "/etc/ferry/auth" }  # header value read from a file, or "credential:NAME"
//! ca_file = "/etc/ferry/ca.pem"                 # trust this CA instead of the public roots
//! client_cert = "/etc/ferry/client.pem"         # mutual TLS (with client_key)
//! client_key = "/etc/ferry/client.key"
//! connect_timeout = "15s"                       # resolve + TCP + TLS handshake
//! idle_timeout = "30s"                          # no byte moved for this long = stalled link
//! auth_cross_origin = false                     # send credentials to upload URLs on other origins
//! target = "tus"                                # tus | cloudflare-stream | url-broker
//! capture_headers = []                          # response headers to keep besides stream-media-id
//!
//! [stream]                                      # target = "cloudflare-stream"
//! account_id = "023e105f4ecef8ad9ca31a8372d0c353"
//! api_token_file = "credential:stream-token"    # API token with Stream Write
//! api_base = "https://api.cloudflare.com/client/v4"
//!
//! [hook]                                        # optional: run once per completed upload
//! command = ["/usr/local/bin/on-upload"]        # program + args, no shell; env FERRY_PATH, FERRY_SIZE,
//!                                               # FERRY_UPLOAD_URL, FERRY_MEDIA_ID, FERRY_ELAPSED_SECS, ...
//! timeout = "60s"                               # killed after this, retried with backoff
//!
//! [upload]
//! chunk_size = "6MiB"                           # bytes per PATCH
//! checksum = "auto"                             # auto | off | sha1 | sha256
//! creation_with_upload = false                  # small files in the POST itself (see README)
//! default_metadata = true                       # send filename and filetype
//! metadata = { camera = "north-gate" }          # extra Upload-Metadata
//!
//! [retry]
//! initial_delay = "1s"                          # first backoff ceiling
//! max_delay = "2m"                              # backoff cap
//! max_attempts = 0                              # 0 = retry transient failures forever
//! give_up_after = "0s"                          # 0 = never give up for lack of progress
//!
//! [spool]                                       # ferry run
//! dir = "/var/spool/ferry"                      # the directory to empty (required for run)
//! recursive = false                             # watch subdirectories too
//! ignore = [".*", "*.part", "*.partial", "*.tmp", "*.crdownload", "*~"]  # never uploaded
//! settle_time = "5s"                            # unwritten for this long = complete (scans)
//! after_upload = "delete"                       # delete | keep | move:/var/spool/ferry-done
//! failed_dir = "/var/spool/ferry-failed"        # permanent failures go here; unset: kept in place
//! rescan_interval = "60s"                       # full rescan (events cover the rest)
//!
//! [daemon]
//! concurrency = 1                               # files uploaded at once
//! rate_limit = "0"                              # bytes/s for all uploads together, e.g. "250KB"
//! metrics_file = "/var/lib/node_exporter/ferry.prom"  # Prometheus textfile (optional)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::backoff::RetryPolicy;
use crate::daemon::{AfterUpload, DaemonSettings};
use crate::error::{Error, Result};
use crate::hook::HookSettings;
use crate::spool::{self, SpoolRules};
use crate::stream::{self, Target, MEDIA_ID_HEADER};
use crate::transport::http::HttpSettings;
use crate::tus::checksum::Algorithm;
use crate::tus::{metadata, url};
use crate::upload::{ChecksumMode, Header, Settings};

/// The config file's keys; every field optional so that flags can fill or override them.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    /// Directory of the state store.
    pub state_dir: Option<PathBuf>,
    /// `[server]`.
    #[serde(default)]
    pub server: RawServer,
    /// `[upload]`.
    #[serde(default)]
    pub upload: RawUpload,
    /// `[retry]`.
    #[serde(default)]
    pub retry: RawRetry,
    /// `[spool]` (`ferry run`).
    #[serde(default)]
    pub spool: RawSpool,
    /// `[daemon]` (`ferry run`).
    #[serde(default)]
    pub daemon: RawDaemon,
    /// `[stream]` (target `cloudflare-stream`).
    #[serde(default)]
    pub stream: RawStream,
    /// `[hook]`: a command run once per completed upload.
    #[serde(default)]
    pub hook: RawHook,
    /// `[broker]` (`ferry broker`, the one-time upload URL service).
    #[serde(default)]
    pub broker: RawBroker,
}

/// `[broker]` keys (`ferry broker`); checked by the broker itself.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    /// Address to listen on (default 127.0.0.1:8787).
    pub listen: Option<String>,
    /// Path of the one-time URL endpoint (default /generate-tus-upload-request).
    pub path: Option<String>,
    /// Cloudflare API base (default `https://api.cloudflare.com/client/v4`).
    pub api_base: Option<String>,
    /// Cloudflare account id.
    pub account_id: Option<String>,
    /// File (or credential:NAME) holding the Stream API token.
    pub api_token_file: Option<String>,
    /// File with one `<device name> <sha256 hex of its token>` per line.
    pub device_tokens_file: Option<PathBuf>,
    /// maxDurationSeconds set on every video.
    pub max_duration_seconds: Option<u64>,
    /// Lifetime of a one-time URL in seconds (Stream: 120 to 21600).
    pub url_expiry_seconds: Option<u64>,
    /// Largest Upload-Length accepted.
    pub max_upload_length: Option<String>,
    /// Upload-Metadata keys passed on to Stream.
    pub allowed_metadata: Option<Vec<String>>,
    /// Browser origins allowed by CORS (none unless configured; "*" only if listed).
    pub allowed_origins: Option<Vec<String>>,
    /// One-time URLs per device per hour.
    pub urls_per_hour: Option<u32>,
    /// TLS certificate chain (PEM) to serve HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// How long Stream may take to answer before the device gets 504 (default "30s").
    pub api_timeout: Option<String>,
    /// How long a client may take to send a request, and keep an idle connection (default "10s").
    pub request_timeout: Option<String>,
    /// Connections served at once; more are refused (default 64).
    pub max_connections: Option<usize>,
}

/// `[spool]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// The spool directory.
    pub dir: Option<PathBuf>,
    /// Watch subdirectories too.
    pub recursive: Option<bool>,
    /// File name patterns never uploaded (replaces the defaults).
    pub ignore: Option<Vec<String>>,
    /// A file written to within this time is not picked up by a scan.
    pub settle_time: Option<String>,
    /// `delete`, `keep` or `move:DIR`.
    pub after_upload: Option<String>,
    /// Where permanently failed files go (with a `.ferry-error.json` sidecar); unset: kept in place.
    pub failed_dir: Option<PathBuf>,
    /// Full rescan interval (events cover the rest).
    pub rescan_interval: Option<String>,
}

/// `[daemon]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    /// Files uploaded at once.
    pub concurrency: Option<usize>,
    /// Upload rate limit in bytes per second ("0" = none), e.g. "250KB".
    pub rate_limit: Option<String>,
    /// Prometheus textfile to write metrics to.
    pub metrics_file: Option<PathBuf>,
}

/// `[server]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// tus creation endpoint.
    pub endpoint: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are read from files.
    #[serde(default)]
    pub header_files: BTreeMap<String, String>,
    /// CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain.
    pub client_cert: Option<PathBuf>,
    /// Client private key.
    pub client_key: Option<PathBuf>,
    /// Connect timeout.
    pub connect_timeout: Option<String>,
    /// Idle timeout.
    pub idle_timeout: Option<String>,
    /// Send credentials to other origins.
    pub auth_cross_origin: Option<bool>,
    /// `tus` (default), `cloudflare-stream` or `url-broker`.
    pub target: Option<String>,
    /// Response headers to keep besides `stream-media-id`.
    pub capture_headers: Option<Vec<String>>,
}

/// `[hook]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    /// Program and arguments, e.g. `["/usr/local/bin/notify-upload", "--quiet"]` (no shell).
    pub command: Option<Vec<String>>,
    /// A run taking longer is killed and retried later (default 60 s).
    pub timeout: Option<String>,
}

/// `[stream]` keys (target `cloudflare-stream`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    /// Cloudflare account id.
    pub account_id: Option<String>,
    /// File (or `credential:NAME`) holding an API token with Stream Write permission.
    pub api_token_file: Option<String>,
    /// API base URL (default `https://api.cloudflare.com/client/v4`).
    pub api_base: Option<String>,
}

/// `[upload]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawUpload {
    /// Bytes per PATCH, e.g. "6MiB".
    pub chunk_size: Option<String>,
    /// auto | off | sha1 | sha256.
    pub checksum: Option<String>,
    /// Use creation-with-upload for small files.
    pub creation_with_upload: Option<bool>,
    /// Send filename and filetype.
    pub default_metadata: Option<bool>,
    /// Extra metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `[retry]` keys.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// First backoff ceiling.
    pub initial_delay: Option<String>,
    /// Backoff cap.
    pub max_delay: Option<String>,
    /// 0 = unlimited.
    pub max_attempts: Option<u32>,
    /// "0s" = never.
    pub give_up_after: Option<String>,
}

/// Everything `ferry upload` needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// State directory.
    pub state_dir: PathBuf,
    /// Upload behaviour.
    pub upload: Settings,
    /// HTTP client.
    pub http: HttpSettings,
    /// The after-upload hook, if any.
    pub hook: Option<HookSettings>,
}

impl Raw {
    /// Parses TOML text; errors name the key and line.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::config(format!("{origin}: {e}")))
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Lays `over` (command-line flags) on top of `self` (the file).
    pub fn merge(mut self, over: Raw) -> Raw {
        macro_rules! take {
            ($($f:ident).+) => { if over.$($f).+.is_some() { self.$($f).+ = over.$($f).+.clone(); } };
        }
        take!(state_dir);
        take!(server.endpoint);
        take!(server.ca_file);
        take!(server.client_cert);
        take!(server.client_key);
        take!(server.connect_timeout);
        take!(server.idle_timeout);
        take!(server.auth_cross_origin);
        take!(server.target);
        take!(server.capture_headers);
        take!(stream.account_id);
        take!(stream.api_token_file);
        take!(stream.api_base);
        take!(hook.command);
        take!(hook.timeout);
        take!(upload.chunk_size);
        take!(upload.checksum);
        take!(upload.creation_with_upload);
        take!(upload.default_metadata);
        take!(retry.initial_delay);
        take!(retry.max_delay);
        take!(retry.max_attempts);
        take!(retry.give_up_after);
        take!(spool.dir);
        take!(spool.recursive);
        take!(spool.ignore);
        take!(spool.settle_time);
        take!(spool.after_upload);
        take!(spool.failed_dir);
        take!(spool.rescan_interval);
        take!(daemon.concurrency);
        take!(daemon.rate_limit);
        take!(daemon.metrics_file);
        self.server.headers.extend(over.server.headers);
        self.server.header_files.extend(over.server.header_files);
        self.upload.metadata.extend(over.upload.metadata);
        self
    }

    /// The state directory (given, or the default), without checking anything else.
    pub fn state_dir(&self) -> Result<PathBuf> {
        match &self.state_dir {
            Some(d) => Ok(d.clone()),
            None => default_state_dir(),
        }
    }

    /// Checks every value and reads secret files.
    pub fn resolve(self) -> Result<Config> {
        let s = &self.server;
        let target = target_kind(s.target.as_deref())?;
        let mut headers = headers(s)?;
        let endpoint = match target {
            Target::CloudflareStream => stream_endpoint(&self.stream, &mut headers)?,
            _ => s.endpoint.clone().ok_or_else(|| {
                Error::config(
                    "server.endpoint is not set: give --endpoint URL or set it in the config file",
                )
            })?,
        };
        url::validate(&endpoint).map_err(|e| Error::config(format!("server.endpoint: {e}")))?;
        let chunk_size_bytes = chunk_size(&self.upload.chunk_size)?;
        if target.stream_rules() {
            stream::check_chunk_size(chunk_size_bytes)?;
        }
        let mut capture_headers = vec![MEDIA_ID_HEADER.to_string()];
        for h in s.capture_headers.iter().flatten() {
            let h = h.to_ascii_lowercase();
            if !capture_headers.contains(&h) {
                capture_headers.push(h);
            }
        }
        let http = HttpSettings {
            connect_timeout: duration_or(&s.connect_timeout, "server.connect_timeout", 15)?,
            idle_timeout: duration_or(&s.idle_timeout, "server.idle_timeout", 30)?,
            ca_file: s.ca_file.clone(),
            client_cert: s.client_cert.clone(),
            client_key: s.client_key.clone(),
        };
        if http.connect_timeout.is_zero() || http.idle_timeout.is_zero() {
            return Err(Error::config(
                "server.connect_timeout and server.idle_timeout must be above 0",
            ));
        }
        let upload = Settings {
            endpoint,
            chunk_size_bytes,
            headers,
            metadata: user_metadata(&self.upload.metadata)?,
            default_metadata: self.upload.default_metadata.unwrap_or(true),
            checksum: checksum_mode(self.upload.checksum.as_deref())?,
            creation_with_upload: self.upload.creation_with_upload.unwrap_or(false),
            auth_cross_origin: s.auth_cross_origin.unwrap_or(false),
            retry: retry_policy(&self.retry)?,
            max_checksum_mismatches: 5,
            target,
            capture_headers,
        };
        let state_dir = match self.state_dir {
            Some(d) => d,
            None => default_state_dir()?,
        };
        let hook = match &self.hook.command {
            None => None,
            Some(argv) if argv.is_empty() || argv[0].is_empty() => {
                return Err(Error::config(
                    "hook.command is empty: give the program and its arguments as a list",
                ))
            }
            Some(argv) => Some(HookSettings {
                argv: argv.clone(),
                timeout: duration_or(&self.hook.timeout, "hook.timeout", 60)?,
            }),
        };
        Ok(Config {
            state_dir,
            upload,
            http,
            hook,
        })
    }
}

impl Raw {
    /// Checks the `[spool]` and `[daemon]` keys for `ferry run`.
    pub fn resolve_daemon(&self, state_dir: &Path) -> Result<DaemonSettings> {
        let sp = &self.spool;
        let dir = sp.dir.clone().ok_or_else(|| {
            Error::config("spool.dir is not set: give --spool DIR or set it in the config file")
        })?;
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
            settle: duration_or(&sp.settle_time, "spool.settle_time", 5)?,
            exclude,
        };
        let concurrency = self.daemon.concurrency.unwrap_or(1);
        if concurrency == 0 || concurrency > 64 {
            return Err(Error::config("daemon.concurrency must be between 1 and 64"));
        }
        let rate = match &self.daemon.rate_limit {
            None => None,
            Some(t) => {
                let n =
                    parse_size(t).map_err(|e| Error::config(format!("daemon.rate_limit: {e}")))?;
                (n > 0).then_some(n)
            }
        };
        let rescan = duration_or(&sp.rescan_interval, "spool.rescan_interval", 60)?;
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
        })
    }
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
fn stream_endpoint(st: &RawStream, headers: &mut Vec<Header>) -> Result<String> {
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
    let token =
        read_secret(source).map_err(|e| Error::config(format!("stream.api_token_file: {e}")))?;
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

/// The systemd notification socket, when running under `Type=notify`.
pub fn notify_socket() -> Option<std::ffi::OsString> {
    std::env::var_os("NOTIFY_SOCKET")
}

/// The systemd watchdog interval, when `WatchdogSec=` is set for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let pid_ok =
        std::env::var("WATCHDOG_PID").map_or(true, |p| p.trim() == std::process::id().to_string());
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (pid_ok && usec > 0).then(|| Duration::from_micros(usec))
}

fn chunk_size(v: &Option<String>) -> Result<u64> {
    let Some(text) = v else {
        return Ok(6 * 1024 * 1024);
    };
    let n = parse_size(text).map_err(|e| Error::config(format!("upload.chunk_size: {e}")))?;
    if n == 0 {
        return Err(Error::config("upload.chunk_size must be above 0"));
    }
    Ok(n)
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
    let give_up = duration_or(&r.give_up_after, "retry.give_up_after", 0)?;
    let policy = RetryPolicy {
        initial_delay: duration_or(&r.initial_delay, "retry.initial_delay", 1)?,
        max_delay: duration_or(&r.max_delay, "retry.max_delay", 120)?,
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

fn headers(s: &RawServer) -> Result<Vec<Header>> {
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
        let value = read_secret(source)
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
pub fn read_secret(source: &str) -> std::result::Result<String, String> {
    let path = match source.strip_prefix("credential:") {
        Some(name) => {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                format!("credential {name:?} requested but $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)")
            })?;
            PathBuf::from(dir).join(name)
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
    m.iter()
        .map(|(k, v)| {
            metadata::validate_key(k)
                .map_err(|e| Error::config(format!("upload.metadata: {e}")))?;
            Ok((k.clone(), Some(v.clone())))
        })
        .collect()
}

/// True when stderr goes to journald, which stamps lines itself: `$JOURNAL_STREAM` names
/// the device and inode of the stream systemd connected, and stderr must still be it (a
/// child that inherited the variable but writes elsewhere is not under journald).
pub fn under_journald() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

fn default_state_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Ok(PathBuf::from(d).join("ferry"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/state/ferry"))
        .ok_or_else(|| Error::config("no state directory: give --state-dir DIR"))
}

fn duration_or(v: &Option<String>, key: &str, default_secs: u64) -> Result<Duration> {
    match v {
        None => Ok(Duration::from_secs(default_secs)),
        Some(text) => parse_duration(text).map_err(|e| Error::config(format!("{key}: {e}"))),
    }
}

/// Parses a size: `6291456`, `6MiB`, `6 MiB`, `6M` (binary), `5MB` (decimal).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 6291456, 6MiB or 5MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: `30s`, `500ms`, `2m`, `1h`, `1d`, or plain seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 500ms, 2m or 1h"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(format!("{text:?}: unknown unit; use ms, s, m, h or d")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("6MiB"), Ok(6 << 20));
        assert_eq!(parse_size("6 MiB"), Ok(6 << 20));
        assert_eq!(parse_size("6M"), Ok(6 << 20));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("262144"), Ok(262_144));
        assert!(parse_size("6 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("1 fortnight").is_err());
    }

    const FULL: &str = r#"
state_dir = "/var/lib/ferry"
[server]
endpoint = "https://tus.example.com/files/"
headers = { "X-Device" = "cam-17" }
connect_timeout = "5s"
[upload]
chunk_size = "8MiB"
checksum = "sha1"
metadata = { camera = "north" }
[retry]
max_attempts = 4
give_up_after = "10m"
"#;

    #[test]
    fn parses_and_resolves_a_full_file() {
        let c = Raw::parse(FULL, "test").unwrap().resolve().unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/ferry"));
        assert_eq!(c.upload.endpoint, "https://tus.example.com/files/");
        assert_eq!(c.upload.chunk_size_bytes, 8 << 20);
        assert_eq!(c.upload.checksum, ChecksumMode::Always(Algorithm::Sha1));
        assert_eq!(
            c.upload.headers,
            [Header {
                name: "X-Device".into(),
                value: "cam-17".into(),
                secret: false
            }]
        );
        assert_eq!(
            c.upload.metadata,
            [("camera".to_string(), Some("north".to_string()))]
        );
        assert_eq!(c.upload.retry.max_attempts, Some(4));
        assert_eq!(c.upload.retry.give_up_after, Some(Duration::from_secs(600)));
        assert_eq!(c.http.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.http.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn defaults_retry_forever() {
        let raw = Raw::parse(
            "state_dir = \"/s\"\n[server]\nendpoint = \"http://h/f/\"",
            "t",
        )
        .unwrap();
        let c = raw.resolve().unwrap();
        assert_eq!(c.upload.retry, RetryPolicy::default());
        assert_eq!(c.upload.chunk_size_bytes, 6 << 20);
        assert!(!c.upload.creation_with_upload);
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| {
            Raw::parse(text, "ferry.toml")
                .and_then(Raw::resolve)
                .unwrap_err()
                .to_string()
        };
        assert!(err("[server]\nendpiont = \"x\"").contains("endpiont"));
        assert!(err("[upload]\nchunk_size = 5").contains("chunk_size"));
        assert!(
            err("state_dir=\"/s\"\n[server]\nendpoint = \"ftp://x\"").contains("server.endpoint")
        );
        assert!(err(
            "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nchecksum = \"md5\""
        )
        .contains("upload.checksum"));
        assert!(err(
            "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nchunk_size = \"0\""
        )
        .contains("chunk_size"));
        assert!(err(
            "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[retry]\nmax_delay = \"soon\""
        )
        .contains("retry.max_delay"));
        assert!(err("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\nheaders = { \"Bad Name\" = \"v\" }").contains("header name"));
        assert!(err("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\n[upload]\nmetadata = { \"a b\" = \"v\" }").contains("upload.metadata"));
        assert!(err("state_dir=\"/s\"\n[server]\n").contains("server.endpoint is not set"));
    }

    #[test]
    fn flags_override_the_file_and_add_headers() {
        let file = Raw::parse(FULL, "t").unwrap();
        let mut over = Raw::default();
        over.server.endpoint = Some("http://127.0.0.1:1/files/".into());
        over.server.headers.insert("X-Other".into(), "1".into());
        let c = file.merge(over).resolve().unwrap();
        assert_eq!(c.upload.endpoint, "http://127.0.0.1:1/files/");
        assert_eq!(c.upload.headers.len(), 2);
        assert_eq!(c.upload.chunk_size_bytes, 8 << 20, "kept from the file");
    }

    #[test]
    fn secrets_come_from_files_and_are_never_echoed() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("token");
        std::fs::write(&good, "Bearer s3cret\n").unwrap();
        assert_eq!(
            read_secret(good.to_str().unwrap()),
            Ok("Bearer s3cret".into())
        );
        let bad = dir.join("bad");
        std::fs::write(&bad, "Bearer s3cret\ninjected: 1\n").unwrap();
        let text = format!("state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\nheader_files = {{ Authorization = {:?} }}", bad.to_str().unwrap());
        let e = Raw::parse(&text, "t")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("line break") && !e.contains("s3cret"), "{e}");
        assert!(read_secret(dir.join("missing").to_str().unwrap())
            .unwrap_err()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stream_targets_build_the_endpoint_and_enforce_the_chunk_rules() {
        let dir = std::env::temp_dir().join(format!("ferry-cfg-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "cf-token\n").unwrap();
        let base = format!("state_dir=\"/s\"\n[server]\ntarget = \"cloudflare-stream\"\n[stream]\naccount_id = \"acct1\"\napi_token_file = {:?}\n", token.to_str().unwrap());
        let c = Raw::parse(&base, "t").unwrap().resolve().unwrap();
        assert_eq!(
            c.upload.endpoint,
            "https://api.cloudflare.com/client/v4/accounts/acct1/stream"
        );
        assert_eq!(c.upload.target, Target::CloudflareStream);
        let auth = c
            .upload
            .headers
            .iter()
            .find(|h| h.name == "Authorization")
            .unwrap();
        assert_eq!(
            (auth.value.as_str(), auth.secret),
            ("Bearer cf-token", true)
        );
        let bad = format!("{base}[upload]\nchunk_size = \"1MiB\"\n");
        let e = Raw::parse(&bad, "t")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upload.chunk_size") && e.contains("256 KiB") && e.contains("5 MiB"),
            "{e}"
        );
        let odd = format!("{base}[upload]\nchunk_size = \"5000000\"\n");
        assert!(
            Raw::parse(&odd, "t").unwrap().resolve().is_err(),
            "not a 256 KiB multiple"
        );
        let broker = "state_dir=\"/s\"\n[server]\ntarget = \"url-broker\"\nendpoint = \"https://b.example/x\"\n[upload]\nchunk_size = \"2MiB\"";
        assert!(Raw::parse(broker, "t")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("Cloudflare Stream's rule"));
        let no_acct = "state_dir=\"/s\"\n[server]\ntarget = \"cloudflare-stream\"";
        assert!(Raw::parse(no_acct, "t")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("stream.account_id"));
        let typo = "state_dir=\"/s\"\n[server]\nendpoint = \"http://h/\"\ntarget = \"vimeo\"";
        assert!(Raw::parse(typo, "t")
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("server.target"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
