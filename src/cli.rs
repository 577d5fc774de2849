//! Command-line parsing only: turns arguments into a [`Command`] whose settings are a
//! [`crate::config::Raw`] of overrides, merged over the config file by the caller.

use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::Raw;
use crate::error::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `ferry upload [OPTIONS] FILE...`
    Upload(Box<UploadArgs>),
    /// `ferry run [OPTIONS]`: the spool daemon.
    Run(Box<CommonArgs>),
    /// `ferry status [--json]`.
    Status(Box<CommonArgs>, bool),
    /// `ferry pause`.
    Pause(Box<CommonArgs>),
    /// `ferry resume`.
    Resume(Box<CommonArgs>),
    /// `ferry check-config`.
    CheckConfig(Box<CommonArgs>),
    /// `ferry broker [OPTIONS]`: the one-time upload URL service.
    #[cfg(feature = "broker")]
    Broker(Box<crate::broker::BrokerArgs>),
    /// `ferry help` / `--help`.
    Help,
    /// `ferry --version`.
    Version,
}

/// The config file and flag overrides every command takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CommonArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// Flags that override the config file.
    pub overrides: Raw,
}

/// The config file `ferry run` and friends read when none is given.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/ferry/ferry.toml";

/// Arguments of `ferry upload`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UploadArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// Flags that override the config file.
    pub overrides: Raw,
    /// `--cancel`: terminate the uploads of the files instead.
    pub cancel: bool,
    /// Files to upload.
    pub files: Vec<PathBuf>,
}

/// The help text.
pub(crate) const USAGE: &str = "\
ferry: resumable tus uploads that survive cut links, crashes and restarts

USAGE:
    ferry upload [OPTIONS] FILE...     upload files (resumes where the server left off)
    ferry upload --cancel FILE...      terminate the files' uploads and forget them
    ferry run [OPTIONS]                the spool daemon (config: /etc/ferry/ferry.toml)
    ferry status [--json] [OPTIONS]    what the daemon is doing
    ferry pause | resume [OPTIONS]     stop / restart uploading (survives restarts)
    ferry check-config [OPTIONS]       validate the configuration
    ferry broker [OPTIONS]             one-time Cloudflare Stream upload URLs for devices
                                       (`ferry broker --help`; not in device builds)
    ferry help | --version

OPTIONS (each overrides the same key of the --config file):
    --config FILE            TOML config file (see README)
    --endpoint URL           tus creation endpoint, or the broker  [server.endpoint]
    --target KIND            tus | cloudflare-stream | url-broker  [server.target]
    --stream-account-id ID   Cloudflare account (cloudflare-stream) [stream.account_id]
    --stream-api-token-file PATH   API token file or credential:NAME [stream.api_token_file]
    --state-dir DIR          where upload state is kept            [state_dir]
    --chunk-size SIZE        bytes per PATCH, e.g. 6MiB            [upload.chunk_size]
    --header 'Name: value'   extra request header (repeatable)     [server.headers]
    --header-file Name=PATH  header whose value is read from PATH or credential:NAME
                             (for secrets; repeatable)             [server.header_files]
    --metadata key=value     extra Upload-Metadata (repeatable)    [upload.metadata]
    --no-default-metadata    do not send filename and filetype     [upload.default_metadata]
    --checksum MODE          auto | off | sha1 | sha256            [upload.checksum]
    --creation-with-upload   send small files with the POST        [upload.creation_with_upload]
    --ca-file PATH           trust this CA (PEM)                   [server.ca_file]
    --client-cert PATH       client certificate (PEM)              [server.client_cert]
    --client-key PATH        client key (PEM)                      [server.client_key]
    --auth-cross-origin      send credentials to other origins     [server.auth_cross_origin]
    --connect-timeout DUR    e.g. 15s                              [server.connect_timeout]
    --idle-timeout DUR       stalled-link detection, e.g. 30s      [server.idle_timeout]
    --response-timeout DUR   limit for an answer, e.g. 60s         [server.response_timeout]
    --min-send-rate RATE     slowest body send, bytes/s, e.g. 1KiB [server.min_send_rate]
    --max-attempts N         give up after N failed attempts in a row (0 = never)
    --give-up-after DUR      give up after DUR without progress (0 = never)

DAEMON OPTIONS (run, status, pause, resume, check-config; also --config, --endpoint,
--state-dir and the options above):
    --spool DIR              the spool directory                   [spool.dir]
    --after-upload ACTION    delete | keep | move:DIR              [spool.after_upload]
    --failed-dir DIR         where permanently failed files go     [spool.failed_dir]

