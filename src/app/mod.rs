//! The commands, composed from the real parts: what `main` runs and what the demo calls.
//! [`run()`] parses the command line, reads the environment once and maps every result to an
//! exit code; each command lives in its own file.

mod inspect;
mod logging;
mod probe;
mod run;
mod upload;

use std::io::Write;
use std::path::Path;

use crate::cli::{help, Command, CommonArgs, Verbosity, DEFAULT_CONFIG};
use crate::config::{Env, Raw};
use crate::error::Result;
use crate::store::Store;

pub use logging::init_logging;

/// Runs a command line (without the program name) with logging set up by its `-q`/`-v`
/// (unless it was set up already); returns the exit code.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let env = Env::from_process();
    let cli = crate::cli::parse(args);
    let verbosity = cli.as_ref().map_or(Verbosity::Normal, |c| c.verbosity);
    logging::init(verbosity, &env);
    match cli.and_then(|cli| dispatch(cli.command, verbosity, &env)) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            e.exit_code()
        }
    }
}

fn dispatch(cmd: Command, verbosity: Verbosity, env: &Env) -> Result<i32> {
    match cmd {
        Command::Help(page) => {
            print!("{page}");
            Ok(0)
        }
        Command::Bare => {
            eprint!("{}", help::OVERVIEW);
            Ok(2)
        }
        Command::Version => {
            println!("ferry {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        Command::Upload(args) => upload::upload(*args, verbosity, env),
        Command::Run(args) => run::run_daemon(&args, env),
        Command::Status(args, json) => inspect::show_status(&args, json, env),
        Command::Pause(args) => inspect::set_paused(&args, true, env),
        Command::Resume(args) => inspect::set_paused(&args, false, env),
        Command::Limit(args, rate) => inspect::limit(&args, rate.as_deref(), env),
        Command::CheckConfig(args, probe) => inspect::check_config(&args, probe, env),
        #[cfg(feature = "broker")]
        Command::Broker(args) => crate::broker::run(*args, env),
    }
}

/// The config file (given, or the default one when it exists) with the flags laid over it.
fn load(args: &CommonArgs) -> Result<Raw> {
    let file = match &args.config {
        Some(path) => crate::config::load(path)?,
        None if Path::new(DEFAULT_CONFIG).exists() => {
            crate::config::load(Path::new(DEFAULT_CONFIG))?
        }
        None => Raw::default(),
    };
    Ok(file.merge(args.overrides.clone()))
}

/// Closes the store after a command (see [`Store::close`]): a failure to make the last writes
/// durable fails the command, unless it failed already.
pub(crate) fn closed(store: Store, result: Result<i32>) -> Result<i32> {
    let close = store.close();
    let code = result?;
    close?;
    Ok(code)
}

/// Writes a result line to stdout; a closed stdout (`| head`) is not worth a crash.
pub(crate) fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|_| out.flush());
}
