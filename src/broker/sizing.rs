//! The default `broker.max_connections`, sized to what the broker may use: memory (the machine's,
//! or the cgroup's `MemoryMax=`) and tasks (the cgroup's `TasksMax=`, the `nproc` limit).
//!
//! Key idea: a connection is a thread, so the cap must stay below the task limit (or thread
//! creation fails and clients see resets instead of 503) and its memory must fit. Half the
//! memory limit goes to connections at [`BYTES_PER_CONNECTION`] (or [`BYTES_PER_TLS_CONNECTION`])
//! each, bounded to [`MIN_DEFAULT`]..=[`MAX_CONNECTIONS`], then kept [`SPARE_TASKS`] below the
//! task limit.
//! Reading the limits ([`Limits::read`]) is apart from the arithmetic, which is tested on text.

use std::path::{Path, PathBuf};

/// Memory (RSS) one idle keep-alive connection costs, plain HTTP: measured 36 KiB (its thread's
/// stack pages, read buffer, allocator arena share) as the broker's RSS growth with 1000 idle
/// keep-alive connections after one `GET /healthz` each (debug build), rounded up.
pub(crate) const BYTES_PER_CONNECTION: u64 = 40 * 1024;
/// The same with TLS (rustls buffers and state): measured 85 KiB, rounded up.
pub(crate) const BYTES_PER_TLS_CONNECTION: u64 = 96 * 1024;
/// The share of the memory limit given to connections (the rest: the broker itself, about
/// 12 MiB, Stream calls in flight, socket buffers, which a cgroup counts too).
const MEMORY_SHARE: u64 = 2;
/// The smallest default cap (the old fixed default).
pub(crate) const MIN_DEFAULT: usize = 64;
/// The largest cap, default or configured.
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// Tasks kept for the broker's own threads (main, accept, signals, Stream calls past their
/// deadline, connections being closed).
pub(crate) const SPARE_TASKS: usize = 64;

/// What the broker may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Limits {
    /// Bytes of memory: the smaller of the machine's and the cgroup's.
    pub memory_bytes: Option<u64>,
    /// Tasks (threads): the smaller of the cgroup's `pids.max` and `RLIMIT_NPROC`.
    pub tasks: Option<u64>,
}

impl Limits {
    /// Reads `/proc/meminfo`, `/proc/self/limits` and the cgroup files (v1 and v2) of this
    /// process and of every cgroup above it. What cannot be read counts as no limit.
    pub(crate) fn read() -> Self {
        let text = |p: &Path| std::fs::read_to_string(p).ok();
        let cgroups = text(Path::new("/proc/self/cgroup")).unwrap_or_default();
        let cgroup_min = |v1: &str, v1_file: &str, v2_file: &str| {
            cgroup_files(&cgroups, v1, v1_file, v2_file)
                .iter()
                .filter_map(|p| text(p).as_deref().and_then(limit_value))
                .min()
        };
        let memory = [
            text(Path::new("/proc/meminfo")).and_then(|t| mem_total(&t)),
            cgroup_min("memory", "memory.limit_in_bytes", "memory.max"),
        ];
        let tasks = [
            cgroup_min("pids", "pids.max", "pids.max"),
            text(Path::new("/proc/self/limits")).and_then(|t| nproc_limit(&t)),
        ];
        Self {
            memory_bytes: memory.into_iter().flatten().min(),
            tasks: tasks.into_iter().flatten().min(),
        }
    }

    /// The most connections the task limit allows.
    pub(crate) fn task_cap(&self) -> Option<usize> {
        self.tasks.map(|t| {
            usize::try_from(t)
                .unwrap_or(usize::MAX)
                .saturating_sub(SPARE_TASKS)
                .max(1)
        })
    }

