//! One uplink queue as an engine: moves frames between the switch links and
//! the AF_XDP socket of one NIC queue. No packet bytes are copied here: a
//! received frame is the very pool frame the kernel wrote into, and a frame
//! from a guest goes to the TX ring as it lies in the pool (only GSO
//! super-frames are cut into new wire-sized frames, in `packet::segment`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::group_tap::GroupTap;
use super::handover::{UplinkQueueHandover, UplinkQueueState};
use super::neighbour_proxy;
use super::overlay::{DecapError, OverlayTable, OVERHEAD};
use super::stats::{SharedUplinkCounters, UplinkCounter, UplinkCounters};
use super::xsk::ring::ProducerRing;
use super::xsk::XskSocket;
use crate::engine::{Engine, Mailbox, MailboxSender};
use crate::packet::segment::{self, SegmentError};
use crate::packet::{FrameCache, FrameHandle, FramePool, LinkRx, LinkTx, UmemLoans};
use crate::shaping::{Cost, RateLimit, TokenBucket, WakeTimer};
use snapnet_wire::flow::Parsed;
use snapnet_wire::virtio_net::F_NEEDS_CSUM;
use snapnet_wire::MacAddr;

/// Fill-ring entries posted at once: fewer syscalls and cache refills than
/// topping up one by one.
const FILL_BATCH: u32 = 64;

/// Ethernet with a VLAN tag, IPv4 with options or IPv6, TCP with options:
/// the most header a segment can repeat.
const MAX_HEADERS: usize = 18 + 60 + 60;

/// A TX ring that stays full this long with nothing completed is stalled.
const TX_STALL: Duration = Duration::from_millis(100);

/// How often a busy engine reads the kernel's socket counters (a syscall).
const KERNEL_STATS_EVERY: Duration = Duration::from_millis(100);

/// What a queue engine is made with, besides its socket and links.
pub struct UplinkQueueConfig {
    pub name: String,
    /// Largest frame the wire takes (MTU plus Ethernet header).
    pub max_frame: usize,
    pub tx_limit: RateLimit,
    /// Group-addressed frames (queue 0 only; none on an overlay).
    pub tap: Option<GroupTap>,
    /// VXLAN overlay (absent: a flat uplink).
    pub overlay: Option<OverlayTable>,
}

/// Where Pony Express's packets (docs/pony.md) leave and join a queue: UDP
/// to this host's Pony address and port goes to the Pony engine instead of
/// the switch, and whole wire frames from it go to the TX ring as they are.
pub struct PonyPort {
    pub address: std::net::Ipv4Addr,
    pub to_pony: LinkTx,
    pub from_pony: LinkRx,
}

pub struct UplinkQueueEngine {
    name: String,
    /// Control requests (overlay table, limits) from the control plane.
    mailbox: Mailbox<UplinkQueueEngine>,
    /// `None` only while dropping (the socket must close before its lent
    /// frames are reclaimed).
    xsk: Option<XskSocket>,
    loans: UmemLoans,
    pool: Arc<FramePool>,
    cache: FrameCache,
    to_switch: LinkTx,
    from_switch: LinkRx,
    /// Group-addressed frames (queue 0 only).
    tap: Option<GroupTap>,
    /// Largest frame the wire takes (MTU plus Ethernet header).
    max_frame: usize,
    counters: UplinkCounters,
    shared: Arc<SharedUplinkCounters>,
    dirty: bool,
    /// The wire frames of the guest frame being sent (its segments).
    wire: Vec<FrameHandle>,
    /// Scratch: the remote hosts of the frame being sent.
    targets: Vec<usize>,
    overlay: Option<OverlayTable>,
    kernel_stats_at: Instant,
    /// Since when the TX ring has been full without the kernel taking
    /// anything from it.
    tx_full_since: Option<Instant>,
    /// What the uplink may send; frames wait in the link while it is out of
    /// tokens, so the switch shares the uplink among vNICs by weight.
    egress: Option<TokenBucket>,
    egress_blocked_until: Option<Instant>,
    timer: WakeTimer,
    pony: Option<PonyPort>,
}

