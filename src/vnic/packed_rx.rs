//! Guest RX over a packed ring: the ring walking of `guest_rx::fill` in
//! packed form, with the same per-frame work (`guest_rx::next_frame`,
//! `gathered`, `deliver`). With MRG_RXBUF a frame spreads over several
//! chains, each returned by its own used descriptor.

use virtio_queue::Queue;

use super::chain::{Direction, MAX_CHAIN_DESCS};
use super::data_path::{desc_budget, DataPath, RxChain};
use super::guest_memory::GuestMap;
use super::guest_rx::{
    deliver, gathered, next_frame, prefetch_rx_buffer, rx_buffer, rx_prefetch_span, Gathered,
    NextFrame, PREFETCH_AHEAD, SPANS_AHEAD,
};
use super::packed_chain::{walk_packed, PackedWalk};
use super::packed_ring::{PackedView, Pos};
use super::packed_tx::{finish, start_pos, SLOTS_PER_LINE};
use super::stats::DropReason;

/// Delivers up to `budget` frames. Returns frames handled and whether the
/// guest wants an interrupt.
/// Never inlined: see `guest_tx::drain`.
#[inline(never)]
pub(super) fn fill(
    q: &mut Queue,
    ring: &PackedView,
    map: &GuestMap,
    budget: usize,
    dp: &mut DataPath,
) -> (usize, bool) {
    let Some((start, first_used)) = start_pos(q, ring, dp) else {
        return (0, false);
    };
    let size = ring.size();
    let span = rx_prefetch_span(dp.from_switch.peek().map(|f| f.len));
    prefetch_buffers(ring, map, start, dp.from_switch.len().min(budget), span);
    let mrg = dp.features.mrg_rxbuf;
    let mut avail = start;
    let mut used = first_used;
    // The batch's first used descriptor is published last (PackedView).
    let mut first = true;
    let mut handled = 0;
    let mut refilled = false;
    let max_descs = desc_budget(budget);
    let mut descs = 0;
    'frames: while handled < budget && descs < max_descs {
        let need = match next_frame(dp, &mut refilled) {
            NextFrame::Empty => break,
            NextFrame::Dropped => {
                handled += 1;
                continue;
            }
            NextFrame::Needs(need) => need,
        };
        // (Pos::advance takes steps shorter than the ring: a ring of a few
        // slots gets no look-ahead.)
        if SPANS_AHEAD < size {
            prefetch_buffer_at(ring, map, avail.advance(SPANS_AHEAD, size), span);
        }
        dp.segs.clear();
        dp.rx_chains.clear();
        let mut cursor = avail;
        let mut cap = 0usize;
        let mut failed = None;
        let frame_descs = descs;
        while cap < need {
            if descs - frame_descs >= MAX_CHAIN_DESCS {
                failed = Some(DropReason::RxBufferTooSmall);
                break;
            }
            let indirect = dp.features.indirect;
            match walk_packed(
                ring,
                map,
                cursor,
                Direction::DeviceWrites,
                indirect,
                &mut dp.segs,
                &mut descs,
            ) {
                PackedWalk::Empty => break,
                PackedWalk::Broken(reason) => {
                    // The frame stays in the link; what was delivered
                    // before is returned below, then the ring stops.
                    dp.malformed(reason, 0);
                    dp.ring_corrupt = true;
                    break 'frames;
                }
                PackedWalk::Chain { id, slots, total } => {
                    dp.rx_chains.push(RxChain {
                        head: id,
                        slots,
                        seg_end: dp.segs.len(),
                    });
                    cursor = cursor.advance(slots, size);
                    match rx_buffer(total) {
                        Ok(len) => cap += len as usize,
                        Err(reason) => {
                            failed = Some(reason);
                            break;
                        }
                    }
                }
            }
            if !mrg {
                break;
            }
        }
        let failed = match gathered(failed, cap, need, mrg, dp.rx_chains.len()) {
            Gathered::Wait => break,
            Gathered::Ready => None,
            Gathered::Short(reason) => Some(reason),
        };
        avail = cursor;
        handled += 1;
        deliver(dp, failed, |c, written| {
            ring.put_used(used, c.head, written, first);
            first = false;
            used = used.advance(c.slots, size);
        });
    }
    if first {
        return (handled, false);
    }
    (handled, finish(q, ring, avail, (first_used, used), dp))
}

/// Asks for the lines the batch will touch before the first copy, so their
/// misses overlap: the ring slots from `at` (which the guest's core just
/// wrote) and, for write, the first `span` bytes of the first few buffers
/// they name (the copy loop asks for the later ones as it goes, as split
/// RX does: `guest_rx::SPANS_AHEAD`). Hints only: the walk checks everything
/// again.
#[inline]
fn prefetch_buffers(ring: &PackedView, map: &GuestMap, at: Pos, frames: usize, span: u64) {
    let n = u16::try_from(frames)
        .unwrap_or(u16::MAX)
        .min(PREFETCH_AHEAD)
        .min(ring.size());
    for i in (0..n).step_by(SLOTS_PER_LINE) {
        ring.prefetch(at.advance(i, ring.size()).slot);
    }
    for i in 0..n.min(SPANS_AHEAD) {
        prefetch_buffer_at(ring, map, at.advance(i, ring.size()), span);
    }
}

/// Asks for the buffer the driver made available at `at`, if it has.
#[inline]
fn prefetch_buffer_at(ring: &PackedView, map: &GuestMap, at: Pos, span: u64) {
    if let Some(desc) = ring.avail(at) {
        prefetch_rx_buffer(map, desc.addr, desc.len, span);
    }
}
