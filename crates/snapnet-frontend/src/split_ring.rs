//! Driver side of one virtio 1.x split virtqueue, living in shared guest memory.
//!
//! Layout (all little-endian):
//! * descriptor table: `size` x 16 bytes `{addr: u64, len: u32, flags: u16, next: u16}`,
//! * avail ring: `flags: u16, idx: u16, ring: [u16; size], used_event: u16`,
//! * used ring: `flags: u16, idx: u16, ring: [{id: u32, len: u32}; size], avail_event: u16`.
//!
//! Memory ordering: descriptors and avail entries are written with volatile stores, then
//! `avail->idx` is published with a Release store; before deciding whether to kick we issue a
//! full (SeqCst) fence and read `used->flags` / `avail_event`. `used->idx` is read with an
//! Acquire load before the used entries (and the buffers they name) are read.
//!
//! Descriptor ownership: the driver keeps a free list (LIFO, so recently used buffers stay
//! cache hot) and a private shadow of every in-flight chain (`chain_len` on the head,
//! `chain_next` links). Completions are validated against that shadow, never against the
//! descriptor table, which the device could have scribbled over.

use std::io;
use std::ptr;
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::GuestMemory;
use super::ring::DriverRing;
// Shared with packed rings; kept here too, where the crate first exported them.
pub use super::ring::{HeadKind, RingAddrs, RingStats};
use super::RawDesc;

/// Descriptor continues via `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor points to an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// `used->flags`: the device does not want kicks.
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// `avail->flags`: the driver does not want interrupts.
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Largest queue size allowed by the virtio spec for split rings.
pub const MAX_QUEUE_SIZE: u16 = 32768;

impl RingAddrs {
    /// Bytes of each part for a ring of `size` entries (desc, avail, used), with event fields.
    pub const fn part_sizes(size: u16) -> (usize, usize, usize) {
        let n = size as usize;
        (16 * n, 6 + 2 * n, 6 + 8 * n)
    }

    /// Bytes a ring of `size` entries takes when laid out by [`RingAddrs::alloc`], worst case.
    pub const fn footprint(size: u16) -> usize {
        let (d, a, u) = Self::part_sizes(size);
        // Each part starts on its own 64-byte line, the table on a page.
        4096 + d + 64 + a + 64 + 4096 + u
    }

    /// Lays out a ring in `mem`: the descriptor table page aligned, the avail ring on the next
    /// cache line, the used ring on its own page (so driver- and device-written lines never
    /// share a cache line).
    pub fn alloc(mem: &mut GuestMemory, size: u16) -> Option<RingAddrs> {
        let (d, a, u) = Self::part_sizes(size);
        let desc = mem.alloc(d, 4096)?;
        let avail = mem.alloc(a, 64)?;
        let used = mem.alloc(u, 4096)?;
        Some(RingAddrs { desc, avail, used })
    }
}

/// `vring_need_event` from the virtio spec: true when `event` lies in `[old, new)` (mod 2^16).
#[inline]
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitRing {
    mem: Arc<GuestMemory>,
    addrs: RingAddrs,
    size: u16,
    mask: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    event_idx: bool,
    /// Next avail index to fill (published or not).
    avail_shadow: u16,
    /// Value of `avail->idx` the device can see.
    avail_published: u16,
    /// Next used index to consume.
    last_used: u16,
    /// Value currently written in `used_event` (only with EVENT_IDX).
    used_event: u16,
    irq_enabled: bool,
    broken: bool,
    free: Vec<u16>,
    chain_len: Vec<u16>,
    chain_next: Vec<u16>,
    raw: Vec<bool>,
    raw_used: Vec<(u32, u32)>,
    kick: EventFd,
    call: EventFd,
    stats: RingStats,
}

// SAFETY: the raw pointers point into `mem`, which the ring keeps alive through its `Arc` and
// which is valid from any thread; the ring has no thread-affine state.
unsafe impl Send for SplitRing {}

