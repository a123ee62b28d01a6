//! A cheap monotonic clock for per-poll accounting.
//!
//! Workers take a timestamp every polling round. On a VM a `clock_gettime`
//! costs about as much as a whole round of empty polls (measured: 29 % of a
//! dedicated worker's time at light load), which shows up as latency. On
//! x86_64 with an invariant TSC the time stamp counter is read directly and
//! converted with a rate calibrated once against the system clock;
//! elsewhere it falls back to `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A point in time, comparable only with stamps from this module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    /// Nanoseconds from `earlier` to `self` (0 if `earlier` is later).
    #[inline]
    pub fn nanos_since(self, earlier: Stamp) -> u64 {
        let ticks = self.0.saturating_sub(earlier.0);
        (ticks as f64 * source().ns_per_tick) as u64
    }

    /// The stamp `nanos` after this one, without waiting for it (tests
    /// build timelines this way, so that a busy machine cannot move them).
    #[cfg(test)]
    pub fn plus_nanos(self, nanos: u64) -> Stamp {
        Stamp(self.0 + (nanos as f64 / source().ns_per_tick).ceil() as u64)
    }

    /// [`Self::nanos_since`] as a `Duration`.
    #[inline]
    pub fn since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.nanos_since(earlier))
    }
}

/// Reads the clock.
#[inline]
pub fn now() -> Stamp {
    let src = source();
    if src.tsc {
        Stamp(read_tsc())
    } else {
        Stamp(u64::try_from(src.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

struct Source {
    tsc: bool,
    ns_per_tick: f64,
    origin: Instant,
}

fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(calibrate)
}

/// Measures the TSC rate against the system clock over a few milliseconds
/// (the error is well under 1 %, plenty for accounting).
fn calibrate() -> Source {
    let origin = Instant::now();
    let fallback = Source {
        tsc: false,
        ns_per_tick: 1.0,
        origin,
    };
    if !invariant_tsc() {
        return fallback;
    }
    let (t0, c0) = (Instant::now(), read_tsc());
    std::thread::sleep(Duration::from_millis(5));
    let (t1, c1) = (Instant::now(), read_tsc());
    let ticks = c1.saturating_sub(c0);
    if ticks == 0 {
        return fallback;
    }
    Source {
        tsc: true,
        ns_per_tick: (t1 - t0).as_nanos() as f64 / ticks as f64,
        origin,
    }
}

/// Whether the TSC ticks at a constant rate through frequency changes and
/// idle states, as the kernel reports it.
fn invariant_tsc() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| {
            s.lines().find(|l| l.starts_with("flags")).is_some_and(|l| {
                let flags: Vec<&str> = l.split_whitespace().collect();
                flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
            })
        })
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn read_tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions; it is available on every x86_64
    // CPU and only reads the time stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn read_tsc() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_system_clock() {
        let (a, t) = (now(), Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (b, elapsed) = (now(), t.elapsed());
        let ns = b.nanos_since(a) as f64;
        let want = elapsed.as_nanos() as f64;
        assert!(
            (ns - want).abs() < want * 0.05,
            "clock says {ns} ns, system clock {want} ns"
        );
        assert_eq!(a.nanos_since(b), 0, "never negative");
    }
}
