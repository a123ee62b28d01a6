//! The virtio-net device of one vNIC as the vhost-user side sees it: features,
//! config space, memory, and handing each vring to the engine of its queue
//! pair. It reaches engines only through a [`QueueSink`], so it can be tested
//! with a mock sink and no engine at all.
//!
//! Guest kicks never pass through here: when a vring starts, its engine gets
//! a duplicate of the kick eventfd and sleeps on it itself (one wake-up per
//! kick, on the thread that does the work).

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use vhost_user_backend::{VringRwLock, VringT};
use vmm_sys_util::event::EventConsumer;

use super::dirty_log::{DirtyLog, DirtyLogError};
use super::engine::{AttachedQueue, GuestMemory, Side, VnicEngine};
use super::features::{self, ConfigSpace, Negotiated};
use crate::engine::{MailboxError, MailboxSender};
use snapnet_wire::MacAddr;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("vring {0} does not exist")]
    NoSuchVring(usize),
    #[error("vring {0} is not attached")]
    NotAttached(usize),
    #[error("vring {index}: engine did not answer: {source}")]
    Engine { index: usize, source: MailboxError },
    #[error("MTU {0} is below the minimum of 68")]
    MtuTooSmall(u16),
    #[error("vring {index}: cannot take its kick eventfd: {source}")]
    Kick {
        index: usize,
        source: std::io::Error,
    },
    #[error(transparent)]
    DirtyLog(#[from] DirtyLogError),
}

/// Where the device sends vrings: the engines (or a mock in tests).
pub trait QueueSink: Send + Sync + 'static {
    fn attach(
        &self,
        index: usize,
        vring: VringRwLock,
        mem: GuestMemory,
        features: Negotiated,
        kick: Option<EventConsumer>,
    ) -> Result<(), DeviceError>;
    fn detach(&self, index: usize) -> Result<(), DeviceError>;
    /// The frontend replaced the kick eventfd of attached vring `index`.
    fn set_kick(&self, index: usize, kick: Option<EventConsumer>) -> Result<(), DeviceError>;
    /// Enforce a new MTU on guest TX.
    fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError>;
    /// Keep frames for the guest while its vrings are detached for a
    /// hand-over (they move to the new process), or no longer.
    fn hold_frames(&self, on: bool) -> Result<(), DeviceError>;
    /// Mark every write into guest memory in `log` from now on (a live
    /// migration), or stop (`None`). Returns once no engine writes to a
    /// log it was given before.
    fn set_dirty_log(&self, log: Option<Arc<DirtyLog>>) -> Result<(), DeviceError>;
    /// Announce `mac` into the switch from the vNIC's port (SEND_RARP).
    fn announce(&self, mac: MacAddr) -> Result<(), DeviceError>;
    /// A hand-over: hold frames for the guest and detach vrings `indices`
    /// (attached ones, in order). Returns how many of them were detached
    /// (all but on an error). A sink whose engines serve several vrings
    /// does it in one request each, since each request waits for an
    /// engine thread.
    fn detach_holding(&self, indices: &[usize]) -> (usize, Result<(), DeviceError>) {
        if let Err(e) = self.hold_frames(true) {
            return (0, Err(e));
        }
        for (n, &i) in indices.iter().enumerate() {
            if let Err(e) = self.detach(i) {
                return (n, Err(e));
            }
        }
        (indices.len(), Ok(()))
    }
}

/// Engine mailboxes, one per queue pair.
pub struct EngineSink {
    engines: Vec<MailboxSender<VnicEngine>>,
    /// While the engines of a vNIC taken over in an upgrade are gated (they
    /// leave the guest's rings alone until the old process let go), what
    /// the replay of its connection asks of each: run in the one mailbox
    /// call per engine that opens its gate ([`Self::open_gates`]). Each
    /// call waits for the engine's thread, which shares its CPU with the
    /// other process's while the vNICs move.
    deferred: Mutex<Option<Vec<Vec<EngineRequest>>>>,
}

/// A change made on an engine's thread.
type EngineRequest = Box<dyn FnOnce(&mut VnicEngine) + Send>;

const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

impl EngineSink {
    pub fn new(engines: Vec<MailboxSender<VnicEngine>>) -> Self {
        Self {
            engines,
            deferred: Mutex::new(None),
        }
    }

