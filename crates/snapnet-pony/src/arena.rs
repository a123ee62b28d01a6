//! The client-side allocator of the arena (the engine never allocates
//! there): first fit over a free list sorted by offset, blocks of whole
//! [`ALIGN`]-byte units, neighbours coalesced on free.

use std::collections::BTreeMap;

use crate::Error;

/// Alignment (and granularity) of arena allocations, relative to the
/// arena's start (which the client checks is itself aligned in the region).
pub const ALIGN: usize = 64;

/// A range of the arena: `offset` is relative to the arena's start.
///
/// [`crate::App::alloc`] hands these out; [`Buffer::slice`] narrows one to
/// a part (to send or read fewer bytes). Every operation checks the range
/// against the arena, so a buffer built by hand is harmless, but only an
/// allocation exactly as returned can be freed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Buffer {
    /// Arena-relative offset of the first byte.
    pub offset: u64,
    /// Bytes.
    pub len: usize,
}

impl Buffer {
    /// `len` bytes from `at` within this buffer.
    ///
    /// # Panics
    ///
    /// When the range is not inside the buffer (like slice indexing); see
    /// [`Buffer::checked_slice`].
    pub fn slice(&self, at: usize, len: usize) -> Buffer {
        self.checked_slice(at, len)
            .unwrap_or_else(|| panic!("slice {at}+{len} outside a buffer of {} bytes", self.len))
    }

    /// `len` bytes from `at` within this buffer, or `None` when the range is
    /// not inside it.
    pub fn checked_slice(&self, at: usize, len: usize) -> Option<Buffer> {
        let end = at.checked_add(len)?;
        (end <= self.len).then(|| Buffer {
            offset: self.offset + at as u64,
            len,
        })
    }

    /// Whether the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The free list and the live allocations.
#[derive(Debug)]
pub(crate) struct Arena {
    /// Free blocks: offset -> length, both multiples of [`ALIGN`], never
    /// adjacent (coalesced).
    free: BTreeMap<u64, u64>,
    /// Live allocations: offset -> (length asked for, block length).
    used: BTreeMap<u64, (usize, u64)>,
    capacity: u64,
}

impl Arena {
    /// An empty arena of `len` bytes (the tail beyond a multiple of
    /// [`ALIGN`] is unused).
    pub(crate) fn new(len: u64) -> Self {
        let capacity = len - len % ALIGN as u64;
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Self {
            free,
            used: BTreeMap::new(),
            capacity,
        }
    }

    /// Bytes usable in all.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes free (possibly fragmented).
    pub(crate) fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    /// The lowest free block that fits `len` bytes.
    pub(crate) fn alloc(&mut self, len: usize) -> Result<Buffer, Error> {
        if len == 0 {
            return Err(Error::InvalidArgument("zero-length allocation"));
        }
        let size = u64::try_from(len)
            .ok()
            .and_then(|l| l.checked_next_multiple_of(ALIGN as u64))
            .ok_or(Error::OutOfArena)?;
        let (&offset, &block) = self
            .free
            .iter()
            .find(|(_, &block)| block >= size)
            .ok_or(Error::OutOfArena)?;
        self.free.remove(&offset);
        if block > size {
            self.free.insert(offset + size, block - size);
        }
        self.used.insert(offset, (len, size));
        Ok(Buffer { offset, len })
    }

    /// Gives back an allocation, merging it with free neighbours.
    pub(crate) fn free(&mut self, buf: Buffer) -> Result<(), Error> {
        match self.used.get(&buf.offset) {
            Some(&(len, _)) if len == buf.len => {}
            _ => return Err(Error::NotAllocated),
        }
        let (_, mut size) = self.used.remove(&buf.offset).expect("just found");
        let mut offset = buf.offset;
        if let Some(next) = self.free.remove(&(offset + size)) {
            size += next;
        }
        if let Some((&prev, &prev_len)) = self.free.range(..offset).next_back() {
            if prev + prev_len == offset {
                self.free.remove(&prev);
                offset = prev;
                size += prev_len;
            }
        }
        self.free.insert(offset, size);
        Ok(())
    }

