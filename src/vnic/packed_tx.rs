//! Guest TX over a packed ring: the ring walking of `guest_tx::drain` in
//! packed form (chains in consecutive slots, used descriptors written over
//! them), with the same per-chain work (`guest_tx::record_walked`,
//! `send_walked`).
//!
//! The queue's `next_avail` and `next_used` hold the next avail and used
//! slots with their wrap counters in bit 15, the halves of a packed ring's
//! vhost-user vring base (vendor/PATCHES.md). Every chain taken gets its used
//! descriptor in the same batch, so both move by the same number of slots;
//! they differ only if a frontend started the ring with chains in flight.

use virtio_queue::{Queue, QueueT};

use super::chain::{Direction, MAX_SEGMENTS};
use super::data_path::{desc_budget, DataPath};
use super::guest_memory::GuestMap;
use super::guest_tx::{record_walked, send_walked, start_sending, throttled};
use super::packed_chain::{walk_packed, PackedWalk};
use super::packed_ring::{PackedView, Pos};
use super::stats::DropReason;
use crate::packet::LinkTx;

/// Descriptors per cache line, for prefetching the ring ahead.
pub(super) const SLOTS_PER_LINE: usize = 4;

/// Where the engine's batch on `ring` starts: the queue's next avail and
/// next used positions, unless one names a slot past the ring (a frontend's
/// bad SET_VRING_BASE).
#[inline]
pub(super) fn start_pos(q: &Queue, ring: &PackedView, dp: &mut DataPath) -> Option<(Pos, Pos)> {
    let avail = Pos::from_base(q.next_avail());
    let used = Pos::from_base(q.next_used());
    if avail.slot >= ring.size() || used.slot >= ring.size() {
        dp.malformed(DropReason::BadAvailIndex, 0);
        dp.ring_corrupt = true;
        return None;
    }
    Some((avail, used))
}

/// Ends a batch that took the chains up to `avail` and wrote used
/// descriptors from `first` up to `used`; returns whether the guest wants
/// an interrupt for them.
#[inline]
pub(super) fn finish(
    q: &mut Queue,
    ring: &PackedView,
    avail: Pos,
    (first, used): (Pos, Pos),
    dp: &DataPath,
) -> bool {
    ring.publish_used(first);
    q.set_next_avail(avail.to_base());
    q.set_next_used(used.to_base());
    ring.needs_interrupt(dp.features.event_idx, first, used)
}

/// Moves up to `budget` chains from the packed TX ring to the switch link
/// `out`. Returns the chains consumed and whether the guest wants an
/// interrupt.
/// Never inlined: see `guest_tx::drain`.
#[inline(never)]
pub(super) fn drain(
    q: &mut Queue,
    ring: &PackedView,
    map: &GuestMap,
    budget: usize,
    dp: &mut DataPath,
    out: &mut LinkTx,
) -> (usize, bool) {
    if throttled(dp) {
        return (0, false);
    }
    let Some((start, first_used)) = start_pos(q, ring, dp) else {
        return (0, false);
    };
    // Backpressure: take no more than the link can hold.
    let max = budget.min(out.free()).min(dp.tx_chains.capacity());
    for i in (0..max.min(usize::from(ring.size()))).step_by(SLOTS_PER_LINE) {
        ring.prefetch(start.advance(i as u16, ring.size()).slot);
    }
    // Pass 1: walk the available chains.
    dp.segs.clear();
    dp.tx_chains.clear();
    let mut at = start;
    let max_descs = desc_budget(budget);
    let mut descs = 0;
    while dp.tx_chains.len() < max && dp.segs.len() <= MAX_SEGMENTS && descs < max_descs {
        let seg_start = dp.segs.len();
        let indirect = dp.features.indirect;
        match walk_packed(
            ring,
            map,
            at,
            Direction::DeviceReads,
            indirect,
            &mut dp.segs,
            &mut descs,
        ) {
            PackedWalk::Empty => break,
            PackedWalk::Broken(reason) => {
                // What was walked before still goes out; the ring stops.
                dp.malformed(reason, 0);
                dp.ring_corrupt = true;
                break;
            }
            PackedWalk::Chain { id, slots, total } => {
                record_walked(dp, id, slots, seg_start, total);
                at = at.advance(slots, ring.size());
            }
        }
    }
    // Pass 2: copy each chain into a frame and write its used descriptor
    // (the batch's first one is published last).
    let walked = dp.tx_chains.len();
    let mut n = 0;
    let mut avail = start;
    let mut used = first_used;
    let in_order = dp.features.in_order;
    start_sending(dp);
    let mut to_switch = out.batch(walked);
    while n < walked {
        let c = dp.tx_chains[n];
        if !send_walked(&c, dp, &mut to_switch) {
            break;
        }
        // TX buffers are only read: the used length is 0 either way.
        if !in_order {
            ring.put_used(used, c.head, 0, n == 0);
        }
        used = used.advance(c.slots, ring.size());
        avail = avail.advance(c.slots, ring.size());
        n += 1;
    }
    if in_order && n > 0 {
        // In order, one used descriptor with the batch's last id stands for
        // the whole batch, and the driver steps over all its slots (virtio
        // 1.1 2.8.9): fewer of the driver's lines to steal.
        ring.put_used(first_used, dp.tx_chains[n - 1].head, 0, true);
    }
    drop(to_switch);
    if n < walked {
        dp.counters.backpressure += 1;
    }
    if n == 0 {
        return (0, false);
    }
    out.flush();
    (n, finish(q, ring, avail, (first_used, used), dp))
}
