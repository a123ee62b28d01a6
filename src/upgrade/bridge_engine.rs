//! The bridge engine: while a vNIC's engines run in one process and the
//! switch in the other (an upgrade's handover, docs/upgrade.md), it carries
//! each queue's frames across, one [`Lane`] per queue.
//!
//! The same engine runs on both sides. In the old process its local links
//! are the switch port the vNIC used; in the new one they are the moved
//! queue engines' links. A frame whose destination is full waits in the lane
//! and goes first next time, as a unicast frame waits in the switch: nothing
//! is dropped and a queue's order is kept.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::bridge::{BridgeRx, BridgeTx};
use crate::engine::Engine;
use crate::packet::{FrameHandle, FramePool, LinkRx, LinkTx};

/// One queue's two directions across the process boundary.
pub struct Lane {
    from_local: LinkRx,
    to_peer: BridgeTx,
    from_peer: BridgeRx,
    to_local: LinkTx,
    /// A frame the peer's ring had no room for.
    waiting_for_peer: Option<FrameHandle>,
    /// A frame the local link had no room for.
    waiting_for_local: Option<FrameHandle>,
}

impl Lane {
    /// A lane from this process's link pair and the two rings to and from
    /// the peer.
    pub fn new(
        from_local: LinkRx,
        to_peer: BridgeTx,
        from_peer: BridgeRx,
        to_local: LinkTx,
    ) -> Self {
        Self {
            from_local,
            to_peer,
            from_peer,
            to_local,
            waiting_for_peer: None,
            waiting_for_local: None,
        }
    }

    /// Moves up to `budget` frames each way; returns (to the peer, from the
    /// peer, times a full destination made a frame wait).
    fn pass(&mut self, pool: &FramePool, budget: usize) -> (usize, usize, u64) {
        let mut waits = 0;
        let mut out = 0;
        while out < budget {
            let Some(frame) = self
                .waiting_for_peer
                .take()
                .or_else(|| self.from_local.pop())
            else {
                break;
            };
            if let Err(frame) = self.to_peer.push(frame) {
                self.waiting_for_peer = Some(frame);
                waits += 1;
                break;
            }
            out += 1;
        }
        let mut inward = 0;
        while inward < budget {
            let Some(frame) = self
                .waiting_for_local
                .take()
                .or_else(|| self.from_peer.pop(pool))
            else {
                break;
            };
            if let Err(frame) = self.to_local.push(frame) {
                self.waiting_for_local = Some(frame);
                waits += 1;
                break;
            }
            inward += 1;
        }
        if out > 0 {
            self.to_peer.flush();
        }
        if inward > 0 {
            self.to_local.flush();
        }
        (out, inward, waits)
    }

    fn has_work(&mut self) -> bool {
        self.waiting_for_peer.is_some()
            || self.waiting_for_local.is_some()
            || !self.from_local.is_empty()
            || !self.from_peer.is_empty()
    }

    /// The lane's local links, once the handover is over and the bridge goes
    /// away (the frames still in the rings were passed on by then: see
    /// [`BridgeEngine::is_drained`], or taken with [`Self::take_held`] and
    /// [`Self::drain_peer`]).
    pub fn into_links(self) -> (LinkRx, LinkTx) {
        (self.from_local, self.to_local)
    }

    /// The frames the lane holds because a destination was full: (for the
    /// peer, for this process's link). Each is older than what still waits
    /// behind it (in the local link, in the peer's ring). Only once the
    /// lane's engine has stopped.
    pub fn take_held(&mut self) -> (Option<FrameHandle>, Option<FrameHandle>) {
        (self.waiting_for_peer.take(), self.waiting_for_local.take())
    }

    /// Every frame the peer's ring still holds, oldest first. Only once the
    /// peer's engine has stopped (nothing more comes).
    pub fn drain_peer(&mut self, pool: &FramePool) -> Vec<FrameHandle> {
        std::iter::from_fn(|| self.from_peer.pop(pool)).collect()
    }
}

