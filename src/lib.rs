//! ferry: resumable tus uploads from field devices over flaky links.
//!
//! ```text
//!  camera / app                     ferry (one process, a few threads)                      server
//!  writes file ──► spool dir ──► spool + watch ──► store (sled) ──► upload step ──► transport ──► tus endpoint
//!  (rename into     (read-only    is it ready?      one record       create / probe   ureq +        (tusd, @tus/server,
//!   the spool)       to us)       identity          per file         / patch / done   rustls         rustus, Cloudflare)
//!                                                       ▲                 │
//!                                                       └── checkpoint ◄──┘  (URL durable before the first byte)
//!                        daemon: the loop that asks "what is due next?", runs one step, sleeps until then
//! ```
//!
//! Invariants: a spool file is deleted or moved only after the server confirmed all of it
//! (one exception the operator opts into: `spool.on_full = "delete-oldest"` evicts the oldest
//! waiting files to keep the spool within its limits, never the one in flight); a
//! file's upload URL is durable (synced, with its directory entries) before its first byte is
//! sent; after any failure the offset comes from the server (HEAD); a file that changed is
//! never mixed into its old upload; memory does not grow with file or spool size; only regular
//! files in the spool are read, never symlinks.
//!
//! # Layout
//!
//! The library's face is `app` (the commands) and `tus` (the protocol); everything else is
//! crate-private (`cargo doc --document-private-items` shows it). Arrows point down only:
//! tests/it/layers.rs fails on an import circle, and on ureq or sled named outside their one
//! module; clippy.toml keeps time, sleep and the environment in `clock` and `config::env`.
//!
//! - `app`: the commands (`mod` dispatches and maps errors to exit codes; `run` is the only
//!   builder of the daemon's real parts; `upload`, `inspect`, `logging`).
//! - `cli`: command-line parsing only, into a `config::Raw` of overrides.
//! - `config`: one `Config` per command: `file` (the keys), `resolve` (checked, defaults
//!   from each type's `Default`, secrets read), `env` (the only reader of the environment),
//!   `units` (sizes and durations).
//! - `daemon`: `ferry run`: `schedule` is its functional core (every started or queued
//!   file's state and due time, the link's and the endpoint's backoff: no threads, no I/O, no
//!   real time); the rest is the shell: scan, one step per worker job, after-upload actions,
//!   forgetting, failures, status reports, pause and reload.
//! - `upload`: one file advanced by one HTTP exchange per step (`create`, `transfer`,
//!   `recover`, `checkpoint`, `scope`, `terminate`, `settings`).
//! - `stream`: the Cloudflare Stream dialect (target kinds, chunk rules, media-id header).
//! - `hook`: the after-upload command, at least once per upload; `command`: waiting for an
//!   operator's command with a deadline (the hook, the network condition).
//! - `store`: the only user of sled: typed, versioned records under a `FileKey`, group commit,
//!   damage handling.
//! - `durable`: file-system changes that survive a power cut (fsync of files and directories).
//! - `source`: reading a byte range of a spool file safely (no symlinks, identity check).
//! - `spool`: which directory entries are ready files; `queue`: the bounded window of them;
//!   `spool_limits`: the spool's size, free-space and age limits, and which files to evict.
//! - `watch`: inotify on the spool; `netwatch`: network changes from netlink; `signals`:
//!   SIGTERM/SIGINT/SIGHUP as events.
//! - `policy`: field policies (upload windows, network interfaces, a condition command), each
//!   a `Policy` judged by the daemon's gate before steps go out.
//! - `status`: the snapshot and metrics for operators; `notify`: systemd's sd_notify;
//!   `progress`: the live progress line.
//! - `transport`: the `Transport` trait and its ureq/rustls implementation (the only user of
//!   ureq); `ratelimit`: the shared upload rate limit.
//! - `tus`: the tus 1.0 protocol without I/O; `backoff`: the retry schedule, pure.
//! - `clock`: the only reader of time and the only sleeper; `error`: one error type.
//! - `broker` (feature `broker`): `ferry broker`, the one-time upload URL service.
//! - `fuzzing` (only under `cargo fuzz`, `--cfg fuzzing`): the fuzz targets' entry points
//!   (`fuzz/`, docs/fuzzing.md).
//!
//! On musl targets (the static ARM builds) the global allocator is `ferry_lazyzero::LazyZero`
//! (crates/lazyzero): dlmalloc for small blocks, instead of whichever malloc the linker brought
//! (Zig's keeps its slabs for good), and a mapping of its own for each large one, so that sled's
//! mostly unwritten zeroed tables (about 25 MiB on 64-bit) cost nothing until written. On glibc
//! targets `main` calls `ferry_lazyzero::tune_glibc` first, which starts ferry again with
//! malloc's settings fixed (one arena, a fixed mmap threshold, no per-thread cache);
//! `command::command` keeps those settings from the operator's commands.

/// The same allocator on every musl build, whoever linked it; large zeroed blocks are left to
/// the kernel.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: ferry_lazyzero::LazyZero = ferry_lazyzero::LazyZero;

pub mod app;
pub(crate) mod backoff;
#[cfg(feature = "broker")]
pub(crate) mod broker;
pub(crate) mod cli;
pub(crate) mod clock;
pub(crate) mod command;
pub(crate) mod config;
pub(crate) mod daemon;
pub(crate) mod durable;
pub(crate) mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod hook;
pub(crate) mod netwatch;
pub(crate) mod notify;
pub(crate) mod policy;
pub(crate) mod progress;
pub(crate) mod queue;
pub(crate) mod ratelimit;
pub(crate) mod signals;
pub(crate) mod source;
pub(crate) mod spool;
pub(crate) mod spool_limits;
pub(crate) mod status;
pub(crate) mod store;
pub(crate) mod stream;
pub(crate) mod transport;
pub mod tus;
pub(crate) mod upload;
pub(crate) mod watch;
