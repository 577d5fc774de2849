//! `ferry`: run the command line (which sets up logging), exit with its code.

fn main() {
    // Before any thread starts or file opens: on glibc, start again with malloc's settings
    // for a long-running process with threads (crates/lazyzero: one arena, a fixed mmap
    // threshold, no per-thread cache; 8.3 against 7.1 MiB peak RSS with four uploads at once).
    ferry_lazyzero::tune_glibc();
    std::process::exit(ferry::app::run(std::env::args_os().skip(1)));
}
