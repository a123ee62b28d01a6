//! The edge switch: an L2 switch engine between ports. A port is a set of
//! link pairs (one per queue pair of a vNIC, or per queue of an uplink), so an
//! AF_XDP uplink plugs in exactly like a vNIC. The switch may be split into
//! shards, one engine each, to use more than one core (`shards.rs`).

pub mod engine;
pub mod fdb;
pub mod handle;
pub mod peer;
pub mod port;
pub mod shards;

#[cfg(test)]
mod shard_tests;

pub use engine::SwitchEngine;
pub use fdb::Fdb;
pub use handle::SwitchHandle;
pub use port::{PortCounters, PortDrop, PortId, PortNetwork, SwitchPort};
pub use shards::{shards, MAX_SHARDS};