impl SplitRing {
    /// Creates a ring at `addrs` inside `mem` and initialises it: zero indices, all
    /// descriptors free, interrupts suppressed (polling mode).
    pub fn new(
        mem: Arc<GuestMemory>,
        addrs: RingAddrs,
        size: u16,
        event_idx: bool,
    ) -> io::Result<SplitRing> {
        let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, m.to_string());
        if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(invalid("queue size must be a power of two <= 32768"));
        }
        if addrs.desc % 16 != 0 || addrs.avail % 2 != 0 || addrs.used % 4 != 0 {
            return Err(invalid("misaligned ring"));
        }
        let (dl, al, ul) = RingAddrs::part_sizes(size);
        let Some([desc, avail, used]) =
            mem.zeroed_ring_parts([(addrs.desc, dl), (addrs.avail, al), (addrs.used, ul)])
        else {
            return Err(invalid("ring outside guest memory"));
        };
        let n = size as usize;
        let mut ring = SplitRing {
            mem,
            addrs,
            size,
            mask: size - 1,
            desc,
            avail,
            used,
            event_idx,
            avail_shadow: 0,
            avail_published: 0,
            last_used: 0,
            used_event: 0,
            irq_enabled: true,
            broken: false,
            free: (0..size).rev().collect(),
            chain_len: vec![0; n],
            chain_next: vec![0; n],
            raw: vec![false; n],
            raw_used: Vec::new(),
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
            stats: RingStats::default(),
        };
        ring.disable_interrupts();
        Ok(ring)
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical addresses of the ring parts.
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    /// The memory the ring lives in.
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Whether EVENT_IDX suppression is in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// The eventfd the driver writes to kick the device.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// A fresh kick eventfd (the old one is closed), as a frontend that
    /// re-sends SET_VRING_KICK has.
    pub fn new_kick_fd(&mut self) -> std::io::Result<&EventFd> {
        self.kick = EventFd::new(EFD_NONBLOCK)?;
        Ok(&self.kick)
    }

    /// The eventfd the device writes to interrupt the driver.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Free descriptors.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// The free descriptor indices (any order).
    pub fn free_list(&self) -> &[u16] {
        &self.free
    }

    /// Next used index the driver will consume.
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// Avail index that will be published next.
    pub fn avail_shadow(&self) -> u16 {
        self.avail_shadow
    }

    /// Used completions of raw chains, taken out.
    pub fn take_raw_used(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.raw_used)
    }

    /// Records the completion of a raw chain (id, len).
    pub fn push_raw_used(&mut self, id: u32, len: u32) {
        self.raw_used.push((id, len));
    }

    /// Takes `n` free descriptors and links them (in the private shadow) into a chain; returns
    /// the head. Walk the chain with [`SplitRing::next_of`].
    #[inline]
    pub fn alloc_chain(&mut self, n: u16) -> Option<u16> {
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

    /// The descriptor after `d` in the chain it was allocated in.
    #[inline]
    pub fn next_of(&self, d: u16) -> u16 {
        self.chain_next[d as usize]
    }

    /// Length of the in-flight chain headed by `head` (0 when `head` is not a head).
    pub fn chain_len(&self, head: u16) -> u16 {
        self.chain_len.get(head as usize).copied().unwrap_or(0)
    }

    #[inline]
    fn desc_ptr(&self, i: u16) -> *mut u64 {
        debug_assert!(i < self.size);
        // SAFETY: `i & mask < size` and the table holds `size` 16-byte entries.
        unsafe { self.desc.add(16 * (i & self.mask) as usize).cast() }
    }

    /// Writes descriptor `i` of the table.
    #[inline]
    pub fn write_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let p = self.desc_ptr(i);
        let w1 = len as u64 | (flags as u64) << 32 | (next as u64) << 48;
        // SAFETY: `p` is a 16-byte aligned entry inside the mapped table; descriptor `i` is
        // owned by the driver (free or being prepared), so the device does not read it now.
        unsafe {
            ptr::write_volatile(p, addr.to_le());
            ptr::write_volatile(p.add(1), w1.to_le());
        }
    }

    /// Reads descriptor `i` of the table as the device would see it.
    pub fn read_desc(&self, i: u16) -> RawDesc {
        let p = self.desc_ptr(i);
        // SAFETY: `p` is an aligned, in-bounds table entry; volatile reads of shared memory.
        let (w0, w1) = unsafe {
            (
                u64::from_le(ptr::read_volatile(p)),
                u64::from_le(ptr::read_volatile(p.add(1))),
            )
        };
        RawDesc {
            addr: w0,
            len: w1 as u32,
            flags: (w1 >> 32) as u16,
            next: (w1 >> 48) as u16,
        }
    }

    /// Puts `head` in the next avail slot; it becomes visible at the next [`Self::publish`].
    #[inline]
    pub fn push_avail(&mut self, head: u16) {
        let slot = (self.avail_shadow & self.mask) as usize;
        // SAFETY: `4 + 2 * slot` with `slot < size` is inside the avail ring (2-byte aligned);
        // slots between the published index and the shadow are not read by the device.
        unsafe { ptr::write_volatile(self.avail.add(4 + 2 * slot).cast::<u16>(), head.to_le()) };
        self.avail_shadow = self.avail_shadow.wrapping_add(1);
    }

    #[inline]
    fn avail_idx(&self) -> &AtomicU16 {
        // SAFETY: `avail + 2` is 2-byte aligned, inside the mapping, which lives as long as
        // `self` (Arc); an AtomicU16 has the layout of u16 and shared mutation is what atomics
        // are for.
        unsafe { &*self.avail.add(2).cast::<AtomicU16>() }
    }

    #[inline]
    fn used_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: as in `avail_idx`: `used + 2` is aligned, in bounds and outlived by `mem`.
        unsafe { &*self.used.add(2).cast::<AtomicU16>() }
    }

    #[inline]
    fn write_avail_u16(&mut self, offset: usize, v: u16) {
        debug_assert!(offset + 2 <= RingAddrs::part_sizes(self.size).1);
        // SAFETY: callers pass 0 (flags) or `4 + 2 * size` (used_event), both inside the avail
        // ring and 2-byte aligned; the driver is the only writer of the avail ring.
        unsafe { ptr::write_volatile(self.avail.add(offset).cast::<u16>(), v.to_le()) };
    }

    #[inline]
    fn read_used_u16(&self, offset: usize) -> u16 {
        debug_assert!(offset + 2 <= RingAddrs::part_sizes(self.size).2);
        // SAFETY: callers pass 0 (flags) or `4 + 8 * size` (avail_event), both in bounds and
        // aligned; volatile because the device writes them concurrently.
        u16::from_le(unsafe { ptr::read_volatile(self.used.add(offset).cast::<u16>()) })
    }

    /// Publishes all pushed avail entries with one Release store of `avail->idx` and returns
    /// whether the device wants a kick for them (EVENT_IDX `avail_event`, or `NO_NOTIFY`).
    #[inline]
    pub fn publish(&mut self) -> bool {
        let new = self.avail_shadow;
        let old = self.avail_published;
        if new == old {
            return false;
        }
        self.avail_idx().store(new.to_le(), Ordering::Release);
        self.avail_published = new;
        // The store above must be visible before we read the device's suppression state,
        // or we could miss a device that just went to sleep (StoreLoad ordering).
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = self.read_used_u16(4 + 8 * self.size as usize);
            vring_need_event(event, new, old)
        } else {
            self.read_used_u16(0) & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Writes the kick eventfd.
    #[inline]
    pub fn kick(&mut self) {
        // A full counter (EAGAIN) still means a pending kick, so the error can be ignored.
        let _ = self.kick.write(1);
        self.stats.kicks += 1;
    }

    /// [`Self::publish`], then kick when the device wants it. Returns whether it kicked.
    #[inline]
    pub fn publish_and_kick(&mut self) -> bool {
        let need = self.publish();
        if need {
            self.kick();
        }
        need
    }

    /// Number of used entries the device has published and the driver not yet consumed.
    /// Returns 0 (and counts one `bad_used`) once the device moved `used->idx` by more than
    /// the ring size, which no correct device can do.
    #[inline]
    pub fn used_pending(&mut self) -> u16 {
        let idx = u16::from_le(self.used_idx_atomic().load(Ordering::Acquire));
        let pending = idx.wrapping_sub(self.last_used);
        if pending > self.size {
            if !self.broken {
                self.broken = true;
                self.stats.bad_used += 1;
                log::error!(
                    "device moved used idx to {idx}, {pending} past {} on a ring of {}",
                    self.last_used,
                    self.size
                );
            }
            return 0;
        }
        pending
    }

    /// Reads the used entry at used index `pos` as (id, len).
    #[inline]
    pub fn used_elem(&self, pos: u16) -> (u32, u32) {
        let slot = (pos & self.mask) as usize;
        // SAFETY: `4 + 8 * slot` with `slot < size` is a 4-byte aligned used entry in bounds;
        // the Acquire load of used->idx in `used_pending` ordered these reads after the write.
        unsafe {
            let p = self.used.add(4 + 8 * slot).cast::<u32>();
            (
                u32::from_le(ptr::read_volatile(p)),
                u32::from_le(ptr::read_volatile(p.add(1))),
            )
        }
    }

    /// Classifies a used id against the driver's shadow state.
    #[inline]
    pub fn head_kind(&self, id: u32) -> HeadKind {
        if id >= self.size as u32 || self.chain_len[id as usize] == 0 {
            HeadKind::Invalid
        } else if self.raw[id as usize] {
            HeadKind::Raw
        } else {
            HeadKind::Normal
        }
    }

    /// Returns the chain headed by `id` to the free list. `None` (and a `bad_used` count) when
    /// `id` is not the head of an in-flight chain; otherwise whether it was a raw chain.
    #[inline]
    pub fn release(&mut self, id: u32) -> Option<bool> {
        if self.head_kind(id) == HeadKind::Invalid {
            self.stats.bad_used += 1;
            return None;
        }
        let head = id as u16;
        let n = std::mem::replace(&mut self.chain_len[head as usize], 0);
        let raw = std::mem::replace(&mut self.raw[head as usize], false);
        let mut d = head;
        for _ in 0..n {
            self.free.push(d);
            d = self.chain_next[d as usize];
        }
        Some(raw)
    }

    /// Counts a malformed used entry that `release` would not catch (bad length etc.).
    pub fn count_bad_used(&mut self) {
        self.stats.bad_used += 1;
    }

    /// Marks `n` used entries consumed. In polling mode with EVENT_IDX this also keeps
    /// `used_event` behind `last_used` so the device never sees a reason to interrupt.
    #[inline]
    pub fn advance_used(&mut self, n: u16) {
        self.last_used = self.last_used.wrapping_add(n);
        // `used_event = last_used - 1` suppresses interrupts while the device is at most
        // 65535 - size entries ahead of it; refresh well before that (every 16 Ki entries).
        if self.event_idx
            && !self.irq_enabled
            && self.last_used.wrapping_sub(self.used_event.wrapping_add(1)) > 0x4000
        {
            self.set_used_event(self.last_used.wrapping_sub(1));
        }
    }

    fn set_used_event(&mut self, v: u16) {
        self.used_event = v;
        self.write_avail_u16(4 + 2 * self.size as usize, v);
    }

    /// Asks the device to interrupt on the next used entry (call `used_pending` afterwards
    /// to close the race with a completion that happened just before).
    pub fn enable_interrupts(&mut self) {
        self.irq_enabled = true;
        if self.event_idx {
            self.set_used_event(self.last_used);
        } else {
            self.write_avail_u16(0, 0);
        }
        fence(Ordering::SeqCst);
    }

    /// Back to polling mode: the device should not interrupt.
    pub fn disable_interrupts(&mut self) {
        self.irq_enabled = false;
        if self.event_idx {
            // The spec wants avail->flags = 0 with EVENT_IDX; used_event does the suppressing.
            self.write_avail_u16(0, 0);
            self.set_used_event(self.last_used.wrapping_sub(1));
        } else {
            self.write_avail_u16(0, VRING_AVAIL_F_NO_INTERRUPT);
        }
    }

    /// Clears a pending interrupt on the call eventfd; returns whether one was pending.
    pub fn drain_call(&self) -> bool {
        self.call.read().is_ok()
    }

    /// Allocates `descs.len()` descriptors, writes them verbatim except that a `next` smaller
    /// than `descs.len()` is taken as a position in `descs` and translated to the real index
    /// (larger values are written as given). Pushes the head to the avail ring (unpublished).
    /// Returns `None` when not enough descriptors are free.
    pub fn post_raw_chain(&mut self, descs: &[RawDesc]) -> Option<u16> {
        let n = u16::try_from(descs.len()).ok()?;
        let head = self.alloc_chain(n)?;
        let mut idx = Vec::with_capacity(descs.len());
        let mut d = head;
        for _ in 0..n {
            idx.push(d);
            d = self.next_of(d);
        }
        for (k, rd) in descs.iter().enumerate() {
            let next = if (rd.next as usize) < descs.len() {
                idx[rd.next as usize]
            } else {
                rd.next
            };
            self.write_desc(idx[k], rd.addr, rd.len, rd.flags, next);
        }
        self.raw[head as usize] = true;
        self.push_avail(head);
        Some(head)
    }
}

