//! The device side of a packed virtqueue (VIRTIO_F_RING_PACKED, virtio 1.1+
//! 2.8), read and written through host pointers bounds-checked once when the
//! view is built. Layout: [`snapnet_wire::virtq_packed`].
//!
//! Ordering: a descriptor's flags are loaded with Acquire before its other
//! fields (the driver stores them last, with Release). Used descriptors are
//! written id and length first; the flags of the first descriptor of a batch
//! are stored last, with Release, so one store publishes the whole batch to a
//! driver that scans in ring order (as DPDK's vhost does).
//!
//! Positions are slot numbers below the size (which need not be a power of
//! two) plus the wrap counter of their lap; the engine keeps both counters.

use std::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::guest_memory::GuestMap;
use super::guest_ring::{desc_field, read_desc_words, RingAddrs};
use snapnet_wire::virtq_packed::{
    self as vp, DESC_ADDR, DESC_FLAGS, DESC_ID, DESC_LEN, DESC_SIZE, EVENT_FLAGS, EVENT_F_DESC,
    EVENT_F_DISABLE, EVENT_F_ENABLE, EVENT_OFF_WRAP, EVENT_SIZE,
};

/// Largest packed ring (virtio spec: 2^15 entries).
pub const MAX_PACKED_SIZE: u16 = 32768;

/// One packed descriptor, read once from guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedDesc {
    pub addr: u64,
    pub len: u32,
    pub id: u16,
    pub flags: u16,
}

impl PackedDesc {
    /// Reads the descriptor at `p` with the given (already loaded) flags.
    ///
    /// # Safety
    /// `p` must point to 16 readable bytes of guest memory.
    #[inline]
    pub unsafe fn read_with(p: *const u8, flags: u16) -> Self {
        // SAFETY: the caller's guarantee, passed on.
        Self::from_words(unsafe { read_desc_words(p) }, flags)
    }

    /// Reads the descriptor at `p`, flags included (indirect tables, which
    /// the driver wrote before making the ring descriptor available).
    ///
    /// # Safety
    /// `p` must point to 16 readable bytes of guest memory.
    #[inline]
    pub unsafe fn read(p: *const u8) -> Self {
        // SAFETY: the caller's guarantee, passed on.
        let w = unsafe { read_desc_words(p) };
        Self::from_words(w, desc_field(w, DESC_FLAGS) as u16)
    }

    #[inline(always)]
    fn from_words(w: [u64; 2], flags: u16) -> Self {
        PackedDesc {
            addr: desc_field(w, DESC_ADDR),
            len: desc_field(w, DESC_LEN) as u32,
            id: desc_field(w, DESC_ID) as u16,
            flags,
        }
    }
}

/// A ring position: slot and the wrap counter of its lap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub slot: u16,
    pub wrap: bool,
}

impl Pos {
    /// Where a fresh ring starts (wrap counters start at 1). The device
    /// side gets its positions from the vring base; the tests' driver
    /// starts here.
    #[cfg(test)]
    pub const START: Pos = Pos {
        slot: 0,
        wrap: true,
    };

    /// From a vhost-user vring base (slot in bits 0..15, wrap counter in 15).
    #[inline]
    pub fn from_base(base: u16) -> Pos {
        Pos {
            slot: base & !vp::WRAP_BIT,
            wrap: base & vp::WRAP_BIT != 0,
        }
    }

    /// As a vhost-user vring base.
    #[inline]
    pub fn to_base(self) -> u16 {
        vp::off_wrap(self.slot, self.wrap)
    }

    /// `n` slots further on a ring of `size` (`n <= size`).
    #[inline]
    pub fn advance(self, n: u16, size: u16) -> Pos {
        let s = u32::from(self.slot) + u32::from(n);
        if s >= u32::from(size) {
            Pos {
                slot: (s - u32::from(size)) as u16,
                wrap: !self.wrap,
            }
        } else {
            Pos {
                slot: s as u16,
                wrap: self.wrap,
            }
        }
    }
}

/// Checked host pointers to a packed ring and its two event areas.
pub struct PackedView {
    desc: *mut u8,
    /// Driver event suppression: the driver's wishes about interrupts.
    driver_evt: *const u8,
    /// Device event suppression: ours about kicks.
    device_evt: *mut u8,
    size: u16,
    /// The memory snapshot the pointers point into: while the view lives,
    /// its regions stay mapped, whatever the frontend does to the table.
    _mem: Arc<GuestMemoryMmap>,
}

// SAFETY: the pointers target guest memory that `_mem` keeps mapped for the
// view's whole life; GuestMemoryMmap is Send + Sync, and the guest side of
// the sharing is handled by volatile and atomic accesses.
unsafe impl Send for PackedView {}

impl PackedView {
    /// `a.desc` is the descriptor ring, `a.avail` the driver event area and
    /// `a.used` the device event area (vhost-user SET_VRING_ADDR's fields).
    /// `None` when the size is 0 or above 2^15, a part is misaligned, or a
    /// part does not lie within one guest memory region.
    pub fn new(map: &GuestMap, a: RingAddrs) -> Option<Self> {
        let size = a.size;
        if size == 0 || size > MAX_PACKED_SIZE {
            return None;
        }
        if a.desc % 16 != 0 || a.avail % 4 != 0 || a.used % 4 != 0 {
            return None;
        }
        let desc = map.contiguous(a.desc, (DESC_SIZE * usize::from(size)) as u64)?;
        let driver_evt = map.contiguous(a.avail, EVENT_SIZE as u64)?;
        let device_evt = map.contiguous(a.used, EVENT_SIZE as u64)?;
        Some(Self {
            desc,
            driver_evt,
            device_evt,
            size,
            _mem: map.snapshot().clone(),
        })
    }

    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    #[inline]
    fn slot_ptr(&self, slot: u16) -> *mut u8 {
        debug_assert!(slot < self.size);
        // SAFETY: positions are kept below the size (Pos::advance), and the
        // checked ring holds `size` 16-byte slots.
        unsafe { self.desc.add(DESC_SIZE * usize::from(slot)) }
    }

