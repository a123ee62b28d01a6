//! Anti-spoofing: what a guest may claim to be.
//!
//! Every frame a guest sends must carry the vNIC's own MAC as its source.
//! When the vNIC has a list of allowed addresses, the IP source and the
//! sender fields of ARP and IPv6 neighbour discovery must be among them too,
//! so a guest cannot take over another machine's address by answering for
//! it. A few addresses are always allowed because hosts use them before they
//! have an address: 0.0.0.0 (DHCP, ARP probes), :: (duplicate address
//! detection) and the vNIC's EUI-64 link-local address. Other EtherTypes pass
//! (only the MAC check applies to them).

use std::net::IpAddr;

use super::stats::DropReason;
use crate::packet::wire::ip::{ETHERTYPE_IPV4, ETHERTYPE_IPV6};
use crate::packet::wire::MacAddr;

const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_VLAN: u16 = 0x8100;

/// Field offsets, relative to the start of the L3 header.
mod off {
    pub const IPV4_SRC: usize = 12;
    pub const IPV6_NEXT: usize = 6;
    pub const IPV6_SRC: usize = 8;
    pub const IPV6_HDR: usize = 40;
    pub const ARP_SENDER_MAC: usize = 8;
    pub const ARP_SENDER_IP: usize = 14;
    pub const ARP_LEN: usize = 28;
    pub const ICMPV6_TYPE: usize = 0;
    /// The target address of a neighbour solicitation or advertisement.
    pub const ND_TARGET: usize = 8;
    /// Options follow the 24-byte NS/NA body.
    pub const ND_OPTIONS: usize = 24;
}

const PROTO_ICMPV6: u8 = 58;
const ND_SOLICIT: u8 = 135;
const ND_ADVERT: u8 = 136;
const ND_OPT_SOURCE_LLADDR: u8 = 1;
const ND_OPT_TARGET_LLADDR: u8 = 2;

/// The identity a vNIC's guest must keep to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpoofGuard {
    mac: MacAddr,
    /// `None`: addresses are not checked.
    ips: Option<AllowedIps>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct AllowedIps {
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
}

impl SpoofGuard {
    /// `allowed`: `None` checks only the MAC.
    pub fn new(mac: MacAddr, allowed: Option<&[IpAddr]>) -> Self {
        let ips = allowed.map(|list| {
            let mut v4 = vec![[0; 4]];
            let mut v6 = vec![[0; 16], link_local(mac)];
            for ip in list {
                match ip {
                    IpAddr::V4(a) => v4.push(a.octets()),
                    IpAddr::V6(a) => v6.push(a.octets()),
                }
            }
            AllowedIps { v4, v6 }
        });
        Self { mac, ips }
    }

