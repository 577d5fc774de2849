//! HTTP dates (`Upload-Expires`, `Retry-After`).
//! The checks live in `ferry::fuzzing` (src/fuzzing/); docs/fuzzing.md says how to run this.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::http_date(data));