    #[inline]
    fn flags_at(&self, slot: u16) -> &AtomicU16 {
        // SAFETY: the flags of an in-bounds slot; 2-aligned since slots are
        // 16-aligned; `_mem` keeps the mapping alive as long as the view.
        unsafe { &*self.slot_ptr(slot).add(DESC_FLAGS).cast::<AtomicU16>() }
    }

    /// The descriptor at `at` when the driver has made it available in that
    /// lap (flags loaded with Acquire before the rest).
    #[inline]
    pub fn avail(&self, at: Pos) -> Option<PackedDesc> {
        let flags = u16::from_le(self.flags_at(at.slot).load(Ordering::Acquire));
        if !vp::is_avail(flags, at.wrap) {
            return None;
        }
        // SAFETY: an in-bounds slot of the checked ring.
        Some(unsafe { PackedDesc::read_with(self.slot_ptr(at.slot), flags) })
    }

    /// Prefetches the slot at `slot`.
    #[inline]
    pub fn prefetch(&self, slot: u16) {
        if slot < self.size {
            crate::packet::prefetch::prefetch_read(self.slot_ptr(slot));
        }
    }

    /// Writes a used descriptor for buffer `id` at `at`. Its flags are
    /// written now unless `first` (the first of a batch): then
    /// [`Self::publish_used`] writes them after the rest of the batch.
    #[inline]
    pub fn put_used(&self, at: Pos, id: u16, len: u32, first: bool) {
        let p = self.slot_ptr(at.slot);
        if first {
            // SAFETY: in-bounds, 16-aligned slot of the checked ring; the
            // device owns it (it consumed the chain that was there).
            unsafe {
                std::ptr::write_volatile(p.add(DESC_LEN).cast::<u32>(), len.to_le());
                std::ptr::write_volatile(p.add(DESC_ID).cast::<u16>(), id.to_le());
            }
            return;
        }
        // Length, id and flags are the descriptor's second 8 bytes: one store
        // instead of three. The store buffer drains a line of the guest's
        // ring a third as often, and the engine is store-bound there
        // (docs/performance.md).
        const _: () = assert!(DESC_ID == DESC_LEN + 4 && DESC_FLAGS == DESC_LEN + 6);
        let word = u64::from(len) | u64::from(id) << 32 | u64::from(vp::used_bits(at.wrap)) << 48;
        // SAFETY: as above; the second half of a 16-aligned slot is 8-aligned.
        // An aligned 8-byte store is single-copy atomic, so the driver never
        // sees the flags without the length and id.
        let second_half = unsafe { &*p.add(DESC_LEN).cast::<AtomicU64>() };
        second_half.store(word.to_le(), Ordering::Relaxed);
    }

    /// Publishes a batch whose first used descriptor is at `first` (release:
    /// everything written before, the rest of the batch included).
    #[inline]
    pub fn publish_used(&self, first: Pos) {
        self.flags_at(first.slot)
            .store(vp::used_bits(first.wrap).to_le(), Ordering::Release);
    }

    #[inline]
    fn driver_evt(&self, off: usize) -> u16 {
        // SAFETY: `off` is EVENT_OFF_WRAP or EVENT_FLAGS, inside the checked
        // 4-byte area, 2-aligned; volatile because the driver writes it.
        u16::from_le(unsafe { std::ptr::read_volatile(self.driver_evt.add(off).cast::<u16>()) })
    }

    #[inline]
    fn set_device_evt(&self, off: usize, v: u16) {
        // SAFETY: as in `driver_evt`, for the device area, which only we write.
        unsafe { std::ptr::write_volatile(self.device_evt.add(off).cast::<u16>(), v.to_le()) };
    }

    /// Whether the driver wants an interrupt now that the used position
    /// moved from `old` to `new` (after [`Self::publish_used`]): its driver
    /// event area says ENABLE, or with EVENT_IDX, DESC at a crossed position.
    #[inline]
    pub fn needs_interrupt(&self, event_idx: bool, old: Pos, new: Pos) -> bool {
        if old == new {
            return false;
        }
        // Order the used flags store before reading the driver's suppression.
        fence(Ordering::SeqCst);
        match self.driver_evt(EVENT_FLAGS) {
            EVENT_F_DESC if event_idx => vp::need_event(
                self.driver_evt(EVENT_OFF_WRAP),
                old.slot,
                new.slot,
                new.wrap,
                self.size,
            ),
            EVENT_F_DISABLE => false,
            _ => true,
        }
    }

    /// Asks the driver to kick (or not) when it adds buffers. With EVENT_IDX
    /// the request is "kick once you make `next_avail` available".
    #[inline]
    pub fn set_kicks(&self, event_idx: bool, enable: bool, next_avail: Pos) {
        let flags = if !enable {
            EVENT_F_DISABLE
        } else if event_idx {
            self.set_device_evt(EVENT_OFF_WRAP, next_avail.to_base());
            EVENT_F_DESC
        } else {
            EVENT_F_ENABLE
        };
        fence(Ordering::Release);
        self.set_device_evt(EVENT_FLAGS, flags);
        fence(Ordering::SeqCst);
    }
}
