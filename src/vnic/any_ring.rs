//! The engine's view of one guest ring, split or packed: what the engine
//! asks of a ring between batches (is there new work, how full is it, kicks
//! on or off), answered for either layout. The per-packet code gets the
//! concrete view (`guest_tx`/`guest_rx` or `packed_tx`/`packed_rx`).
//!
//! A position the engine keeps in the queue (`next_avail`) is an index for
//! a split ring and a slot with the wrap counter in bit 15 for a packed one.

use super::guest_memory::GuestMap;
use super::guest_ring::{RingAddrs, RingView};
use super::packed_ring::{PackedView, Pos};

/// A checked view of a split or packed ring.
pub enum GuestRing {
    Split(RingView),
    Packed(PackedView),
}

impl GuestRing {
    /// The view of the negotiated layout; `None` when `addrs` do not fit it.
    pub fn new(map: &GuestMap, addrs: RingAddrs, packed: bool) -> Option<Self> {
        if packed {
            PackedView::new(map, addrs).map(GuestRing::Packed)
        } else {
            RingView::new(map, addrs).map(GuestRing::Split)
        }
    }

    /// A packed position from the queue, when it lies on the ring.
    #[inline]
    fn packed_pos(ring: &PackedView, at: u16) -> Option<Pos> {
        let pos = Pos::from_base(at);
        (pos.slot < ring.size()).then_some(pos)
    }

    /// Whether the driver made something available at or after `seen`.
    #[inline]
    pub fn has_new(&self, seen: u16) -> bool {
        match self {
            GuestRing::Split(r) => r.avail_idx() != seen,
            GuestRing::Packed(r) => Self::packed_pos(r, seen).is_some_and(|p| r.avail(p).is_some()),
        }
    }

    /// Entries available from `seen` on, at most the ring size. For a packed
    /// ring this is a lower bound from a few probes: the driver fills slots
    /// in order, so if slot `seen + k` is available, so is everything before.
    #[inline]
    pub fn backlog(&self, seen: u16) -> u16 {
        match self {
            GuestRing::Split(r) => r.avail_idx().wrapping_sub(seen).min(r.size()),
            GuestRing::Packed(r) => {
                let Some(at) = Self::packed_pos(r, seen) else {
                    return 0;
                };
                let size = r.size();
                [size - 1, size / 2, size / 4, 0]
                    .into_iter()
                    .find(|&k| r.avail(at.advance(k, size)).is_some())
                    .map_or(0, |k| k + 1)
            }
        }
    }

    /// Asks the driver to kick (or not) when it adds buffers; with EVENT_IDX
    /// once it passes `next_avail`.
    #[inline]
    pub fn set_kicks(&self, event_idx: bool, enable: bool, next_avail: u16) {
        match self {
            GuestRing::Split(r) => r.set_kicks(event_idx, enable, next_avail),
            GuestRing::Packed(r) => r.set_kicks(event_idx, enable, Pos::from_base(next_avail)),
        }
    }
}
