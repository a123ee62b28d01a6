//! Guest TX: descriptor chains from the guest's TX ring become frames on the
//! link to the switch, with exactly one copy.

use std::time::Instant;

use virtio_queue::{Queue, QueueT};

use super::chain::{walk, Direction, MAX_SEGMENTS};
use super::data_path::{desc_budget, DataPath, TxChain};
use super::features::VNET_HDR_LEN;
use super::guest_memory::GuestMap;
use super::guest_ring::RingView;
use super::stats::DropReason;
use super::tx_offload::sanitise;
use crate::packet::pool::MAX_PACKET;
use crate::packet::prefetch::prefetch_span;
use crate::packet::{FrameHandle, LinkBatch, LinkTx};
use crate::shaping::Cost;
use snapnet_wire::ethernet::HEADER_LEN as ETH_HLEN;
use snapnet_wire::virtio_net;
use snapnet_wire::vlan::TAG_LEN as VLAN_TAG_LEN;

/// Lines of each TX buffer asked for ahead: a 1500 B frame and its header.
const TX_PREFETCH_LINES: usize = 32;

/// The largest frame a vNIC with `mtu` puts on a wire: what a frame
/// without GSO may be, and what a super-frame's segments are cut to.
#[inline]
pub(super) fn max_wire_frame(mtu: u16) -> usize {
    // One VLAN tag is allowed on top of MTU + Ethernet header.
    usize::from(mtu) + ETH_HLEN + VLAN_TAG_LEN
}

/// Moves up to `budget` chains from the TX ring to the switch link `out`.
/// Returns the chains consumed and whether the guest wants an interrupt.
///
/// Never inlined, like the other three ring loops (split and packed, TX
/// and RX), and the per-frame helpers they call always are: with several
/// codegen units, which of them the compiler inlined where changed with
/// unrelated code elsewhere (an upgrade commit turned `send_walked` and
/// `next_frame` into calls per frame), and the rate with it. A call per
/// batch costs nothing measurable.
#[inline(never)]
pub(super) fn drain(
    q: &mut Queue,
    ring: &RingView,
    map: &GuestMap,
    budget: usize,
    dp: &mut DataPath,
    out: &mut LinkTx,
) -> (usize, bool) {
    let mut next_avail = q.next_avail();
    let old_used = q.next_used();
    let mut next_used = old_used;
    if throttled(dp) {
        return (0, false);
    }
    let pending = ring.avail_idx().wrapping_sub(next_avail);
    if pending > ring.size() {
        dp.malformed(DropReason::BadAvailIndex, 0);
        dp.ring_corrupt = true;
        return (0, false);
    }
    // Backpressure: take no more than the link can hold.
    let n = usize::from(pending)
        .min(budget)
        .min(out.free())
        .min(dp.tx_chains.capacity());
    // Pass 1: walk the batch's chains (their descriptors prefetched first)
    // and prefetch the start of each buffer, so the copies below find the
    // lines the guest's core just wrote already on their way.
    ring.prefetch_descs(next_avail, n as u16, dp.features.in_order);
    dp.segs.clear();
    dp.tx_chains.clear();
    let max_descs = desc_budget(budget);
    let mut descs = 0;
    while dp.tx_chains.len() < n && dp.segs.len() <= MAX_SEGMENTS && descs < max_descs {
        let head = ring.avail_entry(next_avail);
        next_avail = next_avail.wrapping_add(1);
        let seg_start = dp.segs.len();
        let walked = walk(
            ring,
            map,
            head,
            Direction::DeviceReads,
            dp.features.indirect,
            &mut dp.segs,
            &mut descs,
        );
        record_walked(dp, head, 1, seg_start, walked);
    }
    // Pass 2: copy each chain into a frame and hand it to the switch.
    let walked = dp.tx_chains.len();
    let mut n = 0;
    start_sending(dp);
    let mut to_switch = out.batch(walked);
    while n < walked {
        let c = dp.tx_chains[n];
        if !send_walked(&c, dp, &mut to_switch) {
            break;
        }
        // TX buffers are only read: the used length is 0 either way. In
        // order, the driver learns of the whole batch from its last entry, so
        // the others are not written: fewer of the driver's lines to steal.
        if !dp.features.in_order {
            ring.put_used(next_used, c.head, 0);
        }
        next_used = next_used.wrapping_add(1);
        n += 1;
    }
    if dp.features.in_order && n > 0 {
        ring.put_used(next_used.wrapping_sub(1), dp.tx_chains[n - 1].head, 0);
    }
    if n < walked {
        dp.counters.backpressure += 1;
        next_avail = q.next_avail().wrapping_add(n as u16);
    }
    drop(to_switch);
    if n == 0 {
        return (0, false);
    }
    ring.publish_used(next_used);
    q.set_next_avail(next_avail);
    q.set_next_used(next_used);
    out.flush();
    (
        n,
        ring.needs_interrupt(dp.features.event_idx, old_used, next_used),
    )
}

/// Records a chain walked in pass 1 (split or packed), prefetching its first
/// buffers whole so the copies in pass 2 find the guest's lines on the way
/// (the guest wrote only their headers lately; the rest went round its ring).
#[inline]
pub(super) fn record_walked(
    dp: &mut DataPath,
    head: u16,
    slots: u16,
    seg_start: usize,
    walked: Result<u64, DropReason>,
) {
    match walked {
        Ok(_) => {
            for seg in &dp.segs[seg_start..dp.segs.len().min(seg_start + 2)] {
                prefetch_span(seg.ptr, seg.len as usize, TX_PREFETCH_LINES);
            }
        }
        Err(_) => dp.segs.truncate(seg_start),
    }
    dp.tx_chains.push(TxChain {
        head,
        slots,
        seg_start,
        seg_end: dp.segs.len(),
        walked: walked.map(|t| t as usize),
    });
}

