//! IPv4 and IPv6 header views, as far as flow steering needs them.

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers that may stand between the fixed header and the
/// upper-layer header (RFC 8200 section 4; AH from RFC 4302).
pub mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
    /// Offsets within an extension header.
    pub const NEXT: usize = 0;
    pub const LEN: usize = 1;
    /// The fragment header: fixed size, offset in its top 13 bits.
    pub const FRAGMENT_LEN: usize = 8;
    pub const FRAGMENT_OFFSET: usize = 2;
    pub const FRAGMENT_OFFSET_MASK: u16 = 0xfff8;
    /// Headers walked before giving up: RFC 8200's recommended order has at
    /// most six before the upper layer; a longer chain is no real host's.
    pub const MAX_HEADERS: usize = 8;
}

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

    /// Walks the extension headers (at most [`ext::MAX_HEADERS`]) to the
    /// upper-layer header.
    pub fn upper_layer(&self) -> Result<UpperLayer<'a>, ExtError> {
        let b = self.bytes;
        let mut next = self.next_header();
        let mut at = v6::LEN;
        let mut fragmented = false;
        for _ in 0..=ext::MAX_HEADERS {
            let len = match next {
                ext::HOP_BY_HOP | ext::ROUTING | ext::DEST_OPTS => {
                    (usize::from(*b.get(at + ext::LEN).ok_or(ExtError::Truncated)?) + 1) * 8
                }
                ext::AUTH => {
                    (usize::from(*b.get(at + ext::LEN).ok_or(ExtError::Truncated)?) + 2) * 4
                }
                ext::FRAGMENT => {
                    let o = b
                        .get(at + ext::FRAGMENT_OFFSET..at + ext::FRAGMENT_OFFSET + 2)
                        .ok_or(ExtError::Truncated)?;
                    fragmented = true;
                    if u16::from_be_bytes([o[0], o[1]]) & ext::FRAGMENT_OFFSET_MASK != 0 {
                        return Ok(UpperLayer::LaterFragment {
                            protocol: b[at + ext::NEXT],
                        });
                    }
                    ext::FRAGMENT_LEN
                }
                protocol => {
                    return Ok(UpperLayer::Header {
                        protocol,
                        bytes: &b[at..],
                        fragmented,
                    })
                }
            };
            next = *b.get(at + ext::NEXT).ok_or(ExtError::Truncated)?;
            at += len;
            if at > b.len() {
                return Err(ExtError::Truncated);
            }
        }
        Err(ExtError::TooMany)
    }
}

/// Where an IPv6 packet's upper-layer header is.
#[derive(Debug, PartialEq, Eq)]
pub enum UpperLayer<'a> {
    /// `bytes` starts with the header of `protocol` (which may be
    /// truncated); `fragmented`: this is the first fragment of several.
    Header {
        protocol: u8,
        bytes: &'a [u8],
        fragmented: bool,
    },
    /// A fragment other than the first: it carries a later part of a
    /// `protocol` payload and no header of it.
    LaterFragment { protocol: u8 },
}

/// Why the upper-layer header of an IPv6 packet could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtError {
    /// The packet ends inside an extension header.
    Truncated,
    /// More than [`ext::MAX_HEADERS`] extension headers.
    TooMany,
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

    /// A fixed IPv6 header followed by `exts` (next header, bytes) and an
    /// upper-layer header of `proto`.
    fn ipv6(exts: &[(u8, Vec<u8>)], proto: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        let mut next_at = 6;
        for (kind, body) in exts {
            p[next_at] = *kind;
            next_at = p.len();
            p.extend_from_slice(body);
        }
        p[next_at] = proto;
        p.extend_from_slice(&[135, 0, 0, 0]);
        p
    }

    fn opts(len8: u8) -> Vec<u8> {
        let mut v = vec![0u8; (usize::from(len8) + 1) * 8];
        v[1] = len8;
        v
    }

    fn frag(offset: u16) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        v[2..4].copy_from_slice(&(offset << 3).to_be_bytes());
        v
    }

    fn upper(p: &[u8]) -> Result<UpperLayer<'_>, ExtError> {
        Ipv6Packet::new_checked(p).unwrap().upper_layer()
    }

    #[test]
    fn ipv6_extension_headers_are_walked_to_the_upper_layer() {
        let plain = ipv6(&[], PROTO_ICMPV6);
        assert_eq!(
            upper(&plain),
            Ok(UpperLayer::Header {
                protocol: PROTO_ICMPV6,
                bytes: &[135, 0, 0, 0][..],
                fragmented: false
            })
        );
        let mut ah = vec![0u8; 16];
        ah[1] = 2;
        let chain = ipv6(
            &[
                (ext::HOP_BY_HOP, opts(0)),
                (ext::DEST_OPTS, opts(1)),
                (ext::ROUTING, opts(2)),
                (ext::AUTH, ah),
                (ext::FRAGMENT, frag(0)),
            ],
            PROTO_ICMPV6,
        );
        assert_eq!(
            upper(&chain),
            Ok(UpperLayer::Header {
                protocol: PROTO_ICMPV6,
                bytes: &[135, 0, 0, 0][..],
                fragmented: true
            })
        );
        let later = ipv6(&[(ext::FRAGMENT, frag(3))], PROTO_ICMPV6);
        assert_eq!(
            upper(&later),
            Ok(UpperLayer::LaterFragment {
                protocol: PROTO_ICMPV6
            })
        );
        let long = ipv6(&vec![(ext::DEST_OPTS, opts(0)); 9], PROTO_ICMPV6);
        assert_eq!(upper(&long), Err(ExtError::TooMany));
        let eight = ipv6(&vec![(ext::DEST_OPTS, opts(0)); 8], PROTO_UDP);
        assert!(matches!(
            upper(&eight),
            Ok(UpperLayer::Header {
                protocol: PROTO_UDP,
                ..
            })
        ));
        for cut in 40..chain.len() - 4 {
            assert_eq!(upper(&chain[..cut]), Err(ExtError::Truncated), "{cut}");
        }
    }
}
