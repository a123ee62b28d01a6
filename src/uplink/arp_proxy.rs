//! ARP for remote guests answered on this host: when the overlay table
//! knows a remote guest's addresses (the directory publishes each vNIC's
//! `allowed_ips`), a guest's broadcast "who has" for one of them is turned
//! into the reply in place and sent back to the switch, instead of being
//! replicated to every remote host of the network (EVPN's ARP
//! suppression). The uplink counts it (`arp_suppressed`).

use snapnet_wire::arp::{self, ArpPacket};
use snapnet_wire::ethernet::{self, EthernetFrame, MacAddr};

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
