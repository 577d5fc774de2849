//! Bytes a client sends `ferry broker`: request heads and bodies, answered by the endpoint.
//! The checks live in `ferry::fuzzing` (src/fuzzing/); docs/fuzzing.md says how to run this.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::broker_head(data));