/// A queue engine as made: the engine, its mailbox and its counters.
type Built = (
    UplinkQueueEngine,
    MailboxSender<UplinkQueueEngine>,
    Arc<SharedUplinkCounters>,
);

impl UplinkQueueEngine {
    pub fn new(
        cfg: UplinkQueueConfig,
        xsk: XskSocket,
        pool: &Arc<FramePool>,
        to_switch: LinkTx,
        from_switch: LinkRx,
    ) -> std::io::Result<Built> {
        let (mut engine, sender, shared) =
            Self::build(cfg, xsk, UmemLoans::new(pool), pool, to_switch, from_switch)?;
        engine.refill();
        Ok((engine, sender, shared))
    }

    /// The engine of a queue an upgrade's old process handed over: its
    /// socket and tap (already adopted), its loans, counters and egress
    /// levels. It posts nothing to the socket's rings until its first poll.
    pub fn take_over(
        cfg: UplinkQueueConfig,
        xsk: XskSocket,
        pool: &Arc<FramePool>,
        to_switch: LinkTx,
        from_switch: LinkRx,
        state: &UplinkQueueState,
    ) -> std::io::Result<Built> {
        let loans = UmemLoans::with_lent(pool, &state.lent).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "lent frames that are not this pool's",
            )
        })?;
        let (mut engine, sender, shared) =
            Self::build(cfg, xsk, loans, pool, to_switch, from_switch)?;
        engine.counters = UplinkCounters::from_state(&state.counters);
        if let (Some(b), Some(l)) = (engine.egress.as_mut(), state.egress.as_ref()) {
            b.set_levels(l, Instant::now());
        }
        engine.shared.publish(&engine.counters);
        Ok((engine, sender, shared))
    }

    fn build(
        cfg: UplinkQueueConfig,
        xsk: XskSocket,
        loans: UmemLoans,
        pool: &Arc<FramePool>,
        to_switch: LinkTx,
        from_switch: LinkRx,
    ) -> std::io::Result<Built> {
        let (mailbox, sender) = Mailbox::new()?;
        let UplinkQueueConfig {
            name,
            max_frame,
            tx_limit,
            tap,
            overlay,
        } = cfg;
        let shared = Arc::new(SharedUplinkCounters::default());
        let engine = Self {
            name,
            mailbox,
            xsk: Some(xsk),
            loans,
            pool: pool.clone(),
            cache: pool.cache(),
            to_switch,
            from_switch,
            tap,
            max_frame,
            counters: UplinkCounters::default(),
            shared: shared.clone(),
            dirty: false,
            wire: Vec::with_capacity(64),
            targets: Vec::with_capacity(16),
            overlay,
            kernel_stats_at: Instant::now(),
            tx_full_since: None,
            egress: TokenBucket::new(&tx_limit),
            egress_blocked_until: None,
            timer: WakeTimer::new()?,
            pony: None,
        };
        Ok((engine, sender, shared))
    }

    /// Frames sent toward the switch that it has not taken yet.
    pub fn frames_toward_switch(&self) -> usize {
        self.to_switch.pending()
    }

    /// Copies of its socket's and tap's fds, for an upgrade's new process
    /// (the socket first).
    pub fn handover_fds(&self) -> std::io::Result<Vec<OwnedFd>> {
        let xsk = self
            .xsk
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no socket"))?;
        let mut fds = vec![xsk.try_clone_fd()?];
        if let Some(t) = self.tap.as_ref() {
            fds.push(t.try_clone_fd()?);
        }
        Ok(fds)
    }

    /// Takes the engine apart for an upgrade's new process, between two
    /// polls (it is out of its group), with its [`Self::handover_fds`]:
    /// its loans (which this process then forgets: the kernel's rings hold
    /// those frames for whichever process goes on), the frames waiting for
    /// the wire, its counters and levels. Its cache of free frames goes
    /// back to the pool.
    pub fn hand_over(mut self, fds: Vec<OwnedFd>) -> UplinkQueueHandover {
        let now = Instant::now();
        let lent = self.loans.lent();
        self.loans = UmemLoans::new(&self.pool);
        let for_wire = std::iter::from_fn(|| self.from_switch.pop()).collect();
        UplinkQueueHandover {
            state: UplinkQueueState {
                queue: 0,
                counters: self.counters.to_state(),
                egress: self.egress.as_mut().map(|b| b.levels(now)),
                lent,
                tap_next: self.tap.as_ref().map(GroupTap::next_slot),
            },
            fds,
            for_wire,
        }
        // Dropped here: its copies of the socket and the tap close (the
        // new process holds its own), and its cache goes back to the pool.
    }

    #[inline]
    fn count(&mut self, c: UplinkCounter, n: u64) {
        self.counters.add(c, n);
        self.dirty = true;
    }

    /// Frames the kernel has sent go back to the cache.
    #[inline]
    fn reclaim_completions(&mut self) -> usize {
        let Some(xsk) = self.xsk.as_mut() else {
            return 0;
        };
        let mut n = 0;
        while let Some(addr) = xsk.completion.pop() {
            if let Some(frame) = self.loans.reclaim(addr, 0) {
                self.cache.free(frame);
            }
            n += 1;
        }
        if n > 0 {
            xsk.completion.release();
            self.tx_full_since = None;
        }
        n
    }

    /// Switch -> wire. Frames stay in the link while the TX ring is full.
    fn transmit(&mut self, budget: usize) -> usize {
        let Some(xsk) = self.xsk.as_mut() else {
            return 0;
        };
        let mut done = 0;
        let mut sent = 0u64;
        let mut bytes = 0u64;
        let (mut arp_answered, mut nd_answered) = (0u64, 0u64);
        if let Some(b) = self.egress.as_mut() {
            b.refill(Instant::now());
            self.egress_blocked_until = None;
        }
        let (fanout, overhead) = match &self.overlay {
            Some(o) => (o.max_fanout() as u32, OVERHEAD),
            None => (1, 0),
        };
        // The largest frame a guest may put on this wire.
        let inner_max = self.max_frame - overhead;
        while done < budget {
            let Some(next) = self.from_switch.peek() else {
                break;
            };
            let segments = if next.offload.is_gso() {
                // An upper bound: segments carry gso_size bytes, or less when
                // the wire MTU minus the largest possible headers is smaller.
                let per_segment = u32::from(next.offload.gso_size)
                    .min(inner_max.saturating_sub(MAX_HEADERS) as u32)
                    .max(1);
                next.len / per_segment + 1
            } else {
                1
            };
            let needed = segments * fanout;
            if xsk.tx.free(needed) < needed {
                if needed > 1024 {
                    // More segments than the ring holds: never sendable.
                    if let Some(f) = self.from_switch.pop() {
                        self.cache.free(f);
                    }
                    self.counters.add(UplinkCounter::DropBadOffload, 1);
                    self.dirty = true;
                    continue;
                }
                self.counters.add(UplinkCounter::TxRingFull, 1);
                self.dirty = true;
                let since = *self.tx_full_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= TX_STALL {
                    // The switch would otherwise hold every sender back.
                    let mut n = 0;
                    while let Some(f) = self.from_switch.pop() {
                        self.cache.free(f);
                        n += 1;
                    }
                    self.counters.add(UplinkCounter::DropTxStalled, n);
                }
                break;
            }
            if let Some(b) = self.egress.as_mut() {
                // What goes on the wire: each segment of a super-frame.
                let cost = Cost::on_wire(next.len, &next.offload, inner_max);
                if !b.try_take(cost) {
                    self.egress_blocked_until = Some(Instant::now() + b.wait_for(cost));
                    break;
                }
            }
            let Some(mut frame) = self.from_switch.pop() else {
                break;
            };
            done += 1;
            self.dirty = true;
            // 1. The guest's frame as wire frames: cut if GSO, checksums done.
            self.wire.clear();
            if frame.offload.is_gso() {
                let wire = &mut self.wire;
                let network = frame.network;
                let result = segment::segment(
                    &self.pool,
                    &mut self.cache,
                    &frame,
                    inner_max,
                    |mut seg: FrameHandle| {
                        seg.network = network;
                        wire.push(seg);
                    },
                );
                self.cache.free(frame);
                match result {
                    Ok(n) => self.counters.add(UplinkCounter::TxSegments, n as u64),
                    Err(SegmentError::Malformed(_)) => {
                        self.counters.add(UplinkCounter::DropBadOffload, 1)
                    }
                    Err(SegmentError::PoolEmpty) => {
                        self.counters.add(UplinkCounter::DropPoolEmpty, 1)
                    }
                }
            } else if frame.len as usize > inner_max {
                self.cache.free(frame);
                self.counters.add(UplinkCounter::DropTooBig, 1);
                continue;
            } else if frame.offload.flags & F_NEEDS_CSUM != 0
                && segment::finish_checksum(&self.pool, &mut frame).is_err()
            {
                self.cache.free(frame);
                self.counters.add(UplinkCounter::DropBadOffload, 1);
                continue;
            } else {
                self.wire.push(frame);
            }
            // 2. Each wire frame to the TX ring: as it is on a flat uplink,
            // encapsulated for each remote host on an overlay.
            let mut out = TxOut {
                tx: &mut xsk.tx,
                loans: &mut self.loans,
                cache: &mut self.cache,
                counters: &mut self.counters,
                sent: &mut sent,
                bytes: &mut bytes,
            };
            for mut f in self.wire.drain(..) {
                match &self.overlay {
                    None => out.push(f),
                    Some(o) => {
                        // ARP or ND for a remote guest whose addresses the
                        // table knows: answered here, back through the switch.
                        // Only broadcast and multicast frames can ask.
                        let group = self.pool.bytes(&f).first().is_some_and(|b| b & 1 != 0);
                        if group && o.knows_addresses() && self.to_switch.free() > 0 {
                            if let Some(c) = answer_neighbour(o, &self.pool, &mut f) {
                                let _ = self.to_switch.push(f);
                                match c {
                                    UplinkCounter::ArpSuppressed => arp_answered += 1,
                                    _ => nd_answered += 1,
                                }
                                continue;
                            }
                        }
                        replicate(o, &self.pool, &mut self.targets, f, &mut out)
                    }
                }
            }
        }
        if arp_answered + nd_answered > 0 {
            self.to_switch.flush();
            self.counters
                .add(UplinkCounter::ArpSuppressed, arp_answered);
            self.counters.add(UplinkCounter::NdSuppressed, nd_answered);
        }
        if sent > 0 {
            xsk.tx.commit();
            self.counters.add(UplinkCounter::TxPackets, sent);
            self.counters.add(UplinkCounter::TxBytes, bytes);
            self.dirty = true;
        }
        // Copy mode moves a bounded batch per syscall: keep kicking while the
        // kernel has not taken everything.
        if xsk.tx.outstanding() > 0 && (sent > 0 || xsk.tx.needs_wakeup()) {
            xsk.kick_tx();
        }
        done
    }

    /// Wire -> switch. Frames stay in the RX ring while the link is full (the
    /// kernel counts what then overflows the ring).
    fn receive(&mut self, budget: usize) -> usize {
        let Some(xsk) = self.xsk.as_mut() else {
            return 0;
        };
        let room = self.to_switch.free().min(budget);
        let mut n = 0;
        let mut pony = 0u64;
        let mut bytes = 0u64;
        while n < room {
            let Some(d) = xsk.rx.pop() else {
                break;
            };
            n += 1;
            let Some(mut frame) = self.loans.reclaim(d.addr, d.len) else {
                self.counters.add(UplinkCounter::DropBadAddress, 1);
                continue;
            };
            bytes += u64::from(d.len);
            if let Some(p) = self.pony.as_mut() {
                if is_pony(self.pool.bytes(&frame), p.address) {
                    match p.to_pony.push(frame) {
                        Ok(()) => pony += 1,
                        Err(frame) => {
                            self.cache.free(frame);
                            self.counters.add(UplinkCounter::DropPonyLinkFull, 1);
                        }
                    }
                    continue;
                }
            }
            if let Some(o) = &self.overlay {
                if let Err(e) = o.decap(&self.pool, &mut frame) {
                    self.cache.free(frame);
                    self.counters.add(
                        match e {
                            DecapError::Malformed => UplinkCounter::DropNotVxlan,
                            DecapError::UnknownNetwork => UplinkCounter::DropUnknownNetwork,
                            DecapError::UnknownRemote => UplinkCounter::DropUnknownRemote,
                        },
                        1,
                    );
                    continue;
                }
            }
            // Room was checked.
            let _ = self.to_switch.push(frame);
        }
        if pony > 0 {
            if let Some(p) = &self.pony {
                p.to_pony.flush();
            }
            self.counters.add(UplinkCounter::PonyRxPackets, pony);
        }
        if n > 0 {
            xsk.rx.release();
            self.to_switch.flush();
            self.counters.add(UplinkCounter::RxPackets, n as u64);
            self.counters.add(UplinkCounter::RxBytes, bytes);
            self.dirty = true;
        } else if room == 0 && xsk.rx.available() > 0 {
            self.count(UplinkCounter::RxLinkFull, 1);
        }
        n
    }

    /// Keeps the fill ring stocked so the kernel always has frames to write.
    fn refill(&mut self) {
        let Some(xsk) = self.xsk.as_mut() else {
            return;
        };
        let free = xsk.fill.free(FILL_BATCH);
        if free < FILL_BATCH {
            return;
        }
        let mut posted = 0;
        for _ in 0..free {
            let Some(frame) = self.cache.alloc(self.max_frame) else {
                self.counters.add(UplinkCounter::FillPoolEmpty, 1);
                self.dirty = true;
                break;
            };
            match self.loans.lend(frame) {
                Ok(addr) => {
                    let _ = xsk.fill.push(addr);
                    posted += 1;
                }
                Err(frame) => {
                    self.cache.free(frame);
                    break;
                }
            }
        }
        if posted > 0 {
            xsk.fill.commit();
            if xsk.fill.needs_wakeup() {
                xsk.kick_fill();
            }
        }
    }

    /// Group-addressed frames from the packet socket -> switch.
    fn receive_group(&mut self, budget: usize) -> usize {
        let Some(tap) = self.tap.as_mut() else {
            return 0;
        };
        let mut n = 0;
        while n < budget && tap.has_frame() && self.to_switch.free() > 0 {
            let Some(mut frame) = self.cache.alloc(self.max_frame) else {
                self.counters.add(UplinkCounter::DropPoolEmpty, 1);
                self.dirty = true;
                break;
            };
            let off = usize::from(frame.offset);
            let cap = self.pool.capacity(&frame) - off;
            let Some(len) = tap.recv_into(&mut self.pool.frame_mut(&mut frame)[off..off + cap])
            else {
                self.cache.free(frame);
                break;
            };
            n += 1;
            if len > cap {
                self.cache.free(frame);
                self.counters.add(UplinkCounter::DropTooBig, 1);
                continue;
            }
            frame.len = len as u32;
            let _ = self.to_switch.push(frame);
            self.counters.add(UplinkCounter::GroupRxPackets, 1);
        }
        if n > 0 {
            self.to_switch.flush();
            self.dirty = true;
        }
        n
    }

    /// Pony engine -> wire: its frames are whole wire frames (checked by
    /// their builder), sent as they are while the TX ring has room.
    fn transmit_pony(&mut self, budget: usize) -> usize {
        let (Some(xsk), Some(p)) = (self.xsk.as_mut(), self.pony.as_mut()) else {
            return 0;
        };
        let mut sent = 0u64;
        let mut bytes = 0u64;
        let mut out = TxOut {
            tx: &mut xsk.tx,
            loans: &mut self.loans,
            cache: &mut self.cache,
            counters: &mut self.counters,
            sent: &mut sent,
            bytes: &mut bytes,
        };
        let mut done = 0;
        while done < budget && out.tx.free(1) > 0 {
            let Some(frame) = p.from_pony.pop() else {
                break;
            };
            out.push(frame);
            done += 1;
        }
        if sent > 0 {
            xsk.tx.commit();
            self.counters.add(UplinkCounter::PonyTxPackets, sent);
            self.counters.add(UplinkCounter::TxPackets, sent);
            self.counters.add(UplinkCounter::TxBytes, bytes);
            xsk.kick_tx();
        }
        if done > 0 {
            self.dirty = true;
        }
        done
    }

    /// Plugs the Pony engine in (or out, with `None`); returns the port it
    /// replaces, for the caller to drop off the data path.
    pub fn set_pony(&mut self, port: Option<PonyPort>) -> Option<PonyPort> {
        std::mem::replace(&mut self.pony, port)
    }

    /// Replaces the overlay table (a mailbox request from the control
    /// plane); returns the old one, for the caller to
    /// free off the data path (a directory's table can be large).
    pub fn set_overlay(&mut self, overlay: Option<OverlayTable>) -> Option<OverlayTable> {
        std::mem::replace(&mut self.overlay, overlay)
    }

    /// Replaces the egress limit (a fresh bucket).
    pub fn set_tx_limit(&mut self, limit: &RateLimit) {
        self.egress = TokenBucket::new(limit);
        self.egress_blocked_until = None;
    }

    fn publish_kernel_stats(&mut self) {
        self.kernel_stats_at = Instant::now();
        if let Some(Ok(k)) = self.xsk.as_ref().map(XskSocket::kernel_stats) {
            self.shared.publish_kernel(&k);
        }
    }
}

