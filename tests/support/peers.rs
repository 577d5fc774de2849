//! Real tus servers written by others, run as child processes on 127.0.0.1.
//!
//! - [`Peer::node_tus_server`]: the reference implementation, `@tus/server` with its
//!   `FileStore` (`tests/peers/tus-node-server.mjs`).
//! - [`Peer::rustus`]: rustus, built with its `hashers` feature so that `checksum` is real.
//!
//! Both are installed by `scripts/install-peers`. A missing peer fails the test: a skipped
//! interoperability test would hide exactly the bugs these peers are here to find.
//!
//! Each peer gets its own temporary data directory and port; dropping the [`Peer`] stops
//! the server and removes the directory. Each child watches its stdin (directly, or through
//! a small `sh` watchdog for rustus), so it also stops when the test process dies.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The rustus release `scripts/install-peers` installs.
pub const RUSTUS_VERSION: &str = "0.5.10";

/// How long a peer may take to start listening (node on a loaded 2-core machine is slow).
const START_TIMEOUT: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str = "run `scripts/install-peers` from the repository root \
                            (it runs `npm ci` in tests/peers and installs rustus into target/peers)";

/// Options for the `@tus/server` peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeOpts {
    /// Answer creation with a relative `Location: /files/<id>` instead of an absolute URL.
    pub relative_location: bool,
    /// FileStore expiration: uploads older than this answer HEAD and PATCH with 410 Gone.
    /// `None` = never expire.
    pub expire_ms: Option<u64>,
    /// Run it in this network namespace (`ip netns exec`; needs root).
    pub netns: Option<&'static str>,
    /// Listen on this IPv4 address instead of 127.0.0.1 (one of `netns`).
    pub host: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Node,
    Rustus,
}

/// A running third-party tus server. See the module docs.
pub struct Peer {
    kind: Kind,
    child: Child,
    /// Kept open: closing it tells the child (or rustus' watchdog) to exit.
    stdin: Option<ChildStdin>,
    /// The server process itself (for rustus the watchdog shell is `child`).
    server_pid: u32,
    addr: SocketAddr,
    root: PathBuf,
    data_dir: PathBuf,
}

