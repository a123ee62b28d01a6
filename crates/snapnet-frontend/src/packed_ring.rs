//! Driver side of one virtio 1.1+ packed virtqueue (VIRTIO_F_RING_PACKED) in shared guest
//! memory; the layout is in [`snapnet_wire::virtq_packed`].
//!
//! Descriptor indices and buffer ids: as with the split ring, a chain is a list of ids from
//! a free list (LIFO), and id `d` names packet buffer `d`. A chain of `n` ids fills the next
//! `n` ring slots in order, every slot carrying the head id (QEMU reads the id from the
//! first descriptor, DPDK and the spec from the last). The device answers with one used
//! descriptor per chain, and the driver steps over as many slots as that chain had.
//!
//! Memory ordering: descriptors are written with volatile stores, except the flags of the
//! first slot of an unpublished batch, which [`PackedRing::publish`] stores last, with
//! Release: one store makes the whole batch available (a device stops at the first slot
//! that is not). Before reading the device's event suppression we issue a full fence. Used
//! descriptors' flags are read with Acquire before their id and length.
//!
//! Completions are numbered consecutively (`last_used`, as for a split ring): each
//! `used_pending` scans newly used descriptors into a small array of (id, len) that
//! `used_elem` reads, validated against the driver's shadow, never the ring.

use std::io;
use std::ptr;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::GuestMemory;
use super::ring::{DriverRing, HeadKind, RingAddrs, RingStats};
use super::RawDesc;
use snapnet_wire::virtq_packed::{
    self as vp, DESC_ADDR, DESC_FLAGS, DESC_F_AVAIL, DESC_F_NEXT, DESC_F_USED, DESC_F_WRITE,
    DESC_ID, DESC_LEN, DESC_SIZE, EVENT_FLAGS, EVENT_F_DESC, EVENT_F_DISABLE, EVENT_F_ENABLE,
    EVENT_OFF_WRAP, EVENT_SIZE,
};

/// Largest packed queue size (virtio spec 2.8: 2^15 entries).
pub const MAX_PACKED_SIZE: u16 = 32768;

/// Lays out a packed ring of `size` entries in `mem`: the descriptor ring page aligned, the
/// driver event area on its own cache line, the device event area on its own page (so
/// driver- and device-written lines never share one). Uses `desc`/`avail`/`used` for the
/// ring, the driver area and the device area, as vhost-user SET_VRING_ADDR does.
pub fn alloc_packed(mem: &mut GuestMemory, size: u16) -> Option<RingAddrs> {
    let desc = mem.alloc(DESC_SIZE * size as usize, 4096)?;
    let avail = mem.alloc(EVENT_SIZE, 64)?;
    let used = mem.alloc(EVENT_SIZE, 4096)?;
    Some(RingAddrs { desc, avail, used })
}

/// The driver side of one packed virtqueue.
#[derive(Debug)]
pub struct PackedRing {
    mem: Arc<GuestMemory>,
    addrs: RingAddrs,
    size: u16,
    desc: *mut u8,
    driver_evt: *mut u8,
    device_evt: *const u8,
    event_idx: bool,
    /// Next slot to fill and the wrap counter of its lap.
    next_avail: u16,
    avail_wrap: bool,
    /// `next_avail` at the last publish (the kick decision's `old`).
    published: u16,
    /// First slot of the unpublished batch and the flags it is waiting for.
    batch_first: Option<(u16, u16)>,
    /// Next slot to scan for a used descriptor and the wrap counter of its lap.
    used_pos: u16,
    used_wrap: bool,
    /// Number of the next completion to consume.
    last_used: u16,
    /// Scanned completions (id, len); `done[done_head..]` are not consumed yet.
    done: Vec<(u32, u32)>,
    done_head: usize,
    broken: bool,
    free: Vec<u16>,
    chain_len: Vec<u16>,
    chain_next: Vec<u16>,
    raw: Vec<bool>,
    /// Scanned and not yet released (a second completion of the id is a device bug).
    completed: Vec<bool>,
    /// What `write_desc` set per id: (addr, len, flags), copied to the ring by `push_avail`.
    shadow: Vec<(u64, u32, u16)>,
    raw_used: Vec<(u32, u32)>,
    kick: EventFd,
    call: EventFd,
    stats: RingStats,
}

// SAFETY: the raw pointers point into `mem`, kept alive by the ring's `Arc` and valid from
// any thread; the ring has no thread-affine state.
unsafe impl Send for PackedRing {}

