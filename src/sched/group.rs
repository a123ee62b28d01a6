//! Engine groups and their scheduling policies.
//!
//! - *dedicated*: N threads, each pinned to a CPU when given, poll their
//!   engines round-robin and never sleep. Lowest latency; burns its cores.
//! - *spreading*: one thread per engine. When its engine finds no work the
//!   thread polls through a quiet period when work tends to come back
//!   within it, then arms the engine's wake-ups (virtqueue notifications,
//!   link and mailbox doorbells), re-checks, and blocks in epoll (see
//!   `coalesce`); an idle group uses no CPU.
//! - *compacting*: engines packed onto as few threads as keep them under the
//!   delay bound (`compact`); an idle thread naps while work arrives densely
//!   and idles like spreading while it arrives sparsely.
//!
//! All run the same loop (`worker.rs`); only whether it may sleep and how
//! engines are spread over threads differ. This file starts and stops the
//! threads and places engines on them; `compact.rs` decides for
//! compacting, `nap.rs` and `coalesce.rs` time the sleeps, `os.rs` makes the
//! system calls.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::compact;
use super::os::thread_cpu_seconds;
pub use super::os::MAX_CPUS;
use super::stats::{EngineStats, EngineStatsSnapshot};
use super::worker::{lock, place, run, Idle, Placed, Worker};
use super::{EngineId, GroupError};
use crate::engine::{Doorbell, Engine};

pub use super::worker::POLL_BUDGET;

pub use super::coalesce::QUIET;

/// How a group runs its engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Pinned threads that busy-poll their engines.
    Dedicated,
    /// One thread per engine, sleeping when its engine is idle.
    Spreading,
    /// 1..`threads` threads: engines are packed onto as few as keep every
    /// engine's queueing delay under the bound; idle threads sleep.
    Compacting,
}

struct Running {
    worker: Arc<Worker>,
    thread: Option<JoinHandle<()>>,
}

/// A group of engine threads under one policy.
pub struct EngineGroup {
    name: String,
    policy: Policy,
    cpus: Vec<usize>,
    workers: Mutex<Vec<Running>>,
    next_cpu: AtomicUsize,
    /// Accounting of every engine placed, by id, with its name.
    stats: Mutex<Vec<(EngineId, String, Arc<EngineStats>)>>,
    /// Compacting: most threads, and the queueing-delay bound.
    max_threads: usize,
    delay_bound: Duration,
    /// Spreading, compacting: see `coalesce`.
    quiet: Duration,
    /// Compacting: (seconds since start, threads) at every change.
    history: Mutex<Vec<(f64, usize)>>,
    started: std::time::Instant,
    controller: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
    /// Set while another process's engines run on the same CPUs.
    sharing: Arc<AtomicBool>,
}

impl EngineGroup {
    /// Starts a group. Dedicated: `threads` threads now, thread i pinned to
    /// `cpus[i % len]` when `cpus` is not empty. Spreading: a thread per
    /// engine as engines arrive, pinned round-robin over `cpus`. Compacting:
    /// one thread now, up to `threads` as load requires.
    pub fn start(
        name: &str,
        policy: Policy,
        threads: usize,
        cpus: &[usize],
    ) -> Result<Arc<Self>, GroupError> {
        Self::start_with_bound(name, policy, threads, cpus, Duration::from_micros(200))
    }

    /// [`Self::start`] with the queueing-delay bound of the sleeping
    /// policies (compacting's thread count follows it; both nap within it).
    pub fn start_with_bound(
        name: &str,
        policy: Policy,
        threads: usize,
        cpus: &[usize],
        delay_bound: Duration,
    ) -> Result<Arc<Self>, GroupError> {
        Self::start_tuned(name, policy, threads, cpus, delay_bound, QUIET)
    }

    /// [`Self::start_with_bound`] with the quiet period a sleeping worker
    /// may poll through before it blocks (see `coalesce`).
    pub fn start_tuned(
        name: &str,
        policy: Policy,
        threads: usize,
        cpus: &[usize],
        delay_bound: Duration,
        quiet: Duration,
    ) -> Result<Arc<Self>, GroupError> {
        if policy != Policy::Spreading && threads == 0 {
            return Err(GroupError::NoThreads(name.to_string()));
        }
        let group = Arc::new(Self {
            name: name.to_string(),
            policy,
            cpus: cpus.to_vec(),
            workers: Mutex::new(Vec::new()),
            next_cpu: AtomicUsize::new(0),
            stats: Mutex::new(Vec::new()),
            max_threads: threads,
            delay_bound,
            quiet,
            history: Mutex::new(Vec::new()),
            started: std::time::Instant::now(),
            controller: Mutex::new(None),
            sharing: Arc::new(AtomicBool::new(false)),
        });
        let initial = match policy {
            Policy::Dedicated => threads,
            Policy::Compacting => 1,
            Policy::Spreading => 0,
        };
        for _ in 0..initial {
            let w = group.spawn_worker()?;
            lock(&group.workers).push(w);
        }
        if policy == Policy::Compacting {
            group.note_threads();
            let stop = Arc::new(AtomicBool::new(false));
            let (g, s) = (Arc::downgrade(&group), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("{name}-compact"))
                .spawn(move || compacting_controller(g, s))
                .map_err(|source| GroupError::Spawn {
                    group: name.to_string(),
                    source,
                })?;
            *lock(&group.controller) = Some((stop, t));
        }
        Ok(group)
    }

    fn note_threads(&self) {
        let n = lock(&self.workers).len();
        let mut h = lock(&self.history);
        if h.last().map(|(_, k)| *k) != Some(n) {
            h.push((self.started.elapsed().as_secs_f64(), n));
            if h.len() > 1000 {
                h.remove(0);
            }
        }
    }

    fn spawn_worker(&self) -> Result<Running, GroupError> {
        let worker = Arc::new(Worker {
            changed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            adds: Mutex::new(Vec::new()),
            removals: Mutex::new(Vec::new()),
            load: Mutex::new(Vec::new()),
            wake: Doorbell::new().map_err(|source| GroupError::Spawn {
                group: self.name.clone(),
                source,
            })?,
            tid: AtomicI32::new(0),
            sharing: self.sharing.clone(),
        });
        let i = self.next_cpu.fetch_add(1, Ordering::Relaxed);
        let cpu = (!self.cpus.is_empty()).then(|| self.cpus[i % self.cpus.len()]);
        let idle = match self.policy {
            Policy::Dedicated => Idle::Spin,
            // Spreading does not nap: its threads (one per engine, each hop
            // of a frame another one) often share a CPU, and measured at
            // 10 % load their naps shrank to the shortest as rings filled
            // and the wake-ups ate the CPU the work needed (166 of 875
            // kframes/s delivered, 18 ms RTT).
            Policy::Spreading => Idle::Coalesce {
                bound: None,
                quiet: self.quiet,
            },
            Policy::Compacting => Idle::Coalesce {
                bound: Some(self.delay_bound),
                quiet: self.quiet,
            },
        };
        let w = worker.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{i}", self.name))
            .spawn(move || run(w, cpu, idle))
            .map_err(|source| GroupError::Spawn {
                group: self.name.clone(),
                source,
            })?;
        Ok(Running {
            worker,
            thread: Some(thread),
        })
    }