impl Peer {
    /// Starts `@tus/server` 2.x with a `FileStore` at `http://127.0.0.1:PORT/files/`.
    ///
    /// It advertises `creation,creation-with-upload,creation-defer-length,termination,expiration`
    /// (no `checksum`). Bytes of upload `<id>` are in `DATA/<id>`, its info in `DATA/<id>.json`.
    pub fn node_tus_server(opts: NodeOpts) -> Peer {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let peers = manifest.join("tests/peers");
        let script = peers.join("tus-node-server.mjs");
        for needed in [
            script.clone(),
            peers.join("node_modules/@tus/server/package.json"),
            peers.join("node_modules/@tus/file-store/package.json"),
        ] {
            assert!(
                needed.is_file(),
                "tus peer @tus/server is not installed ({} is missing): {INSTALL_HINT}",
                needed.display()
            );
        }
        let node = std::env::var_os("NODE").unwrap_or_else(|| "node".into());

        let root = make_temp_dir("node");
        let data_dir = root.join("data");
        fs::create_dir(&data_dir).expect("create peer data dir");

        let mut cmd = match opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&node);
                c
            }
            None => Command::new(&node),
        };
        cmd.arg(&script)
            .args(["--port", "0", "--dir"])
            .arg(&data_dir);
        if let Some(host) = opts.host {
            cmd.args(["--host", host]);
        }
        if opts.relative_location {
            cmd.arg("--relative-location");
        }
        if let Some(ms) = opts.expire_ms {
            cmd.args(["--expire-ms", &ms.to_string()]);
        }
        cmd.current_dir(&root);
        let (mut child, stdin, stdout) = spawn(cmd, &root, || {
            format!(
                "cannot run `{}` (Node.js 20.19+ is needed for the @tus/server peer; \
                 set NODE to its path if it is not on PATH)",
                Path::new(&node).display()
            )
        });

        // The script prints exactly one line once it listens.
        let line = first_line(stdout, START_TIMEOUT);
        let addr = match line.as_deref().and_then(parse_listening) {
            Some(addr) => addr,
            None => {
                // stdout closes a moment before the process can be reaped.
                let waited = Instant::now();
                let status = loop {
                    match child.try_wait() {
                        Ok(None) if waited.elapsed() < Duration::from_secs(1) => {
                            thread::sleep(Duration::from_millis(20));
                        }
                        other => break other.ok().flatten(),
                    }
                };
                let why = match status {
                    Some(status) => format!("it exited with {status}"),
                    None => format!("no LISTENING line within {START_TIMEOUT:?}"),
                };
                let _ = child.kill();
                let _ = child.wait();
                let logs = read_logs(&root);
                let _ = fs::remove_dir_all(&root);
                panic!(
                    "@tus/server peer ({}) failed to start: {why} (first stdout line: {line:?})\n{logs}",
                    script.display()
                );
            }
        };
        let server_pid = child.id();
        Peer {
            kind: Kind::Node,
            child,
            stdin: Some(stdin),
            server_pid,
            addr,
            root,
            data_dir,
        }
    }

    /// Starts rustus at `http://127.0.0.1:PORT/files/` with its file storage.
    ///
    /// Advertises `creation-defer-length,creation-with-upload,creation,termination,
    /// concatenation,getting,checksum` and `Tus-Checksum-Algorithm: md5,sha1,sha256,sha512`.
    /// PATCH bodies over 256 KiB are refused with 413 (its default, pinned here).
    /// Bytes of upload `<id>` are in `DATA/<id>`, its info in `INFO/<id>.info`.
    pub fn rustus() -> Peer {
        let bin = rustus_bin();
        let root = make_temp_dir("rustus");
        let data_dir = root.join("data");
        let info_dir = root.join("info");
        fs::create_dir(&data_dir).expect("create peer data dir");
        fs::create_dir(&info_dir).expect("create peer info dir");

        let port = if cfg!(target_os = "linux") {
            // Let the kernel choose; the port is read back from /proc (no race).
            0
        } else {
            reserve_port()
        };

        // rustus ignores stdin, so a watchdog shell runs it and kills it when its stdin
        // closes (this Peer dropped, or the test process died). The shell exits with
        // rustus, so `try_wait` on it tells whether rustus died.
        let watchdog = r#"
            "$0" "$@" </dev/null >&2 &
            pid=$!
            echo "$pid"
            exec 3<&0
            { cat <&3 >/dev/null; kill -9 "$pid" 2>/dev/null; } &
            wait "$pid"
        "#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(watchdog)
            .arg(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--url", "/files"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--info-storage", "file-info-storage", "--info-dir"])
            .arg(&info_dir)
            .args([
                "--tus-extensions",
                "getting,creation,termination,creation-with-upload,creation-defer-length,concatenation,checksum",
                "--max-body-size",
                "262144",
                "--workers",
                "2",
                "--log-level",
                "INFO",
            ])
            .current_dir(&root);
        let (mut child, stdin, stdout) = spawn(cmd, &root, || "cannot run `sh`".to_owned());

        fn fail(child: &mut Child, root: &Path, bin: &Path, why: String) -> ! {
            let _ = child.kill();
            let _ = child.wait();
            let logs = read_logs(root);
            let _ = fs::remove_dir_all(root);
            panic!(
                "rustus peer ({}) failed to start: {why}\n{logs}",
                bin.display()
            );
        }

        let server_pid = match first_line(stdout, START_TIMEOUT).map(|l| l.trim().parse::<u32>()) {
            Some(Ok(pid)) => pid,
            other => fail(
                &mut child,
                &root,
                &bin,
                format!("watchdog printed no pid ({other:?})"),
            ),
        };

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            if let Ok(Some(status)) = child.try_wait() {
                fail(&mut child, &root, &bin, format!("it exited with {status}"));
            }
            let found = if port == 0 {
                listening_port(server_pid).map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            } else {
                let a = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                TcpStream::connect_timeout(&a, Duration::from_millis(200))
                    .ok()
                    .map(|_| a)
            };
            if let Some(addr) = found {
                break addr;
            }
            if Instant::now() > deadline {
                fail(
                    &mut child,
                    &root,
                    &bin,
                    format!("not listening after {START_TIMEOUT:?}"),
                );
            }
            thread::sleep(Duration::from_millis(25));
        };

        Peer {
            kind: Kind::Rustus,
            child,
            stdin: Some(stdin),
            server_pid,
            addr,
            root,
            data_dir,
        }
    }

    /// The creation URL, e.g. `http://127.0.0.1:PORT/files/`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/files/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id (for the benchmarks' CPU accounting).
    pub fn pid(&self) -> u32 {
        self.server_pid
    }

    /// Where the server keeps the bytes of the upload at `upload_url` (absolute or
    /// relative URL; the upload id is its last path segment). The file may not exist.
    pub fn stored_path(&self, upload_url: &str) -> PathBuf {
        let id = upload_id(upload_url);
        self.data_dir.join(id)
    }

    /// The bytes the server has stored for the upload at `upload_url`.
    pub fn stored_bytes(&self, upload_url: &str) -> Vec<u8> {
        let path = self.stored_path(upload_url);
        fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{:?} peer has no stored upload for {upload_url} ({}: {e}); it holds {:?}",
                self.kind,
                path.display(),
                self.upload_files()
            )
        })
    }

    /// How many uploads the server holds (a duplicate creation shows up here).
    pub fn upload_count(&self) -> usize {
        self.upload_files().len()
    }

    /// Names of the files that hold upload bytes (not the per-upload info files).
    pub fn upload_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.data_dir)
            .expect("read peer data dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // The node FileStore keeps <id>.json beside <id>; rustus' info files live elsewhere.
            .filter(|n| !(self.kind == Kind::Node && n.ends_with(".json")))
            .collect();
        names.sort();
        names
    }

    /// @tus/server only: each upload's `filename` metadata and the file holding its bytes
    /// (its FileStore keeps `<id>` beside `<id>.json`, which holds the metadata).
    pub fn uploads_by_filename(&self) -> Vec<(String, PathBuf)> {
        assert_eq!(self.kind, Kind::Node, "only @tus/server keeps <id>.json");
        let mut out: Vec<(String, PathBuf)> = fs::read_dir(&self.data_dir)
            .expect("read peer data dir")
            .map(|e| e.expect("peer data dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .map(|p| {
                let info: serde_json::Value =
                    serde_json::from_str(&fs::read_to_string(&p).expect("read an upload's info"))
                        .expect("an upload's info is JSON");
                let name = info["metadata"]["filename"]
                    .as_str()
                    .expect("the upload has a filename")
                    .to_string();
                (name, p.with_extension(""))
            })
            .collect();
        out.sort();
        out
    }

    /// Bytes the server holds over all its uploads (grows while one is being sent).
    pub fn bytes_stored(&self) -> u64 {
        self.upload_files()
            .iter()
            .filter_map(|n| fs::metadata(self.data_dir.join(n)).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The server's log so far (stderr; for rustus also its stdout), for failure messages.
    pub fn logs(&self) -> String {
        read_logs(&self.root)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Closing stdin makes the node script exit, and rustus' watchdog kill rustus.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    if self.server_pid != self.child.id() {
                        let _ = Command::new("kill")
                            .args(["-9", &self.server_pid.to_string()])
                            .status();
                    }
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// `$RUSTUS_BIN`, else `<crate>/target/peers/bin/rustus`, else `rustus` on PATH.
fn rustus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RUSTUS_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "RUSTUS_BIN={} does not exist: {INSTALL_HINT}",
            p.display()
        );
        return p;
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/peers/bin/rustus");
    if local.is_file() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("rustus");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "tus peer rustus {RUSTUS_VERSION} is not installed (looked at $RUSTUS_BIN, {}, PATH): \
         {INSTALL_HINT}",
        local.display()
    );
}

