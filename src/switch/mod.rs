//! The edge switch: an L2 switch engine between ports. A port is a set of
//! link pairs (one per queue pair of a vNIC, or per queue of an uplink), so an
//! AF_XDP uplink plugs in exactly like a vNIC.

pub mod engine;
pub mod fdb;
pub mod port;

pub use engine::{SwitchEngine, SwitchHandle};
pub use fdb::Fdb;
pub use port::{PortCounters, PortDrop, PortId, PortNetwork, SwitchPort};
