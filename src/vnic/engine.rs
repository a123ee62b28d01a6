//! The vNIC engine: one per queue pair. It moves guest TX chains to the switch
//! and switch frames into guest RX buffers, and owns everything that path
//! touches, so it runs without locks except one uncontended vring lock per
//! batch (shared with the vhost-user message thread, which needs it for
//! GET_VRING_BASE and friends).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::EventConsumer;

use super::any_ring::GuestRing;

use super::data_path::DataPath;
use super::dirty_log::{DirtyLog, DirtyPages};
use super::features::Negotiated;
use super::guest_memory::GuestMap;
use super::guest_ring::RingAddrs;
use super::guest_rx;
use super::guest_tx;
use super::{packed_rx, packed_tx};

/// How long frames may wait for a guest that takes none of them (it posts
/// no RX buffers: stuck, paused, or a driver that never fills its ring). A
/// guest that is alive refills within microseconds, a TCG-emulated one in a
/// few milliseconds; past this the waiting frames are dropped (counted as
/// `no_rx_buffers`), and so is every frame after them until the guest takes
/// one again. Until then they wait, as many as the link holds (the
/// per-queue quota the frame pool is sized for): no loss for a guest that
/// is merely slow, and no frame of the shared pool held for long by one
/// that is not, nor a sender kept waiting behind it.
const RX_STALL: Duration = Duration::from_millis(100);

use super::antispoof::SpoofGuard;
use super::guest_log::GuestLog;
use super::stats::{CountersState, DropReason, QueueCounters, SharedQueueCounters};
use crate::engine::{Engine, Mailbox, MailboxSender};
use crate::packet::{FrameHandle, FramePool, LinkRx, LinkTx};
use crate::shaping::token_bucket::BucketLevels;
use crate::shaping::{VnicShaping, WakeTimer};
use snapnet_wire::{rarp, MacAddr};

/// Guest memory as vhost-user-backend hands it over.
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Which ring of the queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Guest RX (even vring index): the device writes.
    Rx,
    /// Guest TX (odd vring index): the device reads.
    Tx,
}

impl Side {
    pub fn of_vring(index: usize) -> Side {
        if index % 2 == 0 {
            Side::Rx
        } else {
            Side::Tx
        }
    }
}

/// A vring handed to the engine by the vhost-user side.
pub struct AttachedQueue {
    vring: VringRwLock,
    mem: GuestMemory,
    map: Option<GuestMap>,
    view: Option<(RingAddrs, GuestRing)>,
    /// Packed ring layout (VIRTIO_F_RING_PACKED), set at attach.
    packed: bool,
    /// Whether the guest should kick: false while polling, true before
    /// sleeping. Re-applied whenever the ring view is rebuilt.
    kicks: bool,
    event_idx: bool,
    /// The ring cannot be served as the driver set it up (see [`Broken`]).
    /// Counted and logged once when found; then the engine leaves it alone
    /// until the driver sets it up again.
    broken: Option<Broken>,
    /// Polls of a broken ring since its set-up was last looked at.
    broken_polls: u32,
    /// The avail index as of the end of the last batch, and how many
    /// polls since then found it unchanged without taking the vring lock.
    seen_avail: Option<u16>,
    quick_polls: u32,
    /// The engine's own duplicate of the guest's kick eventfd (non-blocking):
    /// a kick wakes the engine's thread directly. Owned here so the number
    /// stays valid while the engine may sleep on it, whatever the frontend
    /// does with its copy.
    kick: Option<EventConsumer>,
    /// The device-written part of the ring (used ring, or packed
    /// descriptors and event area) may have been written since the dirty
    /// log last heard of it.
    ring_written: bool,
}

impl AttachedQueue {
    pub fn new(vring: VringRwLock, mem: GuestMemory) -> Self {
        Self {
            vring,
            mem,
            map: None,
            view: None,
            packed: false,
            kicks: true,
            event_idx: false,
            broken: None,
            broken_polls: 0,
            seen_avail: None,
            quick_polls: 0,
            kick: None,
            ring_written: false,
        }
    }

    /// The queue with the guest's kick eventfd (see [`VnicEngine::set_kick`]).
    pub fn with_kick(mut self, kick: Option<EventConsumer>) -> Self {
        self.kick = kick;
        self
    }

