//! The RARP announcement a hypervisor sends for a guest that just moved
//! (QEMU's `qemu_announce_self`, DPDK's `rte_net_make_rarp_packet`): a
//! broadcast whose source MAC tells every switch on the way the guest's new
//! port. RARP (RFC 903) shares ARP's layout.

use super::arp::{SENDER_IP, SENDER_MAC};
use super::ethernet::{MacAddr, DST, ETHERTYPE, HEADER_LEN, SRC};

/// EtherType of RARP.
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// An announcement's length: Ethernet's minimum frame (without FCS).
pub const ANNOUNCE_LEN: usize = 60;

const HTYPE: usize = 0;
const PTYPE: usize = 2;
const HLEN: usize = 4;
const PLEN: usize = 5;
const OPER: usize = 6;
const TARGET_MAC: usize = 18;
const TARGET_IP: usize = 24;
const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;
/// "Reverse request": what QEMU and DPDK send.
const OPER_REVERSE_REQUEST: u16 = 3;

/// Writes the announcement of `mac` into `buf` (at least [`ANNOUNCE_LEN`]
/// bytes): broadcast from `mac`, sender and target hardware address `mac`,
/// no protocol addresses, zero padding.
pub fn write_announce(buf: &mut [u8], mac: MacAddr) {
    let buf = &mut buf[..ANNOUNCE_LEN];
    buf.fill(0);
    buf[DST].copy_from_slice(&MacAddr::BROADCAST.0);
    buf[SRC].copy_from_slice(&mac.0);
    buf[ETHERTYPE].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    let rarp = &mut buf[HEADER_LEN..];
    rarp[HTYPE..HTYPE + 2].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    rarp[PTYPE..PTYPE + 2].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
    rarp[HLEN] = 6;
    rarp[PLEN] = 4;
    rarp[OPER..OPER + 2].copy_from_slice(&OPER_REVERSE_REQUEST.to_be_bytes());
    rarp[SENDER_MAC..SENDER_MAC + 6].copy_from_slice(&mac.0);
    rarp[SENDER_IP..SENDER_IP + 4].fill(0);
    rarp[TARGET_MAC..TARGET_MAC + 6].copy_from_slice(&mac.0);
    rarp[TARGET_IP..TARGET_IP + 4].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::wire::EthernetFrame;

    #[test]
    fn an_announcement_is_a_broadcast_rarp_from_the_guest() {
        let mac = MacAddr([0x52, 0x54, 0, 0x5a, 0, 1]);
        let mut buf = [0xaa; 64];
        write_announce(&mut buf, mac);
        let f = EthernetFrame::new_checked(&buf[..ANNOUNCE_LEN]).unwrap();
        assert_eq!(
            (f.dst(), f.src(), f.ethertype()),
            (MacAddr::BROADCAST, mac, ETHERTYPE_RARP)
        );
        let p = f.payload();
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(&p[8..14], &mac.0);
        assert_eq!(&p[18..24], &mac.0);
        assert!(p[14..18].iter().chain(&p[24..]).all(|&b| b == 0));
        assert_eq!(buf[ANNOUNCE_LEN], 0xaa, "nothing written past the frame");
    }
}
