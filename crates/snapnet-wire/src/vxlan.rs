//! VXLAN header view (RFC 7348).

use crate::bytes::get_u32;

/// The IANA port of VXLAN.
pub const PORT: u16 = 4789;
/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// Field offsets within the header.
pub mod field {
    pub const FLAGS: usize = 0;
    /// The 24-bit VNI, followed by a reserved byte.
    pub const VNI: usize = 4;
}

/// Flags: the VNI is valid (the I flag).
pub const FLAG_VNI: u8 = 0x08;
/// The largest VNI (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// A checked view of a VXLAN header at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct VxlanHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// `None` when `buffer` cannot hold the header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(Self { buffer })
    }

    /// True when the I flag says the VNI is valid.
    #[inline]
    pub fn has_vni(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS] & FLAG_VNI != 0
    }

    #[inline]
    pub fn vni(&self) -> u32 {
        get_u32(self.buffer.as_ref(), field::VNI) >> 8
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    /// Writes a header carrying `vni` (its low 24 bits) into the first
    /// [`HEADER_LEN`] bytes of `buffer`; `None` when it is shorter.
    #[inline]
    pub fn emit(mut buffer: T, vni: u32) -> Option<Self> {
        let h = buffer.as_mut().get_mut(..HEADER_LEN)?;
        h[..field::VNI].copy_from_slice(&[FLAG_VNI, 0, 0, 0]);
        h[field::VNI..].copy_from_slice(&((vni & VNI_MAX) << 8).to_be_bytes());
        Some(Self { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_round_trip() {
        let mut b = [0xffu8; 8];
        let v = VxlanHeader::emit(&mut b[..], 0x12_3456).unwrap();
        assert!(v.has_vni());
        assert_eq!(v.vni(), 0x12_3456);
        assert_eq!(b, [8, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        b[0] = 0;
        assert!(!VxlanHeader::new_checked(&b[..]).unwrap().has_vni());
        assert!(VxlanHeader::new_checked(&b[..7]).is_none());
    }
}
