//! Per-engine accounting, written by whichever thread runs the engine (one
//! at a time) and read by the control plane and the compacting controller.

use std::sync::atomic::{AtomicU64, Ordering};

/// Log2 buckets of queueing delay in nanoseconds: bucket i holds delays in
/// [2^i, 2^(i+1)).
pub const BUCKETS: usize = 40;

pub struct EngineStats {
    /// Wall time spent in polls that found work (the engine's load).
    pub busy_ns: AtomicU64,
    pub polls: AtomicU64,
    pub busy_polls: AtomicU64,
    /// Units of work done (packets).
    pub work: AtomicU64,
    /// The engine's share of its threads' CPU time (`cpu_share`).
    cpu_ns: AtomicU64,
    /// How long work waited before a poll picked it up, at most: the time
    /// since the engine's previous poll, sampled when a poll found work.
    delay: [AtomicU64; BUCKETS],
    delay_max_ns: AtomicU64,
}

impl Default for EngineStats {
    fn default() -> Self {
        Self {
            busy_ns: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            busy_polls: AtomicU64::new(0),
            work: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            delay: std::array::from_fn(|_| AtomicU64::new(0)),
            delay_max_ns: AtomicU64::new(0),
        }
    }
}

/// A copy of the counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStatsSnapshot {
    pub busy_ns: u64,
    pub polls: u64,
    pub busy_polls: u64,
    pub work: u64,
    pub cpu_ns: u64,
    pub delay_p50_ns: u64,
    pub delay_p99_ns: u64,
    pub delay_max_ns: u64,
}

impl EngineStats {
    /// Records one poll. `since_last_ns` is the time since this engine's
    /// previous poll ended.
    #[inline]
    pub fn record(&self, work: usize, poll_ns: u64, since_last_ns: u64) {
        add(&self.polls, 1);
        if work == 0 {
            return;
        }
        add(&self.busy_polls, 1);
        add(&self.work, work as u64);
        add(&self.busy_ns, poll_ns);
        let bucket = (64 - since_last_ns.max(1).leading_zeros() as usize - 1).min(BUCKETS - 1);
        add(&self.delay[bucket], 1);
        if since_last_ns > self.delay_max_ns.load(Ordering::Relaxed) {
            self.delay_max_ns.store(since_last_ns, Ordering::Relaxed);
        }
    }

    /// Credits CPU time (by the thread running the engine).
    pub fn add_cpu_ns(&self, ns: u64) {
        add(&self.cpu_ns, ns);
    }

    /// The delay histogram's counts.
    pub fn delay_counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.delay[i].load(Ordering::Relaxed))
    }

    pub fn snapshot(&self) -> EngineStatsSnapshot {
        let counts: Vec<u64> = self
            .delay
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| -> u64 {
            if total == 0 {
                return 0;
            }
            let want = ((total as f64) * q).ceil() as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    // Report the bucket's upper bound (a conservative figure).
                    return (1u64 << (i + 1)) - 1;
                }
            }
            u64::MAX
        };
        EngineStatsSnapshot {
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
            busy_polls: self.busy_polls.load(Ordering::Relaxed),
            work: self.work.load(Ordering::Relaxed),
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed),
            delay_p50_ns: quantile(0.5),
            delay_p99_ns: quantile(0.99),
            delay_max_ns: self.delay_max_ns.load(Ordering::Relaxed),
        }
    }
}

/// Adds to a counter that only the thread running the engine writes (one
/// thread at a time; a migration hands the engine over through a channel,
/// which orders the writes): no locked read-modify-write needed.
#[inline]
fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_histogram() {
        let s = EngineStats::default();
        for _ in 0..98 {
            s.record(1, 100, 1000);
        }
        s.record(1, 100, 1_000_000);
        s.record(1, 100, 1_000_000);
        s.record(0, 50, 5);
        let snap = s.snapshot();
        assert_eq!(snap.polls, 101);
        assert_eq!(snap.busy_polls, 100);
        assert_eq!(snap.busy_ns, 10_000);
        assert!((1000..2048).contains(&snap.delay_p50_ns), "{snap:?}");
        assert!(snap.delay_p99_ns >= 1_000_000, "{snap:?}");
        assert_eq!(snap.delay_max_ns, 1_000_000);
    }
}
