//! ARP and IPv6 neighbour discovery for remote guests answered on this
//! host: when the overlay table knows a remote guest's addresses (the
//! directory publishes each vNIC's `allowed_ips`), a guest's broadcast ARP
//! request or multicast neighbour solicitation for one of them is turned
//! into the reply in place and sent back to the switch, instead of being
//! replicated to every remote host of the network (EVPN's ARP/ND
//! suppression). The uplink counts them (`arp_suppressed`,
//! `nd_suppressed`).

use snapnet_wire::arp::{self, ArpPacket};
use snapnet_wire::checksum::ones_sum;
use snapnet_wire::ethernet::{self, EthernetFrame, MacAddr};
use snapnet_wire::icmpv6::{self, NdMessage};
use snapnet_wire::ip::{ETHERTYPE_IPV6, PROTO_ICMPV6};
use snapnet_wire::ipv6::{self, Ipv6Packet};

use super::overlay::OverlayTable;

/// Rewrites `frame` (an untagged Ethernet frame of `network`) into the ARP
/// reply for it when it is a broadcast request for a remote guest's IPv4
/// address the table knows; true when it did. Anything else (a unicast or
/// tagged frame, a reply, a gratuitous announcement, another hardware or
/// protocol type, an unknown address) is left untouched.
pub fn answer_arp(table: &OverlayTable, network: u32, frame: &mut [u8]) -> bool {
    let Some(eth) = EthernetFrame::new_checked(&*frame) else {
        return false;
    };
    if eth.dst() != MacAddr::BROADCAST || eth.ethertype() != arp::ETHERTYPE_ARP {
        return false;
    }
    let body = &frame[ethernet::HEADER_LEN..];
    let Some(request) = ArpPacket::new_checked(body) else {
        return false;
    };
    let (sender_mac, sender_ip, target_ip) = (
        request.sender_mac(),
        request.sender_ip(),
        request.target_ip(),
    );
    if !request.is_ethernet_ipv4()
        || request.operation() != arp::OPER_REQUEST
        || sender_ip == target_ip
        || sender_mac.is_group()
    {
        return false;
    }
    let Some(target_mac) = table.neighbour(network, target_ip) else {
        return false;
    };
    if EthernetFrame::emit(&mut *frame, sender_mac, target_mac, arp::ETHERTYPE_ARP).is_none() {
        return false;
    }
    ArpPacket::emit(
        &mut frame[ethernet::HEADER_LEN..],
        arp::OPER_REPLY,
        (target_mac, target_ip),
        (sender_mac, sender_ip),
    )
    .is_some()
}

/// An advertisement with one target link-layer address option.
const ADVERT_LEN: usize = icmpv6::field::OPTIONS + icmpv6::OPT_LEN_UNIT;
/// Solicited and override (RFC 4861 4.4): the answer to a solicitation,
/// replacing what the asker has cached.
const ADVERT_FLAGS: u8 = 0x60;
/// Neighbour discovery is only valid from the link itself.
const ND_HOP_LIMIT: u8 = 255;

