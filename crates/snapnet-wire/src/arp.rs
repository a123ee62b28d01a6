//! ARP over Ethernet for IPv4 (RFC 826); RARP (RFC 903) shares its layout.

use crate::bytes::{get_u16, set_u16};
use crate::ethernet::MacAddr;
use crate::ip::ETHERTYPE_IPV4;

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = 28;

/// Field offsets.
pub mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SENDER_MAC: usize = 8;
    pub const SENDER_IP: usize = 14;
    pub const TARGET_MAC: usize = 18;
    pub const TARGET_IP: usize = 24;
}

/// Hardware type Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;
pub const OPER_REQUEST: u16 = 1;
pub const OPER_REPLY: u16 = 2;
/// RARP's "reverse request" (what hypervisors announce a moved guest with).
pub const OPER_REVERSE_REQUEST: u16 = 3;

/// A checked view of an Ethernet/IPv4 ARP packet at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct ArpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// `None` when `buffer` cannot hold an Ethernet/IPv4 ARP packet. The
    /// hardware and protocol types are not checked: callers that care ask.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= LEN).then_some(Self { buffer })
    }

    /// Ethernet hardware addresses and IPv4 protocol addresses, of the
    /// lengths those have: the only ARP snapnet reads further.
    #[inline]
    pub fn is_ethernet_ipv4(&self) -> bool {
        let b = self.buffer.as_ref();
        get_u16(b, field::HTYPE) == HTYPE_ETHERNET
            && get_u16(b, field::PTYPE) == ETHERTYPE_IPV4
            && b[field::HLEN] == 6
            && b[field::PLEN] == 4
    }

    #[inline]
    pub fn operation(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::OPER)
    }

    #[inline]
    pub fn sender_mac(&self) -> MacAddr {
        self.mac(field::SENDER_MAC)
    }

    #[inline]
    pub fn sender_ip(&self) -> [u8; 4] {
        self.ip(field::SENDER_IP)
    }

    #[inline]
    pub fn target_mac(&self) -> MacAddr {
        self.mac(field::TARGET_MAC)
    }

    #[inline]
    pub fn target_ip(&self) -> [u8; 4] {
        self.ip(field::TARGET_IP)
    }

    fn mac(&self, at: usize) -> MacAddr {
        MacAddr(
            self.buffer.as_ref()[at..at + 6]
                .try_into()
                .expect("length checked"),
        )
    }

    fn ip(&self, at: usize) -> [u8; 4] {
        self.buffer.as_ref()[at..at + 4]
            .try_into()
            .expect("length checked")
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Writes an Ethernet/IPv4 packet of `operation` into the first [`LEN`]
    /// bytes of `buffer`; `None` when it is shorter.
    pub fn emit(
        mut buffer: T,
        operation: u16,
        sender: (MacAddr, [u8; 4]),
        target: (MacAddr, [u8; 4]),
    ) -> Option<Self> {
        let b = buffer.as_mut().get_mut(..LEN)?;
        set_u16(b, field::HTYPE, HTYPE_ETHERNET);
        set_u16(b, field::PTYPE, ETHERTYPE_IPV4);
        b[field::HLEN] = 6;
        b[field::PLEN] = 4;
        set_u16(b, field::OPER, operation);
        b[field::SENDER_MAC..field::SENDER_MAC + 6].copy_from_slice(&sender.0 .0);
        b[field::SENDER_IP..field::SENDER_IP + 4].copy_from_slice(&sender.1);
        b[field::TARGET_MAC..field::TARGET_MAC + 6].copy_from_slice(&target.0 .0);
        b[field::TARGET_IP..field::TARGET_IP + 4].copy_from_slice(&target.1);
        Some(Self { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_and_read_back() {
        let (a, b) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
        let mut buf = [0u8; LEN];
        let p = ArpPacket::emit(
            &mut buf[..],
            OPER_REPLY,
            (a, [10, 0, 0, 1]),
            (b, [10, 0, 0, 2]),
        )
        .unwrap();
        assert_eq!(p.operation(), OPER_REPLY);
        assert_eq!((p.sender_mac(), p.sender_ip()), (a, [10, 0, 0, 1]));
        assert_eq!((p.target_mac(), p.target_ip()), (b, [10, 0, 0, 2]));
        assert!(p.is_ethernet_ipv4());
        assert_eq!(&buf[..8], &[0, 1, 8, 0, 6, 4, 0, 2]);
        buf[5] = 16;
        assert!(!ArpPacket::new_checked(&buf[..]).unwrap().is_ethernet_ipv4());
        assert!(ArpPacket::new_checked(&buf[..LEN - 1]).is_none());
    }
}
