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

/// Room for up to a batch's frames at the producer end of a link
/// ([`LinkTx::batch`]): frames written into it become visible to the
/// consumer all at once, with one store of the link's index, when it is
/// dropped (whatever was written is published then, so no frame can be
/// left behind in it).
pub struct LinkBatch<'a> {
    /// `None` once committed (in `drop`).
    chunk: Option<rtrb::chunks::WriteChunkUninit<'a, FrameHandle>>,
    written: usize,
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

    /// Room for up to `max` frames (fewer if the link has fewer free
    /// slots), published together when the batch is dropped. A data path
    /// that pushed frame by frame stored the link's index (and its own copy
    /// of it) after every frame, in an engine that waits for room in the
    /// store buffer behind its stores into guest memory.
    #[inline]
    pub fn batch(&mut self, max: usize) -> LinkBatch<'_> {
        let n = max.min(self.ring.slots());
        LinkBatch {
            chunk: self.ring.write_chunk_uninit(n).ok(),
            written: 0,
        }
    }
}

impl LinkBatch<'_> {
    /// Writes the next frame; gives it back when the batch is full.
    #[inline]
    pub fn push(&mut self, frame: FrameHandle) -> Result<(), FrameHandle> {
        let Some(chunk) = self.chunk.as_mut() else {
            return Err(frame);
        };
        let (first, second) = chunk.as_mut_slices();
        let slot = match self.written.checked_sub(first.len()) {
            None => first.get_mut(self.written),
            Some(i) => second.get_mut(i),
        };
        let Some(slot) = slot else {
            return Err(frame);
        };
        slot.write(frame);
        self.written += 1;
        Ok(())
    }
}

impl Drop for LinkBatch<'_> {
    fn drop(&mut self) {
        if let Some(chunk) = self.chunk.take() {
            // SAFETY: `push` wrote the chunk's slots in order, one per
            // frame, and counted them: the first `written` are initialized.
            unsafe { chunk.commit(self.written) };
        }
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

    /// Moves the oldest frames to `to`, in order, while `take` accepts
    /// them, at most `max` and no more than `to` has room for; `on_move`
    /// sees each frame on its way. Returns how many moved. Both links
    /// publish their index once for the whole move rather than once per
    /// frame: on the data path every store counts, as the engine waits
    /// for room in the store buffer behind its stores into guest memory.
    #[inline]
    pub fn move_while(
        &mut self,
        to: &mut LinkTx,
        max: usize,
        mut take: impl FnMut(&FrameHandle) -> bool,
        on_move: impl FnMut(FrameHandle) -> FrameHandle,
    ) -> usize {
        let n = max.min(self.ring.slots()).min(to.ring.slots());
        let Ok(chunk) = self.ring.read_chunk(n) else {
            return 0;
        };
        let (a, b) = chunk.as_slices();
        let k = a.iter().chain(b).take_while(|f| take(f)).count();
        if k == 0 {
            return 0;
        }
        let Ok(out) = to.ring.write_chunk_uninit(k) else {
            return 0;
        };
        // The chunk's iterator commits what it gave when dropped: exactly
        // the `k` frames the output took.
        out.fill_from_iter(chunk.into_iter().take(k).map(on_move))
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

    #[test]
    fn move_while_takes_a_prefix_within_room_and_keeps_the_rest_in_order() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut in_tx, mut in_rx) = link(8).unwrap();
        let (mut out_tx, mut out_rx) = link(3).unwrap();
        let mut indices = Vec::new();
        for len in [60, 61, 62, 63, 64, 99, 65] {
            let mut f = cache.alloc(128).unwrap();
            f.len = len;
            indices.push(f.index());
            in_tx.push(f).unwrap();
        }
        // Stops where `take` refuses: the refused frame stays first.
        let short = |f: &FrameHandle| f.len < 62;
        assert_eq!(in_rx.move_while(&mut out_tx, 8, short, |f| f), 2);
        assert_eq!(in_rx.peek().map(|f| f.len), Some(62));
        // Stops at `max`, then at the output's room; `on_move` sees each.
        let tag = |mut f: FrameHandle| {
            f.network = 7;
            f
        };
        assert_eq!(in_rx.move_while(&mut out_tx, 0, |_| true, tag), 0);
        assert_eq!(in_rx.move_while(&mut out_tx, 8, |_| true, tag), 1);
        assert_eq!(out_tx.free(), 0);
        assert_eq!(in_rx.move_while(&mut out_tx, 8, |_| true, tag), 0);
        let moved: Vec<_> = std::iter::from_fn(|| out_rx.pop()).collect();
        assert_eq!(
            moved
                .iter()
                .map(|f| (f.index(), f.network))
                .collect::<Vec<_>>(),
            vec![(indices[0], 0), (indices[1], 0), (indices[2], 7)]
        );
        let left: Vec<_> = std::iter::from_fn(|| in_rx.pop()).collect();
        assert_eq!(
            left.iter().map(FrameHandle::index).collect::<Vec<_>>(),
            indices[3..]
        );
        moved.into_iter().chain(left).for_each(|f| cache.free(f));
    }

    #[test]
    fn a_batch_publishes_its_frames_together_when_dropped() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut tx, mut rx) = link(4).unwrap();
        tx.push(cache.alloc(64).unwrap()).unwrap();
        let mut indices = Vec::new();
        {
            // Room for 3 (the link has 3 free slots), although 8 were asked.
            let mut batch = tx.batch(8);
            for _ in 0..3 {
                let f = cache.alloc(64).unwrap();
                indices.push(f.index());
                batch.push(f).unwrap();
            }
            let extra = cache.alloc(64).unwrap();
            cache.free(batch.push(extra).unwrap_err());
            assert_eq!(
                rx.len(),
                1,
                "nothing of the batch is visible before it ends"
            );
        }
        assert_eq!(rx.len(), 4);
        cache.free(rx.pop().unwrap());
        for want in indices {
            let f = rx.pop().unwrap();
            assert_eq!(f.index(), want);
            cache.free(f);
        }
        // An empty batch publishes nothing.
        drop(tx.batch(2));
        assert!(rx.is_empty());
    }
}
