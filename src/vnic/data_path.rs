//! A queue pair's data-path state that the per-packet code (guest TX and
//! RX, split and packed) shares with its engine: the frame cache, the link
//! from the switch, counters, offload features, shaping buckets, and the
//! per-batch scratch (segments and chains), sized once. The engine owns
//! one; `guest_tx`, `guest_rx` and the packed paths borrow it for a batch.
//! The link toward the switch is the engine's own, lent to a TX batch
//! beside this state: the batch holds room in it for its frames
//! ([`crate::packet::LinkBatch`]) while the per-packet code uses the rest.

use std::sync::Arc;
use std::time::Instant;

use super::antispoof::SpoofGuard;
use super::chain::{Segment, MAX_CHAIN_DESCS, MAX_SEGMENTS};
use super::dirty_log::DirtyPages;
use super::features::Negotiated;
use super::guest_log::{self, GuestLog};
use super::stats::{DropReason, QueueCounters};
use crate::packet::{FrameCache, FramePool, LinkRx};
use crate::shaping::SharedBucket;

/// Most TX chains walked ahead in one batch.
const TX_BATCH: usize = 64;

/// Descriptors a batch may walk per unit of the poll budget (which counts
/// chains or frames): 16 per chain is above what drivers use, so only a
/// hostile ring is cut short, one chain ([`super::chain::MAX_CHAIN_DESCS`])
/// past the budget at most. Counted per chain, not per descriptor.
const DESCS_PER_BUDGET: usize = 16;

/// The descriptors a batch of `budget` may walk.
#[inline]
pub(super) fn desc_budget(budget: usize) -> u32 {
    u32::try_from(budget.saturating_mul(DESCS_PER_BUDGET)).unwrap_or(u32::MAX)
}

/// Most guest buffers one frame may be spread over: each takes at least one
/// descriptor, and a frame at most [`MAX_CHAIN_DESCS`].
pub(super) const MAX_RX_CHAINS: usize = MAX_CHAIN_DESCS as usize;

/// One guest RX chain collected for the frame being delivered.
#[derive(Clone, Copy)]
pub(super) struct RxChain {
    /// Split: the head index; packed: the buffer id.
    pub(super) head: u16,
    /// Ring slots the chain takes (packed; 1 for split rings).
    pub(super) slots: u16,
    pub(super) seg_end: usize,
}

/// A TX chain walked in pass 1.
#[derive(Clone, Copy)]
pub(super) struct TxChain {
    /// Split: the head index; packed: the buffer id.
    pub(super) head: u16,
    /// Ring slots the chain takes (packed; 1 for split rings).
    pub(super) slots: u16,
    pub(super) seg_start: usize,
    pub(super) seg_end: usize,
    pub(super) walked: Result<usize, DropReason>,
}

/// Everything the per-packet code touches, apart from the rings.
pub(super) struct DataPath {
    pub pool: Arc<FramePool>,
    pub cache: FrameCache,
    pub from_switch: LinkRx,
    pub counters: QueueCounters,
    pub segs: Vec<Segment>,
    pub tx_chains: Vec<TxChain>,
    pub rx_chains: Vec<RxChain>,
    pub features: Negotiated,
    pub mtu: u16,
    pub guard: SpoofGuard,
    /// Guest egress: chains wait in the TX ring while it is out of tokens
    /// (shared with the vNIC's other queues).
    pub egress: Option<SharedBucket>,
    /// Guest ingress: frames over the limit are dropped (shared as well).
    pub ingress: Option<SharedBucket>,
    /// Set by a TX batch stopped by `egress`: when tokens will be there.
    pub egress_blocked_until: Option<Instant>,
    /// A drop was counted in a poll that may have done no work.
    pub dirty: bool,
    /// The ring just processed had a corrupt avail index (set by the
    /// per-packet code, acted on by the engine after the batch).
    pub ring_corrupt: bool,
    /// The vNIC's guest-triggered log lines (shared by its queue pairs).
    pub log: Arc<GuestLog>,
    /// While a live migration logs dirty pages: the guest buffers written
    /// in the current batch.
    pub dirty_pages: Option<DirtyPages>,
    name: String,
}

impl DataPath {
    pub fn new(
        name: &str,
        pool: &Arc<FramePool>,
        mtu: u16,
        guard: SpoofGuard,
        from_switch: LinkRx,
    ) -> Self {
        Self {
            guard,
            egress: None,
            ingress: None,
            egress_blocked_until: None,
            pool: pool.clone(),
            cache: pool.cache(),
            from_switch,
            counters: QueueCounters::default(),
            segs: Vec::with_capacity(2 * MAX_SEGMENTS),
            tx_chains: Vec::with_capacity(TX_BATCH),
            rx_chains: Vec::with_capacity(MAX_RX_CHAINS),
            features: Negotiated::default(),
            mtu,
            dirty: false,
            ring_corrupt: false,
            log: Arc::new(GuestLog::new(guest_log::INTERVAL)),
            dirty_pages: None,
            name: name.to_string(),
        }
    }

    /// Drops every frame waiting for the guest, counted as `reason`.
    #[cold]
    pub(super) fn drop_waiting(&mut self, reason: DropReason) -> usize {
        let mut n = 0;
        while let Some(frame) = self.from_switch.pop() {
            self.counters.drop(reason);
            self.cache.free(frame);
            n += 1;
        }
        self.dirty = true;
        n
    }

    /// Counts a guest error and logs it, rate-limited.
    #[cold]
    pub fn malformed(&mut self, reason: DropReason, head: u16) {
        self.counters.drop(reason);
        self.dirty = true;
        if reason == DropReason::SpoofedMac {
            self.explain_spoofed_mac();
            return;
        }
        if let Some(suppressed) = self.log.allow() {
            let what = match reason {
                DropReason::TooBig
                | DropReason::BadGso
                | DropReason::GsoSizeTooSmall
                | DropReason::BadGsoHeaders
                | DropReason::CsumNotNegotiated
                | DropReason::BadCsumOffsets
                | DropReason::BadHdrLen
                | DropReason::SpoofedIp
                | DropReason::SpoofedArp
                | DropReason::SpoofedNd
                | DropReason::Unverifiable => "guest frame dropped",
                _ => "malformed descriptor chain returned",
            };
            log::warn!(
                "{}: {what} (head {head}): {} ({suppressed} similar messages suppressed)",
                self.name,
                reason.as_str()
            );
        }
    }

    /// A guest on the wrong MAC loses every frame and cannot tell why:
    /// say it once per connection, with both MACs and the usual causes.
    #[cold]
    fn explain_spoofed_mac(&self) {
        if let Some(suppressed) = self.log.mac_hint() {
            let (sent, own) = (self.guard.refused_src(), self.guard.mac());
            log::warn!(
                "{}: dropping the guest's frames from MAC {sent}: the vNIC's MAC is {own} \
                 (counted as spoofed_mac; said once per guest connection). A guest on \
                 QEMU's default MAC 52:54:00:12:34:56 needs -device virtio-net-pci,mac={own}; \
                 a DPDK virtio-user frontend needs mac={own} in its devargs \
                 ({suppressed} other messages suppressed)",
                self.name
            );
        }
    }
}