impl PackedRing {
    /// Creates a ring at `addrs` (see [`alloc_packed`]) and initialises it: every slot
    /// owned by the driver (flags 0 read as not available in the first lap, whose wrap
    /// counter is 1), interrupts disabled (polling mode).
    pub fn new(
        mem: Arc<GuestMemory>,
        addrs: RingAddrs,
        size: u16,
        event_idx: bool,
    ) -> io::Result<PackedRing> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if size == 0 || size > MAX_PACKED_SIZE {
            return Err(invalid("packed queue size must be 1..=32768"));
        }
        if addrs.desc % 16 != 0 || addrs.avail % 4 != 0 || addrs.used % 4 != 0 {
            return Err(invalid("misaligned ring"));
        }
        let dl = DESC_SIZE * size as usize;
        let Some([desc, driver_evt, device_evt]) = mem.zeroed_ring_parts([
            (addrs.desc, dl),
            (addrs.avail, EVENT_SIZE),
            (addrs.used, EVENT_SIZE),
        ]) else {
            return Err(invalid("ring outside guest memory"));
        };
        let n = size as usize;
        let mut ring = PackedRing {
            mem,
            addrs,
            size,
            desc,
            driver_evt,
            device_evt,
            event_idx,
            next_avail: 0,
            avail_wrap: true,
            published: 0,
            batch_first: None,
            used_pos: 0,
            used_wrap: true,
            last_used: 0,
            done: Vec::with_capacity(n),
            done_head: 0,
            broken: false,
            free: (0..size).rev().collect(),
            chain_len: vec![0; n],
            chain_next: vec![0; n],
            raw: vec![false; n],
            completed: vec![false; n],
            shadow: vec![(0, 0, 0); n],
            raw_used: Vec::new(),
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            stats: RingStats::default(),
        };
        ring.disable_interrupts();
        Ok(ring)
    }

    /// Next slot the driver fills, with its lap's wrap counter in bit 15.
    pub fn avail_state(&self) -> u16 {
        vp::off_wrap(self.next_avail, self.avail_wrap)
    }

    /// Reads slot `slot` as the device would see it: (addr, len, id, flags).
    pub fn read_slot(&self, slot: u16) -> (u64, u32, u16, u16) {
        let p = self.slot_ptr(slot);
        // SAFETY: `p` is an in-bounds, 16-aligned ring slot; volatile reads of shared memory.
        unsafe {
            (
                u64::from_le(ptr::read_volatile(p.add(DESC_ADDR).cast())),
                u32::from_le(ptr::read_volatile(p.add(DESC_LEN).cast())),
                u16::from_le(ptr::read_volatile(p.add(DESC_ID).cast())),
                u16::from_le(ptr::read_volatile(p.add(DESC_FLAGS).cast())),
            )
        }
    }

    #[inline]
    fn slot_ptr(&self, slot: u16) -> *mut u8 {
        debug_assert!(slot < self.size);
        // SAFETY: `slot < size` (positions are kept in range) and the ring holds `size`
        // 16-byte entries.
        unsafe { self.desc.add(DESC_SIZE * slot as usize) }
    }

    #[inline]
    fn flags_atomic(&self, slot: u16) -> &AtomicU16 {
        // SAFETY: the flags of an in-bounds slot, 2-aligned (slots are 16-aligned); the
        // mapping outlives `self` (Arc); AtomicU16 has u16's layout.
        unsafe { &*self.slot_ptr(slot).add(DESC_FLAGS).cast::<AtomicU16>() }
    }

    /// Fills the next slot. The batch's first slot gets its flags at `publish`.
    #[inline]
    fn put_slot(&mut self, addr: u64, len: u32, id: u16, flags: u16) {
        let slot = self.next_avail;
        let flags = flags & !(DESC_F_AVAIL | DESC_F_USED) | vp::avail_bits(self.avail_wrap);
        let p = self.slot_ptr(slot);
        // SAFETY: slot `slot` is driver-owned (the device used it and the driver consumed
        // that, or it was never made available), in bounds and 16-aligned.
        unsafe {
            ptr::write_volatile(p.add(DESC_ADDR).cast::<u64>(), addr.to_le());
            if self.batch_first.is_none() {
                ptr::write_volatile(p.add(DESC_LEN).cast::<u32>(), len.to_le());
                ptr::write_volatile(p.add(DESC_ID).cast::<u16>(), id.to_le());
                self.batch_first = Some((slot, flags));
            } else {
                let w1 = len as u64 | (id as u64) << 32 | (flags as u64) << 48;
                ptr::write_volatile(p.add(DESC_LEN).cast::<u64>(), w1.to_le());
            }
        }
        self.next_avail += 1;
        if self.next_avail == self.size {
            self.next_avail = 0;
            self.avail_wrap = !self.avail_wrap;
        }
    }

    #[inline]
    fn write_driver_evt(&mut self, off: usize, v: u16) {
        // SAFETY: `off` is EVENT_OFF_WRAP or EVENT_FLAGS, inside the checked 4-byte area,
        // 2-aligned; only the driver writes it.
        unsafe { ptr::write_volatile(self.driver_evt.add(off).cast::<u16>(), v.to_le()) };
    }

    #[inline]
    fn read_device_evt(&self, off: usize) -> u16 {
        // SAFETY: as in `write_driver_evt`, for the device area, which the device writes
        // concurrently (hence volatile).
        u16::from_le(unsafe { ptr::read_volatile(self.device_evt.add(off).cast::<u16>()) })
    }

    fn mark_broken(&mut self, why: std::fmt::Arguments) {
        if !self.broken {
            self.broken = true;
            self.stats.bad_used += 1;
            log::error!("packed ring broken: {why}");
        }
    }
}

