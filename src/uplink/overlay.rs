//! The VXLAN overlay of an uplink: each virtual network's frames travel
//! encapsulated (UDP 4789, VNI = network) to the remote host that owns the
//! destination MAC, from a table the control plane programs; broadcast and
//! unknown unicast go to every remote host of the network (head-end
//! replication). Received VXLAN is accepted only for a known network from a
//! remote host of that network.
//!
//! Encapsulation is in place: the 50 outer bytes go into the frame's
//! headroom, so a frame from a guest reaches the wire without a copy
//! (replicas are copies).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::packet::fast_hash::{FastMap, NetMac};
use crate::packet::{FrameHandle, FramePool};
use snapnet_wire::ethernet::{self, EthernetFrame, MacAddr};
use snapnet_wire::flow::Parsed;
use snapnet_wire::ip::{ETHERTYPE_IPV4, PROTO_UDP};
use snapnet_wire::ipv4::{self, Ipv4Packet};
use snapnet_wire::udp::{self, UdpPacket};
use snapnet_wire::vxlan::{self, VxlanHeader};

/// Outer Ethernet + IPv4 (no options) + UDP + VXLAN.
pub const OVERHEAD: usize =
    ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + vxlan::HEADER_LEN;

/// An overlay as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    /// This host's underlay address on the uplink (the outer source).
    pub local_ip: Ipv4Addr,
    /// The other hosts and the networks each of them has guests in.
    #[serde(default)]
    pub remotes: Vec<RemoteHost>,
    /// Where guests' MACs live: (network, MAC) -> remote host.
    #[serde(default)]
    pub macs: Vec<RemoteMac>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteHost {
    pub ip: Ipv4Addr,
    /// The underlay next hop's MAC for this host (the host itself on one
    /// L2 segment, the router otherwise).
    #[serde(with = "snapnet_wire::mac_string")]
    pub mac: MacAddr,
    pub networks: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteMac {
    pub network: u32,
    #[serde(with = "snapnet_wire::mac_string")]
    pub mac: MacAddr,
    /// The remote host (one of `remotes`).
    pub remote: Ipv4Addr,
    /// The guest's addresses: ARP requests and neighbour solicitations for
    /// them are answered on this host instead of crossing the fabric
    /// (`neighbour_proxy.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<std::net::IpAddr>,
}

fn neighbour_key(network: u32, ip: [u8; 4]) -> u64 {
    u64::from(network) << 32 | u64::from(u32::from_be_bytes(ip))
}

/// Why a received VXLAN frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapError {
    /// Not VXLAN to us, or headers that do not parse.
    Malformed,
    /// A VNI no remote host is configured for.
    UnknownNetwork,
    /// The outer source is not a remote host of that network.
    UnknownRemote,
}

/// The table an uplink engine encapsulates and checks with.
#[derive(Clone, Debug)]
pub struct OverlayTable {
    local_ip: [u8; 4],
    local_mac: MacAddr,
    hosts: Vec<([u8; 4], MacAddr)>,
    by_network: FastMap<u32, Vec<usize>>,
    by_mac: FastMap<NetMac, usize>,
    /// (network << 32 | IPv4 address) -> the remote guest's MAC.
    neighbours: FastMap<u64, MacAddr>,
    /// (network, IPv6 address) -> the remote guest's MAC.
    neighbours6: FastMap<(u32, u128), MacAddr>,
    max_fanout: usize,
}

