//! Tests of `antispoof.rs`.
use super::*;
use snapnet_wire::arp::ETHERTYPE_ARP;
use snapnet_wire::icmpv6::{ND_ADVERT, ND_SOLICIT, OPT_TARGET_LLADDR};
use snapnet_wire::ip::{ext, PROTO_UDP};
use snapnet_wire::vlan::{TPID_8021AD, TPID_8021Q, TPID_QINQ_9100};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
/// A VRRP virtual MAC, allowed as an address pair.
const VMAC: MacAddr = MacAddr([0, 0, 0x5e, 0, 1, 7]);

fn eth(src: MacAddr, ethertype: u16, l3: &[u8]) -> Vec<u8> {
    tagged(src, &[], ethertype, l3)
}

/// A frame with a VLAN tag of each TPID in `tpids`, outermost first.
fn tagged(src: MacAddr, tpids: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src.0);
    for t in tpids {
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(&[0, 5]);
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn ipv4(src: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
    h.extend_from_slice(&src);
    h.extend_from_slice(&[10, 0, 0, 99]);
    h
}

fn arp(sender_mac: MacAddr, sender_ip: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 2];
    a.extend_from_slice(&sender_mac.0);
    a.extend_from_slice(&sender_ip);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[10, 0, 0, 99]);
    a
}

fn ipv6_nd(src: [u8; 16], kind: u8, target: [u8; 16], lladdr: MacAddr) -> Vec<u8> {
    ipv6_ext_nd(src, &[], kind, target, lladdr)
}

/// An NS/NA behind the extension headers `exts` (type, whole header).
fn ipv6_ext_nd(
    src: [u8; 16],
    exts: &[(u8, Vec<u8>)],
    kind: u8,
    target: [u8; 16],
    lladdr: MacAddr,
) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0, 0, 32, PROTO_ICMPV6, 255];
    h.extend_from_slice(&src);
    h.extend_from_slice(&[0xff; 16]);
    let mut next_at = 6;
    for (t, body) in exts {
        h[next_at] = *t;
        next_at = h.len();
        h.extend_from_slice(body);
    }
    h[next_at] = PROTO_ICMPV6;
    let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target);
    icmp.extend_from_slice(&[OPT_TARGET_LLADDR, 1]);
    icmp.extend_from_slice(&lladdr.0);
    h.extend_from_slice(&icmp);
    h
}

/// An options header (hop-by-hop, destination options, routing) of 8 bytes.
fn opts8() -> Vec<u8> {
    vec![0; 8]
}

fn fragment(offset8: u16, more: bool) -> Vec<u8> {
    let mut f = vec![0; 8];
    f[2..4].copy_from_slice(&(offset8 << 3 | u16::from(more)).to_be_bytes());
    f
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x20;
    a[1] = 0x01;
    a[15] = last;
    a
}

fn checked() -> SpoofGuard {
    let allowed: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "2001::5".parse().unwrap()];
    SpoofGuard::new(MAC, Some(&allowed))
}

#[test]
fn mac_is_always_checked() {
    let mut g = SpoofGuard::new(MAC, None);
    assert_eq!(g.check(&eth(MAC, 0x88b5, &[0; 50])), Ok(()));
    assert_eq!(
        g.check(&eth(MAC, ETHERTYPE_IPV4, &ipv4([9, 9, 9, 9]))),
        Ok(())
    );
    assert_eq!(
        g.check(&eth(OTHER, 0x88b5, &[0; 50])),
        Err(DropReason::SpoofedMac)
    );
    assert_eq!(g.refused_src(), OTHER);
    assert_eq!(g.check(&[0; 8]), Err(DropReason::SpoofedMac));
}

