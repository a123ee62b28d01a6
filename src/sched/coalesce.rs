//! When a sleeping worker whose engines found nothing should nap, keep
//! polling a little longer, or arm its wake-ups and block (NAPI style).
//!
//! Every wake-up costs about 20 µs of CPU on this VM, whether a nap's timer
//! or a guest kick ends it, so the choice is about how many wake-ups the
//! next piece of work will cost:
//!
//! - work arriving densely (gaps no longer than a couple of naps): nap. One
//!   wake-up per nap gathers everything that arrived meanwhile, without a
//!   guest kick per packet.
//! - work arriving sparsely: block on the wake fds. Napping through a gap of
//!   G costs G / nap wake-ups; blocking costs one, on the kick itself.
//! - before blocking, keep polling for a short quiet period, but only while
//!   work often comes back within it (the spin then saves a wake-up; when it
//!   rarely does, it is CPU spent for nothing, e.g. a ping every 10 ms).
//!
//! The gap is measured from the first empty round to the round that finds
//! work again, whether the worker napped, polled or blocked meanwhile. A
//! spell spent only polling that ended with work counts as a spin that paid
//! however long it took: threads that share a CPU wait for it between
//! polls, and judging those spins by the clock would make busy threads
//! block instead of yielding to each other.

use std::time::Duration;

use super::clock::Stamp;

/// What an idle worker does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Poll again (the quiet period is not over).
    Poll,
    /// Nap without asking for kicks, then poll.
    Nap,
    /// Arm wake-ups and block.
    Block,
}

/// The default quiet period: about one wake-up's cost, so a spin that ends
/// with work found never costs more than the wake-up it saved.
pub const QUIET: Duration = Duration::from_micros(30);

/// Work counts as sparse when gaps average more than this many naps:
/// blocking then costs one wake-up plus arming (a few cheap syscalls and
/// ring writes), napping at least this many.
const SPARSE_NAPS: f64 = 2.0;

/// While work counts as dense, a spell this many naps long without work
/// means it stopped: block. Not sooner: dense work with short lulls would
/// block in each, paying a kick and a wake-up from an idle vCPU each time
/// (with two naps the p99 RTT at 1-10 % load was 1.2-1.5 ms, against about
/// 0.3 ms before blocking came in).
const NAPS_BEFORE_BLOCK: f64 = 8.0;

/// Weight of the newest sample in the running averages.
const WEIGHT: f64 = 1.0 / 8.0;

/// Longest gap a sample counts for: one very long idle spell should not make
/// the next burst look sparse for long.
const GAP_CAP_NS: f64 = 10e6;

/// Spin through the quiet period only when at least this share of recent
/// gaps ended within it.
const HIT_SHARE: f64 = 0.25;

pub(super) struct Coalescer {
    quiet: Duration,
    /// Running average of idle gaps, in ns.
    gap_ns: f64,
    /// Running share of gaps that ended within the quiet period.
    hits: f64,
    /// When the current idle spell began.
    idle_since: Option<Stamp>,
    /// The current spell included a nap or a block.
    slept: bool,
}

impl Coalescer {
    pub(super) fn new(quiet: Duration) -> Self {
        Self {
            quiet,
            // Until something arrives, work counts as sparse (no naps) and
            // spinning as worthwhile; a few long gaps teach otherwise.
            gap_ns: GAP_CAP_NS,
            hits: 1.0,
            idle_since: None,
            slept: false,
        }
    }

    /// A round found work at `now`: ends the idle spell, if any, and learns
    /// its length.
    #[inline]
    pub(super) fn work(&mut self, now: Stamp) {
        if let Some(since) = self.idle_since.take() {
            let gap = now.nanos_since(since) as f64;
            self.gap_ns += (gap.min(GAP_CAP_NS) - self.gap_ns) * WEIGHT;
            let slept = std::mem::take(&mut self.slept);
            let hit = if !slept || gap <= self.quiet.as_nanos() as f64 {
                1.0
            } else {
                0.0
            };
            self.hits += (hit - self.hits) * WEIGHT;
        }
    }