/// True while a batch stopped by the egress limit waits for its tokens:
/// the ring is left alone until then (the engine's timer wakes it), so a
/// busy-polling engine does not copy the same chain again on every poll.
#[inline]
pub(super) fn throttled(dp: &DataPath) -> bool {
    dp.egress_blocked_until
        .is_some_and(|until| Instant::now() < until)
}

/// Before pass 2: the egress bucket catches up with the clock.
#[inline]
pub(super) fn start_sending(dp: &mut DataPath) {
    if let Some(b) = dp.egress.as_ref() {
        b.refill_now();
        dp.egress_blocked_until = None;
    }
}

/// Pass 2 for one walked chain: copies it into a frame for the switch (into
/// `to_switch`, which the caller sized to the batch), or counts why it is
/// dropped. False when the chain must stay in the ring (out of egress
/// tokens or frames): the caller stops there and returns nothing from this
/// chain on.
///
/// Always inlined into the ring loops (see [`drain`]).
#[inline(always)]
pub(super) fn send_walked(c: &TxChain, dp: &mut DataPath, to_switch: &mut LinkBatch) -> bool {
    let result = c
        .walked
        .and_then(|total| one_chain(c.seg_start, c.seg_end, total, dp));
    match result {
        Ok(Copied::Yes(frame)) => {
            if let Err(frame) = to_switch.push(frame) {
                // Cannot happen: the batch has room for every walked chain.
                dp.cache.free(frame);
            }
            true
        }
        // Backpressure: no frame free, or no egress tokens. Leave this chain
        // and the rest of the batch in the ring for a later poll rather than
        // drop (the guest's TCP sees a slow link, not loss).
        Ok(Copied::PoolEmpty | Copied::Throttled) => false,
        Err(reason) => {
            dp.malformed(reason, c.head);
            true
        }
    }
}

/// What became of a well-formed chain.
enum Copied {
    /// Copied and checked: the frame for the switch.
    Yes(FrameHandle),
    /// The pool had no frame: the chain stays in the ring.
    PoolEmpty,
    /// The egress limit has no tokens for it yet: the chain stays in the
    /// ring until `egress_blocked_until`.
    Throttled,
}

/// Copies one chain of `total` bytes into a frame, checks it and sends it.
///
/// Every check comes before the egress limit: a frame that is dropped never
/// costs tokens, and a chain too big to ever be sent is dropped rather than
/// waiting for tokens for good. The limit is charged from our checked copy
/// of the header (a guest may rewrite its own buffer at any time), for what
/// the frame puts on the wire: a super-frame pays for each of its segments.
/// A chain held back by the limit was copied for nothing; it is copied once
/// more when its tokens are there, not before ([`throttled`]).
#[inline(always)]
fn one_chain(
    seg_start: usize,
    seg_end: usize,
    total: usize,
    dp: &mut DataPath,
) -> Result<Copied, DropReason> {
    if total < VNET_HDR_LEN + ETH_HLEN {
        return Err(DropReason::TooShort);
    }
    let len = total - VNET_HDR_LEN;
    if len > MAX_PACKET {
        return Err(DropReason::TooBig);
    }
    let Some(mut frame) = dp.cache.alloc(len) else {
        return Ok(Copied::PoolEmpty);
    };
    // Copy header and packet in one pass: the header lands in the headroom
    // just before the packet, so a header split across descriptors costs
    // nothing extra.
    let start = usize::from(frame.offset) - VNET_HDR_LEN;
    let buf = &mut dp.pool.frame_mut(&mut frame)[start..start + total];
    let mut at = 0;
    for seg in &dp.segs[seg_start..seg_end] {
        let n = seg.len as usize;
        // SAFETY: `seg` was translated from guest memory that the GuestMap
        // snapshot keeps mapped; `at + n <= total == buf.len()` because the
        // segments sum to `total`. The guest may race on its bytes: we copy
        // them once and only ever parse our copy.
        unsafe { std::ptr::copy_nonoverlapping(seg.ptr, buf.as_mut_ptr().add(at), n) };
        at += n;
    }
    // The checks a frame passes before it may leave: its offload request,
    // its size, and the vNIC's anti-spoofing guard.
    let (hdr, packet) = buf.split_at(VNET_HDR_LEN);
    let checked = sanitise(virtio_net::parse(hdr), packet, &dp.features).and_then(|o| {
        if !o.is_gso() && packet.len() > max_wire_frame(dp.mtu) {
            return Err(DropReason::TooBig);
        }
        dp.guard.check(packet).map(|()| o)
    });
    let offload = match checked {
        Ok(o) => o,
        Err(reason) => {
            dp.cache.free(frame);
            return Err(reason);
        }
    };
    // `len <= MAX_PACKET`: no truncation.
    let len = len as u32;
    if let Some(b) = dp.egress.as_ref() {
        let cost = Cost::on_wire(len, &offload, max_wire_frame(dp.mtu));
        if let Err(wait) = b.take_in_turn(cost) {
            dp.egress_blocked_until = Some(Instant::now() + wait);
            dp.cache.free(frame);
            return Ok(Copied::Throttled);
        }
    }
    frame.len = len;
    frame.offload = offload;
    dp.counters.tx_packets += 1;
    dp.counters.tx_bytes += u64::from(len);
    Ok(Copied::Yes(frame))
}
