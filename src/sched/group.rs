//! Engine groups and their scheduling policies.
//!
//! - *dedicated*: N threads, each pinned to a CPU when given, poll their
//!   engines round-robin and never sleep. Lowest latency; burns its cores.
//! - *spreading*: one thread per engine. When its engine has found no work
//!   for a few rounds the thread arms the engine's wake-ups (virtqueue
//!   notifications, link and mailbox doorbells), re-checks, and blocks in
//!   epoll; an idle group uses no CPU.
//!
//! Both run the same loop; only whether it may sleep and how engines are
//! spread over threads differ.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EngineId, GroupError};
use crate::engine::{Doorbell, Engine};

/// Packets an engine may handle per poll before the thread moves on.
pub const POLL_BUDGET: usize = 64;

/// Empty rounds a sleeping policy spins before it arms and sleeps: long
/// enough to ride out the gap inside a burst, short enough to cost little.
const SPIN_ROUNDS: u32 = 256;

/// A sleeping thread re-checks at least this often even without a wake-up.
const SLEEP_TIMEOUT_MS: i32 = 1000;

/// How a group runs its engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Pinned threads that busy-poll their engines.
    Dedicated,
    /// One thread per engine, sleeping when its engine is idle.
    Spreading,
}

type Removal = (EngineId, mpsc::SyncSender<Box<dyn Engine>>);

struct Worker {
    /// Set when `adds` or `removals` changed, so the hot loop checks one flag.
    changed: AtomicBool,
    stop: AtomicBool,
    adds: Mutex<Vec<(EngineId, Box<dyn Engine>)>>,
    removals: Mutex<Vec<Removal>>,
    load: Mutex<Vec<EngineId>>,
    /// Rung on placement changes and stop, so a sleeping worker notices.
    wake: Doorbell,
    /// Kernel thread id, for CPU accounting from /proc.
    tid: AtomicI32,
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
}

