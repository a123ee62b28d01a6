//! Guest TX against hostile virtio-net headers and against its rate limit:
//! every offload request a guest may not make is a counted drop, on split
//! and packed rings alike, and what leaves carries a header snapnet built;
//! the egress limit charges what a super-frame puts on the wire and never
//! wedges the queue.

use std::time::{Duration, Instant};

use virtio_queue::QueueT;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

use super::packed_tests::data_path::tx_one as packed_tx_one;
use super::stats::DropReason;
use super::tests::{
    all_features, frame_bytes, gso_frame, hdr, memory, packet, setup, tso_frame, without, Guest,
    Switch, TestPath,
};
use super::tx_offload::MIN_GSO_SIZE;
use crate::packet::segment::{Ip, L4};
use crate::packet::{FramePool, Offload};
use crate::shaping::{RateLimit, SharedBucket};
use snapnet_wire::virtio_net::{
    F_DATA_VALID, F_NEEDS_CSUM, F_RSC_INFO, GSO_ECN, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
};

/// A partial TCP checksum in `packet(60, _)`, as a guest asks for it.
const CSUM: Offload = Offload {
    flags: F_NEEDS_CSUM,
    gso_type: 0,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 34,
    csum_offset: 16,
};

/// What became of the one chain sent: the offload its frame carries on
/// (its bytes checked unchanged), or the one drop it counted.
fn outcome(
    pool: &FramePool,
    dp: &mut TestPath,
    sw: &mut Switch,
    packet: &[u8],
) -> Result<Offload, DropReason> {
    if let Some(f) = sw.from_guest.pop() {
        assert_eq!(frame_bytes(pool, &f), packet);
        assert_eq!(dp.counters.total_drops(), 0);
        let o = f.offload;
        dp.cache.free(f);
        return Ok(o);
    }
    assert_eq!(dp.counters.total_drops(), 1, "exactly one drop counted");
    Err(DropReason::ALL
        .into_iter()
        .find(|r| dp.counters.dropped(*r) == 1)
        .expect("a reason"))
}

/// Sends `packet` with the header `o` through split and through packed TX
/// of a guest that negotiated `features`: both go through the same checks
/// and must agree.
fn send(features: u64, packet: &[u8], o: Offload) -> Result<Offload, DropReason> {
    let bytes = [hdr(&o, 0), packet.to_vec()].concat();
    let split = {
        let (mem, arc) = memory();
        let mut g = Guest::new(&mem, &arc);
        let (pool, mut dp, mut sw) = setup(features);
        let a = g.buffer(&bytes, 0);
        g.publish(&[(a, bytes.len() as u32, 0, None)]);
        assert_eq!(g.tx(&mut dp).0, 1, "the chain is consumed");
        outcome(&pool, &mut dp, &mut sw, packet)
    };
    let packed = {
        let (pool, mut dp, mut sw) = setup(features);
        assert_eq!(packed_tx_one(&mut dp, &bytes), 1, "the chain is consumed");
        outcome(&pool, &mut dp, &mut sw, packet)
    };
    assert_eq!(split, packed, "split and packed TX agree");
    split
}

#[test]
fn receiver_only_and_unknown_flags_are_cleared() {
    let o = Offload {
        flags: F_DATA_VALID | F_RSC_INFO | 0x40,
        ..Offload::default()
    };
    assert_eq!(
        send(all_features(), &packet(60, 1), o),
        Ok(Offload::default())
    );
    let o = Offload {
        flags: F_NEEDS_CSUM | F_DATA_VALID,
        ..CSUM
    };
    assert_eq!(send(all_features(), &packet(60, 1), o), Ok(CSUM));
}

#[test]
fn fields_a_frame_without_gso_does_not_use_are_not_passed_on() {
    let o = Offload {
        hdr_len: 20,
        gso_size: 1448,
        csum_start: 5,
        csum_offset: 3,
        ..Offload::default()
    };
    assert_eq!(
        send(all_features(), &packet(60, 1), o),
        Ok(Offload::default())
    );
    let o = Offload {
        hdr_len: 20,
        gso_size: 1448,
        ..CSUM
    };
    assert_eq!(send(all_features(), &packet(60, 1), o), Ok(CSUM));
}