impl DriverRing for SplitRing {
    fn size(&self) -> u16 {
        SplitRing::size(self)
    }
    fn addrs(&self) -> RingAddrs {
        SplitRing::addrs(self)
    }
    fn mem(&self) -> &Arc<GuestMemory> {
        SplitRing::mem(self)
    }
    fn kick_fd(&self) -> &EventFd {
        SplitRing::kick_fd(self)
    }
    fn new_kick_fd(&mut self) -> std::io::Result<&EventFd> {
        SplitRing::new_kick_fd(self)
    }
    fn call_fd(&self) -> &EventFd {
        SplitRing::call_fd(self)
    }
    fn stats(&self) -> RingStats {
        SplitRing::stats(self)
    }
    fn free_count(&self) -> usize {
        SplitRing::free_count(self)
    }
    fn free_list(&self) -> &[u16] {
        SplitRing::free_list(self)
    }
    #[inline]
    fn alloc_chain(&mut self, n: u16) -> Option<u16> {
        SplitRing::alloc_chain(self, n)
    }
    #[inline]
    fn next_of(&self, d: u16) -> u16 {
        SplitRing::next_of(self, d)
    }
    #[inline]
    fn write_desc(&mut self, d: u16, addr: u64, len: u32, flags: u16, next: u16) {
        SplitRing::write_desc(self, d, addr, len, flags, next)
    }
    #[inline]
    fn push_avail(&mut self, head: u16) {
        SplitRing::push_avail(self, head)
    }
    #[inline]
    fn publish(&mut self) -> bool {
        SplitRing::publish(self)
    }
    #[inline]
    fn kick(&mut self) {
        SplitRing::kick(self)
    }
    #[inline]
    fn used_pending(&mut self) -> u16 {
        SplitRing::used_pending(self)
    }
    #[inline]
    fn used_elem(&self, pos: u16) -> (u32, u32) {
        SplitRing::used_elem(self, pos)
    }
    fn last_used(&self) -> u16 {
        SplitRing::last_used(self)
    }
    #[inline]
    fn advance_used(&mut self, n: u16) {
        SplitRing::advance_used(self, n)
    }
    #[inline]
    fn head_kind(&self, id: u32) -> HeadKind {
        SplitRing::head_kind(self, id)
    }
    #[inline]
    fn release(&mut self, id: u32) -> Option<bool> {
        SplitRing::release(self, id)
    }
    fn count_bad_used(&mut self) {
        SplitRing::count_bad_used(self)
    }
    fn push_raw_used(&mut self, id: u32, len: u32) {
        SplitRing::push_raw_used(self, id, len)
    }
    fn take_raw_used(&mut self) -> Vec<(u32, u32)> {
        SplitRing::take_raw_used(self)
    }
    fn post_raw_chain(&mut self, descs: &[RawDesc]) -> Option<u16> {
        SplitRing::post_raw_chain(self, descs)
    }
    fn enable_interrupts(&mut self) {
        SplitRing::enable_interrupts(self)
    }
    fn disable_interrupts(&mut self) {
        SplitRing::disable_interrupts(self)
    }
    fn drain_call(&self) -> bool {
        SplitRing::drain_call(self)
    }
    #[inline]
    fn indirect_entry(addr: u64, len: u32, flags: u16, next: u16) -> [u64; 2] {
        [
            addr,
            len as u64 | (flags as u64) << 32 | (next as u64) << 48,
        ]
    }
}

