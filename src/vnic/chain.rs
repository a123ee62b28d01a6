//! Walking a descriptor chain into host segments, with every check a guest can
//! make fail: index range, loops, chains longer than the queue, buffers outside
//! guest memory, wrong direction, bad indirect tables.

use super::guest_memory::GuestMap;
use super::guest_ring::{
    Desc, RingView, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use super::stats::DropReason;

/// Most segments one chain may produce (direct or indirect). Scratch vectors
/// hold twice this, so a batch can keep walking while under it.
pub const MAX_SEGMENTS: usize = 1024;

/// Most descriptors one chain may have, ring or indirect-table entries alike
/// (and, over all its chains, one RX frame). Linux sends at most
/// MAX_SKB_FRAGS + 2 (19, or 47 with BIG TCP) and posts mergeable RX buffers
/// of 1.5 KiB and up (under 50 for 64 KiB); DPDK's vhost caps a packet at 256
/// buffers. Zero-length descriptors add no segment, so without this bound a
/// guest could make a shared worker walk a whole ring per chain.
pub const MAX_CHAIN_DESCS: u32 = 256;

/// A piece of guest buffer, translated.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub ptr: *mut u8,
    pub len: u32,
}

// SAFETY: a segment is scratch data of the engine that walked the chain; it
// is only dereferenced within the batch that produced it, while the GuestMap
// snapshot it came from is held.
unsafe impl Send for Segment {}

/// Which way the device uses the buffers of a chain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Guest TX: the device only reads.
    DeviceReads,
    /// Guest RX: the device only writes.
    DeviceWrites,
}

/// Appends the segments of the chain at `head` to `segs`; returns the chain's
/// total byte length. `walked` grows by the descriptors read (also for a bad
/// chain), which is what a batch's budget counts.
#[inline]
pub fn walk(
    ring: &RingView,
    map: &GuestMap,
    head: u16,
    dir: Direction,
    indirect_ok: bool,
    segs: &mut Vec<Segment>,
    walked: &mut u32,
) -> Result<u64, DropReason> {
    let mut seen: u32 = 0;
    let result = walk_counted(ring, map, head, dir, indirect_ok, segs, &mut seen);
    *walked += seen;
    result
}

/// Always inlined into the RX and TX loops, like the packed walk: as a call
/// its prologue's pushes are stores, and a store-bound engine waits on them.
#[inline(always)]
fn walk_counted(
    ring: &RingView,
    map: &GuestMap,
    head: u16,
    dir: Direction,
    indirect_ok: bool,
    segs: &mut Vec<Segment>,
    seen: &mut u32,
) -> Result<u64, DropReason> {
    let limit = segs.len() + MAX_SEGMENTS;
    *seen = 1;
    let first = ring.desc(head).ok_or(DropReason::BadDescIndex)?;
    if first.flags & VIRTQ_DESC_F_INDIRECT != 0 {
        if !indirect_ok || first.flags & VIRTQ_DESC_F_NEXT != 0 {
            return Err(DropReason::BadIndirect);
        }
        return walk_indirect(map, first, dir, segs, limit, seen);
    }
    // A loop is a chain longer than the ring; a chain longer than any
    // driver builds is refused at the same check.
    let max = u32::from(ring.size()).min(MAX_CHAIN_DESCS);
    let mut desc = first;
    let mut total = 0u64;
    *seen = 0;
    loop {
        *seen += 1;
        if *seen > max {
            return Err(DropReason::ChainTooLong);
        }
        total += add_segment(map, &desc, dir, segs, limit)?;
        if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(total);
        }
        desc = ring.desc(desc.next).ok_or(DropReason::BadDescIndex)?;
        if desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(DropReason::BadIndirect);
        }
    }
}

#[cold]
#[inline(never)]
fn walk_indirect(
    map: &GuestMap,
    table: Desc,
    dir: Direction,
    segs: &mut Vec<Segment>,
    limit: usize,
    walked: &mut u32,
) -> Result<u64, DropReason> {
    let len = u64::from(table.len);
    if len == 0 || len % 16 != 0 {
        return Err(DropReason::BadIndirect);
    }
    if len / 16 > u64::from(MAX_CHAIN_DESCS) {
        return Err(DropReason::ChainTooLong);
    }
    let entries = (len / 16) as u16;
    let base = map
        .contiguous(table.addr, len)
        .ok_or(DropReason::AddressOutOfRange)?;
    let read = |i: u16| {
        // SAFETY: callers pass i < entries, and the whole table of `entries`
        // 16-byte descriptors was checked to be guest memory.
        unsafe { Desc::read(base.add(usize::from(i) * 16)) }
    };
    let mut i = 0u16;
    let mut total = 0u64;
    let mut seen = 0u16;
    loop {
        let desc = read(i);
        seen += 1;
        *walked += 1;
        if desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            return Err(DropReason::BadIndirect);
        }
        total += add_segment(map, &desc, dir, segs, limit)?;
        if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
            return Ok(total);
        }
        if desc.next >= entries {
            return Err(DropReason::BadDescIndex);
        }
        if seen >= entries {
            return Err(DropReason::ChainTooLong);
        }
        i = desc.next;
    }
}

#[inline]
pub(super) fn add_segment(
    map: &GuestMap,
    desc: &Desc,
    dir: Direction,
    segs: &mut Vec<Segment>,
    limit: usize,
) -> Result<u64, DropReason> {
    let writes = desc.flags & VIRTQ_DESC_F_WRITE != 0;
    match dir {
        Direction::DeviceReads if writes => return Err(DropReason::WriteOnlyOnTx),
        Direction::DeviceWrites if !writes => return Err(DropReason::ReadOnlyOnRx),
        _ => {}
    }
    let mut gpa = desc.addr;
    let mut left = u64::from(desc.len);
    // A buffer may straddle two adjacent regions: translate piece by piece.
    while left > 0 {
        let (ptr, n) = map
            .translate(gpa, left)
            .ok_or(DropReason::AddressOutOfRange)?;
        if segs.len() >= limit {
            return Err(DropReason::ChainTooLong);
        }
        segs.push(Segment { ptr, len: n as u32 });
        gpa = gpa.checked_add(n).ok_or(DropReason::AddressOutOfRange)?;
        left -= n;
    }
    Ok(u64::from(desc.len))
}