#[test]
fn needs_csum_without_negotiated_csum_is_refused() {
    let f = without(&[VIRTIO_NET_F_CSUM]);
    assert_eq!(
        send(f, &packet(60, 1), CSUM),
        Err(DropReason::CsumNotNegotiated)
    );
    assert_eq!(
        send(f, &packet(60, 1), Offload::default()),
        Ok(Offload::default())
    );
}

#[test]
fn a_checksum_field_outside_the_frame_is_refused() {
    for (start, offset) in [
        (50, 16),
        (58, 1),
        (60, 0),
        (61, 0),
        (0, 59),
        (u16::MAX, u16::MAX),
    ] {
        let o = Offload {
            csum_start: start,
            csum_offset: offset,
            ..CSUM
        };
        assert_eq!(
            send(all_features(), &packet(60, 1), o),
            Err(DropReason::BadCsumOffsets),
            "csum_start {start} csum_offset {offset}"
        );
    }
    // The last two bytes of the frame are still in it.
    let o = Offload {
        csum_start: 50,
        csum_offset: 8,
        ..CSUM
    };
    assert_eq!(send(all_features(), &packet(60, 1), o), Ok(o));
}

#[test]
fn hdr_len_past_the_frame_is_refused() {
    let o = Offload {
        hdr_len: 61,
        ..Offload::default()
    };
    assert_eq!(
        send(all_features(), &packet(60, 1), o),
        Err(DropReason::BadHdrLen)
    );
    let (p, o) = tso_frame(Ip::V4, 100, 1448);
    let o = Offload {
        hdr_len: p.len() as u16 + 1,
        ..o
    };
    assert_eq!(send(all_features(), &p, o), Err(DropReason::BadHdrLen));
}

#[test]
fn a_wrong_hdr_len_is_replaced_by_the_real_header_length() {
    let (p, good) = tso_frame(Ip::V4, 3000, 1448);
    assert_eq!(good.hdr_len, 54);
    for hdr_len in [0, 14, 53, 55, 3000] {
        let o = Offload { hdr_len, ..good };
        assert_eq!(send(all_features(), &p, o), Ok(good), "hdr_len {hdr_len}");
    }
}

#[test]
fn a_good_super_frame_passes_with_a_header_snapnet_built() {
    for ip in [Ip::V4, Ip::V6] {
        let (p, good) = tso_frame(ip, 3000, 1448);
        let o = Offload {
            flags: F_NEEDS_CSUM | F_DATA_VALID,
            ..good
        };
        assert_eq!(send(all_features(), &p, o), Ok(good));
    }
}

#[test]
fn ufo_and_uso_are_refused() {
    let (p, o) = gso_frame(Ip::V4, L4::Udp, 3000, 1448);
    for gso_type in [GSO_UDP, GSO_UDP_L4] {
        let o = Offload { gso_type, ..o };
        assert_eq!(
            send(all_features(), &p, o),
            Err(DropReason::BadGso),
            "{gso_type}"
        );
    }
}

#[test]
fn ecn_without_host_ecn_is_refused() {
    let (p, o) = tso_frame(Ip::V4, 3000, 1448);
    let o = Offload {
        gso_type: GSO_TCPV4 | GSO_ECN,
        ..o
    };
    assert_eq!(send(all_features(), &p, o), Err(DropReason::BadGso));
}

#[test]
fn unknown_gso_types_are_refused() {
    let (p, o) = tso_frame(Ip::V4, 3000, 1448);
    for gso_type in [2, 6, 0x7f, GSO_ECN] {
        let o = Offload { gso_type, ..o };
        assert_eq!(
            send(all_features(), &p, o),
            Err(DropReason::BadGso),
            "{gso_type}"
        );
    }
}

#[test]
fn each_tso_type_needs_its_own_feature() {
    let (p4, o4) = tso_frame(Ip::V4, 3000, 1448);
    let (p6, o6) = tso_frame(Ip::V6, 3000, 1448);
    let no4 = without(&[VIRTIO_NET_F_HOST_TSO4]);
    let no6 = without(&[VIRTIO_NET_F_HOST_TSO6]);
    assert_eq!(send(no4, &p4, o4), Err(DropReason::BadGso));
    assert_eq!(send(no6, &p6, o6), Err(DropReason::BadGso));
    assert_eq!(send(no6, &p4, o4), Ok(o4));
    assert_eq!(send(no4, &p6, o6), Ok(o6));
}

