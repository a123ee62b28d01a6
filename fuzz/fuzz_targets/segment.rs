//! Software segmentation and checksum completion (`packet::segment`) on any
//! frame with any offload metadata: no panic, every segment fits its frame
//! and the wire size asked for, carries no offload, and has a correct IPv4
//! header checksum; the pool gets every frame back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use snapnet_wire::checksum::ones_sum;
use snapnet::packet::pool::HEADROOM;
use snapnet::packet::segment::{finish_checksum, segment};
use snapnet::packet::{FrameHandle, FramePool, Offload};
use snapnet_fuzz::{assert_frame_fits, assert_no_frame_leaked, pool, Input};

/// What a segment may hold: a small frame less its headroom.
const SMALL_FRAME: usize = 4096 - HEADROOM as usize;

/// An IPv4 header right after an untagged Ethernet header must sum to zero.
fn assert_ipv4_checksum(bytes: &[u8]) {
    if bytes.get(12..14) != Some(&[0x08, 0x00][..]) {
        return;
    }
    let Some(&vihl) = bytes.get(14) else { return };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return;
    }
    if let Some(h) = bytes.get(14..14 + ihl) {
        assert_eq!(ones_sum(h), 0xffff, "IPv4 header checksum of a segment");
    }
}

fn check_wire_frame(pool: &FramePool, f: &FrameHandle) {
    assert_frame_fits(pool, f);
    assert_eq!(
        f.offload,
        Offload::default(),
        "offload left on a wire frame"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let offload = Offload {
        flags: inp.u8(),
        gso_type: inp.u8(),
        hdr_len: inp.u16(),
        gso_size: inp.u16(),
        csum_start: inp.u16(),
        csum_offset: inp.u16(),
    };
    let max_frame = usize::from(inp.u16());
    let packet = inp.rest();
    let pool = pool();
    let mut cache = pool.cache();
    let Some(mut frame) = cache.alloc(packet.len()) else {
        return;
    };
    let off = usize::from(frame.offset);
    pool.frame_mut(&mut frame)[off..off + packet.len()].copy_from_slice(packet);
    frame.len = packet.len() as u32;
    frame.offload = offload;
    if offload.is_gso() {
        let mut segments = Vec::new();
        let result = segment(pool, &mut cache, &frame, max_frame, |s| segments.push(s));
        if let Ok(n) = result {
            assert_eq!(n, segments.len(), "segments counted and emitted differ");
        }
        for s in segments {
            check_wire_frame(pool, &s);
            assert!(
                s.len as usize <= max_frame.min(SMALL_FRAME),
                "segment of {} bytes for a {max_frame}-byte wire",
                s.len
            );
            assert_ipv4_checksum(pool.bytes(&s));
            cache.free(s);
        }
        assert!(
            finish_checksum(pool, &mut frame).is_err(),
            "GSO frame finished unsegmented"
        );
    } else if finish_checksum(pool, &mut frame).is_ok() {
        check_wire_frame(pool, &frame);
        assert_eq!(pool.bytes(&frame).len(), packet.len());
    }
    cache.free(frame);
    drop(cache);
    assert_no_frame_leaked(pool);
});