    #[cfg(test)]
    fn free_blocks(&self) -> Vec<(u64, u64)> {
        self.free.iter().map(|(&o, &l)| (o, l)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_aligned_first_fit_and_disjoint() {
        let mut a = Arena::new(4096);
        let b1 = a.alloc(1).unwrap();
        let b2 = a.alloc(65).unwrap();
        let b3 = a.alloc(64).unwrap();
        assert_eq!((b1.offset, b1.len), (0, 1));
        assert_eq!((b2.offset, b2.len), (64, 65));
        assert_eq!((b3.offset, b3.len), (192, 64));
        assert_eq!(a.free_bytes(), 4096 - 256);
        // First fit: a hole at 0 that fits is reused before the tail.
        a.free(b1).unwrap();
        let b4 = a.alloc(10).unwrap();
        assert_eq!(b4.offset, 0);
        // Too big for the hole: goes to the tail.
        a.free(b4).unwrap();
        let b5 = a.alloc(100).unwrap();
        assert_eq!(b5.offset, 256);
        for b in [&b2, &b3, &b5] {
            assert_eq!(b.offset % ALIGN as u64, 0);
        }
    }

    #[test]
    fn free_coalesces_both_neighbours() {
        let mut a = Arena::new(64 * 8);
        let bs: Vec<Buffer> = (0..8).map(|_| a.alloc(64).unwrap()).collect();
        assert!(matches!(a.alloc(1), Err(Error::OutOfArena)));
        let mut it = bs.into_iter();
        let (b0, b1, b2, b3) = (
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
            it.next().unwrap(),
        );
        a.free(b0).unwrap();
        a.free(b2).unwrap();
        assert_eq!(a.free_blocks(), vec![(0, 64), (128, 64)]);
        a.free(b1).unwrap(); // joins both sides
        assert_eq!(a.free_blocks(), vec![(0, 192)]);
        a.free(b3).unwrap(); // joins the previous block
        assert_eq!(a.free_blocks(), vec![(0, 256)]);
        for b in it {
            a.free(b).unwrap();
        }
        assert_eq!(a.free_blocks(), vec![(0, 512)]);
        // Whole arena again.
        let all = a.alloc(512).unwrap();
        assert_eq!(all.offset, 0);
        a.free(all).unwrap();
    }

    #[test]
    fn exhaustion_and_bad_frees() {
        let mut a = Arena::new(1000); // 960 usable
        assert_eq!(a.capacity(), 960);
        assert!(matches!(a.alloc(961), Err(Error::OutOfArena)));
        assert!(matches!(a.alloc(usize::MAX), Err(Error::OutOfArena)));
        assert!(matches!(a.alloc(0), Err(Error::InvalidArgument(_))));
        let b = a.alloc(960).unwrap();
        assert!(matches!(a.alloc(1), Err(Error::OutOfArena)));
        // A slice, a forged buffer and a double free are refused.
        assert!(matches!(a.free(b.slice(0, 5)), Err(Error::NotAllocated)));
        assert!(matches!(
            a.free(Buffer {
                offset: 64,
                len: 64
            }),
            Err(Error::NotAllocated)
        ));
        a.free(b.clone()).unwrap();
        assert!(matches!(a.free(b), Err(Error::NotAllocated)));
        assert_eq!(a.free_bytes(), 960);
        assert_eq!(Arena::new(10).free_bytes(), 0);
    }

    #[test]
    fn random_alloc_free_keeps_the_invariants() {
        let mut a = Arena::new(1 << 16);
        let mut live: Vec<Buffer> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 != 0 || live.is_empty() {
                if let Ok(b) = a.alloc((x >> 8) as usize % 3000 + 1) {
                    assert_eq!(b.offset % ALIGN as u64, 0);
                    assert!(b.offset + b.len as u64 <= a.capacity());
                    for o in &live {
                        let disjoint = b.offset + b.len as u64 <= o.offset
                            || o.offset + o.len as u64 <= b.offset;
                        assert!(disjoint, "{b:?} overlaps {o:?}");
                    }
                    live.push(b);
                }
            } else {
                let b = live.swap_remove((x >> 8) as usize % live.len());
                a.free(b).unwrap();
            }
            let blocks = a.free_blocks();
            for w in blocks.windows(2) {
                assert!(w[0].0 + w[0].1 < w[1].0, "not coalesced: {w:?}");
            }
        }
        for b in live {
            a.free(b).unwrap();
        }
        assert_eq!(a.free_blocks(), vec![(0, 1 << 16)]);
    }
}
