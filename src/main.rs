//! `ferry`: set up logging, run the command line, exit with its code.

fn main() {
    ferry::app::init_logging();
    std::process::exit(ferry::app::run(std::env::args_os().skip(1)));
}