fn make_temp_dir(kind: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    if COUNTER.load(Ordering::Relaxed) == 0 {
        remove_stale_dirs();
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "ferry-peer-{kind}-{}-{n}-{nanos}",
        std::process::id()
    ));
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Removes the data dirs of test processes that were killed before their `Drop` ran
/// (`ferry-peer-<kind>-<pid>-...` whose pid is gone; Linux, where /proc tells).
fn remove_stale_dirs() {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("ferry-peer-") else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Spawns `cmd` with piped stdin/stdout and stderr into `root/stderr.log`.
fn spawn(
    mut cmd: Command,
    root: &Path,
    what: impl FnOnce() -> String,
) -> (Child, ChildStdin, ChildStdout) {
    let stderr = fs::File::create(root.join("stderr.log")).expect("create stderr log");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = fs::remove_dir_all(root);
            panic!("{}: {e}: {INSTALL_HINT}", what());
        }
    };
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, stdin, stdout)
}

/// Reads the first stdout line within `timeout`, then keeps draining stdout in the
/// background so the child never blocks on a full pipe.
fn first_line(stdout: ChildStdout, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let got = reader
            .read_line(&mut line)
            .ok()
            .filter(|n| *n > 0)
            .map(|_| line);
        let _ = tx.send(got);
        let mut sink = [0u8; 8192];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    rx.recv_timeout(timeout).ok().flatten()
}

fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("LISTENING http://")?;
    rest.strip_suffix("/files/")?.parse().ok()
}

fn read_logs(root: &Path) -> String {
    let text = fs::read(root.join("stderr.log"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    // Keep panic messages readable: the end of the log is what explains a failure.
    let tail: String = if text.len() > 8000 {
        let cut = text.len() - 8000;
        let cut = (cut..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(cut);
        format!("...{}", &text[cut..])
    } else {
        text
    };
    format!("--- peer stderr ---\n{tail}--- end of peer stderr ---")
}

/// The upload id: the last non-empty path segment of an absolute or relative URL.
fn upload_id(upload_url: &str) -> &str {
    let path = upload_url.split(['?', '#']).next().unwrap_or_default();
    let id = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    assert!(
        !id.is_empty() && id != "files" && id != "." && id != ".." && !id.contains('\\'),
        "no upload id in upload URL {upload_url:?}"
    );
    id
}

/// The TCP port process `pid` listens on, from /proc (Linux).
fn listening_port(pid: u32) -> Option<u16> {
    let mut inodes = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        if let Ok(target) = fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.push(inode.to_owned());
            }
        }
    }
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // cols: sl local_address rem_address st ... inode(9)
        if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
            let port = cols[1].rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        } else {
            None
        }
    })
}

/// A free loopback port (where /proc is not available to read the real one back).
fn reserve_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("reserve a loopback port")
}
