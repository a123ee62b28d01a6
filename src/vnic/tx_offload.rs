//! The virtio-net header of a guest's TX frame, checked and rebuilt before
//! anything acts on it or passes it on.
//!
//! The header travels with the frame to other tenants' guests, whose
//! drivers believe it, and to segmentation and rate limiting here. So the
//! header a frame carries on is built from what snapnet checked, never
//! copied from the guest, after Linux's `virtio_net_hdr_to_skb` for tap
//! devices (and in the spirit of DPDK lib/vhost's dequeue offload parsing):
//!
//! - Receiver-only flags (DATA_VALID, RSC_INFO) and unknown flags are
//!   cleared: a sender cannot tell a receiver to skip checksum checks.
//! - NEEDS_CSUM needs VIRTIO_NET_F_CSUM, and its checksum field must lie in
//!   the frame (`csum_start + csum_offset + 2 <= len`, as Linux checks).
//! - GSO needs the type's feature (HOST_TSO4 / HOST_TSO6; UFO, USO and the
//!   ECN bit are never offered), NEEDS_CSUM (virtio 5.1.6.2.1), a
//!   `gso_size` of at least [`MIN_GSO_SIZE`], and headers that are what the
//!   type says, with the checksum asked for at the TCP checksum.
//! - `hdr_len` is a hint the spec lets drivers get wrong (GUEST_HDRLEN is
//!   not offered). One past the frame is refused, as Linux's tap refuses
//!   it; otherwise a GSO frame carries the length of the headers found in
//!   it (Linux fixes a short one up; we replace it whatever it said), and a
//!   frame without GSO carries 0, as Linux's `virtio_net_hdr_from_skb`
//!   writes it.
//!
//! Split and packed TX share this through `guest_tx::send_walked`.

use super::features::Negotiated;
use super::stats::DropReason;
use crate::packet::segment::gso_headers;
use crate::packet::Offload;
use snapnet_wire::virtio_net::{F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6};

/// Smallest `gso_size` accepted: Linux's default `tcp_min_snd_mss` (48),
/// below which no real TCP stack segments. Without a floor, `gso_size = 1`
/// turns one 64 KiB frame into 64 000 wire frames.
pub const MIN_GSO_SIZE: u16 = 48;

/// Checks the header `o` that a guest sent with `packet` (from the Ethernet
/// header on) against the features it negotiated and the packet's own
/// headers. Returns the offload the frame carries on, or why it is dropped.
#[inline]
pub(super) fn sanitise(o: Offload, packet: &[u8], f: &Negotiated) -> Result<Offload, DropReason> {
    let needs_csum = o.flags & F_NEEDS_CSUM != 0;
    if needs_csum && !f.host_csum {
        return Err(DropReason::CsumNotNegotiated);
    }
    if usize::from(o.hdr_len) > packet.len() {
        return Err(DropReason::BadHdrLen);
    }
    if o.gso_type == GSO_NONE {
        if !needs_csum {
            return Ok(Offload::default());
        }
        let end = usize::from(o.csum_start) + usize::from(o.csum_offset) + 2;
        if end > packet.len() {
            return Err(DropReason::BadCsumOffsets);
        }
        return Ok(Offload {
            flags: F_NEEDS_CSUM,
            csum_start: o.csum_start,
            csum_offset: o.csum_offset,
            ..Offload::default()
        });
    }
    let negotiated = match o.gso_type {
        GSO_TCPV4 => f.host_tso4,
        GSO_TCPV6 => f.host_tso6,
        // UFO, USO, ECN without HOST_ECN, and unknown types: never offered.
        _ => false,
    };
    if !negotiated || !needs_csum {
        return Err(DropReason::BadGso);
    }
    if o.gso_size < MIN_GSO_SIZE {
        return Err(DropReason::GsoSizeTooSmall);
    }
    let h = gso_headers(packet, o.gso_type).map_err(|_| DropReason::BadGsoHeaders)?;
    if usize::from(o.csum_start) != h.l4_start || usize::from(o.csum_offset) != h.csum_offset {
        return Err(DropReason::BadCsumOffsets);
    }
    Ok(Offload {
        flags: F_NEEDS_CSUM,
        gso_type: o.gso_type,
        // Fits: Ethernet, one tag, IPv4 and TCP with options are 138 bytes
        // at most (IPv6 extension headers are refused).
        hdr_len: h.header_len as u16,
        gso_size: o.gso_size,
        csum_start: o.csum_start,
        csum_offset: o.csum_offset,
    })
}
