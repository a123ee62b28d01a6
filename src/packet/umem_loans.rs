//! Frames lent to the kernel through AF_XDP rings.
//!
//! While a frame sits in a fill or TX ring it belongs to the kernel, and no
//! `FrameHandle` may exist for it. [`UmemLoans`] turns a handle into a UMEM
//! address and back, and remembers which frames are out, so that an address
//! the kernel returns can only ever become one handle, and so that every frame
//! still lent when a socket closes goes back to the pool.

use std::sync::Arc;

use super::{FrameHandle, FramePool};

/// The lending ledger of one AF_XDP socket.
pub struct UmemLoans {
    /// One bit per small frame: set while the frame is lent.
    lent: Vec<u64>,
    count: usize,
    chunk: u64,
    small_frames: u32,
}

impl UmemLoans {
    pub fn new(pool: &Arc<FramePool>) -> Self {
        let (small, _) = pool.total_frames();
        let (_, _, chunk) = pool.umem_region();
        Self {
            lent: vec![0; small.div_ceil(64)],
            count: 0,
            chunk: u64::from(chunk),
            small_frames: small as u32,
        }
    }

    /// Frames lent right now.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The index of every frame lent, for an upgrade's new process, which
    /// takes the socket and with it the loans ([`Self::with_lent`]).
    pub fn lent(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.count);
        for (word, bits) in self.lent.iter().enumerate() {
            let mut b = *bits;
            while b != 0 {
                out.push(word as u32 * 64 + b.trailing_zeros());
                b &= b - 1;
            }
        }
        out
    }

    /// The ledger of a socket whose frames `lent` are out (from another
    /// process's [`Self::lent`]); `None` when one is not a small frame of
    /// this pool or is named twice.
    pub fn with_lent(pool: &Arc<FramePool>, lent: &[u32]) -> Option<Self> {
        let mut loans = Self::new(pool);
        for &index in lent {
            if index >= loans.small_frames {
                return None;
            }
            let (word, bit) = (index as usize / 64, index % 64);
            if loans.lent[word] & (1 << bit) != 0 {
                return None;
            }
            loans.lent[word] |= 1 << bit;
            loans.count += 1;
        }
        Some(loans)
    }

    /// Lends `frame` and returns the UMEM address of its packet. Large frames
    /// cross UMEM chunks and cannot be lent: they are given back.
    #[inline]
    pub fn lend(&mut self, frame: FrameHandle) -> Result<u64, FrameHandle> {
        if frame.index >= self.small_frames {
            return Err(frame);
        }
        let (word, bit) = (frame.index as usize / 64, frame.index % 64);
        self.lent[word] |= 1 << bit;
        self.count += 1;
        Ok(u64::from(frame.index) * self.chunk + u64::from(frame.offset))
    }

    /// Takes back the frame at UMEM address `addr` holding `len` packet
    /// bytes. `None` when that frame is not lent (an address the kernel
    /// should never return) or the length does not fit the frame.
    #[inline]
    pub fn reclaim(&mut self, addr: u64, len: u32) -> Option<FrameHandle> {
        let index = addr / self.chunk;
        let offset = addr % self.chunk;
        if index >= u64::from(self.small_frames) || offset + u64::from(len) > self.chunk {
            return None;
        }
        let index = index as u32;
        let (word, bit) = (index as usize / 64, index % 64);
        if self.lent[word] & (1 << bit) == 0 {
            return None;
        }
        self.lent[word] &= !(1 << bit);
        self.count -= 1;
        Some(FrameHandle::new(index, offset as u16, len))
    }

    /// Every frame still lent. Only for after the socket is closed: the
    /// kernel no longer holds them then.
    pub fn reclaim_all(&mut self) -> Vec<FrameHandle> {
        let mut frames = Vec::with_capacity(self.count);
        for (word, bits) in self.lent.iter_mut().enumerate() {
            let mut b = std::mem::take(bits);
            while b != 0 {
                let bit = b.trailing_zeros();
                b &= b - 1;
                frames.push(FrameHandle::new(
                    word as u32 * 64 + bit,
                    super::pool::HEADROOM,
                    0,
                ));
            }
        }
        self.count = 0;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PoolConfig;

    #[test]
    fn loans_cross_as_frame_indices() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let mut loans = UmemLoans::new(&pool);
        let addrs: Vec<u64> = (0..70)
            .map(|_| loans.lend(cache.alloc(64).unwrap()).unwrap())
            .collect();
        let lent = loans.lent();
        assert_eq!(lent.len(), 70);
        let mut taken = UmemLoans::with_lent(&pool, &lent).unwrap();
        assert_eq!(taken.count(), 70);
        for a in &addrs {
            cache.free(taken.reclaim(*a, 60).expect("lent on the other side"));
        }
        assert!(UmemLoans::with_lent(&pool, &[lent[0], lent[0]]).is_none());
        assert!(UmemLoans::with_lent(&pool, &[u32::MAX]).is_none());
        drop(cache);
        assert_eq!(
            pool.free_frames(),
            pool.total_frames(),
            "each came back once"
        );
    }

    #[test]
    fn an_address_becomes_one_handle_once() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let mut loans = UmemLoans::new(&pool);
        let f = cache.alloc(64).unwrap();
        let index = f.index();
        let addr = loans.lend(f).unwrap();
        assert_eq!(addr, u64::from(index) * 4096 + 256);
        assert!(loans.reclaim(addr, 5000).is_none(), "longer than a chunk");
        let back = loans.reclaim(addr + 10, 60).unwrap();
        assert_eq!((back.index(), back.offset, back.len), (index, 266, 60));
        assert!(loans.reclaim(addr, 60).is_none(), "not lent any more");
        assert!(loans.reclaim(u64::MAX - 5, 60).is_none());
        cache.free(back);
        let big = cache.alloc(20_000).unwrap();
        let big = loans.lend(big).unwrap_err();
        cache.free(big);
        for _ in 0..100 {
            let f = cache.alloc(64).unwrap();
            loans.lend(f).unwrap();
        }
        assert_eq!(loans.count(), 100);
        for f in loans.reclaim_all() {
            cache.free(f);
        }
        assert_eq!(loans.count(), 0);
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames());
    }
}
