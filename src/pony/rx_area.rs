//! Space in an application's receive area: where the engine puts a message
//! as it arrives, until the application releases it. First fit over a free
//! list; every allocation is remembered, so a RELEASE from the application
//! must name one exactly.

use std::collections::BTreeMap;

use snapnet_pony::abi::RX_ALIGN;

pub struct RxArea {
    /// Free ranges: offset -> length (adjacent ones merged).
    free: BTreeMap<u64, u64>,
    /// Given out: offset -> length.
    taken: BTreeMap<u64, u64>,
    used: u64,
    len: u64,
}

impl RxArea {
    pub fn new(len: u64) -> Self {
        let len = len - len % RX_ALIGN as u64;
        Self {
            free: BTreeMap::from([(0, len)]),
            taken: BTreeMap::new(),
            used: 0,
            len,
        }
    }

    /// Bytes given out now.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Bytes the area holds in all.
    pub fn capacity(&self) -> u64 {
        self.len
    }

    /// Room for `len` bytes (at least one alignment unit), if there is.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let size = len.max(1).div_ceil(RX_ALIGN as u64) * RX_ALIGN as u64;
        let (&at, &free) = self.free.iter().find(|(_, &l)| l >= size)?;
        self.free.remove(&at);
        if free > size {
            self.free.insert(at + size, free - size);
        }
        self.taken.insert(at, size);
        self.used += size;
        Some(at)
    }

    /// Gives back an allocation; `false` if `offset` is not one (the
    /// application's RELEASE named something else).
    pub fn release(&mut self, offset: u64) -> bool {
        let Some(size) = self.taken.remove(&offset) else {
            return false;
        };
        self.used -= size;
        let (mut at, mut size) = (offset, size);
        if let Some((&next, &l)) = self.free.range(at + size..).next() {
            if next == at + size {
                self.free.remove(&next);
                size += l;
            }
        }
        if let Some((&prev, &l)) = self.free.range(..at).next_back() {
            if prev + l == at {
                self.free.remove(&prev);
                at = prev;
                size += l;
            }
        }
        self.free.insert(at, size);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_aligned_and_merges_on_release() {
        let mut a = RxArea::new(1024);
        let x = a.alloc(1).unwrap();
        let y = a.alloc(100).unwrap();
        let z = a.alloc(64).unwrap();
        assert_eq!((x, y, z), (0, 64, 192));
        assert_eq!(a.used(), 256);
        assert!(a.alloc(1024).is_none());
        assert!(!a.release(65));
        assert!(a.release(y));
        assert!(!a.release(y));
        assert!(a.release(x));
        assert!(a.release(z));
        assert_eq!(a.used(), 0);
        assert_eq!(a.alloc(1024), Some(0));
    }
}
