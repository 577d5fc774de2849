//! Command-line parsing only: turns arguments into a [`Command`] whose settings are a
//! [`config::Raw`] of overrides, merged over the config file by the caller.

use std::path::PathBuf;

use lexopt::prelude::*;

use crate::config::Raw;
use crate::error::{Error, Result};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `ferry upload [OPTIONS] FILE...`
    Upload(Box<UploadArgs>),
    /// `ferry help` / `--help`.
    Help,
    /// `ferry --version`.
    Version,
}

/// Arguments of `ferry upload`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadArgs {
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
pub const USAGE: &str = "\
ferry: resumable tus uploads that survive cut links, crashes and restarts

USAGE:
    ferry upload [OPTIONS] FILE...     upload files (resumes where the server left off)
    ferry upload --cancel FILE...      terminate the files' uploads and forget them
    ferry help | --version

OPTIONS (each overrides the same key of the --config file):
    --config FILE            TOML config file (see README)
    --endpoint URL           tus creation endpoint                 [server.endpoint]
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
    --max-attempts N         give up after N failed attempts in a row (0 = never)
    --give-up-after DUR      give up after DUR without progress (0 = never)

OUTPUT: one line per finished file on stdout: <path><TAB><upload URL>; progress on stderr.
EXIT: 0 all files complete, 1 some file failed, 2 usage or configuration error.
";

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command> {
    let mut p = lexopt::Parser::from_args(args);
    match p.next().map_err(usage)? {
        Some(Value(cmd)) if cmd == "upload" => {
            parse_upload(&mut p).map(|a| Command::Upload(Box::new(a)))
        }
        Some(Value(cmd)) if cmd == "help" => Ok(Command::Help),
        Some(Long("help") | Short('h')) => Ok(Command::Help),
        Some(Long("version") | Short('V')) => Ok(Command::Version),
        Some(Value(cmd)) => Err(Error::config(format!(
            "unknown command {:?}; try `ferry help` (this version has `upload` only)",
            cmd.to_string_lossy()
        ))),
        Some(other) => Err(usage(other.unexpected())),
        None => Ok(Command::Help),
    }
}

fn parse_upload(p: &mut lexopt::Parser) -> Result<UploadArgs> {
    let mut a = UploadArgs::default();
    let o = &mut a.overrides;
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Long("config") => a.config = Some(p.value().map_err(usage)?.into()),
            Long("endpoint") => o.server.endpoint = Some(text(p)?),
            Long("state-dir") => o.state_dir = Some(p.value().map_err(usage)?.into()),
            Long("chunk-size") => o.upload.chunk_size = Some(text(p)?),
            Long("header") => {
                let v = text(p)?;
                let (n, val) = v
                    .split_once(':')
                    .ok_or_else(|| Error::config(format!("--header {v:?}: use 'Name: value'")))?;
                o.server
                    .headers
                    .insert(n.trim().to_string(), val.trim().to_string());
            }
            Long("header-file") => {
                let v = text(p)?;
                let (n, path) = v.split_once('=').ok_or_else(|| {
                    Error::config(format!("--header-file {v:?}: use Name=/path/to/file"))
                })?;
                o.server
                    .header_files
                    .insert(n.trim().to_string(), path.to_string());
            }
            Long("metadata") => {
                let v = text(p)?;
                let (k, val) = v
                    .split_once('=')
                    .ok_or_else(|| Error::config(format!("--metadata {v:?}: use key=value")))?;
                o.upload.metadata.insert(k.to_string(), val.to_string());
            }
            Long("no-default-metadata") => o.upload.default_metadata = Some(false),
            Long("checksum") => o.upload.checksum = Some(text(p)?),
            Long("creation-with-upload") => o.upload.creation_with_upload = Some(true),
            Long("ca-file") => o.server.ca_file = Some(p.value().map_err(usage)?.into()),
            Long("client-cert") => o.server.client_cert = Some(p.value().map_err(usage)?.into()),
            Long("client-key") => o.server.client_key = Some(p.value().map_err(usage)?.into()),
            Long("auth-cross-origin") => o.server.auth_cross_origin = Some(true),
            Long("connect-timeout") => o.server.connect_timeout = Some(text(p)?),
            Long("idle-timeout") => o.server.idle_timeout = Some(text(p)?),
            Long("max-attempts") => {
                let v = text(p)?;
                o.retry.max_attempts =
                    Some(v.parse().map_err(|_| {
                        Error::config(format!("--max-attempts {v:?}: not a number"))
                    })?);
            }
            Long("give-up-after") => o.retry.give_up_after = Some(text(p)?),
            Long("cancel") => a.cancel = true,
            Value(file) => a.files.push(file.into()),
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
    }
}
