//! Software TSO/USO for the uplink: turns a guest's offload frame into frames a
//! real wire accepts.
//!
//! Guests hand us TCP/UDP super-frames of up to 64 KiB and partial checksums
//! because the vNIC advertises those offloads: between two vNICs they travel
//! untouched and the receiving guest finishes them. The AF_XDP uplink has no
//! offloads at all, so before a frame leaves the host every segment must be cut
//! to the wire MTU and carry complete checksums. This module is that last step.
//!
//! Everything in the frame, and every field of its virtio-net header, was
//! written by the guest. Nothing here trusts it: the header length is parsed
//! from the packet instead of taken from `hdr_len`, every offset is checked
//! before use, and checksums are computed from scratch instead of finished
//! from the guest's pseudo-header seed.

use super::pool::HEADROOM;
use super::{FrameCache, FrameHandle, FramePool, Offload};
use snapnet_wire::checksum::{complete_partial, ones_sum};
use snapnet_wire::ip::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_TCP, PROTO_UDP};
use snapnet_wire::ipv4::{self, Ipv4Packet};
use snapnet_wire::ipv6::{self, Ipv6Packet};
use snapnet_wire::tcp::{self, flags as tcp_flags, TcpPacket};
use snapnet_wire::udp::{self, UdpPacket};
use snapnet_wire::virtio_net::{F_NEEDS_CSUM, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4};
use snapnet_wire::vlan;

/// Largest segment a small frame holds. Segments go to the AF_XDP UMEM, which
/// registers only the small class (one 4 KiB chunk per frame), so a segment
/// must never need a large frame.
const SEGMENT_MAX: usize = 4096 - HEADROOM as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// headers do not parse, offsets out of range, unsupported gso_type, gso_size 0, etc.
    #[error("malformed offload frame: {0}")]
    Malformed(&'static str),
    /// the pool ran out of frames part way (segments already emitted stay emitted)
    #[error("frame pool empty")]
    PoolEmpty,
}

/// Makes a frame wire-ready in place when it is not GSO: completes a NEEDS_CSUM partial
/// checksum (csum_start/csum_offset, relative to the Ethernet header start, as in virtio) and
/// clears the offload fields. Returns Err(Malformed) if the offsets do not fit.
///
/// A GSO frame is refused (and left as it is): clearing its offload would put
/// a super-frame on a wire that cannot carry it; it needs [`segment`].
pub fn finish_checksum(pool: &FramePool, frame: &mut FrameHandle) -> Result<(), SegmentError> {
    let offload = frame.offload;
    if offload.is_gso() {
        return Err(SegmentError::Malformed("gso frame needs segmentation"));
    }
    if offload.flags & F_NEEDS_CSUM != 0 {
        let off = usize::from(frame.offset);
        let len = frame.len as usize;
        let packet = pool
            .frame_mut(frame)
            .get_mut(off..off + len)
            .ok_or(SegmentError::Malformed("frame length exceeds its buffer"))?;
        if !complete_partial(
            packet,
            usize::from(offload.csum_start),
            usize::from(offload.csum_offset),
        ) {
            return Err(SegmentError::Malformed("checksum offsets out of range"));
        }
    }
    // Every field goes, DATA_VALID included: the frame is now complete, and
    // nothing after this point may try to finish or trust it again.
    frame.offload = Offload::default();
    Ok(())
}

/// Splits the GSO super-frame `frame` into wire frames whose L2 length is at most `max_frame`
/// bytes (Ethernet header included, e.g. 1514 for MTU 1500) and at most gso_size payload bytes each,
/// allocating each segment from `cache`, copying headers + payload slice into it, fixing headers and
/// full checksums, and passing each finished segment (offload cleared) to `emit`. Returns the number
/// of segments emitted. Does NOT free `frame` (caller does).
///
/// `max_frame` is capped at what a small frame holds (4096 - [`HEADROOM`]):
/// segments go to the UMEM, which only knows small frames.
///
/// The payload is everything after the parsed headers up to the frame's end.
/// The IPv4 total length and IPv6 payload length of the super-frame are not
/// consulted, as in Linux's GSO: some stacks leave them zero for LSO, and the
/// per-segment values are rewritten anyway.
pub fn segment(
    pool: &FramePool,
    cache: &mut FrameCache,
    frame: &FrameHandle,
    max_frame: usize,
    mut emit: impl FnMut(FrameHandle),
) -> Result<usize, SegmentError> {
    let offload = frame.offload;
    if !offload.is_gso() {
        return Err(SegmentError::Malformed("not a gso frame"));
    }
    if offload.gso_size == 0 {
        return Err(SegmentError::Malformed("gso_size 0"));
    }
    let packet = pool.bytes(frame);
    if packet.len() != frame.len as usize {
        return Err(SegmentError::Malformed("frame length exceeds its buffer"));
    }
    let layout = Layout::parse(packet, offload.gso_type & !GSO_ECN)?;
    let header_len = layout.header_len;
    let mss = mss(offload.gso_size, header_len, max_frame);
    if mss == 0 {
        return Err(SegmentError::Malformed("headers leave no room for payload"));
    }
    let (headers, payload) = packet.split_at(header_len);
    let count = payload.len().div_ceil(mss).max(1);
    // The addresses are the same in every segment: sum them once.
    let addr_sum = u32::from(ones_sum(&headers[layout.addrs()]));
    let mut chunks = payload.chunks(mss);
    for i in 0..count {
        // A header-only frame still goes out, as one segment without payload.
        let chunk = chunks.next().unwrap_or_default();
        let seg_len = header_len + chunk.len();
        let mut seg = cache.alloc(seg_len).ok_or(SegmentError::PoolEmpty)?;
        let off = usize::from(seg.offset);
        let Some(buf) = pool.frame_mut(&mut seg).get_mut(off..off + seg_len) else {
            // Not reachable: alloc(seg_len) promises room after the headroom.
            cache.free(seg);
            return Err(SegmentError::Malformed("segment does not fit its frame"));
        };
        buf[..header_len].copy_from_slice(headers);
        buf[header_len..].copy_from_slice(chunk);
        layout.fix_segment(buf, i, count, i * mss, addr_sum);
        seg.len = seg_len as u32;
        seg.offload = Offload::default();
        emit(seg);
    }
    Ok(count)
}

