//! The kernel's clock synchronisation status, read with `adjtimex(2)` (modes = 0: read only,
//! no privilege needed), behind a safe function.
//!
//! Key idea: ferry forbids `unsafe` in its own crate and no kept crate exposes this call
//! (rustix 1.1 and nix 0.32 do not; `nc` makes it an `unsafe fn`), so this crate holds the
//! one FFI call, and nothing else: ferry's `policy::clocksync` interprets the answer.

use std::io;

/// What `adjtimex` returns about the system clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    /// The clock state (the return value): `TIME_OK` 0 ... `TIME_ERROR` 5.
    pub state: i32,
    /// The status bits (`STA_*`), e.g. `STA_UNSYNC` 0x0040.
    pub status: i32,
}

/// The kernel's "not synchronised" status bit.
pub const STA_UNSYNC: i32 = 0x0040;
/// The clock state that means "not synchronised" (also called `TIME_BAD`).
pub const TIME_ERROR: i32 = 5;

/// Reads the status without changing anything (`modes = 0`).
#[cfg(target_os = "linux")]
pub fn read() -> io::Result<KernelClock> {
    // SAFETY: `timex` is plain old data, all-zero is a valid value (modes = 0: read only),
    // and the kernel writes only into the struct we pass, which lives for the call.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(KernelClock {
        state,
        status: tx.status,
    })
}

/// Not Linux: there is no such call; the caller decides what an unknown status means.
#[cfg(not(target_os = "linux"))]
pub fn read() -> io::Result<KernelClock> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reading_works_without_privilege_and_changes_nothing() {
        let a = super::read().expect("adjtimex");
        assert!((0..=5).contains(&a.state), "{a:?}");
        let b = super::read().expect("adjtimex");
        assert_eq!(a.status, b.status);
    }
}
