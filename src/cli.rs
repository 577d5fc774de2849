//! Command-line parsing only: turns arguments into a [`Command`] whose settings are a
//! [`crate::config::Raw`] of overrides, merged over the config file by the caller.
//!
//! Key idea: a mistake in the command line is a usage error that points at the help page of
//! the command it was made in (`see \`ferry upload --help\``), never a configuration error;
//! `-h`, `-q` and `-v` mean the same on every command. The help pages are in [`help`].

pub(crate) mod help;

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
    /// `ferry limit [RATE|off]`: set, remove or (`None`) show the runtime rate limit.
    Limit(Box<CommonArgs>, Option<String>),
    /// `ferry check-config [--probe]`.
    CheckConfig(Box<CommonArgs>, bool),
    /// `ferry broker [OPTIONS]`: the one-time upload URL service.
    #[cfg(feature = "broker")]
    Broker(Box<crate::broker::BrokerArgs>),
    /// `ferry help`, `ferry --help`, `ferry COMMAND --help`: this page, on stdout.
    Help(&'static str),
    /// `ferry` alone: the overview on stderr, exit 2.
    Bare,
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
    /// `--force`: with `--cancel`, terminate complete uploads too.
    pub force: bool,
    /// Files to upload.
    pub files: Vec<PathBuf>,
}

/// How much ferry says on stderr: `-q`, nothing, `-v`, `-vv`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Verbosity {
    /// `-q`: errors only, no progress line.
    Quiet,
    /// The default: ferry's info lines, other libraries' warnings.
    #[default]
    Normal,
    /// `-v`: ferry's debug lines.
    Debug,
    /// `-vv`: ferry's trace lines.
    Trace,
}

impl Verbosity {
    fn louder(self) -> Self {
        match self {
            Self::Quiet | Self::Normal => Self::Debug,
            Self::Debug | Self::Trace => Self::Trace,
        }
    }
}

/// A parsed command line: the command and how much to say while running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cli {
    /// What to do.
    pub command: Command,
    /// `-q` / `-v`.
    pub verbosity: Verbosity,
}

/// The commands, for `ferry uplaod` → "did you mean \"upload\"?".
const COMMANDS: [&str; 9] = [
    "upload",
    "run",
    "status",
    "pause",
    "resume",
    "limit",
    "check-config",
    "broker",
    "help",
];

/// Parses `args` (without the program name).
pub(crate) fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli> {
    let mut p = lexopt::Parser::from_args(args);
    let mut verbosity = Verbosity::Normal;
    loop {
        let arg = p.next().map_err(|e| usage(e, OVERVIEW_HINT))?;
        if let Some(v) = arg.as_ref().and_then(|a| output_option(a, verbosity)) {
            verbosity = v;
            continue;
        }
        let command = match arg {
            Some(Value(cmd)) => command(&mut p, &cmd.to_string_lossy(), &mut verbosity)?,
            Some(Long("help") | Short('h')) => Command::Help(help::OVERVIEW),
            Some(Long("version") | Short('V')) => Command::Version,
            Some(other) => return Err(usage(other.unexpected(), OVERVIEW_HINT)),
            None => Command::Bare,
        };
        return Ok(Cli { command, verbosity });
    }
}

/// Where the overview is shown.
const OVERVIEW_HINT: &str = "ferry --help";

/// The verbosity after `arg` when it is `-q` or `-v`.
fn output_option(arg: &lexopt::Arg<'_>, now: Verbosity) -> Option<Verbosity> {
    match arg {
        Short('q') | Long("quiet") => Some(Verbosity::Quiet),
        Short('v') | Long("verbose") => Some(now.louder()),
        _ => None,
    }
}

fn command(p: &mut lexopt::Parser, name: &str, verbosity: &mut Verbosity) -> Result<Command> {
    match name {
        "upload" => Ok(
            parse_upload(p, verbosity)?.map_or(Command::Help(help::UPLOAD), |a| {
                Command::Upload(Box::new(a))
            }),
        ),
        "help" => Ok(Command::Help(help::OVERVIEW)),
        "broker" => broker(p, verbosity),
        _ => {
            let Some((page, hint)) = daemon_help(name) else {
                return Err(unknown_command(name));
            };
            let Some((a, flag, value)) = parse_common(p, name, hint, verbosity)? else {
                return Ok(Command::Help(page));
            };
            let a = Box::new(a);
            Ok(match name {
                "limit" => Command::Limit(a, value),
                "run" => Command::Run(a),
                "status" => Command::Status(a, flag),
                "pause" => Command::Pause(a),
                "resume" => Command::Resume(a),
                _ => Command::CheckConfig(a, flag),
            })
        }
    }
}

