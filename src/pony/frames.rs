//! The Ethernet, IPv4 and UDP headers around a Pony packet.

use std::net::Ipv4Addr;

use snapnet_wire::ipv4::{self, Ipv4Packet};
use snapnet_wire::udp::{self, UdpPacket};
use snapnet_wire::{ethernet, pony, EthernetFrame, MacAddr};

const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_UDP: u8 = 17;

/// IPv4 and UDP header bytes (what the MTU counts besides Pony's).
pub const IP_UDP_LEN: usize = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN;
/// Every header before Pony's.
pub const HEADERS_LEN: usize = ethernet::HEADER_LEN + IP_UDP_LEN;

/// Writes the headers for `pony_len` bytes of Pony packet into the first
/// [`HEADERS_LEN`] bytes of `buf`. UDP's checksum is left 0 (allowed over
/// IPv4; Pony's own sequence and length checks stand in for it).
pub fn write_headers(
    buf: &mut [u8],
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    pony_len: usize,
) {
    let _ = EthernetFrame::emit(&mut *buf, dst_mac, src_mac, ETHERTYPE_IPV4);
    let l3 = &mut buf[ethernet::HEADER_LEN..];
    let _ = Ipv4Packet::emit(
        &mut *l3,
        (IP_UDP_LEN + pony_len) as u16,
        PROTO_UDP,
        src.octets(),
        dst.octets(),
    );
    let l4 = &mut l3[ipv4::MIN_HEADER_LEN..];
    let _ = UdpPacket::emit(
        l4,
        pony::PORT,
        pony::PORT,
        (udp::HEADER_LEN + pony_len) as u16,
    );
}

/// The sender's MAC and address and the UDP payload of a frame from the
/// wire, if it is an unfragmented IPv4 UDP datagram to `local`'s Pony port
/// whose lengths agree with the frame.
pub fn parse(frame: &[u8], local: Ipv4Addr) -> Option<(MacAddr, Ipv4Addr, &[u8])> {
    let eth = EthernetFrame::new_checked(frame)?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return None;
    }
    let l3 = &frame[ethernet::HEADER_LEN..];
    let ip = Ipv4Packet::new_checked(l3)?;
    if ip.protocol() != PROTO_UDP || ip.dst() != local.octets() || ip.is_fragment() {
        return None;
    }
    let ip_len = usize::from(ip.total_len());
    if ip_len > l3.len() || ip_len < ip.header_len() + udp::HEADER_LEN {
        return None;
    }
    let l4 = &l3[ip.header_len()..ip_len];
    let u = UdpPacket::new_checked(l4)?;
    let udp_len = usize::from(u.length());
    if u.dst_port() != pony::PORT || udp_len < udp::HEADER_LEN || udp_len > l4.len() {
        return None;
    }
    Some((
        eth.src(),
        Ipv4Addr::from(ip.src()),
        &l4[udp::HEADER_LEN..udp_len],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_back_and_lies_are_refused() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let mut buf = vec![0u8; HEADERS_LEN + 5];
        write_headers(&mut buf, mac, MacAddr([2, 0, 0, 0, 0, 2]), a, b, 5);
        buf[HEADERS_LEN..].copy_from_slice(b"hello");
        let (m, ip, payload) = parse(&buf, b).unwrap();
        assert_eq!((m, ip, payload), (mac, a, &b"hello"[..]));
        assert!(parse(&buf, a).is_none());
        assert!(parse(&buf[..HEADERS_LEN + 4], b).is_none());
        let mut lying = buf.clone();
        // UDP length larger than what came.
        lying[ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + 5] = 200;
        assert!(parse(&lying, b).is_none());
    }
}
