//! ferry's global allocator on musl: dlmalloc (the `dlmalloc` crate) for small blocks, and an
//! anonymous mapping of its own for every block of [`THRESHOLD`] bytes or more, so that a
//! zeroed block costs no memory until it is written.
//!
//! Key idea: the C library's `malloc` on a static musl build depends on who linked it. Zig's
//! libc (cargo-zigbuild, which builds the release binaries) replaces musl's malloc with Zig's
//! `SmpAllocator`: power-of-two size classes in 64 KiB slabs, one set per CPU, never given
//! back. musl's own mallocng (what `cross` links) does well for small blocks, but its `calloc`
//! writes zeros over every block it returns, even over a fresh mapping the kernel has already
//! zeroed. So the small-block allocator is ferry's own choice, the same on every musl build:
//! dlmalloc (the allocator Rust's std uses on wasm): one heap for every thread behind one
//! lock, so that what one thread frees another reuses; ferry's allocations are few and small,
//! so the lock costs nothing measurable. `ferry run` with four uploads at once over 10,000
//! files of 100 KiB peaked at 8.6-8.8 MiB of RSS with Zig's allocator, 5.8 MiB with dlmalloc,
//! and 5.4-5.5 MiB with mallocng (built without zig, for the comparison).
//!
//! Large blocks: sled allocates zeroed tables that it mostly never writes (41 metric histograms
//! of 64 Ki words, a page table of 6 MiB on 64-bit), and a static musl ferry whose `calloc`
//! wrote them idled at about 30 MiB of RSS where the glibc build, whose `calloc` knows fresh
//! mappings are zero, idled at about 5 MiB. Mapping each large block on its own leaves the
//! zeros to the kernel, and unmapping it on free gives it back at once.
//!
//! Which path a block took follows from its layout alone, which `dealloc` and `realloc` are
//! given, so nothing is recorded. ferry forbids `unsafe` in its own crate; this crate holds
//! the allocator and [`tune_glibc`]. ferry installs the allocator on musl targets only; its
//! tests run everywhere.
//!
//! On glibc, [`tune_glibc`] starts ferry again with three of malloc's settings fixed: one
//! arena, a fixed mmap threshold and no per-thread cache. `ferry run` with four uploads at once
//! over 3,000 files of 100 KiB peaked at 13.4 MiB of RSS with glibc's defaults and 9.4 MiB with
//! the first two; over 10,000 files, 8.3 MiB with the first two and 6.9-7.1 MiB with all three.

use dlmalloc::GlobalDlmalloc as Small;
use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// Blocks of this many bytes or more get a mapping of their own.
pub const THRESHOLD: usize = 128 * 1024;

/// The largest alignment a fresh mapping always has (the smallest page size Linux uses).
const MAPPING_ALIGN: usize = 4096;

/// The allocator: `#[global_allocator] static A: LazyZero = LazyZero;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LazyZero;

/// Whether a block of this layout lives in a mapping of its own.
fn mapped(layout: &Layout) -> bool {
    layout.size() >= THRESHOLD && layout.align() <= MAPPING_ALIGN
}

