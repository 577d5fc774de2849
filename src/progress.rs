//! Progress of the current file, shared between the uploader and whoever displays it.
//!
//! Key idea: the position is what the server has, never what was merely handed over: the offset
//! the server confirmed, plus the bytes of the body in flight that the peer's kernel
//! acknowledged ([`Delivery`]). Bytes taken by a socket buffer are not counted, and the last
//! byte counts only when the server confirms it, so 100 % means the server holds the file. A
//! [`Reporter`] thread draws a live line on a terminal or writes a log line every few seconds
//! otherwise; the rate is an exponential average over [`RATE_WINDOW`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::transport::Delivery;

/// The time constant of the rate's exponential average. Cellular uplinks swing from second to
/// second; 8 s keeps the ETA steady and still follows a lasting change within half a minute.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(8);
/// An ETA is shown once the rate has been watched this long.
const ETA_AFTER: Duration = Duration::from_secs(2);

/// Counters for the file being uploaded.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    name: Mutex<String>,
    total: AtomicU64,
    /// The offset the server confirmed (or at which the body in flight starts).
    confirmed: AtomicU64,
    /// Body bytes handed to the transport since `confirmed`: a cap on the acknowledged count.
    handed: Arc<AtomicU64>,
    /// What the peer acknowledged of the body in flight.
    delivery: Arc<Delivery>,
    active: AtomicBool,
}

impl Progress {
    /// Starts showing `name`, `total` bytes long, at `position`.
    pub(crate) fn begin(&self, name: &str, total: u64, position: u64) {
        *self.name.lock().unwrap_or_else(|e| e.into_inner()) = name.to_string();
        self.total.store(total, Ordering::Relaxed);
        self.set_position(position);
        self.active.store(true, Ordering::Relaxed);
    }

    /// Sets the position to an offset the server confirmed, or to where the next body starts.
    pub(crate) fn set_position(&self, offset: u64) {
        // Forget the body first: a reader in between sees too little, never too much.
        self.handed.store(0, Ordering::Relaxed);
        self.delivery.forget();
        self.confirmed.store(offset, Ordering::Relaxed);
    }

