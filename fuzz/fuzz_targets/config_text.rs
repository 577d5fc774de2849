//! The config file's text, parsed and checked.
//! The checks live in `ferry::fuzzing` (src/fuzzing/); docs/fuzzing.md says how to run this.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::config_text(data));