/// The help page of a command that takes the daemon's options, and how it is asked for.
fn daemon_help(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "run" => (help::RUN, "ferry run --help"),
        "status" => (help::STATUS, "ferry status --help"),
        "pause" => (help::PAUSE, "ferry pause --help"),
        "resume" => (help::RESUME, "ferry resume --help"),
        "limit" => (help::LIMIT, "ferry limit --help"),
        "check-config" => (help::CHECK_CONFIG, "ferry check-config --help"),
        _ => return None,
    })
}

/// `unknown command "uplaod" (did you mean "upload"?)`.
fn unknown_command(name: &str) -> Error {
    let hint =
        closest(name, &COMMANDS).map_or(String::new(), |c| format!(" (did you mean \"{c}\"?)"));
    Error::usage(format!("unknown command \"{name}\"{hint}"), OVERVIEW_HINT)
}

/// The candidate nearest to `word` by edit distance, when it is near enough to be a typo: at
/// most 2 edits, and fewer than half of the word's letters.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = 2.min(word.chars().count().saturating_sub(1) / 2).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, counting an exchange of two neighbours as one edit (the usual typo).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j]: the distance between the first i chars of a and the first j of b.
    let mut rows = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    rows[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(feature = "broker")]
fn broker(p: &mut lexopt::Parser, verbosity: &mut Verbosity) -> Result<Command> {
    let a = crate::broker::args::parse(p, &mut |arg| match output_option(arg, *verbosity) {
        Some(v) => {
            *verbosity = v;
            true
        }
        None => false,
    })?;
    Ok(if a.help {
        Command::Help(crate::broker::args::USAGE)
    } else {
        Command::Broker(Box::new(a))
    })
}

#[cfg(not(feature = "broker"))]
fn broker(_: &mut lexopt::Parser, _: &mut Verbosity) -> Result<Command> {
    Err(Error::config(
        "this ferry was built without `ferry broker` (cargo feature \"broker\")",
    ))
}

/// Where `ferry upload`'s usage is shown.
const UPLOAD_HINT: &str = "ferry upload --help";

/// The arguments of `ferry upload`; `None` for `--help`.
fn parse_upload(p: &mut lexopt::Parser, verbosity: &mut Verbosity) -> Result<Option<UploadArgs>> {
    let mut a = UploadArgs::default();
    let hint = UPLOAD_HINT;
    while let Some(arg) = p.next().map_err(|e| usage(e, hint))? {
        if let Some(v) = output_option(&arg, *verbosity) {
            *verbosity = v;
            continue;
        }
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("cancel") => a.cancel = true,
            Long("force") => a.force = true,
            Value(file) => a.files.push(file.into()),
            Long(name) => {
                let name = name.to_string();
                if !setting(p, &name, hint, &mut a.config, &mut a.overrides)? {
                    return Err(unknown_option(&name, hint));
                }
            }
            other => return Err(usage(other.unexpected(), hint)),
        }
    }
    if a.files.is_empty() {
        return Err(Error::usage("no files given", hint));
    }
    if a.force && !a.cancel {
        return Err(Error::usage("--force goes with --cancel only", hint));
    }
    Ok(Some(a))
}

/// Options of the daemon commands: the args and whether the command's own flag was given
/// (`status --json`, `check-config --probe`); `None` for `--help`. `hint` shows the command's
/// usage.
fn parse_common(
    p: &mut lexopt::Parser,
    cmd: &str,
    hint: &'static str,
    verbosity: &mut Verbosity,
) -> Result<Option<(CommonArgs, bool, Option<String>)>> {
    let mut a = CommonArgs::default();
    let mut flag = false;
    let mut value = None;
    while let Some(arg) = p.next().map_err(|e| usage(e, hint))? {
        if let Some(v) = output_option(&arg, *verbosity) {
            *verbosity = v;
            continue;
        }
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("json") if cmd == "status" => flag = true,
            Long("probe") if cmd == "check-config" => flag = true,
            Long("spool") => a.overrides.spool.dir = Some(path(p, hint)?),
            Long("after-upload") => a.overrides.spool.after_upload = Some(text(p, hint)?),
            Long("failed-dir") => a.overrides.spool.failed_dir = Some(path(p, hint)?),
            Long(name) => {
                let name = name.to_string();
                if !setting(p, &name, hint, &mut a.config, &mut a.overrides)? {
                    return Err(unknown_option(&name, hint));
                }
            }
            Value(v) if cmd == "limit" && value.is_none() => {
                value = Some(
                    v.into_string()
                        .map_err(|_| Error::usage("the rate is not UTF-8", hint))?,
                );
            }
            other => return Err(usage(other.unexpected(), hint)),
        }
    }
    Ok(Some((a, flag, value)))
}

