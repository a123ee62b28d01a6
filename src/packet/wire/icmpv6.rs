//! ICMPv6 neighbour discovery (RFC 4861): the fields anti-spoofing reads.

/// Offset of the message type.
pub const TYPE: usize = 0;
pub const ND_SOLICIT: u8 = 135;
pub const ND_ADVERT: u8 = 136;
/// Offset of the target address of a neighbour solicitation or advertisement.
pub const ND_TARGET: usize = 8;
/// Options follow the 24-byte NS/NA body.
pub const ND_OPTIONS: usize = 24;
/// An option: type, length in units of 8 bytes, then its data.
pub const OPT_LEN_UNIT: usize = 8;
pub const OPT_SOURCE_LLADDR: u8 = 1;
pub const OPT_TARGET_LLADDR: u8 = 2;
/// Where the MAC address sits in a link-layer address option.
pub const OPT_LLADDR: std::ops::Range<usize> = 2..8;
