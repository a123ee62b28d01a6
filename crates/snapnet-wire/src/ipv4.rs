//! IPv4 header view (RFC 791).

use crate::bytes::{get_u16, set_u16};
use crate::checksum::ones_sum;

/// Field offsets within the header.
pub mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// Source and destination together, as the pseudo-header sums them.
    pub const ADDRS: std::ops::Range<usize> = 12..20;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// The more-fragments flag and the fragment offset in the FRAG field (DF
/// excluded): non-zero for every fragment.
pub const FRAG_MASK: u16 = 0x3fff;
/// Don't-fragment flag in the FRAG field.
pub const FLAG_DF: u16 = 0x4000;

/// A checked view of an IPv4 header at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T> {
    buffer: T,
    header_len: usize,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// `None` unless `buffer` holds a version-4 header of a valid length
    /// (options included).
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        let b = buffer.as_ref();
        let first = *b.get(field::VER_IHL)?;
        let header_len = usize::from(first & 0x0f) * 4;
        (first >> 4 == 4 && header_len >= MIN_HEADER_LEN && b.len() >= header_len)
            .then_some(Self { buffer, header_len })
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::IDENT)
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTO]
    }

    #[inline]
    pub fn src(&self) -> [u8; 4] {
        self.addr(field::SRC)
    }

    #[inline]
    pub fn dst(&self) -> [u8; 4] {
        self.addr(field::DST)
    }

    #[inline]
    fn addr(&self, at: usize) -> [u8; 4] {
        self.buffer.as_ref()[at..at + 4]
            .try_into()
            .expect("length checked")
    }

    /// Source and destination, for a pseudo-header sum.
    #[inline]
    pub fn addrs(&self) -> &[u8] {
        &self.buffer.as_ref()[field::ADDRS]
    }

    /// True for any fragment (more-fragments set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        get_u16(self.buffer.as_ref(), field::FRAG) & FRAG_MASK != 0
    }

    /// True when the header checksum is right.
    pub fn checksum_ok(&self) -> bool {
        ones_sum(&self.buffer.as_ref()[..self.header_len]) == 0xffff
    }
}

impl<'a> Ipv4Packet<&'a [u8]> {
    /// What follows the header (to the end of the buffer, not of `total_len`).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Writes a header without options (version 4, IHL 5, TOS 0, DF set,
    /// TTL 64) into the first [`MIN_HEADER_LEN`] bytes of `buffer`, checksum
    /// included. `None` when `buffer` is shorter.
    pub fn emit(
        mut buffer: T,
        total_len: u16,
        protocol: u8,
        src: [u8; 4],
        dst: [u8; 4],
    ) -> Option<Self> {
        let h = buffer.as_mut().get_mut(..MIN_HEADER_LEN)?;
        h.fill(0);
        h[field::VER_IHL] = 0x45;
        set_u16(h, field::TOTAL_LEN, total_len);
        set_u16(h, field::FRAG, FLAG_DF);
        h[field::TTL] = 64;
        h[field::PROTO] = protocol;
        h[field::SRC..field::SRC + 4].copy_from_slice(&src);
        h[field::DST..field::DST + 4].copy_from_slice(&dst);
        let mut p = Self {
            buffer,
            header_len: MIN_HEADER_LEN,
        };
        p.fill_checksum();
        Some(p)
    }

    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::TOTAL_LEN, v)
    }

    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::IDENT, v)
    }

    /// Computes the header checksum over the header as it stands.
    pub fn fill_checksum(&mut self) {
        let h = &mut self.buffer.as_mut()[..self.header_len];
        set_u16(h, field::CHECKSUM, 0);
        let sum = !ones_sum(h);
        set_u16(h, field::CHECKSUM, sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::{l4_ports, PROTO_TCP, PROTO_UDP};

    #[test]
    fn view_checks_version_and_length() {
        let mut h = [0u8; 24];
        h[0] = 0x45;
        h[9] = PROTO_TCP;
        h[12..16].copy_from_slice(&[10, 0, 0, 1]);
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        h[20..24].copy_from_slice(&[0x1f, 0x90, 0x00, 0x50]);
        let p = Ipv4Packet::new_checked(&h[..]).unwrap();
        assert_eq!(p.protocol(), PROTO_TCP);
        assert_eq!(p.src(), [10, 0, 0, 1]);
        assert_eq!(l4_ports(p.payload()), Some((8080, 80)));
        assert!(!p.is_fragment());
        h[0] = 0x4f; // IHL 60 > 24 bytes
        assert!(Ipv4Packet::new_checked(&h[..]).is_none());
        h[0] = 0x65;
        assert!(Ipv4Packet::new_checked(&h[..]).is_none());
        assert!(Ipv4Packet::new_checked(&[][..]).is_none());
    }

    #[test]
    fn emitted_header_reads_back_with_a_valid_checksum() {
        let mut b = [0xaau8; 28];
        let mut p =
            Ipv4Packet::emit(&mut b[..], 28, PROTO_UDP, [192, 0, 2, 1], [192, 0, 2, 2]).unwrap();
        assert!(p.checksum_ok());
        p.set_ident(7);
        assert!(!p.checksum_ok());
        p.fill_checksum();
        assert!(p.checksum_ok());
        assert_eq!((p.total_len(), p.ident(), p.protocol()), (28, 7, PROTO_UDP));
        assert_eq!(p.dst(), [192, 0, 2, 2]);
        assert_eq!(p.addrs(), &[192, 0, 2, 1, 192, 0, 2, 2]);
        assert!(Ipv4Packet::emit(&mut b[..19], 19, 0, [0; 4], [0; 4]).is_none());
    }
}
