//! The upload queue: the ready files of the spool that come first, held in a bounded window.
//!
//! Key idea: the spool itself is the queue. Holding one record per waiting file (in memory
//! or in the state store, whose index lives in memory too) grows the process with the
//! spool: 100,000 queued records cost the store 26-40 MiB. Instead the daemon keeps only the `cap`
//! oldest ready files it knows of; when files had to be left out and the window drains, a
//! scan of the spool refills it. Memory stays bounded, the order stays what the files are
//! ranked by (`O`: the modification time, oldest first; the daemon ranks by priority class,
//! then age in the configured order).

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::SystemTime;

/// The first known ready files by rank `O` (lowest first), at most `cap` of them, each named
/// by a key `K` (the daemon's is the store's `FileKey`).
#[derive(Debug)]
pub(crate) struct Window<K, O = SystemTime> {
    cap: usize,
    entries: BTreeSet<(O, K)>,
    index: HashMap<K, O>,
    complete: bool,
    found_by_scan: u64,
    taken_since_scan: u64,
}

impl<K: Ord + Hash + Clone, O: Ord + Clone> Window<K, O> {
    /// An empty window holding at most `cap` files.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: BTreeSet::new(),
            index: HashMap::new(),
            complete: true,
            found_by_scan: 0,
            taken_since_scan: 0,
        }
    }

    /// A full scan starts: forget everything, the scan offers every ready file again.
    pub(crate) fn begin_scan(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.complete = true;
        self.found_by_scan = 0;
        self.taken_since_scan = 0;
    }

    /// Offers a ready file (`key`, its rank); one ranked after the window's last is left out
    /// when the window is full (a later scan finds it again).
    pub(crate) fn offer(&mut self, key: &K, rank: O, by_scan: bool) {
        if by_scan {
            self.found_by_scan += 1;
        }
        if let Some(old) = self.index.remove(key) {
            self.entries.remove(&(old, key.clone()));
        }
        self.entries.insert((rank.clone(), key.clone()));
        self.index.insert(key.clone(), rank);
        if self.entries.len() > self.cap {
            if let Some((t, k)) = self.entries.pop_last() {
                self.index.remove(&k);
                let _ = t;
            }
            self.complete = false;
        }
    }

    /// Removes `key` (it vanished, failed or changed); false when it was not there.
    pub(crate) fn remove(&mut self, key: &K) -> bool {
        match self.index.remove(key) {
            Some(t) => self.entries.remove(&(t, key.clone())),
            None => false,
        }
    }

    /// True when `key` is waiting.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Takes the first waiting file.
    #[cfg(test)]
    pub(crate) fn pop_oldest(&mut self) -> Option<K> {
        self.take_oldest_where(|_| true).map(|(_, k)| k)
    }

    /// Takes the first waiting file that `pred` accepts, with its rank.
    pub(crate) fn take_oldest_where(&mut self, pred: impl Fn(&K) -> bool) -> Option<(O, K)> {
        let found = self.entries.iter().find(|(_, k)| pred(k)).cloned()?;
        self.entries.remove(&found);
        self.index.remove(&found.1);
        self.taken_since_scan += 1;
        Some(found)
    }

    /// The waiting files, in rank order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(_, k)| k)
    }

    /// The rank of the first waiting file that `pred` accepts, without taking it.
    pub(crate) fn first_rank_where(&self, pred: impl Fn(&K) -> bool) -> Option<&O> {
        self.entries.iter().find(|(_, k)| pred(k)).map(|(o, _)| o)
    }

    /// True when the window ran dry but the spool holds more ready files: scan again.
    pub(crate) fn needs_refill(&self) -> bool {
        self.entries.is_empty() && !self.complete
    }

    /// How many files are waiting, as far as the last scan and the events since can tell.
    pub(crate) fn waiting(&self) -> u64 {
        let held = self.entries.len() as u64;
        if self.complete {
            held
        } else {
            held.max(self.found_by_scan.saturating_sub(self.taken_since_scan))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn hands_out_oldest_first_and_never_twice() {
        let mut w = Window::new(10);
        w.offer(&"/c", t(30), true);
        w.offer(&"/a", t(10), true);
        w.offer(&"/b", t(20), true);
        w.offer(&"/b", t(20), false);
        assert_eq!(w.waiting(), 3);
        assert_eq!(w.pop_oldest(), Some("/a"));
        assert!(w.remove(&"/c"));
        assert!(!w.remove(&"/c"));
        assert_eq!(w.pop_oldest(), Some("/b"));
        assert_eq!(w.pop_oldest(), None);
        assert!(!w.needs_refill(), "everything the scan found fit");
    }

    #[test]
    fn a_full_window_keeps_the_oldest_and_asks_for_a_refill() {
        let mut w = Window::new(2);
        w.begin_scan();
        for (k, s) in [("/d", 40), ("/b", 20), ("/a", 10), ("/c", 30)] {
            w.offer(&k, t(s), true);
        }
        assert_eq!(w.waiting(), 4, "the scan saw 4 ready files");
        assert!(w.contains(&"/a") && w.contains(&"/b") && !w.contains(&"/c"));
        w.offer(&"/e", t(50), false);
        assert!(
            !w.contains(&"/e"),
            "newer than the window: left for the next scan"
        );
        assert_eq!(w.pop_oldest(), Some("/a"));
        assert_eq!(w.pop_oldest(), Some("/b"));
        assert!(w.needs_refill());
        assert_eq!(w.waiting(), 2);
        w.begin_scan();
        w.offer(&"/c", t(30), true);
        assert!(!w.needs_refill());
        assert_eq!(w.pop_oldest(), Some("/c"));
    }

    #[test]
    fn an_older_file_displaces_the_newest() {
        let mut w = Window::new(2);
        w.offer(&"/b", t(20), true);
        w.offer(&"/c", t(30), true);
        w.offer(&"/a", t(10), false);
        assert!(w.contains(&"/a") && w.contains(&"/b") && !w.contains(&"/c"));
    }
}
