//! The virtio-net packet header (`struct virtio_net_hdr_v1`, virtio 1.x
//! 5.1.6): its layout, flag and GSO type values, and its little-endian
//! encoding to and from [`Offload`].

use crate::packet::Offload;

/// Header length with VERSION_1 or MRG_RXBUF (which carry `num_buffers`).
pub const HEADER_LEN: usize = 12;

mod field {
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

/// Encodes `o` with `num_buffers` into the first [`HEADER_LEN`] bytes of
/// `h`, which must hold that many.
#[inline]
pub fn write(h: &mut [u8], o: &Offload, num_buffers: u16) {
    let mut put = |at: usize, v: u16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    put(field::HDR_LEN, o.hdr_len);
    put(field::GSO_SIZE, o.gso_size);
    put(field::CSUM_START, o.csum_start);
    put(field::CSUM_OFFSET, o.csum_offset);
    put(field::NUM_BUFFERS, num_buffers);
    h[field::FLAGS] = o.flags;
    h[field::GSO_TYPE] = o.gso_type;
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
        assert_eq!(h, [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 3, 0]);
    }
}
