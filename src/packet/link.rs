//! Single-producer single-consumer links between engines.
//!
//! Built on `rtrb` (a well-kept, lock-free SPSC ring with cached indices and
//! chunked access). A link moves frame handles, never bytes. The doorbell lets
//! a consumer that wants to sleep be woken by the producer's next batch.

use std::sync::Arc;

use super::FrameHandle;
use crate::engine::Doorbell;

/// Producer end of a link.
pub struct LinkTx {
    ring: rtrb::Producer<FrameHandle>,
    doorbell: Arc<Doorbell>,
}

/// Consumer end of a link.
pub struct LinkRx {
    ring: rtrb::Consumer<FrameHandle>,
    doorbell: Arc<Doorbell>,
}

/// A link of `capacity` frame handles (rounded by `rtrb` as it sees fit).
pub fn link(capacity: usize) -> std::io::Result<(LinkTx, LinkRx)> {
    let (ring_tx, ring_rx) = rtrb::RingBuffer::new(capacity);
    let doorbell = Arc::new(Doorbell::new()?);
    Ok((
        LinkTx {
            ring: ring_tx,
            doorbell: doorbell.clone(),
        },
        LinkRx {
            ring: ring_rx,
            doorbell,
        },
    ))
}

impl LinkTx {
    /// Free slots right now.
    pub fn free(&self) -> usize {
        self.ring.slots()
    }

    /// Frames pushed that the consumer has not taken yet.
    pub fn pending(&self) -> usize {
        self.ring.buffer().capacity() - self.ring.slots()
    }

    /// Pushes one frame; gives it back when the link is full.
    #[inline]
    pub fn push(&mut self, frame: FrameHandle) -> Result<(), FrameHandle> {
        self.ring.push(frame).map_err(|rtrb::PushError::Full(f)| f)
    }

    /// Ends a batch of pushes: wakes the consumer if it sleeps.
    #[inline]
    pub fn flush(&self) {
        self.doorbell.ring();
    }
}

impl LinkRx {
    /// Frames waiting right now.
    #[inline]
    pub fn len(&self) -> usize {
        self.ring.slots()
    }

    /// True when no frame waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// Takes the oldest frame.
    #[inline]
    pub fn pop(&mut self) -> Option<FrameHandle> {
        self.ring.pop().ok()
    }

    /// Looks at the oldest frame without taking it (for backpressure).
    #[inline]
    pub fn peek(&self) -> Option<&FrameHandle> {
        self.ring.peek().ok()
    }

    /// The doorbell a sleeping consumer waits on.
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{FramePool, PoolConfig};

    #[test]
    fn frames_cross_in_order_and_full_link_gives_frame_back() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut tx, mut rx) = link(4).unwrap();
        let mut indices = Vec::new();
        for _ in 0..4 {
            let f = cache.alloc(64).unwrap();
            indices.push(f.index());
            tx.push(f).unwrap();
        }
        let extra = cache.alloc(64).unwrap();
        let back = tx.push(extra).unwrap_err();
        cache.free(back);
        assert_eq!(rx.len(), 4);
        for want in indices {
            let f = rx.pop().unwrap();
            assert_eq!(f.index(), want);
            cache.free(f);
        }
        assert!(rx.pop().is_none());
    }
}
