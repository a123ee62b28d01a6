//! A switch of several shards, so switching uses as many cores as the
//! threads that run them. Each shard is a switch engine serving the ports
//! homed on it (a vNIC's engines are placed on its shard's thread); every
//! ordered pair of shards has a peer link for the frames between them.
//! Each shard keeps its own FDB: the control plane installs static entries
//! in all of them, and a shard learns addresses behind other shards' ports
//! from the frames that come over the peer links (as the switches of a
//! network learn from each other's traffic). See docs/switch-scaling.md.

use std::sync::Arc;

use super::engine::SwitchEngine;
use super::handle::SwitchHandle;
use super::peer::peer_link;
use crate::packet::FramePool;

/// Frames a peer link holds (as many as a port's link).
pub const PEER_LINK_CAPACITY: usize = 1024;

/// Most shards: a flood marks the shards it reaches in one `u64`.
pub const MAX_SHARDS: usize = 64;

/// `count` shards linked to each other, and the control plane's handle.
pub fn shards(
    pool: &Arc<FramePool>,
    count: usize,
) -> std::io::Result<(Vec<SwitchEngine>, SwitchHandle)> {
    linked(pool, count, PEER_LINK_CAPACITY)
}

/// One switch (a single shard) and the control plane's handle on it.
pub fn single(pool: &Arc<FramePool>) -> std::io::Result<(SwitchEngine, SwitchHandle)> {
    let (mut shards, handle) = shards(pool, 1)?;
    let engine = shards.pop().expect("one shard was made");
    Ok((engine, handle))
}

/// [`shards`] with peer links of `capacity` frames.
pub(super) fn linked(
    pool: &Arc<FramePool>,
    count: usize,
    capacity: usize,
) -> std::io::Result<(Vec<SwitchEngine>, SwitchHandle)> {
    if !(1..=MAX_SHARDS).contains(&count) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{count} switch shards: give 1 to {MAX_SHARDS}"),
        ));
    }
    let mut engines = Vec::with_capacity(count);
    let mut senders = Vec::with_capacity(count);
    for i in 0..count {
        let (engine, sender) = SwitchEngine::shard(pool, i, count)?;
        engines.push(engine);
        senders.push(sender);
    }
    for from in 0..count {
        for to in (0..count).filter(|to| *to != from) {
            let (tx, rx) = peer_link(from, capacity)?;
            engines[from].peers_out[to] = Some(tx);
            engines[to].peers_in.push(rx);
        }
    }
    Ok((engines, SwitchHandle::new(senders)))
}