#[test]
fn addresses_are_checked_when_listed() {
    let mut g = checked();
    let mut ok = |f: Vec<u8>| assert_eq!(g.check(&f), Ok(()));
    ok(eth(MAC, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 5])));
    ok(eth(MAC, ETHERTYPE_IPV4, &ipv4([0, 0, 0, 0])));
    ok(eth(MAC, ETHERTYPE_ARP, &arp(MAC, [10, 0, 0, 5])));
    ok(eth(
        MAC,
        ETHERTYPE_IPV6,
        &ipv6_nd(v6(5), ND_ADVERT, v6(5), MAC),
    ));
    ok(eth(
        MAC,
        ETHERTYPE_IPV6,
        &ipv6_nd(link_local(MAC), ND_SOLICIT, v6(9), MAC),
    ));
    let mut g = checked();
    let mut bad = |f: Vec<u8>, r| assert_eq!(g.check(&f), Err(r));
    bad(
        eth(MAC, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 6])),
        DropReason::SpoofedIp,
    );
    // Behind a VLAN tag as well.
    bad(
        tagged(MAC, &[TPID_8021Q], ETHERTYPE_IPV4, &ipv4([10, 0, 0, 6])),
        DropReason::SpoofedIp,
    );
    bad(
        eth(MAC, ETHERTYPE_ARP, &arp(MAC, [10, 0, 0, 7])),
        DropReason::SpoofedArp,
    );
    bad(
        eth(MAC, ETHERTYPE_ARP, &arp(OTHER, [10, 0, 0, 5])),
        DropReason::SpoofedArp,
    );
    bad(eth(MAC, ETHERTYPE_ARP, &[0, 1]), DropReason::SpoofedArp);
    bad(
        eth(MAC, ETHERTYPE_IPV6, &ipv6_nd(v6(6), ND_ADVERT, v6(6), MAC)),
        DropReason::SpoofedIp,
    );
    bad(
        eth(MAC, ETHERTYPE_IPV6, &ipv6_nd(v6(5), ND_ADVERT, v6(7), MAC)),
        DropReason::SpoofedNd,
    );
    bad(
        eth(
            MAC,
            ETHERTYPE_IPV6,
            &ipv6_nd(v6(5), ND_ADVERT, v6(5), OTHER),
        ),
        DropReason::SpoofedNd,
    );
    // Truncated headers are refused, never read past.
    for cut in 0..60 {
        let f = eth(MAC, ETHERTYPE_IPV6, &ipv6_nd(v6(5), ND_ADVERT, v6(5), MAC));
        let _ = g.check(&f[..cut.min(f.len())]);
    }
}

/// Bypass (issue 13, item 5): a second tag, or an S-tag, used to hide
/// the IP header from the check.
#[test]
fn stacked_vlan_tags_do_not_hide_the_addresses() {
    let mut g = checked();
    for tpids in [
        &[TPID_8021Q, TPID_8021Q][..],
        &[TPID_8021AD],
        &[TPID_8021AD, TPID_8021Q],
        &[TPID_QINQ_9100, TPID_8021Q],
    ] {
        let spoofed = tagged(MAC, tpids, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 6]));
        assert_eq!(g.check(&spoofed), Err(DropReason::SpoofedIp), "{tpids:x?}");
        let arp = tagged(MAC, tpids, ETHERTYPE_ARP, &arp(MAC, [10, 0, 0, 7]));
        assert_eq!(g.check(&arp), Err(DropReason::SpoofedArp), "{tpids:x?}");
        let own = tagged(MAC, tpids, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 5]));
        assert_eq!(g.check(&own), Ok(()), "{tpids:x?}");
    }
    // Deeper than the bound: what is under it cannot be checked.
    let deep = tagged(
        MAC,
        &[TPID_8021AD, TPID_8021Q, TPID_8021Q],
        ETHERTYPE_IPV4,
        &ipv4([10, 0, 0, 5]),
    );
    assert_eq!(g.check(&deep), Err(DropReason::Unverifiable));
    // Without an address list only the MAC counts, tags or not.
    assert_eq!(SpoofGuard::new(MAC, None).check(&deep), Ok(()));
}