fn unknown_option(name: &str, hint: &'static str) -> Error {
    Error::usage(format!("unknown option --{name}"), hint)
}

/// Applies one of the options shared by every command; false when `arg` is not one.
fn setting(
    p: &mut lexopt::Parser,
    name: &str,
    hint: &'static str,
    config: &mut Option<PathBuf>,
    o: &mut Raw,
) -> Result<bool> {
    match name {
        "config" => *config = Some(path(p, hint)?),
        "endpoint" => o.server.endpoint = Some(text(p, hint)?),
        "target" => o.server.target = Some(text(p, hint)?),
        "stream-account-id" => o.stream.account_id = Some(text(p, hint)?),
        "stream-api-token-file" => o.stream.api_token_file = Some(text(p, hint)?),
        "state-dir" => o.state_dir = Some(path(p, hint)?),
        "chunk-size" => o.upload.chunk_size = Some(text(p, hint)?),
        "rate-limit" => o.upload.rate_limit = Some(text(p, hint)?),
        "header" => {
            let v = text(p, hint)?;
            let (n, val) = v
                .split_once(':')
                .ok_or_else(|| Error::usage(format!("--header {v:?}: use 'Name: value'"), hint))?;
            o.server
                .headers
                .insert(n.trim().to_string(), val.trim().to_string());
        }
        "header-file" => {
            let v = text(p, hint)?;
            let (n, path) = v.split_once('=').ok_or_else(|| {
                Error::usage(format!("--header-file {v:?}: use Name=/path/to/file"), hint)
            })?;
            o.server
                .header_files
                .insert(n.trim().to_string(), path.to_string());
        }
        "metadata" => {
            let v = text(p, hint)?;
            let (k, val) = v
                .split_once('=')
                .ok_or_else(|| Error::usage(format!("--metadata {v:?}: use key=value"), hint))?;
            o.upload.metadata.insert(k.to_string(), val.to_string());
        }
        "no-default-metadata" => o.upload.default_metadata = Some(false),
        "checksum" => o.upload.checksum = Some(text(p, hint)?),
        "creation-with-upload" => o.upload.creation_with_upload = Some(true),
        "ca-file" => o.server.ca_file = Some(path(p, hint)?),
        "client-cert" => o.server.client_cert = Some(path(p, hint)?),
        "client-key" => o.server.client_key = Some(path(p, hint)?),
        "cipher-order" => o.server.cipher_order = Some(text(p, hint)?),
        "auth-cross-origin" => o.server.auth_cross_origin = Some(true),
        "connect-timeout" => o.server.connect_timeout = Some(text(p, hint)?),
        "idle-timeout" => o.server.idle_timeout = Some(text(p, hint)?),
        "response-timeout" => o.server.response_timeout = Some(text(p, hint)?),
        "min-send-rate" => o.server.min_send_rate = Some(text(p, hint)?),
        "max-attempts" => {
            let v = text(p, hint)?;
            o.retry.max_attempts = Some(v.parse().map_err(|_| {
                Error::usage(format!("--max-attempts {v:?}: not a whole number"), hint)
            })?);
        }
        "give-up-after" => o.retry.give_up_after = Some(text(p, hint)?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn text(p: &mut lexopt::Parser, hint: &'static str) -> Result<String> {
    p.value()
        .map_err(|e| usage(e, hint))?
        .into_string()
        .map_err(|v| Error::usage(format!("{} is not valid UTF-8", v.to_string_lossy()), hint))
}

fn path(p: &mut lexopt::Parser, hint: &'static str) -> Result<PathBuf> {
    p.value().map(PathBuf::from).map_err(|e| usage(e, hint))
}

/// A usage error from the parser ("missing argument for option '--endpoint'").
fn usage(e: lexopt::Error, hint: &'static str) -> Error {
    Error::usage(e.to_string(), hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command> {
        parse(args.iter().map(std::ffi::OsString::from)).map(|c| c.command)
    }

    fn verbosity(args: &[&str]) -> Verbosity {
        parse(args.iter().map(std::ffi::OsString::from))
            .unwrap()
            .verbosity
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
        assert_eq!(
            e(&["upload"]),
            "usage error: no files given; see `ferry upload --help`"
        );
        assert!(e(&["upload", "--header", "novalue", "f"]).contains("Name: value"));
        assert_eq!(
            e(&["upload", "--bogus", "f"]),
            "usage error: unknown option --bogus; see `ferry upload --help`"
        );
        assert_eq!(
            e(&["frobnicate"]),
            "usage error: unknown command \"frobnicate\"; see `ferry --help`"
        );
        assert!(e(&["upload", "--max-attempts", "x", "f"]).contains("not a whole number"));
        assert!(e(&["upload", "-x", "f"]).contains("'-x'"));
        assert_eq!(parse_str(&[]).unwrap(), Command::Bare);
        assert_eq!(parse_str(&["--version"]).unwrap(), Command::Version);
        assert_eq!(
            e(&["status", "--bogus"]),
            "usage error: unknown option --bogus; see `ferry status --help`"
        );
        assert!(
            e(&["run", "--json"]).contains("--json"),
            "--json is for status only"
        );
        assert!(e(&["pause", "--state-dir"]).ends_with("see `ferry pause --help`"));
        for bad in [&["upload", "f"][..], &["run"], &["status"]] {
            let err = parse_str(&[&["--bogus"], bad].concat()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
        }
    }

    #[test]
    fn a_mistyped_command_gets_the_closest_one() {
        let e = |cmd: &str| parse_str(&[cmd]).unwrap_err().to_string();
        assert_eq!(
            e("uplaod"),
            "usage error: unknown command \"uplaod\" (did you mean \"upload\"?); see `ferry --help`"
        );
        assert!(e("stauts").contains("did you mean \"status\""));
        assert!(e("check-conifg").contains("did you mean \"check-config\""));
        assert!(e("resum").contains("did you mean \"resume\""));
        assert!(e("rn").contains("did you mean \"run\""));
        assert!(!e("x").contains("did you mean"), "one letter is no typo");
        assert!(!e("download").contains("did you mean"));
        assert_eq!(edit_distance("uplaod", "upload"), 1);
        assert_eq!(edit_distance("", "run"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn every_command_has_help() {
        for (cmd, page) in [
            ("upload", help::UPLOAD),
            ("run", help::RUN),
            ("status", help::STATUS),
            ("pause", help::PAUSE),
            ("resume", help::RESUME),
            ("check-config", help::CHECK_CONFIG),
        ] {
            for flag in ["--help", "-h"] {
                assert_eq!(parse_str(&[cmd, flag]).unwrap(), Command::Help(page));
            }
            // Help wins over what would be an error without it.
            assert_eq!(
                parse_str(&[cmd, "--state-dir", "/s", "-h"]).unwrap(),
                Command::Help(page)
            );
            assert!(page.contains("EXAMPLE:") && page.contains("EXIT:"), "{cmd}");
        }
        for args in [&["--help"][..], &["-h"], &["help"]] {
            assert_eq!(parse_str(args).unwrap(), Command::Help(help::OVERVIEW));
        }
    }

    #[test]
    fn quiet_and_verbose_anywhere() {
        #[cfg(feature = "broker")]
        assert_eq!(
            verbosity(&["broker", "-v", "--listen", "x"]),
            Verbosity::Debug
        );
        assert_eq!(verbosity(&["upload", "f"]), Verbosity::Normal);
        assert_eq!(verbosity(&["-q", "upload", "f"]), Verbosity::Quiet);
        assert_eq!(verbosity(&["upload", "--quiet", "f"]), Verbosity::Quiet);
        assert_eq!(verbosity(&["run", "-v"]), Verbosity::Debug);
        assert_eq!(verbosity(&["-v", "status", "--verbose"]), Verbosity::Trace);
        assert_eq!(verbosity(&["pause", "-vv"]), Verbosity::Trace);
        assert_eq!(verbosity(&["check-config", "-vvv"]), Verbosity::Trace);
        assert_eq!(verbosity(&["resume", "-q", "-v"]), Verbosity::Debug);
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
            Command::CheckConfig(_, false)
        ));
        assert!(matches!(
            parse_str(&["check-config", "--probe"]).unwrap(),
            Command::CheckConfig(_, true)
        ));
        assert!(
            parse_str(&["status", "--probe"]).is_err(),
            "--probe is check-config's"
        );
    }
}
