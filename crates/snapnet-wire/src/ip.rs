//! What IPv4 and IPv6 share: EtherTypes and protocol numbers. The views are
//! in [`crate::ipv4`] and [`crate::ipv6`].

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub use crate::ipv4::Ipv4Packet;
pub use crate::ipv6::{ext, ExtError, Ipv6Packet, UpperLayer};

/// Source and destination ports of a TCP or UDP header, if long enough.
pub fn l4_ports(payload: &[u8]) -> Option<(u16, u16)> {
    let p = payload.get(0..4)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}