/// What a bridge moved, readable from any thread.
#[derive(Default)]
pub struct BridgeCounters {
    pub to_peer: AtomicU64,
    pub from_peer: AtomicU64,
    /// Handles from the peer that did not fit this process's pool (dropped).
    pub refused: AtomicU64,
    /// Times a frame waited because its destination was full.
    pub waits: AtomicU64,
}

/// The engine: a vNIC's lanes, one per queue pair.
pub struct BridgeEngine {
    name: String,
    pool: Arc<FramePool>,
    lanes: Vec<Lane>,
    counters: Arc<BridgeCounters>,
}

impl BridgeEngine {
    pub fn new(name: String, pool: Arc<FramePool>, lanes: Vec<Lane>) -> Self {
        Self {
            name,
            pool,
            lanes,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> Arc<BridgeCounters> {
        self.counters.clone()
    }

    /// True when no frame is in the bridge: every lane's inputs are empty and
    /// no frame waits. The handover takes the bridge away only then.
    pub fn is_drained(&mut self) -> bool {
        !self.lanes.iter_mut().any(Lane::has_work)
    }

    /// The lanes, to take their links back once drained.
    pub fn into_lanes(self) -> Vec<Lane> {
        self.lanes
    }
}

impl Engine for BridgeEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, budget: usize) -> usize {
        let (mut out, mut inward, mut waits) = (0, 0, 0);
        let mut refused = 0;
        for lane in &mut self.lanes {
            let before = lane.from_peer.refused();
            let (o, i, w) = lane.pass(&self.pool, budget);
            out += o;
            inward += i;
            waits += w;
            refused += lane.from_peer.refused() - before;
        }
        let c = &self.counters;
        c.to_peer.fetch_add(out as u64, Ordering::Relaxed);
        c.from_peer.fetch_add(inward as u64, Ordering::Relaxed);
        c.waits.fetch_add(waits, Ordering::Relaxed);
        c.refused.fetch_add(refused, Ordering::Relaxed);
        out + inward
    }

    fn wake_fds(&self) -> Vec<RawFd> {
        self.lanes
            .iter()
            .flat_map(|l| {
                [
                    l.from_local.doorbell().as_raw_fd(),
                    l.from_peer.wake_fd().as_raw_fd(),
                ]
            })
            .collect()
    }

    fn arm(&mut self) -> bool {
        let mut work = false;
        for lane in &mut self.lanes {
            lane.from_local.doorbell().arm();
            lane.from_peer.arm();
            // A waiting frame keeps the engine polling: a full destination
            // rings no doorbell when it drains.
            work |= lane.has_work();
        }
        work
    }

