//! Walking a packed-ring descriptor chain into host segments, with every
//! check a guest can make fail: a chain longer than the ring, a descriptor
//! in the middle of a chain that is not available, indirect tables that are
//! nested, follow other descriptors, have a bad length or were not
//! negotiated, buffers outside guest memory, wrong direction.
//!
//! A packed chain occupies consecutive slots (NEXT continues in the next
//! one); its buffer id is the last descriptor's (virtio spec 2.8.6). A bad
//! chain whose end can be found is dropped as a whole: the device still
//! returns its id and steps over its slots. One whose end cannot be found
//! leaves no way to go on, and the ring is declared broken.

use super::chain::{add_segment, Direction, Segment, MAX_CHAIN_DESCS, MAX_SEGMENTS};
use super::guest_memory::GuestMap;
use super::guest_ring::Desc;
use super::packed_ring::{PackedDesc, PackedView, Pos};
use super::stats::DropReason;
use snapnet_wire::virtq_packed::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_SIZE};

/// What the walk found at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedWalk {
    /// The descriptor there is not available.
    Empty,
    /// A chain of `slots` descriptors for buffer `id`: its byte length, or
    /// why it is dropped.
    Chain {
        id: u16,
        slots: u16,
        total: Result<u64, DropReason>,
    },
    /// The chain's end cannot be found: it is longer than the ring or than
    /// [`MAX_CHAIN_DESCS`] (`ChainTooLong`: its end is not searched for), or a
    /// descriptor after its head is not available
    /// (`BadAvailIndex`, the driver published a head before its tail).
    Broken(DropReason),
}

/// Appends the segments of the chain at `at` to `segs` (nothing when it is
/// dropped or broken). `walked` grows by the descriptors read, ring slots
/// and indirect entries alike (what a batch's budget counts).
///
/// Always inlined: returned through memory, the result was written with
/// narrow stores and read back with a wider load, which cannot be forwarded
/// and so waited behind every older store, the previous frame's copy into
/// guest memory included (62 % of `packed_rx::fill`'s samples at 1500 B).
#[inline(always)]
pub fn walk_packed(
    ring: &PackedView,
    map: &GuestMap,
    at: Pos,
    dir: Direction,
    indirect_ok: bool,
    segs: &mut Vec<Segment>,
    walked: &mut u32,
) -> PackedWalk {
    let Some(mut desc) = ring.avail(at) else {
        return PackedWalk::Empty;
    };
    let seg_start = segs.len();
    let limit = seg_start + MAX_SEGMENTS;
    let max = ring.size().min(MAX_CHAIN_DESCS as u16);
    let mut pos = at;
    let mut slots: u16 = 0;
    let mut total: Result<u64, DropReason> = Ok(0);
    loop {
        slots += 1;
        if let Ok(t) = total {
            total = segments(
                map,
                &desc,
                slots == 1,
                dir,
                indirect_ok,
                segs,
                limit,
                walked,
            )
            .map(|n| t + n);
        }
        if desc.flags & DESC_F_NEXT == 0 {
            break;
        }
        if slots == max {
            *walked += u32::from(slots);
            segs.truncate(seg_start);
            return PackedWalk::Broken(DropReason::ChainTooLong);
        }
        pos = pos.advance(1, ring.size());
        desc = match ring.avail(pos) {
            Some(d) => d,
            None => {
                *walked += u32::from(slots);
                segs.truncate(seg_start);
                return PackedWalk::Broken(DropReason::BadAvailIndex);
            }
        };
    }
    *walked += u32::from(slots);
    if total.is_err() {
        segs.truncate(seg_start);
    }
    PackedWalk::Chain {
        id: desc.id,
        slots,
        total,
    }
}

/// The segments of one ring descriptor, expanding an indirect table (whose
/// entries count into `walked`).
///
/// Always inlined, the indirect case apart: as a call, its prologue pushed
/// six registers per descriptor, and with the store buffer full of the
/// batch's stores into guest memory (which miss) those pushes were where
/// the engine waited (86 % of this function's samples at 64 B).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn segments(
    map: &GuestMap,
    desc: &PackedDesc,
    head: bool,
    dir: Direction,
    indirect_ok: bool,
    segs: &mut Vec<Segment>,
    limit: usize,
    walked: &mut u32,
) -> Result<u64, DropReason> {
    if desc.flags & DESC_F_INDIRECT == 0 {
        return add_segment(map, &as_desc(desc), dir, segs, limit);
    }
    indirect_segments(map, desc, head, dir, indirect_ok, segs, limit, walked)
}

/// [`segments`] of an indirect table.
#[allow(clippy::too_many_arguments)]
#[cold]
#[inline(never)]
fn indirect_segments(
    map: &GuestMap,
    desc: &PackedDesc,
    head: bool,
    dir: Direction,
    indirect_ok: bool,
    segs: &mut Vec<Segment>,
    limit: usize,
    walked: &mut u32,
) -> Result<u64, DropReason> {
    // An indirect table is a whole chain: alone in its slot, never after
    // other descriptors or continued by NEXT (spec 2.8.19).
    if !indirect_ok || !head || desc.flags & DESC_F_NEXT != 0 {
        return Err(DropReason::BadIndirect);
    }
    let len = u64::from(desc.len);
    if len == 0 || len % DESC_SIZE as u64 != 0 {
        return Err(DropReason::BadIndirect);
    }
    if len / DESC_SIZE as u64 > u64::from(MAX_CHAIN_DESCS) {
        return Err(DropReason::ChainTooLong);
    }
    let base = map
        .contiguous(desc.addr, len)
        .ok_or(DropReason::AddressOutOfRange)?;
    let entries = len as usize / DESC_SIZE;
    // Charged up front: the table is read whole unless an entry is bad.
    *walked += entries as u32;
    let mut total = 0;
    for i in 0..entries {
        // SAFETY: i < len / 16 and the whole table was checked to be guest
        // memory just above.
        let e = unsafe { PackedDesc::read(base.add(i * DESC_SIZE)) };
        if e.flags & DESC_F_INDIRECT != 0 {
            return Err(DropReason::BadIndirect);
        }
        // Table entries are used in order: NEXT and id mean nothing there.
        total += add_segment(map, &as_desc(&e), dir, segs, limit)?;
    }
    Ok(total)
}

/// The fields `add_segment` looks at (address, length, WRITE flag).
#[inline]
fn as_desc(d: &PackedDesc) -> Desc {
    Desc {
        addr: d.addr,
        len: d.len,
        flags: d.flags,
        next: 0,
    }
}