/// A fresh anonymous mapping of `size` bytes (the kernel zeroes pages on first touch), or
/// null.
fn map(size: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping at an address the kernel picks touches no
    // existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is either Small's (and handed back to Small with the same layout) or a
// mapping of at least `layout.size()` bytes whose address is page-aligned, which satisfies any
// alignment up to MAPPING_ALIGN; `mapped()` decides which from the layout alone, and the
// GlobalAlloc contract gives dealloc and realloc the layout the block was allocated with.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for LazyZero {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            map(layout.size())
        } else {
            unsafe { Small.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            map(layout.size())
        } else {
            unsafe { Small.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if mapped(&layout) {
            // SAFETY: `block` is a mapping of `layout.size()` bytes made by `map` or `mremap`,
            // and the caller no longer uses it. munmap fails only on bad arguments.
            unsafe { libc::munmap(block.cast(), layout.size()) };
        } else {
            unsafe { Small.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that new_size, rounded up to the alignment, does not
        // overflow isize, which is all from_size_align asks.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (mapped(&layout), mapped(&new_layout)) {
            (false, false) => unsafe { Small.realloc(block, layout, new_size) },
            (true, true) => {
                // SAFETY: `block` is a mapping of `layout.size()` bytes; on failure it is left
                // as it was, as realloc's contract asks.
                let p = unsafe {
                    libc::mremap(block.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE)
                };
                if p == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // Across the threshold: a new block, the bytes both hold, the old one freed.
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        ptr::copy_nonoverlapping(block, new, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                new
            }
        }
    }
}

/// The environment variables through which glibc takes malloc settings from the user; when
/// one is set, [`tune_glibc`] leaves malloc alone.
pub const GLIBC_MALLOC_ENV: [&str; 3] = ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"];

/// The settings [`tune_glibc`] starts ferry with: one arena, a fixed mmap threshold of
/// [`THRESHOLD`] bytes, and no per-thread cache.
pub const TUNABLES: &str =
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_threshold=131072:glibc.malloc.tcache_count=0";

/// Set in the environment of the process that [`tune_glibc`] started again, so that it knows
/// [`TUNABLES`] are its own and [`child_env`] can keep them from the commands it runs.
pub const MARKER: &str = "FERRY_MALLOC_TUNED";

/// glibc's malloc for a long-running process with several threads: starts this program again
/// (the same process, the program `/proc/self/exe` names, with the same arguments) with
/// `GLIBC_TUNABLES` set to [`TUNABLES`], unless the environment already sets one of
/// [`GLIBC_MALLOC_ENV`], which then wins. glibc reads its tunables only when a program
/// starts, and the per-thread cache has no `mallopt` setting; where starting again fails (no
/// `/proc`, the program replaced on disk by an upgrade, an emulator), the two settings
/// `mallopt` can make are made instead. Call it first in `main`, before any thread starts or
/// file opens. Does nothing on other C libraries.
///
/// Why each setting: one arena for the whole process instead of one per thread that
/// allocates (up to eight per core, each keeping what its thread freed); a fixed mmap
/// threshold, where glibc by default raises it to the size of each mapped block freed (sled's
/// log buffers) so that later 128 KiB buffers come from the heap and stay resident; and no
/// per-thread cache (`tcache`: the small blocks a thread frees stay cached for that thread,
/// out of the heap's reach, and the heap grows around them): `ferry run` with four uploads
/// at once over 10,000 files of 100 KiB peaked at 8.3 MiB of RSS with the first two (3.0 MiB
/// of it the heap) and 6.9-7.1 MiB with all three (1.4-1.5 MiB of heap), in the same time.
pub fn tune_glibc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // MARKER: this is the process started again, with TUNABLES in effect.
        if std::env::var_os(MARKER).is_some()
            || GLIBC_MALLOC_ENV.iter().any(|v| std::env::var_os(v).is_some())
        {
            return;
        }
        // Returns only when starting again failed: then mallopt's two settings, as far as
        // they are taken.
        let _failed = restart_with_tunables();
        let _taken = mallopt();
    }
}

/// Replaces this process with a fresh run of its own program, with [`TUNABLES`]; returns only
/// when that failed.
///
/// Through `execve` itself, not `Command::exec`: that one calls glibc's `execvp`, which on
/// `ENOEXEC` (a program the kernel cannot start, such as an ARM binary run by qemu-user
/// without binfmt_misc) runs the file again as a `/bin/sh` script, and the shell then fails
/// on its first bytes instead of ferry going on.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn restart_with_tunables() -> std::io::Error {
    use std::ffi::{CString, OsString};
    use std::io::{Error, ErrorKind};
    use std::os::unix::ffi::OsStringExt;
    // The path /proc/self/exe names, not the link itself: under qemu-user (the ARM tests) the
    // link is qemu's own binary, the path the emulated one (which the host kernel then refuses
    // to start, so ferry goes on with mallopt).
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    let c = |s: OsString| CString::new(s.into_vec()).ok();
    let entry = |(k, v): (OsString, OsString)| {
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend(v.into_vec());
        CString::new(kv).ok()
    };
    let tuned = [("GLIBC_TUNABLES", TUNABLES), (MARKER, "1")];
    let env: Option<Vec<CString>> = std::env::vars_os()
        .filter(|(k, _)| tuned.iter().all(|(t, _)| k != t))
        .map(entry)
        .chain(tuned.iter().map(|(k, v)| entry(((*k).into(), (*v).into()))))
        .collect();
    let (Some(path), Some(args), Some(env)) =
        (c(exe.into_os_string()), std::env::args_os().map(c).collect::<Option<Vec<_>>>(), env)
    else {
        return Error::from(ErrorKind::InvalidInput);
    };
    let argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).chain([ptr::null()]).collect();
    let envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).chain([ptr::null()]).collect();
    // SAFETY: path, argv and envp are NUL-terminated strings (CString) and null-terminated
    // arrays of them, all alive until execve returns (it returns only on failure).
    #[allow(unsafe_code)]
    unsafe {
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    Error::last_os_error()
}

