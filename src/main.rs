//! `ferry`: run the command line (which sets up logging), exit with its code.

fn main() {
    // Before any thread starts: one malloc arena and a fixed mmap threshold on glibc
    // (crates/lazyzero: 13.4 against 9.4 MiB peak RSS with four uploads at once).
    ferry_lazyzero::tune_glibc();
    std::process::exit(ferry::app::run(std::env::args_os().skip(1)));
}