    /// Consumes a pending kick so the eventfd reads idle again; the ring
    /// itself says whether there is work.
    fn drain_kick(&self) {
        if let Some(k) = &self.kick {
            let _ = k.consume();
        }
    }

    /// Polls that may skip the vring lock in a row: a full batch every so
    /// often re-reads the vring's state and memory table, so a change that
    /// bypassed detach/attach is noticed within that many polls.
    const QUICK_POLLS: u32 = 64;

    /// Whether the guest certainly posted nothing since the last batch,
    /// read from the ring alone. An empty poll is the common case of a
    /// polling engine; this keeps it to one load of a guest cache line
    /// instead of a lock, a memory-table snapshot and a ring check.
    #[inline]
    fn quick_idle(&mut self) -> bool {
        let (Some((_, ring)), Some(seen)) = (self.view.as_ref(), self.seen_avail) else {
            return false;
        };
        if self.quick_polls >= Self::QUICK_POLLS || ring.has_new(seen) {
            return false;
        }
        self.quick_polls += 1;
        true
    }

    /// Runs one batch under the vring lock, with translations refreshed if
    /// the memory table or ring addresses changed; signals the guest if `f`
    /// says so.
    #[inline]
    fn batch(
        &mut self,
        f: impl FnOnce(&mut Queue, &GuestRing, &GuestMap) -> (usize, bool),
    ) -> Result<usize, DropReason> {
        let AttachedQueue {
            vring,
            mem,
            map,
            view,
            packed,
            kicks,
            event_idx,
            broken,
            broken_polls,
            seen_avail,
            quick_polls,
            kick: _,
            ring_written,
        } = self;
        *seen_avail = None;
        *quick_polls = 0;
        if broken.is_some() {
            // Only a look now and then at whether the driver set it up
            // again: a broken ring costs no lock and no count per poll.
            *broken_polls += 1;
            if *broken_polls < Self::QUICK_POLLS {
                return Ok(0);
            }
            *broken_polls = 0;
        }
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return Ok(0);
        }
        let snapshot = mem.memory();
        let new_memory = !map.as_ref().is_some_and(|m| m.is_for(&snapshot));
        let q = state.get_queue_mut();
        let addrs = RingAddrs {
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            size: q.size(),
        };
        if let Some(b) = *broken {
            if !b.set_up_again(addrs, new_memory) {
                return Ok(0);
            }
            *broken = None;
        }
        if new_memory {
            *map = Some(GuestMap::new(snapshot.into_inner()));
            *view = None;
        }
        let map = map.as_ref().expect("set above");
        if view.as_ref().is_none_or(|(a, _)| *a != addrs) {
            *view = GuestRing::new(map, addrs, *packed).map(|v| (addrs, v));
            if let Some((_, ring)) = view.as_ref() {
                ring.set_kicks(*event_idx, *kicks, q.next_avail());
            }
        }
        let Some((_, ring)) = view.as_ref() else {
            *broken = Some(Broken::Addresses(addrs));
            return Err(DropReason::AddressOutOfRange);
        };
        *ring_written = true;
        let (n, interrupt) = f(q, ring, map);
        *seen_avail = Some(q.next_avail());
        if interrupt {
            let _ = state.signal_used_queue();
        }
        Ok(n)
    }

    /// Turns guest kicks on (before sleeping) or off (while polling).
    fn set_kicks(&mut self, event_idx: bool, enable: bool) {
        self.kicks = enable;
        self.event_idx = event_idx;
        let AttachedQueue {
            vring,
            view,
            ring_written,
            ..
        } = self;
        let state = vring.get_mut();
        if let Some((_, ring)) = view.as_ref() {
            ring.set_kicks(event_idx, enable, state.get_queue().next_avail());
            *ring_written = true;
        }
    }

    /// Marks in the dirty log what the engine wrote into this queue's
    /// guest memory since the last call: the buffers `pages` collected and
    /// the ring. Called after the writes (see `dirty_log`).
    fn log_writes(&mut self, pages: &mut DirtyPages) {
        if std::mem::take(&mut self.ring_written) {
            if let Some((addrs, _)) = self.view.as_ref() {
                pages.wrote_ring(addrs, self.packed);
            }
        }
        pages.flush(self.map.as_ref());
    }

    /// Stops serving this ring, whose avail index is corrupt, until the
    /// driver sets it up again.
    fn mark_broken(&mut self) {
        if let Some((addrs, _)) = self.view.as_ref() {
            self.broken = Some(Broken::Corrupt(*addrs));
        }
    }

    /// How much of the ring the guest filled since the last batch (0 until
    /// a batch ran).
    fn fill(&self) -> f64 {
        let (Some((addrs, ring)), Some(seen)) = (self.view.as_ref(), self.seen_avail) else {
            return 0.0;
        };
        let pending = ring.backlog(seen);
        f64::from(pending) / f64::from(addrs.size.max(1))
    }

    fn has_avail(&mut self) -> bool {
        if self.broken.is_some() {
            return false;
        }
        let AttachedQueue { vring, view, .. } = self;
        let state = vring.get_mut();
        view.as_ref()
            .is_some_and(|(_, r)| r.has_new(state.get_queue().next_avail()))
    }
}

