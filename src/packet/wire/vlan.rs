//! VLAN tag stacks: 802.1Q (C-tag), 802.1ad (S-tag, QinQ) and the older
//! 0x9100 S-tag that some switches still emit. A frame may carry several in
//! front of its EtherType; code that looks at the L3 header has to step over
//! all of them, or a second tag hides the header from it.

use super::ethernet::HEADER_LEN;

/// TPID of an 802.1Q tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad service tag.
pub const TPID_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ TPID.
pub const TPID_QINQ_9100: u16 = 0x9100;
/// Bytes a tag adds: TPID and TCI.
pub const TAG_LEN: usize = 4;
/// Offset of the outermost TPID (the untagged EtherType field).
const FIRST_TPID: usize = HEADER_LEN - 2;

/// Tags looked through: an S-tag and a C-tag (802.1ad). Deeper stacks are
/// not something a guest needs to send.
pub const MAX_TAGS: usize = 2;

/// True when `ethertype` announces a VLAN tag.
#[inline]
pub fn is_tpid(ethertype: u16) -> bool {
    matches!(ethertype, TPID_8021Q | TPID_8021AD | TPID_QINQ_9100)
}

/// Why the L3 header of a frame could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagError {
    /// The frame ends inside its Ethernet header or a tag.
    Truncated,
    /// More than [`MAX_TAGS`] tags.
    TooMany,
}

/// The EtherType under every VLAN tag of `frame` (from its Ethernet header
/// on) and the offset of the L3 header that follows it.
#[inline]
pub fn inner_ethertype(frame: &[u8]) -> Result<(u16, usize), TagError> {
    let mut at = FIRST_TPID;
    for _ in 0..=MAX_TAGS {
        let ethertype = be16(frame, at).ok_or(TagError::Truncated)?;
        if !is_tpid(ethertype) {
            return Ok((ethertype, at + 2));
        }
        at += TAG_LEN;
    }
    Err(TagError::TooMany)
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tpids: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for t in tpids {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&[0x45; 20]);
        f
    }

    #[test]
    fn every_tag_kind_is_stepped_over_up_to_the_bound() {
        assert_eq!(inner_ethertype(&frame(&[], 0x0800)), Ok((0x0800, 14)));
        assert_eq!(
            inner_ethertype(&frame(&[TPID_8021Q], 0x0800)),
            Ok((0x0800, 18))
        );
        for outer in [TPID_8021AD, TPID_8021Q, TPID_QINQ_9100] {
            assert_eq!(
                inner_ethertype(&frame(&[outer, TPID_8021Q], 0x86dd)),
                Ok((0x86dd, 22))
            );
        }
        assert_eq!(
            inner_ethertype(&frame(&[TPID_8021AD, TPID_8021Q, TPID_8021Q], 0x0800)),
            Err(TagError::TooMany)
        );
        let f = frame(&[TPID_8021AD, TPID_8021Q], 0x0800);
        for cut in 0..22 {
            assert_eq!(inner_ethertype(&f[..cut]), Err(TagError::Truncated));
        }
    }
}
