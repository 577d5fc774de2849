//! `ferry`: run the command line (which sets up logging), exit with its code.

fn main() {
    std::process::exit(ferry::app::run(std::env::args_os().skip(1)));
}