/// Where wire frames go: the TX ring, with the counters.
struct TxOut<'a> {
    tx: &'a mut ProducerRing<libc::xdp_desc>,
    loans: &'a mut UmemLoans,
    cache: &'a mut FrameCache,
    counters: &'a mut UplinkCounters,
    sent: &'a mut u64,
    bytes: &'a mut u64,
}

impl TxOut<'_> {
    /// The room was reserved before the frame was taken; a frame that finds
    /// none anyway (or a large frame, which cannot be lent) is dropped.
    #[inline]
    fn push(&mut self, frame: FrameHandle) {
        let len = frame.len;
        if self.tx.free(1) == 0 {
            self.cache.free(frame);
            self.counters.add(UplinkCounter::DropTxRingFull, 1);
            return;
        }
        match self.loans.lend(frame) {
            Ok(addr) => {
                let _ = self.tx.push(desc(addr, len));
                *self.sent += 1;
                *self.bytes += u64::from(len);
            }
            Err(frame) => {
                self.cache.free(frame);
                self.counters.add(UplinkCounter::DropTooBig, 1);
            }
        }
    }
}

/// Head-end replication: one encapsulated copy of `frame` per remote host
/// its destination needs (the last one is the frame itself).
fn replicate(
    overlay: &OverlayTable,
    pool: &FramePool,
    targets: &mut Vec<usize>,
    frame: FrameHandle,
    out: &mut TxOut<'_>,
) {
    let Some(dst) = pool.bytes(&frame).first_chunk::<6>().map(|m| MacAddr(*m)) else {
        // The switch drops runts before they reach an uplink; a frame too
        // short to name a destination has nowhere to go, and is no reason
        // to panic.
        out.cache.free(frame);
        out.counters.add(UplinkCounter::DropNoRemote, 1);
        return;
    };
    // The switch usually parsed the frame already (to pick this uplink's
    // queue): its flow hash is reused, not recomputed.
    let entropy = frame.headers(pool).map_or(0, |p| p.hash as u16);
    overlay.targets(frame.network, dst, targets);
    let Some((&last, rest)) = targets.split_last() else {
        out.cache.free(frame);
        out.counters.add(UplinkCounter::DropNoRemote, 1);
        return;
    };
    for &host in rest {
        let Some(mut copy) = out.cache.alloc(frame.len as usize + OVERHEAD) else {
            out.counters.add(UplinkCounter::DropPoolEmpty, 1);
            continue;
        };
        copy.len = frame.len;
        copy.network = frame.network;
        let off = usize::from(copy.offset);
        pool.frame_mut(&mut copy)[off..off + frame.len as usize]
            .copy_from_slice(pool.bytes(&frame));
        if overlay.encap(pool, &mut copy, host, entropy) {
            out.push(copy);
        } else {
            out.cache.free(copy);
        }
    }
    let mut frame = frame;
    if overlay.encap(pool, &mut frame, last, entropy) {
        out.push(frame);
    } else {
        out.cache.free(frame);
        out.counters.add(UplinkCounter::DropTooBig, 1);
    }
}