/// A device you drive by hand over the same memory, for unit tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// Minimal device side of a split ring.
    pub struct FakeDevice {
        mem: Arc<GuestMemory>,
        addrs: RingAddrs,
        size: u16,
        /// Next avail index to consume.
        pub last_avail: u16,
        /// Used index to publish next.
        pub used_idx: u16,
        /// Used index the device last published.
        pub published_used: u16,
    }

    impl FakeDevice {
        pub fn new(ring: &SplitRing) -> FakeDevice {
            FakeDevice {
                mem: ring.mem().clone(),
                addrs: ring.addrs(),
                size: ring.size(),
                last_avail: 0,
                used_idx: 0,
                published_used: 0,
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

        pub fn avail_idx(&self) -> u16 {
            self.r16(self.addrs.avail + 2)
        }

        pub fn avail_flags(&self) -> u16 {
            self.r16(self.addrs.avail)
        }

        pub fn used_event(&self) -> u16 {
            self.r16(self.addrs.avail + 4 + 2 * self.size as u64)
        }

        pub fn set_used_flags(&self, v: u16) {
            self.w16(self.addrs.used, v);
        }

        pub fn set_avail_event(&self, v: u16) {
            self.w16(self.addrs.used + 4 + 8 * self.size as u64, v);
        }

        /// Pops the next available head, if any.
        pub fn pop(&mut self) -> Option<u16> {
            if self.avail_idx() == self.last_avail {
                return None;
            }
            let slot = (self.last_avail & (self.size - 1)) as u64;
            let head = self.r16(self.addrs.avail + 4 + 2 * slot);
            self.last_avail = self.last_avail.wrapping_add(1);
            Some(head)
        }

        pub fn desc(&self, table: u64, i: u16) -> RawDesc {
            let mut b = [0u8; 16];
            assert!(self.mem.read(table + 16 * i as u64, &mut b));
            RawDesc {
                addr: u64::from_le_bytes(b[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(b[8..12].try_into().unwrap()),
                flags: u16::from_le_bytes(b[12..14].try_into().unwrap()),
                next: u16::from_le_bytes(b[14..16].try_into().unwrap()),
            }
        }

        /// The chain at `head`, following NEXT links and expanding an indirect table.
        pub fn chain(&self, head: u16) -> Vec<RawDesc> {
            let mut out = Vec::new();
            let mut d = self.desc(self.addrs.desc, head);
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                let table = d.addr;
                let mut i = 0;
                loop {
                    let e = self.desc(table, i);
                    out.push(e);
                    if e.flags & VRING_DESC_F_NEXT == 0 {
                        return out;
                    }
                    i = e.next;
                }
            }
            loop {
                out.push(d);
                if d.flags & VRING_DESC_F_NEXT == 0 {
                    return out;
                }
                d = self.desc(self.addrs.desc, d.next);
            }
        }

        /// The bytes the chain's readable descriptors carry, concatenated.
        pub fn read_chain(&self, head: u16) -> Vec<u8> {
            let mut out = Vec::new();
            for d in self.chain(head) {
                let mut b = vec![0u8; d.len as usize];
                assert!(self.mem.read(d.addr, &mut b));
                out.extend_from_slice(&b);
            }
            out
        }

        pub fn write(&self, gpa: u64, bytes: &[u8]) {
            assert!(self.mem.write(gpa, bytes));
        }

        /// Adds a used entry (not yet visible).
        pub fn push_used(&mut self, id: u32, len: u32) {
            let slot = (self.used_idx & (self.size - 1)) as u64;
            let gpa = self.addrs.used + 4 + 8 * slot;
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&id.to_le_bytes());
            b[4..].copy_from_slice(&len.to_le_bytes());
            assert!(self.mem.write(gpa, &b));
            self.used_idx = self.used_idx.wrapping_add(1);
        }

        /// Publishes used entries; returns whether the driver asked for an interrupt.
        pub fn publish_used(&mut self, event_idx: bool) -> bool {
            let old = self.published_used;
            let new = self.used_idx;
            fence(Ordering::Release);
            self.w16(self.addrs.used + 2, new);
            self.published_used = new;
            fence(Ordering::SeqCst);
            if event_idx {
                vring_need_event(self.used_event(), new, old)
            } else {
                self.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT == 0
            }
        }

        /// Forces the used index to an arbitrary value (to simulate a broken device).
        pub fn force_used_idx(&mut self, v: u16) {
            self.w16(self.addrs.used + 2, v);
        }
    }
}

#[cfg(test)]
#[path = "split_ring_tests.rs"]
mod tests;
