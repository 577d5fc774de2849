//! `ferry`: parse, set up logging, run, map the result to an exit code.

fn main() {
    init_logging();
    std::process::exit(ferry::app::run(std::env::args_os().skip(1)));
}

/// Logs go to stderr; under journald (JOURNAL_STREAM set) without timestamps, which it adds.
fn init_logging() {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if ferry::config::under_journald() {
        b.format_timestamp(None);
    }
    b.format_target(false).init();
}