#[inline]
/// [`neighbour_proxy`] on a frame of the pool: the counter of what it
/// answered, if it did.
fn answer_neighbour(
    overlay: &OverlayTable,
    pool: &FramePool,
    frame: &mut FrameHandle,
) -> Option<UplinkCounter> {
    let (start, len) = (usize::from(frame.offset), frame.len as usize);
    let network = frame.network;
    let bytes = pool.frame_mut(frame).get_mut(start..start + len)?;
    let answered = if neighbour_proxy::answer_arp(overlay, network, bytes) {
        UplinkCounter::ArpSuppressed
    } else {
        frame.len = neighbour_proxy::answer_nd(overlay, network, bytes)? as u32;
        UplinkCounter::NdSuppressed
    };
    frame.parsed = Parsed::NOT_YET;
    Some(answered)
}

fn desc(addr: u64, len: u32) -> libc::xdp_desc {
    libc::xdp_desc {
        addr,
        len,
        options: 0,
    }
}

impl Drop for UplinkQueueEngine {
    fn drop(&mut self) {
        // Close the socket first: only then is every lent frame ours again.
        drop(self.xsk.take());
        for frame in self.loans.reclaim_all() {
            self.cache.free(frame);
        }
        while let Some(frame) = self.from_switch.pop() {
            self.cache.free(frame);
        }
        if let Some(mut p) = self.pony.take() {
            while let Some(frame) = p.from_pony.pop() {
                self.cache.free(frame);
            }
        }
    }
}

