//! Guest RX: frames from the switch are copied, with their virtio-net header,
//! into the guest's RX buffers (one copy; MRG_RXBUF spreads a frame over
//! several buffers). Without buffers the frames wait in the link.

use virtio_queue::{Queue, QueueT};

use super::chain::{walk, Direction, MAX_CHAIN_DESCS};
use super::data_path::{desc_budget, DataPath, RxChain};
use super::features::{Negotiated, VNET_HDR_LEN};
use super::guest_memory::GuestMap;
use super::guest_ring::RingView;
use super::guest_tx::max_wire_frame;
use super::stats::DropReason;
use crate::packet::prefetch::prefetch_write_span;
use crate::packet::{FrameHandle, FramePool, Offload};
use crate::shaping::Cost;
use snapnet_wire::checksum::complete_partial;
use snapnet_wire::virtio_net::{self, F_NEEDS_CSUM as NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6};

/// Delivers up to `budget` frames. Returns frames handled and whether the
/// guest wants an interrupt.
/// Never inlined: see `guest_tx::drain`.
#[inline(never)]
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
    let span = rx_prefetch_span(dp.from_switch.peek().map(|f| f.len));
    prefetch_buffers(
        ring,
        map,
        next_avail,
        avail_idx,
        dp.from_switch.len().min(budget),
        dp.features.in_order,
        span,
    );
    let mrg = dp.features.mrg_rxbuf;
    let mut handled = 0;
    let mut refilled = false;
    let max_descs = desc_budget(budget);
    let mut descs = 0;
    while handled < budget && descs < max_descs {
        let need = match next_frame(dp, &mut refilled) {
            NextFrame::Empty => break,
            NextFrame::Dropped => {
                handled += 1;
                continue;
            }
            NextFrame::Needs(need) => need,
        };
        if cursor_ahead(next_avail, avail_idx) {
            prefetch_rx_buffer_at(ring, map, next_avail.wrapping_add(SPANS_AHEAD), span);
        }
        dp.segs.clear();
        dp.rx_chains.clear();
        let mut cursor = next_avail;
        let mut cap = 0usize;
        let mut failed = None;
        let frame_descs = descs;
        while cap < need && cursor != avail_idx {
            if descs - frame_descs >= MAX_CHAIN_DESCS {
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
                &mut descs,
            );
            dp.rx_chains.push(RxChain {
                head,
                slots: 1,
                seg_end: dp.segs.len(),
            });
            match rx_buffer(walked) {
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
        let failed = match gathered(failed, cap, need, mrg, dp.rx_chains.len()) {
            Gathered::Wait => break,
            Gathered::Ready => None,
            Gathered::Short(reason) => Some(reason),
        };
        next_avail = cursor;
        handled += 1;
        deliver(dp, failed, |c, written| {
            ring.put_used(next_used, c.head, written);
            next_used = next_used.wrapping_add(1);
        });
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

/// The frame at the head of the link, as RX sees it.
pub(super) enum NextFrame {
    /// No frame.
    Empty,
    /// The frame was dropped (an offload the guest cannot take, or over the
    /// ingress limit).
    Dropped,
    /// The frame needs this many bytes of guest buffers, header included.
    Needs(usize),
}

/// Looks at the next frame and drops it if the guest must not get it.
/// `refilled` makes the ingress bucket catch up once per batch.
#[inline(always)]
pub(super) fn next_frame(dp: &mut DataPath, refilled: &mut bool) -> NextFrame {
    let Some(frame) = dp.from_switch.peek() else {
        return NextFrame::Empty;
    };
    if !accepts(&dp.features, &frame.offload) {
        let frame = dp.from_switch.pop().expect("peeked");
        dp.counters.drop(DropReason::GsoNotAccepted);
        dp.cache.free(frame);
        return NextFrame::Dropped;
    }
    if let Some(b) = dp.ingress.as_ref() {
        let cost = Cost::on_wire(frame.len, &frame.offload, max_wire_frame(dp.mtu));
        let refill = !*refilled;
        *refilled = true;
        if !b.has(cost, refill) {
            let frame = dp.from_switch.pop().expect("peeked");
            dp.counters.drop(DropReason::RateLimited);
            dp.dirty = true;
            dp.cache.free(frame);
            return NextFrame::Dropped;
        }
    }
    NextFrame::Needs(VNET_HDR_LEN + frame.len as usize)
}

/// A walked RX chain's length, refusing an empty buffer: it could never take
/// a byte, and with MRG_RXBUF a ring of them would be walked again for every
/// frame while the frame waits for room that never comes.
#[inline]
pub(super) fn rx_buffer(walked: Result<u64, DropReason>) -> Result<u64, DropReason> {
    match walked {
        Ok(0) => Err(DropReason::ZeroLengthBuffer),
        other => other,
    }
}

/// What the buffers gathered for a frame allow.
pub(super) enum Gathered {
    /// Enough room: deliver.
    Ready,
    /// Not enough buffers yet: the frame waits, nothing is consumed.
    Wait,
    /// The chains go back unused and the frame is lost.
    Short(DropReason),
}

/// Judges the chains gathered for a frame needing `need` bytes: `cap` bytes
/// in `chains` chains, `failed` if one of them was bad.
#[inline]
pub(super) fn gathered(
    failed: Option<DropReason>,
    cap: usize,
    need: usize,
    mrg: bool,
    chains: usize,
) -> Gathered {
    if let Some(reason) = failed {
        return Gathered::Short(reason);
    }
    if cap >= need {
        Gathered::Ready
    } else if mrg || chains == 0 {
        Gathered::Wait
    } else {
        Gathered::Short(DropReason::RxBufferTooSmall)
    }
}

/// Takes the next frame off the link and copies it into the chains in
/// `dp.rx_chains`/`dp.segs`, or, with `failed`, returns the chains unused
/// and counts the loss. `put_used(chain, bytes written)` returns each chain.
#[inline]
pub(super) fn deliver(
    dp: &mut DataPath,
    failed: Option<DropReason>,
    mut put_used: impl FnMut(&RxChain, u32),
) {
    let mut frame = dp.from_switch.pop().expect("peeked");
    if let Some(reason) = failed {
        for c in dp.rx_chains.iter() {
            put_used(c, 0);
        }
        if reason == DropReason::RxBufferTooSmall {
            dp.counters.drop(reason);
        } else {
            dp.malformed(reason, dp.rx_chains.last().map_or(0, |c| c.head));
        }
        dp.cache.free(frame);
        return;
    }
    if let Some(b) = dp.ingress.as_ref() {
        let cost = Cost::on_wire(frame.len, &frame.offload, max_wire_frame(dp.mtu));
        b.take(cost);
    }
    let num_buffers = dp.rx_chains.len() as u16;
    let frame_len = frame.len;
    let (hdr, packet) = prepare(&dp.pool, &dp.features, &mut frame, num_buffers);
    let mut src = CopySource::new(hdr, packet);
    let mut seg_start = 0usize;
    for c in dp.rx_chains.iter() {
        let mut written = 0usize;
        for seg in &dp.segs[seg_start..c.seg_end] {
            // SAFETY: `seg` is guest memory kept mapped by the GuestMap
            // snapshot and device-writable, `seg.len` bytes long.
            let n = unsafe { src.copy_to(seg.ptr, seg.len as usize) };
            if let Some(pages) = dp.dirty_pages.as_mut() {
                pages.wrote(seg.ptr, n as u32);
            }
            written += n;
        }
        seg_start = c.seg_end;
        put_used(c, written as u32);
    }
    dp.counters.rx_packets += 1;
    dp.counters.rx_bytes += u64::from(frame_len);
    dp.cache.free(frame);
}

/// Most buffers asked for ahead of one batch.
pub(super) const PREFETCH_AHEAD: u16 = 64;
/// Most bytes of one buffer asked for ahead (a 1500 B frame and its header).
const MAX_PREFETCH_SPAN: u64 = 1536;

/// Asks for the lines the batch will touch before the first copy, so their
/// misses overlap instead of following each other: the avail entries and
/// descriptors (which the guest's core just wrote) and then, for write, the
/// bytes of each buffer the next frame will fill. Hints only: nothing read here
/// is trusted; the walk below checks everything again.
#[inline]
fn prefetch_buffers(
    ring: &RingView,
    map: &GuestMap,
    next_avail: u16,
    avail_idx: u16,
    frames: usize,
    in_order: bool,
    span: u64,
) {
    let n = avail_idx
        .wrapping_sub(next_avail)
        .min(PREFETCH_AHEAD)
        .min(u16::try_from(frames).unwrap_or(u16::MAX));
    ring.prefetch_descs(next_avail, n, in_order);
    for i in 0..n.min(SPANS_AHEAD) {
        prefetch_rx_buffer_at(ring, map, next_avail.wrapping_add(i), span);
    }
}

/// Buffers whose whole span is asked for ahead of the copy into them: the
/// first few before the batch, then one more per frame delivered. All of a
/// 64-frame batch at once (96 KiB of lines for 1500 B frames) is twice the
/// L1 cache: the early lines were gone again before their copy came.
pub(super) const SPANS_AHEAD: u16 = 4;

/// Whether the guest has made a buffer available `SPANS_AHEAD` past
/// `next_avail` (only those are asked for).
#[inline]
fn cursor_ahead(next_avail: u16, avail_idx: u16) -> bool {
    avail_idx.wrapping_sub(next_avail) > SPANS_AHEAD
}

/// Asks for the buffer behind avail entry `at` (see [`prefetch_rx_buffer`]).
#[inline]
fn prefetch_rx_buffer_at(ring: &RingView, map: &GuestMap, at: u16, span: u64) {
    if let Some(desc) = ring.desc(ring.avail_entry(at)) {
        prefetch_rx_buffer(map, desc.addr, desc.len, span);
    }
}

/// How much of each RX buffer to ask for ahead: the whole of what the next
/// frame will fill, as frames of a batch tend to be alike. The guest's buffers
/// have gone round its whole ring since it posted them, so at 1500 B their
/// lines are far away, and asking for one line per buffer left the copy
/// streaming its misses one after another.
#[inline]
pub(super) fn rx_prefetch_span(next_len: Option<u32>) -> u64 {
    next_len.map_or(64, |len| {
        (u64::from(len) + VNET_HDR_LEN as u64).min(MAX_PREFETCH_SPAN)
    })
}

/// Asks for the first `span` bytes of the RX buffer at guest address `addr`
/// (`len` bytes long) for writing. A hint: nothing is trusted or checked.
#[inline]
pub(super) fn prefetch_rx_buffer(map: &GuestMap, addr: u64, len: u32, span: u64) {
    if let Some((p, n)) = map.translate(addr, u64::from(len).min(span)) {
        prefetch_write_span(p, n as usize);
    }
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

/// Finishes a partial checksum first when the guest cannot, and returns the
/// virtio-net header to write before the packet (as [`virtio_net::words`]),
/// and the packet.
///
/// The header never passes through memory on its way to the guest buffer.
/// A load that overlaps a store still in flight, but not exactly, cannot take
/// its data from that store, and waits for every older store to drain. The
/// older stores are the previous frame's copy into guest memory, which
/// misses. First the header was stored into the frame's headroom and copied
/// with the packet. Then it was built byte by byte in a stack array and
/// copied with 8-byte loads. Either way each frame's copy waited behind the
/// last one's misses: two thirds of `memmove`'s samples were that one load,
/// at 1500 B on split rings.
#[inline]
fn prepare<'a>(
    pool: &'a FramePool,
    features: &Negotiated,
    frame: &'a mut FrameHandle,
    num_buffers: u16,
) -> ((u64, u32), &'a [u8]) {
    // Guest TX rebuilt the offload from checked state (`tx_offload`); of
    // its flags only NEEDS_CSUM may reach a receiver, never DATA_VALID.
    let mut offload = frame.offload;
    offload.flags &= NEEDS_CSUM;
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
    (
        virtio_net::words(&offload, num_buffers),
        &buf[off..off + len],
    )
}

/// The bytes one frame puts into guest buffers: its virtio-net header, then
/// the packet, read in order across however the buffers cut them.
struct CopySource<'a> {
    hdr: (u64, u32),
    packet: &'a [u8],
    /// Bytes of header and packet copied so far.
    at: usize,
}

impl<'a> CopySource<'a> {
    fn new(hdr: (u64, u32), packet: &'a [u8]) -> Self {
        Self { hdr, packet, at: 0 }
    }

    /// Copies the next bytes, at most `room`, to `dst`; returns how many.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `room` bytes and not overlap the
    /// source.
    #[inline]
    unsafe fn copy_to(&mut self, dst: *mut u8, room: usize) -> usize {
        let mut done = 0;
        if self.at < VNET_HDR_LEN && room > 0 {
            if self.at == 0 && room >= VNET_HDR_LEN {
                // SAFETY: `room >= 12` bytes from `dst` are writable (the
                // caller's contract); unaligned stores of 8 and 4 bytes.
                unsafe {
                    dst.cast::<u64>().write_unaligned(self.hdr.0.to_le());
                    dst.add(8).cast::<u32>().write_unaligned(self.hdr.1.to_le());
                }
                done = VNET_HDR_LEN;
            } else {
                // A buffer too small for the header (no driver posts one):
                // byte by byte through memory, speed does not matter.
                let bytes = virtio_net::bytes_of(self.hdr);
                let n = (VNET_HDR_LEN - self.at).min(room);
                // SAFETY: `n <= room` bytes from `dst` are writable; the
                // source holds `n` bytes from `self.at`.
                unsafe { std::ptr::copy_nonoverlapping(bytes[self.at..].as_ptr(), dst, n) };
                done = n;
            }
            self.at += done;
        }
        if self.at >= VNET_HDR_LEN && done < room {
            let from = &self.packet[self.at - VNET_HDR_LEN..];
            let n = from.len().min(room - done);
            // SAFETY: `done + n <= room` bytes from `dst` are writable (the
            // caller's contract); `from` holds at least `n` bytes.
            unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), dst.add(done), n) };
            done += n;
            self.at += n;
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_crosses_header_packet_and_buffers() {
        let words = (0x0807_0605_0403_0201, 0x0c0b_0a09);
        let hdr = virtio_net::bytes_of(words);
        assert_eq!(hdr, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let packet: Vec<u8> = (100..150u8).collect();
        // Buffers of 5, 10 and 47 bytes (the first two split the header),
        // and of 20 and 50 (the header whole in the first).
        for buffers in [&[(0, 5), (5, 10), (15, 47)][..], &[(0, 20), (20, 50)][..]] {
            let mut out = vec![0u8; 70];
            let mut src = CopySource::new(words, &packet);
            let mut total = 0;
            for &(start, room) in buffers {
                // SAFETY: each range lies inside `out`.
                total += unsafe { src.copy_to(out.as_mut_ptr().add(start), room) };
            }
            assert_eq!(total, VNET_HDR_LEN + packet.len());
            assert_eq!(&out[..VNET_HDR_LEN], &hdr);
            assert_eq!(&out[VNET_HDR_LEN..total], &packet[..]);
            assert!(
                out[total..].iter().all(|&b| b == 0),
                "nothing past the frame"
            );
        }
    }
}
