//! The four AF_XDP rings as the kernel maps them (and the upgrade's bridge
//! ring, laid out the same way in a memfd): a producer index, a
//! consumer index, a flags word and a power-of-two array of entries. One side
//! writes each index; the other only reads it, with acquire/release ordering
//! pairing the entry writes with the index store (as the kernel's
//! `xsk_queue.h` does on its side).

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the kernel put a ring's fields within its mapping.
#[derive(Clone, Copy, Debug)]
pub struct RingOffsets {
    pub producer: u64,
    pub consumer: u64,
    pub desc: u64,
    pub flags: u64,
}

impl From<libc::xdp_ring_offset> for RingOffsets {
    fn from(o: libc::xdp_ring_offset) -> Self {
        Self {
            producer: o.producer,
            consumer: o.consumer,
            desc: o.desc,
            flags: o.flags,
        }
    }
}

/// One mapped ring, unmapped on drop (before the socket closes: a ring still
/// mapped keeps the queue busy after close, and a rebind sees EBUSY).
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` are exactly what mmap returned in `Raw::map`,
        // and every pointer into the mapping lives in the ring that owns it.
        unsafe {
            libc::munmap(self.addr.cast(), self.len);
        }
    }
}

struct Raw<T> {
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    entries: *mut T,
    mask: u32,
    _map: Mapping,
}

impl<T: Copy> Raw<T> {
    fn map(fd: BorrowedFd<'_>, pgoff: u64, off: RingOffsets, size: u32) -> io::Result<Self> {
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: a shared mapping of the socket's ring at the kernel-defined
        // page offset, checked against MAP_FAILED; the kernel sized the ring
        // for `size` entries when the ring was set up with the same size.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr: *mut u8 = addr.cast();
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie within the mapping of `len`
            // bytes (they describe that very mapping).
            unsafe { addr.add(o as usize) }
        };
        Ok(Self {
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            entries: at(off.desc).cast(),
            mask: size - 1,
            _map: Mapping { addr, len },
        })
    }

    #[inline]
    fn load(p: *const AtomicU32, order: Ordering) -> u32 {
        // SAFETY: `p` points into the live mapping owned by `self._map`, at a
        // 4-byte aligned index the kernel shares with us.
        unsafe { (*p).load(order) }
    }

    #[inline]
    fn store(p: *const AtomicU32, v: u32) {
        // SAFETY: as in `load`; we are the only writer of this index.
        unsafe { (*p).store(v, Ordering::Release) }
    }
}

/// The side of a ring this process fills (fill and TX rings).
pub struct ProducerRing<T> {
    raw: Raw<T>,
    size: u32,
    /// Our producer index, published by `commit`.
    prod: u32,
    /// The kernel's consumer index as last read.
    cons: u32,
    _t: PhantomData<T>,
}

// SAFETY: the ring is owned by one engine at a time; the raw pointers point
// into a mapping that moves with it.
unsafe impl<T: Send> Send for ProducerRing<T> {}

impl<T: Copy> ProducerRing<T> {
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        pgoff: u64,
        off: RingOffsets,
        size: u32,
    ) -> io::Result<Self> {
        let raw = Raw::map(fd, pgoff, off, size)?;
        let prod = Raw::<T>::load(raw.producer, Ordering::Relaxed);
        let cons = Raw::<T>::load(raw.consumer, Ordering::Acquire);
        Ok(Self {
            raw,
            size,
            prod,
            cons,
            _t: PhantomData,
        })
    }

    /// A ring of `size` entries in a memfd of our own, with nobody on the
    /// kernel's side: for tests of what fills it.
    #[cfg(test)]
    pub(crate) fn unbacked(size: u32) -> io::Result<Self> {
        let fd: std::os::fd::OwnedFd = memfd::MemfdOptions::new()
            .create("ring")
            .map_err(io::Error::other)?
            .into_file()
            .into();
        let off = RingOffsets {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The mapping holds the memory after the fd closes.
        Self::map(std::os::fd::AsFd::as_fd(&fd), 0, off, size)
    }

    /// Free entries; reads the kernel's index only when the cached one says
    /// fewer than `want` are free.
    #[inline]
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.size - self.prod.wrapping_sub(self.cons);
        if free >= want {
            return free;
        }
        self.cons = Raw::<T>::load(self.raw.consumer, Ordering::Acquire);
        self.size - self.prod.wrapping_sub(self.cons)
    }

    /// Writes one entry; it reaches the kernel at the next `commit`. Gives the
    /// entry back when the ring is full.
    #[inline]
    pub fn push(&mut self, entry: T) -> Result<(), T> {
        if self.free(1) == 0 {
            return Err(entry);
        }
        let slot = (self.prod & self.raw.mask) as usize;
        // SAFETY: `slot` <= mask < size entries of the mapped array, and the
        // free check proves the kernel is not reading this slot.
        unsafe { self.raw.entries.add(slot).write(entry) };
        self.prod = self.prod.wrapping_add(1);
        Ok(())
    }

    /// Publishes every pushed entry.
    #[inline]
    pub fn commit(&mut self) {
        Raw::<T>::store(self.raw.producer, self.prod);
    }

    /// Entries the kernel has not consumed yet.
    #[inline]
    pub fn outstanding(&mut self) -> u32 {
        self.cons = Raw::<T>::load(self.raw.consumer, Ordering::Acquire);
        self.prod.wrapping_sub(self.cons)
    }

    /// The kernel asks for a syscall before it looks at this ring again.
    #[inline]
    pub fn needs_wakeup(&self) -> bool {
        Raw::<T>::load(self.raw.flags, Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

/// The side of a ring this process drains (RX and completion rings).
pub struct ConsumerRing<T> {
    raw: Raw<T>,
    /// The kernel's producer index as last read.
    prod: u32,
    /// Our consumer index, published by `release`.
    cons: u32,
    _t: PhantomData<T>,
}

// SAFETY: as for `ProducerRing`.
unsafe impl<T: Send> Send for ConsumerRing<T> {}

impl<T: Copy> ConsumerRing<T> {
    /// Entries the ring holds.
    pub fn capacity(&self) -> u32 {
        self.raw.mask + 1
    }

    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        pgoff: u64,
        off: RingOffsets,
        size: u32,
    ) -> io::Result<Self> {
        let raw = Raw::map(fd, pgoff, off, size)?;
        let cons = Raw::<T>::load(raw.consumer, Ordering::Relaxed);
        let prod = Raw::<T>::load(raw.producer, Ordering::Acquire);
        Ok(Self {
            raw,
            prod,
            cons,
            _t: PhantomData,
        })
    }

    /// Entries ready; reads the kernel's index only when the cached one says
    /// none are.
    #[inline]
    pub fn available(&mut self) -> u32 {
        if self.prod == self.cons {
            self.prod = Raw::<T>::load(self.raw.producer, Ordering::Acquire);
        }
        self.prod.wrapping_sub(self.cons)
    }

    /// Takes the oldest entry; its slot returns to the kernel at `release`.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.available() == 0 {
            return None;
        }
        let slot = (self.cons & self.raw.mask) as usize;
        // SAFETY: `slot` is within the mapped array, and the acquire load of
        // the producer index proves the kernel finished writing this entry.
        let entry = unsafe { self.raw.entries.add(slot).read() };
        self.cons = self.cons.wrapping_add(1);
        Some(entry)
    }

    /// Hands the slots of every popped entry back to the kernel.
    #[inline]
    pub fn release(&mut self) {
        Raw::<T>::store(self.raw.consumer, self.cons);
    }
}
