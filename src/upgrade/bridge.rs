//! The ring a pair of bridge engines passes frame handles over while the
//! engines are split between the old and the new process (docs/upgrade.md):
//! single producer, single consumer, in a memfd both processes map.
//!
//! Handles cross in a fixed layout of their own ([`WireHandle`]), not as
//! `FrameHandle`s: the two processes may be different releases. The ring's
//! header names that layout, and a ring whose layout this binary does not
//! know is refused. The consumer's doorbell flags live in the ring, and its
//! eventfd is passed to the producer with the ring's fd.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use thiserror::Error;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::engine::DoorbellFlags;
use crate::packet::{FrameHandle, FramePool, Offload};
use crate::uplink::xsk::ring::{ConsumerRing, ProducerRing, RingOffsets};

/// "SNBRIDGE": what a bridge ring starts with.
const MAGIC: u64 = u64::from_le_bytes(*b"SNBRIDGE");
/// The layout of [`WireHandle`] this binary writes and reads.
const LAYOUT: u32 = 1;
/// Field offsets in the ring, each index on a cache line of its own.
const FLAGS_AT: usize = 16;
const HEAD_AT: usize = 64;
const TAIL_AT: usize = 128;
const DOORBELL_AT: usize = 192;
const SLOTS_AT: usize = 256;
/// Largest ring accepted (a link holds 1024 handles).
const MAX_CAPACITY: u32 = 1 << 16;

#[derive(Debug, Error)]
pub enum BridgeError {
    #[error("bridge ring: {0}")]
    Io(#[from] std::io::Error),
    #[error("bridge ring: {0}")]
    Invalid(&'static str),
    #[error("bridge ring: handle layout {0}, this binary knows {LAYOUT}")]
    Layout(u32),
}

/// A frame handle as it crosses between the processes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireHandle {
    pub index: u32,
    pub len: u32,
    pub network: u32,
    pub offset: u16,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub flags: u8,
    pub gso_type: u8,
}

// The ring's layout number names this shape: a change to it is a new LAYOUT.
const _: () = assert!(std::mem::size_of::<WireHandle>() == 24);

impl WireHandle {
    /// Gives up `frame` for the other process (which adopts it).
    pub fn from_frame(frame: FrameHandle) -> Self {
        let o = frame.offload;
        WireHandle {
            index: frame.index(),
            len: frame.len,
            network: frame.network,
            offset: frame.offset,
            hdr_len: o.hdr_len,
            gso_size: o.gso_size,
            csum_start: o.csum_start,
            csum_offset: o.csum_offset,
            flags: o.flags,
            gso_type: o.gso_type,
        }
    }

    /// Takes the frame over; `None` for a handle that does not fit `pool`.
    pub fn into_frame(self, pool: &FramePool) -> Option<FrameHandle> {
        let mut frame = pool.adopt(self.index, self.offset, self.len)?;
        frame.network = self.network;
        frame.offload = Offload {
            flags: self.flags,
            gso_type: self.gso_type,
            hdr_len: self.hdr_len,
            gso_size: self.gso_size,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
        };
        Some(frame)
    }
}

/// The ring's index and entry layout, for the mapped-ring types the AF_XDP
/// rings use (`uplink::xsk::ring`): same protocol, our own offsets.
fn ring_offsets() -> RingOffsets {
    RingOffsets {
        producer: HEAD_AT as u64,
        consumer: TAIL_AT as u64,
        // The ring types' flags word (AF_XDP's need-wakeup); unused here.
        flags: FLAGS_AT as u64,
        desc: SLOTS_AT as u64,
    }
}

/// One process's mapping of a ring's header: what it is, and the consumer's
/// doorbell flags.
struct Header {
    base: *mut u8,
    capacity: u32,
}

// SAFETY: the header is plain shared memory: its identity fields are written
// once before the fd is shared, and the doorbell flags are atomics.
unsafe impl Send for Header {}

impl Header {
    fn bytes(capacity: u32) -> usize {
        SLOTS_AT + capacity as usize * std::mem::size_of::<WireHandle>()
    }