/// Rewrites `frame` (an untagged Ethernet frame of `network`) into the
/// neighbour advertisement for it when it is a multicast neighbour
/// solicitation (with its source's link-layer address option, as RFC 4861
/// requires of one from a specified address) for a remote guest's IPv6
/// address the table knows; the advertisement's length when it did.
/// Duplicate address detection (from `::`), unicast solicitations,
/// extension headers and anything else are left untouched.
pub fn answer_nd(table: &OverlayTable, network: u32, frame: &mut [u8]) -> Option<usize> {
    let eth = EthernetFrame::new_checked(&*frame)?;
    let asker_mac = eth.src();
    if !eth.dst().is_group() || asker_mac.is_group() || eth.ethertype() != ETHERTYPE_IPV6 {
        return None;
    }
    let ip = &frame[ethernet::HEADER_LEN..];
    let v6 = Ipv6Packet::new_checked(ip)?;
    if v6.next_header() != PROTO_ICMPV6 || ip[ipv6::field::HOP_LIMIT] != ND_HOP_LIMIT {
        return None;
    }
    let icmp = ip.get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + usize::from(v6.payload_len()))?;
    let solicitation = NdMessage::new_checked(icmp)?;
    if solicitation.kind() != icmpv6::ND_SOLICIT
        || icmp[icmpv6::field::CODE] != 0
        || icmp.len() < ADVERT_LEN
    {
        return None;
    }
    let asker_ip: [u8; 16] = v6.src().try_into().ok()?;
    if asker_ip == [0; 16] {
        return None;
    }
    let target = solicitation.target();
    let target_mac = table.neighbour6(network, target)?;
    let total = ethernet::HEADER_LEN + ipv6::HEADER_LEN + ADVERT_LEN;
    EthernetFrame::emit(&mut *frame, asker_mac, target_mac, ETHERTYPE_IPV6)?;
    let ip = frame.get_mut(ethernet::HEADER_LEN..total)?;
    ip[..4].copy_from_slice(&[0x60, 0, 0, 0]);
    ip[ipv6::field::PAYLOAD_LEN..ipv6::field::PAYLOAD_LEN + 2]
        .copy_from_slice(&(ADVERT_LEN as u16).to_be_bytes());
    ip[ipv6::field::NEXT_HEADER] = PROTO_ICMPV6;
    ip[ipv6::field::HOP_LIMIT] = ND_HOP_LIMIT;
    ip[ipv6::field::SRC..ipv6::field::SRC + 16].copy_from_slice(&target);
    ip[ipv6::field::DST..ipv6::field::DST + 16].copy_from_slice(&asker_ip);
    let (header, advert) = ip.split_at_mut(ipv6::HEADER_LEN);
    advert.fill(0);
    advert[icmpv6::field::TYPE] = icmpv6::ND_ADVERT;
    advert[4] = ADVERT_FLAGS;
    advert[icmpv6::field::TARGET..icmpv6::field::TARGET + 16].copy_from_slice(&target);
    let option = &mut advert[icmpv6::field::OPTIONS..];
    option[0] = icmpv6::OPT_TARGET_LLADDR;
    option[1] = 1;
    option[2..8].copy_from_slice(&target_mac.0);
    let checksum = icmpv6_checksum(&header[ipv6::field::ADDRS], advert);
    advert[icmpv6::field::CHECKSUM..icmpv6::field::CHECKSUM + 2]
        .copy_from_slice(&checksum.to_be_bytes());
    Some(total)
}

