//! IPv4 and IPv6 header views, as far as flow steering needs them.

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

mod v4 {
    pub const MIN_LEN: usize = 20;
    pub const VER_IHL: usize = 0;
    pub const FRAG: usize = 6;
    pub const PROTO: usize = 9;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

mod v6 {
    pub const LEN: usize = 40;
    pub const NEXT: usize = 6;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// A checked view of an IPv4 header.
pub struct Ipv4Packet<'a> {
    bytes: &'a [u8],
    header_len: usize,
}

impl<'a> Ipv4Packet<'a> {
    /// `None` unless `bytes` holds a version-4 header of a valid length.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        let first = *bytes.get(v4::VER_IHL)?;
        let header_len = usize::from(first & 0x0f) * 4;
        (first >> 4 == 4 && header_len >= v4::MIN_LEN && bytes.len() >= header_len)
            .then_some(Self { bytes, header_len })
    }

    pub fn protocol(&self) -> u8 {
        self.bytes[v4::PROTO]
    }

    pub fn src(&self) -> [u8; 4] {
        self.bytes[v4::SRC..v4::SRC + 4]
            .try_into()
            .expect("length checked")
    }

    pub fn dst(&self) -> [u8; 4] {
        self.bytes[v4::DST..v4::DST + 4]
            .try_into()
            .expect("length checked")
    }

    /// True for any fragment (more-fragments set or a non-zero offset).
    pub fn is_fragment(&self) -> bool {
        u16::from_be_bytes([self.bytes[v4::FRAG], self.bytes[v4::FRAG + 1]]) & 0x3fff != 0
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }
}

/// A checked view of an IPv6 fixed header.
pub struct Ipv6Packet<'a> {
    bytes: &'a [u8],
}

impl<'a> Ipv6Packet<'a> {
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= v6::LEN && bytes[0] >> 4 == 6).then_some(Self { bytes })
    }

    pub fn next_header(&self) -> u8 {
        self.bytes[v6::NEXT]
    }

    pub fn src(&self) -> &'a [u8] {
        &self.bytes[v6::SRC..v6::SRC + 16]
    }

    pub fn dst(&self) -> &'a [u8] {
        &self.bytes[v6::DST..v6::DST + 16]
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[v6::LEN..]
    }
}

/// Source and destination ports of a TCP or UDP header, if long enough.
pub fn l4_ports(payload: &[u8]) -> Option<(u16, u16)> {
    let p = payload.get(0..4)?;
    Some((
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_view_checks_version_and_length() {
        let mut h = [0u8; 24];
        h[0] = 0x45;
        h[9] = PROTO_TCP;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        h[20..24].copy_from_slice(&[0x1f, 0x90, 0x00, 0x50]);
        let p = Ipv4Packet::new_checked(&h).unwrap();
        assert_eq!(p.protocol(), PROTO_TCP);
        assert_eq!(p.src(), [10, 0, 0, 1]);
        assert_eq!(l4_ports(p.payload()), Some((8080, 80)));
        assert!(!p.is_fragment());
        h[0] = 0x4f; // IHL 60 > 24 bytes
        assert!(Ipv4Packet::new_checked(&h).is_none());
        h[0] = 0x65;
        assert!(Ipv4Packet::new_checked(&h).is_none());
        assert!(Ipv4Packet::new_checked(&[]).is_none());
        assert!(Ipv6Packet::new_checked(&h).is_none());
    }
}
