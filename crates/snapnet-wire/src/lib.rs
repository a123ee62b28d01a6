//! Checked, zero-copy views of wire formats. Constructors check lengths, so
//! field accessors never index out of bounds on untrusted input.

pub mod arp;
mod bytes;
pub mod checksum;
pub mod ethernet;
pub mod flow;
pub mod icmpv6;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
pub mod pony;
pub mod rarp;
pub mod tcp;
pub mod udp;
pub mod virtio_net;
pub mod virtq_packed;
pub mod vlan;
pub mod vxlan;

pub use ethernet::{mac_string, optional_mac_string, EthernetFrame, MacAddr};