    fn map(fd: &OwnedFd) -> Result<*mut u8, BridgeError> {
        // SAFETY: a fresh shared mapping of the first SLOTS_AT bytes of
        // `fd`; the result is checked and unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                SLOTS_AT,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(p.cast())
    }

    /// A new ring of `capacity` entries in a fresh memfd.
    fn create(capacity: u32) -> Result<(Self, OwnedFd), BridgeError> {
        if !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
            return Err(BridgeError::Invalid(
                "capacity is not a power of two up to 65536",
            ));
        }
        let fd: OwnedFd = memfd::MemfdOptions::new()
            .create("snapnet-bridge")
            .map_err(std::io::Error::other)?
            .into_file()
            .into();
        std::fs::File::from(fd.try_clone()?).set_len(Self::bytes(capacity) as u64)?;
        let base = Self::map(&fd)?;
        // SAFETY: the header lies in the mapping, which nothing else uses yet
        // (a fresh memfd is all zeroes: indices 0, nobody sleeping).
        unsafe {
            base.cast::<u64>().write(MAGIC);
            base.add(8).cast::<u32>().write(LAYOUT);
            base.add(12).cast::<u32>().write(capacity);
        }
        Ok((Header { base, capacity }, fd))
    }

    /// The header of the ring in `fd`, checked against the ring's size.
    fn open(fd: &OwnedFd) -> Result<Self, BridgeError> {
        let size = std::fs::File::from(fd.try_clone()?).metadata()?.len() as usize;
        if size < SLOTS_AT {
            return Err(BridgeError::Invalid("too small for a ring"));
        }
        let mut h = Header {
            base: Self::map(fd)?,
            capacity: 0,
        };
        // SAFETY: the identity fields lie in the mapping.
        let (magic, layout, capacity) = unsafe {
            (
                h.base.cast::<u64>().read(),
                h.base.add(8).cast::<u32>().read(),
                h.base.add(12).cast::<u32>().read(),
            )
        };
        if magic != MAGIC {
            return Err(BridgeError::Invalid("not a bridge ring"));
        }
        if layout != LAYOUT {
            return Err(BridgeError::Layout(layout));
        }
        if !capacity.is_power_of_two() || capacity > MAX_CAPACITY || Self::bytes(capacity) != size {
            return Err(BridgeError::Invalid(
                "capacity does not match the ring's size",
            ));
        }
        h.capacity = capacity;
        Ok(h)
    }

    fn doorbell(&self) -> &DoorbellFlags {
        // SAFETY: DOORBELL_AT is inside the mapping and aligned; all-zero
        // bytes are a valid DoorbellFlags (nobody sleeping, nothing rung).
        unsafe { &*self.base.add(DOORBELL_AT).cast::<DoorbellFlags>() }
    }
}