/// Payload bytes per segment [`segment`] cuts: `gso_size`, or less where a
/// segment of `header_len` header bytes would not fit `max_frame` (capped
/// at a small frame). 0 when the headers leave no room.
#[inline]
fn mss(gso_size: u16, header_len: usize, max_frame: usize) -> usize {
    usize::from(gso_size).min(max_frame.min(SEGMENT_MAX).saturating_sub(header_len))
}

/// How many segments [`segment`] makes of a super-frame of `len` bytes
/// whose headers take `header_len` bytes, without cutting it: what a rate
/// limit charges for it in packets (each segment repeats the headers, so
/// its wire bytes are `len + (count - 1) * header_len`). A frame whose
/// headers leave no room for payload counts one segment per payload byte,
/// the most any cut of it could make.
#[inline]
pub fn segment_count(len: usize, header_len: usize, gso_size: u16, max_frame: usize) -> usize {
    let per_segment = mss(gso_size, header_len, max_frame).max(1);
    len.saturating_sub(header_len).div_ceil(per_segment).max(1)
}

/// The headers of a GSO super-frame, checked against its `gso_type`: what
/// every segment repeats, and where the checksum that the frame's
/// NEEDS_CSUM asks for must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoHeaders {
    /// Start of the TCP or UDP header: the frame's `csum_start`.
    pub l4_start: usize,
    /// Offset of the TCP or UDP checksum in that header: the frame's
    /// `csum_offset`.
    pub csum_offset: usize,
    /// Ethernet through TCP/UDP header: what each segment repeats.
    pub header_len: usize,
}

