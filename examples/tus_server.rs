//! The project's own tus server, to try ferry against with nothing else installed.
//!
//! ```sh
//! cargo run --release --example tus_server                      # http://127.0.0.1:1080/files/
//! cargo run --release --example tus_server -- 127.0.0.1:8080 ./uploads
//! ```
//!
//! It speaks tus 1.0 with creation, creation-with-upload, termination and checksum (sha1,
//! sha256; it also advertises expiration, but its uploads do not expire), keeps each upload's
//! bytes in a file under the data directory (a fresh temporary one when none is given) and
//! runs until Ctrl-C. It is test code: one process, no
//! authentication, loopback by default. Use tusd or @tus/server for anything else.
#![allow(
    unreachable_pub,
    reason = "a binary: its support modules' pub items are for each other"
)]
#![allow(
    dead_code,
    reason = "the test support modules offer more than this example uses"
)]
#![allow(clippy::disallowed_methods, reason = "waits in real time for Ctrl-C")]

#[path = "../tests/support/accept.rs"]
mod accept;
#[path = "../tests/support/http1.rs"]
mod http1;
#[path = "../tests/support/pump.rs"]
mod pump;
#[path = "../tests/support/tus_server.rs"]
mod tus_server;

use std::path::PathBuf;
use std::process::ExitCode;

use tus_server::{ServerConfig, TusServer};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:1080".into());
    if addr == "-h" || addr == "--help" {
        println!("usage: cargo run --example tus_server [-- [HOST:PORT] [DATA_DIR]]");
        println!("       defaults: 127.0.0.1:1080, a fresh temporary directory");
        return ExitCode::SUCCESS;
    }
    let data_dir = args.next().map(PathBuf::from);
    let server = TusServer::start_on(
        &addr,
        ServerConfig {
            data_dir,
            ..ServerConfig::default()
        },
    );
    println!("tus server at {} (Ctrl-C ends it)", server.endpoint());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
