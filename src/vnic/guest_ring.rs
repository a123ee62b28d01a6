//! The device side of a split virtqueue, read and written through host
//! pointers that were bounds-checked once when the view was built.
//!
//! Layout (virtio 1.x, 2.7): descriptor table of 16-byte entries; avail ring
//! `flags:u16 idx:u16 ring[size]:u16 used_event:u16`; used ring
//! `flags:u16 idx:u16 ring[size]:{id:u32,len:u32} avail_event:u16`.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::guest_memory::GuestMap;

const DESC_SIZE: u64 = 16;
/// Descriptors in one 64-byte cache line (the table is 16-aligned).
const DESCS_PER_LINE: u16 = 4;
const RING_HEADER: u64 = 4;
const AVAIL_ENTRY: u64 = 2;
const USED_ENTRY: u64 = 8;
const IDX_OFFSET: usize = 2;

pub const VIRTQ_DESC_F_NEXT: u16 = 1;
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// One descriptor, read once from guest memory.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    /// Reads a descriptor at `p` (16 bytes, 16-aligned in guest memory).
    ///
    /// # Safety
    /// `p` must point to 16 readable bytes of guest memory.
    #[inline]
    pub unsafe fn read(p: *const u8) -> Self {
        // SAFETY: the caller's guarantee, passed on.
        let w = unsafe { read_desc_words(p) };
        Desc {
            addr: desc_field(w, DESC_ADDR),
            len: desc_field(w, DESC_LEN) as u32,
            flags: desc_field(w, DESC_FLAGS) as u16,
            next: desc_field(w, DESC_NEXT) as u16,
        }
    }
}

/// Offsets of a split descriptor's fields (virtio 1.x, 2.7.5):
/// `addr: u64, len: u32, flags: u16, next: u16`.
const DESC_ADDR: usize = 0;
const DESC_LEN: usize = 8;
const DESC_FLAGS: usize = 12;
const DESC_NEXT: usize = 14;

/// The 16 bytes of a descriptor (split or packed) as two little-endian
/// words, read once. The guest may rewrite a descriptor while the device
/// reads it: volatile loads keep the compiler from reading a field again
/// later (after it was checked) or from merging the read with another one,
/// and two word loads cost what the four field loads did.
///
/// # Safety
/// `p` must point to 16 readable bytes of guest memory.
#[inline]
pub(crate) unsafe fn read_desc_words(p: *const u8) -> [u64; 2] {
    if p.align_offset(std::mem::align_of::<[u64; 2]>()) == 0 {
        // SAFETY: 16 readable bytes (caller), 8-aligned (just checked).
        let w = unsafe { std::ptr::read_volatile(p.cast::<[u64; 2]>()) };
        [u64::from_le(w[0]), u64::from_le(w[1])]
    } else {
        // SAFETY: as above, for a table the guest did not align.
        unsafe { read_desc_words_unaligned(p) }
    }
}

/// Byte by byte, still volatile: only reached for an indirect table the
/// guest placed off an 8-byte boundary (rings are checked 16-aligned).
///
/// # Safety
/// `p` must point to 16 readable bytes of guest memory.
#[cold]
unsafe fn read_desc_words_unaligned(p: *const u8) -> [u64; 2] {
    let mut b = [[0u8; 8]; 2];
    for (i, v) in b.as_flattened_mut().iter_mut().enumerate() {
        // SAFETY: i < 16, inside the caller's 16 readable bytes.
        *v = unsafe { std::ptr::read_volatile(p.add(i)) };
    }
    [u64::from_le_bytes(b[0]), u64::from_le_bytes(b[1])]
}

/// The field at byte `offset` of a descriptor read by [`read_desc_words`],
/// in the low bits (the caller truncates it to the field's width).
#[inline(always)]
pub(crate) const fn desc_field(w: [u64; 2], offset: usize) -> u64 {
    w[offset / 8] >> ((offset % 8) * 8)
}

/// Guest-physical addresses and size of a queue, as the frontend set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
}

/// Checked host pointers to the three parts of one split ring.
pub struct RingView {
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    mask: u16,
    size: u16,
    /// The memory snapshot the pointers point into: while the view lives,
    /// its regions stay mapped, whatever the frontend does to the table.
    _mem: Arc<GuestMemoryMmap>,
}

