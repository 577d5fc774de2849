/work/main/crates/lazyzero/target/debug/deps/ferry_lazyzero-f3fb0e2b9734b711.d: src/lib.rs

/work/main/crates/lazyzero/target/debug/deps/libferry_lazyzero-f3fb0e2b9734b711.rlib: src/lib.rs

/work/main/crates/lazyzero/target/debug/deps/libferry_lazyzero-f3fb0e2b9734b711.rmeta: src/lib.rs

src/lib.rs:
