//! One error type, grouped by whose fault it is, each variant naming the thing and what to do.

use std::path::PathBuf;

/// Everything that can stop ferry or fail a file.
#[derive(Debug)]
pub(crate) enum Error {
    /// The command line is wrong (unknown command or option, no files): the user must fix it.
    Usage {
        /// What is wrong.
        problem: String,
        /// Where the right usage is shown, e.g. `ferry upload --help`.
        help: &'static str,
    },
    /// The config file or a setting's value is wrong: the user must fix it.
    Config(String),
    /// A file to upload cannot be used (missing, not a regular file, changed, unreadable).
    Source {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The state directory (the state store) failed.
    State {
        /// The state directory.
        dir: PathBuf,
        /// What failed.
        problem: String,
    },
    /// The server refused the upload in a way retrying cannot change.
    Server {
        /// The URL that answered (query redacted).
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Retries were exhausted (`--max-attempts` / `--give-up-after`).
    GaveUp {
        /// The file.
        path: PathBuf,
        /// Attempts made since the last progress.
        attempts: u32,
        /// The last transient failure.
        last: String,
    },
    /// The network or TLS layer failed in a way retrying cannot change (e.g. an unknown CA).
    Network {
        /// The URL (query redacted).
        url: String,
        /// What failed.
        problem: String,
    },
    /// A pause or shutdown stopped the upload; it resumes on the next run.
    Interrupted,
    /// ferry broke one of its own rules (a thread died, a state it cannot be in): a bug to
    /// report. Not a configuration error, so systemd restarts the service
    /// (`RestartPreventExitStatus=2` is for configuration errors only).
    Internal(String),
    /// A plain I/O error with context.
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage { problem, help } => write!(f, "usage error: {problem}; see `{help}`"),
            Self::Config(m) => write!(f, "configuration error: {m}"),
            Self::Source { path, problem } => write!(f, "{}: {problem}", path.display()),
            Self::State { dir, problem } => {
                write!(f, "state directory {}: {problem}", dir.display())
            }
            Self::Server {
                url,
                status,
                message,
            } => {
                write!(
                    f,
                    "server refused the upload ({status}) at {url}: {message}"
                )
            }
            Self::GaveUp {
                path,
                attempts,
                last,
            } => write!(
                f,
                "{}: gave up after {attempts} attempts without progress; last error: {last}",
                path.display()
            ),
            Self::Network { url, problem } => write!(f, "{url}: {problem}"),
            Self::Io { context, source } => write!(f, "{context}: {source}"),
            Self::Internal(m) => {
                write!(f, "internal error (a bug in ferry, please report it): {m}")
            }
            Self::Interrupted => write!(
                f,
                "interrupted by pause or shutdown; it resumes on the next run"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// Shorthand for a config error.
    pub(crate) fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }

    /// Shorthand for a usage error; `help` is the command that shows the right usage.
    pub(crate) fn usage(problem: impl Into<String>, help: &'static str) -> Self {
        Self::Usage {
            problem: problem.into(),
            help,
        }
    }

    /// Shorthand for a source-file error.
    pub(crate) fn source_file(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Source {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// A converter of I/O errors on `path` (for `map_err`).
    pub(crate) fn from_io(path: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
        move |e| Error::Io {
            context: path.display().to_string(),
            source: e,
        }
    }

    /// The process exit code for this error when it ends a command: 2 for a usage or
    /// configuration error (which a restart cannot fix), 1 for everything else.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Self::Usage { .. } | Self::Config(_) => 2,
            _ => 1,
        }
    }
}

/// ferry's result type.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configuration_errors_stop_systemd_from_restarting() {
        assert_eq!(Error::config("x").exit_code(), 2);
        let usage = Error::usage("no files given", "ferry upload --help");
        assert_eq!(usage.exit_code(), 2);
        assert_eq!(
            usage.to_string(),
            "usage error: no files given; see `ferry upload --help`"
        );
        let internal = Error::Internal("upload threads ended unexpectedly".into());
        assert_eq!(internal.exit_code(), 1);
        assert!(internal.to_string().contains("a bug in ferry"));
    }
}