    /// For gated engines (an upgrade's take-over): the vhost-user side's
    /// requests wait for [`Self::open_gates`].
    pub fn gated(engines: Vec<MailboxSender<VnicEngine>>) -> Self {
        let deferred = Some(engines.iter().map(|_| Vec::new()).collect());
        Self {
            engines,
            deferred: Mutex::new(deferred),
        }
    }

    /// Runs `f` on the engine of vring `index`, now or (gated) when the
    /// gates open.
    fn request(
        &self,
        index: usize,
        f: impl FnOnce(&mut VnicEngine) + Send + 'static,
    ) -> Result<(), DeviceError> {
        let qp = index / 2;
        let engine = self
            .engines
            .get(qp)
            .ok_or(DeviceError::NoSuchVring(index))?;
        if let Some(deferred) = lock(&self.deferred).as_mut() {
            deferred[qp].push(Box::new(f));
            return Ok(());
        }
        engine
            .call(ENGINE_TIMEOUT, f)
            .map_err(|source| DeviceError::Engine { index, source })
    }

    /// Runs `f` on every queue pair's engine, through its mailbox (gated:
    /// when the gates open).
    pub fn configure(
        &self,
        f: impl Fn(&mut VnicEngine) + Clone + Send + 'static,
    ) -> Result<(), DeviceError> {
        self.configure_each(|_| {
            let f = f.clone();
            move |e: &mut VnicEngine| f(e)
        })
    }

    /// Like [`Self::configure`], with a change made for each queue pair
    /// (`f(queue pair)`).
    pub fn configure_each<G>(&self, f: impl Fn(usize) -> G) -> Result<(), DeviceError>
    where
        G: FnOnce(&mut VnicEngine) + Send + 'static,
    {
        (0..self.engines.len()).try_for_each(|qp| self.request(qp * 2, f(qp)))
    }

    /// Runs `f(queue pair)` on every engine now, gated or not, one call
    /// after the other, stopping at the first engine that fails.
    fn call_each<G>(&self, f: impl Fn(usize) -> G) -> Result<(), DeviceError>
    where
        G: FnOnce(&mut VnicEngine) + Send + 'static,
    {
        for (qp, engine) in self.engines.iter().enumerate() {
            let g = f(qp);
            engine
                .call(ENGINE_TIMEOUT, g)
                .map_err(|source| DeviceError::Engine {
                    index: qp * 2,
                    source,
                })?;
        }
        Ok(())
    }

    /// Every queue's engine serves its guest's rings from now on (after an
    /// upgrade's take-over: [`VnicEngine::open_gate`]).
    /// What the replay asked of an engine runs first, in the same call.
    /// Returns when the last engine opened its gate (on its own thread).
    pub fn open_gates(&self) -> Result<Instant, DeviceError> {
        // Held throughout: a request made meanwhile waits, then runs
        // after the deferred ones.
        let mut deferred = lock(&self.deferred);
        let waiting: Vec<Mutex<Vec<EngineRequest>>> = deferred
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(Mutex::new)
            .collect();
        let opened = Arc::new(Mutex::new(Instant::now()));
        self.call_each(|qp| {
            let requests = waiting
                .get(qp)
                .map(|w| std::mem::take(&mut *lock(w)))
                .unwrap_or_default();
            let opened = opened.clone();
            move |e: &mut VnicEngine| {
                for r in requests {
                    r(e);
                }
                e.open_gate();
                *lock(&opened) = Instant::now();
            }
        })?;
        // The calls run one after the other: the last one set it.
        let at = *lock(&opened);
        Ok(at)
    }
}

impl QueueSink for EngineSink {
    fn attach(
        &self,
        index: usize,
        vring: VringRwLock,
        mem: GuestMemory,
        features: Negotiated,
        kick: Option<EventConsumer>,
    ) -> Result<(), DeviceError> {
        let side = Side::of_vring(index);
        let queue = AttachedQueue::new(vring, mem).with_kick(kick);
        self.request(index, move |e: &mut VnicEngine| {
            e.attach(side, queue, features)
        })
    }

    fn detach(&self, index: usize) -> Result<(), DeviceError> {
        let side = Side::of_vring(index);
        self.request(index, move |e: &mut VnicEngine| e.detach(side))
    }