impl DriverRing for PackedRing {
    fn size(&self) -> u16 {
        self.size
    }

    fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    fn new_kick_fd(&mut self) -> std::io::Result<&EventFd> {
        self.kick = EventFd::new(EFD_NONBLOCK)?;
        Ok(&self.kick)
    }

    fn call_fd(&self) -> &EventFd {
        &self.call
    }

    fn stats(&self) -> RingStats {
        self.stats
    }

    fn free_count(&self) -> usize {
        self.free.len()
    }

    fn free_list(&self) -> &[u16] {
        &self.free
    }

    #[inline]
    fn alloc_chain(&mut self, n: u16) -> Option<u16> {
        // Ids and slots are in flight together (a chain of n ids fills n slots), so free
        // ids are also free slots.
        if n == 0 || self.free.len() < n as usize {
            return None;
        }
        let head = self.free.pop()?;
        let mut prev = head;
        for _ in 1..n {
            let d = self.free.pop()?;
            self.chain_next[prev as usize] = d;
            prev = d;
        }
        self.chain_len[head as usize] = n;
        Some(head)
    }

    #[inline]
    fn next_of(&self, d: u16) -> u16 {
        self.chain_next[d as usize]
    }

    #[inline]
    fn write_desc(&mut self, d: u16, addr: u64, len: u32, flags: u16, _next: u16) {
        self.shadow[d as usize] = (addr, len, flags);
    }

    #[inline]
    fn push_avail(&mut self, head: u16) {
        let n = self.chain_len[head as usize];
        let mut d = head;
        for k in 1..=n {
            let (addr, len, flags) = self.shadow[d as usize];
            let next = if k < n { DESC_F_NEXT } else { 0 };
            self.put_slot(addr, len, head, flags & !DESC_F_NEXT | next);
            d = self.chain_next[d as usize];
        }
    }

    #[inline]
    fn publish(&mut self) -> bool {
        let Some((slot, flags)) = self.batch_first.take() else {
            return false;
        };
        self.flags_atomic(slot)
            .store(flags.to_le(), Ordering::Release);
        let old = self.published;
        let new = self.next_avail;
        self.published = new;
        // The flags store must be visible before we read the device's suppression state,
        // or we could miss a device that just went to sleep (StoreLoad ordering).
        fence(Ordering::SeqCst);
        match self.read_device_evt(EVENT_FLAGS) {
            EVENT_F_DESC if self.event_idx => vp::need_event(
                self.read_device_evt(EVENT_OFF_WRAP),
                old,
                new,
                self.avail_wrap,
                self.size,
            ),
            EVENT_F_DISABLE => false,
            _ => true,
        }
    }

    #[inline]
    fn kick(&mut self) {
        // A full counter (EAGAIN) still means a pending kick, so the error can be ignored.
        let _ = self.kick.write(1);
        self.stats.kicks += 1;
    }

    #[inline]
    fn used_pending(&mut self) -> u16 {
        if self.done_head > 0 {
            self.done.drain(..self.done_head);
            self.done_head = 0;
        }
        while !self.broken {
            let slot = self.used_pos;
            let flags = u16::from_le(self.flags_atomic(slot).load(Ordering::Acquire));
            if !vp::is_used(flags, self.used_wrap) {
                break;
            }
            let p = self.slot_ptr(slot);
            // SAFETY: in-bounds slot; the Acquire load of its flags ordered these reads
            // after the device's writes.
            let (id, len) = unsafe {
                (
                    u16::from_le(ptr::read_volatile(p.add(DESC_ID).cast::<u16>())),
                    u32::from_le(ptr::read_volatile(p.add(DESC_LEN).cast::<u32>())),
                )
            };
            let i = id as usize;
            if id >= self.size || self.chain_len[i] == 0 || self.completed[i] {
                // Without a valid id the driver cannot know how many slots to step over.
                self.mark_broken(format_args!("used id {id} at slot {slot} is not in flight"));
                break;
            }
            self.completed[i] = true;
            self.done.push((id as u32, len));
            let mut pos = slot as u32 + self.chain_len[i] as u32;
            if pos >= self.size as u32 {
                pos -= self.size as u32;
                self.used_wrap = !self.used_wrap;
            }
            self.used_pos = pos as u16;
        }
        (self.done.len() - self.done_head) as u16
    }