impl OverlayTable {
    /// Builds the table; `Err` names what is inconsistent.
    pub fn new(cfg: &OverlayConfig, local_mac: MacAddr) -> Result<Self, String> {
        let mut hosts = Vec::new();
        let mut by_network: FastMap<u32, Vec<usize>> = FastMap::default();
        for (i, r) in cfg.remotes.iter().enumerate() {
            if hosts.iter().any(|(ip, _)| *ip == r.ip.octets()) {
                return Err(format!("remotes[{i}]: {} is listed twice", r.ip));
            }
            hosts.push((r.ip.octets(), r.mac));
            for n in &r.networks {
                by_network.entry(*n).or_default().push(i);
            }
        }
        // A directory's table has thousands of MACs over a hundred hosts.
        let host_of: FastMap<u32, usize> = hosts
            .iter()
            .enumerate()
            .map(|(i, (ip, _))| (u32::from_be_bytes(*ip), i))
            .collect();
        let mut by_mac = FastMap::default();
        by_mac.reserve(cfg.macs.len());
        let mut neighbours = FastMap::default();
        let mut neighbours6 = FastMap::default();
        for (i, m) in cfg.macs.iter().enumerate() {
            let Some(&h) = host_of.get(&u32::from(m.remote)) else {
                return Err(format!("macs[{i}]: {} is not among the remotes", m.remote));
            };
            by_mac.insert(NetMac::new(m.network, m.mac), h);
            for ip in &m.ips {
                match ip {
                    std::net::IpAddr::V4(v4) => {
                        neighbours.insert(neighbour_key(m.network, v4.octets()), m.mac);
                    }
                    std::net::IpAddr::V6(v6) => {
                        neighbours6.insert((m.network, u128::from(*v6)), m.mac);
                    }
                }
            }
        }
        let max_fanout = by_network.values().map(Vec::len).max().unwrap_or(0);
        Ok(Self {
            local_ip: cfg.local_ip.octets(),
            local_mac,
            hosts,
            by_network,
            by_mac,
            neighbours,
            neighbours6,
            max_fanout: max_fanout.max(1),
        })
    }

    /// Whether any remote guest's addresses are known (else no ARP or ND
    /// can be answered here).
    #[inline]
    pub fn knows_addresses(&self) -> bool {
        !self.neighbours.is_empty() || !self.neighbours6.is_empty()
    }

    /// The MAC of the remote guest of `network` with IPv4 address `ip`, if
    /// the table knows its addresses.
    #[inline]
    pub fn neighbour(&self, network: u32, ip: [u8; 4]) -> Option<MacAddr> {
        if self.neighbours.is_empty() {
            return None;
        }
        self.neighbours.get(&neighbour_key(network, ip)).copied()
    }

    /// The MAC of the remote guest of `network` with IPv6 address `ip`, if
    /// the table knows its addresses.
    #[inline]
    pub fn neighbour6(&self, network: u32, ip: [u8; 16]) -> Option<MacAddr> {
        if self.neighbours6.is_empty() {
            return None;
        }
        self.neighbours6
            .get(&(network, u128::from_be_bytes(ip)))
            .copied()
    }

    /// Most copies one frame can become (head-end replication).
    pub fn max_fanout(&self) -> usize {
        self.max_fanout
    }

    /// The remote hosts a frame of `network` to `dst` goes to: the owner of
    /// a known unicast MAC, else every remote host of the network.
    pub fn targets(&self, network: u32, dst: MacAddr, out: &mut Vec<usize>) {
        out.clear();
        if !dst.is_group() {
            if let Some(h) = self.by_mac.get(&NetMac::new(network, dst)) {
                out.push(*h);
                return;
            }
        }
        if let Some(list) = self.by_network.get(&network) {
            out.extend_from_slice(list);
        }
    }

    /// Puts the outer headers for remote host `host` in front of `frame`
    /// (whose network is the VNI). False when the headroom is too small, or
    /// the frame too long for the outer IPv4 and UDP length fields.
    pub fn encap(
        &self,
        pool: &FramePool,
        frame: &mut FrameHandle,
        host: usize,
        entropy: u16,
    ) -> bool {
        let Some(&(remote_ip, remote_mac)) = self.hosts.get(host) else {
            return false;
        };
        let inner = frame.len as usize;
        let Some(start) = usize::from(frame.offset).checked_sub(OVERHEAD) else {
            return false;
        };
        let outer = OuterHeaders {
            remote_mac,
            local_mac: self.local_mac,
            remote_ip,
            local_ip: self.local_ip,
            // The source port carries the inner flow's entropy (RFC 7348),
            // so the fabric spreads flows.
            src_port: 49152 | (entropy & 0x3fff),
            vni: frame.network,
        };
        if outer
            .write(&mut pool.frame_mut(frame)[start..start + OVERHEAD], inner)
            .is_none()
        {
            return false;
        }
        frame.offset = start as u16;
        frame.len += OVERHEAD as u32;
        frame.parsed = Parsed::NOT_YET;
        true
    }