    fn set_kick(&self, index: usize, kick: Option<EventConsumer>) -> Result<(), DeviceError> {
        let side = Side::of_vring(index);
        self.request(index, move |e: &mut VnicEngine| e.set_kick(side, kick))
    }

    fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        self.configure(move |e: &mut VnicEngine| e.set_mtu(mtu))
    }

    fn hold_frames(&self, on: bool) -> Result<(), DeviceError> {
        self.configure(move |e: &mut VnicEngine| e.hold_frames(on))
    }

    fn set_dirty_log(&self, log: Option<Arc<DirtyLog>>) -> Result<(), DeviceError> {
        self.configure(move |e: &mut VnicEngine| e.set_dirty_log(log.clone()))
    }

    fn announce(&self, mac: MacAddr) -> Result<(), DeviceError> {
        self.request(0, move |e: &mut VnicEngine| {
            e.announce(mac);
        })
    }

    fn detach_holding(&self, indices: &[usize]) -> (usize, Result<(), DeviceError>) {
        let result = self.call_each(|qp| {
            let sides: Vec<Side> = indices
                .iter()
                .filter(|&&i| i / 2 == qp)
                .map(|&i| Side::of_vring(i))
                .collect();
            move |e: &mut VnicEngine| {
                e.hold_frames(true);
                for side in sides {
                    e.detach(side);
                }
            }
        });
        // `call_each` stops at the first engine that failed: the
        // vrings of the engines before it were detached.
        let done = match &result {
            Ok(()) => indices.len(),
            Err(DeviceError::Engine { index, .. }) => {
                indices.iter().filter(|&&i| i < *index).count()
            }
            Err(_) => 0,
        };
        (done, result)
    }
}

/// One vNIC's device state.
pub struct VnicDevice<S: QueueSink> {
    name: String,
    queue_pairs: u16,
    config: Mutex<ConfigSpace>,
    max_mtu: AtomicU16,
    acked: AtomicU64,
    mem: Mutex<Option<GuestMemory>>,
    attached: Vec<AtomicBool>,
    /// Vrings that started before the frontend sent its memory table:
    /// attached when it arrives.
    waiting: Mutex<Vec<Option<VringRwLock>>>,
    /// Attached vrings, kept so that a hand-over that is rolled back can
    /// give them to the engines again (see [`VnicDevice::hand_over_vrings`]).
    serving: Mutex<Vec<Option<VringRwLock>>>,
    /// Vrings taken from the engines for a hand-over.
    handed_over: Mutex<Vec<Option<VringRwLock>>>,
    /// The dirty-page log the frontend shared (SET_LOG_BASE), and whether
    /// it asked for logging (VHOST_F_LOG_ALL acked): the engines mark it
    /// while both hold.
    dirty_log: Mutex<DirtyLogState>,
    /// When the last announcement (SEND_RARP) went out: at most one per
    /// [`ANNOUNCE_INTERVAL`], whatever the frontend sends.
    last_announce: Mutex<Option<Instant>>,
    /// Run when the first queue pair's RX vring starts: a vNIC sharing its
    /// MAC with the other end of a live migration takes the MAC's frames.
    on_rings_started: Mutex<Option<RingsStarted>>,
    sink: S,
}

/// See [`VnicDevice::on_rings_started`].
pub type RingsStarted = Arc<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct DirtyLogState {
    log: Option<Arc<DirtyLog>>,
    logging: bool,
}

impl DirtyLogState {
    /// The log the engines mark now.
    fn active(&self) -> Option<Arc<DirtyLog>> {
        self.log.clone().filter(|_| self.logging)
    }
}

/// Shortest time between two announcements of one vNIC.
const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);