OUTPUT: one line per finished file on stdout: <path><TAB><upload URL>[<TAB><media id>] (the
third field when the server named the video: Cloudflare Stream's stream-media-id); progress
on stderr.
EXIT: 0 all files complete (run: stopped by a signal), 1 some file failed or a runtime
error, 2 usage or configuration error (systemd does not restart ferry for it).
";

/// Parses `args` (without the program name).
pub(crate) fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command> {
    let mut p = lexopt::Parser::from_args(args);
    match p.next().map_err(usage)? {
        Some(Value(cmd)) if cmd == "upload" => {
            parse_upload(&mut p).map(|a| Command::Upload(Box::new(a)))
        }
        Some(Value(cmd)) if cmd == "help" => Ok(Command::Help),
        Some(Value(cmd)) if cmd == "run" => {
            parse_common(&mut p, "run").map(|(c, _)| Command::Run(Box::new(c)))
        }
        Some(Value(cmd)) if cmd == "status" => {
            parse_common(&mut p, "status").map(|(c, j)| Command::Status(Box::new(c), j))
        }
        Some(Value(cmd)) if cmd == "pause" => {
            parse_common(&mut p, "pause").map(|(c, _)| Command::Pause(Box::new(c)))
        }
        Some(Value(cmd)) if cmd == "resume" => {
            parse_common(&mut p, "resume").map(|(c, _)| Command::Resume(Box::new(c)))
        }
        Some(Value(cmd)) if cmd == "check-config" => {
            parse_common(&mut p, "check-config").map(|(c, _)| Command::CheckConfig(Box::new(c)))
        }
        Some(Value(cmd)) if cmd == "broker" => broker(&mut p),
        Some(Long("help") | Short('h')) => Ok(Command::Help),
        Some(Long("version") | Short('V')) => Ok(Command::Version),
        Some(Value(cmd)) => Err(Error::config(format!(
            "unknown command {:?}; try `ferry help`",
            cmd.to_string_lossy()
        ))),
        Some(other) => Err(usage(other.unexpected())),
        None => Ok(Command::Help),
    }
}

#[cfg(feature = "broker")]
fn broker(p: &mut lexopt::Parser) -> Result<Command> {
    crate::broker::args::parse(p).map(|a| Command::Broker(Box::new(a)))
}

#[cfg(not(feature = "broker"))]
fn broker(_: &mut lexopt::Parser) -> Result<Command> {
    Err(Error::config(
        "this ferry was built without `ferry broker` (cargo feature \"broker\")",
    ))
}

fn parse_upload(p: &mut lexopt::Parser) -> Result<UploadArgs> {
    let mut a = UploadArgs::default();
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Long("cancel") => a.cancel = true,
            Value(file) => a.files.push(file.into()),
            Long(name) => {
                let name = name.to_string();
                if !setting(p, &name, &mut a.config, &mut a.overrides)? {
                    return Err(Error::config(format!(
                        "unknown option --{name}; try `ferry help`"
                    )));
                }
            }
            other => return Err(usage(other.unexpected())),
        }
    }
    if a.files.is_empty() {
        return Err(Error::config(
            "ferry upload: no files given; try `ferry help`",
        ));
    }
    Ok(a)
}

/// Options of the daemon commands; returns the args and whether `--json` was given.
fn parse_common(p: &mut lexopt::Parser, cmd: &str) -> Result<(CommonArgs, bool)> {
    let mut a = CommonArgs::default();
    let mut json = false;
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Long("json") if cmd == "status" => json = true,
            Long("spool") => a.overrides.spool.dir = Some(p.value().map_err(usage)?.into()),
            Long("after-upload") => a.overrides.spool.after_upload = Some(text(p)?),
            Long("failed-dir") => {
                a.overrides.spool.failed_dir = Some(p.value().map_err(usage)?.into())
            }
            Long(name) => {
                let name = name.to_string();
                if !setting(p, &name, &mut a.config, &mut a.overrides)? {
                    return Err(Error::config(format!(
                        "unknown option --{name}; try `ferry help`"
                    )));
                }
            }
            other => return Err(usage(other.unexpected())),
        }
    }
    Ok((a, json))
}

