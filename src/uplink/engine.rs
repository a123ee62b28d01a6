//! One uplink queue as an engine: moves frames between the switch links and
//! the AF_XDP socket of one NIC queue. No packet bytes are copied here: a
//! received frame is the very pool frame the kernel wrote into, and a frame
//! from a guest goes to the TX ring as it lies in the pool (only GSO
//! super-frames are cut into new wire-sized frames, in `packet::segment`).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::group_tap::GroupTap;
use super::stats::{SharedUplinkCounters, UplinkCounter, UplinkCounters};
use super::xsk::XskSocket;
use crate::engine::Engine;
use crate::packet::segment::{self, SegmentError};
use crate::packet::{FrameCache, FrameHandle, FramePool, LinkRx, LinkTx, UmemLoans};
use crate::shaping::{RateLimit, TokenBucket, WakeTimer};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
const NEEDS_CSUM: u8 = 1;

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
    /// Group-addressed frames (queue 0 only).
    pub tap: Option<GroupTap>,
}

pub struct UplinkQueueEngine {
    name: String,
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
    /// Segments that found no TX slot after all (cannot happen while the
    /// room estimate holds; kept so that nothing leaks if it ever does).
    unsent: Vec<FrameHandle>,
    kernel_stats_at: Instant,
    /// Since when the TX ring has been full without the kernel taking
    /// anything from it.
    tx_full_since: Option<Instant>,
    /// What the uplink may send; frames wait in the link while it is out of
    /// tokens, so the switch shares the uplink among vNICs by weight.
    egress: Option<TokenBucket>,
    egress_blocked_until: Option<Instant>,
    timer: WakeTimer,
}

