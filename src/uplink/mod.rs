//! The uplink: the edge switch's port to a host NIC, through one AF_XDP
//! socket and one engine per NIC queue, with the frame pool as UMEM.
//!
//! A frame for a guest: NIC -> XDP program (`xdp_program`, redirects guest
//! MACs) -> AF_XDP RX ring -> `engine` -> switch. Broadcast and multicast
//! take the kernel's path and reach the switch through `group_tap`. A frame
//! from a guest: switch -> `engine` (software segmentation of GSO frames) ->
//! AF_XDP TX ring -> NIC.

pub mod engine;
pub mod group_tap;
pub mod handover;
pub mod neighbour_proxy;
pub mod overlay;
pub mod stats;
pub mod xdp_program;
pub mod xsk;

pub use engine::UplinkQueueEngine;
pub use stats::{SharedUplinkCounters, UplinkCounter, UplinkCounters};
pub use xdp_program::{UplinkProgram, XdpMode};
pub use xsk::BindMode;
