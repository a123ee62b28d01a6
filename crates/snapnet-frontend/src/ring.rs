//! What the virtio-net queues need from a driver ring, so [`super::queue`] runs unchanged
//! (and monomorphised, with no per-packet dispatch) over split and packed virtqueues.
//!
//! The model is the split ring's: descriptors are named by an index `d < size` that also
//! names the packet buffer behind it; a chain is allocated, its descriptors written, and its
//! head pushed; pushed chains become visible to the device at `publish`. Completions are
//! numbered consecutively from `last_used` (a packed ring numbers its used descriptors so).

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestMemory;
use super::RawDesc;

/// Guest-physical addresses of the three parts of a virtqueue (split: the
/// descriptor table, avail and used rings; packed: the descriptor ring and
/// the driver and device event areas). Split sizes:
/// [`RingAddrs::part_sizes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table (16-byte aligned).
    pub desc: u64,
    /// Avail ring (2-byte aligned).
    pub avail: u64,
    /// Used ring (4-byte aligned).
    pub used: u64,
}

/// Counters of one ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Kick eventfd writes.
    pub kicks: u64,
    /// Used entries naming a descriptor that is not the head of an in-flight chain, or a used
    /// index that moved more than the ring size (the ring is then considered broken).
    pub bad_used: u64,
}

/// What a used-ring id refers to, per the driver's shadow state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// Out of range, or not the head of an in-flight chain.
    Invalid,
    /// A chain posted through `SplitRing::post_raw_chain`.
    Raw,
    /// A chain posted by the normal data path.
    Normal,
}

/// The driver side of one virtqueue, split or packed.
pub trait DriverRing {
    /// Entries.
    fn size(&self) -> u16;
    /// Guest-physical addresses (packed: descriptor ring, driver and device event areas in
    /// `desc`, `avail`, `used`, as vhost-user SET_VRING_ADDR carries them).
    fn addrs(&self) -> RingAddrs;
    /// The memory the ring lives in.
    fn mem(&self) -> &Arc<GuestMemory>;
    /// The eventfd the driver writes to kick the device.
    fn kick_fd(&self) -> &EventFd;
    /// A fresh kick eventfd (the old one is closed), as a frontend that
    /// re-sends SET_VRING_KICK has.
    fn new_kick_fd(&mut self) -> std::io::Result<&EventFd>;
    /// The eventfd the device writes to interrupt the driver.
    fn call_fd(&self) -> &EventFd;
    /// Counters.
    fn stats(&self) -> RingStats;
    /// Free descriptor indices.
    fn free_count(&self) -> usize;
    /// The free descriptor indices (any order).
    fn free_list(&self) -> &[u16];
    /// Takes `n` free descriptors linked into a chain; returns the head.
    fn alloc_chain(&mut self, n: u16) -> Option<u16>;
    /// The descriptor after `d` in the chain it was allocated in.
    fn next_of(&self, d: u16) -> u16;
    /// Sets descriptor `d` (`next` only means something to a split ring).
    fn write_desc(&mut self, d: u16, addr: u64, len: u32, flags: u16, next: u16);
    /// Queues the chain at `head`; it becomes visible at the next [`Self::publish`].
    fn push_avail(&mut self, head: u16);
    /// Publishes the pushed chains; returns whether the device wants a kick.
    fn publish(&mut self) -> bool;
    /// Writes the kick eventfd.
    fn kick(&mut self);
    /// Completions the device has published and the driver not yet consumed.
    fn used_pending(&mut self) -> u16;
    /// Completion number `pos` as (id, len).
    fn used_elem(&self, pos: u16) -> (u32, u32);
    /// Number of the next completion to consume.
    fn last_used(&self) -> u16;
    /// Marks `n` completions consumed.
    fn advance_used(&mut self, n: u16);
    /// Classifies a completion's id against the driver's shadow state.
    fn head_kind(&self, id: u32) -> HeadKind;
    /// Frees the chain headed by `id`; `None` (counted) when it is not in flight, else
    /// whether it was a raw chain.
    fn release(&mut self, id: u32) -> Option<bool>;
    /// Counts a malformed completion that `release` does not catch.
    fn count_bad_used(&mut self);
    /// Records the completion of a raw chain.
    fn push_raw_used(&mut self, id: u32, len: u32);
    /// Completions of raw chains, taken out.
    fn take_raw_used(&mut self) -> Vec<(u32, u32)>;
    /// Posts test descriptors verbatim (see the ring types); pushes but does not publish.
    fn post_raw_chain(&mut self, descs: &[RawDesc]) -> Option<u16>;
    /// Asks for an interrupt on the next completion.
    fn enable_interrupts(&mut self);
    /// Polling mode: no interrupts.
    fn disable_interrupts(&mut self);
    /// Clears a pending interrupt; returns whether one was pending.
    fn drain_call(&self) -> bool;
    /// The two 8-byte words of an indirect table entry in this ring's format (`next`,
    /// split only, is the entry's index in the table).
    fn indirect_entry(addr: u64, len: u32, flags: u16, next: u16) -> [u64; 2];

    /// [`Self::publish`], then kick when the device wants it. Returns whether it kicked.
    #[inline]
    fn publish_and_kick(&mut self) -> bool {
        let need = self.publish();
        if need {
            self.kick();
        }
        need
    }
}