    fn disarm(&mut self) {
        for lane in &mut self.lanes {
            lane.from_local.doorbell().disarm();
            lane.from_peer.disarm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{link, PoolConfig};
    use crate::upgrade::bridge::{consumer, producer};

    /// Rings both ways between two sides; side A's ends, side B's ends.
    fn rings(capacity: u32) -> ((BridgeTx, BridgeRx), (BridgeTx, BridgeRx)) {
        let a_in = consumer(capacity).unwrap();
        let b_in = consumer(capacity).unwrap();
        let tx_to = |rx: &BridgeRx| {
            producer(
                rx.ring_fd().try_clone_to_owned().unwrap(),
                rx.wake_fd().try_clone_to_owned().unwrap(),
            )
            .unwrap()
        };
        let a_out = tx_to(&b_in);
        let b_out = tx_to(&a_in);
        ((a_out, a_in), (b_out, b_in))
    }

    struct Side {
        pool: Arc<FramePool>,
        engine: BridgeEngine,
        /// What this side's local engines send into the bridge.
        send: LinkTx,
        /// What the bridge delivers to this side's local engines.
        receive: LinkRx,
    }

    fn side(pool: Arc<FramePool>, ring: (BridgeTx, BridgeRx), link_capacity: usize) -> Side {
        let (send, from_local) = link(link_capacity).unwrap();
        let (to_local, receive) = link(link_capacity).unwrap();
        let (to_peer, from_peer) = ring;
        let lane = Lane::new(from_local, to_peer, from_peer, to_local);
        Side {
            engine: BridgeEngine::new("bridge".into(), pool.clone(), vec![lane]),
            pool,
            send,
            receive,
        }
    }

    #[test]
    fn frames_cross_both_ways_between_two_mappings_of_one_pool_in_order_and_all() {
        let cfg = PoolConfig::small_for_tests();
        let old_pool = FramePool::new(&cfg).unwrap();
        let new_pool =
            FramePool::attach(&cfg, old_pool.memfd().try_clone_to_owned().unwrap()).unwrap();
        let (small, large) = old_pool.take_free(256, 4);
        new_pool.give_free(&small, &large).unwrap();

        // Small rings and links, so that both directions fill up and wait.
        let (a_ring, b_ring) = rings(8);
        let mut old = side(old_pool.clone(), a_ring, 16);
        let mut new = side(new_pool.clone(), b_ring, 4);
        let mut old_cache = old.pool.cache();
        let mut new_cache = new.pool.cache();

        const FRAMES: u32 = 2_000;
        let (mut sent_old, mut sent_new, mut got_old, mut got_new) = (0u32, 0u32, 0u32, 0u32);
        let mut rounds = 0;
        while got_old < FRAMES || got_new < FRAMES {
            rounds += 1;
            assert!(rounds < 100_000, "stuck: {got_old} {got_new}");
            while sent_old < FRAMES {
                let Some(mut f) = old_cache.alloc(64) else {
                    break;
                };
                let at = f.offset as usize;
                old.pool.frame_mut(&mut f)[at..][..4].copy_from_slice(&sent_old.to_le_bytes());
                f.len = 4;
                f.network = sent_old;
                match old.send.push(f) {
                    Ok(()) => sent_old += 1,
                    Err(f) => {
                        old_cache.free(f);
                        break;
                    }
                }
            }
            while sent_new < FRAMES {
                // Frames drift to the side that frees them: a side that ran
                // short sends again once frames come back to it.
                let Some(mut f) = new_cache.alloc(64) else {
                    break;
                };
                f.network = sent_new;
                match new.send.push(f) {
                    Ok(()) => sent_new += 1,
                    Err(f) => {
                        new_cache.free(f);
                        break;
                    }
                }
            }
            old.engine.poll(32);
            new.engine.poll(32);
            // The new side's local engines are slow: they take one frame a round.
            if let Some(f) = new.receive.pop() {
                assert_eq!(
                    f.network, got_new,
                    "lost or reordered toward the new process"
                );
                assert_eq!(new.pool.bytes(&f), got_new.to_le_bytes(), "the same bytes");
                got_new += 1;
                new_cache.free(f);
            }
            while let Some(f) = old.receive.pop() {
                assert_eq!(
                    f.network, got_old,
                    "lost or reordered toward the old process"
                );
                got_old += 1;
                old_cache.free(f);
            }
        }
        let c = new.engine.counters();
        assert!(
            c.waits.load(Ordering::Relaxed) > 0,
            "the slow side made frames wait"
        );
        assert_eq!(c.refused.load(Ordering::Relaxed), 0);
        assert_eq!(c.from_peer.load(Ordering::Relaxed), u64::from(FRAMES));
        assert!(old.engine.is_drained() && new.engine.is_drained());
        assert!(!old.engine.arm() && !new.engine.arm(), "nothing left to do");
        // Every frame is in exactly one of the two processes' free lists.
        drop((old_cache, new_cache));
        let (old_small, old_large) = old_pool.free_frames();
        let (new_small, new_large) = new_pool.free_frames();
        assert_eq!(
            (old_small + new_small, old_large + new_large),
            old_pool.total_frames(),
            "a frame was lost or freed twice"
        );
    }

    #[test]
    fn a_waiting_frame_keeps_the_engine_awake() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let (a_ring, _b_ring) = rings(2);
        let mut s = side(pool.clone(), a_ring, 8);
        let mut cache = pool.cache();
        for _ in 0..3 {
            s.send.push(cache.alloc(64).unwrap()).unwrap();
        }
        assert_eq!(s.engine.poll(32), 2, "the ring holds two");
        assert!(!s.engine.is_drained());
        assert!(s.engine.arm(), "a frame waits: no sleeping");
        s.engine.disarm();
    }
}
