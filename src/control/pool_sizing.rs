//! How many frames the pool needs: every place that may hold frames has a
//! bound, and the pool holds the sum, so one port that holds all it may (a
//! guest that posts no RX buffers, a paused VM, a NIC queue whose kernel
//! side keeps its frames) never leaves another port without frames.
//!
//! What may hold small frames, and how many:
//! - a vNIC queue pair: its link into the switch and its link out of it
//!   (frames waiting for the guest: the per-queue quota), and its engine's
//!   frame cache;
//! - an uplink queue: the same, plus what its AF_XDP socket lends the kernel
//!   (fill ring, and TX ring plus completion ring for frames being sent);
//! - a switch shard: its frame cache and its links from the other shards.
//!
//! Frames being copied or segmented within one batch come out of an engine's
//! cache and go into a link before the batch ends, so they are counted there.
//! Large frames (TSO super-frames) are a class of their own, not budgeted per
//! port: a frame waits for a guest at most `RX_STALL` before it is dropped.

use crate::packet::pool::CACHE_FRAMES;
use crate::switch::shards::PEER_LINK_CAPACITY;
use crate::uplink::xsk::RingSizes;

/// Frame handles a link into or out of the switch holds.
pub const LINK_CAPACITY: usize = 1024;

/// Most small frames a pool may have (16 GiB of 4 KiB frames).
pub const MAX_FRAMES: usize = 1 << 22;

/// The ports a pool is sized for (`Config::pool_ports` counts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub vnic_queue_pairs: usize,
    pub uplink_queues: usize,
    pub switch_shards: usize,
}

/// Small frames one vNIC queue pair may hold.
pub fn vnic_queue_frames() -> usize {
    2 * LINK_CAPACITY + CACHE_FRAMES
}

/// Small frames one uplink queue may hold: a vNIC queue's worth, and its
/// socket's loans to the kernel.
pub fn uplink_queue_frames() -> usize {
    let r = RingSizes::default();
    vnic_queue_frames() + (r.fill + r.tx + r.completion) as usize
}

/// Small frames the switch may hold, with `shards` shards.
pub fn switch_frames(shards: usize) -> usize {
    shards * (CACHE_FRAMES + shards.saturating_sub(1) * PEER_LINK_CAPACITY)
}

/// Small frames `ports` and their switch may hold together.
pub fn frames_needed(ports: Ports) -> usize {
    switch_frames(ports.switch_shards)
        + ports.vnic_queue_pairs * vnic_queue_frames()
        + ports.uplink_queues * uplink_queue_frames()
}

/// The small frames a pool for `ports` gets: `configured`, or what the
/// ports need plus `spare_queue_pairs` vNIC queue pairs' worth for ports
/// added at run time.
pub fn pool_frames(ports: Ports, configured: Option<u32>, spare_queue_pairs: u16) -> usize {
    configured.map_or_else(
        || frames_needed(ports) + usize::from(spare_queue_pairs) * vnic_queue_frames(),
        |f| f as usize,
    )
}

/// Why `ports` cannot run on a pool of `frames` small frames (`None`: they
/// can).
pub fn shortfall(ports: Ports, frames: usize) -> Option<String> {
    let need = frames_needed(ports);
    (need > frames).then(|| {
        format!(
            "the ports need {need} frames and the pool has {frames} \
             ({} per vNIC queue pair, {} per uplink queue); \
             raise frame_pool.frames or frame_pool.spare_queue_pairs",
            vnic_queue_frames(),
            uplink_queue_frames()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Config;

    #[test]
    fn the_pool_holds_every_quota_and_spares() {
        let mut cfg = Config::embedded_default();
        let two_queues = switch_frames(1) + 2 * vnic_queue_frames();
        assert_eq!(frames_needed(cfg.pool_ports()), two_queues);
        let spare = usize::from(cfg.frame_pool.spare_queue_pairs) * vnic_queue_frames();
        assert_eq!(cfg.pool_frames(), two_queues + spare);
        assert!(shortfall(cfg.pool_ports(), cfg.pool_frames()).is_none());
        // vNICs added at run time fit in the spare room, and no more.
        let frames = cfg.pool_frames();
        let mut big = cfg.vnics[0].clone();
        big.name = "big".into();
        big.queue_pairs = cfg.frame_pool.spare_queue_pairs;
        cfg.vnics.push(big);
        assert!(shortfall(cfg.pool_ports(), frames).is_none());
        cfg.vnics.last_mut().unwrap().queue_pairs += 1;
        let why = shortfall(cfg.pool_ports(), frames).expect("one queue pair too many");
        assert!(why.contains("frame_pool"), "{why}");
        // An uplink queue counts what its socket lends the kernel.
        assert!(uplink_queue_frames() >= vnic_queue_frames() + 3 * 1024);
        cfg.frame_pool.frames = Some(1000);
        assert_eq!(cfg.pool_config().frames, 1000);
    }
}
