//! ARP over Ethernet for IPv4 (RFC 826): the fields anti-spoofing reads.

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Offset of the sender hardware (MAC) address.
pub const SENDER_MAC: usize = 8;
/// Offset of the sender protocol (IPv4) address.
pub const SENDER_IP: usize = 14;
/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = 28;