    /// Checks a received frame and strips its outer headers; the frame's
    /// network becomes its VNI.
    pub fn decap(&self, pool: &FramePool, frame: &mut FrameHandle) -> Result<(), DecapError> {
        let (network, src, inner) = self.outer_of(pool.bytes(frame))?;
        let Some(list) = self.by_network.get(&network) else {
            return Err(DecapError::UnknownNetwork);
        };
        if !list.iter().any(|h| self.hosts[*h].0 == src) {
            return Err(DecapError::UnknownRemote);
        }
        frame.offset += OVERHEAD as u16;
        frame.len = inner as u32;
        frame.network = network;
        frame.parsed = Parsed::NOT_YET;
        Ok(())
    }
}

impl OverlayTable {
    /// The VNI, outer source and inner length of a VXLAN frame to this
    /// host: IPv4 without options, UDP to the VXLAN port, the VNI flag set,
    /// lengths that agree with each other and with the frame, and an inner
    /// frame of at least an Ethernet header.
    fn outer_of(&self, b: &[u8]) -> Result<(u32, [u8; 4], usize), DecapError> {
        let eth = EthernetFrame::new_checked(b)
            .filter(|e| e.ethertype() == ETHERTYPE_IPV4)
            .ok_or(DecapError::Malformed)?;
        let ip = Ipv4Packet::new_checked(eth.payload())
            .filter(|ip| {
                ip.header_len() == ipv4::MIN_HEADER_LEN
                    && ip.protocol() == PROTO_UDP
                    && ip.dst() == self.local_ip
            })
            .ok_or(DecapError::Malformed)?;
        let udp = UdpPacket::new_checked(ip.payload())
            .filter(|u| u.dst_port() == vxlan::PORT)
            .ok_or(DecapError::Malformed)?;
        let vxlan = VxlanHeader::new_checked(&ip.payload()[udp::HEADER_LEN..])
            .filter(|v| v.has_vni())
            .ok_or(DecapError::Malformed)?;
        let (ip_total, udp_len) = (usize::from(ip.total_len()), usize::from(udp.length()));
        let outer_l4 = udp::HEADER_LEN + vxlan::HEADER_LEN;
        if b.len() < OVERHEAD + ethernet::HEADER_LEN
            || ip_total + ethernet::HEADER_LEN > b.len()
            || udp_len + ipv4::MIN_HEADER_LEN != ip_total
            || udp_len < outer_l4 + ethernet::HEADER_LEN
        {
            return Err(DecapError::Malformed);
        }
        Ok((vxlan.vni(), ip.src(), udp_len - outer_l4))
    }
}

/// The outer headers of one encapsulated frame.
struct OuterHeaders {
    remote_mac: MacAddr,
    local_mac: MacAddr,
    remote_ip: [u8; 4],
    local_ip: [u8; 4],
    src_port: u16,
    vni: u32,
}