/// One arena and a fixed mmap threshold of [`THRESHOLD`] bytes through `mallopt`; whether
/// both were taken.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mallopt() -> bool {
    let threshold = libc::c_int::try_from(THRESHOLD).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes malloc's parameters; both values are in the ranges its
    // manual allows (M_MMAP_THRESHOLD at most 32 MiB on 64-bit, 512 KiB on 32-bit).
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1) == 1 && libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) == 1
    }
}

/// Keeps the settings [`tune_glibc`] started this process with from a command it runs (a
/// hook, a condition): they suit ferry, not the operator's programs. Does nothing when the
/// settings were the environment's own.
pub fn child_env(command: &mut std::process::Command) -> &mut std::process::Command {
    if std::env::var_os(MARKER).is_some() {
        command.env_remove("GLIBC_TUNABLES").env_remove(MARKER);
    }
    command
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).expect("layout")
    }

    /// The tests that allocate through LazyZero run one at a time, so that one test's blocks
    /// neither show in another's RSS figures nor take the blocks another freed for reuse.
    fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        static ALLOCATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        ALLOCATING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[test]
    fn a_large_zeroed_block_is_zero_and_costs_nothing_until_written() {
        let _serial = one_at_a_time();
        let size = 32 << 20;
        let before = resident_kib();
        let p = unsafe { LazyZero.alloc_zeroed(layout(size, 8)) };
        assert!(!p.is_null());
        let after = resident_kib();
        // Reading maps the shared zero page, which is not counted.
        let sum: u64 = (0..size).step_by(4096).map(|i| u64::from(unsafe { *p.add(i) })).sum();
        assert_eq!(sum, 0);
        let read = resident_kib();
        unsafe { LazyZero.dealloc(p, layout(size, 8)) };
        // Other test threads allocate too: allow them 4 MiB, far under the block's 32 MiB.
        assert!(after < before + 4096, "RSS grew from {before} to {after} KiB on alloc_zeroed");
        assert!(read < before + 4096, "RSS grew from {before} to {read} KiB on reading zeros");
    }

    #[test]
    fn small_blocks_freed_by_one_thread_are_reused_by_another() {
        // 24 MiB in blocks of 2 KiB, all under the threshold: written by one thread, freed by
        // this one, then taken again by a third. One heap for every thread reuses them; an
        // allocator with a cache per thread or per CPU (Zig's keeps 64 KiB slabs per CPU) maps
        // more.
        let _serial = one_at_a_time();
        let l = layout(2048, 8);
        let fill = move || -> Vec<usize> {
            (0..12 * 1024)
                .map(|_| {
                    let p = unsafe { LazyZero.alloc(l) };
                    assert!(!p.is_null());
                    unsafe { ptr::write_bytes(p, 0xa5, l.size()) };
                    p as usize
                })
                .collect()
        };
        let free = move |blocks: Vec<usize>| {
            for p in blocks {
                unsafe { LazyZero.dealloc(p as *mut u8, l) };
            }
        };
        let before = resident_kib();
        let first = std::thread::spawn(fill).join().expect("first thread");
        let full = resident_kib();
        free(first);
        let again = std::thread::spawn(move || {
            let blocks = fill();
            let resident = resident_kib();
            free(blocks);
            resident
        })
        .join()
        .expect("second thread");
        // Other test threads allocate too: allow them 4 MiB, far under the 24 MiB.
        assert!(full > before + 20 * 1024, "RSS went from {before} to only {full} KiB");
        assert!(again < full + 4096, "RSS {before} KiB before, {full} full, {again} full again");
    }

    #[test]
    fn blocks_on_both_sides_of_the_threshold_keep_their_bytes_through_realloc() {
        let _serial = one_at_a_time();
        // small → small, small → mapped, mapped → mapped (grow and shrink), mapped → small
        let sizes = [100, 4000, THRESHOLD - 1, THRESHOLD, 3 * THRESHOLD + 5, THRESHOLD + 1, 10];
        for align in [1, 8, 64, 4096] {
            let mut size = sizes[0];
            let mut p = unsafe { LazyZero.alloc(layout(size, align)) };
            assert!(!p.is_null());
            let fill = |p: *mut u8, n: usize| {
                for i in 0..n {
                    unsafe { *p.add(i) = (i % 251) as u8 };
                }
            };
            fill(p, size);
            for &next in &sizes[1..] {
                p = unsafe { LazyZero.realloc(p, layout(size, align), next) };
                assert!(!p.is_null(), "realloc {size} -> {next} (align {align})");
                assert_eq!(p as usize % align, 0, "alignment {align} lost at {next}");
                for i in 0..size.min(next) {
                    assert_eq!(unsafe { *p.add(i) }, (i % 251) as u8, "byte {i}, {size} -> {next}");
                }
                size = next;
                fill(p, size);
            }
            unsafe { LazyZero.dealloc(p, layout(size, align)) };
        }
    }

    #[test]
    fn alignment_beyond_a_page_goes_to_the_small_block_allocator() {
        let _serial = one_at_a_time();
        let l = layout(THRESHOLD * 2, 1 << 16);
        assert!(!mapped(&l));
        let p = unsafe { LazyZero.alloc_zeroed(l) };
        assert!(!p.is_null());
        assert_eq!(p as usize % (1 << 16), 0);
        assert!((0..l.size()).all(|i| unsafe { *p.add(i) } == 0));
        unsafe { LazyZero.dealloc(p, l) };
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_both_mallopt_settings() {
        // mallopt answers 1 for a setting it took and 0 for one it refused. (tune_glibc itself
        // would start the test binary again; tests/it/hook.rs covers it through ferry.)
        assert!(mallopt());
    }

    #[test]
    fn a_child_keeps_the_environments_own_settings() {
        // The test binary runs without MARKER: whatever GLIBC_TUNABLES it has is the user's.
        assert!(std::env::var_os(MARKER).is_none());
        let mut command = std::process::Command::new("true");
        child_env(&mut command);
        assert_eq!(command.get_envs().count(), 0);
    }

    #[test]
    fn a_mapped_block_is_writable_to_its_last_byte() {
        let _serial = one_at_a_time();
        for size in [THRESHOLD, THRESHOLD + 1, 1 << 20] {
            let p = unsafe { LazyZero.alloc(layout(size, 16)) };
            assert!(!p.is_null());
            unsafe {
                *p = 1;
                *p.add(size - 1) = 2;
                assert_eq!((*p, *p.add(size - 1)), (1, 2));
                LazyZero.dealloc(p, layout(size, 16));
            }
        }
    }
}