/// The ICMPv6 checksum of `message` (its checksum field zero) between the
/// addresses `addrs` (source then destination).
fn icmpv6_checksum(addrs: &[u8], message: &[u8]) -> u16 {
    let mut pseudo = [0u8; 8];
    pseudo[..4].copy_from_slice(&(message.len() as u32).to_be_bytes());
    pseudo[7] = PROTO_ICMPV6;
    let mut sum = u32::from(ones_sum(addrs)) + u32::from(ones_sum(&pseudo));
    sum += u32::from(ones_sum(message));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::overlay::{OverlayConfig, RemoteHost, RemoteMac};
    use std::net::Ipv4Addr;

    const ASKER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const REMOTE_GUEST: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    fn table() -> OverlayTable {
        let remote = Ipv4Addr::new(192, 0, 2, 2);
        OverlayTable::new(
            &OverlayConfig {
                local_ip: Ipv4Addr::new(192, 0, 2, 1),
                remotes: vec![RemoteHost {
                    ip: remote,
                    mac: MacAddr([2, 0, 0, 0, 0, 2]),
                    networks: vec![100],
                }],
                macs: vec![RemoteMac {
                    network: 100,
                    mac: REMOTE_GUEST,
                    remote,
                    ips: vec!["10.0.0.2".parse().unwrap(), "2001:db8::2".parse().unwrap()],
                }],
            },
            MacAddr([2, 0, 0, 0, 0, 1]),
        )
        .unwrap()
    }

    fn request(dst: MacAddr, op: u16, sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        EthernetFrame::emit(&mut f[..], dst, ASKER, arp::ETHERTYPE_ARP).unwrap();
        ArpPacket::emit(
            &mut f[ethernet::HEADER_LEN..],
            op,
            (ASKER, sender_ip),
            (MacAddr([0; 6]), target_ip),
        )
        .unwrap();
        f
    }

    #[test]
    fn a_request_for_a_known_remote_guest_becomes_its_reply() {
        let t = table();
        let mut f = request(
            MacAddr::BROADCAST,
            arp::OPER_REQUEST,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        );
        assert!(answer_arp(&t, 100, &mut f));
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (ASKER, REMOTE_GUEST));
        let reply = ArpPacket::new_checked(&f[ethernet::HEADER_LEN..]).unwrap();
        assert_eq!(reply.operation(), arp::OPER_REPLY);
        assert_eq!(
            (reply.sender_mac(), reply.sender_ip()),
            (REMOTE_GUEST, [10, 0, 0, 2])
        );
        assert_eq!(
            (reply.target_mac(), reply.target_ip()),
            (ASKER, [10, 0, 0, 1])
        );
    }

    const ASKER_IP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const GUEST_IP6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// A multicast solicitation from `src` for `target`, with its source
    /// link-layer address option, checksummed.
    fn solicitation(src: [u8; 16], target: [u8; 16]) -> Vec<u8> {
        let mut f = vec![0u8; ethernet::HEADER_LEN + ipv6::HEADER_LEN + ADVERT_LEN];
        let group = MacAddr([0x33, 0x33, 0xff, target[13], target[14], target[15]]);
        EthernetFrame::emit(&mut f[..], group, ASKER, ETHERTYPE_IPV6).unwrap();
        let ip = &mut f[ethernet::HEADER_LEN..];
        ip[0] = 0x60;
        ip[ipv6::field::PAYLOAD_LEN + 1] = ADVERT_LEN as u8;
        ip[ipv6::field::NEXT_HEADER] = PROTO_ICMPV6;
        ip[ipv6::field::HOP_LIMIT] = 255;
        ip[ipv6::field::SRC..ipv6::field::SRC + 16].copy_from_slice(&src);
        let mut dst = [0u8; 16];
        dst[..2].copy_from_slice(&[0xff, 0x02]);
        dst[11..].copy_from_slice(&[1, 0xff, target[13], target[14], target[15]]);
        ip[ipv6::field::DST..ipv6::field::DST + 16].copy_from_slice(&dst);
        let (header, icmp) = ip.split_at_mut(ipv6::HEADER_LEN);
        icmp[0] = icmpv6::ND_SOLICIT;
        icmp[8..24].copy_from_slice(&target);
        icmp[24] = icmpv6::OPT_SOURCE_LLADDR;
        icmp[25] = 1;
        icmp[26..32].copy_from_slice(&ASKER.0);
        let c = icmpv6_checksum(&header[ipv6::field::ADDRS], icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        f
    }

    #[test]
    fn a_solicitation_for_a_known_remote_guest_becomes_its_advertisement() {
        let t = table();
        let mut f = solicitation(ASKER_IP6, GUEST_IP6);
        let len = answer_nd(&t, 100, &mut f).expect("answered");
        assert_eq!(len, f.len());
        let eth = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!((eth.dst(), eth.src()), (ASKER, REMOTE_GUEST));
        let ip = &f[ethernet::HEADER_LEN..];
        let v6 = Ipv6Packet::new_checked(ip).unwrap();
        assert_eq!((v6.src(), v6.dst()), (&GUEST_IP6[..], &ASKER_IP6[..]));
        assert_eq!(ip[ipv6::field::HOP_LIMIT], 255);
        let icmp = &ip[ipv6::HEADER_LEN..];
        let na = NdMessage::new_checked(icmp).unwrap();
        assert_eq!((na.kind(), na.target()), (icmpv6::ND_ADVERT, GUEST_IP6));
        assert_eq!(icmp[4], ADVERT_FLAGS);
        let lladdrs: Vec<_> = na.lladdr_options().collect();
        assert_eq!(lladdrs, vec![Ok(REMOTE_GUEST)]);
        assert_eq!(icmp[icmpv6::field::OPTIONS], icmpv6::OPT_TARGET_LLADDR);
        // A correct checksum sums to zero with the pseudo-header.
        let mut pseudo = [0u8; 8];
        pseudo[3] = ADVERT_LEN as u8;
        pseudo[7] = PROTO_ICMPV6;
        let sum = u32::from(ones_sum(v6.addrs()))
            + u32::from(ones_sum(&pseudo))
            + u32::from(ones_sum(icmp));
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded as u16, 0xffff, "checksum");
    }

    #[test]
    fn other_neighbour_discovery_is_left_alone() {
        let t = table();
        let dad = solicitation([0; 16], GUEST_IP6);
        let unknown = solicitation(
            ASKER_IP6,
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
        );
        let mut unicast = solicitation(ASKER_IP6, GUEST_IP6);
        unicast[..6].copy_from_slice(&REMOTE_GUEST.0);
        let mut low_hops = solicitation(ASKER_IP6, GUEST_IP6);
        low_hops[ethernet::HEADER_LEN + ipv6::field::HOP_LIMIT] = 64;
        let mut advert = solicitation(ASKER_IP6, GUEST_IP6);
        advert[ethernet::HEADER_LEN + ipv6::HEADER_LEN] = icmpv6::ND_ADVERT;
        let mut no_option = solicitation(ASKER_IP6, GUEST_IP6);
        no_option.truncate(no_option.len() - icmpv6::OPT_LEN_UNIT);
        no_option[ethernet::HEADER_LEN + ipv6::field::PAYLOAD_LEN + 1] =
            icmpv6::field::OPTIONS as u8;
        for (i, (network, mut f)) in [
            (100, dad),
            (100, unknown),
            (100, unicast),
            (100, low_hops),
            (100, advert),
            (100, no_option),
            (200, solicitation(ASKER_IP6, GUEST_IP6)),
        ]
        .into_iter()
        .enumerate()
        {
            let before = f.clone();
            assert_eq!(answer_nd(&t, network, &mut f), None, "case {i}");
            assert_eq!(f, before, "case {i}: frame changed");
        }
        let mut short = solicitation(ASKER_IP6, GUEST_IP6);
        short.truncate(ethernet::HEADER_LEN + ipv6::HEADER_LEN + 10);
        assert_eq!(answer_nd(&t, 100, &mut short), None);
        // An ARP request is not neighbour discovery, and the other way round.
        let mut f = request(
            MacAddr::BROADCAST,
            arp::OPER_REQUEST,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        );
        assert_eq!(answer_nd(&t, 100, &mut f), None);
        assert!(!answer_arp(
            &t,
            100,
            &mut solicitation(ASKER_IP6, GUEST_IP6)
        ));
    }

    #[test]
    fn anything_else_is_left_alone() {
        let t = table();
        let cases = [
            // Another network, an unknown address, a gratuitous ARP, a
            // reply, a unicast request.
            (
                200,
                request(
                    MacAddr::BROADCAST,
                    arp::OPER_REQUEST,
                    [10, 0, 0, 1],
                    [10, 0, 0, 2],
                ),
            ),
            (
                100,
                request(
                    MacAddr::BROADCAST,
                    arp::OPER_REQUEST,
                    [10, 0, 0, 1],
                    [10, 0, 0, 3],
                ),
            ),
            (
                100,
                request(
                    MacAddr::BROADCAST,
                    arp::OPER_REQUEST,
                    [10, 0, 0, 2],
                    [10, 0, 0, 2],
                ),
            ),
            (
                100,
                request(
                    MacAddr::BROADCAST,
                    arp::OPER_REPLY,
                    [10, 0, 0, 1],
                    [10, 0, 0, 2],
                ),
            ),
            (
                100,
                request(
                    REMOTE_GUEST,
                    arp::OPER_REQUEST,
                    [10, 0, 0, 1],
                    [10, 0, 0, 2],
                ),
            ),
        ];
        for (i, (network, mut f)) in cases.into_iter().enumerate() {
            let before = f.clone();
            assert!(!answer_arp(&t, network, &mut f), "case {i}");
            assert_eq!(f, before, "case {i}: frame changed");
        }
        // Truncated, and not IPv4 over Ethernet.
        let mut short = request(
            MacAddr::BROADCAST,
            arp::OPER_REQUEST,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        );
        short.truncate(ethernet::HEADER_LEN + arp::LEN - 1);
        assert!(!answer_arp(&t, 100, &mut short));
        let mut odd = request(
            MacAddr::BROADCAST,
            arp::OPER_REQUEST,
            [10, 0, 0, 1],
            [10, 0, 0, 2],
        );
        odd[ethernet::HEADER_LEN + 1] = 6;
        assert!(!answer_arp(&t, 100, &mut odd));
        assert!(!answer_arp(&t, 100, &mut []));
    }
}
