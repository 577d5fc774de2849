//! Ferry's own stored records (file and failure records, the status snapshot).
//! The checks live in `ferry::fuzzing` (src/fuzzing/); docs/fuzzing.md says how to run this.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry::fuzzing::stored_record(data));