    /// The default `broker.max_connections` for these limits, with or without TLS.
    pub(crate) fn default_max_connections(&self, tls: bool) -> usize {
        let each = if tls {
            BYTES_PER_TLS_CONNECTION
        } else {
            BYTES_PER_CONNECTION
        };
        let by_memory = self.memory_bytes.map_or(MIN_DEFAULT, |m| {
            usize::try_from(m / MEMORY_SHARE / each).unwrap_or(usize::MAX)
        });
        let bounded = by_memory.clamp(MIN_DEFAULT, MAX_CONNECTIONS);
        self.task_cap().map_or(bounded, |t| bounded.min(t))
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup limit file's value: a number, or `None` for `max` (v2) or a v1 "no limit" (the
/// page-rounded `i64::MAX`) or anything unreadable.
fn limit_value(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    (n < 1 << 62).then_some(n)
}

/// The soft `Max processes` of `/proc/self/limits`.
fn nproc_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max processes"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The limit files to read for a controller: this process's cgroup and each one above it,
/// from `/proc/self/cgroup` (`N:controller:/path` in v1, `0::/path` in v2).
fn cgroup_files(proc_cgroup: &str, v1: &str, v1_file: &str, v2_file: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, file) = if controllers.is_empty() {
            (PathBuf::from("/sys/fs/cgroup"), v2_file)
        } else if controllers.split(',').any(|c| c == v1) {
            (Path::new("/sys/fs/cgroup").join(v1), v1_file)
        } else {
            continue;
        };
        let mut dir = Some(Path::new(path.trim_start_matches('/')));
        while let Some(d) = dir {
            out.push(base.join(d).join(file));
            dir = d.parent();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_default_cap_follows_memory_within_bounds() {
        let cap = |memory_bytes, tasks, tls| {
            Limits {
                memory_bytes,
                tasks,
            }
            .default_max_connections(tls)
        };
        assert_eq!(cap(None, None, false), MIN_DEFAULT);
        let unit = Some(128 * MIB); // the unit's MemoryMax=128M
        assert_eq!(cap(unit, None, false), 1638);
        assert_eq!(cap(unit, None, true), 682);
        assert_eq!(cap(Some(512 * MIB), None, true), 2730);
        assert_eq!(
            cap(Some(4 * MIB), None, false),
            MIN_DEFAULT,
            "never below the old default"
        );
        assert_eq!(cap(Some(64 * 1024 * MIB), None, false), MAX_CONNECTIONS);
        assert_eq!(cap(unit, Some(128), false), 64, "TasksMax=128 leaves 64");
        assert_eq!(cap(unit, Some(4096 + 128), false), 1638);
        assert_eq!(
            cap(None, Some(10), false),
            1,
            "a tiny task limit still serves one"
        );
    }

    #[test]
    fn reads_meminfo_limits_and_cgroup_values() {
        let meminfo = "MemTotal:       24683520 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_683_520 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(limit_value("134217728\n"), Some(128 * MIB));
        assert_eq!(limit_value("max\n"), None);
        assert_eq!(limit_value("9223372036854771712\n"), None, "v1's no limit");
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95864                95864                processes\n";
        assert_eq!(nproc_limit(limits), Some(95_864));
        let unlimited =
            "Max processes             unlimited            unlimited            processes\n";
        assert_eq!(nproc_limit(unlimited), None);
    }

    #[test]
    fn cgroup_files_cover_the_cgroup_and_its_parents() {
        let v2 = "0::/system.slice/ferry-broker.service\n";
        assert_eq!(
            cgroup_files(v2, "memory", "memory.limit_in_bytes", "memory.max"),
            [
                "/sys/fs/cgroup/system.slice/ferry-broker.service/memory.max",
                "/sys/fs/cgroup/system.slice/memory.max",
                "/sys/fs/cgroup/memory.max",
            ]
            .map(PathBuf::from)
        );
        let v1 = "8:pids:/\n4:memory:/a/b\n3:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            cgroup_files(v1, "memory", "memory.limit_in_bytes", "memory.max"),
            [
                "/sys/fs/cgroup/memory/a/b/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/a/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "/sys/fs/cgroup/memory.max",
            ]
            .map(PathBuf::from)
        );
    }
}
