//! The virtio-net packet header (`struct virtio_net_hdr_v1`, virtio 1.x
//! 5.1.6): its layout, flag and GSO type values, and its little-endian
//! encoding to and from [`Offload`].

/// Offload metadata from the virtio-net header, carried with the frame so that
/// checksum and segmentation offload survive vNIC -> vNIC switching.
///
/// Field meanings are those of `struct virtio_net_hdr` (virtio 1.x, 5.1.6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Offload {
    /// True when the frame is a segmentation-offload super-frame.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !GSO_ECN != GSO_NONE
    }
}

/// Header length with VERSION_1 or MRG_RXBUF (which carry `num_buffers`).
pub const HEADER_LEN: usize = 12;
/// Header length of a legacy device without MRG_RXBUF (no `num_buffers`).
pub const LEGACY_HEADER_LEN: usize = 10;

/// Field offsets (little-endian fields).
pub mod field {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: usize = 2;
    pub const GSO_SIZE: usize = 4;
    pub const CSUM_START: usize = 6;
    pub const CSUM_OFFSET: usize = 8;
    pub const NUM_BUFFERS: usize = 10;
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` is to be completed over `[csum_start, end)`. Set by a driver
/// on TX, or by a device on RX for a guest with GUEST_CSUM.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the device vouches for the checksum (RX
/// only; a receiver then skips verifying it).
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_F_RSC_INFO`: coalescing counts in the header (RX only).
pub const F_RSC_INFO: u8 = 4;

/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO: IP fragmentation of one big datagram).
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO: one datagram per segment).
pub const GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: a modifier bit on a TCP type, not a type.
pub const GSO_ECN: u8 = 0x80;

/// Decodes the first [`HEADER_LEN`] bytes of `h` (`num_buffers` is not
/// part of the offload). `h` must hold at least [`HEADER_LEN`] bytes.
#[inline]
pub fn parse(h: &[u8]) -> Offload {
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    Offload {
        flags: h[field::FLAGS],
        gso_type: h[field::GSO_TYPE],
        hdr_len: u16_at(field::HDR_LEN),
        gso_size: u16_at(field::GSO_SIZE),
        csum_start: u16_at(field::CSUM_START),
        csum_offset: u16_at(field::CSUM_OFFSET),
    }
}

/// The `num_buffers` field of the first [`HEADER_LEN`] bytes of `h`.
#[inline]
pub fn num_buffers(h: &[u8]) -> u16 {
    u16::from_le_bytes([h[field::NUM_BUFFERS], h[field::NUM_BUFFERS + 1]])
}

/// The header for `o` with `num_buffers`, as two little-endian words (bytes
/// 0..8 and 8..12) computed in registers: guest RX writes them with two
/// stores and no load (see `vnic::guest_rx::CopySource`).
#[inline]
pub fn words(o: &Offload, num_buffers: u16) -> (u64, u32) {
    let lo = u64::from(o.flags) << (8 * field::FLAGS)
        | u64::from(o.gso_type) << (8 * field::GSO_TYPE)
        | u64::from(o.hdr_len) << (8 * field::HDR_LEN)
        | u64::from(o.gso_size) << (8 * field::GSO_SIZE)
        | u64::from(o.csum_start) << (8 * field::CSUM_START);
    let hi = u32::from(o.csum_offset) << (8 * (field::CSUM_OFFSET - 8))
        | u32::from(num_buffers) << (8 * (field::NUM_BUFFERS - 8));
    (lo, hi)
}

/// The bytes of a header in [`words`] form.
#[inline]
pub fn bytes_of(words: (u64, u32)) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&words.0.to_le_bytes());
    h[8..].copy_from_slice(&words.1.to_le_bytes());
    h
}

/// Encodes `o` with `num_buffers` into the first [`HEADER_LEN`] bytes of
/// `h`, which must hold that many.
#[inline]
pub fn write(h: &mut [u8], o: &Offload, num_buffers: u16) {
    h[..HEADER_LEN].copy_from_slice(&bytes_of(words(o, num_buffers)));
}

/// A checked view of a virtio-net header (the [`HEADER_LEN`]-byte form) at
/// the start of `buffer`, over [`parse`] and [`write`].
#[derive(Debug, Clone, Copy)]
pub struct VirtioNetHeader<T> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VirtioNetHeader<T> {
    /// `None` when `buffer` cannot hold the header.
    #[inline]
    pub fn new_checked(buffer: T) -> Option<Self> {
        (buffer.as_ref().len() >= HEADER_LEN).then_some(Self { buffer })
    }

    /// The offload request (or, on RX, report) the header carries.
    #[inline]
    pub fn offload(&self) -> Offload {
        parse(self.buffer.as_ref())
    }

    #[inline]
    pub fn num_buffers(&self) -> u16 {
        num_buffers(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VirtioNetHeader<T> {
    /// Writes the whole header.
    #[inline]
    pub fn set(&mut self, offload: &Offload, num_buffers: u16) {
        write(self.buffer.as_mut(), offload, num_buffers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let o = Offload {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut h = [0u8; HEADER_LEN];
        write(&mut h, &o, 3);
        assert_eq!(parse(&h), o);
        assert_eq!(num_buffers(&h), 3);
        assert_eq!(h, [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0]);
        let mut v = VirtioNetHeader::new_checked(&mut h[..]).unwrap();
        assert_eq!((v.offload(), v.num_buffers()), (o, 3));
        v.set(&Offload::default(), 1);
        assert_eq!(h, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert!(VirtioNetHeader::new_checked(&h[..11]).is_none());
    }
}
