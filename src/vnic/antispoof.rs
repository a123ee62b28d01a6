//! Anti-spoofing (port security): what a guest may claim to be.
//!
//! Every frame a guest sends must carry an allowed MAC as its source: the
//! vNIC's own, or one of its allowed address pairs (OpenStack's term: extra
//! MACs a router or a VRRP pair answers for). Each allowed MAC may have a list
//! of allowed addresses; then the IP source and the sender fields of ARP and
//! IPv6 neighbour discovery must be among them too, so a guest cannot take
//! over another machine's address by answering for it. A few addresses are
//! always allowed because hosts use them before they have an address: 0.0.0.0
//! (DHCP, ARP probes), :: (duplicate address detection) and the MAC's EUI-64
//! link-local address. Other EtherTypes pass (only the MAC check applies).
//!
//! VLAN tags (QinQ included) and IPv6 extension headers are looked through,
//! both bounded; what hides its addresses beyond those bounds is dropped as
//! `unverifiable` while addresses are checked. With port security off (router
//! and firewall VMs forward other hosts' frames) nothing is checked.

use std::net::IpAddr;

use super::stats::DropReason;
use snapnet_wire::arp::{self, ArpPacket};
use snapnet_wire::icmpv6::{self, NdMessage};
use snapnet_wire::ip::{
    Ipv4Packet, Ipv6Packet, UpperLayer, ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_ICMPV6,
};
use snapnet_wire::vlan::{self, TagError};
use snapnet_wire::MacAddr;

/// The identity a vNIC's guest must keep to.
#[derive(Clone, Debug)]
pub struct SpoofGuard {
    /// Port security on: off, nothing is checked.
    enabled: bool,
    /// The vNIC's own MAC first (the common case is one compare), then the
    /// allowed address pairs.
    ids: Vec<Identity>,
    /// Source of the last frame refused as `spoofed_mac`, for the log line
    /// that says why frames vanish.
    refused_src: MacAddr,
}

#[derive(Clone, Debug)]
struct Identity {
    mac: MacAddr,
    /// `None`: addresses sent from this MAC are not checked.
    ips: Option<AllowedIps>,
}

#[derive(Clone, Debug)]
struct AllowedIps {
    v4: Vec<[u8; 4]>,
    v6: Vec<[u8; 16]>,
}

impl AllowedIps {
    fn new(mac: MacAddr, list: &[IpAddr]) -> Self {
        let mut v4 = vec![[0; 4]];
        let mut v6 = vec![[0; 16], link_local(mac)];
        for ip in list {
            match ip {
                IpAddr::V4(a) => v4.push(a.octets()),
                IpAddr::V6(a) => v6.push(a.octets()),
            }
        }
        Self { v4, v6 }
    }
}

impl SpoofGuard {
    /// The vNIC's own MAC; `allowed`: `None` checks only the MAC.
    pub fn new(mac: MacAddr, allowed: Option<&[IpAddr]>) -> Self {
        Self {
            enabled: true,
            ids: vec![Identity::new(mac, allowed)],
            refused_src: MacAddr::default(),
        }
    }

    /// One more MAC the guest may send from, with its own address list
    /// (`None`: addresses from it are not checked).
    pub fn with_pair(mut self, mac: MacAddr, allowed: Option<&[IpAddr]>) -> Self {
        self.ids.push(Identity::new(mac, allowed));
        self
    }

    /// Port security on or off.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    /// The vNIC's own MAC.
    pub fn mac(&self) -> MacAddr {
        self.ids[0].mac
    }

    /// The source MAC of the last frame refused as `spoofed_mac`.
    pub fn refused_src(&self) -> MacAddr {
        self.refused_src
    }

    /// Checks one frame as the guest sent it.
    #[inline]
    pub fn check(&mut self, frame: &[u8]) -> Result<(), DropReason> {
        if !self.enabled {
            return Ok(());
        }
        let Some(src) = frame.get(6..12) else {
            return Err(DropReason::SpoofedMac);
        };
        let Some(id) = self.ids.iter().find(|id| id.mac.0 == src) else {
            self.refused_src.0.copy_from_slice(src);
            return Err(DropReason::SpoofedMac);
        };
        match &id.ips {
            Some(ips) => check_addresses(frame, id.mac, ips),
            None => Ok(()),
        }
    }
}