    /// A round found nothing at `now`; `nap` is how long a nap would last,
    /// or `None` for a worker that never naps.
    pub(super) fn idle(&mut self, now: Stamp, nap: Option<Duration>) -> Step {
        let since = *self.idle_since.get_or_insert(now);
        let idle_ns = now.nanos_since(since) as f64;
        if let Some(nap) = nap {
            let nap_ns = nap.as_nanos() as f64;
            // Dense, and this spell has not yet outlasted what dense work
            // would leave: nap.
            if self.gap_ns <= SPARSE_NAPS * nap_ns && idle_ns < NAPS_BEFORE_BLOCK * nap_ns {
                self.slept = true;
                return Step::Nap;
            }
        }
        if !self.slept && self.hits >= HIT_SHARE && idle_ns < self.quiet.as_nanos() as f64 {
            return Step::Poll;
        }
        self.slept = true;
        Step::Block
    }

    /// The running average gap.
    #[cfg(test)]
    pub(super) fn gap(&self) -> Duration {
        Duration::from_nanos(self.gap_ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock;
    use super::*;

    /// Stamps `us` microseconds after a base, computed rather than waited
    /// for: on a busy machine a stamp read from the clock could land far
    /// later than the test means.
    struct Clock {
        base: Stamp,
    }
    impl Clock {
        fn new() -> Self {
            Self { base: clock::now() }
        }
        fn at(&self, us: u64) -> Stamp {
            self.base.plus_nanos(us * 1000)
        }
    }

    #[test]
    fn an_idle_worker_spins_through_the_quiet_period_then_blocks() {
        let c = Clock::new();
        let mut co = Coalescer::new(QUIET);
        let nap = Some(Duration::from_micros(150));
        assert_eq!(co.idle(c.at(0), nap), Step::Poll, "no naps before work");
        assert_eq!(co.idle(c.at(31), nap), Step::Block);
        assert_eq!(co.idle(c.at(32), None), Step::Block, "and stays blocked");
    }

    #[test]
    fn a_spin_that_found_work_late_still_paid() {
        let c = Clock::new();
        let mut co = Coalescer::new(Duration::from_micros(20));
        // The thread polled (yielding) and found work only after 100 µs
        // (other threads had the CPU): still worth spinning.
        for i in 0..32 {
            assert_eq!(co.idle(c.at(i * 200), None), Step::Poll);
            co.work(c.at(i * 200 + 100));
        }
        assert_eq!(co.idle(c.at(7000), None), Step::Poll);
    }

    #[test]
    fn dense_work_naps_and_blocks_once_the_spell_outlasts_eight_naps() {
        let nap = Some(Duration::from_micros(100));
        let c = Clock::new();
        let mut co = Coalescer::new(QUIET);
        // Work every ~50 µs for a while.
        let mut t = 0;
        for _ in 0..64 {
            co.idle(c.at(t), nap);
            t += 50;
            co.work(c.at(t));
        }
        assert!(co.gap() < Duration::from_micros(200), "{:?}", co.gap());
        assert_eq!(co.idle(c.at(t), nap), Step::Nap);
        assert_eq!(co.idle(c.at(t + 750), nap), Step::Nap);
        // Eight naps' worth without work: traffic stopped; block.
        assert_eq!(co.idle(c.at(t + 810), nap), Step::Block);
    }

    #[test]
    fn sparse_work_blocks_and_spins_only_when_work_comes_back_within_the_quiet_period() {
        let nap = Some(Duration::from_micros(100));
        let c = Clock::new();
        let mut co = Coalescer::new(Duration::from_micros(200));
        // A ping every 2 ms: after a few wasted spins, block at once.
        let mut t = 0;
        for _ in 0..16 {
            co.idle(c.at(t), nap);
            co.idle(c.at(t + 201), nap);
            t += 2000;
            co.work(c.at(t));
        }
        assert_eq!(co.idle(c.at(t), nap), Step::Block);
        co.work(c.at(t));
        // Now a burst whose gaps end within the quiet period, then a long
        // silence: the average still says sparse, but the spin pays.
        for _ in 0..8 {
            co.idle(c.at(t), None);
            t += 20;
            co.work(c.at(t));
        }
        assert_eq!(co.idle(c.at(t), None), Step::Poll);
        assert_eq!(co.idle(c.at(t + 100), None), Step::Poll);
        assert_eq!(
            co.idle(c.at(t + 250), None),
            Step::Block,
            "quiet period over"
        );
    }
}