    #[inline]
    fn used_elem(&self, pos: u16) -> (u32, u32) {
        self.done[self.done_head + pos.wrapping_sub(self.last_used) as usize]
    }

    fn last_used(&self) -> u16 {
        self.last_used
    }

    #[inline]
    fn advance_used(&mut self, n: u16) {
        self.last_used = self.last_used.wrapping_add(n);
        self.done_head += n as usize;
    }

    #[inline]
    fn head_kind(&self, id: u32) -> HeadKind {
        if id >= self.size as u32 || self.chain_len[id as usize] == 0 {
            HeadKind::Invalid
        } else if self.raw[id as usize] {
            HeadKind::Raw
        } else {
            HeadKind::Normal
        }
    }

    #[inline]
    fn release(&mut self, id: u32) -> Option<bool> {
        if self.head_kind(id) == HeadKind::Invalid {
            self.stats.bad_used += 1;
            return None;
        }
        let head = id as u16;
        let n = std::mem::replace(&mut self.chain_len[head as usize], 0);
        let raw = std::mem::replace(&mut self.raw[head as usize], false);
        self.completed[head as usize] = false;
        let mut d = head;
        for _ in 0..n {
            self.free.push(d);
            d = self.chain_next[d as usize];
        }
        Some(raw)
    }

    fn count_bad_used(&mut self) {
        self.stats.bad_used += 1;
    }

    fn push_raw_used(&mut self, id: u32, len: u32) {
        self.raw_used.push((id, len));
    }

    fn take_raw_used(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.raw_used)
    }

    /// Fills the next `descs.len()` slots with the given address, length and flags (NEXT
    /// as given, so chains can be malformed; AVAIL/USED set for the slot's lap), all
    /// carrying the head id; `next` is ignored.
    fn post_raw_chain(&mut self, descs: &[RawDesc]) -> Option<u16> {
        let n = u16::try_from(descs.len()).ok()?;
        let head = self.alloc_chain(n)?;
        for rd in descs {
            self.put_slot(rd.addr, rd.len, head, rd.flags);
        }
        self.raw[head as usize] = true;
        Some(head)
    }

    fn enable_interrupts(&mut self) {
        if self.event_idx {
            let at = vp::off_wrap(self.used_pos, self.used_wrap);
            self.write_driver_evt(EVENT_OFF_WRAP, at);
            self.write_driver_evt(EVENT_FLAGS, EVENT_F_DESC);
        } else {
            self.write_driver_evt(EVENT_FLAGS, EVENT_F_ENABLE);
        }
        fence(Ordering::SeqCst);
    }

    fn disable_interrupts(&mut self) {
        self.write_driver_evt(EVENT_FLAGS, EVENT_F_DISABLE);
    }

    fn drain_call(&self) -> bool {
        self.call.read().is_ok()
    }

    #[inline]
    fn indirect_entry(addr: u64, len: u32, flags: u16, _next: u16) -> [u64; 2] {
        // Entries are used in order; only WRITE means something in a packed table.
        [addr, len as u64 | ((flags & DESC_F_WRITE) as u64) << 48]
    }
}