#[test]
fn gso_without_needs_csum_is_refused() {
    let (p, o) = tso_frame(Ip::V4, 3000, 1448);
    let o = Offload { flags: 0, ..o };
    assert_eq!(send(all_features(), &p, o), Err(DropReason::BadGso));
}

#[test]
fn gso_size_below_the_floor_is_refused() {
    let (p, o) = tso_frame(Ip::V4, 3000, 1448);
    for gso_size in [0, 1, MIN_GSO_SIZE - 1] {
        let o = Offload { gso_size, ..o };
        assert_eq!(
            send(all_features(), &p, o),
            Err(DropReason::GsoSizeTooSmall),
            "gso_size {gso_size}"
        );
    }
    let o = Offload {
        gso_size: MIN_GSO_SIZE,
        ..o
    };
    assert_eq!(send(all_features(), &p, o), Ok(o));
}

#[test]
fn a_gso_type_that_does_not_match_the_headers_is_refused() {
    let (p4, o4) = tso_frame(Ip::V4, 3000, 1448);
    let (p6, o6) = tso_frame(Ip::V6, 3000, 1448);
    let (pu, _) = gso_frame(Ip::V4, L4::Udp, 3000, 1448);
    let cases = [
        (
            "TCPV4 on IPv6",
            &p6,
            Offload {
                gso_type: GSO_TCPV4,
                ..o6
            },
        ),
        (
            "TCPV6 on IPv4",
            &p4,
            Offload {
                gso_type: GSO_TCPV6,
                ..o4
            },
        ),
        ("TCPV4 on UDP", &pu, o4),
        ("TCPV4 on a non-IP frame", &packet(3000, 1), o4),
    ];
    for (what, p, o) in cases {
        assert_eq!(
            send(all_features(), p, o),
            Err(DropReason::BadGsoHeaders),
            "{what}"
        );
    }
    // Cut inside the TCP header.
    assert_eq!(
        send(all_features(), &p4[..50], Offload { hdr_len: 0, ..o4 }),
        Err(DropReason::BadGsoHeaders)
    );
}

#[test]
fn a_super_frame_must_ask_for_the_tcp_checksum() {
    let (p, o) = tso_frame(Ip::V4, 3000, 1448);
    for (start, offset) in [(30, 16), (35, 16), (34, 6), (34, 18)] {
        let o = Offload {
            csum_start: start,
            csum_offset: offset,
            ..o
        };
        assert_eq!(
            send(all_features(), &p, o),
            Err(DropReason::BadCsumOffsets),
            "csum_start {start} csum_offset {offset}"
        );
    }
}

/// A guest with `limit` on its egress, its TX ring holding `n` chains of
/// `bytes` (virtio-net header included).
fn limited_guest<'a>(
    mem: &'a vm_memory::GuestMemoryMmap,
    arc: &std::sync::Arc<vm_memory::GuestMemoryMmap>,
    limit: RateLimit,
    chains: &[&[u8]],
) -> (Guest<'a>, TestPath, Switch) {
    let mut g = Guest::new(mem, arc);
    let (_pool, mut dp, sw) = setup(all_features());
    dp.egress = SharedBucket::new(&limit);
    for bytes in chains {
        let a = g.buffer(bytes, 0);
        g.publish(&[(a, bytes.len() as u32, 0, None)]);
    }
    (g, dp, sw)
}

fn drain_frames(dp: &mut TestPath, sw: &mut Switch) -> usize {
    let mut n = 0;
    while let Some(f) = sw.from_guest.pop() {
        dp.cache.free(f);
        n += 1;
    }
    n
}