impl UplinkQueueEngine {
    pub fn new(
        cfg: UplinkQueueConfig,
        xsk: XskSocket,
        pool: &Arc<FramePool>,
        to_switch: LinkTx,
        from_switch: LinkRx,
    ) -> std::io::Result<(Self, Arc<SharedUplinkCounters>)> {
        let UplinkQueueConfig {
            name,
            max_frame,
            tx_limit,
            tap,
        } = cfg;
        let shared = Arc::new(SharedUplinkCounters::default());
        let mut engine = Self {
            name,
            xsk: Some(xsk),
            loans: UmemLoans::new(pool),
            pool: pool.clone(),
            cache: pool.cache(),
            to_switch,
            from_switch,
            tap,
            max_frame,
            counters: UplinkCounters::default(),
            shared: shared.clone(),
            dirty: false,
            unsent: Vec::with_capacity(64),
            kernel_stats_at: Instant::now(),
            tx_full_since: None,
            egress: TokenBucket::new(&tx_limit),
            egress_blocked_until: None,
            timer: WakeTimer::new()?,
        };
        engine.refill();
        Ok((engine, shared))
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
        if let Some(b) = self.egress.as_mut() {
            b.refill(Instant::now());
            self.egress_blocked_until = None;
        }
        while done < budget {
            let Some(next) = self.from_switch.peek() else {
                break;
            };
            let needed = if next.offload.is_gso() {
                // An upper bound: segments carry gso_size bytes, or less when
                // the wire MTU minus the largest possible headers is smaller.
                let per_segment = u32::from(next.offload.gso_size)
                    .min(self.max_frame.saturating_sub(MAX_HEADERS) as u32)
                    .max(1);
                next.len / per_segment + 1
            } else {
                1
            };
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
                let len = self.from_switch.peek().map_or(0, |f| f.len);
                if !b.try_take(len) {
                    self.egress_blocked_until = Some(Instant::now() + b.wait_for(len));
                    break;
                }
            }
            let Some(mut frame) = self.from_switch.pop() else {
                break;
            };
            done += 1;
            if frame.offload.is_gso() {
                let tx = &mut xsk.tx;
                let loans = &mut self.loans;
                let unsent = &mut self.unsent;
                let result = segment::segment(
                    &self.pool,
                    &mut self.cache,
                    &frame,
                    self.max_frame,
                    |seg: FrameHandle| {
                        let len = seg.len;
                        if tx.free(1) == 0 {
                            unsent.push(seg);
                            return;
                        }
                        match loans.lend(seg) {
                            Ok(addr) => {
                                // Room was checked just above.
                                let _ = tx.push(desc(addr, len));
                                sent += 1;
                                bytes += u64::from(len);
                            }
                            Err(seg) => unsent.push(seg),
                        }
                    },
                );
                self.cache.free(frame);
                if !self.unsent.is_empty() {
                    self.counters
                        .add(UplinkCounter::DropTooBig, self.unsent.len() as u64);
                    for seg in self.unsent.drain(..) {
                        self.cache.free(seg);
                    }
                }
                match result {
                    Ok(n) => self.counters.add(UplinkCounter::TxSegments, n as u64),
                    Err(SegmentError::Malformed(_)) => {
                        self.counters.add(UplinkCounter::DropBadOffload, 1)
                    }
                    Err(SegmentError::PoolEmpty) => {
                        self.counters.add(UplinkCounter::DropPoolEmpty, 1)
                    }
                }
                self.dirty = true;
                continue;
            }
            if frame.len as usize > self.max_frame {
                self.cache.free(frame);
                self.counters.add(UplinkCounter::DropTooBig, 1);
                self.dirty = true;
                continue;
            }
            if frame.offload.flags & NEEDS_CSUM != 0
                && segment::finish_checksum(&self.pool, &mut frame).is_err()
            {
                self.cache.free(frame);
                self.counters.add(UplinkCounter::DropBadOffload, 1);
                self.dirty = true;
                continue;
            }
            let len = frame.len;
            match self.loans.lend(frame) {
                Ok(addr) => {
                    // Cannot fail: the free check above saw room.
                    let _ = xsk.tx.push(desc(addr, len));
                    sent += 1;
                    bytes += u64::from(len);
                }
                Err(frame) => {
                    // A large frame short enough for the wire: its bytes
                    // cross UMEM chunks, so it cannot be lent. Rare (only a
                    // guest frame bigger than a small frame can be large).
                    self.cache.free(frame);
                    self.counters.add(UplinkCounter::DropTooBig, 1);
                    self.dirty = true;
                }
            }
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
        let mut bytes = 0u64;
        while n < room {
            let Some(d) = xsk.rx.pop() else {
                break;
            };
            n += 1;
            if let Some(frame) = self.loans.reclaim(d.addr, d.len) {
                bytes += u64::from(d.len);
                // Room was checked.
                let _ = self.to_switch.push(frame);
            }
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

    fn publish_kernel_stats(&mut self) {
        self.kernel_stats_at = Instant::now();
        if let Some(Ok(k)) = self.xsk.as_ref().map(XskSocket::kernel_stats) {
            self.shared.publish_kernel(&k);
        }
    }
}

#[inline]
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
    }
}

impl Engine for UplinkQueueEngine {
    fn name(&self) -> &str {
        &self.name
    }

    #[inline]
    fn poll(&mut self, budget: usize) -> usize {
        let mut work = self.reclaim_completions();
        work += self.transmit(budget);
        if let Some(until) = self.egress_blocked_until {
            let now = Instant::now();
            self.timer.clear(now);
            if now < until && !self.timer.pending(now) {
                self.timer.arm(until - now);
            }
        }
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
            self.from_switch.doorbell().as_raw_fd(),
            self.timer.as_raw_fd(),
        ];
        fds.extend(self.xsk.as_ref().map(|x| x.as_raw_fd()));
        fds.extend(self.tap.as_ref().map(|t| t.as_raw_fd()));
        fds
    }

    fn arm(&mut self) -> bool {
        // Going to sleep: leave the kernel's counters current.
        self.publish_kernel_stats();
        self.from_switch.doorbell().arm();
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
        self.from_switch.doorbell().disarm();
    }
}
