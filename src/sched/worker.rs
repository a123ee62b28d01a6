//! An engine group's thread: the loop that polls its engines, and what it
//! does when they have no work (spin, nap, or arm wake-ups and sleep).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::clock::{self, Stamp};
use super::coalesce::{Coalescer, Step};
use super::cpu_share::CpuShare;
use super::nap::NapLength;
use super::os::{pin_to_cpu, wait_readable, yield_cpu, Poller};
use super::stats::EngineStats;
use super::EngineId;
use crate::engine::{Doorbell, Engine};

/// Packets an engine may handle per poll before the thread moves on.
pub const POLL_BUDGET: usize = 64;

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

/// How long an engine-less dedicated worker blocks at a time (a placement
/// or the stop wakes it at once; this only bounds a missed wake-up).
pub(super) const EMPTY_WORKER_WAIT: Duration = Duration::from_millis(100);

pub(super) type Removal = (EngineId, mpsc::SyncSender<Box<dyn Engine>>);

/// An engine as a worker holds it.
pub(super) struct Placed {
    pub(super) id: EngineId,
    pub(super) engine: Box<dyn Engine>,
    pub(super) stats: Arc<EngineStats>,
}

pub(super) struct Worker {
    /// Set when `adds` or `removals` changed, so the hot loop checks one flag.
    pub(super) changed: AtomicBool,
    pub(super) stop: AtomicBool,
    pub(super) adds: Mutex<Vec<Placed>>,
    pub(super) removals: Mutex<Vec<Removal>>,
    pub(super) load: Mutex<Vec<EngineId>>,
    /// Rung on placement changes and stop, so a sleeping worker notices.
    pub(super) wake: Doorbell,
    /// Kernel thread id, for CPU accounting from /proc.
    pub(super) tid: AtomicI32,
    /// The group's [`EngineGroup::share_cpus`].
    pub(super) sharing: Arc<AtomicBool>,
}

impl Worker {
    pub(super) fn notify(&self) {
        self.changed.store(true, Ordering::Release);
        self.wake.ring();
    }
}

pub(super) fn place(worker: &Arc<Worker>, p: Placed) {
    lock(&worker.load).push(p.id);
    lock(&worker.adds).push(p);
    worker.notify();
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a worker does when its engines have no work.
#[derive(Clone, Copy)]
pub(super) enum Idle {
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

pub(super) fn run(worker: Arc<Worker>, cpu: Option<usize>, idle: Idle) {
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
        let mut handoff = false;
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
                handoff |= engines[i].engine.take_handoff();
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
                if sharing || handoff {
                    yield_cpu();
                }
            }
            continue;
        };
        if work > 0 {
            co.work(t0);
            if sharing || handoff {
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