#[test]
fn egress_packets_are_charged_per_segment_of_a_super_frame() {
    // 20 000 payload bytes cut at the floor of 48: 417 wire frames, more
    // than the 100-packet bucket holds.
    let (p, o) = tso_frame(Ip::V4, 20_000, MIN_GSO_SIZE);
    let chain = [hdr(&o, 0), p].concat();
    let (mem, arc) = memory();
    let limit = RateLimit {
        packets_per_sec: Some(1000),
        burst_packets: Some(100),
        ..RateLimit::default()
    };
    let (mut g, mut dp, mut sw) = limited_guest(&mem, &arc, limit, &[&chain[..]; 5]);
    assert_eq!(g.tx(&mut dp).0, 1, "a full bucket lets one through");
    assert_eq!(drain_frames(&mut dp, &mut sw), 1);
    assert_eq!(g.queue.next_avail(), 1, "the others wait in the ring");
    assert_eq!(dp.counters.total_drops(), 0, "egress shaping never drops");
    // 317 packets of debt and 100 to fill the bucket at 1000/s.
    let wait = dp.egress_blocked_until.expect("throttled") - Instant::now();
    assert!(
        wait > Duration::from_millis(380) && wait <= Duration::from_millis(417),
        "{wait:?}"
    );
    assert_eq!(g.tx(&mut dp).0, 0, "nothing while throttled");
    assert_eq!(g.used_idx(), 1);
}

#[test]
fn egress_bytes_are_charged_with_every_segments_headers() {
    // 1 MB/s with the smallest bucket (65 792 B). At gso_size 1448 a
    // 20 054-byte super-frame is 14 wire frames, 20 756 bytes: three fit.
    // At 48 it is 417 frames carrying 54 header bytes each, 42 518 bytes:
    // one fits.
    let limit = RateLimit {
        bytes_per_sec: Some(1_000_000),
        ..RateLimit::default()
    };
    for (gso_size, fit) in [(1448, 3), (MIN_GSO_SIZE, 1)] {
        let (p, o) = tso_frame(Ip::V4, 20_000, gso_size);
        let chain = [hdr(&o, 0), p].concat();
        let (mem, arc) = memory();
        let (mut g, mut dp, mut sw) = limited_guest(&mem, &arc, limit, &[&chain[..]; 5]);
        assert_eq!(g.tx(&mut dp).0, fit, "gso_size {gso_size}");
        assert_eq!(drain_frames(&mut dp, &mut sw), fit);
        assert!(dp.egress_blocked_until.is_some());
    }
}

#[test]
fn a_chain_too_big_to_ever_send_is_dropped_not_left_to_wedge_the_queue() {
    // Larger than any frame and than the byte bucket: checked first, so it
    // is dropped without taking tokens, and the chain after it goes.
    let huge = [hdr(&Offload::default(), 0), packet(70_000, 1)].concat();
    let small = [hdr(&Offload::default(), 0), packet(60, 2)].concat();
    let (mem, arc) = memory();
    let limit = RateLimit {
        bytes_per_sec: Some(1_000_000),
        burst_bytes: Some(65_792),
        ..RateLimit::default()
    };
    let (mut g, mut dp, mut sw) = limited_guest(&mem, &arc, limit, &[&huge, &huge, &huge, &small]);
    assert_eq!(g.tx(&mut dp).0, 4);
    assert_eq!(dp.counters.dropped(DropReason::TooBig), 3);
    assert_eq!(drain_frames(&mut dp, &mut sw), 1);
    assert!(dp.egress_blocked_until.is_none(), "no tokens were taken");
}

#[test]
fn refused_frames_take_no_egress_tokens() {
    // A 65 792-byte bucket refilling at 1000 B/s: six refused super-frames
    // of 20 054 bytes would empty it three times over; good frames after
    // them still find it full.
    let (p, o) = tso_frame(Ip::V4, 20_000, 1);
    let bad = [hdr(&o, 0), p].concat();
    let good = [hdr(&Offload::default(), 0), packet(60, 2)].concat();
    let (mem, arc) = memory();
    let limit = RateLimit {
        bytes_per_sec: Some(1000),
        ..RateLimit::default()
    };
    let mut chains: Vec<&[u8]> = vec![&bad; 6];
    chains.extend([&good[..]; 3]);
    let (mut g, mut dp, mut sw) = limited_guest(&mem, &arc, limit, &chains);
    assert_eq!(g.tx(&mut dp).0, 9);
    assert_eq!(dp.counters.dropped(DropReason::GsoSizeTooSmall), 6);
    assert_eq!(drain_frames(&mut dp, &mut sw), 3);
}