/// Why a ring is not served, with the set-up it was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broken {
    /// The driver moved its avail index by more than the ring holds (or
    /// published a packed chain's head before its tail).
    Corrupt(RingAddrs),
    /// A part of the ring does not lie in guest memory (or is misaligned,
    /// or the size is not one the layout allows).
    Addresses(RingAddrs),
}

impl Broken {
    /// Whether the driver set the ring up again: new addresses (a reset
    /// re-attaches the queue, which starts it afresh anyway), or for a
    /// ring outside guest memory, a new memory table that may now hold it.
    fn set_up_again(self, addrs: RingAddrs, new_memory: bool) -> bool {
        match self {
            Broken::Corrupt(at) => at != addrs,
            Broken::Addresses(at) => at != addrs || new_memory,
        }
    }
}

/// Static parameters of a queue-pair engine.
pub struct VnicEngineConfig {
    pub name: String,
    pub mtu: u16,
    /// What the guest may send as (MAC, and optionally IP addresses).
    pub guard: SpoofGuard,
    /// Guest egress (its TX) and ingress (its RX) limits: the vNIC's
    /// buckets, which every queue pair's engine shares.
    pub shaping: VnicShaping,
    /// The vNIC's guest-triggered log lines, shared by its queue pairs.
    pub log: Arc<GuestLog>,
}

/// What a queue engine's successor in another process continues from
/// (docs/upgrade.md). The vring positions are not here: they are in the
/// vrings, which the vhost-user state carries.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineState {
    pub counters: CountersState,
    /// Token levels of the egress and ingress buckets (a guest in debt
    /// stays in debt).
    pub egress: Option<BucketLevels>,
    pub ingress: Option<BucketLevels>,
}

/// A queue engine taken apart for a hand-over: its state and its two links
/// (the frames in them are handed over, not dropped).
pub struct EngineHandover {
    pub state: EngineState,
    pub to_switch: LinkTx,
    pub from_switch: LinkRx,
}

/// What [`VnicEngine::send_over`] was given, back because the fresh link
/// had no room for every frame that must go first.
pub struct SendOverRefused {
    pub fresh: LinkTx,
    pub earlier: Vec<FrameHandle>,
    pub old_far_end: LinkRx,
}

/// The engine of one vNIC queue pair.
pub struct VnicEngine {
    name: String,
    mailbox: Mailbox<VnicEngine>,
    rx: Option<AttachedQueue>,
    tx: Option<AttachedQueue>,
    dp: DataPath,
    /// Frames the guest sent, toward the switch (lent to each TX batch
    /// beside `dp`).
    to_switch: LinkTx,
    shared: Arc<SharedQueueCounters>,
    published: QueueCounters,
    /// Wakes a sleeping engine when its egress bucket has refilled.
    timer: WakeTimer,
    /// Bumped whenever a kick eventfd is attached, replaced or dropped
    /// (see [`Engine::wake_epoch`]).
    wake_epoch: u64,
    /// Since when frames have waited without the guest taking any (see
    /// [`RX_STALL`]).
    rx_stalled_since: Option<Instant>,
    /// Being handed over to another process: frames for the guest wait in
    /// the link (they move with it) instead of being dropped while the RX
    /// vring is detached.
    holding: bool,
    /// Taken over from an upgrade's old process, which may still take the
    /// vNIC back: the engine attaches vrings but touches no guest ring
    /// until `open_gate` (only its mailbox runs).
    gated: bool,
}

