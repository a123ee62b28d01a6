//! Links between switch shards. A frame that one shard routes to a port of
//! another crosses one of these, tagged with the port it came from (so the
//! receiving shard learns where its sender lives) and the port it goes to
//! (so it is routed once, by the shard that saw it first). One link per
//! ordered pair of shards: frames of one input never overtake each other.

use std::sync::Arc;

use crate::engine::Doorbell;
use crate::packet::FrameHandle;

/// Where a frame crossing between shards came from and goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerTag {
    /// The port (switch-wide id) it entered the switch on.
    pub origin: u16,
    /// The port it goes to, or [`PeerTag::FLOOD`].
    pub to: u16,
    /// The output queue of `to` it goes to.
    pub queue: u16,
}

impl PeerTag {
    /// Flood in the receiving shard: to its ports of the frame's network.
    pub const FLOOD: u16 = u16::MAX;
}

/// Sending end: owned by the shard that routes.
pub struct PeerTx {
    ring: rtrb::Producer<(FrameHandle, PeerTag)>,
    doorbell: Arc<Doorbell>,
}

/// Receiving end, with its deficit-round-robin state: the receiving shard
/// serves it like one more input port whose weight is the sum of the
/// sending shard's ports' weights.
pub struct PeerRx {
    ring: rtrb::Consumer<(FrameHandle, PeerTag)>,
    doorbell: Arc<Doorbell>,
    /// The sending shard.
    pub from: usize,
    pub weight: u32,
    pub deficit: i64,
}

/// A link from shard `from` of `capacity` frames.
pub fn peer_link(from: usize, capacity: usize) -> std::io::Result<(PeerTx, PeerRx)> {
    let (tx, rx) = rtrb::RingBuffer::new(capacity);
    let doorbell = Arc::new(Doorbell::new()?);
    Ok((
        PeerTx {
            ring: tx,
            doorbell: doorbell.clone(),
        },
        PeerRx {
            ring: rx,
            doorbell,
            from,
            weight: 1,
            deficit: 0,
        },
    ))
}

impl PeerTx {
    #[inline]
    pub fn free(&self) -> usize {
        self.ring.slots()
    }

    #[inline]
    pub fn push(&mut self, frame: FrameHandle, tag: PeerTag) -> Result<(), FrameHandle> {
        self.ring
            .push((frame, tag))
            .map_err(|rtrb::PushError::Full((f, _))| f)
    }

    /// Ends a batch: wakes the receiving shard if it sleeps.
    #[inline]
    pub fn flush(&self) {
        self.doorbell.ring();
    }
}

impl PeerRx {
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    #[inline]
    pub fn peek(&self) -> Option<&(FrameHandle, PeerTag)> {
        self.ring.peek().ok()
    }

    #[inline]
    pub fn pop(&mut self) -> Option<(FrameHandle, PeerTag)> {
        self.ring.pop().ok()
    }

    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }
}