/// Parses the headers of a super-frame of `gso_type` (ECN bit ignored):
/// Ethernet with at most one 802.1Q tag, IPv4 without fragmentation or IPv6
/// without extension headers, and the TCP or UDP header the type names.
/// `Err(Malformed)` for anything else, as [`segment`] would refuse it.
pub fn gso_headers(packet: &[u8], gso_type: u8) -> Result<GsoHeaders, SegmentError> {
    let layout = Layout::parse(packet, gso_type & !GSO_ECN)?;
    Ok(GsoHeaders {
        l4_start: layout.l4_start,
        csum_offset: match layout.l4 {
            L4::Tcp => tcp::field::CHECKSUM,
            L4::Udp => udp::field::CHECKSUM,
        },
        header_len: layout.header_len,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ip {
    V4,
    V6,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4 {
    Tcp,
    Udp,
}

/// Where the headers of a checked super-frame are. Every offset in it is
/// inside `header_len`, which is inside the frame, so code that works on a
/// copy of the first `header_len` bytes may index directly.
#[derive(Debug, Clone, Copy)]
struct Layout {
    ip: Ip,
    l4: L4,
    l3_start: usize,
    l4_start: usize,
    header_len: usize,
}

impl Layout {
    /// Parses Ethernet (with at most one 802.1Q tag), IPv4 or IPv6, and TCP or
    /// UDP, and checks they are what `gso_type` (ECN bit masked off) claims.
    fn parse(packet: &[u8], gso_type: u8) -> Result<Self, SegmentError> {
        use SegmentError::Malformed;
        let l4 = match gso_type {
            GSO_TCPV4 | GSO_TCPV6 => L4::Tcp,
            GSO_UDP_L4 => L4::Udp,
            GSO_UDP => return Err(Malformed("ufo unsupported")),
            _ => return Err(Malformed("unknown gso type")),
        };
        let (ethertype, l3_start) = vlan::ethertype_under_one_ctag(packet)
            .map_err(|_| Malformed("truncated ethernet header or vlan tag"))?;
        let l3 = packet.get(l3_start..).unwrap_or(&[]);
        let (ip, proto, l4_start) = match ethertype {
            ETHERTYPE_IPV4 => {
                let ip =
                    Ipv4Packet::new_checked(l3).ok_or(Malformed("bad or truncated ipv4 header"))?;
                if ip.is_fragment() {
                    return Err(Malformed("ipv4 fragment"));
                }
                (Ip::V4, ip.protocol(), l3_start + ip.header_len())
            }
            ETHERTYPE_IPV6 => {
                let ip =
                    Ipv6Packet::new_checked(l3).ok_or(Malformed("bad or truncated ipv6 header"))?;
                let next = ip.next_header();
                if next != PROTO_TCP && next != PROTO_UDP {
                    return Err(Malformed("ipv6 extension headers unsupported"));
                }
                (Ip::V6, next, l3_start + ipv6::HEADER_LEN)
            }
            _ => return Err(Malformed("not ipv4 or ipv6")),
        };
        match (gso_type, ip) {
            (GSO_TCPV4, Ip::V6) | (GSO_TCPV6, Ip::V4) => {
                return Err(Malformed("ip version does not match gso type"))
            }
            _ => {}
        }
        let l4_bytes = packet.get(l4_start..).unwrap_or(&[]);
        let l4_len = match l4 {
            L4::Tcp if proto == PROTO_TCP => TcpPacket::new_checked(l4_bytes)
                .ok_or(Malformed("bad or truncated tcp header"))?
                .header_len(),
            L4::Udp if proto == PROTO_UDP => udp::HEADER_LEN,
            _ => return Err(Malformed("ip protocol does not match gso type")),
        };
        let header_len = l4_start + l4_len;
        if packet.len() < header_len {
            return Err(Malformed("truncated l4 header"));
        }
        Ok(Self {
            ip,
            l4,
            l3_start,
            l4_start,
            header_len,
        })
    }

    /// Source and destination address, as the pseudo-header sums them.
    fn addrs(&self) -> std::ops::Range<usize> {
        let r = match self.ip {
            Ip::V4 => ipv4::field::ADDRS,
            Ip::V6 => ipv6::field::ADDRS,
        };
        self.l3_start + r.start..self.l3_start + r.end
    }

    /// Rewrites the copied headers of segment `index` of `count` (whose
    /// payload starts `offset` bytes into the super-frame's payload) and
    /// computes its checksums. `seg` is headers + payload of this segment,
    /// at most [`SEGMENT_MAX`] bytes, so every length fits 16 bits.
    fn fix_segment(
        &self,
        seg: &mut [u8],
        index: usize,
        count: usize,
        offset: usize,
        addr_sum: u32,
    ) {
        let l3 = self.l3_start;
        let l4 = self.l4_start;
        let l4_len = seg.len() - l4;
        let (head, l4_bytes) = seg.split_at_mut(l4);
        let l3_bytes = &mut head[l3..];
        // The views cannot fail: `parse` checked these headers, and `seg`
        // starts with a copy of them.
        let proto = match self.ip {
            Ip::V4 => {
                let mut ip = Ipv4Packet::new_checked(l3_bytes).expect("checked by parse");
                ip.set_total_len((l4 - l3 + l4_len) as u16);
                // Linux numbers the segments' IDs on from the super-frame's,
                // which keeps them distinct for a receiver that reassembles.
                ip.set_ident(ip.ident().wrapping_add(index as u16));
                ip.fill_checksum();
                ip.protocol()
            }
            Ip::V6 => {
                let mut ip = Ipv6Packet::new_checked(l3_bytes).expect("checked by parse");
                ip.set_payload_len(l4_len as u16);
                ip.next_header()
            }
        };
        let csum_at = match self.l4 {
            L4::Tcp => {
                let mut tcp = TcpPacket::new_checked(&mut *l4_bytes).expect("checked by parse");
                tcp.set_seq(tcp.seq().wrapping_add(offset as u32));
                // FIN and PSH end the guest's write, so only the segment that
                // ends it carries them; CWR acknowledges one window reduction
                // (RFC 3168), so it must not be repeated on every segment.
                let mut flags = tcp.flags();
                if index + 1 != count {
                    flags &= !(tcp_flags::FIN | tcp_flags::PSH);
                }
                if index != 0 {
                    flags &= !tcp_flags::CWR;
                }
                tcp.set_flags(flags);
                l4 + tcp::field::CHECKSUM
            }
            L4::Udp => {
                let mut udp = UdpPacket::new_checked(&mut *l4_bytes).expect("checked by parse");
                udp.set_length(l4_len as u16);
                l4 + udp::field::CHECKSUM
            }
        };
        // The guest's seed in the checksum field is a pseudo-header sum over
        // the super-frame's length (if it is anything at all): useless for a
        // segment, so the whole sum is done here.
        put16(seg, csum_at, 0);
        let pseudo = addr_sum + u32::from(proto) + (l4_len as u32 >> 16) + (l4_len as u32 & 0xffff);
        let sum = !fold(pseudo + u32::from(ones_sum(&seg[l4..])));
        // RFC 768: a UDP checksum that computes to zero is sent as all ones,
        // zero meaning "no checksum"; for TCP zero is an ordinary value.
        let sum = if sum == 0 && self.l4 == L4::Udp {
            0xffff
        } else {
            sum
        };
        put16(seg, csum_at, sum);
    }
}

/// Folds a sum of 16-bit one's-complement partial sums to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Writes a big-endian u16 at an offset already checked against [`Layout`].
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Super-frames as guests build them, for the tests here and of the code
/// that checks offload requests against them.
#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::packet::PoolConfig;
    use snapnet_wire::ethernet::HEADER_LEN as ETH_HEADER_LEN;

    /// A big-endian u16 at `at`.
    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    /// A big-endian u32 at `at`.
    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    const MAC_DST: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x02];
    const MAC_SRC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x01];
    const SEQ0: u32 = 0xffff_f000; // wraps during the test
    const ID0: u16 = 0xfffe; // wraps during the test
    const FLAGS_ALL: u8 = tcp_flags::CWR | tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN;

    /// What a test super-frame is.
    #[derive(Clone, Copy)]
    pub(crate) struct Spec {
        pub ip: Ip,
        pub l4: L4,
        pub vlan: bool,
        pub tcp_options: usize,
        pub payload: usize,
    }

    impl Spec {
        pub fn gso_type(&self) -> u8 {
            match (self.ip, self.l4) {
                (Ip::V4, L4::Tcp) => GSO_TCPV4,
                (Ip::V6, L4::Tcp) => GSO_TCPV6,
                (_, L4::Udp) => GSO_UDP_L4,
            }
        }
        pub fn l3(&self) -> usize {
            ETH_HEADER_LEN + if self.vlan { 4 } else { 0 }
        }
        pub fn l4(&self) -> usize {
            self.l3()
                + match self.ip {
                    Ip::V4 => 20,
                    Ip::V6 => 40,
                }
        }
        pub fn header_len(&self) -> usize {
            self.l4()
                + match self.l4 {
                    L4::Tcp => 20 + self.tcp_options,
                    L4::Udp => 8,
                }
        }
    }

    fn pattern(i: usize) -> u8 {
        // 251 is prime: a payload slice copied from the wrong offset shows.
        (i % 251) as u8
    }

    /// The bytes of a super-frame as a guest would write them, with junk in
    /// the lengths and checksum fields that segmentation must overwrite.
    pub(crate) fn super_bytes(s: &Spec) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&MAC_DST);
        p.extend_from_slice(&MAC_SRC);
        if s.vlan {
            p.extend_from_slice(&[0x81, 0x00, 0x00, 0x2a]);
        }
        let proto = match s.l4 {
            L4::Tcp => PROTO_TCP,
            L4::Udp => PROTO_UDP,
        };
        match s.ip {
            Ip::V4 => {
                p.extend_from_slice(&[0x08, 0x00, 0x45, 0x00, 0x00, 0x00]);
                p.extend_from_slice(&ID0.to_be_bytes());
                p.extend_from_slice(&[0x40, 0x00, 64, proto, 0xde, 0xad]);
                p.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            }
            Ip::V6 => {
                p.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 0, proto, 64]);
                for i in 0..32u8 {
                    p.push(0x20 + i);
                }
            }
        }
        match s.l4 {
            L4::Tcp => {
                p.extend_from_slice(&[0x1f, 0x90, 0x00, 0x50]);
                p.extend_from_slice(&SEQ0.to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, 1]);
                let doff = ((20 + s.tcp_options) / 4) as u8;
                p.extend_from_slice(&[doff << 4, FLAGS_ALL, 0xff, 0xff, 0xbe, 0xef, 0, 0]);
                // NOP options.
                p.extend(std::iter::repeat_n(1, s.tcp_options));
            }
            L4::Udp => p.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 0, 0xbe, 0xef]),
        }
        assert_eq!(p.len(), s.header_len());
        p.extend((0..s.payload).map(pattern));
        p
    }

    fn put_frame(
        pool: &FramePool,
        cache: &mut FrameCache,
        bytes: &[u8],
        o: Offload,
    ) -> FrameHandle {
        let mut f = cache.alloc(bytes.len()).expect("pool has room");
        let off = usize::from(f.offset);
        pool.frame_mut(&mut f)[off..off + bytes.len()].copy_from_slice(bytes);
        f.len = bytes.len() as u32;
        f.offload = o;
        f
    }

    pub(crate) fn gso_offload(s: &Spec, gso_size: u16) -> Offload {
        Offload {
            flags: F_NEEDS_CSUM,
            gso_type: s.gso_type(),
            hdr_len: 7, // wrong on purpose: must not be used
            gso_size,
            csum_start: s.l4() as u16,
            csum_offset: match s.l4 {
                L4::Tcp => 16,
                L4::Udp => 6,
            },
        }
    }

    /// True when the L4 checksum of `p` verifies over the pseudo-header.
    fn l4_verifies(p: &[u8], ip: Ip, l3: usize, l4: usize) -> bool {
        let (addrs, proto) = match ip {
            Ip::V4 => (l3 + 12..l3 + 20, p[l3 + 9]),
            Ip::V6 => (l3 + 8..l3 + 40, p[l3 + 6]),
        };
        let len = (p.len() - l4) as u32;
        let pseudo = u32::from(ones_sum(&p[addrs])) + u32::from(proto) + len;
        fold(pseudo + u32::from(ones_sum(&p[l4..]))) == 0xffff
    }

    fn segment_all(
        pool: &FramePool,
        cache: &mut FrameCache,
        f: &FrameHandle,
        max_frame: usize,
    ) -> (Result<usize, SegmentError>, Vec<FrameHandle>) {
        let mut out = Vec::new();
        let r = segment(pool, cache, f, max_frame, |s| out.push(s));
        (r, out)
    }

    /// Segments `s` and checks every property of the result; frees all.
    fn check(s: Spec, gso_size: u16, max_frame: usize, want_segments: usize) {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let orig = super_bytes(&s);
        let f = put_frame(&pool, &mut cache, &orig, gso_offload(&s, gso_size));
        let (r, segs) = segment_all(&pool, &mut cache, &f, max_frame);
        assert_eq!(r, Ok(want_segments));
        assert_eq!(segs.len(), want_segments);
        let (l3, l4, hl) = (s.l3(), s.l4(), s.header_len());
        let mss = usize::from(gso_size).min(max_frame - hl);
        let mut payload = Vec::new();
        for (i, seg) in segs.iter().enumerate() {
            let p = pool.bytes(seg);
            let last = i + 1 == segs.len();
            assert_eq!(seg.offload, Offload::default());
            assert!(p.len() <= max_frame);
            assert_eq!(pool.capacity(seg), 4096, "segments use small frames");
            let data = &p[hl..];
            assert!(data.len() <= usize::from(gso_size));
            if !last {
                assert_eq!(data.len(), mss);
            }
            // Untouched header bytes.
            assert_eq!(p[..l3], orig[..l3]);
            match s.ip {
                Ip::V4 => {
                    assert_eq!(be16(p, l3 + 2) as usize, p.len() - l3);
                    assert_eq!(be16(p, l3 + 4), ID0.wrapping_add(i as u16));
                    assert_eq!(!ones_sum(&p[l3..l4]), 0, "ipv4 header checksum");
                }
                Ip::V6 => assert_eq!(be16(p, l3 + 4) as usize, p.len() - l4),
            }
            assert!(l4_verifies(p, s.ip, l3, l4), "l4 checksum of segment {i}");
            match s.l4 {
                L4::Tcp => {
                    assert_eq!(be32(p, l4 + 4), SEQ0.wrapping_add(payload.len() as u32));
                    let flags = p[l4 + 13];
                    assert_eq!(flags & (tcp_flags::FIN | tcp_flags::PSH) != 0, last);
                    assert_eq!(flags & tcp_flags::FIN != 0, last);
                    assert_eq!(flags & tcp_flags::CWR != 0, i == 0);
                    assert_ne!(flags & 0x10, 0, "ACK kept");
                    assert_eq!(p[l4 + 20..hl], orig[l4 + 20..hl], "options kept");
                }
                L4::Udp => assert_eq!(be16(p, l4 + 4) as usize, p.len() - l4),
            }
            payload.extend_from_slice(data);
        }
        assert_eq!(payload, orig[hl..]);
        for seg in segs {
            cache.free(seg);
        }
        cache.free(f);
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames());
    }

    pub(crate) fn spec(ip: Ip, l4: L4, payload: usize) -> Spec {
        Spec {
            ip,
            l4,
            vlan: false,
            tcp_options: 0,
            payload,
        }
    }

    #[test]
    fn segment_count_is_what_segment_makes() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        for (s, gso_size, max_frame) in [
            (spec(Ip::V4, L4::Tcp, 10_000), 1448, 1514),
            (spec(Ip::V4, L4::Tcp, 10_000), 48, 1514),
            (spec(Ip::V6, L4::Tcp, 3_001), 100, 1514),
            (spec(Ip::V4, L4::Udp, 2_000), 48, 1514),
            (spec(Ip::V4, L4::Tcp, 20_000), 9000, 1514),
            (spec(Ip::V4, L4::Tcp, 20_000), 9000, 9014),
            (spec(Ip::V4, L4::Tcp, 0), 1448, 1514),
            (spec(Ip::V4, L4::Tcp, 1), 1, 1514),
        ] {
            let f = put_frame(
                &pool,
                &mut cache,
                &super_bytes(&s),
                gso_offload(&s, gso_size),
            );
            let (r, segs) = segment_all(&pool, &mut cache, &f, max_frame);
            let wire_bytes: usize = segs.iter().map(|g| g.len as usize).sum();
            let hl = s.header_len();
            let n = segment_count(f.len as usize, hl, gso_size, max_frame);
            assert_eq!(r, Ok(n), "gso_size {gso_size} max_frame {max_frame}");
            assert_eq!(wire_bytes, f.len as usize + (n - 1) * hl);
            segs.into_iter().for_each(|g| cache.free(g));
            cache.free(f);
        }
        // Headers that leave no room: the most segments any cut could make.
        assert_eq!(segment_count(1054, 54, 1448, 54), 1000);
        assert_eq!(segment_count(10, 54, 1448, 1514), 1);
    }

    #[test]
    fn gso_headers_name_the_checksum_and_what_segments_repeat() {
        let v = Spec {
            vlan: true,
            tcp_options: 12,
            ..spec(Ip::V4, L4::Tcp, 100)
        };
        let h = gso_headers(&super_bytes(&v), GSO_TCPV4 | GSO_ECN).unwrap();
        assert_eq!(
            h,
            GsoHeaders {
                l4_start: 38,
                csum_offset: 16,
                header_len: 70
            }
        );
        let u = spec(Ip::V6, L4::Udp, 100);
        let h = gso_headers(&super_bytes(&u), GSO_UDP_L4).unwrap();
        assert_eq!((h.l4_start, h.csum_offset, h.header_len), (54, 6, 62));
        assert!(gso_headers(&super_bytes(&u), GSO_TCPV6).is_err());
    }

    #[test]
    fn tcpv4_super_frame() {
        check(spec(Ip::V4, L4::Tcp, 10_000), 1448, 1514, 7);
        // Timestamps: 66 header bytes, 1448 still fits.
        let s = Spec {
            tcp_options: 12,
            ..spec(Ip::V4, L4::Tcp, 10_000)
        };
        check(s, 1448, 1514, 7);
    }

    #[test]
    fn tcpv6_super_frame_is_cut_to_the_mtu_not_gso_size() {
        // 74 header bytes leave 1440 < 1448 per segment.
        check(spec(Ip::V6, L4::Tcp, 10_000), 1448, 1514, 7);
        check(spec(Ip::V6, L4::Tcp, 8_640), 1448, 1514, 6);
    }

    #[test]
    fn udp_l4_super_frames() {
        check(spec(Ip::V4, L4::Udp, 10_000), 1448, 1514, 7);
        check(spec(Ip::V6, L4::Udp, 10_000), 1400, 1514, 8);
    }

    #[test]
    fn vlan_tagged_and_ecn() {
        let s = Spec {
            vlan: true,
            ..spec(Ip::V4, L4::Tcp, 5_000)
        };
        check(s, 1448, 1518, 4);
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let s = spec(Ip::V6, L4::Tcp, 3000);
        let mut o = gso_offload(&s, 1000);
        o.gso_type |= GSO_ECN;
        let f = put_frame(&pool, &mut cache, &super_bytes(&s), o);
        let (r, segs) = segment_all(&pool, &mut cache, &f, 1514);
        assert_eq!(r, Ok(3));
        for seg in segs {
            cache.free(seg);
        }
        cache.free(f);
    }

    #[test]
    fn small_and_empty_payloads_make_one_segment() {
        check(spec(Ip::V4, L4::Tcp, 100), 1448, 1514, 1);
        check(spec(Ip::V4, L4::Tcp, 1448), 1448, 1514, 1);
        check(spec(Ip::V4, L4::Tcp, 1449), 1448, 1514, 2);
        check(spec(Ip::V4, L4::Tcp, 0), 1448, 1514, 1);
        check(spec(Ip::V6, L4::Udp, 0), 1448, 1514, 1);
        check(spec(Ip::V4, L4::Udp, 1), 1, 1514, 1);
    }

    #[test]
    fn max_frame_is_capped_at_a_small_frame() {
        // 9000-byte jumbo request: segments still fit a 4 KiB UMEM chunk.
        let s = spec(Ip::V4, L4::Tcp, 20_000);
        check(s, 8948, SEGMENT_MAX, 20_000usize.div_ceil(SEGMENT_MAX - 54));
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let f = put_frame(&pool, &mut cache, &super_bytes(&s), gso_offload(&s, 8948));
        let (r, segs) = segment_all(&pool, &mut cache, &f, 9014);
        assert_eq!(r, Ok(20_000usize.div_ceil(SEGMENT_MAX - 54)));
        for seg in segs {
            assert!(pool.bytes(&seg).len() <= SEGMENT_MAX);
            assert_eq!(pool.capacity(&seg), 4096);
            cache.free(seg);
        }
        cache.free(f);
    }

    /// A NEEDS_CSUM (non-GSO) TCP frame with the pseudo-header seed in the
    /// checksum field, as a guest writes it.
    fn partial_tcp_frame(pool: &FramePool, cache: &mut FrameCache) -> (FrameHandle, Spec) {
        let s = spec(Ip::V4, L4::Tcp, 1000);
        let mut b = super_bytes(&s);
        let (l3, l4) = (s.l3(), s.l4());
        let tot = (b.len() - l3) as u16;
        b[l3 + 2..l3 + 4].copy_from_slice(&tot.to_be_bytes());
        b[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let c = !ones_sum(&b[l3..l4]);
        b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        let len = (b.len() - l4) as u32;
        let seed = fold(u32::from(ones_sum(&b[l3 + 12..l3 + 20])) + 6 + len);
        b[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
        let o = Offload {
            flags: F_NEEDS_CSUM,
            csum_start: l4 as u16,
            csum_offset: 16,
            ..Offload::default()
        };
        (put_frame(pool, cache, &b, o), s)
    }

    #[test]
    fn finish_checksum_completes_partial_tcp() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut f, s) = partial_tcp_frame(&pool, &mut cache);
        assert!(!l4_verifies(pool.bytes(&f), s.ip, s.l3(), s.l4()));
        assert_eq!(finish_checksum(&pool, &mut f), Ok(()));
        assert_eq!(f.offload, Offload::default());
        assert!(l4_verifies(pool.bytes(&f), s.ip, s.l3(), s.l4()));

        // Without NEEDS_CSUM the bytes stay as they are; offload is cleared.
        let before = pool.bytes(&f).to_vec();
        f.offload.flags = 2; // DATA_VALID
        assert_eq!(finish_checksum(&pool, &mut f), Ok(()));
        assert_eq!(pool.bytes(&f), &before[..]);
        assert_eq!(f.offload, Offload::default());
        cache.free(f);
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames());
    }

    #[test]
    fn finish_checksum_refuses_bad_offsets_and_gso() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut f, _) = partial_tcp_frame(&pool, &mut cache);
        let len = f.len as u16;
        for (start, offset) in [
            (len, 0),
            (len - 1, 0),
            (0, len - 1),
            (u16::MAX, u16::MAX),
            (len - 2, 1),
        ] {
            f.offload.csum_start = start;
            f.offload.csum_offset = offset;
            let o = f.offload;
            assert!(matches!(
                finish_checksum(&pool, &mut f),
                Err(SegmentError::Malformed(_))
            ));
            assert_eq!(f.offload, o, "left for the caller to drop");
        }
        f.offload = Offload {
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            ..Offload::default()
        };
        assert!(matches!(
            finish_checksum(&pool, &mut f),
            Err(SegmentError::Malformed(_))
        ));
        // A length past the frame's buffer.
        f.offload = Offload {
            flags: F_NEEDS_CSUM,
            ..Offload::default()
        };
        f.len = 5000;
        assert!(matches!(
            finish_checksum(&pool, &mut f),
            Err(SegmentError::Malformed(_))
        ));
        f.len = 0;
        assert!(matches!(
            finish_checksum(&pool, &mut f),
            Err(SegmentError::Malformed(_))
        ));
        cache.free(f);
    }

    fn malformed(
        pool: &Arc<FramePool>,
        bytes: &[u8],
        o: Offload,
        max_frame: usize,
    ) -> Result<usize, SegmentError> {
        let mut cache = pool.cache();
        let f = put_frame(pool, &mut cache, bytes, o);
        let (r, segs) = segment_all(pool, &mut cache, &f, max_frame);
        assert!(segs.is_empty(), "nothing emitted for a malformed frame");
        cache.free(f);
        r
    }

    #[test]
    fn malformed_super_frames_are_refused() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let s4 = spec(Ip::V4, L4::Tcp, 3000);
        let b4 = super_bytes(&s4);
        let o4 = gso_offload(&s4, 1448);
        let s6 = spec(Ip::V6, L4::Tcp, 3000);
        let b6 = super_bytes(&s6);
        let o6 = gso_offload(&s6, 1448);
        let bad = |r: Result<usize, SegmentError>, why: &str| {
            assert!(matches!(r, Err(SegmentError::Malformed(_))), "{why}: {r:?}");
        };
        // Truncated at every header byte.
        for cut in 0..s4.header_len() {
            bad(malformed(&pool, &b4[..cut], o4, 1514), "truncated v4");
        }
        for cut in 0..s6.header_len() {
            bad(malformed(&pool, &b6[..cut], o6, 1514), "truncated v6");
        }
        bad(
            malformed(&pool, &b4, Offload { gso_size: 0, ..o4 }, 1514),
            "gso_size 0",
        );
        bad(
            malformed(
                &pool,
                &b4,
                Offload {
                    gso_type: GSO_UDP,
                    ..o4
                },
                1514,
            ),
            "ufo",
        );
        assert_eq!(
            malformed(
                &pool,
                &b4,
                Offload {
                    gso_type: GSO_UDP,
                    ..o4
                },
                1514
            ),
            Err(SegmentError::Malformed("ufo unsupported"))
        );
        bad(
            malformed(&pool, &b4, Offload { gso_type: 2, ..o4 }, 1514),
            "unknown type",
        );
        bad(
            malformed(&pool, &b4, Offload { gso_type: 0, ..o4 }, 1514),
            "not gso",
        );
        bad(
            malformed(
                &pool,
                &b4,
                Offload {
                    gso_type: GSO_TCPV6,
                    ..o4
                },
                1514,
            ),
            "v4 as v6",
        );
        bad(
            malformed(
                &pool,
                &b6,
                Offload {
                    gso_type: GSO_TCPV4,
                    ..o6
                },
                1514,
            ),
            "v6 as v4",
        );
        bad(
            malformed(
                &pool,
                &b4,
                Offload {
                    gso_type: GSO_UDP_L4,
                    ..o4
                },
                1514,
            ),
            "tcp as udp",
        );
        bad(
            malformed(
                &pool,
                &b6,
                Offload {
                    gso_type: GSO_UDP_L4,
                    ..o6
                },
                1514,
            ),
            "tcp6 as udp",
        );
        let u = spec(Ip::V4, L4::Udp, 3000);
        bad(
            malformed(
                &pool,
                &super_bytes(&u),
                Offload {
                    gso_type: GSO_TCPV4,
                    ..o4
                },
                1514,
            ),
            "udp as tcp",
        );
        // Headers leave no room for payload.
        bad(malformed(&pool, &b4, o4, 54), "max_frame == header_len");
        bad(malformed(&pool, &b4, o4, 0), "max_frame 0");

        let l3 = s4.l3();
        let l4 = s4.l4();
        let with = |base: &[u8], at: usize, v: u8| {
            let mut b = base.to_vec();
            b[at] = v;
            b
        };
        bad(
            malformed(&pool, &with(&b4, l3 + 6, 0x20), o4, 1514),
            "more fragments",
        );
        bad(
            malformed(&pool, &with(&b4, l3 + 7, 0x01), o4, 1514),
            "fragment offset",
        );
        // DF alone is fine.
        let mut cache = pool.cache();
        let f = put_frame(&pool, &mut cache, &with(&b4, l3 + 6, 0x40), o4);
        let (r, segs) = segment_all(&pool, &mut cache, &f, 1514);
        assert_eq!(r, Ok(3));
        segs.into_iter().for_each(|s| cache.free(s));
        cache.free(f);
        drop(cache);
        bad(malformed(&pool, &with(&b4, l3, 0x44), o4, 1514), "ihl 16");
        bad(
            malformed(&pool, &with(&b4, l3, 0x65), o4, 1514),
            "version 6 in v4",
        );
        bad(
            malformed(&pool, &with(&b4, l3, 0x4f), o4, 1514),
            "ihl beyond the frame",
        );
        bad(
            malformed(&pool, &with(&b4, l3 + 9, 17), o4, 1514),
            "protocol udp",
        );
        bad(
            malformed(&pool, &with(&b4, l4 + 12, 0x40), o4, 1514),
            "tcp doff 16",
        );
        let tiny = spec(Ip::V4, L4::Tcp, 10);
        let bt = super_bytes(&tiny);
        bad(
            malformed(
                &pool,
                &with(&bt, l4 + 12, 0xf0),
                gso_offload(&tiny, 1448),
                1514,
            ),
            "tcp doff beyond the frame",
        );
        bad(
            malformed(&pool, &with(&b6, s6.l3(), 0x40), o6, 1514),
            "version 4 in v6",
        );
        bad(
            malformed(&pool, &with(&b6, s6.l3() + 6, 0), o6, 1514),
            "hop-by-hop",
        );
        bad(
            malformed(&pool, &with(&b6, s6.l3() + 6, 44), o6, 1514),
            "fragment header",
        );
        bad(
            malformed(&pool, &with(&b4, 12, 0x86), o4, 1514),
            "arp-ish ethertype",
        );
        // Two VLAN tags.
        let v = Spec { vlan: true, ..s4 };
        let bv = super_bytes(&v);
        let mut qinq = bv.clone();
        qinq[16..18].copy_from_slice(&[0x81, 0x00]);
        bad(malformed(&pool, &qinq, gso_offload(&v, 1448), 1514), "qinq");
        // The length a frame claims must be in its buffer.
        let mut cache = pool.cache();
        let mut f = put_frame(&pool, &mut cache, &b4, o4);
        f.len = 70_000;
        let (r, segs) = segment_all(&pool, &mut cache, &f, 1514);
        bad(r, "len past the buffer");
        assert!(segs.is_empty());
        cache.free(f);
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames());
    }

    #[test]
    fn pool_exhaustion_is_reported_and_nothing_leaks() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let s = spec(Ip::V4, L4::Tcp, 10_000);
        let f = put_frame(&pool, &mut cache, &super_bytes(&s), gso_offload(&s, 1448));
        let mut held = Vec::new();
        while let Some(h) = cache.alloc(64) {
            held.push(h);
        }
        for h in held.drain(..3) {
            cache.free(h);
        }
        let (r, segs) = segment_all(&pool, &mut cache, &f, 1514);
        assert_eq!(r, Err(SegmentError::PoolEmpty));
        assert_eq!(segs.len(), 3, "segments before the failure stay emitted");
        for (i, seg) in segs.iter().enumerate() {
            let p = pool.bytes(seg);
            assert!(l4_verifies(p, Ip::V4, 14, 34));
            assert_eq!(
                p[34 + 13] & tcp_flags::FIN,
                0,
                "segment {i} is not the last"
            );
        }
        for h in segs.into_iter().chain(held) {
            cache.free(h);
        }
        cache.free(f);
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames());
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn arbitrary_bytes_and_offloads_never_panic() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let specs = [
            spec(Ip::V4, L4::Tcp, 3000),
            spec(Ip::V6, L4::Tcp, 3000),
            spec(Ip::V4, L4::Udp, 3000),
            spec(Ip::V6, L4::Udp, 3000),
            Spec {
                vlan: true,
                tcp_options: 12,
                ..spec(Ip::V4, L4::Tcp, 3000)
            },
        ];
        let (mut ok, mut empty, mut emitted) = (0usize, 0usize, 0usize);
        for round in 0..20_000 {
            // Half the rounds mutate a valid frame (deep paths), half are noise.
            let mut bytes = if round % 2 == 0 {
                let s = specs[rng.below(specs.len() as u64) as usize];
                let mut b = super_bytes(&s);
                for _ in 0..rng.below(4) {
                    let at = rng.below(s.header_len() as u64 + 4) as usize;
                    if let Some(x) = b.get_mut(at) {
                        *x = rng.next() as u8;
                    }
                }
                b
            } else {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            };
            bytes.truncate(
                rng.below(bytes.len() as u64 + 1)
                    .max(rng.below(2) * bytes.len() as u64) as usize,
            );
            let r = rng.next();
            let pick = |x: u64, choices: &[u16]| choices[(x % choices.len() as u64) as usize];
            let o = Offload {
                flags: r as u8,
                gso_type: pick(r >> 8, &[0, 1, 3, 4, 5, 0x81, 0x85, (r >> 16) as u16]) as u8,
                hdr_len: (r >> 24) as u16,
                gso_size: pick(r >> 32, &[0, 1, 536, 1448, 65_535, (r >> 40) as u16]),
                csum_start: pick(r >> 48, &[0, 34, 54, (r >> 20) as u16]),
                csum_offset: pick(r >> 52, &[6, 16, (r >> 36) as u16]),
            };
            let max_frame = pick(rng.next(), &[0, 60, 1514, 9014, u16::MAX]) as usize;
            let mut f = put_frame(&pool, &mut cache, &bytes, o);
            let mut out = Vec::new();
            let res = segment(&pool, &mut cache, &f, max_frame, |s| out.push(s));
            match res {
                Ok(n) => {
                    assert_eq!(n, out.len());
                    ok += 1;
                }
                Err(SegmentError::PoolEmpty) => empty += 1,
                Err(SegmentError::Malformed(_)) => assert!(out.is_empty()),
            }
            emitted += out.len();
            for seg in out {
                assert!(pool.bytes(&seg).len() <= max_frame.min(SEGMENT_MAX));
                cache.free(seg);
            }
            let _ = finish_checksum(&pool, &mut f);
            cache.free(f);
        }
        // The fuzz must reach the segmenting path, not only the parser.
        assert!(
            ok > 500 && empty > 0 && emitted > 10_000,
            "{ok} {empty} {emitted}"
        );
        drop(cache);
        assert_eq!(pool.free_frames(), pool.total_frames());
    }
}
