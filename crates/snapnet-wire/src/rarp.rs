//! The RARP announcement a hypervisor sends for a guest that just moved
//! (QEMU's `qemu_announce_self`, DPDK's `rte_net_make_rarp_packet`): a
//! broadcast whose source MAC tells every switch on the way the guest's new
//! port. RARP (RFC 903) shares ARP's layout.

use crate::arp::{ArpPacket, OPER_REVERSE_REQUEST};
use crate::ethernet::{EthernetFrame, MacAddr, HEADER_LEN};

/// EtherType of RARP.
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// An announcement's length: Ethernet's minimum frame (without FCS).
pub const ANNOUNCE_LEN: usize = 60;

/// Writes the announcement of `mac` into `buf` (at least [`ANNOUNCE_LEN`]
/// bytes): broadcast from `mac`, sender and target hardware address `mac`,
/// no protocol addresses, zero padding.
pub fn write_announce(buf: &mut [u8], mac: MacAddr) {
    let buf = &mut buf[..ANNOUNCE_LEN];
    buf.fill(0);
    EthernetFrame::emit(&mut buf[..], MacAddr::BROADCAST, mac, ETHERTYPE_RARP)
        .expect("an announcement holds an Ethernet header");
    ArpPacket::emit(
        &mut buf[HEADER_LEN..],
        OPER_REVERSE_REQUEST,
        (mac, [0; 4]),
        (mac, [0; 4]),
    )
    .expect("an announcement holds an ARP packet");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EthernetFrame;

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
