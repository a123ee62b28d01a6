//! IPv6 header view (RFC 8200), with the walk over extension headers.

use crate::bytes::{get_u16, set_u16};

/// Field offsets within the fixed header.
pub mod field {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    /// Source and destination together, as the pseudo-header sums them.
    pub const ADDRS: std::ops::Range<usize> = 8..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

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

/// A checked view of an IPv6 fixed header.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// `None` unless `buffer` holds a version-6 fixed header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        let b = buffer.as_ref();
        (b.len() >= HEADER_LEN && b[0] >> 4 == 6).then_some(Self { buffer })
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    #[inline]
    pub fn src(&self) -> &[u8] {
        &self.buffer.as_ref()[field::SRC..field::SRC + 16]
    }

    #[inline]
    pub fn dst(&self) -> &[u8] {
        &self.buffer.as_ref()[field::DST..field::DST + 16]
    }

    /// Source and destination, for a pseudo-header sum.
    #[inline]
    pub fn addrs(&self) -> &[u8] {
        &self.buffer.as_ref()[field::ADDRS]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn set_payload_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::PAYLOAD_LEN, v)
    }
}

impl<'a> Ipv6Packet<&'a [u8]> {
    /// What follows the fixed header.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }

    /// Walks the extension headers (at most [`ext::MAX_HEADERS`]) to the
    /// upper-layer header.
    pub fn upper_layer(&self) -> Result<UpperLayer<'a>, ExtError> {
        let b = self.buffer;
        let mut next = self.next_header();
        let mut at = HEADER_LEN;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::{PROTO_ICMPV6, PROTO_UDP};

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