// SAFETY: the pointers target guest memory that `_mem` keeps mapped for the
// view's whole life; GuestMemoryMmap is Send + Sync, and the guest side of
// the sharing is handled by volatile and atomic accesses.
unsafe impl Send for RingView {}

impl RingView {
    /// `None` when the size is not a power of two, a part is misaligned, or a
    /// part does not lie within one guest memory region.
    pub fn new(map: &GuestMap, a: RingAddrs) -> Option<Self> {
        let size = a.size;
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return None;
        }
        if a.desc % 16 != 0 || a.avail % 2 != 0 || a.used % 4 != 0 {
            return None;
        }
        let n = u64::from(size);
        let desc = map.contiguous(a.desc, DESC_SIZE * n)?;
        let avail = map.contiguous(a.avail, RING_HEADER + AVAIL_ENTRY * n + 2)?;
        let used = map.contiguous(a.used, RING_HEADER + USED_ENTRY * n + 2)?;
        Some(Self {
            desc,
            avail,
            used,
            mask: size - 1,
            size,
            _mem: map.snapshot().clone(),
        })
    }

    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The driver's avail index (acquire: entries before it are visible).
    #[inline]
    pub fn avail_idx(&self) -> u16 {
        // SAFETY: `avail + 2` is inside the checked avail ring and 2-aligned
        // (avail is 2-aligned), so it is a valid AtomicU16 location.
        unsafe { &*(self.avail.add(IDX_OFFSET) as *const AtomicU16) }.load(Ordering::Acquire)
    }

    /// The head index in avail slot `pos` (taken modulo the size).
    #[inline]
    pub fn avail_entry(&self, pos: u16) -> u16 {
        let off = RING_HEADER as usize + AVAIL_ENTRY as usize * usize::from(pos & self.mask);
        // SAFETY: off < 4 + 2*size, inside the checked avail ring.
        u16::from_le(unsafe { std::ptr::read_volatile(self.avail.add(off).cast::<u16>()) })
    }

    /// Descriptor `index` of the table; `None` for an index past the table.
    #[inline]
    pub fn desc(&self, index: u16) -> Option<Desc> {
        if index >= self.size {
            return None;
        }
        // SAFETY: index < size, so the 16 bytes are inside the checked table.
        Some(unsafe { Desc::read(self.desc.add(DESC_SIZE as usize * usize::from(index))) })
    }

    /// Prefetches descriptor `index` (ignored when out of range).
    #[inline]
    pub fn prefetch_desc(&self, index: u16) {
        if index < self.size {
            crate::packet::prefetch::prefetch_read(
                self.desc
                    .wrapping_add(DESC_SIZE as usize * usize::from(index)),
            );
        }
    }

    /// Prefetches the descriptors named by the `n` avail entries from
    /// `next_avail`. In order, a driver that gives each chain one descriptor
    /// (DPDK's virtio-user does, for TX and for RX refills) puts them at the
    /// indices of their avail slots, so those lines are asked for first,
    /// alongside the avail entries: the descriptor misses then need not wait
    /// for the avail entries' line, which the guest's core has just written.
    /// The prefetches by avail entry follow and are right for any driver; a
    /// wrong guess costs a line that was not needed, nothing else.
    #[inline]
    pub fn prefetch_descs(&self, next_avail: u16, n: u16, in_order: bool) {
        if in_order {
            let mut i = 0;
            while i < n {
                let index = next_avail.wrapping_add(i) & self.mask;
                self.prefetch_desc(index);
                // On to the first descriptor of the next line.
                i += DESCS_PER_LINE - index % DESCS_PER_LINE;
            }
        }
        for i in 0..n {
            self.prefetch_desc(self.avail_entry(next_avail.wrapping_add(i)));
        }
    }

    /// Writes used slot `pos` (modulo the size).
    #[inline]
    pub fn put_used(&self, pos: u16, id: u16, len: u32) {
        let off = RING_HEADER as usize + USED_ENTRY as usize * usize::from(pos & self.mask);
        // One 8-byte store, not two: the engine is store-bound on the guest's
        // lines. The driver reads the entry only after the used index that
        // `publish_used` stores with release ordering.
        let entry = u64::from(id) | u64::from(len) << 32;
        // SAFETY: off + 8 <= 4 + 8*size, inside the checked used ring (entries
        // are 4-aligned, hence the unaligned store).
        unsafe {
            self.used
                .add(off)
                .cast::<u64>()
                .write_unaligned(entry.to_le())
        };
    }

    /// Whether the driver wants an interrupt now that the used index moved
    /// from `old` to `new` (EVENT_IDX: `used_event` crossed; otherwise the
    /// avail ring's NO_INTERRUPT flag is clear).
    #[inline]
    pub fn needs_interrupt(&self, event_idx: bool, old: u16, new: u16) -> bool {
        // Order the used-index store before reading the driver's suppression.
        std::sync::atomic::fence(Ordering::SeqCst);
        if event_idx {
            let off = RING_HEADER as usize + AVAIL_ENTRY as usize * usize::from(self.size);
            // SAFETY: `used_event` is the u16 right after the avail entries,
            // inside the checked avail ring.
            let event =
                u16::from_le(unsafe { std::ptr::read_volatile(self.avail.add(off).cast::<u16>()) });
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            // SAFETY: avail flags are the first u16 of the checked avail ring.
            let flags = u16::from_le(unsafe { std::ptr::read_volatile(self.avail.cast::<u16>()) });
            flags & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Asks the driver to kick (or not) when it adds buffers. With EVENT_IDX
    /// the request is "kick once you pass `next_avail`".
    #[inline]
    pub fn set_kicks(&self, event_idx: bool, enable: bool, next_avail: u16) {
        if event_idx {
            if enable {
                let off = RING_HEADER as usize + USED_ENTRY as usize * usize::from(self.size);
                // SAFETY: `avail_event` is the u16 after the used entries, inside
                // the checked used ring.
                unsafe {
                    std::ptr::write_volatile(self.used.add(off).cast::<u16>(), next_avail.to_le())
                };
            }
            // Disabled: leave avail_event behind; the driver kicks at most once
            // per 64 Ki buffers, which a polling engine ignores.
        } else {
            let flags = if enable { 0 } else { VRING_USED_F_NO_NOTIFY };
            // SAFETY: used flags are the first u16 of the checked used ring.
            unsafe { std::ptr::write_volatile(self.used.cast::<u16>(), flags.to_le()) };
        }
        std::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Publishes used entries up to `idx` (release: entries first).
    #[inline]
    pub fn publish_used(&self, idx: u16) {
        // SAFETY: `used + 2` is inside the checked used ring, 2-aligned.
        unsafe { &*(self.used.add(IDX_OFFSET) as *const AtomicU16) }.store(idx, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn a_view_keeps_the_memory_it_points_into_mapped() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap());
        let map = GuestMap::new(mem.clone());
        let addrs = RingAddrs {
            desc: 0,
            avail: 0x1000,
            used: 0x2000,
            size: 16,
        };
        let view = RingView::new(&map, addrs).unwrap();
        drop(map);
        assert!(
            Arc::strong_count(&mem) > 1,
            "the view must hold the snapshot it points into"
        );
        drop(mem);
        // Nothing else holds the memory now: the view's own reference keeps
        // its pointers valid.
        assert_eq!(view.avail_idx(), 0);
        assert_eq!(view.desc(3).map(|d| d.len), Some(0));
    }

    #[test]
    fn a_descriptor_reads_the_same_at_any_alignment() {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
        raw[8..12].copy_from_slice(&1500u32.to_le_bytes());
        raw[12..14].copy_from_slice(&(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE).to_le_bytes());
        raw[14..].copy_from_slice(&7u16.to_le_bytes());
        // An 8-aligned buffer with room to place the descriptor off that
        // alignment, as a guest may place an indirect table.
        let mut buf = [0u64; 4];
        for shift in [0, 8, 1, 3, 6] {
            let bytes = buf.as_mut_ptr().cast::<u8>();
            // SAFETY: shift + 16 <= 32 bytes of `buf`.
            let d = unsafe {
                std::ptr::copy_nonoverlapping(raw.as_ptr(), bytes.add(shift), 16);
                Desc::read(bytes.add(shift))
            };
            assert_eq!(
                (d.addr, d.len, d.flags, d.next),
                (0x1122_3344_5566_7788, 1500, 3, 7),
                "at offset {shift}"
            );
        }
    }
}