impl VnicEngine {
    pub fn new(
        cfg: VnicEngineConfig,
        pool: &Arc<FramePool>,
        to_switch: LinkTx,
        from_switch: LinkRx,
    ) -> std::io::Result<(Self, MailboxSender<VnicEngine>, Arc<SharedQueueCounters>)> {
        let (mailbox, sender) = Mailbox::new()?;
        let shared = Arc::new(SharedQueueCounters::default());
        let engine = Self {
            name: cfg.name.clone(),
            mailbox,
            rx: None,
            tx: None,
            dp: DataPath::new(&cfg.name, pool, cfg.mtu, cfg.guard, from_switch),
            to_switch,
            shared: shared.clone(),
            published: QueueCounters::default(),
            timer: WakeTimer::new()?,
            wake_epoch: 0,
            rx_stalled_since: None,
            holding: false,
            gated: false,
        };
        let mut engine = engine;
        engine.dp.log = cfg.log;
        engine.set_limits(cfg.shaping);
        Ok((engine, sender, shared))
    }

    /// What a hand-over carries of the engine (counters, bucket levels), as
    /// it stands: the engine stays whole (a step that may still be rolled
    /// back, docs/upgrade.md).
    pub fn handover_state(&self) -> EngineState {
        let now = Instant::now();
        EngineState {
            counters: self.dp.counters.to_state(),
            egress: self.dp.egress.as_ref().map(|b| b.with(|b| b.levels(now))),
            ingress: self.dp.ingress.as_ref().map(|b| b.with(|b| b.levels(now))),
        }
    }

    /// Takes the engine apart for a hand-over to another process, once its
    /// vrings are detached (`VnicDevice::hand_over_vrings`). Its frame cache
    /// goes back to this process's pool. `spare` (any link, made before: this
    /// step cannot fail) takes the place of the links that leave.
    pub fn hand_over(mut self, spare: (LinkTx, LinkRx)) -> EngineHandover {
        debug_assert!(
            self.rx.is_none() && self.tx.is_none(),
            "vrings still attached"
        );
        let state = self.handover_state();
        // `Drop` empties `from_switch`: leave it a link of its own to empty.
        let (spare_tx, spare_rx) = spare;
        EngineHandover {
            state,
            to_switch: std::mem::replace(&mut self.to_switch, spare_tx),
            from_switch: std::mem::replace(&mut self.dp.from_switch, spare_rx),
        }
    }

    /// Sends the engine's frames toward the switch over `fresh` from now on
    /// (the switch's move at the end of an upgrade, docs/upgrade.md):
    /// first `earlier`, the frames it sent before that no switch has taken
    /// yet, then what its link toward the switch holds (drained through
    /// `old_far_end`, that link's other end), then whatever it sends next.
    /// Run as a mailbox call, between two of the engine's polls, so that
    /// nothing it sends overtakes them. Returns the old link's producer end.
    /// When `fresh` has no room for them all, nothing changes: the frames
    /// and links come back in the error.
    pub fn send_over(
        &mut self,
        mut fresh: LinkTx,
        earlier: Vec<FrameHandle>,
        mut old_far_end: LinkRx,
    ) -> Result<LinkTx, Box<SendOverRefused>> {
        if fresh.free() < earlier.len() + old_far_end.len() {
            return Err(Box::new(SendOverRefused {
                fresh,
                earlier,
                old_far_end,
            }));
        }
        for frame in earlier {
            let pushed = fresh.push(frame);
            debug_assert!(pushed.is_ok(), "room was checked");
        }
        while let Some(frame) = old_far_end.pop() {
            let pushed = fresh.push(frame);
            debug_assert!(pushed.is_ok(), "room was checked");
        }
        fresh.flush();
        Ok(std::mem::replace(&mut self.to_switch, fresh))
    }

    /// Frames the engine sent that the switch has not taken yet.
    pub fn frames_toward_switch(&self) -> usize {
        self.to_switch.pending()
    }

    /// Holds frames for the guest while its vrings are detached for a
    /// hand-over (`true`), or no longer (a rolled-back hand-over).
    pub fn hold_frames(&mut self, on: bool) {
        self.holding = on;
    }

