//! A tus server's answer to HEAD, POST, PATCH, DELETE and OPTIONS: offsets, lengths,
//! `Upload-Expires`, `Location` and `Retry-After`.
//! The checks live in `ferry::fuzzing` (src/fuzzing/); docs/fuzzing.md says how to run this.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::tus_response(data));