impl EngineGroup {
    /// Starts a group. Dedicated: `threads` threads now, thread i pinned to
    /// `cpus[i % len]` when `cpus` is not empty. Spreading: a thread per
    /// engine as engines arrive, pinned round-robin over `cpus`.
    pub fn start(
        name: &str,
        policy: Policy,
        threads: usize,
        cpus: &[usize],
    ) -> Result<Self, GroupError> {
        if policy == Policy::Dedicated && threads == 0 {
            return Err(GroupError::NoThreads(name.to_string()));
        }
        let group = Self {
            name: name.to_string(),
            policy,
            cpus: cpus.to_vec(),
            workers: Mutex::new(Vec::new()),
            next_cpu: AtomicUsize::new(0),
        };
        if policy == Policy::Dedicated {
            for _ in 0..threads {
                let w = group.spawn_worker()?;
                lock(&group.workers).push(w);
            }
        }
        Ok(group)
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
        });
        let i = self.next_cpu.fetch_add(1, Ordering::Relaxed);
        let cpu = (!self.cpus.is_empty()).then(|| self.cpus[i % self.cpus.len()]);
        let may_sleep = self.policy == Policy::Spreading;
        let w = worker.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{i}", self.name))
            .spawn(move || run(w, cpu, may_sleep))
            .map_err(|source| GroupError::Spawn {
                group: self.name.clone(),
                source,
            })?;
        Ok(Running {
            worker,
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Places an engine: on the least loaded thread (dedicated) or on a
    /// thread of its own (spreading).
    pub fn add(&self, engine: Box<dyn Engine>) -> Result<EngineId, GroupError> {
        let id = EngineId::fresh();
        let mut workers = lock(&self.workers);
        let worker = match self.policy {
            Policy::Dedicated => workers
                .iter()
                .min_by_key(|w| lock(&w.worker.load).len())
                .map(|w| w.worker.clone())
                .ok_or_else(|| GroupError::NoThreads(self.name.clone()))?,
            Policy::Spreading => {
                let w = self.spawn_worker()?;
                let worker = w.worker.clone();
                workers.push(w);
                worker
            }
        };
        lock(&worker.load).push(id);
        lock(&worker.adds).push((id, engine));
        worker.notify();
        Ok(id)
    }

    /// Takes an engine out of the group, between two of its polls, and
    /// hands it back.
    pub fn remove(&self, id: EngineId) -> Result<Box<dyn Engine>, GroupError> {
        let worker = lock(&self.workers)
            .iter()
            .find(|w| lock(&w.worker.load).contains(&id))
            .map(|w| w.worker.clone())
            .ok_or_else(|| GroupError::UnknownEngine(id, self.name.clone()))?;
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&worker.removals).push((id, tx));
        worker.notify();
        let engine = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| GroupError::Stopped(self.name.clone()))?;
        lock(&worker.load).retain(|e| *e != id);
        if self.policy == Policy::Spreading {
            // The engine's own thread has nothing left to do.
            let mut workers = lock(&self.workers);
            if let Some(pos) = workers.iter().position(|w| Arc::ptr_eq(&w.worker, &worker)) {
                let mut w = workers.swap_remove(pos);
                drop(workers);
                stop_worker(&mut w);
            }
        }
        Ok(engine)
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
    pub fn stop(self) {
        self.shutdown();
    }

    fn shutdown(&self) {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(worker: Arc<Worker>, cpu: Option<usize>, may_sleep: bool) {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    worker.tid.store(tid, Ordering::Relaxed);
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu);
    }
    let mut engines: Vec<(EngineId, Box<dyn Engine>)> = Vec::new();
    let mut poller = if may_sleep { Poller::new() } else { None };
    let mut idle_rounds: u32 = 0;
    while !worker.stop.load(Ordering::Acquire) {
        if worker.changed.load(Ordering::Acquire) {
            worker.changed.store(false, Ordering::Relaxed);
            engines.append(&mut lock(&worker.adds));
            for (id, reply) in lock(&worker.removals).drain(..) {
                if let Some(pos) = engines.iter().position(|(e, _)| *e == id) {
                    let (_, engine) = engines.swap_remove(pos);
                    let _ = reply.send(engine);
                }
            }
        }
        let mut work = 0;
        for (_, engine) in engines.iter_mut() {
            work += engine.poll(POLL_BUDGET);
        }
        if work > 0 {
            idle_rounds = 0;
            continue;
        }
        idle_rounds = idle_rounds.wrapping_add(1);
        match poller.as_mut() {
            Some(p) if idle_rounds >= SPIN_ROUNDS => {
                sleep(&worker, &mut engines, p);
                idle_rounds = 0;
            }
            _ => {
                std::hint::spin_loop();
                if engines.is_empty() && idle_rounds % 1024 == 0 {
                    // No engines at all: nothing can arrive but a placement.
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }
}

/// Arms every engine and the worker's own doorbell, re-checks, and blocks
/// until one of them fires. The order (announce sleep, then look for work)
/// is what makes a wake-up impossible to lose: a producer that published
/// before our re-check is seen by it; one that publishes after sees us
/// sleeping and writes the eventfd.
fn sleep(worker: &Worker, engines: &mut [(EngineId, Box<dyn Engine>)], poller: &mut Poller) {
    worker.wake.arm();
    let mut work = worker.changed.load(Ordering::Acquire) || worker.stop.load(Ordering::Acquire);
    for (_, e) in engines.iter_mut() {
        work |= e.arm();
    }
    if !work {
        let mut fds = vec![worker.wake.as_raw_fd()];
        for (_, e) in engines.iter() {
            fds.extend(e.wake_fds());
        }
        poller.wait(&fds, SLEEP_TIMEOUT_MS);
    }
    for (_, e) in engines.iter_mut() {
        e.disarm();
    }
    worker.wake.disarm();
}

/// An epoll set kept equal to the fds a worker sleeps on.
struct Poller {
    epfd: RawFd,
    registered: Vec<RawFd>,
    events: Vec<epoll::Event>,
}

impl Poller {
    fn new() -> Option<Self> {
        match epoll::create(true) {
            Ok(epfd) => Some(Self {
                epfd,
                registered: Vec::new(),
                events: vec![epoll::Event::new(epoll::Events::empty(), 0); 16],
            }),
            Err(e) => {
                log::warn!("epoll unavailable ({e}): engines will busy-poll");
                None
            }
        }
    }

    fn wait(&mut self, fds: &[RawFd], timeout_ms: i32) {
        if self.registered != fds {
            for fd in self.registered.drain(..) {
                let _ = epoll::ctl(
                    self.epfd,
                    epoll::ControlOptions::EPOLL_CTL_DEL,
                    fd,
                    epoll::Event::new(epoll::Events::empty(), 0),
                );
            }
            for &fd in fds {
                let ev = epoll::Event::new(epoll::Events::EPOLLIN, fd as u64);
                if epoll::ctl(self.epfd, epoll::ControlOptions::EPOLL_CTL_ADD, fd, ev).is_ok() {
                    self.registered.push(fd);
                }
            }
            // Keep the comparison exact even if an fd could not be added.
            if self.registered != fds {
                self.registered = fds.to_vec();
            }
        }
        let _ = epoll::wait(self.epfd, timeout_ms, &mut self.events);
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

fn pin_to_cpu(cpu: usize) {
    // SAFETY: `cpu_set_t` is plain data; CPU_ZERO/CPU_SET only write inside it
    // (CPU_SET ignores indices beyond the set), and sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            log::warn!(
                "cannot pin thread to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::RawFd;
    use std::sync::atomic::AtomicUsize;

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
