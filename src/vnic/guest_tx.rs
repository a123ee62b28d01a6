//! Guest TX: descriptor chains from the guest's TX ring become frames on the
//! link to the switch, with exactly one copy.

use std::time::Instant;

use virtio_queue::{Queue, QueueT};

use super::chain::{walk, Direction, MAX_SEGMENTS};
use super::engine::{desc_budget, DataPath};
use super::features::VNET_HDR_LEN;
use super::guest_memory::GuestMap;
use super::guest_ring::RingView;
use super::stats::DropReason;
use crate::packet::pool::MAX_PACKET;
use crate::packet::prefetch::prefetch_span;
use crate::packet::wire::ethernet::HEADER_LEN as ETH_HLEN;
use crate::packet::Offload;

/// VLAN tag allowance on top of MTU + Ethernet header.
const VLAN_LEN: usize = 4;
const GSO_ECN: u8 = 0x80;
const GSO_TCPV4: u8 = 1;
const GSO_UDP: u8 = 3;
const GSO_TCPV6: u8 = 4;
const GSO_UDP_L4: u8 = 5;
/// Lines of each TX buffer asked for ahead: a 1500 B frame and its header.
const TX_PREFETCH_LINES: usize = 32;

/// Moves up to `budget` chains from the TX ring to the switch link. Returns
/// the chains consumed and whether the guest wants an interrupt.
pub(super) fn drain(
    q: &mut Queue,
    ring: &RingView,
    map: &GuestMap,
    budget: usize,
    dp: &mut DataPath,
) -> (usize, bool) {
    let mut next_avail = q.next_avail();
    let old_used = q.next_used();
    let mut next_used = old_used;
    let pending = ring.avail_idx().wrapping_sub(next_avail);
    if pending > ring.size() {
        dp.malformed(DropReason::BadAvailIndex, 0);
        dp.ring_corrupt = true;
        return (0, false);
    }
    // Backpressure: take no more than the link can hold.
    let n = usize::from(pending)
        .min(budget)
        .min(dp.to_switch.free())
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
    while n < walked {
        let c = dp.tx_chains[n];
        if !send_walked(&c, dp) {
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
    if n == 0 {
        return (0, false);
    }
    ring.publish_used(next_used);
    q.set_next_avail(next_avail);
    q.set_next_used(next_used);
    dp.to_switch.flush();
    (
        n,
        ring.needs_interrupt(dp.features.event_idx, old_used, next_used),
    )
}

/// A TX chain walked in pass 1.
#[derive(Clone, Copy)]
pub(super) struct TxChain {
    /// Split: the head index; packed: the buffer id.
    pub head: u16,
    /// Ring slots the chain takes (packed; 1 for split rings).
    pub slots: u16,
    seg_start: usize,
    seg_end: usize,
    walked: Result<usize, DropReason>,
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

/// Before pass 2: the egress bucket catches up with the clock.
#[inline]
pub(super) fn start_sending(dp: &mut DataPath) {
    if let Some(b) = dp.egress.as_mut() {
        b.refill(Instant::now());
        dp.egress_blocked_until = None;
    }
}

/// Pass 2 for one walked chain: copies it into a frame for the switch, or
/// counts why it is dropped. False when the chain must stay in the ring (out
/// of egress tokens or frames): the caller stops there and returns nothing
/// from this chain on.
#[inline]
pub(super) fn send_walked(c: &TxChain, dp: &mut DataPath) -> bool {
    if let (Some(b), Ok(total)) = (dp.egress.as_mut(), c.walked) {
        let len = total.saturating_sub(VNET_HDR_LEN) as u32;
        if !b.try_take(len) {
            // Out of tokens: the chain stays in the ring (the guest's TCP
            // sees a slow link, not loss) until the bucket refills.
            dp.egress_blocked_until = Some(Instant::now() + b.wait_for(len));
            return false;
        }
    }
    let result = c
        .walked
        .and_then(|total| one_chain(c.seg_start, c.seg_end, total, dp));
    match result {
        Ok(Copied::Yes) => {}
        // Backpressure: no frame free. Leave this chain and the rest of the
        // batch in the ring for the next poll rather than drop.
        Ok(Copied::PoolEmpty) => return false,
        Err(reason) => dp.malformed(reason, c.head),
    }
    true
}

/// What became of a well-formed chain.
enum Copied {
    Yes,
    /// The pool had no frame: the chain stays in the ring.
    PoolEmpty,
}

#[inline]
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
    let offload = parse_vnet_hdr(&buf[..VNET_HDR_LEN]);
    let check = if offload.is_gso() {
        check_gso(&offload, dp.features.host_tso)
    } else if len > usize::from(dp.mtu) + ETH_HLEN + VLAN_LEN {
        Err(DropReason::TooBig)
    } else {
        Ok(())
    };
    let check = check.and_then(|()| dp.guard.check(&buf[VNET_HDR_LEN..]));
    if let Err(reason) = check {
        dp.cache.free(frame);
        return Err(reason);
    }
    frame.len = len as u32;
    frame.offload = offload;
    dp.counters.tx_packets += 1;
    dp.counters.tx_bytes += len as u64;
    if let Err(frame) = dp.to_switch.push(frame) {
        // Cannot happen: the batch was sized to the free slots.
        dp.cache.free(frame);
    }
    Ok(Copied::Yes)
}

fn check_gso(o: &Offload, host_tso: bool) -> Result<(), DropReason> {
    if !host_tso || o.gso_size == 0 {
        return Err(DropReason::BadGso);
    }
    match o.gso_type & !GSO_ECN {
        GSO_TCPV4 | GSO_TCPV6 | GSO_UDP | GSO_UDP_L4 => Ok(()),
        _ => Err(DropReason::BadGso),
    }
}

/// Decodes a little-endian `virtio_net_hdr` (the 12-byte form).
pub(super) fn parse_vnet_hdr(h: &[u8]) -> Offload {
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    Offload {
        flags: h[0],
        gso_type: h[1],
        hdr_len: u16_at(2),
        gso_size: u16_at(4),
        csum_start: u16_at(6),
        csum_offset: u16_at(8),
    }
}

/// Encodes `o` with `num_buffers` into the 12-byte header form.
pub(super) fn write_vnet_hdr(h: &mut [u8], o: &Offload, num_buffers: u16) {
    h[0] = o.flags;
    h[1] = o.gso_type;
    h[2..4].copy_from_slice(&o.hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&o.gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&o.csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&o.csum_offset.to_le_bytes());
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vnet_header_round_trip() {
        let o = Offload {
            flags: 1,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut h = [0u8; 12];
        write_vnet_hdr(&mut h, &o, 3);
        assert_eq!(parse_vnet_hdr(&h), o);
        assert_eq!(u16::from_le_bytes([h[10], h[11]]), 3);
        assert!(check_gso(&o, true).is_ok());
        assert_eq!(check_gso(&o, false), Err(DropReason::BadGso));
        let bad = Offload { gso_type: 9, ..o };
        assert_eq!(check_gso(&bad, true), Err(DropReason::BadGso));
    }
}