/// Applies one of the options shared by every command; false when `arg` is not one.
fn setting(
    p: &mut lexopt::Parser,
    name: &str,
    config: &mut Option<PathBuf>,
    o: &mut Raw,
) -> Result<bool> {
    match name {
        "config" => *config = Some(p.value().map_err(usage)?.into()),
        "endpoint" => o.server.endpoint = Some(text(p)?),
        "target" => o.server.target = Some(text(p)?),
        "stream-account-id" => o.stream.account_id = Some(text(p)?),
        "stream-api-token-file" => o.stream.api_token_file = Some(text(p)?),
        "state-dir" => o.state_dir = Some(p.value().map_err(usage)?.into()),
        "chunk-size" => o.upload.chunk_size = Some(text(p)?),
        "header" => {
            let v = text(p)?;
            let (n, val) = v
                .split_once(':')
                .ok_or_else(|| Error::config(format!("--header {v:?}: use 'Name: value'")))?;
            o.server
                .headers
                .insert(n.trim().to_string(), val.trim().to_string());
        }
        "header-file" => {
            let v = text(p)?;
            let (n, path) = v.split_once('=').ok_or_else(|| {
                Error::config(format!("--header-file {v:?}: use Name=/path/to/file"))
            })?;
            o.server
                .header_files
                .insert(n.trim().to_string(), path.to_string());
        }
        "metadata" => {
            let v = text(p)?;
            let (k, val) = v
                .split_once('=')
                .ok_or_else(|| Error::config(format!("--metadata {v:?}: use key=value")))?;
            o.upload.metadata.insert(k.to_string(), val.to_string());
        }
        "no-default-metadata" => o.upload.default_metadata = Some(false),
        "checksum" => o.upload.checksum = Some(text(p)?),
        "creation-with-upload" => o.upload.creation_with_upload = Some(true),
        "ca-file" => o.server.ca_file = Some(p.value().map_err(usage)?.into()),
        "client-cert" => o.server.client_cert = Some(p.value().map_err(usage)?.into()),
        "client-key" => o.server.client_key = Some(p.value().map_err(usage)?.into()),
        "auth-cross-origin" => o.server.auth_cross_origin = Some(true),
        "connect-timeout" => o.server.connect_timeout = Some(text(p)?),
        "idle-timeout" => o.server.idle_timeout = Some(text(p)?),
        "response-timeout" => o.server.response_timeout = Some(text(p)?),
        "min-send-rate" => o.server.min_send_rate = Some(text(p)?),
        "max-attempts" => {
            let v = text(p)?;
            o.retry.max_attempts = Some(
                v.parse()
                    .map_err(|_| Error::config(format!("--max-attempts {v:?}: not a number")))?,
            );
        }
        "give-up-after" => o.retry.give_up_after = Some(text(p)?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn text(p: &mut lexopt::Parser) -> Result<String> {
    p.value()
        .map_err(usage)?
        .into_string()
        .map_err(|v| Error::config(format!("{:?} is not valid UTF-8", v)))
}

fn usage(e: lexopt::Error) -> Error {
    Error::config(format!("{e}; try `ferry help`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command> {
        parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn parses_the_issue_example() {
        let Command::Upload(a) = parse_str(&[
            "upload",
            "--endpoint",
            "http://127.0.0.1:1080/files/",
            "--state-dir",
            "./state",
            "--chunk-size",
            "6MiB",
            "--header",
            "X-Api-Key: abc",
            "--header-file",
            "Authorization=/run/secret",
            "--metadata",
            "camera=north",
            "--max-attempts",
            "3",
            "a.mp4",
            "b.mp4",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.files, [PathBuf::from("a.mp4"), PathBuf::from("b.mp4")]);
        let o = &a.overrides;
        assert_eq!(
            o.server.endpoint.as_deref(),
            Some("http://127.0.0.1:1080/files/")
        );
        assert_eq!(o.upload.chunk_size.as_deref(), Some("6MiB"));
        assert_eq!(
            o.server.headers.get("X-Api-Key").map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            o.server
                .header_files
                .get("Authorization")
                .map(String::as_str),
            Some("/run/secret")
        );
        assert_eq!(
            o.upload.metadata.get("camera").map(String::as_str),
            Some("north")
        );
        assert_eq!(o.retry.max_attempts, Some(3));
        assert!(!a.cancel);
    }

    #[test]
    fn rejects_bad_usage_with_hints() {
        let e = |args: &[&str]| parse_str(args).unwrap_err().to_string();
        assert!(e(&["upload"]).contains("no files"));
        assert!(e(&["upload", "--header", "novalue", "f"]).contains("Name: value"));
        assert!(e(&["upload", "--bogus", "f"]).contains("--bogus"));
        assert!(e(&["frobnicate"]).contains("unknown command"));
        assert!(e(&["upload", "--max-attempts", "x", "f"]).contains("not a number"));
        assert_eq!(parse_str(&[]).unwrap(), Command::Help);
        assert_eq!(parse_str(&["--version"]).unwrap(), Command::Version);
        assert!(e(&["status", "--bogus"]).contains("--bogus"));
        assert!(
            e(&["run", "--json"]).contains("--json"),
            "--json is for status only"
        );
    }

    #[test]
    fn parses_daemon_commands() {
        let Command::Run(a) = parse_str(&[
            "run",
            "--spool",
            "/s",
            "--endpoint",
            "http://h/f/",
            "--after-upload",
            "move:/done",
            "--failed-dir",
            "/bad",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(a.overrides.spool.dir, Some(PathBuf::from("/s")));
        assert_eq!(
            a.overrides.spool.after_upload.as_deref(),
            Some("move:/done")
        );
        assert_eq!(a.overrides.spool.failed_dir, Some(PathBuf::from("/bad")));
        assert_eq!(a.overrides.server.endpoint.as_deref(), Some("http://h/f/"));
        assert!(matches!(
            parse_str(&["status", "--json", "--state-dir", "/st"]).unwrap(),
            Command::Status(_, true)
        ));
        assert!(
            matches!(parse_str(&["pause", "--config", "/c"]).unwrap(), Command::Pause(c) if c.config == Some(PathBuf::from("/c")))
        );
        assert!(matches!(
            parse_str(&["resume"]).unwrap(),
            Command::Resume(_)
        ));
        assert!(matches!(
            parse_str(&["check-config"]).unwrap(),
            Command::CheckConfig(_)
        ));
    }
}