impl Drop for Header {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`, used no more.
        unsafe { libc::munmap(self.base.cast(), SLOTS_AT) };
    }
}

/// The producing end.
pub struct BridgeTx {
    ring: ProducerRing<WireHandle>,
    header: Header,
    wake: EventFd,
}

/// The consuming end.
pub struct BridgeRx {
    ring: ConsumerRing<WireHandle>,
    header: Header,
    fd: OwnedFd,
    wake: EventFd,
    refused: u64,
}

/// A new ring of `capacity` handles whose consumer is this process. The
/// producer (the other process) gets [`BridgeRx::ring_fd`] and
/// [`BridgeRx::wake_fd`].
pub fn consumer(capacity: u32) -> Result<BridgeRx, BridgeError> {
    let (header, fd) = Header::create(capacity)?;
    let ring = ConsumerRing::map(fd.as_fd(), 0, ring_offsets(), header.capacity)?;
    Ok(BridgeRx {
        ring,
        header,
        fd,
        wake: EventFd::new(EFD_NONBLOCK)?,
        refused: 0,
    })
}

/// The producing end of the other process's ring `ring_fd`, whose consumer
/// sleeps on `wake_fd`.
pub fn producer(ring_fd: OwnedFd, wake_fd: OwnedFd) -> Result<BridgeTx, BridgeError> {
    let header = Header::open(&ring_fd)?;
    let ring = ProducerRing::map(ring_fd.as_fd(), 0, ring_offsets(), header.capacity)?;
    // SAFETY: the peer sent this fd as the ring's eventfd; EventFd only
    // reads and writes 8-byte counts on it.
    let wake = unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(wake_fd)) };
    Ok(BridgeTx { ring, header, wake })
}

impl BridgeTx {
    /// Passes `frame` on (visible to the consumer at once); gives it back
    /// when the ring is full.
    pub fn push(&mut self, frame: FrameHandle) -> Result<(), FrameHandle> {
        if self.ring.free(1) == 0 {
            return Err(frame);
        }
        self.ring
            .push(WireHandle::from_frame(frame))
            .expect("a free slot was just seen");
        self.ring.commit();
        Ok(())
    }

    /// Ends a batch of pushes: wakes the consumer if it sleeps.
    pub fn flush(&self) {
        self.header.doorbell().ring(&self.wake);
    }
}

impl BridgeRx {
    /// The ring, for the producing process.
    pub fn ring_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The eventfd this consumer sleeps on, for the producing process and
    /// for this process's poller.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the EventFd owns this fd for as long as `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.wake.as_raw_fd()) }
    }

    /// Takes the next frame, if any. A handle that does not fit `pool` is
    /// skipped and counted ([`BridgeRx::refused`]).
    pub fn pop(&mut self, pool: &FramePool) -> Option<FrameHandle> {
        while let Some(wire) = self.ring.pop() {
            self.ring.release();
            match wire.into_frame(pool) {
                Some(frame) => return Some(frame),
                None => self.refused += 1,
            }
        }
        None
    }

    /// True when no handle waits in the ring.
    pub fn is_empty(&mut self) -> bool {
        self.ring.available() == 0
    }

    /// Handles refused because they did not fit the pool.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// About to sleep: re-check for work after this returns.
    pub fn arm(&self) {
        self.header.doorbell().arm();
    }

    /// Awake again.
    pub fn disarm(&self) {
        self.header.doorbell().disarm(&self.wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PoolConfig;
    use std::sync::Arc;

    fn pool() -> Arc<FramePool> {
        FramePool::new(&PoolConfig::small_for_tests()).unwrap()
    }

    /// A ring, with its producer as the other process would open it (its own
    /// mapping, its own copies of the fds).
    fn pair(capacity: u32) -> (BridgeTx, BridgeRx) {
        let rx = consumer(capacity).unwrap();
        let ring = rx.ring_fd().try_clone_to_owned().unwrap();
        let wake = rx.wake_fd().try_clone_to_owned().unwrap();
        (producer(ring, wake).unwrap(), rx)
    }

    #[test]
    fn frames_cross_whole_and_in_order_around_the_ring() {
        let pool = pool();
        let mut cache = pool.cache();
        let (mut tx, mut rx) = pair(8);
        let mut expected = std::collections::VecDeque::new();
        for round in 0..5u32 {
            for i in 0..6u32 {
                let mut f = cache.alloc(100 + i as usize).unwrap();
                f.network = round * 10 + i;
                f.offload.gso_size = 1448;
                f.offload.flags = 1;
                expected.push_back((f.index(), f.len, f.network));
                tx.push(f).unwrap();
            }
            tx.flush();
            for _ in 0..6 {
                let f = rx.pop(&pool).expect("a frame");
                let (index, len, network) = expected.pop_front().unwrap();
                assert_eq!((f.index(), f.len, f.network), (index, len, network));
                assert_eq!((f.offload.gso_size, f.offload.flags), (1448, 1));
                cache.free(f);
            }
            assert!(rx.pop(&pool).is_none());
        }
        // Full: the frame comes back.
        for _ in 0..8 {
            tx.push(cache.alloc(64).unwrap()).unwrap();
        }
        let extra = cache.alloc(64).unwrap();
        let extra = tx.push(extra).expect_err("the ring is full");
        cache.free(extra);
        while let Some(f) = rx.pop(&pool) {
            cache.free(f);
        }
        assert_eq!(rx.refused(), 0);
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames(), "no frame lost");
    }

    #[test]
    fn a_handle_that_does_not_fit_the_pool_is_refused_and_counted() {
        let pool = pool();
        let (mut tx, mut rx) = pair(4);
        // A peer with another pool: frame indices past this one's.
        let big = FramePool::new(&PoolConfig {
            frames: pool.total_frames().0 as u32 * 4,
            ..PoolConfig::small_for_tests()
        })
        .unwrap();
        let mut big_cache = big.cache();
        let mut far = big_cache.alloc(64).unwrap();
        while (far.index() as usize) < pool.total_frames().0 + pool.total_frames().1 {
            far = big_cache.alloc(64).unwrap();
        }
        tx.push(far).unwrap();
        assert!(rx.pop(&pool).is_none());
        assert_eq!(rx.refused(), 1);
    }

    #[test]
    fn a_sleeping_consumer_is_woken_by_the_next_batch() {
        let pool = pool();
        let mut cache = pool.cache();
        let (mut tx, mut rx) = pair(4);
        let readable = |rx: &BridgeRx| {
            let mut p = libc::pollfd {
                fd: rx.wake_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; no waiting.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        tx.push(cache.alloc(64).unwrap()).unwrap();
        tx.flush();
        assert!(!readable(&rx), "an awake consumer costs no eventfd write");
        rx.arm();
        tx.push(cache.alloc(64).unwrap()).unwrap();
        tx.flush();
        assert!(readable(&rx), "the sleeper was not woken");
        rx.disarm();
        assert!(!readable(&rx), "disarm drains the wake-up");
        while let Some(f) = rx.pop(&pool) {
            cache.free(f);
        }
    }

    #[test]
    fn what_is_not_a_ring_of_this_layout_is_refused() {
        let rx = consumer(16).unwrap();
        let wake = || rx.wake_fd().try_clone_to_owned().unwrap();
        // Not a ring at all.
        assert!(matches!(
            producer(wake(), wake()),
            Err(BridgeError::Invalid(_))
        ));
        // A layout from another release.
        let fd = rx.ring_fd().try_clone_to_owned().unwrap();
        let file = std::fs::File::from(fd.try_clone().unwrap());
        std::os::unix::fs::FileExt::write_all_at(&file, &7u32.to_le_bytes(), 8).unwrap();
        assert!(matches!(producer(fd, wake()), Err(BridgeError::Layout(7))));
        // A size that does not match the capacity.
        std::os::unix::fs::FileExt::write_all_at(&file, &LAYOUT.to_le_bytes(), 8).unwrap();
        file.set_len(Header::bytes(16) as u64 + 24).unwrap();
        let fd = rx.ring_fd().try_clone_to_owned().unwrap();
        assert!(matches!(producer(fd, wake()), Err(BridgeError::Invalid(_))));
        assert!(consumer(12).is_err(), "not a power of two");
    }

    #[test]
    fn two_threads_with_their_own_mappings_lose_and_reorder_nothing() {
        let pool = pool();
        let (mut tx, mut rx) = pair(64);
        const FRAMES: u32 = 200_000;
        std::thread::scope(|s| {
            let p = &pool;
            s.spawn(move || {
                let mut cache = p.cache();
                let mut n = 0;
                while n < FRAMES {
                    let mut f = cache.alloc(64).unwrap();
                    f.network = n;
                    match tx.push(f) {
                        Ok(()) => n += 1,
                        Err(f) => {
                            cache.free(f);
                            std::hint::spin_loop();
                        }
                    }
                }
                tx.flush();
            });
            let mut cache = pool.cache();
            let mut next = 0;
            while next < FRAMES {
                match rx.pop(&pool) {
                    Some(f) => {
                        assert_eq!(f.network, next, "lost or reordered");
                        next += 1;
                        cache.free(f);
                    }
                    None => std::hint::spin_loop(),
                }
            }
        });
    }
}
