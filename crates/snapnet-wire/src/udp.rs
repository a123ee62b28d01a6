//! UDP header view (RFC 768).

use crate::bytes::{get_u16, set_u16};

/// Field offsets within the header.
pub mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// A checked view of a UDP header at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// `None` when `buffer` cannot hold the header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(Self { buffer })
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Header and payload length as the header states it.
    #[inline]
    pub fn length(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::LENGTH)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Writes a whole header (checksum 0: none, as IPv4 allows) into the
    /// first [`HEADER_LEN`] bytes of `buffer`; `None` when it is shorter.
    pub fn emit(buffer: T, src_port: u16, dst_port: u16, len: u16) -> Option<Self> {
        let mut u = Self::new_checked(buffer)?;
        u.set_src_port(src_port);
        u.set_dst_port(dst_port);
        u.set_length(len);
        u.set_checksum(0);
        Some(u)
    }

    #[inline]
    pub fn set_src_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::SRC_PORT, v)
    }

    #[inline]
    pub fn set_dst_port(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::DST_PORT, v)
    }

    #[inline]
    pub fn set_length(&mut self, v: u16) {
        set_u16(self.buffer.as_mut(), field::LENGTH, v)
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
    fn emit_and_read_back() {
        let mut b = [0xffu8; 8];
        let u = UdpPacket::emit(&mut b[..], 49152, 4789, 58).unwrap();
        assert_eq!(
            (u.src_port(), u.dst_port(), u.length(), u.checksum()),
            (49152, 4789, 58, 0)
        );
        assert_eq!(b, [0xc0, 0, 0x12, 0xb5, 0, 58, 0, 0]);
        assert!(UdpPacket::new_checked(&b[..7]).is_none());
    }
}