/// Whether a received wire frame is UDP to `address`'s Pony port (the XDP
/// program redirected it for that; VXLAN and guests' frames come the same
/// way and are told apart here).
#[inline]
fn is_pony(frame: &[u8], address: std::net::Ipv4Addr) -> bool {
    use snapnet_wire::{ethernet, ipv4::Ipv4Packet, udp::UdpPacket};
    let Some(eth) = snapnet_wire::EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != 0x0800 {
        return false;
    }
    let Some(ip) = Ipv4Packet::new_checked(&frame[ethernet::HEADER_LEN..]) else {
        return false;
    };
    if ip.protocol() != 17 || ip.dst() != address.octets() || ip.is_fragment() {
        return false;
    }
    let l4 = &frame[ethernet::HEADER_LEN + ip.header_len()..];
    UdpPacket::new_checked(l4).is_some_and(|u| u.dst_port() == snapnet_wire::pony::PORT)
}

impl Engine for UplinkQueueEngine {
    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn poll(&mut self, budget: usize) -> usize {
        if let Some(job) = self.mailbox.take() {
            job(self);
        }
        let mut work = self.reclaim_completions();
        work += self.transmit(budget);
        work += self.transmit_pony(budget);
        self.timer.clear_due();
        work += self.receive(budget);
        self.refill();
        work += self.receive_group(budget);
        if self.dirty {
            self.shared.publish(&self.counters);
            self.dirty = false;
            if self.kernel_stats_at.elapsed() >= KERNEL_STATS_EVERY {
                self.publish_kernel_stats();
            }
        }
        work
    }

