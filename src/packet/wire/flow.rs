//! Flow hashing: which queue of a multiqueue port a frame goes to. One flow
//! always maps to one queue (no reordering); different TCP/UDP flows between
//! the same two hosts spread over the queues.

use super::ethernet::EthernetFrame;
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

/// Hash of the frame's flow: addresses and ports when it is TCP/UDP over IP,
/// else its MAC addresses.
#[inline]
pub fn flow_hash(eth: &EthernetFrame<'_>) -> u32 {
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
            None => return finish(h),
        },
        ETHERTYPE_IPV6 => match Ipv6Packet::new_checked(l3) {
            Some(ip) => {
                for chunk in ip.src().chunks_exact(8).chain(ip.dst().chunks_exact(8)) {
                    h = mix(h, u64::from_be_bytes(chunk.try_into().expect("8 bytes")));
                }
                (ip.next_header(), ip.payload())
            }
            None => return finish(h),
        },
        _ => return finish(h),
    };
    if proto == PROTO_TCP || proto == PROTO_UDP {
        if let Some((sp, dp)) = l4_ports(l4) {
            h = mix(
                h,
                u64::from(sp) << 16 | u64::from(dp) | u64::from(proto) << 32,
            );
        }
    }
    finish(h)
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

    #[test]
    fn flows_between_two_hosts_spread_and_one_flow_is_stable() {
        let hashes: Vec<u32> = (40000..40016)
            .map(|p| flow_hash(&EthernetFrame::new_checked(&tcp_frame(p)).unwrap()))
            .collect();
        let f = tcp_frame(40000);
        assert_eq!(
            hashes[0],
            flow_hash(&EthernetFrame::new_checked(&f).unwrap())
        );
        let on_queue_1 = hashes.iter().filter(|h| *h % 2 == 1).count();
        assert!(
            (3..=13).contains(&on_queue_1),
            "16 flows over 2 queues: {on_queue_1} on one"
        );
        // A runt IP header falls back to the MACs, never panics.
        let mut short = tcp_frame(1);
        short.truncate(20);
        flow_hash(&EthernetFrame::new_checked(&short).unwrap());
    }
}
