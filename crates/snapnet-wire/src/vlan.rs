//! VLAN tag stacks: 802.1Q (C-tag), 802.1ad (S-tag, QinQ) and the older
//! 0x9100 S-tag that some switches still emit. A frame may carry several in
//! front of its EtherType; code that looks at the L3 header has to step over
//! all of them, or a second tag hides the header from it.

use super::ethernet::ETHERTYPE;

/// TPID of an 802.1Q tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad service tag.
pub const TPID_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ TPID.
pub const TPID_QINQ_9100: u16 = 0x9100;
/// Bytes a tag adds: TPID and TCI.
pub const TAG_LEN: usize = 4;
/// Offset of the outermost TPID (the untagged EtherType field).
const FIRST_TPID: usize = ETHERTYPE.start;

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
    walk_tags(frame, MAX_TAGS, is_tpid, Deeper::Refused)
}

/// The EtherType under at most one 802.1Q tag, and the L3 offset: the
/// stricter reading segmentation offload uses (another tag is returned as
/// the EtherType, for the caller to refuse).
#[inline]
pub fn ethertype_under_one_ctag(frame: &[u8]) -> Result<(u16, usize), TagError> {
    walk_tags(frame, 1, |t| t == TPID_8021Q, Deeper::Returned)
}

/// Copies `frame` into `out` with a tag (`tpid`, `tci`) put back after its
/// MAC addresses, as it was before a NIC or the kernel stripped it into
/// metadata. Returns the length written; `None` (nothing written) when
/// `frame` is shorter than its MAC addresses or `out` too short.
pub fn copy_with_tag(out: &mut [u8], frame: &[u8], tpid: u16, tci: u16) -> Option<usize> {
    let total = frame.len().checked_add(TAG_LEN)?;
    if frame.len() < FIRST_TPID || out.len() < total {
        return None;
    }
    out[..FIRST_TPID].copy_from_slice(&frame[..FIRST_TPID]);
    out[FIRST_TPID..FIRST_TPID + 2].copy_from_slice(&tpid.to_be_bytes());
    out[FIRST_TPID + 2..FIRST_TPID + TAG_LEN].copy_from_slice(&tci.to_be_bytes());
    out[FIRST_TPID + TAG_LEN..total].copy_from_slice(&frame[FIRST_TPID..]);
    Some(total)
}

/// What a walk does with a tag past its bound.
#[derive(PartialEq)]
enum Deeper {
    /// `TooMany`.
    Refused,
    /// Its TPID is the EtherType.
    Returned,
}

#[inline]
fn walk_tags(
    frame: &[u8],
    max_tags: usize,
    is_tag: impl Fn(u16) -> bool,
    deeper: Deeper,
) -> Result<(u16, usize), TagError> {
    let mut at = FIRST_TPID;
    for tags in 0..=max_tags {
        let ethertype = be16(frame, at).ok_or(TagError::Truncated)?;
        if !is_tag(ethertype) || (tags == max_tags && deeper == Deeper::Returned) {
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

    #[test]
    fn a_stripped_tag_is_put_back() {
        let untagged = frame(&[], 0x0800);
        let mut out = vec![0u8; untagged.len() + TAG_LEN];
        assert_eq!(
            copy_with_tag(&mut out, &untagged, TPID_8021Q, 7),
            Some(out.len())
        );
        assert_eq!(out, frame(&[TPID_8021Q], 0x0800));
        assert_eq!(
            copy_with_tag(&mut out[..20], &untagged, TPID_8021Q, 7),
            None
        );
        assert_eq!(
            copy_with_tag(&mut out, &untagged[..11], TPID_8021Q, 7),
            None
        );
    }

    #[test]
    fn offload_frames_may_carry_one_ctag_only() {
        let one = ethertype_under_one_ctag;
        assert_eq!(one(&frame(&[], 0x0800)), Ok((0x0800, 14)));
        assert_eq!(one(&frame(&[TPID_8021Q], 0x86dd)), Ok((0x86dd, 18)));
        assert_eq!(
            one(&frame(&[TPID_8021Q, TPID_8021Q], 0x0800)),
            Ok((TPID_8021Q, 18))
        );
        assert_eq!(one(&frame(&[TPID_8021AD], 0x0800)), Ok((TPID_8021AD, 14)));
        assert_eq!(
            one(&frame(&[TPID_8021Q], 0x0800)[..17]),
            Err(TagError::Truncated)
        );
    }
}