impl<S: QueueSink> VnicDevice<S> {
    pub fn new(name: &str, mac: MacAddr, mtu: u16, queue_pairs: u16, sink: S) -> Self {
        Self {
            name: name.to_string(),
            queue_pairs,
            config: Mutex::new(ConfigSpace {
                mac,
                link_up: true,
                max_queue_pairs: queue_pairs,
                mtu,
            }),
            max_mtu: AtomicU16::new(mtu),
            acked: AtomicU64::new(0),
            mem: Mutex::new(None),
            attached: (0..usize::from(queue_pairs) * 2)
                .map(|_| AtomicBool::new(false))
                .collect(),
            waiting: Mutex::new(vec![None; usize::from(queue_pairs) * 2]),
            serving: Mutex::new(vec![None; usize::from(queue_pairs) * 2]),
            handed_over: Mutex::new(vec![None; usize::from(queue_pairs) * 2]),
            dirty_log: Mutex::new(DirtyLogState::default()),
            last_announce: Mutex::new(None),
            on_rings_started: Mutex::new(None),
            sink,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn num_vrings(&self) -> usize {
        usize::from(self.queue_pairs) * 2
    }

    pub fn features(&self) -> u64 {
        features::offered(self.queue_pairs)
    }

    pub fn set_acked_features(&self, acked: u64) {
        self.acked.store(acked, Ordering::Relaxed);
        // A migration turns logging on and off with SET_FEATURES while the
        // rings run; the other bits do not change then.
        // The frontend frees its log once logging ends, and shares a new one
        // (SET_LOG_BASE) before it logs again.
        self.update_dirty_log(|s| {
            let on = acked & features::LOG_ALL != 0;
            if s.logging && !on {
                s.log = None;
            }
            s.logging = on;
        });
        let rings = if Negotiated::from_bits(acked).packed {
            "packed"
        } else {
            "split"
        };
        log::info!(
            "{}: features {acked:#x} acked, {rings} virtqueues",
            self.name
        );
    }

    /// SET_LOG_BASE: the frontend's dirty-page log (first or a larger
    /// one). Returns once the engines mark the new one, if logging is on:
    /// the frontend frees the old log when this is answered.
    pub fn set_log_base(
        &self,
        file: &std::fs::File,
        size: u64,
        offset: u64,
    ) -> Result<(), DeviceError> {
        let log = Arc::new(DirtyLog::map(file, size, offset)?);
        log::info!(
            "{}: dirty log of {size} bytes mapped (guest memory up to {} MiB)",
            self.name,
            log.covers() >> 20
        );
        self.update_dirty_log(|s| s.log = Some(log));
        Ok(())
    }

    /// Whether a live migration is logging this vNIC's writes (or has a
    /// log mapped for one).
    pub fn migrating(&self) -> bool {
        let s = lock(&self.dirty_log);
        s.logging || s.log.is_some()
    }

    /// Changes the log state and tells the engines when what they must
    /// mark changed.
    fn update_dirty_log(&self, change: impl FnOnce(&mut DirtyLogState)) {
        let mut state = lock(&self.dirty_log);
        let before = state.active();
        change(&mut state);
        let after = state.active();
        let same = match (&before, &after) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if state.logging && state.log.is_none() {
            log::warn!(
                "{}: logging asked for before a dirty log was given",
                self.name
            );
        }
        let on = after.is_some();
        // Under the state's lock: two changes reach the engines in order.
        match self.sink.set_dirty_log(after) {
            Ok(()) => log::info!(
                "{}: dirty-page logging {}",
                self.name,
                if on { "on" } else { "off" }
            ),
            Err(e) => log::warn!("{}: dirty-page logging: {e}", self.name),
        }
    }

    /// SEND_RARP: announce the guest's MAC from this vNIC's port after a
    /// migration. The frontend names the MAC; only the vNIC's own is ever
    /// sent (a frontend cannot make the switch move another tenant's
    /// address), and at most one per [`ANNOUNCE_INTERVAL`].
    pub fn announce(&self, mac: MacAddr) -> Result<(), DeviceError> {
        let own = lock(&self.config).mac;
        if mac != own {
            log::warn!(
                "{}: SEND_RARP for {mac}, not the vNIC's {own}: announcing {own}",
                self.name
            );
        }
        {
            let mut last = lock(&self.last_announce);
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < ANNOUNCE_INTERVAL) {
                log::debug!(
                    "{}: SEND_RARP again within {ANNOUNCE_INTERVAL:?}: ignored",
                    self.name
                );
                return Ok(());
            }
            *last = Some(now);
        }
        log::info!("{}: announcing {own} (SEND_RARP)", self.name);
        self.sink.announce(own)
    }

    pub fn negotiated(&self) -> Negotiated {
        Negotiated::from_bits(self.acked.load(Ordering::Relaxed))
    }

    pub fn set_memory(&self, mem: GuestMemory) {
        *lock(&self.mem) = Some(mem);
        let waiting: Vec<(usize, VringRwLock)> = lock(&self.waiting)
            .iter_mut()
            .enumerate()
            .filter_map(|(i, v)| v.take().map(|v| (i, v)))
            .collect();
        for (index, vring) in waiting {
            if let Err(e) = self.vring_kick_changed(index, &vring, true) {
                log::warn!("{}: {e}", self.name);
            }
        }
    }

    pub fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        lock(&self.config).read(offset, size)
    }

