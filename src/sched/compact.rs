//! The compacting policy's controller: every window it measures each
//! engine's load (share of a thread's time spent in polls that found work)
//! and queueing delay, adds a thread and moves engines onto it when a thread
//! is overloaded or an engine waits longer than the bound, and folds the
//! least loaded thread's engines back when the rest can carry them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::group::{EngineGroup, Worker};
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

/// A decision.
pub(super) enum Plan {
    Stay,
    /// Start a thread and move these engines onto it.
    Spread(Vec<EngineId>),
    /// Move every engine of `from` onto the given threads, then stop `from`.
    Fold {
        from: Arc<Worker>,
        onto: Vec<(EngineId, Arc<Worker>)>,
    },
}

/// Decides from the current placement and loads.
pub(super) fn decide(
    st: &mut ControlState,
    workers: &[(Arc<Worker>, Vec<EngineId>)],
    loads: &HashMap<EngineId, Load>,
    max_threads: usize,
) -> Plan {
    let load_of = |id: &EngineId| loads.get(id).map_or(0.0, |l| l.busy);
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
            let mut by_load: Vec<EngineId> = es.clone();
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

/// The controller thread of a compacting group.
pub(super) fn control(group: Weak<EngineGroup>, stop: Arc<AtomicBool>) {
    let mut st = ControlState::default();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(WINDOW);
        let Some(g) = group.upgrade() else {
            return;
        };
        g.rebalance(&mut st);
    }
}