impl Identity {
    fn new(mac: MacAddr, allowed: Option<&[IpAddr]>) -> Self {
        Self {
            mac,
            ips: allowed.map(|list| AllowedIps::new(mac, list)),
        }
    }
}

/// The addresses a frame from `mac` claims, against `ips`.
fn check_addresses(frame: &[u8], mac: MacAddr, ips: &AllowedIps) -> Result<(), DropReason> {
    let (ethertype, at) = vlan::inner_ethertype(frame).map_err(|e| match e {
        TagError::Truncated => DropReason::TooShort,
        TagError::TooMany => DropReason::Unverifiable,
    })?;
    let l3 = frame.get(at..).unwrap_or(&[]);
    match ethertype {
        ETHERTYPE_IPV4 => {
            let ip = Ipv4Packet::new_checked(l3).ok_or(DropReason::SpoofedIp)?;
            ok_if(ips.v4.contains(&ip.src()), DropReason::SpoofedIp)
        }
        arp::ETHERTYPE_ARP => {
            let arp = ArpPacket::new_checked(l3).ok_or(DropReason::SpoofedArp)?;
            ok_if(
                arp.sender_mac() == mac && ips.v4.contains(&arp.sender_ip()),
                DropReason::SpoofedArp,
            )
        }
        ETHERTYPE_IPV6 => check_ipv6(l3, mac, ips),
        _ => Ok(()),
    }
}

fn check_ipv6(l3: &[u8], mac: MacAddr, ips: &AllowedIps) -> Result<(), DropReason> {
    let ip = Ipv6Packet::new_checked(l3).ok_or(DropReason::SpoofedIp)?;
    let src: [u8; 16] = ip.src().try_into().map_err(|_| DropReason::SpoofedIp)?;
    if !ips.v6.contains(&src) {
        return Err(DropReason::SpoofedIp);
    }
    match ip.upper_layer() {
        Err(_) => Err(DropReason::Unverifiable),
        Ok(UpperLayer::Header {
            protocol: PROTO_ICMPV6,
            bytes,
            fragmented,
        }) => {
            let kind = icmpv6::message_type(bytes);
            // Receivers ignore fragmented neighbour discovery (RFC 6980),
            // and its options could hide in a later fragment. A first
            // fragment must show its type: a later fragment starts at least
            // 8 bytes in, so it can never supply or rewrite the type.
            if fragmented && kind.is_none_or(icmpv6::is_nd) {
                return Err(DropReason::Unverifiable);
            }
            check_nd(bytes, mac, ips)
        }
        // A later ICMPv6 fragment holds no type: its first fragment was
        // checked above (and dropped if it was neighbour discovery).
        Ok(_) => Ok(()),
    }
}

/// Neighbour discovery: an advertisement may only announce an allowed
/// address, and a link-layer address option must be the sender's MAC.
fn check_nd(icmp: &[u8], mac: MacAddr, ips: &AllowedIps) -> Result<(), DropReason> {
    let Some(kind) = icmpv6::message_type(icmp).filter(|k| icmpv6::is_nd(*k)) else {
        return Ok(());
    };
    let Some(nd) = NdMessage::new_checked(icmp) else {
        // Too short to hold its target: an advertisement of nothing we can
        // check; a solicitation without options (no receiver takes either).
        return ok_if(kind != icmpv6::ND_ADVERT, DropReason::SpoofedNd);
    };
    if kind == icmpv6::ND_ADVERT && !ips.v6.contains(&nd.target()) {
        return Err(DropReason::SpoofedNd);
    }
    for lladdr in nd.lladdr_options() {
        ok_if(lladdr == Ok(mac), DropReason::SpoofedNd)?;
    }
    Ok(())
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

#[cfg(test)]
#[path = "antispoof_tests.rs"]
mod tests;
