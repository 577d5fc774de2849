//! Progress of the current file, shared between the uploader and whoever displays it.
//!
//! The uploader moves the position (server-confirmed offsets, and bytes handed to the socket
//! as the body streams); a [`Reporter`] thread draws a live line on a terminal or writes a log
//! line every few seconds otherwise.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;

/// Counters for the file being uploaded.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    name: Mutex<String>,
    total: AtomicU64,
    position: Arc<AtomicU64>,
    active: AtomicBool,
}

impl Progress {
    /// Starts showing `name`, `total` bytes long, at `position`.
    pub(crate) fn begin(&self, name: &str, total: u64, position: u64) {
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
        self.total.store(total, Ordering::Relaxed);
        self.position.store(position, Ordering::Relaxed);
        self.active.store(true, Ordering::Relaxed);
    }

    /// Sets the position (a confirmed offset, or the start of a chunk).
    pub(crate) fn set_position(&self, offset: u64) {
        self.position.store(offset, Ordering::Relaxed);
    }

    /// The counter that body readers add sent bytes to.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.position.clone()
    }

    /// (position, total size) of the current file.
    pub(crate) fn position_and_total(&self) -> (u64, u64) {
        (
            self.position.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }

    /// The file is done.
    pub(crate) fn finish(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Option<(String, u64, u64)> {
        self.active.load(Ordering::Relaxed).then(|| {
            let name = self.name.lock().unwrap_or_else(|e| e.into_inner()).clone();
            (
                name,
                self.position.load(Ordering::Relaxed),
                self.total.load(Ordering::Relaxed),
            )
        })
    }
}

/// Draws progress on stderr from a thread of its own until dropped.
pub(crate) struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    /// Starts drawing `progress`: live on a terminal, a log line every `log_every` otherwise.
    pub(crate) fn start(
        progress: Arc<Progress>,
        clock: Arc<dyn Clock>,
        live: bool,
        log_every: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Sample often (for a steady rate); draw live, or log every `log_every`.
            let tick = Duration::from_millis(250);
            let mut rate = Rate::default();
            let mut last_log = clock.now();
            while !flag.load(Ordering::Relaxed) {
                clock.sleep(tick, &flag);
                let Some((name, pos, total)) = progress.snapshot() else {
                    rate = Rate::default();
                    continue;
                };
                let now = clock.now();
                let line = render(&name, pos, total, rate.update(&name, pos, now));
                if live {
                    let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
                } else if now.saturating_duration_since(last_log) >= log_every {
                    last_log = now;
                    log::info!("{line}");
                }
            }
            if live {
                let _ = write!(std::io::stderr(), "\r\x1b[2K");
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A smoothed transfer rate.
#[derive(Debug, Default)]
struct Rate {
    name: String,
    last: Option<(Instant, u64)>,
    bytes_per_sec: f64,
}

impl Rate {
    fn update(&mut self, name: &str, pos: u64, now: Instant) -> f64 {
        if self.name != name {
            *self = Rate {
                name: name.to_string(),
                ..Rate::default()
            };
        }
        if let Some((t, p)) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let sample = pos.saturating_sub(p) as f64 / dt;
                self.bytes_per_sec = if self.bytes_per_sec == 0.0 {
                    sample
                } else {
                    0.9 * self.bytes_per_sec + 0.1 * sample
                };
            }
        }
        self.last = Some((now, pos));
        self.bytes_per_sec
    }
}

/// One progress line: name, bytes, percent, rate and ETA.
pub(crate) fn render(name: &str, pos: u64, total: u64, bytes_per_sec: f64) -> String {
    let pct = if total == 0 {
        100.0
    } else {
        pos as f64 * 100.0 / total as f64
    };
    let eta = if bytes_per_sec >= 1.0 {
        let secs = (total.saturating_sub(pos) as f64 / bytes_per_sec) as u64;
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        "--:--:--".to_string()
    };
    format!(
        "{name}: {} / {} ({pct:.1}%) {}/s ETA {eta}",
        human_bytes(pos),
        human_bytes(total),
        human_bytes(bytes_per_sec as u64)
    )
}

/// Bytes in binary units with one decimal.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bytes_percent_rate_and_eta() {
        assert_eq!(
            render(
                "a.mp4",
                512 * 1024 * 1024,
                1024 * 1024 * 1024,
                1024.0 * 1024.0
            ),
            "a.mp4: 512.0 MiB / 1.0 GiB (50.0%) 1.0 MiB/s ETA 0:08:32"
        );
        assert_eq!(
            render("e", 0, 0, 0.0),
            "e: 0 B / 0 B (100.0%) 0 B/s ETA --:--:--"
        );
    }

    #[test]
    fn rate_smooths_and_resets_per_file() {
        let mut r = Rate::default();
        let t = crate::clock::SystemClock.now();
        assert_eq!(r.update("a", 0, t), 0.0);
        assert_eq!(r.update("a", 1000, t + Duration::from_secs(1)), 1000.0);
        assert_eq!(r.update("a", 1000, t + Duration::from_secs(2)), 900.0);
        assert_eq!(r.update("b", 5, t + Duration::from_secs(3)), 0.0);
    }
}
