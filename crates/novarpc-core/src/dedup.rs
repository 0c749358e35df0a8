//! De-duplication of redelivered messages for drivers whose broker may
//! deliver a message twice; the RPC server applies it when the transport's
//! [`crate::Capabilities::redelivers`] is set.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Remembers recent message `_unique_id`s so a redelivered message is handled
/// once: at most `capacity` ids, each for at most `window`.
#[derive(Debug)]
pub struct DedupCache {
    capacity: usize,
    window: Duration,
    state: Mutex<DedupState>,
}

#[derive(Debug, Default)]
struct DedupState {
    seen: HashSet<Id, foldhash::fast::RandomState>,
    order: VecDeque<(Instant, Id)>,
}

/// An id as the cache keeps it: oslo's and novarpc's (32 hex digits)
/// inline, so that checking a request allocates nothing; any other id as
/// itself. Hashed with a randomly seeded hasher, as senders choose the ids.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Id {
    Hex([u8; 32]),
    Other(Box<str>),
}

impl Id {
    fn of(id: &str) -> Id {
        match id.as_bytes().try_into() {
            Ok(bytes) => Id::Hex(bytes),
            Err(_) => Id::Other(id.into()),
        }
    }
}

impl DedupCache {
    /// A cache of at most `capacity` ids (at least one), each remembered for
    /// at most `window`.
    pub fn new(capacity: usize, window: Duration) -> Self {
        DedupCache {
            capacity: capacity.max(1),
            window,
            state: Mutex::default(),
        }
    }

    /// Records `id`; returns true if it was already seen within the window.
    pub fn is_duplicate(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        while let Some((at, _)) = state.order.front() {
            if now.duration_since(*at) <= self.window && state.order.len() < self.capacity {
                break;
            }
            let (_, old) = state.order.pop_front().expect("front exists");
            state.seen.remove(&old);
        }
        let id = Id::of(id);
        if !state.seen.insert(id.clone()) {
            return true;
        }
        state.order.push_back((now, id));
        false
    }

    /// How many ids are remembered now (expired ones go on the next check).
    pub fn len(&self) -> usize {
        self.state.lock().order.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_duplicates_and_stays_bounded() {
        let cache = DedupCache::new(3, Duration::from_secs(60));
        assert!(!cache.is_duplicate("a"));
        assert!(cache.is_duplicate("a"));
        for id in ["b", "c", "d", "e"] {
            assert!(!cache.is_duplicate(id));
        }
        assert!(cache.len() <= 3);
        assert!(!cache.is_duplicate("a"), "evicted ids are forgotten");
    }

    #[test]
    fn forgets_after_the_window() {
        let cache = DedupCache::new(100, Duration::from_millis(0));
        assert!(!cache.is_duplicate("a"));
        std::thread::sleep(Duration::from_millis(2));
        assert!(!cache.is_duplicate("a"));
    }
}