    /// Continues from the state of the engine this one takes over from.
    /// Frames for the guest wait until its RX vring is attached (they come
    /// over from the old process before the replay attaches it).
    pub fn take_over(&mut self, state: &EngineState) {
        self.holding = true;
        self.gated = true;
        let now = Instant::now();
        self.dp.counters = QueueCounters::from_state(&state.counters);
        // Every queue's engine carries the vNIC's levels: each sets the
        // shared bucket to the same.
        if let (Some(b), Some(l)) = (self.dp.egress.as_ref(), state.egress.as_ref()) {
            b.with(|b| b.set_levels(l, now));
        }
        if let (Some(b), Some(l)) = (self.dp.ingress.as_ref(), state.ingress.as_ref()) {
            b.with(|b| b.set_levels(l, now));
        }
        self.publish_counters();
    }

    /// The old process let go for good: serve the guest's rings, starting
    /// with what it posted meanwhile (the poll that runs this call goes on
    /// to the rings, with no kick needed).
    pub fn open_gate(&mut self) {
        self.gated = false;
        // Every vring the replay started is attached: an engine whose RX
        // vring it did not start drops frames for its guest again.
        self.holding = false;
    }

    /// Takes over a vring (mailbox request from the vhost-user side).
    pub fn attach(&mut self, side: Side, queue: AttachedQueue, features: Negotiated) {
        self.dp.features = features;
        let mut queue = queue;
        queue.packed = features.packed;
        // Polling: ask the guest not to kick.
        queue.set_kicks(features.event_idx, false);
        match side {
            Side::Rx => {
                self.rx = Some(queue);
                self.rx_stalled_since = None;
                // A guest that goes away later loses its frames again.
                self.holding = false;
            }
            Side::Tx => {
                self.dp.log.guest_connected();
                self.tx = Some(queue);
            }
        }
        self.wake_epoch += 1;
    }

    /// Lets go of a vring; its state stays in the vring for GET_VRING_BASE.
    pub fn detach(&mut self, side: Side) {
        match side {
            Side::Rx => self.rx = None,
            Side::Tx => self.tx = None,
        }
        self.wake_epoch += 1;
    }

    /// The frontend gave an attached vring a new kick eventfd: sleep on
    /// that one from now on (the old duplicate is closed here).
    pub fn set_kick(&mut self, side: Side, kick: Option<EventConsumer>) {
        let q = match side {
            Side::Rx => self.rx.as_mut(),
            Side::Tx => self.tx.as_mut(),
        };
        if let Some(q) = q {
            q.kick = kick;
            self.wake_epoch += 1;
        }
    }

    /// Changes the MTU enforced on guest TX.
    pub fn set_mtu(&mut self, mtu: u16) {
        self.dp.mtu = mtu;
    }

    /// Starts marking what the engine writes into guest memory in `log`
    /// (a live migration), or stops (`None`). Runs between batches: nothing
    /// written before is left unmarked in a log, since every batch marks
    /// its writes before it ends.
    pub fn set_dirty_log(&mut self, log: Option<Arc<DirtyLog>>) {
        self.dp.dirty_pages = log.map(DirtyPages::new);
        // The rings' last writes (kick suppression) predate the log: mark
        // them once in the new one.
        for q in self.rx.iter_mut().chain(self.tx.iter_mut()) {
            q.ring_written = true;
        }
        self.log_ring_writes();
    }

    /// Marks ring writes made outside a batch (kick suppression) in the
    /// dirty log, while there is one.
    fn log_ring_writes(&mut self) {
        if let Some(pages) = self.dp.dirty_pages.as_mut() {
            for q in self.rx.iter_mut().chain(self.tx.iter_mut()) {
                q.log_writes(pages);
            }
        }
    }

