//! What a frame costs a rate limit: the bytes and packets it puts on the
//! wire, which for a GSO super-frame are its segments', not its own.

use crate::packet::segment::segment_count;
use crate::packet::Offload;

/// Tokens one frame takes from a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    pub bytes: u64,
    pub packets: u64,
}

impl Cost {
    /// One frame of `len` bytes that goes on the wire as it is.
    #[inline]
    pub fn frame(len: u64) -> Self {
        Self {
            bytes: len,
            packets: 1,
        }
    }

    /// A frame of `len` bytes with `offload`, on a wire that takes frames of
    /// at most `max_frame` bytes: a super-frame is charged for every segment
    /// it is cut into, each with its own copy of the headers, as segmentation
    /// would cut it (`packet::segment`), computed without cutting it.
    ///
    /// For a frame from a guest, `hdr_len` is the length of the headers the
    /// TX path found in the frame (it replaces the guest's value), and
    /// `gso_size` is at least the TX path's floor, so one frame's cost is
    /// bounded (about 1 400 segments for a 64 KiB frame).
    #[inline]
    pub fn on_wire(len: u32, offload: &Offload, max_frame: usize) -> Self {
        if !offload.is_gso() {
            return Self::frame(u64::from(len));
        }
        let header_len = usize::from(offload.hdr_len);
        let segments = segment_count(len as usize, header_len, offload.gso_size, max_frame) as u64;
        Self {
            bytes: u64::from(len) + (segments - 1) * header_len as u64,
            packets: segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapnet_wire::virtio_net::{F_NEEDS_CSUM, GSO_TCPV4};

    #[test]
    fn a_super_frame_costs_its_segments() {
        assert_eq!(
            Cost::on_wire(1514, &Offload::default(), 1518),
            Cost::frame(1514)
        );
        let tso = |gso_size| Offload {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 54,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
        };
        // 64 000 payload bytes in 1448-byte segments: 45 frames on the wire.
        assert_eq!(
            Cost::on_wire(64_054, &tso(1448), 1518),
            Cost {
                bytes: 64_054 + 44 * 54,
                packets: 45
            }
        );
        // At the floor of 48 bytes: 1334 segments, each with 54 header bytes.
        assert_eq!(
            Cost::on_wire(64_054, &tso(48), 1518),
            Cost {
                bytes: 64_054 + 1333 * 54,
                packets: 1334
            }
        );
        // A gso_size above what the wire takes is cut to the wire.
        assert_eq!(Cost::on_wire(64_054, &tso(9000), 1518).packets, 44);
    }
}