    /// The counter that body readers add the bytes they hand over to.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        self.handed.clone()
    }

    /// What the transport tells of the body in flight.
    pub(crate) fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// (position, total size) of the current file; the position is below the total until the
    /// server confirmed the last byte.
    pub(crate) fn position_and_total(&self) -> (u64, u64) {
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        if confirmed >= total {
            return (confirmed, total);
        }
        let handed = self.handed.load(Ordering::Relaxed);
        let in_flight = self.delivery.acked().unwrap_or(0).min(handed);
        (confirmed.saturating_add(in_flight).min(total - 1), total)
    }

    /// The file is done.
    pub(crate) fn finish(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Option<(String, u64, u64)> {
        self.active.load(Ordering::Relaxed).then(|| {
            let name = self.name.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let (position, total) = self.position_and_total();
            (name, position, total)
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
            let (mut rate, mut shown) = (Rate::default(), String::new());
            let mut last_log = clock.now();
            while !flag.load(Ordering::Relaxed) {
                clock.sleep(tick, &flag);
                let Some((name, pos, total)) = progress.snapshot() else {
                    rate = Rate::default();
                    continue;
                };
                if name != shown {
                    (rate, shown) = (Rate::default(), name.clone());
                }
                let now = clock.now();
                rate.update(pos, now);
                let line = render(&name, pos, total, rate.settled());
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
            // Wake it from its tick now: `ferry upload` exits only after this join, and a
            // sleeping tick cost every upload up to 100 ms.
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// e^-x for x >= 0, to within 2 ulp (a test checks it against `f64::exp`).
///
/// Not `f64::exp`: it is ferry's only call into libm, and on the glibc builds loading libm.so
/// for it cost 0.3 MiB of resident pages (its symbol tables and the code around `exp`).
/// x = k ln 2 + r with |r| <= ln 2 / 2; e^-r by its series (14 terms: the rest is below 1e-17),
/// and 2^-k put in the exponent.
fn decay(x: f64) -> f64 {
    // Over 708, e^-x is below 2^-1021: 0 for a rate. NaN keeps the old average.
    if x.is_nan() {
        return 1.0;
    }
    if x > 708.0 {
        return 0.0;
    }
    let x = x.max(0.0);
    let k = (x / std::f64::consts::LN_2).round();
    // ln 2 in two parts (fdlibm's): k * LN2_HI is exact, so r keeps its low bits.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Horner: 1 - r (1 - r/2 (1 - r/3 (...))), the smallest terms first.
    let mut sum = 1.0;
    for n in (1..=14).rev() {
        sum = 1.0 - r / f64::from(n) * sum;
    }
    // k <= 1022 here, so 1023 - k is a normal exponent.
    let scale = f64::from_bits(((1023.0 - k) as u64) << 52);
    sum * scale
}

/// A transfer rate: an exponential average over [`RATE_WINDOW`], whatever the sampling rhythm.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rate {
    last: Option<(Instant, u64)>,
    /// The weighted sum of samples, and the weight it holds: under 1 while few windows have
    /// passed, and dividing by it makes the early rate the plain average so far instead of one
    /// dragged toward zero.
    sum: f64,
    weight: f64,
    watched: Duration,
}

impl Rate {
    /// Takes the position `pos` at `now`; returns bytes per second.
    pub(crate) fn update(&mut self, pos: u64, now: Instant) -> f64 {
        if let Some((t, p)) = self.last {
            let dt = now.saturating_duration_since(t);
            if dt.is_zero() {
                return self.bytes_per_sec();
            }
            // A position that went back (a chunk sent again) is a pause, not a negative rate.
            let sample = pos.saturating_sub(p) as f64 / dt.as_secs_f64();
            let keep = decay(dt.as_secs_f64() / RATE_WINDOW.as_secs_f64());
            self.sum = keep * self.sum + (1.0 - keep) * sample;
            self.weight = keep * self.weight + (1.0 - keep);
            self.watched += dt;
        }
        self.last = Some((now, pos));
        self.bytes_per_sec()
    }

    /// Bytes per second; 0 before two positions were taken.
    pub(crate) fn bytes_per_sec(&self) -> f64 {
        if self.weight > 0.0 {
            self.sum / self.weight
        } else {
            0.0
        }
    }

    /// The rate once it has been watched long enough for an ETA, else `None`.
    pub(crate) fn settled(&self) -> Option<f64> {
        (self.watched >= ETA_AFTER).then(|| self.bytes_per_sec())
    }
}

/// One progress line: name, bytes, percent (100 % only when all is there), rate and ETA once
/// the rate is known.
pub(crate) fn render(name: &str, pos: u64, total: u64, bytes_per_sec: Option<f64>) -> String {
    // Rounded down: 99.96 % is not "100.0%".
    let permille = if total == 0 {
        1000
    } else {
        (u128::from(pos.min(total)) * 1000 / u128::from(total)) as u64
    };
    let (rate, eta) = match bytes_per_sec {
        Some(r) if r >= 1.0 => {
            let secs = (total.saturating_sub(pos) as f64 / r) as u64;
            let eta = format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
            (human_bytes(r as u64), eta)
        }
        Some(_) => ("0 B".to_string(), "--:--:--".to_string()),
        None => ("--".to_string(), "--:--:--".to_string()),
    };
    format!(
        "{name}: {} / {} ({}.{}%) {rate}/s ETA {eta}",
        human_bytes(pos),
        human_bytes(total),
        permille / 10,
        permille % 10
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
    fn decay_is_exp_of_minus_x() {
        let mut x = 0.0;
        while x <= 708.0 {
            let (got, want) = (decay(x), (-x).exp());
            let ulp = f64::from_bits(want.to_bits() + 1) - want;
            assert!(
                (got - want).abs() <= 2.0 * ulp,
                "decay({x}) = {got:e}, e^-x = {want:e}"
            );
            x += if x < 2.0 { 0.000_731 } else { 0.173 };
        }
        assert_eq!(decay(0.0), 1.0);
        assert_eq!(
            decay(708.01),
            0.0,
            "e^-708.01 is below 2^-1021: 0 for a rate"
        );
        assert_eq!(decay(1000.0), 0.0);
        assert_eq!(decay(f64::INFINITY), 0.0);
        assert_eq!(decay(-1.0), 1.0, "no negative time");
    }

    #[test]
    fn renders_bytes_percent_rate_and_eta() {
        assert_eq!(
            render(
                "a.mp4",
                512 * 1024 * 1024,
                1024 * 1024 * 1024,
                Some(1024.0 * 1024.0)
            ),
            "a.mp4: 512.0 MiB / 1.0 GiB (50.0%) 1.0 MiB/s ETA 0:08:32"
        );
        assert_eq!(
            render("e", 0, 0, Some(0.0)),
            "e: 0 B / 0 B (100.0%) 0 B/s ETA --:--:--"
        );
        assert_eq!(
            render("s", 10, 100, None),
            "s: 10 B / 100 B (10.0%) --/s ETA --:--:--"
        );
    }

    #[test]
    fn a_byte_short_is_not_a_hundred_percent() {
        let total = 8 * 1024 * 1024;
        assert!(render("f", total - 1, total, None).contains("(99.9%)"));
        assert!(render("f", total, total, None).contains("(100.0%)"));
    }

    fn at(secs: f64) -> Instant {
        #[allow(
            clippy::disallowed_methods,
            reason = "a fixed origin for the arithmetic"
        )]
        let t0 = Instant::now();
        t0 + Duration::from_secs_f64(secs)
    }

    #[test]
    fn the_rate_is_the_plain_average_at_first_and_steady_through_a_stall() {
        let t0 = at(0.0);
        let mut r = Rate::default();
        assert_eq!(r.update(0, t0), 0.0);
        assert_eq!(r.settled(), None);
        let first = r.update(1000, t0 + Duration::from_secs(1));
        assert!((first - 1000.0).abs() < 1e-6, "{first}");
        // 1000 B/s sampled four times a second for 20 s, then one second of nothing (a
        // cellular stall): the rate dips by about 1/8, not to zero.
        let mut pos = 1000;
        let mut t = t0 + Duration::from_secs(1);
        for _ in 0..80 {
            t += Duration::from_millis(250);
            pos += 250;
            r.update(pos, t);
        }
        let steady = r.settled().unwrap();
        assert!((steady - 1000.0).abs() < 1.0, "{steady}");
        for _ in 0..4 {
            t += Duration::from_millis(250);
            r.update(pos, t);
        }
        let dipped = r.bytes_per_sec();
        assert!((860.0..900.0).contains(&dipped), "{dipped}");
        // A position that goes back is no negative rate.
        assert!(r.update(0, t + Duration::from_secs(1)) > 0.0);
    }

    #[test]
    fn the_position_is_below_the_total_until_the_server_confirms_it() {
        let p = Progress::default();
        p.begin("f", 100, 0);
        p.counter().fetch_add(100, Ordering::Relaxed);
        assert_eq!(p.position_and_total(), (0, 100), "handed over is not sent");
        p.set_position(60);
        assert_eq!(p.position_and_total(), (60, 100));
        p.set_position(100);
        assert_eq!(p.position_and_total(), (100, 100));
    }
}