    /// Announces the guest's MAC from here after a live migration (the
    /// frontend's SEND_RARP): a RARP broadcast into the switch, so that
    /// forwarding tables everywhere learn where the MAC went. Returns
    /// false when no frame or link slot was free (counted as a drop).
    pub fn announce(&mut self, mac: MacAddr) -> bool {
        let dp = &mut self.dp;
        let Some(mut frame) = dp.cache.alloc(rarp::ANNOUNCE_LEN) else {
            dp.counters.drop(DropReason::AnnounceDropped);
            return false;
        };
        let start = usize::from(frame.offset);
        let buf = &mut dp.pool.frame_mut(&mut frame)[start..start + rarp::ANNOUNCE_LEN];
        rarp::write_announce(buf, mac);
        frame.len = rarp::ANNOUNCE_LEN as u32;
        frame.offload = Default::default();
        match self.to_switch.push(frame) {
            Ok(()) => {
                self.to_switch.flush();
                dp.counters.tx_packets += 1;
                dp.counters.tx_bytes += rarp::ANNOUNCE_LEN as u64;
                true
            }
            Err(frame) => {
                dp.cache.free(frame);
                dp.counters.drop(DropReason::AnnounceDropped);
                false
            }
        }
    }

    /// Changes what the guest may send as.
    pub fn set_guard(&mut self, guard: SpoofGuard) {
        self.dp.guard = guard;
    }

    /// Changes the guest's egress and ingress limits (the vNIC's buckets,
    /// shared by its queues' engines).
    pub fn set_limits(&mut self, shaping: VnicShaping) {
        self.dp.egress = shaping.egress;
        self.dp.ingress = shaping.ingress;
        self.dp.egress_blocked_until = None;
    }

    fn poll_tx(&mut self, budget: usize) -> usize {
        let Some(q) = self.tx.as_mut() else {
            return 0;
        };
        if q.quick_idle() {
            return 0;
        }
        let (dp, out) = (&mut self.dp, &mut self.to_switch);
        let n = match q.batch(|q, ring, map| match ring {
            GuestRing::Split(r) => guest_tx::drain(q, r, map, budget, dp, out),
            GuestRing::Packed(r) => packed_tx::drain(q, r, map, budget, dp, out),
        }) {
            Ok(n) => n,
            Err(reason) => {
                self.dp.malformed(reason, 0);
                0
            }
        };
        if let Some(pages) = self.dp.dirty_pages.as_mut() {
            q.log_writes(pages);
        }
        if std::mem::take(&mut self.dp.ring_corrupt) {
            q.mark_broken();
        }
        n
    }

    fn poll_rx(&mut self, budget: usize) -> usize {
        // Nothing to deliver: leave the guest's ring (and its cache lines,
        // which the guest's core is writing) alone.
        if self.dp.from_switch.is_empty() {
            return 0;
        }
        let stalled = self.rx_stalled_since.is_some() && self.rx_stall_over();
        let Some(q) = self.rx.as_mut() else {
            if self.holding {
                // Handed over: the frames go to the new process.
                return 0;
            }
            // No guest driver: frames must not pile up and arrive stale later.
            return self.dp.drop_waiting(DropReason::GuestNotReady);
        };
        if stalled && q.quick_idle() {
            // Still stalled, and the guest posted nothing since: no need to
            // look at its ring (a lock and a walk per arriving frame).
            return self.dp.drop_waiting(DropReason::NoRxBuffers);
        }
        let dp = &mut self.dp;
        let n = match q.batch(|q, ring, map| match ring {
            GuestRing::Split(r) => guest_rx::fill(q, r, map, budget, dp),
            GuestRing::Packed(r) => packed_rx::fill(q, r, map, budget, dp),
        }) {
            Ok(n) => n,
            Err(reason) => {
                self.dp.malformed(reason, 0);
                0
            }
        };
        if let Some(pages) = self.dp.dirty_pages.as_mut() {
            q.log_writes(pages);
        }
        if std::mem::take(&mut self.dp.ring_corrupt) {
            q.mark_broken();
        }
        if n > 0 {
            self.rx_stalled_since = None;
            return n;
        }
        self.shed_if_stalled()
    }

    /// Nothing was taken while frames wait: the guest has no buffers for
    /// them (or a ring it cannot use). Once that has lasted [`RX_STALL`],
    /// drops what waits. Off the fast path: a guest that takes frames
    /// never gets here.
    #[cold]
    fn shed_if_stalled(&mut self) -> usize {
        self.rx_stalled_since.get_or_insert_with(Instant::now);
        if !self.rx_stall_over() {
            return 0;
        }
        self.dp.drop_waiting(DropReason::NoRxBuffers)
    }