/// Bypass (issue 13, item 5): extension headers before ICMPv6 used to
/// skip the neighbour-discovery checks.
#[test]
fn ipv6_extension_headers_do_not_hide_neighbour_discovery() {
    let mut g = checked();
    let chains: [&[(u8, Vec<u8>)]; 3] = [
        &[(ext::HOP_BY_HOP, opts8())],
        &[(ext::DEST_OPTS, opts8()), (ext::ROUTING, opts8())],
        &[(ext::HOP_BY_HOP, opts8()), (ext::DEST_OPTS, opts8())],
    ];
    for exts in chains {
        let nd = |target, lladdr| {
            eth(
                MAC,
                ETHERTYPE_IPV6,
                &ipv6_ext_nd(v6(5), exts, ND_ADVERT, target, lladdr),
            )
        };
        assert_eq!(g.check(&nd(v6(7), MAC)), Err(DropReason::SpoofedNd));
        assert_eq!(g.check(&nd(v6(5), OTHER)), Err(DropReason::SpoofedNd));
        assert_eq!(g.check(&nd(v6(5), MAC)), Ok(()));
    }
    // Fragmented neighbour discovery: receivers ignore it (RFC 6980)
    // and its options could sit in a later fragment.
    let frag_na = ipv6_ext_nd(
        v6(5),
        &[(ext::FRAGMENT, fragment(0, true))],
        ND_ADVERT,
        v6(5),
        MAC,
    );
    assert_eq!(
        g.check(&eth(MAC, ETHERTYPE_IPV6, &frag_na)),
        Err(DropReason::Unverifiable)
    );
    // A first fragment that ends before the ICMPv6 type is refused: the
    // type must be seen.
    let head = 14 + 40 + 8;
    let empty_first = eth(MAC, ETHERTYPE_IPV6, &frag_na);
    assert_eq!(g.check(&empty_first[..head]), Err(DropReason::Unverifiable));
    // A later fragment cannot carry the type (it starts 8 or more bytes
    // in): it passes, as the first fragment decided.
    let later = ipv6_ext_nd(
        v6(5),
        &[(ext::FRAGMENT, fragment(1, false))],
        ND_ADVERT,
        v6(7),
        OTHER,
    );
    assert_eq!(g.check(&eth(MAC, ETHERTYPE_IPV6, &later)), Ok(()));
    // Too many extension headers: cannot be checked.
    let long: Vec<(u8, Vec<u8>)> = vec![(ext::DEST_OPTS, opts8()); ext::MAX_HEADERS + 1];
    let f = eth(
        MAC,
        ETHERTYPE_IPV6,
        &ipv6_ext_nd(v6(5), &long, ND_ADVERT, v6(5), MAC),
    );
    assert_eq!(g.check(&f), Err(DropReason::Unverifiable));
    // The source is still checked first, whatever follows.
    let mut udp = ipv6_ext_nd(v6(6), &[], ND_ADVERT, v6(6), MAC);
    udp[6] = PROTO_UDP;
    assert_eq!(
        g.check(&eth(MAC, ETHERTYPE_IPV6, &udp)),
        Err(DropReason::SpoofedIp)
    );
    // QinQ in front of an extension-header chain: both are walked.
    let both = tagged(
        MAC,
        &[TPID_8021AD, TPID_8021Q],
        ETHERTYPE_IPV6,
        &ipv6_ext_nd(v6(5), chains[1], ND_ADVERT, v6(7), MAC),
    );
    assert_eq!(g.check(&both), Err(DropReason::SpoofedNd));
}

#[test]
fn address_pairs_and_port_security_off() {
    let own: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap()];
    let vip: Vec<IpAddr> = vec!["10.0.0.100".parse().unwrap()];
    let mut g = SpoofGuard::new(MAC, Some(&own)).with_pair(VMAC, Some(&vip));
    assert_eq!(
        g.check(&eth(VMAC, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 100]))),
        Ok(())
    );
    assert_eq!(
        g.check(&eth(VMAC, ETHERTYPE_ARP, &arp(VMAC, [10, 0, 0, 100]))),
        Ok(())
    );
    // Each MAC keeps to its own addresses.
    assert_eq!(
        g.check(&eth(VMAC, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 5]))),
        Err(DropReason::SpoofedIp)
    );
    assert_eq!(
        g.check(&eth(MAC, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 100]))),
        Err(DropReason::SpoofedIp)
    );
    // An ARP sender must be the frame's own source MAC.
    assert_eq!(
        g.check(&eth(VMAC, ETHERTYPE_ARP, &arp(MAC, [10, 0, 0, 100]))),
        Err(DropReason::SpoofedArp)
    );
    // The pair's own link-local address and ND lladdr options.
    assert_eq!(
        g.check(&eth(
            VMAC,
            ETHERTYPE_IPV6,
            &ipv6_nd(link_local(VMAC), ND_SOLICIT, v6(9), VMAC)
        )),
        Ok(())
    );
    assert_eq!(
        g.check(&eth(OTHER, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 5]))),
        Err(DropReason::SpoofedMac)
    );
    // A pair without a list: any address from that MAC.
    let mut g = SpoofGuard::new(MAC, Some(&own)).with_pair(VMAC, None);
    assert_eq!(
        g.check(&eth(VMAC, ETHERTYPE_IPV4, &ipv4([192, 0, 2, 1]))),
        Ok(())
    );
    // Port security off: a router VM forwards other hosts' frames.
    let mut g = SpoofGuard::new(MAC, Some(&own)).enabled(false);
    assert_eq!(
        g.check(&eth(OTHER, ETHERTYPE_IPV4, &ipv4([192, 0, 2, 1]))),
        Ok(())
    );
}

#[test]
fn eui64_link_local() {
    assert_eq!(
        link_local(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56]
    );
}
