//! Flow hashing: which queue of a multiqueue port a frame goes to. One flow
//! always maps to one queue (no reordering); different TCP/UDP flows between
//! the same two hosts spread over the queues. The hash comes out of the one
//! parse of a frame's headers, whose result ([`Parsed`]) the frame carries.

use super::ethernet::{EthernetFrame, HEADER_LEN};
use super::ip::{
    l4_ports, Ipv4Packet, Ipv6Packet, ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_TCP, PROTO_UDP,
};

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(31)
}

/// splitmix64's finaliser: every input bit reaches the low bits, which pick
/// the queue.
#[inline]
fn finish(mut h: u64) -> u32 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    h as u32
}

/// What the first parse of a frame learns: where its headers are and its
/// flow hash. It travels in the frame handle (so it is kept to 8 bytes) and
/// lets every later engine skip the parse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Hash of the frame's flow: addresses and ports when it is TCP/UDP
    /// over IP, else its MAC addresses.
    pub hash: u32,
    /// Offset of the L3 header from the packet's start (the L2 header is
    /// at 0); 0 while the frame is not parsed.
    pub l3: u8,
    /// Offset of the TCP/UDP header whose ports went into the hash; 0 when
    /// there is none (not TCP/UDP over IP, a fragment, or truncated).
    pub l4: u8,
}

impl Parsed {
    /// Nobody has parsed the frame yet.
    pub const NOT_YET: Parsed = Parsed {
        hash: 0,
        l3: 0,
        l4: 0,
    };

    #[inline]
    pub fn is_parsed(&self) -> bool {
        self.l3 != 0
    }

    /// Parses `packet` (from its Ethernet header on); `None` when it is
    /// shorter than an Ethernet header. Never panics on any input.
    #[inline]
    pub fn of(packet: &[u8]) -> Option<Parsed> {
        let eth = EthernetFrame::new_checked(packet)?;
        let mut h = mix(eth.src().to_u64(), eth.dst().to_u64());
        let l3 = eth.payload();
        let (proto, l4) = match eth.ethertype() {
            ETHERTYPE_IPV4 => match Ipv4Packet::new_checked(l3) {
                Some(ip) => {
                    h = mix(
                        h,
                        u64::from(u32::from_be_bytes(ip.src())) << 32
                            | u64::from(u32::from_be_bytes(ip.dst())),
                    );
                    let l4 = if ip.is_fragment() {
                        &[][..]
                    } else {
                        ip.payload()
                    };
                    (ip.protocol(), l4)
                }
                None => (0, &[][..]),
            },
            ETHERTYPE_IPV6 => match Ipv6Packet::new_checked(l3) {
                Some(ip) => {
                    for chunk in ip.src().chunks_exact(8).chain(ip.dst().chunks_exact(8)) {
                        h = mix(h, u64::from_be_bytes(chunk.try_into().expect("8 bytes")));
                    }
                    (ip.next_header(), ip.payload())
                }
                None => (0, &[][..]),
            },
            _ => (0, &[][..]),
        };
        let mut l4_at = 0;
        if proto == PROTO_TCP || proto == PROTO_UDP {
            if let Some((sp, dp)) = l4_ports(l4) {
                h = mix(
                    h,
                    u64::from(sp) << 16 | u64::from(dp) | u64::from(proto) << 32,
                );
                // `l4` ends where the packet ends; it starts at most
                // 14 + 60 bytes in (IPv4 options), so the offset fits a u8.
                l4_at = (packet.len() - l4.len()) as u8;
            }
        }
        Some(Parsed {
            hash: finish(h),
            l3: HEADER_LEN as u8,
            l4: l4_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_frame(sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = PROTO_TCP;
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&5201u16.to_be_bytes());
        f
    }

    fn hash(f: &[u8]) -> u32 {
        Parsed::of(f).unwrap().hash
    }

    #[test]
    fn flows_between_two_hosts_spread_and_one_flow_is_stable() {
        let hashes: Vec<u32> = (40000..40016).map(|p| hash(&tcp_frame(p))).collect();
        assert_eq!(hashes[0], hash(&tcp_frame(40000)));
        let on_queue_1 = hashes.iter().filter(|h| *h % 2 == 1).count();
        assert!(
            (3..=13).contains(&on_queue_1),
            "16 flows over 2 queues: {on_queue_1} on one"
        );
        // The values of the hash before it moved into `Parsed`: queues (and
        // overlay entropy) of a flow stay where they were.
        assert_eq!(hashes[0], PINNED_40000);
        assert_eq!(hash(&tcp_frame(1)[..20]), PINNED_MACS_ONLY);
    }

    const PINNED_40000: u32 = 0x05a8_d222;
    const PINNED_MACS_ONLY: u32 = 0xc653_5faa;

    #[test]
    fn offsets_of_ipv4_ipv6_and_others_and_no_panic_on_any_cut() {
        let p = Parsed::of(&tcp_frame(7)).unwrap();
        assert!(p.is_parsed());
        assert_eq!((p.l3, p.l4), (14, 34));
        // IPv4 options move the TCP header.
        let mut opt = tcp_frame(7);
        opt[14] = 0x46;
        opt.splice(34..34, [0u8; 4]);
        assert_eq!(Parsed::of(&opt).unwrap().l4, 38);
        // A fragment has no ports to hash.
        let mut frag = tcp_frame(7);
        frag[14 + 6] = 0x20;
        assert_eq!(Parsed::of(&frag).unwrap().l4, 0);
        // UDP over IPv6.
        let mut v6 = vec![0u8; 14 + 40 + 8];
        v6[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        v6[14] = 0x60;
        v6[14 + 6] = PROTO_UDP;
        assert_eq!(Parsed::of(&v6).unwrap().l4, 54);
        // ARP: parsed, no L4.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let p = Parsed::of(&arp).unwrap();
        assert_eq!((p.l3, p.l4), (14, 0));
        assert!(!Parsed::NOT_YET.is_parsed());
        for f in [tcp_frame(7), opt, v6] {
            for cut in 0..f.len() {
                match Parsed::of(&f[..cut]) {
                    None => assert!(cut < 14),
                    Some(p) => assert!(usize::from(p.l4) + 4 <= cut.max(4)),
                }
            }
        }
    }
}