impl OuterHeaders {
    /// Writes them into `buf` ([`OVERHEAD`] bytes) for an inner frame of
    /// `inner` bytes; the UDP checksum is zero (allowed over IPv4).
    fn write(&self, buf: &mut [u8], inner: usize) -> Option<()> {
        let (eth, rest) = buf.split_at_mut(ethernet::HEADER_LEN);
        let (ip, rest) = rest.split_at_mut(ipv4::MIN_HEADER_LEN);
        let (udp, vxlan) = rest.split_at_mut(udp::HEADER_LEN);
        let udp_len = u16::try_from(udp::HEADER_LEN + vxlan::HEADER_LEN + inner).ok()?;
        let ip_len = udp_len.checked_add(ipv4::MIN_HEADER_LEN as u16)?;
        EthernetFrame::emit(eth, self.remote_mac, self.local_mac, ETHERTYPE_IPV4)?;
        Ipv4Packet::emit(ip, ip_len, PROTO_UDP, self.local_ip, self.remote_ip)?;
        UdpPacket::emit(udp, self.src_port, vxlan::PORT, udp_len)?;
        VxlanHeader::emit(vxlan, self.vni)?;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::PoolConfig;
    use snapnet_wire::checksum::ones_sum;

    const LOCAL: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const REMOTE: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
    const GUEST: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 9]);

    fn table(
        local: [u8; 4],
        remote: [u8; 4],
        remote_mac: MacAddr,
        local_mac: MacAddr,
    ) -> OverlayTable {
        OverlayTable::new(
            &OverlayConfig {
                local_ip: Ipv4Addr::from(local),
                remotes: vec![RemoteHost {
                    ip: Ipv4Addr::from(remote),
                    mac: remote_mac,
                    networks: vec![100],
                }],
                macs: vec![RemoteMac {
                    network: 100,
                    mac: GUEST,
                    remote: Ipv4Addr::from(remote),
                    ips: vec![],
                }],
            },
            local_mac,
        )
        .unwrap()
    }

    #[test]
    fn encap_then_decap_on_the_other_side_gives_the_frame_back() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let a = table([10, 0, 0, 1], [10, 0, 0, 2], REMOTE, LOCAL);
        let b = table([10, 0, 0, 2], [10, 0, 0, 1], LOCAL, REMOTE);
        let mut f = cache.alloc(100).unwrap();
        f.len = 100;
        f.network = 100;
        let off = usize::from(f.offset);
        let inner: Vec<u8> = (0..100u8).collect();
        pool.frame_mut(&mut f)[off..off + 100].copy_from_slice(&inner);
        let mut t = Vec::new();
        a.targets(100, GUEST, &mut t);
        assert_eq!(t, vec![0]);
        a.targets(100, MacAddr::BROADCAST, &mut t);
        assert_eq!(t, vec![0]);
        a.targets(200, MacAddr::BROADCAST, &mut t);
        assert!(t.is_empty(), "no remote in network 200");
        // A parse of the inner frame does not survive the outer headers.
        f.parsed = Parsed::of(&inner).unwrap();
        assert!(a.encap(&pool, &mut f, 0, 0x1234));
        assert!(!f.parsed.is_parsed());
        let outer = pool.bytes(&f).to_vec();
        assert_eq!(outer.len(), 150);
        assert_eq!(&outer[..6], &REMOTE.0);
        assert_eq!(!ones_sum(&outer[14..34]), 0, "outer IPv4 checksum");
        assert_eq!(&outer[46..49], &[0, 0, 100], "VNI");
        f.network = 0;
        f.parsed = Parsed::of(pool.bytes(&f)).unwrap();
        b.decap(&pool, &mut f).unwrap();
        assert!(!f.parsed.is_parsed());
        assert_eq!(f.network, 100);
        assert_eq!(pool.bytes(&f), &inner[..]);
        // The receiving side refuses what it does not know.
        let mut g = cache.alloc(200).unwrap();
        g.len = 100;
        g.network = 7;
        assert!(a.encap(&pool, &mut g, 0, 1));
        assert_eq!(b.decap(&pool, &mut g), Err(DecapError::UnknownNetwork));
        let stranger = table([10, 0, 0, 2], [10, 0, 0, 3], LOCAL, REMOTE);
        let mut h = cache.alloc(200).unwrap();
        h.len = 100;
        h.network = 100;
        assert!(a.encap(&pool, &mut h, 0, 1));
        assert_eq!(
            stranger.decap(&pool, &mut h),
            Err(DecapError::UnknownRemote)
        );
        // Truncated or foreign frames never panic.
        for cut in 0..150u32 {
            let mut x = cache.alloc(200).unwrap();
            x.len = 100;
            x.network = 100;
            assert!(a.encap(&pool, &mut x, 0, 1));
            x.len = cut;
            assert!(b.decap(&pool, &mut x).is_err());
            cache.free(x);
        }
        for x in [f, g, h] {
            cache.free(x);
        }
    }
}
