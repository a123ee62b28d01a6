//! TCP header view (RFC 9293), as far as segmentation and steering need it.

use crate::bytes::{get_u16, get_u32, set_u16, set_u32};

/// Field offsets within the header.
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    /// Data offset (header length in 32-bit words) in the top four bits.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Flag bits of the FLAGS byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// A checked view of a TCP header (options included) at the start of
/// `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// `None` unless `buffer` holds the whole header its data offset claims,
    /// and that is at least [`MIN_HEADER_LEN`].
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        let b = buffer.as_ref();
        let len = usize::from(*b.get(field::DATA_OFF)? >> 4) * 4;
        (len >= MIN_HEADER_LEN && b.len() >= len).then_some(Self { buffer })
    }

    /// Header length in bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    #[inline]
    pub fn seq(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::SEQ)
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    #[inline]
    pub fn set_seq(&mut self, v: u32) {
        set_u32(self.buffer.as_mut(), field::SEQ, v)
    }

    #[inline]
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v
    }

    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::CHECKSUM, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_comes_from_the_data_offset_and_is_checked() {
        let mut h = [0u8; 24];
        h[..4].copy_from_slice(&[0x1f, 0x90, 0x00, 0x50]);
        h[field::DATA_OFF] = 6 << 4;
        let mut t = TcpPacket::new_checked(&mut h[..]).unwrap();
        t.set_seq(0x0102_0304);
        t.set_flags(flags::SYN | flags::ACK);
        t.set_checksum(0xbeef);
        assert_eq!((t.src_port(), t.dst_port(), t.header_len()), (8080, 80, 24));
        assert_eq!(
            (t.seq(), t.flags(), t.checksum()),
            (0x0102_0304, 0x12, 0xbeef)
        );
        assert!(TcpPacket::new_checked(&h[..23]).is_none());
        h[field::DATA_OFF] = 4 << 4;
        assert!(TcpPacket::new_checked(&h[..]).is_none());
        assert!(TcpPacket::new_checked(&h[..12]).is_none());
    }
}