    /// Checks one frame as the guest sent it.
    #[inline]
    pub fn check(&self, frame: &[u8]) -> Result<(), DropReason> {
        if frame.get(6..12) != Some(&self.mac.0[..]) {
            return Err(DropReason::SpoofedMac);
        }
        let Some(ips) = &self.ips else {
            return Ok(());
        };
        let mut at = 12;
        let mut ethertype = be16(frame, at).ok_or(DropReason::TooShort)?;
        if ethertype == ETHERTYPE_VLAN {
            at += 4;
            ethertype = be16(frame, at).ok_or(DropReason::TooShort)?;
        }
        let l3 = &frame[at + 2..];
        match ethertype {
            ETHERTYPE_IPV4 => {
                let src = array::<4>(l3, off::IPV4_SRC).ok_or(DropReason::SpoofedIp)?;
                ok_if(ips.v4.contains(&src), DropReason::SpoofedIp)
            }
            ETHERTYPE_ARP => {
                if l3.len() < off::ARP_LEN {
                    return Err(DropReason::SpoofedArp);
                }
                let mac = &l3[off::ARP_SENDER_MAC..off::ARP_SENDER_MAC + 6];
                let ip = array::<4>(l3, off::ARP_SENDER_IP).ok_or(DropReason::SpoofedArp)?;
                ok_if(
                    mac == self.mac.0 && ips.v4.contains(&ip),
                    DropReason::SpoofedArp,
                )
            }
            ETHERTYPE_IPV6 => {
                let src = array::<16>(l3, off::IPV6_SRC).ok_or(DropReason::SpoofedIp)?;
                if !ips.v6.contains(&src) {
                    return Err(DropReason::SpoofedIp);
                }
                if l3.get(off::IPV6_NEXT) == Some(&PROTO_ICMPV6) {
                    self.check_nd(&l3[l3.len().min(off::IPV6_HDR)..], ips)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// Neighbour discovery: an advertisement may only announce an allowed
    /// address, and a link-layer address option must be the vNIC's MAC.
    fn check_nd(&self, icmp: &[u8], ips: &AllowedIps) -> Result<(), DropReason> {
        let kind = icmp.get(off::ICMPV6_TYPE).copied();
        if kind != Some(ND_SOLICIT) && kind != Some(ND_ADVERT) {
            return Ok(());
        }
        if kind == Some(ND_ADVERT) {
            let target = array::<16>(icmp, off::ND_TARGET).ok_or(DropReason::SpoofedNd)?;
            if !ips.v6.contains(&target) {
                return Err(DropReason::SpoofedNd);
            }
        }
        let mut opts = icmp.get(off::ND_OPTIONS..).unwrap_or(&[]);
        while opts.len() >= 2 {
            let (kind, len) = (opts[0], usize::from(opts[1]) * 8);
            if len == 0 || len > opts.len() {
                return Err(DropReason::SpoofedNd);
            }
            if (kind == ND_OPT_SOURCE_LLADDR || kind == ND_OPT_TARGET_LLADDR)
                && opts.get(2..8) != Some(&self.mac.0[..])
            {
                return Err(DropReason::SpoofedNd);
            }
            opts = &opts[len..];
        }
        Ok(())
    }
}

/// fe80::/64 with the modified EUI-64 interface identifier of `mac`.
fn link_local(mac: MacAddr) -> [u8; 16] {
    let m = mac.0;
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..16].copy_from_slice(&[m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    a
}

fn ok_if(ok: bool, reason: DropReason) -> Result<(), DropReason> {
    if ok {
        Ok(())
    } else {
        Err(reason)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn array<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at + N)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    fn eth(src: MacAddr, ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src.0);
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
        let mut h = vec![0x60, 0, 0, 0, 0, 32, PROTO_ICMPV6, 255];
        h.extend_from_slice(&src);
        h.extend_from_slice(&[0xff; 16]);
        let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&target);
        icmp.extend_from_slice(&[ND_OPT_TARGET_LLADDR, 1]);
        icmp.extend_from_slice(&lladdr.0);
        h.extend_from_slice(&icmp);
        h
    }

    fn v6(last: u8) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[15] = last;
        a
    }

    #[test]
    fn mac_is_always_checked() {
        let g = SpoofGuard::new(MAC, None);
        assert_eq!(g.check(&eth(MAC, 0x88b5, &[0; 50])), Ok(()));
        assert_eq!(
            g.check(&eth(MAC, ETHERTYPE_IPV4, &ipv4([9, 9, 9, 9]))),
            Ok(())
        );
        assert_eq!(
            g.check(&eth(OTHER, 0x88b5, &[0; 50])),
            Err(DropReason::SpoofedMac)
        );
        assert_eq!(g.check(&[0; 8]), Err(DropReason::SpoofedMac));
    }

    #[test]
    fn addresses_are_checked_when_listed() {
        let allowed: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "2001::5".parse().unwrap()];
        let g = SpoofGuard::new(MAC, Some(&allowed));
        let ok = |f: Vec<u8>| assert_eq!(g.check(&f), Ok(()));
        let bad = |f: Vec<u8>, r| assert_eq!(g.check(&f), Err(r));
        ok(eth(MAC, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 5])));
        ok(eth(MAC, ETHERTYPE_IPV4, &ipv4([0, 0, 0, 0])));
        bad(
            eth(MAC, ETHERTYPE_IPV4, &ipv4([10, 0, 0, 6])),
            DropReason::SpoofedIp,
        );
        // Behind a VLAN tag as well.
        let mut tagged = vec![0, 5];
        tagged.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        tagged.extend_from_slice(&ipv4([10, 0, 0, 6]));
        bad(eth(MAC, ETHERTYPE_VLAN, &tagged), DropReason::SpoofedIp);
        ok(eth(MAC, ETHERTYPE_ARP, &arp(MAC, [10, 0, 0, 5])));
        bad(
            eth(MAC, ETHERTYPE_ARP, &arp(MAC, [10, 0, 0, 7])),
            DropReason::SpoofedArp,
        );
        bad(
            eth(MAC, ETHERTYPE_ARP, &arp(OTHER, [10, 0, 0, 5])),
            DropReason::SpoofedArp,
        );
        bad(eth(MAC, ETHERTYPE_ARP, &[0, 1]), DropReason::SpoofedArp);
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

    #[test]
    fn eui64_link_local() {
        assert_eq!(
            link_local(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])),
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x50, 0x54, 0, 0xff, 0xfe, 0x12, 0x34, 0x56]
        );
    }
}
