/work/main/crates/lazyzero/target/debug/deps/ferry_lazyzero-cb2d129842f4b1a1.d: src/lib.rs

/work/main/crates/lazyzero/target/debug/deps/ferry_lazyzero-cb2d129842f4b1a1: src/lib.rs

src/lib.rs:
