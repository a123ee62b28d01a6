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
//! All run the same loop; only whether it may sleep and how engines are
//! spread over threads differ.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::clock::{self, Stamp};
use super::coalesce::{Coalescer, Step};
use super::cpu_share::CpuShare;
use super::stats::{EngineStats, EngineStatsSnapshot};
use super::{EngineId, GroupError};
use crate::engine::{Doorbell, Engine};

/// Packets an engine may handle per poll before the thread moves on.
pub const POLL_BUDGET: usize = 64;

pub use super::coalesce::QUIET;

/// A sleeping thread re-checks at least this often even without a wake-up.
const SLEEP_TIMEOUT_MS: i32 = 1000;

/// A spinning (dedicated) worker that found nothing to do this many rounds
/// in a row offers its CPU to any other thread that waits for it (a few
/// microseconds of empty polls; alone on its CPU the call returns at once).
/// During an upgrade the old and the new process's workers share their
/// pinned CPUs: without this, a mailbox call or a frame for the side that
/// is not running waited out the other's whole scheduler slice (1-6 ms in
/// `snapnet-bench handover`).
const YIELD_EVERY_IDLE_ROUNDS: u32 = 256;

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

type Removal = (EngineId, mpsc::SyncSender<Box<dyn Engine>>);

/// An engine as a worker holds it.
struct Placed {
    id: EngineId,
    engine: Box<dyn Engine>,
    stats: Arc<EngineStats>,
}

pub(super) struct Worker {
    /// Set when `adds` or `removals` changed, so the hot loop checks one flag.
    changed: AtomicBool,
    stop: AtomicBool,
    adds: Mutex<Vec<Placed>>,
    removals: Mutex<Vec<Removal>>,
    load: Mutex<Vec<EngineId>>,
    /// Rung on placement changes and stop, so a sleeping worker notices.
    wake: Doorbell,
    /// Kernel thread id, for CPU accounting from /proc.
    tid: AtomicI32,
    /// The group's [`EngineGroup::share_cpus`].
    sharing: Arc<AtomicBool>,
}

impl Worker {
    fn notify(&self) {
        self.changed.store(true, Ordering::Release);
        self.wake.ring();
    }
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
                .spawn(move || super::compact::control(g, s))
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
    pub(super) fn rebalance(&self, st: &mut super::compact::ControlState) {
        let workers: Vec<(Arc<Worker>, Vec<EngineId>)> = lock(&self.workers)
            .iter()
            .map(|w| (w.worker.clone(), lock(&w.worker.load).clone()))
            .collect();
        let stats: Vec<(EngineId, Arc<EngineStats>)> = lock(&self.stats)
            .iter()
            .map(|(id, _, s)| (*id, s.clone()))
            .collect();
        let loads = st.measure(&stats, self.delay_bound);
        let plan = super::compact::decide(st, &workers, &loads, self.max_threads);
        match plan {
            super::compact::Plan::Stay => {}
            super::compact::Plan::Spread(engines) => match self.spawn_worker() {
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
            super::compact::Plan::Fold { from, onto } => {
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

fn place(worker: &Arc<Worker>, p: Placed) {
    lock(&worker.load).push(p.id);
    lock(&worker.adds).push(p);
    worker.notify();
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a worker does when its engines have no work.
#[derive(Clone, Copy)]
enum Idle {
    /// Keep polling (dedicated).
    Spin,
    /// With a `bound`, nap without asking guests to kick while work
    /// arrives densely (work then waits at most the nap, within the bound,
    /// and one wake-up serves many packets); arm wake-ups and block while it
    /// arrives sparsely (one wake-up per arrival, on the kick itself), after
    /// polling through a `quiet` period when work tends to come back within
    /// it (`coalesce`).
    Coalesce {
        bound: Option<Duration>,
        quiet: Duration,
    },
}

/// A compacting worker's nap length, adapted to the arrival rate: as long
/// as the delay bound allows when work trickles in (few wake-ups, large
/// batches; a wake-up costs about 20 µs of CPU on a VM), shorter when the
/// fullest input ring got more than half full during a nap (at that rate a
/// longer nap would fill it, stall the sender and cost rate).
struct NapLength {
    /// How long work may wait: the period from falling asleep to polling.
    current: Duration,
    longest: Duration,
    /// How much later than asked the kernel wakes us (smoothed).
    overshoot: Duration,
}

impl NapLength {
    /// Below this a nap costs about as much as the work it batches.
    const SHORTEST: Duration = Duration::from_micros(5);
    /// How full a nap may let the fullest ring get.
    const FILL_TARGET: f64 = 0.5;

    /// `bound` is the group's queueing-delay bound: a nap takes at most
    /// seven eighths of it (its lateness is asked off already), leaving the
    /// rest for the round that follows. A wake-up costs about 20 µs here,
    /// so at a steady light load the nap is what sets the CPU overhead.
    fn new(bound: Duration) -> Self {
        let longest = (bound * 7 / 8).max(Self::SHORTEST);
        Self {
            current: longest,
            longest,
            overshoot: Duration::ZERO,
        }
    }

    /// Sleeps for the current period, asking the kernel for less by its
    /// usual lateness; returns how long it slept.
    fn nap(&mut self) -> Duration {
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
    fn adapt(&mut self, fill: f64, slept: Duration) {
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

fn run(worker: Arc<Worker>, cpu: Option<usize>, idle: Idle) {
    let (mut nap, mut coalesce) = match idle {
        Idle::Spin => (None, None),
        Idle::Coalesce { bound, quiet } => {
            // Naps are tens of microseconds: without this the kernel may
            // add its default 50 µs of timer slack to each.
            // SAFETY: PR_SET_TIMERSLACK takes a plain integer; no pointers.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64) };
            (bound.map(NapLength::new), Some(Coalescer::new(quiet)))
        }
    };
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    worker.tid.store(tid, Ordering::Relaxed);
    if let Some(cpu) = cpu {
        if let Err(e) = pin_to_cpu(cpu) {
            log::warn!("cannot pin thread to CPU {cpu}: {e}");
        }
    }
    let mut engines: Vec<Placed> = Vec::new();
    let mut last_end: Vec<Stamp> = Vec::new();
    let mut poller = if coalesce.is_some() {
        Poller::new()
    } else {
        None
    };
    let mut idle_rounds: u32 = 0;
    let mut cpu = CpuShare::new();
    let mut relay: Option<usize> = None;
    while !worker.stop.load(Ordering::Acquire) {
        if worker.changed.load(Ordering::Acquire) {
            worker.changed.store(false, Ordering::Relaxed);
            // CPU used so far belongs to the engines that were here.
            cpu.share(engines.iter().map(|p| &p.stats));
            cpu.reset_engines();
            engines.append(&mut lock(&worker.adds));
            for (id, reply) in lock(&worker.removals).drain(..) {
                if let Some(pos) = engines.iter().position(|p| p.id == id) {
                    let p = engines.swap_remove(pos);
                    let _ = reply.send(p.engine);
                }
            }
            last_end = vec![clock::now(); engines.len()];
            relay = engines.iter().position(|p| p.engine.relays());
            // An engine that left may have closed fds whose numbers a new
            // one reuses: the epoll set is rebuilt before the next sleep.
            if let Some(p) = poller.as_mut() {
                p.forget();
            }
        }
        let mut work = 0;
        // One clock read per round, and one after each poll that did work
        // (see `clock` for why they are counted). An empty poll is taken to
        // end at the latest reading, which is off by at most the empty
        // polls before it in this round.
        let mut t0 = clock::now();
        for i in 0..engines.len() {
            let n = poll_one(&mut engines[i], &mut last_end[i], &mut t0);
            // A frame an engine just handed to the relay (the switch)
            // crosses it now rather than a round later.
            if n > 0 {
                if let Some(r) = relay.filter(|r| *r != i) {
                    work += poll_one(&mut engines[r], &mut last_end[r], &mut t0);
                }
            }
            work += n;
        }
        if cpu.due(t0) {
            cpu.share(engines.iter().map(|p| &p.stats));
        }
        let sharing = worker.sharing.load(Ordering::Relaxed);
        let (Some(co), Some(p)) = (coalesce.as_mut(), poller.as_mut()) else {
            // Dedicated (or no epoll): poll on.
            if work == 0 {
                idle_rounds = idle_rounds.wrapping_add(1);
                std::hint::spin_loop();
                if engines.is_empty() && idle_rounds % YIELD_EVERY_IDLE_ROUNDS == 0 {
                    // No engines at all: nothing can arrive but a placement
                    // (or the stop), which rings the worker's doorbell. The
                    // thread gives its CPU back meanwhile: a new process
                    // preparing an upgrade beside a serving one, or an old
                    // one whose engines left, takes no CPU from the engines
                    // that do run there.
                    worker.wake.arm();
                    if !worker.changed.load(Ordering::Acquire)
                        && !worker.stop.load(Ordering::Acquire)
                    {
                        wait_readable(worker.wake.as_raw_fd(), EMPTY_WORKER_WAIT);
                    }
                    worker.wake.disarm();
                } else if sharing || idle_rounds % YIELD_EVERY_IDLE_ROUNDS == 0 {
                    yield_cpu();
                }
            } else {
                idle_rounds = 0;
                if sharing {
                    yield_cpu();
                }
            }
            continue;
        };
        if work > 0 {
            co.work(t0);
            if sharing {
                yield_cpu();
            }
            continue;
        }
        // Nothing left to do (every hop between this worker's engines is
        // done).
        let nap_len = nap
            .as_ref()
            .filter(|_| !engines.is_empty())
            .map(|n| n.current);
        match (co.idle(t0, nap_len), nap.as_mut()) {
            (Step::Nap, Some(nap)) => {
                let slept = nap.nap();
                let fill = engines
                    .iter_mut()
                    .map(|p| p.engine.backlog())
                    .fold(0.0, f64::max);
                nap.adapt(fill, slept);
            }
            // Threads of a group may share a CPU: let the others run
            // rather than spin through the time slice.
            (Step::Poll, _) => std::thread::yield_now(),
            (Step::Block | Step::Nap, _) => {
                sleep(&worker, &mut engines, p);
                // Delay is counted from the wake-up, not over the sleep.
                last_end.fill(clock::now());
            }
        }
    }
}

/// Polls one engine and records it. One clock read after a poll that did
/// work; an empty poll is taken to end at the latest reading `t0`.
#[inline]
fn poll_one(p: &mut Placed, last: &mut Stamp, t0: &mut Stamp) -> usize {
    let n = p.engine.poll(POLL_BUDGET);
    if n == 0 {
        p.stats.record(0, 0, 0);
        *last = *t0;
        return 0;
    }
    let t1 = clock::now();
    p.stats
        .record(n, t1.nanos_since(*t0), t0.nanos_since(*last));
    *last = t1;
    *t0 = t1;
    n
}

/// Arms every engine and the worker's own doorbell, re-checks, and blocks
/// until one of them fires. The order (announce sleep, then look for work)
/// is what makes a wake-up impossible to lose: a producer that published
/// before our re-check is seen by it; one that publishes after sees us
/// sleeping and writes the eventfd.
fn sleep(worker: &Worker, engines: &mut [Placed], poller: &mut Poller) {
    worker.wake.arm();
    let mut work = worker.changed.load(Ordering::Acquire) || worker.stop.load(Ordering::Acquire);
    for p in engines.iter_mut() {
        work |= p.engine.arm();
    }
    if !work {
        let mut fds = vec![worker.wake.as_raw_fd()];
        let mut epoch = 0u64;
        for p in engines.iter() {
            fds.extend(p.engine.wake_fds());
            epoch = epoch.wrapping_add(p.engine.wake_epoch());
        }
        poller.wait(&fds, epoch, SLEEP_TIMEOUT_MS);
    }
    for p in engines.iter_mut() {
        p.engine.disarm();
    }
    worker.wake.disarm();
}

/// An epoll set kept equal to the files a worker sleeps on.
struct Poller {
    epfd: RawFd,
    registered: Vec<RawFd>,
    /// The engines' `wake_epoch`s (summed) when the set was built; `None`
    /// forces a rebuild.
    epoch: Option<u64>,
    events: Vec<epoll::Event>,
}

impl Poller {
    fn new() -> Option<Self> {
        match epoll::create(true) {
            Ok(epfd) => Some(Self {
                epfd,
                registered: Vec::new(),
                epoch: None,
                events: vec![epoll::Event::new(epoll::Events::empty(), 0); 16],
            }),
            Err(e) => {
                log::warn!("epoll unavailable ({e}): engines will busy-poll");
                None
            }
        }
    }

    /// The engines changed: rebuild the set before the next wait.
    fn forget(&mut self) {
        self.epoch = None;
    }

    fn wait(&mut self, fds: &[RawFd], epoch: u64, timeout_ms: i32) {
        if self.epoch != Some(epoch) || self.registered != fds {
            self.rebuild(fds);
            self.epoch = Some(epoch);
        }
        let _ = epoll::wait(self.epfd, timeout_ms, &mut self.events);
    }

    /// A fresh epoll instance over `fds`. Deleting entries one by one is not
    /// enough: an entry belongs to the open file, not the number, so one
    /// whose fd was closed while another process (the frontend) still holds
    /// the file stays in the set under a number that may mean something
    /// else now, and cannot be deleted by that number.
    fn rebuild(&mut self, fds: &[RawFd]) {
        match epoll::create(true) {
            Ok(epfd) => {
                // SAFETY: the old epfd is this poller's own and is replaced
                // here, so it is closed exactly once.
                unsafe { libc::close(self.epfd) };
                self.epfd = epfd;
            }
            Err(e) => {
                // Keep the old set and re-add: better than no set at all.
                log::warn!("cannot rebuild the epoll set: {e}");
                for &fd in &self.registered {
                    let _ = epoll::ctl(
                        self.epfd,
                        epoll::ControlOptions::EPOLL_CTL_DEL,
                        fd,
                        epoll::Event::new(epoll::Events::empty(), 0),
                    );
                }
            }
        }
        self.registered.clear();
        for &fd in fds {
            let ev = epoll::Event::new(epoll::Events::EPOLLIN, fd as u64);
            if let Err(e) = epoll::ctl(self.epfd, epoll::ControlOptions::EPOLL_CTL_ADD, fd, ev) {
                log::warn!("cannot watch wake-up fd {fd}: {e}");
            }
        }
        // Compared as given, so an fd that could not be added is not retried
        // at every sleep.
        self.registered.extend_from_slice(fds);
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: epfd is the epoll fd this poller created and owns.
        unsafe { libc::close(self.epfd) };
    }
}

/// CPU time of a thread of this process, from its schedstat (nanoseconds on
/// CPU is the first field).
fn thread_cpu_seconds(tid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// CPUs a thread can be pinned to: the ids a `cpu_set_t` holds (glibc's
/// fixed 1024-bit set, which `sched_setaffinity` is given here).
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// Offers the CPU to another thread that waits for it (see
/// [`YIELD_EVERY_IDLE_ROUNDS`]).
/// How long an engine-less dedicated worker blocks at a time (a placement
/// or the stop wakes it at once; this only bounds a missed wake-up).
const EMPTY_WORKER_WAIT: Duration = Duration::from_millis(100);

/// Blocks until `fd` is readable or `timeout` passes.
fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; the fd is the
    // worker's own doorbell, open as long as the worker.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

fn yield_cpu() {
    // SAFETY: sched_yield takes no arguments and touches no memory of ours.
    unsafe { libc::sched_yield() };
}

/// Pins the calling thread to `cpu`. An id beyond [`MAX_CPUS`] is an error,
/// not an index past the set (libc's `CPU_SET` panics on one).
fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is not below {MAX_CPUS}, the CPUs a cpu_set_t holds"),
        ));
    }
    // SAFETY: `cpu_set_t` is plain data, so zeroed is a valid empty set;
    // CPU_SET writes inside it (cpu < CPU_SETSIZE, checked above), and
    // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes of it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{FromRawFd, RawFd};
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    struct Ticker {
        polls: Arc<AtomicUsize>,
    }
    impl Engine for Ticker {
        fn name(&self) -> &str {
            "ticker"
        }
        fn poll(&mut self, _budget: usize) -> usize {
            self.polls.fetch_add(1, Ordering::Relaxed);
            0
        }
        fn wake_fds(&self) -> Vec<RawFd> {
            Vec::new()
        }
        fn arm(&mut self) -> bool {
            false
        }
        fn disarm(&mut self) {}
    }

    /// An engine whose work is a counter bumped by a "producer", announced
    /// through a doorbell, like a link.
    struct Flagged {
        pending: Arc<AtomicUsize>,
        handled: Arc<AtomicUsize>,
        bell: Arc<Doorbell>,
    }
    impl Engine for Flagged {
        fn name(&self) -> &str {
            "flagged"
        }
        fn poll(&mut self, _budget: usize) -> usize {
            let n = self.pending.swap(0, Ordering::AcqRel);
            self.handled.fetch_add(n, Ordering::AcqRel);
            n
        }
        fn wake_fds(&self) -> Vec<RawFd> {
            vec![self.bell.as_raw_fd()]
        }
        fn arm(&mut self) -> bool {
            self.bell.arm();
            self.pending.load(Ordering::Acquire) > 0
        }
        fn disarm(&mut self) {
            self.bell.disarm();
        }
    }

    fn flagged() -> (Flagged, Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<Doorbell>) {
        let pending = Arc::new(AtomicUsize::new(0));
        let handled = Arc::new(AtomicUsize::new(0));
        let bell = Arc::new(Doorbell::new().unwrap());
        let e = Flagged {
            pending: pending.clone(),
            handled: handled.clone(),
            bell: bell.clone(),
        };
        (e, pending, handled, bell)
    }

    #[test]
    fn a_cpu_past_the_cpu_set_is_an_error_and_the_thread_still_runs() {
        for cpu in [MAX_CPUS, 5000, usize::MAX] {
            let e = pin_to_cpu(cpu).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{e}");
        }
        // A group asked to pin there runs its engines unpinned.
        let group = EngineGroup::start("far", Policy::Dedicated, 1, &[MAX_CPUS + 1]).unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        group
            .add(Box::new(Ticker {
                polls: polls.clone(),
            }))
            .unwrap();
        let t = Instant::now();
        while polls.load(Ordering::Relaxed) == 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "never polled");
            std::thread::sleep(Duration::from_millis(1));
        }
        group.stop();
    }

    #[test]
    fn idle_spreading_group_uses_no_cpu() {
        let group = EngineGroup::start("idle", Policy::Spreading, 0, &[]).unwrap();
        let (e, _, _, _) = flagged();
        group.add(Box::new(e)).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let before: f64 = group.thread_cpu().iter().map(|(_, s)| s).sum();
        std::thread::sleep(Duration::from_millis(500));
        let used: f64 = group.thread_cpu().iter().map(|(_, s)| s).sum::<f64>() - before;
        assert!(
            used < 0.005,
            "idle engine thread used {used} s of CPU in 0.5 s"
        );
        group.stop();
    }

    #[test]
    fn work_arriving_as_the_engine_falls_asleep_is_never_lost() {
        let group = EngineGroup::start("race", Policy::Spreading, 0, &[]).unwrap();
        let (e, pending, handled, bell) = flagged();
        group.add(Box::new(e)).unwrap();
        let mut worst = Duration::ZERO;
        for i in 0..2000u64 {
            // Spread the arrivals over the spin-then-sleep window.
            let pause = Duration::from_micros((i * 7919) % 400);
            std::thread::sleep(pause);
            let t = std::time::Instant::now();
            pending.fetch_add(1, Ordering::AcqRel);
            bell.ring();
            while handled.load(Ordering::Acquire) <= i as usize {
                assert!(
                    t.elapsed() < Duration::from_millis(200),
                    "work {i} not handled within 200 ms: lost wake-up"
                );
                std::hint::spin_loop();
            }
            worst = worst.max(t.elapsed());
        }
        assert!(worst < Duration::from_millis(200));
        group.stop();
    }

    #[test]
    fn spreading_engines_get_threads_of_their_own_and_give_them_back() {
        let group = EngineGroup::start("own", Policy::Spreading, 0, &[]).unwrap();
        let (a, ..) = flagged();
        let (b, ..) = flagged();
        let ia = group.add(Box::new(a)).unwrap();
        let ib = group.add(Box::new(b)).unwrap();
        assert_eq!(group.thread_cpu().len(), 2);
        group.remove(ia).unwrap();
        assert_eq!(group.thread_cpu().len(), 1);
        assert_eq!(group.engine_count(), 1);
        group.remove(ib).unwrap();
        assert_eq!(group.thread_cpu().len(), 0);
        group.stop();
    }

    /// Burns `cost` of CPU per poll while `hot`, like an engine under load.
    struct Burner {
        hot: Arc<AtomicBool>,
        cost: Duration,
    }
    impl Engine for Burner {
        fn name(&self) -> &str {
            "burner"
        }
        fn poll(&mut self, _budget: usize) -> usize {
            if !self.hot.load(Ordering::Relaxed) {
                return 0;
            }
            let t = Instant::now();
            while t.elapsed() < self.cost {
                std::hint::spin_loop();
            }
            1
        }
        fn wake_fds(&self) -> Vec<RawFd> {
            Vec::new()
        }
        fn arm(&mut self) -> bool {
            self.hot.load(Ordering::Relaxed)
        }
        fn disarm(&mut self) {}
    }

    fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
        let t = Instant::now();
        while t.elapsed() < limit {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        f()
    }

    #[test]
    fn compacting_grows_under_load_and_folds_back_when_it_falls() {
        let group = EngineGroup::start("compact", Policy::Compacting, 2, &[]).unwrap();
        let hot = Arc::new(AtomicBool::new(false));
        for _ in 0..2 {
            group
                .add(Box::new(Burner {
                    hot: hot.clone(),
                    cost: Duration::from_micros(50),
                }))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(group.thread_count(), 1, "idle: one thread");
        hot.store(true, Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(2), || group.thread_count() == 2),
            "did not grow under load"
        );
        hot.store(false, Ordering::Relaxed);
        // The history is written just after the thread count changes.
        assert!(
            wait_until(Duration::from_secs(3), || group.thread_count() == 1
                && group.thread_history().last().map(|(_, n)| *n) == Some(1)),
            "did not fold back"
        );
        let counts: Vec<usize> = group.thread_history().iter().map(|(_, n)| *n).collect();
        assert!(
            counts.windows(2).any(|w| w == [1, 2]) && counts.ends_with(&[1]),
            "{counts:?}"
        );
        assert_eq!(group.engine_count(), 2);
        group.stop();
    }

    /// Checks that items arrive in order, exactly once.
    struct Seq {
        rx: rtrb::Consumer<u64>,
        next: u64,
        errors: Arc<AtomicUsize>,
        seen: Arc<AtomicUsize>,
    }
    impl Engine for Seq {
        fn name(&self) -> &str {
            "seq"
        }
        fn poll(&mut self, budget: usize) -> usize {
            let mut n = 0;
            while n < budget {
                let Ok(v) = self.rx.pop() else { break };
                if v != self.next {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
                self.next = v + 1;
                n += 1;
            }
            self.seen.fetch_add(n, Ordering::Relaxed);
            n
        }
        fn wake_fds(&self) -> Vec<RawFd> {
            Vec::new()
        }
        fn arm(&mut self) -> bool {
            !self.rx.is_empty()
        }
        fn disarm(&mut self) {}
    }

    #[test]
    fn migrating_engines_lose_duplicate_and_reorder_nothing() {
        let group = EngineGroup::start("migrate", Policy::Dedicated, 2, &[]).unwrap();
        let (mut tx, rx) = rtrb::RingBuffer::new(4096);
        let errors = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let id = group
            .add(Box::new(Seq {
                rx,
                next: 0,
                errors: errors.clone(),
                seen: seen.clone(),
            }))
            .unwrap();
        const N: u64 = 200_000;
        // The producer waits for a migration every STEP values, so that
        // migrations happen under traffic however the threads are scheduled
        // (a loaded machine once ran all of it before the first migration).
        const STEP: u64 = 10_000;
        let migrations = Arc::new(AtomicUsize::new(0));
        let producer = {
            let migrations = migrations.clone();
            std::thread::spawn(move || {
                let mut v = 0;
                while v < N {
                    if v % STEP == 0 {
                        while (migrations.load(Ordering::Relaxed) as u64) < v / STEP {
                            std::thread::yield_now();
                        }
                    }
                    if tx.push(v).is_ok() {
                        v += 1;
                    }
                }
            })
        };
        let workers: Vec<Arc<Worker>> = lock(&group.workers)
            .iter()
            .map(|w| w.worker.clone())
            .collect();
        let mut moves = 0;
        while seen.load(Ordering::Relaxed) < N as usize && moves < 2000 {
            group.migrate(id, &workers[moves % 2]).unwrap();
            moves += 1;
            migrations.store(moves, Ordering::Relaxed);
        }
        producer.join().unwrap();
        assert!(wait_until(Duration::from_secs(5), || seen
            .load(Ordering::Relaxed)
            == N as usize));
        assert_eq!(
            errors.load(Ordering::Relaxed),
            0,
            "reordered or duplicated across {moves} migrations"
        );
        assert!(moves > 10, "only {moves} migrations happened");
        group.stop();
    }

    /// An engine whose only work is control requests, like a vNIC engine's
    /// mailbox: it sleeps on the mailbox doorbell.
    struct Controlled {
        mailbox: crate::engine::Mailbox<Controlled>,
        applied: u64,
    }
    impl Engine for Controlled {
        fn name(&self) -> &str {
            "controlled"
        }
        fn poll(&mut self, _budget: usize) -> usize {
            match self.mailbox.take() {
                Some(job) => {
                    job(self);
                    1
                }
                None => 0,
            }
        }
        fn wake_fds(&self) -> Vec<RawFd> {
            vec![self.mailbox.doorbell().as_raw_fd()]
        }
        fn arm(&mut self) -> bool {
            self.mailbox.doorbell().arm();
            self.mailbox.pending()
        }
        fn disarm(&mut self) {
            self.mailbox.doorbell().disarm();
        }
    }

    fn controlled() -> (Controlled, crate::engine::MailboxSender<Controlled>) {
        let (mailbox, tx) = crate::engine::Mailbox::new().unwrap();
        (
            Controlled {
                mailbox,
                applied: 0,
            },
            tx,
        )
    }

    #[test]
    fn a_request_to_a_sleeping_engine_wakes_it_under_every_policy() {
        for policy in [Policy::Dedicated, Policy::Spreading, Policy::Compacting] {
            let group = EngineGroup::start("mbox", policy, 1, &[]).unwrap();
            let (engine, tx) = controlled();
            group.add(Box::new(engine)).unwrap();
            for round in 1..=5u64 {
                // Long enough for a sleeping policy to have gone to sleep
                // (after eight empty naps of at most 175 µs).
                std::thread::sleep(Duration::from_millis(40));
                let t = Instant::now();
                let applied = tx
                    .call(Duration::from_secs(2), |e: &mut Controlled| {
                        e.applied += 1;
                        e.applied
                    })
                    .unwrap_or_else(|e| panic!("{policy:?}: request {round} not served: {e}"));
                assert_eq!(applied, round, "{policy:?}: each request runs once");
                assert!(
                    t.elapsed() < Duration::from_millis(500),
                    "{policy:?}: a sleeping engine took {:?} to answer",
                    t.elapsed()
                );
            }
            group.stop();
        }
    }

    #[test]
    fn requests_to_a_migrating_engine_land_exactly_once() {
        // Two threads that stay put (a compacting controller could fold
        // one away under the test's feet).
        let group = EngineGroup::start("mbox-move", Policy::Dedicated, 2, &[]).unwrap();
        let (engine, tx) = controlled();
        let id = group.add(Box::new(engine)).unwrap();
        let workers: Vec<Arc<Worker>> = lock(&group.workers)
            .iter()
            .map(|w| w.worker.clone())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let caller = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                let mut withdrawn = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match tx.call(Duration::from_millis(50), |e: &mut Controlled| {
                        e.applied += 1;
                    }) {
                        Ok(()) => answered.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            withdrawn += 1;
                            0
                        }
                    };
                }
                let applied = tx
                    .call(Duration::from_secs(2), |e: &mut Controlled| e.applied)
                    .unwrap();
                (withdrawn, applied)
            })
        };
        // Requests and migrations interleave until both have happened often
        // enough. The time limit only bounds a broken run: on a loaded
        // machine (two spinning workers, the caller and this thread on two
        // CPUs) 200 answers took more than 10 s.
        let t = Instant::now();
        let mut moves = 0;
        while (moves < 1000 || answered.load(Ordering::Relaxed) < 200)
            && t.elapsed() < Duration::from_secs(120)
        {
            group.migrate(id, &workers[moves % 2]).unwrap();
            moves += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let (withdrawn, applied) = caller.join().unwrap();
        let ok = answered.load(Ordering::Relaxed) as u64;
        assert_eq!(
            applied, ok,
            "{ok} requests answered, {withdrawn} withdrawn, but {applied} ran"
        );
        assert!(
            ok >= 200,
            "only {ok} requests got through {moves} migrations"
        );
        group.stop();
    }

    #[test]
    fn a_dedicated_thread_without_engines_sleeps_and_wakes_for_a_placement() {
        let group = EngineGroup::start("empty", Policy::Dedicated, 1, &[]).unwrap();
        let cpu = || group.thread_cpu().iter().map(|(_, s)| s).sum::<f64>();
        std::thread::sleep(Duration::from_millis(50));
        let before = cpu();
        std::thread::sleep(Duration::from_millis(300));
        let idle = cpu() - before;
        assert!(idle < 0.03, "an empty worker used {idle:.3} s of 0.3 s");
        // A placement wakes it at once, not after its wait.
        let polls = Arc::new(AtomicUsize::new(0));
        let placed = Instant::now();
        group
            .add(Box::new(Ticker {
                polls: polls.clone(),
            }))
            .unwrap();
        while polls.load(Ordering::Relaxed) == 0 {
            assert!(
                placed.elapsed() < EMPTY_WORKER_WAIT / 2,
                "the placement did not wake the worker"
            );
            std::thread::yield_now();
        }
        group.stop();
    }

    #[test]
    fn thread_cpu_time_goes_to_the_engine_that_used_it() {
        let group = EngineGroup::start("cpu", Policy::Dedicated, 1, &[]).unwrap();
        let hot = Arc::new(AtomicBool::new(true));
        group
            .add(Box::new(Burner {
                hot: hot.clone(),
                cost: Duration::from_micros(50),
            }))
            .unwrap();
        group
            .add(Box::new(Ticker {
                polls: Arc::new(AtomicUsize::new(0)),
            }))
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        hot.store(false, Ordering::Relaxed);
        // Idle polling for a while: shared evenly from here on.
        std::thread::sleep(Duration::from_millis(100));
        let thread: f64 = group.thread_cpu().iter().map(|(_, s)| s).sum();
        let cpu = |name: &str| {
            group
                .engine_stats()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.cpu_ns as f64 / 1e9)
                .unwrap()
        };
        let (burner, ticker) = (cpu("burner"), cpu("ticker"));
        assert!(
            burner > 0.2 && burner > 3.0 * ticker,
            "burner {burner:.3} s, ticker {ticker:.3} s of {thread:.3} s"
        );
        // Idle, a dedicated thread yields its CPU (YIELD_EVERY_IDLE_ROUNDS):
        // on a busy machine it gets little of it then, so only that the
        // ticker got a share is asked.
        assert!(ticker > 0.0, "idle polling is shared too: {ticker:.3} s");
        // Up to a millisecond of sharing lag, and schedstat's own timing.
        assert!(
            (burner + ticker - thread).abs() < 0.1 * thread,
            "shares {:.3} s against the thread's {thread:.3} s",
            burner + ticker
        );
        group.stop();
    }

    #[test]
    fn naps_shorten_at_once_when_rings_fill_and_lengthen_gradually() {
        let us = Duration::from_micros;
        let mut nap = NapLength::new(us(200));
        assert_eq!(nap.current, us(175), "7/8 of the bound");
        // A full ring after 100 µs: half as long, at once.
        nap.adapt(1.0, us(100));
        assert_eq!(nap.current, us(50));
        // A quarter full after 50 µs: could be 100 µs; goes halfway.
        nap.adapt(0.25, us(50));
        assert_eq!(nap.current, us(75));
        // Nothing arrived: towards the longest, never past it.
        for _ in 0..20 {
            nap.adapt(0.0, us(75));
        }
        assert!(nap.current <= us(175) && nap.current > us(165));
        // Never below the shortest.
        nap.adapt(1.0, Duration::ZERO);
        assert_eq!(nap.current, NapLength::SHORTEST);
    }

    /// Logs each poll; does one unit of work when `work` is set.
    struct Logged {
        name: &'static str,
        relay: bool,
        work: Arc<AtomicBool>,
        log: Arc<Mutex<Vec<(&'static str, bool)>>>,
    }
    impl Engine for Logged {
        fn name(&self) -> &str {
            self.name
        }
        fn poll(&mut self, _budget: usize) -> usize {
            let busy = self.work.swap(false, Ordering::AcqRel);
            let mut log = lock(&self.log);
            if log.len() < 100_000 {
                log.push((self.name, busy));
            }
            usize::from(busy)
        }
        fn wake_fds(&self) -> Vec<RawFd> {
            Vec::new()
        }
        fn arm(&mut self) -> bool {
            false
        }
        fn disarm(&mut self) {}
        fn relays(&self) -> bool {
            self.relay
        }
    }

    #[test]
    fn the_relay_is_polled_right_after_an_engine_that_did_work() {
        let group = EngineGroup::start("relay", Policy::Dedicated, 1, &[]).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let work = Arc::new(AtomicBool::new(false));
        for (name, relay) in [("switch", true), ("vnic0", false), ("vnic1", false)] {
            group
                .add(Box::new(Logged {
                    name,
                    relay,
                    work: if name == "vnic0" {
                        work.clone()
                    } else {
                        Arc::new(AtomicBool::new(false))
                    },
                    log: log.clone(),
                }))
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        lock(&log).clear();
        work.store(true, Ordering::Release);
        assert!(wait_until(Duration::from_secs(2), || !work.load(Ordering::Acquire)));
        std::thread::sleep(Duration::from_millis(5));
        group.stop();
        let log = lock(&log);
        let busy = log
            .iter()
            .position(|e| *e == ("vnic0", true))
            .expect("vnic0 did its work");
        assert_eq!(
            log.get(busy + 1).map(|e| e.0),
            Some("switch"),
            "polls around the busy one: {:?}",
            &log[busy.saturating_sub(3)..(busy + 4).min(log.len())]
        );
    }

    /// Work fed by a producer thread; counts polls and records when the
    /// worker arms it (about to block).
    struct Paced {
        pending: Arc<AtomicUsize>,
        bell: Arc<Doorbell>,
        polls: Arc<AtomicUsize>,
        arms: Arc<Mutex<Vec<Instant>>>,
    }
    impl Engine for Paced {
        fn name(&self) -> &str {
            "paced"
        }
        fn poll(&mut self, _budget: usize) -> usize {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.pending.swap(0, Ordering::AcqRel)
        }
        fn wake_fds(&self) -> Vec<RawFd> {
            vec![self.bell.as_raw_fd()]
        }
        fn arm(&mut self) -> bool {
            lock(&self.arms).push(Instant::now());
            self.bell.arm();
            self.pending.load(Ordering::Acquire) > 0
        }
        fn disarm(&mut self) {
            self.bell.disarm();
        }
    }

    struct Feed {
        pending: Arc<AtomicUsize>,
        bell: Arc<Doorbell>,
        polls: Arc<AtomicUsize>,
        arms: Arc<Mutex<Vec<Instant>>>,
    }
    impl Feed {
        fn new(group: &EngineGroup) -> Self {
            let f = Feed {
                pending: Arc::new(AtomicUsize::new(0)),
                bell: Arc::new(Doorbell::new().unwrap()),
                polls: Arc::new(AtomicUsize::new(0)),
                arms: Arc::new(Mutex::new(Vec::new())),
            };
            group
                .add(Box::new(Paced {
                    pending: f.pending.clone(),
                    bell: f.bell.clone(),
                    polls: f.polls.clone(),
                    arms: f.arms.clone(),
                }))
                .unwrap();
            f
        }
        /// `n` units of work, `gap` apart; returns when the last was posted.
        fn run(&self, n: usize, gap: Duration) -> Instant {
            let mut last = Instant::now();
            for _ in 0..n {
                std::thread::sleep(gap);
                self.pending.fetch_add(1, Ordering::AcqRel);
                self.bell.ring();
                last = Instant::now();
            }
            last
        }
        fn arms_since(&self, t: Instant) -> Vec<Duration> {
            lock(&self.arms)
                .iter()
                .filter(|a| **a >= t)
                .map(|a| a.duration_since(t))
                .collect()
        }
    }

    #[test]
    fn coalescing_polls_through_the_quiet_period_then_arms() {
        for policy in [Policy::Spreading, Policy::Compacting] {
            // Gaps of 2 ms: sparse for naps of at most 175 µs, but within a
            // quiet period of 20 ms, so the spin pays.
            let quiet = Duration::from_millis(20);
            let group = EngineGroup::start_tuned(
                "quiet",
                policy,
                1,
                &[],
                Duration::from_micros(200),
                quiet,
            )
            .unwrap();
            let feed = Feed::new(&group);
            // Learn that work comes back within the quiet period.
            feed.run(10, Duration::from_millis(2));
            let t = Instant::now();
            let last = feed.run(20, Duration::from_millis(2));
            let during: Vec<Duration> = feed.arms_since(t).into_iter().collect();
            let stop = Instant::now();
            assert!(
                during.iter().all(|d| t + *d > last),
                "{policy:?}: armed during the burst, at {during:?}"
            );
            std::thread::sleep(quiet * 3);
            let after = feed.arms_since(stop);
            let first = *after
                .first()
                .unwrap_or_else(|| panic!("{policy:?}: never armed"));
            let since_last = (stop + first).duration_since(last);
            // The worker times the quiet period from its own reading of the
            // last work, which the test's clock can see a few microseconds
            // apart: a millisecond of slack (CI saw 19.9998 ms).
            assert!(
                since_last + Duration::from_millis(1) >= quiet && since_last < quiet * 2,
                "{policy:?}: armed {since_last:?} after the last work (quiet period {quiet:?})"
            );
            group.stop();
        }
    }

    #[test]
    fn sparse_work_blocks_between_arrivals_instead_of_napping() {
        for policy in [Policy::Spreading, Policy::Compacting] {
            let group = EngineGroup::start("sparse", policy, 1, &[]).unwrap();
            let feed = Feed::new(&group);
            // A ping every 5 ms: napping 175 µs at a time would poll about
            // 29 times per arrival.
            // (The first few spins are wasted until it learns.)
            feed.run(20, Duration::from_millis(5));
            let polls = feed.polls.load(Ordering::Relaxed);
            let arms = lock(&feed.arms).len();
            feed.run(40, Duration::from_millis(5));
            let polls = feed.polls.load(Ordering::Relaxed) - polls;
            let arms = lock(&feed.arms).len() - arms;
            assert!(
                polls < 40 * 6,
                "{policy:?}: {polls} polls for 40 arrivals: napping through the gaps"
            );
            assert!(arms >= 35, "{policy:?}: blocked only {arms} times");
            group.stop();
        }
    }

    /// Whether `poller` wakes within 100 ms when the file now at `fd` is
    /// written.
    fn wakes_on(poller: &mut Poller, fds: &[RawFd], epoch: u64, file: &Doorbell) -> bool {
        file.wake();
        let t = Instant::now();
        poller.wait(fds, epoch, 100);
        file.disarm();
        t.elapsed() < Duration::from_millis(90)
    }

    #[test]
    fn a_new_file_under_an_old_number_is_watched_once_the_epoch_moves() {
        let mut poller = Poller::new().unwrap();
        let old = Doorbell::new().unwrap();
        let fd = old.as_raw_fd();
        // Another holder keeps the old file open (a frontend's copy of a
        // kick eventfd), so its epoll entry outlives our fd.
        // SAFETY: dup of an open fd; the copy is owned by `elsewhere`.
        let elsewhere = unsafe { std::os::fd::OwnedFd::from_raw_fd(libc::dup(fd)) };
        assert!(wakes_on(&mut poller, &[fd], 1, &old));
        // The old file is replaced by a new one under the same number.
        let new = Doorbell::new().unwrap();
        // SAFETY: both fds are open; dup2 closes `fd` and reopens it as a
        // copy of `new`'s file, which `old` then owns.
        assert_eq!(unsafe { libc::dup2(new.as_raw_fd(), fd) }, fd);
        assert!(
            !wakes_on(&mut poller, &[fd], 1, &new),
            "same number, same epoch: the stale set misses the new file"
        );
        assert!(
            wakes_on(&mut poller, &[fd], 2, &new),
            "a moved epoch rebuilds the set"
        );
        drop(elsewhere);
    }

    #[test]
    fn engines_are_polled_and_can_be_removed() {
        let group = EngineGroup::start("t", Policy::Dedicated, 2, &[]).unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let id = group
            .add(Box::new(Ticker {
                polls: polls.clone(),
            }))
            .unwrap();
        while polls.load(Ordering::Relaxed) < 1000 {
            std::thread::yield_now();
        }
        let engine = group.remove(id).unwrap();
        assert_eq!(engine.name(), "ticker");
        let n = polls.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            polls.load(Ordering::Relaxed),
            n,
            "removed engine still polled"
        );
        assert!(group.remove(id).is_err());
        group.stop();
    }
}
