//! The compacting policy's controller: every window it measures each
//! engine's load (share of a thread's time spent in polls that found work)
//! and queueing delay, adds a thread and moves engines onto it when a thread
//! is overloaded or an engine waits longer than the bound, and folds the
//! least loaded thread's engines back when the rest can carry them.
//!
//! Pure policy: `decide` sees workers and engines only as opaque keys with
//! loads, so it is tested without threads; `group.rs` runs the controller
//! thread and carries its plans out.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::stats::{EngineStats, BUCKETS};
use super::EngineId;

/// How often the controller decides.
pub(super) const WINDOW: Duration = Duration::from_millis(20);
/// A thread busier than this is overloaded.
const HIGH: f64 = 0.75;
/// Fold when the load would fit on one thread fewer at this occupancy...
const LOW: f64 = 0.5;
/// ...for this many windows in a row (hysteresis against flapping).
const CALM_WINDOWS: u32 = 10;

/// One engine's figures for the last window.
#[derive(Clone, Copy, Debug)]
pub(super) struct Load {
    /// Fraction of the window spent busy.
    pub busy: f64,
    /// p99 of queueing delay in the window exceeded the bound.
    pub late: bool,
}

/// What the controller remembers between windows.
pub(super) struct ControlState {
    last: HashMap<EngineId, (u64, [u64; BUCKETS])>,
    at: Instant,
    calm: u32,
}

impl Default for ControlState {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            at: Instant::now(),
            calm: 0,
        }
    }
}

impl ControlState {
    /// Each engine's load since the previous call.
    pub(super) fn measure(
        &mut self,
        stats: &[(EngineId, Arc<EngineStats>)],
        bound: Duration,
    ) -> HashMap<EngineId, Load> {
        let now = Instant::now();
        let window = now.duration_since(self.at).as_nanos().max(1) as f64;
        self.at = now;
        let mut out = HashMap::new();
        let mut last = HashMap::new();
        for (id, s) in stats {
            let busy = s.busy_ns.load(Ordering::Relaxed);
            let counts = s.delay_counts();
            let (pbusy, pcounts) = self.last.get(id).copied().unwrap_or((busy, counts));
            let delta: Vec<u64> = counts
                .iter()
                .zip(pcounts.iter())
                .map(|(a, b)| a - b)
                .collect();
            let total: u64 = delta.iter().sum();
            // Late: samples in buckets wholly at or above the bound (bucket
            // i holds [2^i, 2^(i+1)) ns). Napping workers keep delays just
            // under the bound, which must not read as overload.
            let bound_ns = (bound.as_nanos() as u64).max(2);
            let bound_bucket = (64 - (bound_ns - 1).leading_zeros() as usize).min(BUCKETS);
            let late_samples: u64 = delta[bound_bucket..].iter().sum();
            out.insert(
                *id,
                Load {
                    busy: (busy - pbusy) as f64 / window,
                    late: total >= 20 && late_samples * 100 > total,
                },
            );
            last.insert(*id, (busy, counts));
        }
        self.last = last;
        out
    }
}

/// A decision, over worker keys `W` and engine keys `E`.
#[derive(Debug, PartialEq)]
pub(super) enum Plan<W, E> {
    Stay,
    /// Start a thread and move these engines onto it.
    Spread(Vec<E>),
    /// Move every engine of `from` onto the given threads, then stop `from`.
    Fold {
        from: W,
        onto: Vec<(E, W)>,
    },
}