    fn wake_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![
            self.mailbox.doorbell().as_raw_fd(),
            self.from_switch.doorbell().as_raw_fd(),
            self.timer.as_raw_fd(),
        ];
        fds.extend(self.xsk.as_ref().map(|x| x.as_raw_fd()));
        fds.extend(self.tap.as_ref().map(|t| t.as_raw_fd()));
        fds.extend(
            self.pony
                .as_ref()
                .map(|p| p.from_pony.doorbell().as_raw_fd()),
        );
        fds
    }

    fn arm(&mut self) -> bool {
        // Going to sleep: leave the kernel's counters current, and have the
        // timer wake us when the egress bucket refills.
        self.publish_kernel_stats();
        self.timer.follow(self.egress_blocked_until);
        self.mailbox.doorbell().arm();
        if self.mailbox.pending() {
            return true;
        }
        self.from_switch.doorbell().arm();
        if let Some(p) = &self.pony {
            p.from_pony.doorbell().arm();
            if !p.from_pony.is_empty() {
                return true;
            }
        }
        let Some(xsk) = self.xsk.as_mut() else {
            return !self.from_switch.is_empty();
        };
        // Sent-but-not-taken TX entries need another kick, so they count as
        // work; frames held back by the egress limit do not (the timer wakes us).
        let throttled = self
            .egress_blocked_until
            .is_some_and(|t| Instant::now() < t);
        self.tap.as_ref().is_some_and(GroupTap::has_frame)
            || (!throttled && !self.from_switch.is_empty())
            || xsk.rx.available() > 0
            || xsk.completion.available() > 0
            || xsk.tx.outstanding() > 0
    }

    fn disarm(&mut self) {
        self.mailbox.doorbell().disarm();
        self.from_switch.doorbell().disarm();
        if let Some(p) = &self.pony {
            p.from_pony.doorbell().disarm();
        }
    }

    fn backlog(&mut self) -> f64 {
        self.xsk.as_mut().map_or(0.0, |x| {
            f64::from(x.rx.available()) / f64::from(x.rx.capacity())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PoolConfig;

    #[test]
    fn a_frame_that_finds_the_tx_ring_full_is_counted_as_that() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let mut loans = UmemLoans::new(&pool);
        let mut tx = ProducerRing::<libc::xdp_desc>::unbacked(1).unwrap();
        let mut counters = UplinkCounters::default();
        let (mut sent, mut bytes) = (0, 0);
        let mut out = TxOut {
            tx: &mut tx,
            loans: &mut loans,
            cache: &mut cache,
            counters: &mut counters,
            sent: &mut sent,
            bytes: &mut bytes,
        };
        for _ in 0..3 {
            let mut f = out.cache.alloc(60).unwrap();
            f.len = 60;
            out.push(f);
        }
        assert_eq!(sent, 1, "one entry fits");
        assert_eq!(counters.get(UplinkCounter::DropTxRingFull), 2);
        assert_eq!(counters.get(UplinkCounter::DropTooBig), 0);
        for f in loans.reclaim_all() {
            cache.free(f);
        }
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames());
    }
}
