//! vNICs: virtio-net devices served over vhost-user, and the engines that move
//! their packets.
//!
//! `connection` accepts frontends; `backend` is the thin `VhostUserBackend`
//! impl; `device` holds features, config space and hands vrings to engines;
//! `engine` is the per-queue-pair engine, whose per-packet work lives in
//! `guest_tx` (guest -> switch, its virtio-net header checked by
//! `tx_offload`) and `guest_rx` (switch -> guest) over
//! `guest_ring`, `chain` and `guest_memory` (packed rings: `packed_ring`,
//! `packed_chain`).

pub mod antispoof;
mod any_ring;
mod backend;
pub(crate) mod chain;
pub mod connection;
mod data_path;
pub mod device;
pub mod dirty_log;
pub mod engine;
pub mod features;
pub mod guest_log;
pub mod guest_memory;
pub(crate) mod guest_ring;
mod guest_rx;
mod guest_tx;
pub(crate) mod packed_chain;
pub(crate) mod packed_ring;
mod packed_rx;
#[cfg(test)]
mod packed_tests;
mod packed_tx;
pub mod stats;
#[cfg(test)]
mod tests;
pub mod tx_offload;
#[cfg(test)]
mod tx_tests;

pub use connection::{Connection, SocketRole};
pub use device::{EngineSink, VnicDevice};
pub use engine::{VnicEngine, VnicEngineConfig};
pub use stats::{DropReason, QueueCounters, SharedQueueCounters};