    /// While `on`, every thread of the group gives its CPU up after each
    /// round, busy or not. During an upgrade the old and the new process
    /// each run engines on the same CPUs, and each step of it waits for a
    /// thread of one of them to answer a request (let go of a vring, take
    /// an engine): without this it waits for the other process's busy
    /// thread to use up its time slice, milliseconds, rather than a round.
    pub fn share_cpus(&self, on: bool) {
        self.sharing.store(on, Ordering::Relaxed);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Places an engine: on the least loaded thread (dedicated, compacting)
    /// or on a thread of its own (spreading).
    pub fn add(&self, engine: Box<dyn Engine>) -> Result<EngineId, GroupError> {
        let id = EngineId::fresh();
        let stats = Arc::new(EngineStats::default());
        lock(&self.stats).push((id, engine.name().to_string(), stats.clone()));
        let worker = match self.policy {
            Policy::Dedicated | Policy::Compacting => self.least_loaded()?,
            Policy::Spreading => {
                let w = self.spawn_worker()?;
                let worker = w.worker.clone();
                lock(&self.workers).push(w);
                worker
            }
        };
        place(&worker, Placed { id, engine, stats });
        Ok(id)
    }

    /// Places an engine on the thread that runs engine `near`, so that what
    /// they hand each other stays on one core (a vNIC beside its switch
    /// shard). As [`Self::add`] under spreading, or when `near` is not here.
    pub fn add_near(
        &self,
        engine: Box<dyn Engine>,
        near: EngineId,
    ) -> Result<EngineId, GroupError> {
        let worker = match self.policy {
            Policy::Spreading => None,
            _ => self.worker_of(near),
        };
        let Some(worker) = worker else {
            return self.add(engine);
        };
        let id = EngineId::fresh();
        let stats = Arc::new(EngineStats::default());
        lock(&self.stats).push((id, engine.name().to_string(), stats.clone()));
        place(&worker, Placed { id, engine, stats });
        Ok(id)
    }

    fn least_loaded(&self) -> Result<Arc<Worker>, GroupError> {
        lock(&self.workers)
            .iter()
            .min_by_key(|w| lock(&w.worker.load).len())
            .map(|w| w.worker.clone())
            .ok_or_else(|| GroupError::NoThreads(self.name.clone()))
    }

    /// Takes engine `id` off worker `from` between two of its polls.
    fn take(&self, worker: &Arc<Worker>, id: EngineId) -> Result<Box<dyn Engine>, GroupError> {
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&worker.removals).push((id, tx));
        worker.notify();
        let engine = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| GroupError::Stopped(self.name.clone()))?;
        lock(&worker.load).retain(|e| *e != id);
        Ok(engine)
    }

    fn worker_of(&self, id: EngineId) -> Option<Arc<Worker>> {
        lock(&self.workers)
            .iter()
            .find(|w| lock(&w.worker.load).contains(&id))
            .map(|w| w.worker.clone())
    }

    /// Moves engine `id` to worker `to` (compacting). Its state, queued
    /// frames and pending mailbox request go with it.
    fn migrate(&self, id: EngineId, to: &Arc<Worker>) -> Result<(), GroupError> {
        let from = self
            .worker_of(id)
            .ok_or_else(|| GroupError::UnknownEngine(id, self.name.clone()))?;
        if Arc::ptr_eq(&from, to) {
            return Ok(());
        }
        let engine = self.take(&from, id)?;
        let stats = lock(&self.stats)
            .iter()
            .find(|(e, ..)| *e == id)
            .map(|(_, _, s)| s.clone())
            .unwrap_or_default();
        place(to, Placed { id, engine, stats });
        Ok(())
    }

    /// Takes an engine out of the group, between two of its polls, and
    /// hands it back.
    pub fn remove(&self, id: EngineId) -> Result<Box<dyn Engine>, GroupError> {
        let worker = self
            .worker_of(id)
            .ok_or_else(|| GroupError::UnknownEngine(id, self.name.clone()))?;
        let engine = self.take(&worker, id)?;
        lock(&self.stats).retain(|(e, ..)| *e != id);
        if self.policy == Policy::Spreading {
            // The engine's own thread has nothing left to do.
            self.retire(&worker);
        }
        Ok(engine)
    }

    /// Stops an (empty) worker thread.
    fn retire(&self, worker: &Arc<Worker>) {
        let mut workers = lock(&self.workers);
        if let Some(pos) = workers.iter().position(|w| Arc::ptr_eq(&w.worker, worker)) {
            let mut w = workers.swap_remove(pos);
            drop(workers);
            stop_worker(&mut w);
        }
    }

    /// One compacting decision (called by the controller every window).
    fn rebalance(&self, st: &mut compact::ControlState) {
        let workers: Vec<(Arc<Worker>, Vec<EngineId>)> = lock(&self.workers)
            .iter()
            .map(|w| (w.worker.clone(), lock(&w.worker.load).clone()))
            .collect();
        let stats: Vec<(EngineId, Arc<EngineStats>)> = lock(&self.stats)
            .iter()
            .map(|(id, _, s)| (*id, s.clone()))
            .collect();
        let loads = st.measure(&stats, self.delay_bound);
        let plan = compact::decide(st, &workers, &loads, self.max_threads);
        match plan {
            compact::Plan::Stay => {}
            compact::Plan::Spread(engines) => match self.spawn_worker() {
                Ok(w) => {
                    let to = w.worker.clone();
                    lock(&self.workers).push(w);
                    for id in engines {
                        if let Err(e) = self.migrate(id, &to) {
                            log::warn!("{}: cannot move engine: {e}", self.name);
                        }
                    }
                    log::info!(
                        "{}: compacting grew to {} threads",
                        self.name,
                        self.thread_count()
                    );
                }
                Err(e) => log::warn!("{}: cannot add a thread: {e}", self.name),
            },
            compact::Plan::Fold { from, onto } => {
                for (id, to) in onto {
                    if let Err(e) = self.migrate(id, &to) {
                        log::warn!("{}: cannot move engine: {e}", self.name);
                    }
                }
                if lock(&from.load).is_empty() {
                    self.retire(&from);
                    log::info!(
                        "{}: compacting shrank to {} threads",
                        self.name,
                        self.thread_count()
                    );
                }
            }
        }
        self.note_threads();
    }

    /// Accounting of each engine: (name, counters).
    pub fn engine_stats(&self) -> Vec<(String, EngineStatsSnapshot)> {
        lock(&self.stats)
            .iter()
            .map(|(_, n, s)| (n.clone(), s.snapshot()))
            .collect()
    }

    /// Compacting: (seconds since start, threads) at each change.
    pub fn thread_history(&self) -> Vec<(f64, usize)> {
        lock(&self.history).clone()
    }

    /// Threads running now.
    pub fn thread_count(&self) -> usize {
        lock(&self.workers).len()
    }

    /// Engines placed in the group.
    pub fn engine_count(&self) -> usize {
        lock(&self.workers)
            .iter()
            .map(|w| lock(&w.worker.load).len())
            .sum()
    }

    /// CPU time used by each thread so far: (kernel thread id, seconds).
    pub fn thread_cpu(&self) -> Vec<(i32, f64)> {
        lock(&self.workers)
            .iter()
            .map(|w| {
                let tid = w.worker.tid.load(Ordering::Relaxed);
                (tid, thread_cpu_seconds(tid))
            })
            .collect()
    }

    /// Stops the threads; engines still placed are dropped on their thread.
    pub fn stop(&self) {
        self.shutdown();
    }

    fn shutdown(&self) {
        if let Some((stop, t)) = lock(&self.controller).take() {
            stop.store(true, Ordering::Release);
            let _ = t.join();
        }
        let mut workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers.iter_mut() {
            stop_worker(w);
        }
    }
}

fn stop_worker(w: &mut Running) {
    w.worker.stop.store(true, Ordering::Release);
    w.worker.wake.wake();
    if let Some(t) = w.thread.take() {
        let _ = t.join();
    }
}

impl Drop for EngineGroup {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The controller thread of a compacting group: one decision per window.
fn compacting_controller(group: std::sync::Weak<EngineGroup>, stop: Arc<AtomicBool>) {
    let mut st = compact::ControlState::default();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(compact::WINDOW);
        let Some(g) = group.upgrade() else {
            return;
        };
        g.rebalance(&mut st);
    }
}

#[cfg(test)]
#[path = "group_tests.rs"]
mod tests;
