use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

/// The order in which the hosts of a transport URL are tried (oslo's
/// `kombu_failover_strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverStrategy {
    /// Try the hosts in the order the URL lists them, wrapping around (the
    /// default).
    #[default]
    RoundRobin,
    /// Shuffle the hosts once, then pick one at random for each attempt, so
    /// that many clients spread over the brokers.
    Shuffle,
}

/// The hosts of a transport URL, handed out one after the other.
#[derive(Debug)]
pub struct HostRing<H> {
    hosts: Vec<H>,
    next: AtomicUsize,
    strategy: FailoverStrategy,
}

impl<H> HostRing<H> {
    /// `hosts` must not be empty.
    pub fn new(mut hosts: Vec<H>, strategy: FailoverStrategy) -> Self {
        assert!(!hosts.is_empty(), "a host ring needs at least one host");
        if strategy == FailoverStrategy::Shuffle {
            fastrand::shuffle(&mut hosts);
        }
        HostRing {
            hosts,
            next: AtomicUsize::new(0),
            strategy,
        }
    }

    /// The host to try next; each call moves on to the following one.
    pub fn next_host(&self) -> &H {
        let index = match self.strategy {
            FailoverStrategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
            FailoverStrategy::Shuffle => fastrand::usize(..self.hosts.len()),
        };
        &self.hosts[index % self.hosts.len()]
    }

    /// All the hosts (after the shuffle, with [`FailoverStrategy::Shuffle`]),
    /// e.g. to describe them.
    pub fn hosts(&self) -> &[H] {
        &self.hosts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_through_hosts() {
        let ring = HostRing::new(vec!["a", "b", "c"], FailoverStrategy::RoundRobin);
        let order: Vec<_> = (0..5).map(|_| *ring.next_host()).collect();
        assert_eq!(order, ["a", "b", "c", "a", "b"]);
    }
}
