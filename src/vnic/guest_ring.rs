//! The device side of a split virtqueue, read and written through host
//! pointers that were bounds-checked once when the view was built.
//!
//! Layout (virtio 1.x, 2.7): descriptor table of 16-byte entries; avail ring
//! `flags:u16 idx:u16 ring[size]:u16 used_event:u16`; used ring
//! `flags:u16 idx:u16 ring[size]:{id:u32,len:u32} avail_event:u16`.

use std::sync::atomic::{AtomicU16, Ordering};

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
        // SAFETY: caller guarantees 16 readable bytes; the guest may write them
        // concurrently, so each field is read once, volatile, unaligned-safe.
        unsafe {
            Desc {
                addr: u64::from_le(std::ptr::read_unaligned(p.cast::<u64>())),
                len: u32::from_le(std::ptr::read_unaligned(p.add(8).cast::<u32>())),
                flags: u16::from_le(std::ptr::read_unaligned(p.add(12).cast::<u16>())),
                next: u16::from_le(std::ptr::read_unaligned(p.add(14).cast::<u16>())),
            }
        }
    }
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
}

// SAFETY: the pointers target guest memory kept mapped by the `GuestMap`
// snapshot that the owning engine holds alongside this view.
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
        // SAFETY: off + 8 <= 4 + 8*size, inside the checked used ring; 4-aligned.
        unsafe {
            let p = self.used.add(off);
            std::ptr::write_volatile(p.cast::<u32>(), u32::from(id).to_le());
            std::ptr::write_volatile(p.add(4).cast::<u32>(), len.to_le());
        }
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
