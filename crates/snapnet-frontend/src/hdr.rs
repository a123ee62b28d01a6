//! The virtio-net packet header as the frontend API shows it, and raw descriptors.

use snapnet_wire::virtio_net::{self, Offload};

/// `struct virtio_net_hdr_v1` (12 bytes, little-endian on the wire). Without VERSION_1 and
/// without MRG_RXBUF the legacy header is the first 10 bytes (no `num_buffers`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Length of the headers to replicate for GSO.
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts (with `F_NEEDS_CSUM`).
    pub csum_start: u16,
    /// Where to store the checksum, relative to `csum_start`.
    pub csum_offset: u16,
    /// Number of merged RX buffers (MRG_RXBUF); set by the device.
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Size of the header with VERSION_1 or MRG_RXBUF.
    pub const LEN: usize = virtio_net::HEADER_LEN;
    /// Size of the legacy header without MRG_RXBUF.
    pub const LEGACY_LEN: usize = virtio_net::LEGACY_HEADER_LEN;
    /// `flags`: the checksum at csum_start/csum_offset must be computed.
    pub const F_NEEDS_CSUM: u8 = virtio_net::F_NEEDS_CSUM;
    /// `flags`: the checksum is known to be valid.
    pub const F_DATA_VALID: u8 = virtio_net::F_DATA_VALID;
    /// `gso_type`: no segmentation.
    pub const GSO_NONE: u8 = virtio_net::GSO_NONE;
    /// `gso_type`: TCP over IPv4.
    pub const GSO_TCPV4: u8 = virtio_net::GSO_TCPV4;
    /// `gso_type`: UDP (UFO).
    pub const GSO_UDP: u8 = virtio_net::GSO_UDP;
    /// `gso_type`: TCP over IPv6.
    pub const GSO_TCPV6: u8 = virtio_net::GSO_TCPV6;
    /// `gso_type` bit: ECN.
    pub const GSO_ECN: u8 = virtio_net::GSO_ECN;

    /// Wire representation (the layout is `snapnet_wire::virtio_net`'s).
    #[inline]
    pub fn to_bytes(&self) -> [u8; virtio_net::HEADER_LEN] {
        let offload = Offload {
            flags: self.flags,
            gso_type: self.gso_type,
            hdr_len: self.hdr_len,
            gso_size: self.gso_size,
            csum_start: self.csum_start,
            csum_offset: self.csum_offset,
        };
        virtio_net::bytes_of(virtio_net::words(&offload, self.num_buffers))
    }

    /// Parses the first 10 or 12 bytes of `b` (fields `b` does not reach,
    /// `num_buffers` of a legacy header among them, are 0).
    #[inline]
    pub fn from_bytes(b: &[u8]) -> VirtioNetHdr {
        let mut full = [0u8; virtio_net::HEADER_LEN];
        // Whole 16-bit fields only (the flags and GSO type bytes are single).
        let n = if b.len() < 2 {
            b.len()
        } else {
            b.len().min(full.len()) & !1
        };
        full[..n].copy_from_slice(&b[..n]);
        let o = virtio_net::parse(&full);
        VirtioNetHdr {
            flags: o.flags,
            gso_type: o.gso_type,
            hdr_len: o.hdr_len,
            gso_size: o.gso_size,
            csum_start: o.csum_start,
            csum_offset: o.csum_offset,
            num_buffers: virtio_net::num_buffers(&full),
        }
    }
}

/// A descriptor to write verbatim into a descriptor table (see `Frontend::tx_raw_chain`).
///
/// `addr` is a guest-physical address. `next` values smaller than the number of descriptors
/// in the chain are positions in the slice passed to `tx_raw_chain`/`rx_raw_chain` and are
/// translated to the real table index; larger values are written unchanged (to test
/// out-of-range `next`). `flags` are written unchanged (`VRING_DESC_F_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_NEXT` (1) / `_WRITE` (2) / `_INDIRECT` (4).
    pub flags: u16,
    /// Next descriptor (see above).
    pub next: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hdr_roundtrip() {
        assert_eq!(std::mem::size_of::<VirtioNetHdr>(), 12);
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(&b[2..4], &[2, 1]);
        assert_eq!(VirtioNetHdr::from_bytes(&b), h);
        let half = VirtioNetHdr::from_bytes(&b[..3]);
        assert_eq!((half.flags, half.gso_type, half.hdr_len), (1, 4, 0));
        assert_eq!(VirtioNetHdr::from_bytes(&b[..11]).num_buffers, 0);
        let legacy = VirtioNetHdr::from_bytes(&b[..10]);
        assert_eq!(legacy.num_buffers, 0);
        assert_eq!(legacy.csum_offset, 16);
    }
}