    /// How many of the vNIC's vrings an engine is serving right now.
    pub fn attached_rings(&self) -> usize {
        self.attached
            .iter()
            .filter(|a| a.load(Ordering::Relaxed))
            .count()
    }

    /// NET_SET_MTU from the frontend (QEMU's `host_mtu`). The vNIC's
    /// configured MTU stays the limit: a larger value is accepted (refusing
    /// it would make QEMU drop and retry the connection forever) but guest
    /// frames above the configured MTU are still dropped and counted.
    /// The sink the device hands its rings to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        if mtu < 68 {
            return Err(DeviceError::MtuTooSmall(mtu));
        }
        let max = self.max_mtu.load(Ordering::Relaxed);
        let applied = if mtu > max {
            log::warn!(
                "{}: frontend MTU {mtu} is above the vNIC's MTU {max}; larger frames will be dropped",
                self.name
            );
            max
        } else {
            mtu
        };
        self.sink.set_mtu(applied)?;
        lock(&self.config).mtu = applied;
        Ok(())
    }

    /// The control plane changes the vNIC's MTU: the new limit for guest TX
    /// and for what a frontend may set with NET_SET_MTU.
    pub fn reconfigure_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        self.sink.set_mtu(mtu)?;
        lock(&self.config).mtu = mtu;
        self.max_mtu.store(mtu, Ordering::Relaxed);
        Ok(())
    }

    /// Vring `index` started (ready, enabled, with a kick eventfd), got a
    /// new kick eventfd while started, or stopped: its engine takes it with
    /// its own duplicate of the kick fd, follows a new one, or lets go.
    pub fn vring_kick_changed(
        &self,
        index: usize,
        vring: &VringRwLock,
        started: bool,
    ) -> Result<(), DeviceError> {
        let flag = self
            .attached
            .get(index)
            .ok_or(DeviceError::NoSuchVring(index))?;
        if !started {
            return self.stop_vring(index);
        }
        let kick = own_kick(vring).map_err(|source| DeviceError::Kick { index, source })?;
        if flag.load(Ordering::Acquire) {
            return self.sink.set_kick(index, kick);
        }
        let Some(mem) = lock(&self.mem).clone() else {
            // Started before SET_MEM_TABLE: served once the memory arrives.
            lock(&self.waiting)[index] = Some(vring.clone());
            return Ok(());
        };
        self.sink
            .attach(index, vring.clone(), mem, self.negotiated(), kick)?;
        flag.store(true, Ordering::Release);
        lock(&self.serving)[index] = Some(vring.clone());
        log::debug!("{}: vring {index} attached", self.name);
        if index == 0 {
            let hook = lock(&self.on_rings_started).clone();
            if let Some(hook) = hook {
                hook();
            }
        }
        Ok(())
    }

    /// Sets (or clears) what runs each time the guest's first RX vring
    /// starts (see the field).
    pub fn on_rings_started(&self, hook: Option<RingsStarted>) {
        *lock(&self.on_rings_started) = hook;
    }

    /// GET_VRING_BASE: the engine must let go before the state is read.
    pub fn stop_vring(&self, index: usize) -> Result<(), DeviceError> {
        let flag = self
            .attached
            .get(index)
            .ok_or(DeviceError::NoSuchVring(index))?;
        if let Some(w) = lock(&self.waiting).get_mut(index) {
            *w = None;
        }
        if flag.load(Ordering::Acquire) {
            // Only a detach the engine carried out clears the flag: after a
            // failed one the engine still holds the vring and a later reset
            // must try again.
            self.sink.detach(index)?;
            flag.store(false, Ordering::Release);
            lock(&self.serving)[index] = None;
            log::debug!("{}: vring {index} detached", self.name);
        }
        Ok(())
    }

    /// An upgrade moves the vNIC (docs/upgrade.md): every engine lets go of
    /// its vrings, at a batch boundary, leaving their positions in the
    /// vrings for the state the new process replays. The vhost-user
    /// handler must be paused first, so that nothing starts a vring again.
    pub fn hand_over_vrings(&self) -> Result<(), DeviceError> {
        let attached: Vec<usize> = (0..self.num_vrings())
            .filter(|&i| lock(&self.serving)[i].is_some())
            .collect();
        // On an error, those detached before it are the vrings
        // `take_back_vrings` gives back.
        let (done, result) = self.sink.detach_holding(&attached);
        for &index in &attached[..done] {
            self.attached[index].store(false, Ordering::Release);
            lock(&self.handed_over)[index] = lock(&self.serving)[index].take();
            log::debug!("{}: vring {index} detached for a hand-over", self.name);
        }
        result
    }

    /// The hand-over was rolled back: the engines take the vrings again
    /// where they left them. (They process what the guest posted meanwhile
    /// at once: a kick sent during the hand-over was consumed by nobody.)
    pub fn take_back_vrings(&self) -> Result<(), DeviceError> {
        let mut first_error = None;
        for index in 0..self.num_vrings() {
            let Some(vring) = lock(&self.handed_over)[index].take() else {
                continue;
            };
            if let Err(e) = self.vring_kick_changed(index, &vring, true) {
                // Kept for another try; the others are given back all the same.
                lock(&self.handed_over)[index] = Some(vring);
                first_error.get_or_insert(e);
            }
        }
        let released = self.sink.hold_frames(false);
        first_error.map_or(released, Err)
    }

    /// An attached vring goes on from `next_avail` / `next_used` (an
    /// upgrade prepared before the old process's engines stopped: the
    /// engines here are gated, so nothing else touches the vring).
    pub fn reposition_vring(
        &self,
        index: usize,
        next_avail: u16,
        next_used: u16,
    ) -> Result<(), DeviceError> {
        let serving = lock(&self.serving);
        let vring = serving
            .get(index)
            .and_then(Option::as_ref)
            .ok_or(DeviceError::NotAttached(index))?;
        vring.set_queue_next_avail(next_avail);
        vring.set_queue_next_used(next_used);
        Ok(())
    }

    /// Device reset or frontend gone: every engine lets go of its vrings.
    pub fn reset(&self) {
        for index in 0..self.num_vrings() {
            if let Err(e) = self.stop_vring(index) {
                log::warn!("{}: reset: {e}", self.name);
            }
        }
        lock(&self.handed_over).iter_mut().for_each(|v| *v = None);
        self.acked.store(0, Ordering::Relaxed);
        self.update_dirty_log(|s| *s = DirtyLogState::default());
    }

    /// The frontend disconnected: reset and forget its memory.
    pub fn disconnected(&self) {
        self.reset();
        *lock(&self.mem) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A duplicate of the vring's kick eventfd for its engine, which may poll it
/// long after the vring has closed its own (on SET_VRING_KICK or at the end
/// of the connection): a duplicate's number can never be reused under the
/// engine. It is made non-blocking so draining a kick cannot block the
/// engine's thread; the flag is shared with the frontend's copy, which
/// frontends create non-blocking anyway (QEMU, DPDK).
fn own_kick(vring: &VringRwLock) -> std::io::Result<Option<EventConsumer>> {
    let state = vring.get_ref();
    let Some(kick) = state.get_kick() else {
        return Ok(None);
    };
    let own = kick.try_clone()?;
    let fd = own.as_raw_fd();
    // SAFETY: `fd` is open (owned by `own`); F_GETFL/F_SETFL only read and
    // set its status flags.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some(own))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vhost_user_backend::VringT;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// Records what the device asked of its engines.
    #[derive(Default)]
    pub struct MockSink {
        pub calls: Mutex<Vec<String>>,
    }

    impl QueueSink for MockSink {
        fn attach(
            &self,
            index: usize,
            _: VringRwLock,
            _: GuestMemory,
            f: Negotiated,
            kick: Option<EventConsumer>,
        ) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!(
                "attach {index} mrg={} kick={}",
                f.mrg_rxbuf,
                kick.is_some()
            ));
            Ok(())
        }
        fn detach(&self, index: usize) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("detach {index}"));
            Ok(())
        }
        fn set_kick(&self, index: usize, kick: Option<EventConsumer>) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("kick {index} {}", kick.is_some()));
            Ok(())
        }
        fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("mtu {mtu}"));
            Ok(())
        }
        fn hold_frames(&self, on: bool) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("hold {on}"));
            Ok(())
        }
        fn set_dirty_log(&self, log: Option<Arc<DirtyLog>>) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("log {}", log.is_some()));
            Ok(())
        }
        fn announce(&self, mac: MacAddr) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("announce {mac}"));
            Ok(())
        }
    }

    fn memory() -> GuestMemory {
        GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap())
    }
    use vm_memory::GuestMemoryAtomic;

    #[test]
    fn attaches_once_detaches_on_stop_and_reset() {
        let dev = VnicDevice::new(
            "t",
            MacAddr([2, 0, 0, 0, 0, 1]),
            1500,
            2,
            MockSink::default(),
        );
        let mem = memory();
        let vring = VringRwLock::new(mem.clone(), 256).unwrap();
        vring.set_kick(Some(eventfd_file()));
        dev.set_acked_features(features::offered(2));
        // Started before the memory table: attached when it arrives.
        dev.vring_kick_changed(1, &vring, true).unwrap();
        assert!(lock(&dev.sink.calls).is_empty());
        dev.set_memory(mem);
        // Started again (SET_VRING_ENABLE, a new kick fd): the engine
        // follows the kick fd, the vring stays attached.
        dev.vring_kick_changed(1, &vring, true).unwrap();
        dev.vring_kick_changed(1, &vring, false).unwrap();
        dev.stop_vring(1).unwrap();
        dev.vring_kick_changed(2, &vring, true).unwrap();
        dev.reset();
        // Started and stopped before a memory table: never attached.
        *lock(&dev.mem) = None;
        dev.vring_kick_changed(3, &vring, true).unwrap();
        dev.vring_kick_changed(3, &vring, false).unwrap();
        dev.set_memory(memory());
        assert!(dev.vring_kick_changed(4, &vring, true).is_err());
        assert_eq!(
            *lock(&dev.sink.calls),
            [
                "attach 1 mrg=true kick=true",
                "kick 1 true",
                "detach 1",
                "attach 2 mrg=true kick=true",
                "detach 2"
            ]
        );
        assert_eq!(dev.negotiated(), Negotiated::default());
    }

    /// A kick eventfd as a frontend sends it.
    pub(crate) fn eventfd_file() -> std::fs::File {
        let fd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        // SAFETY: the fd is released by `fd` and owned by the file alone.
        unsafe {
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(
                std::os::fd::IntoRawFd::into_raw_fd(fd),
            )
        }
    }

    #[test]
    fn the_engine_gets_a_duplicate_that_outlives_the_vrings_kick_fd() {
        let vring = VringRwLock::new(memory(), 256).unwrap();
        assert!(own_kick(&vring).unwrap().is_none());
        vring.set_kick(Some(eventfd_file()));
        let own = own_kick(&vring).unwrap().unwrap();
        let theirs = vring.get_ref().get_kick().as_ref().unwrap().as_raw_fd();
        assert_ne!(own.as_raw_fd(), theirs);
        // SAFETY: F_GETFL on an open fd.
        let flags = unsafe { libc::fcntl(own.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0, "draining must not block");
        // The frontend replaces the kick fd: ours still works.
        vring.set_kick(None);
        assert!(own.consume().is_err(), "nothing pending, and no blocking");
    }

    #[test]
    fn engines_mark_a_log_only_while_the_frontend_both_shared_it_and_acked_log_all() {
        use crate::vnic::dirty_log::tests::log_file;
        let dev = VnicDevice::new(
            "t",
            MacAddr([2, 0, 0, 0, 0, 1]),
            1500,
            1,
            MockSink::default(),
        );
        let base = features::offered(1) & !features::LOG_ALL;
        dev.set_acked_features(base);
        assert!(!dev.migrating());
        // LOG_ALL before a log: nothing to mark yet.
        dev.set_acked_features(base | features::LOG_ALL);
        assert!(dev.migrating());
        let f = log_file(64);
        dev.set_log_base(&f, 64, 0).unwrap();
        // A larger log while logging: the engines move to it.
        let g = log_file(128);
        dev.set_log_base(&g, 128, 0).unwrap();
        // The same features again change nothing.
        dev.set_acked_features(base | features::LOG_ALL);
        // Logging ends: the frontend frees its log, the engines stop.
        dev.set_acked_features(base);
        assert!(!dev.migrating());
        // A log shared without LOG_ALL is kept, but not marked.
        dev.set_log_base(&f, 64, 0).unwrap();
        assert!(dev.migrating());
        // A bad log is refused with an error, the old one stays.
        assert!(dev.set_log_base(&f, 12, 0).is_err());
        dev.disconnected();
        assert!(!dev.migrating());
        assert_eq!(
            *lock(&dev.sink.calls),
            ["log true", "log true", "log false"]
        );
    }

    #[test]
    fn send_rarp_announces_only_the_vnics_own_mac_at_a_bounded_rate() {
        let own = MacAddr([2, 0, 0, 0, 0, 1]);
        let dev = VnicDevice::new("t", own, 1500, 1, MockSink::default());
        // Another tenant's MAC: the vNIC's own goes out instead.
        dev.announce(MacAddr([2, 0, 0, 0, 0, 9])).unwrap();
        // Again at once: dropped.
        dev.announce(own).unwrap();
        std::thread::sleep(ANNOUNCE_INTERVAL);
        dev.announce(own).unwrap();
        assert_eq!(
            *lock(&dev.sink.calls),
            [format!("announce {own}"), format!("announce {own}")]
        );
    }

    #[test]
    fn config_space_reports_mac_and_mtu() {
        let dev = VnicDevice::new(
            "t",
            MacAddr([2, 0, 0, 0, 0, 7]),
            9000,
            1,
            MockSink::default(),
        );
        assert_eq!(dev.read_config(0, 6), vec![2, 0, 0, 0, 0, 7]);
        assert_eq!(dev.read_config(10, 2), 9000u16.to_le_bytes().to_vec());
    }

    #[test]
    fn a_gated_sink_runs_what_it_was_asked_in_the_call_that_opens_the_gates() {
        use crate::packet::{link, FramePool, PoolConfig};
        use crate::vnic::antispoof::SpoofGuard;
        use crate::vnic::engine::VnicEngineConfig;
        use crate::vnic::guest_log::{self, GuestLog};
        use std::sync::atomic::Ordering;
        use std::sync::Arc;

        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let (to_switch, _switch_in) = link(8).unwrap();
        let (_switch_out, from_switch) = link(8).unwrap();
        let cfg = VnicEngineConfig {
            name: "t".into(),
            mtu: 1500,
            guard: SpoofGuard::new(MacAddr([2, 0, 0, 0, 0, 1]), None),
            shaping: Default::default(),
            log: Arc::new(GuestLog::new(guest_log::INTERVAL)),
        };
        let (mut engine, sender, _counters) =
            VnicEngine::new(cfg, &pool, to_switch, from_switch).unwrap();
        let sink = EngineSink::gated(vec![sender]);
        let done = Arc::new(Mutex::new(Vec::new()));
        let note = |what: &'static str| {
            let done = done.clone();
            move |_: &mut VnicEngine| lock(&done).push(what)
        };
        // No thread serves the engine yet: a request that waited for it
        // would time out.
        sink.request(0, note("rx")).unwrap();
        sink.set_mtu(1400).unwrap();
        sink.request(1, note("tx")).unwrap();
        assert!(lock(&done).is_empty(), "nothing runs before the gates open");
        assert!(matches!(
            sink.request(2, note("none")),
            Err(DeviceError::NoSuchVring(2))
        ));

        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    crate::engine::Engine::poll(&mut engine, 8);
                }
            })
        };
        sink.open_gates().unwrap();
        assert_eq!(*lock(&done), ["rx", "tx"], "in order, in the opening call");
        // Open: a request runs before it returns.
        sink.request(1, note("after")).unwrap();
        assert_eq!(*lock(&done), ["rx", "tx", "after"]);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
    }
}