    /// Whether the guest has taken no frame for [`RX_STALL`].
    #[cold]
    fn rx_stall_over(&self) -> bool {
        self.rx_shed_at().is_some_and(|t| Instant::now() >= t)
    }

    /// When frames waiting for a stalled guest are due to be dropped.
    fn rx_shed_at(&self) -> Option<Instant> {
        self.rx_stalled_since.map(|t| t + RX_STALL)
    }

    fn publish_counters(&mut self) {
        if self.published != self.dp.counters {
            self.shared.publish(&self.dp.counters);
            self.published.clone_from(&self.dp.counters);
        }
    }
}

impl Drop for VnicEngine {
    fn drop(&mut self) {
        // Frames still queued for this guest go back to the pool.
        while let Some(frame) = self.dp.from_switch.pop() {
            self.dp.cache.free(frame);
        }
    }
}

impl Engine for VnicEngine {
    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn poll(&mut self, budget: usize) -> usize {
        if let Some(job) = self.mailbox.take() {
            job(self);
        }
        if self.gated {
            return 0;
        }
        let work = self.poll_tx(budget) + self.poll_rx(budget);
        self.timer.clear_due();
        if work > 0 || self.dp.dirty {
            self.dp.dirty = false;
            self.publish_counters();
        }
        work
    }

    fn wake_fds(&self) -> Vec<RawFd> {
        // Guest kicks wake this thread directly: the vhost-user side hands
        // the engine its own duplicate of each kick eventfd.
        let mut fds = vec![
            self.mailbox.doorbell().as_raw_fd(),
            self.dp.from_switch.doorbell().as_raw_fd(),
            self.timer.as_raw_fd(),
        ];
        let kicks = self.rx.iter().chain(self.tx.iter());
        fds.extend(kicks.filter_map(|q| q.kick.as_ref().map(AsRawFd::as_raw_fd)));
        fds
    }

    fn wake_epoch(&self) -> u64 {
        self.wake_epoch
    }

    fn arm(&mut self) -> bool {
        if self.gated {
            // Only the mailbox can bring work (the gate's opening).
            self.mailbox.doorbell().arm();
            return self.mailbox.pending();
        }
        let event_idx = self.dp.features.event_idx;
        // Only a sleeping worker needs waking when the egress bucket refills
        // or a stalled guest's frames fall due.
        let wake_at = match (self.dp.egress_blocked_until, self.rx_shed_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.timer.follow(wake_at);
        self.mailbox.doorbell().arm();
        self.dp.from_switch.doorbell().arm();
        for q in self.rx.iter_mut().chain(self.tx.iter_mut()) {
            q.set_kicks(event_idx, true);
        }
        self.log_ring_writes();
        // Re-check after arming. Frames waiting for the guest only count as
        // work when the guest has buffers for them, or when they are to be
        // dropped (no driver at all, or one stalled past RX_STALL: the timer
        // wakes us then); otherwise its RX kick wakes us.
        let frames_waiting = !self.dp.from_switch.is_empty();
        // (Frames held for a hand-over wait for the RX vring: no work.)
        let deliverable = frames_waiting
            && (match self.rx.as_mut() {
                None => !self.holding,
                Some(q) => q.has_avail(),
            } || self.rx_stall_over());
        // Chains held back by the egress limit are not work until the
        // bucket refills; the timer wakes us then.
        let throttled = self
            .dp
            .egress_blocked_until
            .is_some_and(|t| Instant::now() < t);
        let tx_waiting = !throttled && self.tx.as_mut().is_some_and(|q| q.has_avail());
        self.mailbox.pending() || deliverable || tx_waiting
    }

    fn disarm(&mut self) {
        let event_idx = self.dp.features.event_idx;
        self.mailbox.doorbell().disarm();
        self.dp.from_switch.doorbell().disarm();
        for q in self.rx.iter_mut().chain(self.tx.iter_mut()) {
            q.set_kicks(event_idx, false);
            q.drain_kick();
        }
        self.log_ring_writes();
    }

    fn backlog(&mut self) -> f64 {
        // Guest TX is what fills while the engine naps; frames for the guest
        // wait in the switch's link, whose backpressure reaches a sender's
        // TX ring.
        self.tx.as_ref().map_or(0.0, AttachedQueue::fill)
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
