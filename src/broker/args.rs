//! `ferry broker`'s command line: `--config FILE` and flags that override its `[broker]` keys.

use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::RawBroker;
use crate::error::{Error, Result};

/// The help text of `ferry broker`.
pub(crate) const USAGE: &str = "\
ferry broker: hands devices one-time Cloudflare Stream upload URLs (the API token stays here)

USAGE:
    ferry broker [OPTIONS]

Devices POST to the endpoint like to a tus creation endpoint, with
`Authorization: Bearer <device token>`, `Upload-Length` and `Upload-Metadata`, and get
201 with `Location` (the one-time upload URL) and `Stream-Media-ID`.

OPTIONS (each overrides the same key of the --config file's [broker] section):
    --config FILE                TOML config file with a [broker] section (see README)
    --listen ADDR:PORT           address to listen on, default 127.0.0.1:8787  [broker.listen]
    --api-base URL               default https://api.cloudflare.com/client/v4  [broker.api_base]
    --account-id ID              Cloudflare account id (required)             [broker.account_id]
    --api-token-file FILE        Stream API token, from FILE or credential:NAME (required)
                                                                              [broker.api_token_file]
    --device-tokens-file FILE    `<device name> <sha256 hex of its token>` per line (required);
                                 re-read when it changes or on SIGHUP          [broker.device_tokens_file]
    --max-duration-seconds N     maxDurationSeconds of every video (required)  [broker.max_duration_seconds]
    --url-expiry-seconds N       one-time URL lifetime, 120..=21600, default 1800
                                                                              [broker.url_expiry_seconds]

A device token's hash: printf %s \"$TOKEN\" | sha256sum
A bad line of the device tokens file is skipped (the others are served); a file that cannot
be read means no devices. GET /healthz shows both: 200 ok or degraded, 503 when no device can
be served.
EXIT: 0 stopped by SIGTERM/SIGINT, 1 runtime error, 2 usage or configuration error.
";

/// Arguments of `ferry broker`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BrokerArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// Flags that override the file's `[broker]` keys.
    pub overrides: RawBroker,
    /// `--help`.
    pub help: bool,
}

impl BrokerArgs {
    /// The `[broker]` keys: the config file's (if given) with the flags laid over them.
    pub(crate) fn load(&self) -> Result<RawBroker> {
        let file = match &self.config {
            Some(path) => crate::config::load(path)?.broker,
            None => RawBroker::default(),
        };
        Ok(merge(file, self.overrides.clone()))
    }
}

/// Where the usage of `ferry broker` is shown.
const HINT: &str = "ferry broker --help";

