//! ICMPv6 neighbour discovery (RFC 4861): solicitations and advertisements
//! with their link-layer address options.

use crate::ethernet::MacAddr;

/// Field offsets of an NS/NA message.
pub mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// The target address of a solicitation or advertisement.
    pub const TARGET: usize = 8;
    /// Options follow the 24-byte NS/NA body.
    pub const OPTIONS: usize = 24;
}

pub const ND_SOLICIT: u8 = 135;
pub const ND_ADVERT: u8 = 136;
/// An option: type, length in units of 8 bytes, then its data.
pub const OPT_LEN_UNIT: usize = 8;
pub const OPT_SOURCE_LLADDR: u8 = 1;
pub const OPT_TARGET_LLADDR: u8 = 2;
/// Where the MAC address sits in a link-layer address option.
const OPT_LLADDR: std::ops::Range<usize> = 2..8;

/// The message type of an ICMPv6 message, if it has one.
#[inline]
pub fn message_type(icmp: &[u8]) -> Option<u8> {
    icmp.get(field::TYPE).copied()
}

/// True for a neighbour solicitation or advertisement.
#[inline]
pub fn is_nd(kind: u8) -> bool {
    kind == ND_SOLICIT || kind == ND_ADVERT
}

/// A checked view of a neighbour solicitation or advertisement.
#[derive(Debug, Clone, Copy)]
pub struct NdMessage<'a> {
    bytes: &'a [u8],
}

impl<'a> NdMessage<'a> {
    /// `None` unless `bytes` is an NS or NA long enough for its target.
    pub fn new_checked(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() >= field::OPTIONS && is_nd(bytes[field::TYPE])).then_some(Self { bytes })
    }

    pub fn kind(&self) -> u8 {
        self.bytes[field::TYPE]
    }

    pub fn target(&self) -> [u8; 16] {
        self.bytes[field::TARGET..field::TARGET + 16]
            .try_into()
            .expect("length checked")
    }

    /// The link-layer address options (source or target), in order; an
    /// option that is cut short or of length 0 ends the walk with `Err`.
    pub fn lladdr_options(&self) -> LladdrOptions<'a> {
        LladdrOptions {
            rest: &self.bytes[field::OPTIONS..],
        }
    }
}

/// Why an option list is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadOption;

/// The link-layer address options of an ND message (other options skipped).
pub struct LladdrOptions<'a> {
    rest: &'a [u8],
}

impl Iterator for LladdrOptions<'_> {
    type Item = Result<MacAddr, BadOption>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.rest.len() >= 2 {
            let (kind, len) = (self.rest[0], usize::from(self.rest[1]) * OPT_LEN_UNIT);
            if len == 0 || len > self.rest.len() {
                self.rest = &[];
                return Some(Err(BadOption));
            }
            let (option, rest) = self.rest.split_at(len);
            self.rest = rest;
            if kind == OPT_SOURCE_LLADDR || kind == OPT_TARGET_LLADDR {
                return Some(
                    option
                        .get(OPT_LLADDR)
                        .map(|m| MacAddr(m.try_into().expect("six bytes")))
                        .ok_or(BadOption),
                );
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_walked_and_bad_lengths_refused() {
        let mut m = vec![0u8; 24];
        m[0] = ND_ADVERT;
        m[8..24].copy_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        m.extend_from_slice(&[9, 1, 0, 0, 0, 0, 0, 0]); // another option, skipped
        m.extend_from_slice(&[OPT_TARGET_LLADDR, 1, 2, 0, 0, 0, 0, 7]);
        let nd = NdMessage::new_checked(&m).unwrap();
        assert_eq!(nd.kind(), ND_ADVERT);
        assert_eq!(nd.target()[15], 1);
        let macs: Vec<_> = nd.lladdr_options().collect();
        assert_eq!(macs, vec![Ok(MacAddr([2, 0, 0, 0, 0, 7]))]);
        m.extend_from_slice(&[OPT_SOURCE_LLADDR, 0]);
        let nd = NdMessage::new_checked(&m).unwrap();
        assert_eq!(nd.lladdr_options().last(), Some(Err(BadOption)));
        assert!(NdMessage::new_checked(&m[..23]).is_none());
        m[0] = 128;
        assert!(NdMessage::new_checked(&m).is_none());
    }
}
