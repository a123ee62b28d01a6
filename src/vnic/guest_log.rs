//! Log lines a guest can trigger, rate-limited per vNIC.
//!
//! One `GuestLog` is shared by all queue-pair engines of a vNIC, so a guest
//! cannot multiply its log lines by spreading its mistakes over its queues.
//! It is touched only when a frame or chain is refused (a cold path), and
//! takes no lock: engines of one vNIC may run on different threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The interval of the daemon's vNICs: one line a second at most.
pub const INTERVAL: Duration = Duration::from_secs(1);

pub struct GuestLog {
    interval_ns: u64,
    epoch: Instant,
    /// When the last line was allowed (ns since `epoch`, plus one so that 0
    /// means never).
    last: AtomicU64,
    /// Lines refused since the last one allowed.
    suppressed: AtomicU64,
    /// No frame was refused for its source MAC since the guest connected.
    mac_hint_due: AtomicBool,
}

impl GuestLog {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            mac_hint_due: AtomicBool::new(true),
        }
    }

    /// `Some(suppressed_since_last)` when a line may be logged now.
    #[cold]
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last.load(Relaxed);
        let too_soon = last != 0 && now.saturating_sub(last) < self.interval_ns;
        // Of engines racing for one slot, one wins; the others count as
        // suppressed.
        if too_soon
            || self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Relaxed))
    }

    /// A guest driver started its rings: the first frame it sends from a
    /// wrong MAC is explained again.
    pub fn guest_connected(&self) {
        self.mac_hint_due.store(true, Relaxed);
    }

    /// `Some(suppressed)` for the first frame refused for its source MAC
    /// since the guest connected (within the rate limit), then `None` until
    /// it connects again: a guest on the wrong MAC refuses every frame, and
    /// one line says why.
    #[cold]
    pub fn mac_hint(&self) -> Option<u64> {
        if !self.mac_hint_due.load(Relaxed) {
            return None;
        }
        let suppressed = self.allow()?;
        self.mac_hint_due.swap(false, Relaxed).then_some(suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_one_mac_hint_per_connection() {
        let log = GuestLog::new(Duration::from_secs(3600));
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
        let log = GuestLog::new(Duration::ZERO);
        assert_eq!(log.mac_hint(), Some(0));
        for _ in 0..100 {
            assert_eq!(log.mac_hint(), None);
        }
        assert!(log.allow().is_some(), "other lines go on");
        log.guest_connected();
        assert!(log.mac_hint().is_some());
        assert_eq!(log.mac_hint(), None);
        // The hint waits for the rate limit rather than being lost.
        let log = GuestLog::new(Duration::from_secs(3600));
        assert!(log.allow().is_some());
        assert_eq!(log.mac_hint(), None);
        assert!(log.mac_hint_due.load(Relaxed));
    }
}