/// Parses the arguments after `ferry broker`. `shared` takes the options every command has
/// (`-q`, `-v`) first: true when it took `arg`.
pub(crate) fn parse(
    p: &mut lexopt::Parser,
    shared: &mut dyn FnMut(&lexopt::Arg<'_>) -> bool,
) -> Result<BrokerArgs> {
    let mut a = BrokerArgs::default();
    let o = &mut a.overrides;
    while let Some(arg) = p.next().map_err(usage)? {
        if shared(&arg) {
            continue;
        }
        match arg {
            Long("help") | Short('h') => a.help = true,
            Long("config") => a.config = Some(p.value().map_err(usage)?.into()),
            Long("listen") => o.listen = Some(text(p)?),
            Long("api-base") => o.api_base = Some(text(p)?),
            Long("account-id") => o.account_id = Some(text(p)?),
            Long("api-token-file") => o.api_token_file = Some(text(p)?),
            Long("device-tokens-file") => {
                o.device_tokens_file = Some(p.value().map_err(usage)?.into())
            }
            Long("max-duration-seconds") => {
                o.max_duration_seconds = Some(number(p, "--max-duration-seconds")?)
            }
            Long("url-expiry-seconds") => {
                o.url_expiry_seconds = Some(number(p, "--url-expiry-seconds")?)
            }
            Long(name) => return Err(Error::usage(format!("unknown option --{name}"), HINT)),
            other => return Err(usage(other.unexpected())),
        }
    }
    Ok(a)
}

/// Lays `over` (flags) on top of `base` (the file).
pub(crate) fn merge(base: RawBroker, over: RawBroker) -> RawBroker {
    RawBroker {
        listen: over.listen.or(base.listen),
        path: over.path.or(base.path),
        api_base: over.api_base.or(base.api_base),
        account_id: over.account_id.or(base.account_id),
        api_token_file: over.api_token_file.or(base.api_token_file),
        device_tokens_file: over.device_tokens_file.or(base.device_tokens_file),
        max_duration_seconds: over.max_duration_seconds.or(base.max_duration_seconds),
        url_expiry_seconds: over.url_expiry_seconds.or(base.url_expiry_seconds),
        max_upload_length: over.max_upload_length.or(base.max_upload_length),
        allowed_metadata: over.allowed_metadata.or(base.allowed_metadata),
        allowed_origins: over.allowed_origins.or(base.allowed_origins),
        urls_per_hour: over.urls_per_hour.or(base.urls_per_hour),
        tls_cert: over.tls_cert.or(base.tls_cert),
        tls_key: over.tls_key.or(base.tls_key),
        api_timeout: over.api_timeout.or(base.api_timeout),
        request_timeout: over.request_timeout.or(base.request_timeout),
        head_timeout: over.head_timeout.or(base.head_timeout),
        max_connections: over.max_connections.or(base.max_connections),
        max_connections_per_peer: over
            .max_connections_per_peer
            .or(base.max_connections_per_peer),
        forced_metadata: over.forced_metadata.or(base.forced_metadata),
    }
}

fn number(p: &mut lexopt::Parser, flag: &str) -> Result<u64> {
    let v = text(p)?;
    v.parse()
        .map_err(|_| Error::usage(format!("{flag} {v:?}: not a whole number"), HINT))
}

fn text(p: &mut lexopt::Parser) -> Result<String> {
    p.value()
        .map_err(usage)?
        .into_string()
        .map_err(|v| Error::usage(format!("{} is not valid UTF-8", v.to_string_lossy()), HINT))
}

fn usage(e: lexopt::Error) -> Error {
    Error::usage(e.to_string(), HINT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<BrokerArgs> {
        let mut p = lexopt::Parser::from_args(args.iter().map(std::ffi::OsString::from));
        parse(&mut p, &mut |_| false)
    }

    #[test]
    fn flags_fill_the_broker_keys() {
        let a = parse_str(&[
            "--listen",
            "127.0.0.1:9000",
            "--api-base",
            "http://127.0.0.1:1/client/v4",
            "--account-id",
            "acct",
            "--api-token-file",
            "credential:stream-token",
            "--device-tokens-file",
            "/etc/ferry/devices",
            "--max-duration-seconds",
            "600",
            "--url-expiry-seconds",
            "3600",
        ])
        .unwrap();
        let o = &a.overrides;
        assert_eq!(o.listen.as_deref(), Some("127.0.0.1:9000"));
        assert_eq!(o.account_id.as_deref(), Some("acct"));
        assert_eq!(o.api_token_file.as_deref(), Some("credential:stream-token"));
        assert_eq!(
            o.device_tokens_file,
            Some(PathBuf::from("/etc/ferry/devices"))
        );
        assert_eq!(o.max_duration_seconds, Some(600));
        assert_eq!(o.url_expiry_seconds, Some(3600));
        assert!(!a.help);
    }

    #[test]
    fn bad_flags_are_named() {
        let e = |args: &[&str]| parse_str(args).unwrap_err().to_string();
        assert_eq!(
            e(&["--bogus"]),
            "usage error: unknown option --bogus; see `ferry broker --help`"
        );
        assert!(e(&["--max-duration-seconds", "ten"]).contains("--max-duration-seconds"));
        assert!(e(&["stray"]).contains("stray"));
        assert!(parse_str(&["--help"]).unwrap().help);
    }

    #[test]
    fn the_shared_options_are_left_to_the_caller() {
        let mut p = lexopt::Parser::from_args(["-v", "--listen", "127.0.0.1:1", "-q"]);
        let mut seen = 0;
        let a = parse(&mut p, &mut |arg| {
            let shared = matches!(arg, Short('v' | 'q'));
            seen += usize::from(shared);
            shared
        })
        .unwrap();
        assert_eq!(
            (seen, a.overrides.listen.as_deref()),
            (2, Some("127.0.0.1:1"))
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = RawBroker {
            account_id: Some("file".into()),
            urls_per_hour: Some(5),
            ..RawBroker::default()
        };
        let over = RawBroker {
            account_id: Some("flag".into()),
            ..RawBroker::default()
        };
        let m = merge(file, over);
        assert_eq!(m.account_id.as_deref(), Some("flag"));
        assert_eq!(m.urls_per_hour, Some(5));
    }
}
