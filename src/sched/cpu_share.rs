//! Attributes a worker thread's CPU time to the engines it runs.
//!
//! The thread's CPU clock is read about once a millisecond (it is a system
//! call, too dear per poll) and the CPU used since the last reading is
//! shared among the engines in proportion to the time each spent in polls
//! that found work. CPU spent with no engine busy (empty polls, naps,
//! wake-ups) is overhead the engines cause by being polled: it is shared in
//! the same proportion, or evenly when none was busy. The engines' shares
//! thus add up to the thread's CPU time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::clock::{self, Stamp};
use super::stats::EngineStats;

/// How often a worker shares out its CPU time.
pub(super) const EVERY: Duration = Duration::from_millis(1);

pub(super) struct CpuShare {
    at: Stamp,
    thread_ns: u64,
    /// Each engine's busy time at the last sharing, in the worker's order.
    busy_marks: Vec<u64>,
    /// Each engine's busy time since then (scratch, kept to not allocate).
    busy: Vec<u64>,
}

impl CpuShare {
    pub(super) fn new() -> Self {
        Self {
            at: clock::now(),
            thread_ns: thread_cpu_ns(),
            busy_marks: Vec::new(),
            busy: Vec::new(),
        }
    }

    /// Whether it is time to share (cheap: a clock comparison).
    #[inline]
    pub(super) fn due(&self, now: Stamp) -> bool {
        now.since(self.at) >= EVERY
    }

    /// Shares the CPU used since the last call among `engines`, which must
    /// be the set the worker ran since then.
    pub(super) fn share<'a, I>(&mut self, engines: I)
    where
        I: Iterator<Item = &'a Arc<EngineStats>> + Clone,
    {
        let now_ns = thread_cpu_ns();
        let used = now_ns.saturating_sub(self.thread_ns);
        self.thread_ns = now_ns;
        self.at = clock::now();
        let count = engines.clone().count();
        if self.busy_marks.len() != count {
            // A fresh set: start from the current busy times.
            self.busy_marks.clear();
            self.busy_marks
                .extend(engines.clone().map(|s| s.busy_ns.load(Ordering::Relaxed)));
            self.busy.resize(count, 0);
        }
        if count == 0 {
            return;
        }
        for ((s, mark), busy) in engines
            .clone()
            .zip(self.busy_marks.iter_mut())
            .zip(self.busy.iter_mut())
        {
            let now = s.busy_ns.load(Ordering::Relaxed);
            *busy = now.saturating_sub(*mark);
            *mark = now;
        }
        let total: u64 = self.busy.iter().sum();
        for (s, busy) in engines.zip(self.busy.iter()) {
            let part = if total == 0 {
                used / count as u64
            } else {
                (u128::from(used) * u128::from(*busy) / u128::from(total)) as u64
            };
            s.add_cpu_ns(part);
        }
    }

    /// Forgets the engine set (call after it changed, having shared first).
    pub(super) fn reset_engines(&mut self) {
        self.busy_marks.clear();
    }
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID
    // needs nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}
