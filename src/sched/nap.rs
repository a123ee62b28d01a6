//! How long a compacting worker naps when work arrives densely.

use std::time::Duration;

use super::clock;

/// A compacting worker's nap length, adapted to the arrival rate: as long
/// as the delay bound allows when work trickles in (few wake-ups, large
/// batches; a wake-up costs about 20 µs of CPU on a VM), shorter when the
/// fullest input ring got more than half full during a nap (at that rate a
/// longer nap would fill it, stall the sender and cost rate).
pub(super) struct NapLength {
    /// How long work may wait: the period from falling asleep to polling.
    pub(super) current: Duration,
    longest: Duration,
    /// How much later than asked the kernel wakes us (smoothed).
    overshoot: Duration,
}

impl NapLength {
    /// Below this a nap costs about as much as the work it batches.
    pub(super) const SHORTEST: Duration = Duration::from_micros(5);
    /// How full a nap may let the fullest ring get.
    const FILL_TARGET: f64 = 0.5;

    /// `bound` is the group's queueing-delay bound: a nap takes at most
    /// seven eighths of it (its lateness is asked off already), leaving the
    /// rest for the round that follows. A wake-up costs about 20 µs here,
    /// so at a steady light load the nap is what sets the CPU overhead.
    pub(super) fn new(bound: Duration) -> Self {
        let longest = (bound * 7 / 8).max(Self::SHORTEST);
        Self {
            current: longest,
            longest,
            overshoot: Duration::ZERO,
        }
    }

    /// Sleeps for the current period, asking the kernel for less by its
    /// usual lateness; returns how long it slept.
    pub(super) fn nap(&mut self) -> Duration {
        let ask = self
            .current
            .saturating_sub(self.overshoot)
            .max(Self::SHORTEST / 2);
        let t = clock::now();
        std::thread::sleep(ask);
        let slept = clock::now().since(t);
        self.overshoot = (self.overshoot * 7 + slept.saturating_sub(ask)) / 8;
        slept
    }

    /// Adapts to how full the fullest ring got (`fill`, 0..=1) over a nap
    /// of `slept`: at once when the nap was too long, halfway when it could
    /// be longer (a noisy reading should not swing it).
    pub(super) fn adapt(&mut self, fill: f64, slept: Duration) {
        let target = if fill > 0.0 {
            slept
                .mul_f64((Self::FILL_TARGET / fill).min(1e3))
                .clamp(Self::SHORTEST, self.longest)
        } else {
            self.longest
        };
        self.current = if target < self.current {
            target
        } else {
            (self.current + target) / 2
        };
    }
}
