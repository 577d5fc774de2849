//! Entry points for the fuzz targets in `fuzz/`: built only by `cargo fuzz`, which sets
//! `--cfg fuzzing`; nothing else in the crate sees them.
//!
//! Key idea: each function takes bytes as they come from outside (a server's answer, a file on
//! disk, a client's request), hands them to the real parser, and panics when something the
//! parser promises does not hold: a round trip that does not come back, an offset past a
//! length, a URL that no request can be sent to. The parsers stay crate-private; the targets
//! in `fuzz/fuzz_targets/` are one call each. A crash found here becomes a regression test
//! next to the parser it is about (docs/fuzzing.md says how).

#[cfg(feature = "broker")]
mod broker;
mod files;
mod tus;

#[cfg(feature = "broker")]
pub use broker::{broker_head, device_tokens};
pub use files::{config_text, stored_record};
pub use tus::{http_date, tus_response, upload_metadata};

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A file holding a secret (an API token, a header value), written once per process: every
/// secret source an input names is replaced by it, so no input reads a file of its choosing.
fn secret_file() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| scratch_file("secret", "fuzz-secret-token\n"))
}

/// Writes `contents` to a file of this process in the temporary directory.
fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ferry-fuzz-{}-{name}", std::process::id()));
    if let Err(e) = std::fs::write(&path, contents) {
        panic!("cannot write the fuzz target's {}: {e}", path.display());
    }
    path
}

/// Lines of `text`, a `\r` before each `\n` dropped (seed files may have either ending).
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// An HTTP head as written on the wire: the first line, then `Name: value` fields until an
/// empty line; what follows is the body. Lines without a colon are skipped (the transport
/// hands over only well-formed fields).
fn head_and_body(text: &str) -> (&str, Vec<(String, String)>, String) {
    let mut it = lines(text);
    let first = it.next().unwrap_or_default();
    let mut fields = Vec::new();
    for line in it.by_ref() {
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_string(), value.trim_start().to_string()));
        }
    }
    let body: Vec<&str> = it.collect();
    (first, fields, body.join("\n"))
}
