//! What ferry reads from files: the config file and its own stored records.

use std::path::PathBuf;

use super::secret_file;
use crate::config::{self, Env, Raw};
use crate::status;
use crate::store;
use crate::tus::url;

/// The config file's text, parsed and then checked as `ferry run` and `ferry broker` check it.
/// Secret sources (header files, API token files) all name one file written here, so that an
/// input never makes the fuzzer read a file of its choosing.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return; // config::load reads text: bytes that are not UTF-8 never get this far
    };
    let Ok(mut raw) = config::from_toml(text, "fuzz.toml") else {
        return;
    };
    assert_eq!(
        raw.clone().merge(raw.clone()),
        raw,
        "merge is not idempotent"
    );
    secrets_from_one_file(&mut raw);
    let env = Env {
        state_directory: Some(PathBuf::from("/var/lib/ferry")),
        ..Env::default()
    };
    #[cfg(feature = "broker")]
    let _ = crate::broker::settings::Settings::resolve_with(&raw.broker, &env, &Default::default());
    if let Ok(c) = raw.resolve(&env) {
        assert!(
            url::validate(&c.upload.endpoint).is_ok(),
            "{}",
            c.upload.endpoint
        );
        assert!(c.upload.chunk_size_bytes.is_none_or(|c| c > 0));
        assert!(c.upload.retry.initial_delay <= c.upload.retry.max_delay);
    }
}

fn secrets_from_one_file(raw: &mut Raw) {
    let secret = secret_file().to_string_lossy().into_owned();
    for source in raw.server.header_files.values_mut() {
        source.clone_from(&secret);
    }
    if raw.stream.api_token_file.is_some() {
        raw.stream.api_token_file = Some(secret.clone());
    }
    if raw.broker.api_token_file.is_some() {
        raw.broker.api_token_file = Some(secret);
    }
}

/// A stored value as the store reads it (a file record, a failure record) and the status
/// snapshot as `ferry status` reads it: a record that reads is written back and reads the same.
pub fn stored_record(data: &[u8]) {
    if let Ok(rec) = store::decode_record(data) {
        let again = serde_json::to_vec(&rec).map(|v| store::decode_record(&v));
        assert!(matches!(&again, Ok(Ok(r)) if *r == rec), "{again:?}");
    }
    if let Ok(rec) = store::decode_failed_record(data) {
        let again = serde_json::to_vec(&rec).map(|v| store::decode_failed_record(&v));
        assert!(matches!(&again, Ok(Ok(r)) if *r == rec), "{again:?}");
    }
    let snapshot = std::str::from_utf8(data).map(serde_json::from_str::<status::Snapshot>);
    if let Ok(Ok(snapshot)) = snapshot {
        let _ = status::render_text(&snapshot, true, 1_767_225_600);
        let _ = status::render_text(&snapshot, false, 0);
        let _ = status::render_metrics(&snapshot);
    }
}
