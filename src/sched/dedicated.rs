//! The dedicated policy: N threads, each pinned to a CPU when given, poll their
//! engines round-robin and never sleep. Lowest latency; burns its cores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{EngineId, GroupError};
use crate::engine::Engine;

/// Packets an engine may handle per poll before the thread moves on.
pub const POLL_BUDGET: usize = 64;

type Removal = (EngineId, mpsc::SyncSender<Box<dyn Engine>>);

struct Worker {
    /// Set when `adds` or `removals` changed, so the hot loop checks one flag.
    changed: AtomicBool,
    adds: Mutex<Vec<(EngineId, Box<dyn Engine>)>>,
    removals: Mutex<Vec<Removal>>,
    load: Mutex<Vec<EngineId>>,
    /// Kernel thread id, for CPU accounting from /proc.
    tid: std::sync::atomic::AtomicI32,
}

/// A group of dedicated polling threads.
pub struct DedicatedGroup {
    name: String,
    stop: Arc<AtomicBool>,
    workers: Vec<Arc<Worker>>,
    threads: Vec<JoinHandle<()>>,
}

impl DedicatedGroup {
    /// Starts `threads` threads; thread i is pinned to `cpus[i % len]` when
    /// `cpus` is not empty.
    pub fn start(name: &str, threads: usize, cpus: &[usize]) -> Result<Self, GroupError> {
        if threads == 0 {
            return Err(GroupError::NoThreads(name.to_string()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads {
            let worker = Arc::new(Worker {
                changed: AtomicBool::new(false),
                adds: Mutex::new(Vec::new()),
                removals: Mutex::new(Vec::new()),
                load: Mutex::new(Vec::new()),
                tid: std::sync::atomic::AtomicI32::new(0),
            });
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let (w, s) = (worker.clone(), stop.clone());
            let handle = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || run(w, s, cpu))
                .map_err(|source| GroupError::Spawn {
                    group: name.to_string(),
                    source,
                })?;
            workers.push(worker);
            handles.push(handle);
        }
        Ok(Self {
            name: name.to_string(),
            stop,
            workers,
            threads: handles,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Places an engine on the least loaded thread.
    pub fn add(&self, engine: Box<dyn Engine>) -> EngineId {
        let id = EngineId::fresh();
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| lock(&w.load).len())
            .expect("at least one worker");
        lock(&worker.load).push(id);
        lock(&worker.adds).push((id, engine));
        worker.changed.store(true, Ordering::Release);
        id
    }

    /// Takes an engine out of the group and hands it back.
    pub fn remove(&self, id: EngineId) -> Result<Box<dyn Engine>, GroupError> {
        let worker = self
            .workers
            .iter()
            .find(|w| lock(&w.load).contains(&id))
            .ok_or_else(|| GroupError::UnknownEngine(id, self.name.clone()))?;
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&worker.removals).push((id, tx));
        worker.changed.store(true, Ordering::Release);
        let engine = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| GroupError::Stopped(self.name.clone()))?;
        lock(&worker.load).retain(|e| *e != id);
        Ok(engine)
    }

    /// Engines placed in the group.
    pub fn engine_count(&self) -> usize {
        self.workers.iter().map(|w| lock(&w.load).len()).sum()
    }

    /// CPU time used by each thread so far: (kernel thread id, seconds).
    pub fn thread_cpu(&self) -> Vec<(i32, f64)> {
        self.workers
            .iter()
            .map(|w| {
                let tid = w.tid.load(Ordering::Relaxed);
                (tid, thread_cpu_seconds(tid))
            })
            .collect()
    }

    /// Stops the threads; engines still placed are dropped on their thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for DedicatedGroup {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(worker: Arc<Worker>, stop: Arc<AtomicBool>, cpu: Option<usize>) {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    worker.tid.store(tid, Ordering::Relaxed);
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu);
    }
    let mut engines: Vec<(EngineId, Box<dyn Engine>)> = Vec::new();
    let mut idle_rounds: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
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
        if work == 0 {
            idle_rounds = idle_rounds.wrapping_add(1);
            // A dedicated thread never sleeps, but a pause lets a sibling
            // hyperthread run while there is nothing to do.
            std::hint::spin_loop();
            if engines.is_empty() && idle_rounds % 1024 == 0 {
                // No engines at all: nothing can arrive but a placement.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
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

    #[test]
    fn engines_are_polled_and_can_be_removed() {
        let group = DedicatedGroup::start("t", 2, &[]).unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let id = group.add(Box::new(Ticker {
            polls: polls.clone(),
        }));
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