/// A device you drive by hand over the same memory, for unit tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// One descriptor as the device read it: (addr, len, flags).
    pub type Desc = (u64, u32, u16);

    /// Minimal device side of a packed ring.
    pub struct FakePackedDevice {
        mem: Arc<GuestMemory>,
        addrs: RingAddrs,
        size: u16,
        avail_pos: u16,
        avail_wrap: bool,
        used_pos: u16,
        used_wrap: bool,
        signalled: u16,
    }

    impl FakePackedDevice {
        pub fn new(ring: &PackedRing) -> FakePackedDevice {
            FakePackedDevice {
                mem: ring.mem().clone(),
                addrs: ring.addrs(),
                size: ring.size(),
                avail_pos: 0,
                avail_wrap: true,
                used_pos: 0,
                used_wrap: true,
                signalled: 0,
            }
        }

        fn r16(&self, gpa: u64) -> u16 {
            let mut b = [0u8; 2];
            assert!(self.mem.read(gpa, &mut b));
            u16::from_le_bytes(b)
        }

        fn w16(&self, gpa: u64, v: u16) {
            assert!(self.mem.write(gpa, &v.to_le_bytes()));
        }

        fn slot(&self, pos: u16) -> u64 {
            self.addrs.desc + (DESC_SIZE * pos as usize) as u64
        }

        /// Reads a descriptor at `gpa`: (addr, len, id, flags).
        pub fn desc_at(&self, gpa: u64) -> (u64, u32, u16, u16) {
            let mut b = [0u8; 16];
            assert!(self.mem.read(gpa, &mut b));
            (
                u64::from_le_bytes(b[0..8].try_into().unwrap()),
                u32::from_le_bytes(b[8..12].try_into().unwrap()),
                u16::from_le_bytes(b[12..14].try_into().unwrap()),
                u16::from_le_bytes(b[14..16].try_into().unwrap()),
            )
        }

        /// The driver's event suppression (flags, off_wrap).
        pub fn driver_event(&self) -> (u16, u16) {
            (
                self.r16(self.addrs.avail + EVENT_FLAGS as u64),
                self.r16(self.addrs.avail + EVENT_OFF_WRAP as u64),
            )
        }

        /// Sets the device's event suppression.
        pub fn set_device_event(&self, flags: u16, off_wrap: u16) {
            self.w16(self.addrs.used + EVENT_OFF_WRAP as u64, off_wrap);
            self.w16(self.addrs.used + EVENT_FLAGS as u64, flags);
        }

        /// Pops the next available chain: (id from its last descriptor, descriptors read
        /// from the ring, slots it took); indirect tables are expanded.
        pub fn pop(&mut self) -> Option<(u16, Vec<Desc>, u16)> {
            let (_, _, _, flags) = self.desc_at(self.slot(self.avail_pos));
            if !vp::is_avail(flags, self.avail_wrap) {
                return None;
            }
            let mut out = Vec::new();
            let mut slots = 0;
            loop {
                let (addr, len, id, flags) = self.desc_at(self.slot(self.avail_pos));
                assert!(vp::is_avail(flags, self.avail_wrap), "chain not available");
                slots += 1;
                self.avail_pos += 1;
                if self.avail_pos == self.size {
                    self.avail_pos = 0;
                    self.avail_wrap = !self.avail_wrap;
                }
                if flags & vp::DESC_F_INDIRECT != 0 {
                    for k in 0..len as u64 / 16 {
                        let (a, l, _, f) = self.desc_at(addr + 16 * k);
                        out.push((a, l, f));
                    }
                } else {
                    out.push((addr, len, flags & !(DESC_F_AVAIL | DESC_F_USED)));
                }
                if flags & DESC_F_NEXT == 0 {
                    return Some((id, out, slots));
                }
            }
        }

        /// The bytes of `descs`, concatenated.
        pub fn read(&self, descs: &[Desc]) -> Vec<u8> {
            let mut out = Vec::new();
            for &(addr, len, _) in descs {
                let mut b = vec![0u8; len as usize];
                assert!(self.mem.read(addr, &mut b));
                out.extend_from_slice(&b);
            }
            out
        }

        pub fn write(&self, gpa: u64, bytes: &[u8]) {
            assert!(self.mem.write(gpa, bytes));
        }

        /// Writes a used descriptor for `id` and steps over the `slots` of its chain.
        pub fn push_used(&mut self, id: u16, len: u32, slots: u16) {
            let at = self.slot(self.used_pos);
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&len.to_le_bytes());
            b[4..6].copy_from_slice(&id.to_le_bytes());
            b[6..].copy_from_slice(&vp::used_bits(self.used_wrap).to_le_bytes());
            assert!(self.mem.write(at + 8, &b));
            let pos = self.used_pos as u32 + slots as u32;
            if pos >= self.size as u32 {
                self.used_wrap = !self.used_wrap;
            }
            self.used_pos = (pos % self.size as u32) as u16;
        }

        /// Whether the driver wants an interrupt for the used descriptors pushed since the
        /// last call.
        pub fn interrupt_wanted(&mut self) -> bool {
            fence(Ordering::SeqCst);
            let (old, new) = (self.signalled, self.used_pos);
            self.signalled = new;
            let (flags, off_wrap) = self.driver_event();
            match flags {
                EVENT_F_DESC => vp::need_event(off_wrap, old, new, self.used_wrap, self.size),
                EVENT_F_DISABLE => false,
                _ => true,
            }
        }
    }
}

#[cfg(test)]
#[path = "packed_ring_tests.rs"]
mod tests;
