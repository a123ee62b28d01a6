//! Guest RX: frames from the switch are copied, with their virtio-net header,
//! into the guest's RX buffers (one copy; MRG_RXBUF spreads a frame over
//! several buffers). Without buffers the frames wait in the link.

use std::time::Instant;

use virtio_queue::{Queue, QueueT};

use super::chain::{walk, Direction};
use super::engine::DataPath;
use super::features::{Negotiated, VNET_HDR_LEN};
use super::guest_memory::GuestMap;
use super::guest_ring::RingView;
use super::guest_tx::write_vnet_hdr;
use super::stats::DropReason;
use crate::packet::checksum::complete_partial;
use crate::packet::{FrameHandle, FramePool, Offload};

/// Most guest buffers one frame may be spread over.
pub(super) const MAX_RX_CHAINS: usize = 256;
const NEEDS_CSUM: u8 = 1;
const GSO_ECN: u8 = 0x80;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;

/// One guest RX chain collected for the frame being delivered.
#[derive(Clone, Copy)]
pub(super) struct RxChain {
    head: u16,
    seg_end: usize,
}

/// Delivers up to `budget` frames. Returns frames handled and whether the
/// guest wants an interrupt.
pub(super) fn fill(
    q: &mut Queue,
    ring: &RingView,
    map: &GuestMap,
    budget: usize,
    dp: &mut DataPath,
) -> (usize, bool) {
    let mut next_avail = q.next_avail();
    let old_used = q.next_used();
    let mut next_used = old_used;
    let avail_idx = ring.avail_idx();
    if avail_idx.wrapping_sub(next_avail) > ring.size() {
        dp.malformed(DropReason::BadAvailIndex, 0);
        dp.ring_corrupt = true;
        return (0, false);
    }
    let mrg = dp.features.mrg_rxbuf;
    let mut handled = 0;
    let mut refilled = false;
    while handled < budget {
        let Some(frame) = dp.from_switch.peek() else {
            break;
        };
        if !accepts(&dp.features, &frame.offload) {
            let frame = dp.from_switch.pop().expect("peeked");
            dp.counters.drop(DropReason::GsoNotAccepted);
            dp.cache.free(frame);
            handled += 1;
            continue;
        }
        if let Some(b) = dp.ingress.as_mut() {
            if !refilled {
                b.refill(Instant::now());
                refilled = true;
            }
            if !b.has(frame.len) {
                let frame = dp.from_switch.pop().expect("peeked");
                dp.counters.drop(DropReason::RateLimited);
                dp.dirty = true;
                dp.cache.free(frame);
                handled += 1;
                continue;
            }
        }
        let need = VNET_HDR_LEN + frame.len as usize;
        dp.segs.clear();
        dp.rx_chains.clear();
        let mut cursor = next_avail;
        let mut cap = 0usize;
        let mut failed = None;
        while cap < need && cursor != avail_idx {
            if dp.rx_chains.len() == MAX_RX_CHAINS {
                failed = Some(DropReason::RxBufferTooSmall);
                break;
            }
            let head = ring.avail_entry(cursor);
            cursor = cursor.wrapping_add(1);
            let walked = walk(
                ring,
                map,
                head,
                Direction::DeviceWrites,
                dp.features.indirect,
                &mut dp.segs,
            );
            dp.rx_chains.push(RxChain {
                head,
                seg_end: dp.segs.len(),
            });
            match walked {
                Ok(len) => cap += len as usize,
                Err(reason) => {
                    failed = Some(reason);
                    break;
                }
            }
            if !mrg {
                break;
            }
        }
        if failed.is_none() && cap < need {
            if mrg || dp.rx_chains.is_empty() {
                // Not enough buffers yet: the frame waits, nothing consumed.
                break;
            }
            failed = Some(DropReason::RxBufferTooSmall);
        }
        next_avail = cursor;
        let mut frame = dp.from_switch.pop().expect("peeked");
        handled += 1;
        if let Some(reason) = failed {
            // The chains go back unused; the frame is lost.
            for c in dp.rx_chains.iter() {
                ring.put_used(next_used, c.head, 0);
                next_used = next_used.wrapping_add(1);
            }
            if reason == DropReason::RxBufferTooSmall {
                dp.counters.drop(reason);
            } else {
                dp.malformed(reason, dp.rx_chains.last().map_or(0, |c| c.head));
            }
            dp.cache.free(frame);
            continue;
        }
        if let Some(b) = dp.ingress.as_mut() {
            b.take(frame.len);
        }
        let num_buffers = dp.rx_chains.len() as u16;
        let frame_len = frame.len;
        let src = prepare(&dp.pool, &dp.features, &mut frame, num_buffers);
        let mut at = 0usize;
        let mut seg_start = 0usize;
        for c in dp.rx_chains.iter() {
            let mut written = 0usize;
            for seg in &dp.segs[seg_start..c.seg_end] {
                let n = (seg.len as usize).min(src.len() - at);
                // SAFETY: `seg` is guest memory kept mapped by the GuestMap
                // snapshot and device-writable; `at + n <= src.len()`.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(at), seg.ptr, n) };
                at += n;
                written += n;
            }
            seg_start = c.seg_end;
            ring.put_used(next_used, c.head, written as u32);
            next_used = next_used.wrapping_add(1);
        }
        dp.counters.rx_packets += 1;
        dp.counters.rx_bytes += u64::from(frame_len);
        dp.cache.free(frame);
    }
    q.set_next_avail(next_avail);
    if next_used == old_used {
        return (handled, false);
    }
    ring.publish_used(next_used);
    q.set_next_used(next_used);
    (
        handled,
        ring.needs_interrupt(dp.features.event_idx, old_used, next_used),
    )
}

/// Whether the guest can take this frame's segmentation offload.
#[inline]
fn accepts(f: &Negotiated, o: &Offload) -> bool {
    if !o.is_gso() {
        return true;
    }
    match o.gso_type & !GSO_ECN {
        GSO_TCPV4 => f.guest_tso4,
        GSO_TCPV6 => f.guest_tso6,
        _ => false,
    }
}

/// Writes the virtio-net header into the headroom (finishing a partial
/// checksum first when the guest cannot) and returns header + packet bytes.
#[inline]
fn prepare<'a>(
    pool: &'a FramePool,
    features: &Negotiated,
    frame: &'a mut FrameHandle,
    num_buffers: u16,
) -> &'a [u8] {
    let mut offload = frame.offload;
    let (off, len) = (usize::from(frame.offset), frame.len as usize);
    let buf = pool.frame_mut(frame);
    if !features.guest_csum {
        if offload.flags & NEEDS_CSUM != 0 {
            let packet = &mut buf[off..off + len];
            complete_partial(
                packet,
                usize::from(offload.csum_start),
                usize::from(offload.csum_offset),
            );
        }
        offload.flags = 0;
    }
    write_vnet_hdr(&mut buf[off - VNET_HDR_LEN..off], &offload, num_buffers);
    &buf[off - VNET_HDR_LEN..off + len]
}
