//! The layering rules (src/lib.rs, CONTRIBUTING.md "Layout") that grep can check, checked on
//! src/ as it is: a third-party crate named outside its one module, I/O in the pure layers, or an
//! import circle between top-level modules fails here (clippy.toml's disallowed-methods hold the
//! rules on time, sleep and the environment).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One production source file: its path below src/ and its code lines (comments and test
/// modules left out).
struct Source {
    rel: String,
    code: Vec<String>,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name != "tests.rs" && !name.ends_with("_tests.rs")
        })
        .map(|p| Source {
            rel: p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            code: code_lines(&std::fs::read_to_string(&p).unwrap()),
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines that are code: comment lines dropped, and everything from a `#[cfg(test)]` module
/// on (test modules sit at the end of a file).
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            break;
        }
        if !t.starts_with("//") {
            out.push(line.to_string());
        }
    }
    out
}

/// The top-level module a file below src/ belongs to (`store/commit.rs` → `store`).
fn module_of(rel: &str) -> String {
    let first = rel.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// Where `needle` appears in code outside the files `allowed` accepts.
fn offenders(needle: &str, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for s in sources().iter().filter(|s| !allowed(&s.rel)) {
        for (i, line) in s.code.iter().enumerate() {
            if contains_word(line, needle) {
                out.push(format!(
                    "src/{} (code line {}): {}",
                    s.rel,
                    i + 1,
                    line.trim()
                ));
            }
        }
    }
    out
}

/// `needle` in `line`, not as the tail of a longer identifier (`sled::` but not `unsled::`).
fn contains_word(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(i, _)| {
        line[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'))
    })
}

#[test]
fn ureq_is_named_only_in_the_transport() {
    let bad = offenders("ureq::", |rel| rel.starts_with("transport/"));
    assert!(
        bad.is_empty(),
        "ureq outside src/transport/:\n{}",
        bad.join("\n")
    );
}

#[test]
fn sled_is_named_only_in_the_store() {
    let bad = offenders("sled::", |rel| module_of(rel) == "store");
    assert!(
        bad.is_empty(),
        "sled outside the store:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_protocol_and_backoff_do_no_io() {
    let pure = |rel: &str| module_of(rel) == "tus" || rel == "backoff.rs";
    let mut bad = Vec::new();
    for needle in [
        "std::fs",
        "std::net",
        "std::thread",
        "std::process",
        "log::",
        "crate::clock",
        "crate::transport",
        "crate::store",
    ] {
        bad.extend(offenders(needle, |rel| !pure(rel)));
    }
    assert!(
        bad.is_empty(),
        "I/O in tus/ or backoff.rs:\n{}",
        bad.join("\n")
    );
}

/// Every `crate::<module>` path in code is an arrow between top-level modules; the arrows must
/// not close a circle (Tarjan's strongly connected components over that graph).
#[test]
fn no_import_circle_between_modules() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources() {
        let from = module_of(&s.rel);
        for line in &s.code {
            for (i, _) in line.match_indices("crate::") {
                let prev = line[..i].chars().next_back();
                if prev.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                    continue;
                }
                let to: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    let circles = strongly_connected(&edges);
    let shown: Vec<String> = circles
        .iter()
        .map(|c| {
            let arrows: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|b| c.contains(*b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            arrows.join(", ")
        })
        .collect();
    assert!(
        circles.is_empty(),
        "import circles between top-level modules:\n{}",
        shown.join("\n")
    );
    assert!(
        edges.get("upload").is_some_and(|e| e.contains("store")),
        "the check sees the arrows it should (upload uses the store)"
    );
}

/// The components of more than one module.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Tarjan<'e> {
        edges: &'e BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'e str, usize>,
        low: BTreeMap<&'e str, usize>,
        stack: Vec<&'e str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'e> Tarjan<'e> {
        fn visit(&mut self, v: &'e str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    self.low.insert(v, self.low[v].min(lw));
                } else if self.stack.contains(&w) {
                    let iw = self.index[w];
                    self.low.insert(v, self.low[v].min(iw));
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    comp.insert(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn the_circle_check_finds_a_circle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in [
        ("store", "hook"),
        ("hook", "upload"),
        ("upload", "store"),
        ("app", "store"),
    ] {
        edges.entry(a.into()).or_default().insert(b.into());
    }
    let found = strongly_connected(&edges);
    let want: BTreeSet<String> = ["hook", "store", "upload"].map(String::from).into();
    assert_eq!(found, vec![want]);
    edges.get_mut("upload").unwrap().clear();
    assert!(strongly_connected(&edges).is_empty());
}