/// Decides from the current placement (each worker with its engines) and
/// the engines' loads.
pub(super) fn decide<W: Clone, E: Copy + Eq + Hash>(
    st: &mut ControlState,
    workers: &[(W, Vec<E>)],
    loads: &HashMap<E, Load>,
    max_threads: usize,
) -> Plan<W, E> {
    let load_of = |id: &E| loads.get(id).map_or(0.0, |l| l.busy);
    let worker_load: Vec<f64> = workers
        .iter()
        .map(|(_, es)| es.iter().map(load_of).sum())
        .collect();
    // Grow: the busiest overloaded (or late) thread with two or more engines
    // gives about half of its load to a new thread.
    if workers.len() < max_threads {
        let overloaded = workers
            .iter()
            .zip(worker_load.iter())
            .filter(|((_, es), load)| {
                es.len() > 1
                    && (**load > HIGH || es.iter().any(|e| loads.get(e).is_some_and(|l| l.late)))
            })
            .max_by(|a, b| a.1.total_cmp(b.1));
        if let Some(((_, es), load)) = overloaded {
            let mut by_load: Vec<E> = es.clone();
            by_load.sort_by(|a, b| load_of(b).total_cmp(&load_of(a)));
            let mut moved = Vec::new();
            let mut moved_load = 0.0;
            for id in by_load.into_iter().skip(1) {
                if moved_load >= load / 2.0 && !moved.is_empty() {
                    break;
                }
                moved_load += load_of(&id);
                moved.push(id);
            }
            st.calm = 0;
            return Plan::Spread(moved);
        }
    }
    // Fold: the load fits on one thread fewer with room to spare.
    let total: f64 = worker_load.iter().sum();
    if workers.len() > 1 && total < LOW * (workers.len() - 1) as f64 {
        st.calm += 1;
        if st.calm >= CALM_WINDOWS {
            st.calm = 0;
            let (victim, _) = worker_load
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .expect("more than one worker");
            let mut rest: Vec<(usize, f64)> = worker_load
                .iter()
                .copied()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .collect();
            let mut onto = Vec::new();
            for id in &workers[victim].1 {
                // Least loaded remaining thread takes the next engine.
                let slot = rest
                    .iter_mut()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("others exist");
                slot.1 += load_of(id);
                onto.push((*id, workers[slot.0].0.clone()));
            }
            return Plan::Fold {
                from: workers[victim].0.clone(),
                onto,
            };
        }
    } else {
        st.calm = 0;
    }
    Plan::Stay
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(l: &[(u32, f64)]) -> HashMap<u32, Load> {
        l.iter()
            .map(|&(e, busy)| (e, Load { busy, late: false }))
            .collect()
    }

    #[test]
    fn an_overloaded_thread_gives_about_half_its_load_to_a_new_one() {
        let mut st = ControlState::default();
        let workers = vec![("w0", vec![1u32, 2, 3, 4])];
        let plan = decide(
            &mut st,
            &workers,
            &loads(&[(1, 0.3), (2, 0.3), (3, 0.2), (4, 0.1)]),
            4,
        );
        // The busiest engine stays; the next ones go until half has moved.
        assert_eq!(plan, Plan::Spread(vec![2, 3]));
        // At the thread limit nothing grows.
        let plan = decide(
            &mut st,
            &workers,
            &loads(&[(1, 0.3), (2, 0.3), (3, 0.2), (4, 0.1)]),
            1,
        );
        assert_eq!(plan, Plan::Stay);
    }

    #[test]
    fn a_late_engine_spreads_its_thread_even_when_not_busy() {
        let mut st = ControlState::default();
        let workers = vec![("w0", vec![1u32, 2])];
        let mut l = loads(&[(1, 0.1), (2, 0.1)]);
        l.get_mut(&2).unwrap().late = true;
        assert_eq!(decide(&mut st, &workers, &l, 2), Plan::Spread(vec![2]));
    }

    #[test]
    fn light_load_folds_the_least_loaded_thread_after_calm_windows_only() {
        let mut st = ControlState::default();
        let workers = vec![("w0", vec![1u32]), ("w1", vec![2, 3])];
        let l = loads(&[(1, 0.05), (2, 0.1), (3, 0.1)]);
        for _ in 1..CALM_WINDOWS {
            assert_eq!(decide(&mut st, &workers, &l, 2), Plan::Stay);
        }
        assert_eq!(
            decide(&mut st, &workers, &l, 2),
            Plan::Fold {
                from: "w0",
                onto: vec![(1, "w1")]
            }
        );
        // A busy window in between starts the count again.
        let busy = loads(&[(1, 0.4), (2, 0.4), (3, 0.1)]);
        for _ in 1..CALM_WINDOWS {
            decide(&mut st, &workers, &l, 2);
        }
        assert_eq!(decide(&mut st, &workers, &busy, 2), Plan::Stay);
        assert_eq!(decide(&mut st, &workers, &l, 2), Plan::Stay);
    }
}
