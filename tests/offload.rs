//! Offload metadata through the real daemon: what one guest writes into
//! its TX virtio-net header reaches another guest only as snapnet checked
//! and rebuilt it, and every request a guest may not make is dropped and
//! counted under its own reason.

mod common;

use std::time::{Duration, Instant};

use common::packets::tcp4_super_frame;
use common::{connect, drops, frame, start, two_vnics, wait_for, wait_ready, TempDir, MAC0, MAC1};
use snapnet::control::Daemon;
use snapnet::vnic::DropReason;
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

/// Sends `f` with `hdr` from `a` and returns the header and bytes `b`
/// received, or `None` when nothing came within a second.
fn cross(
    a: &mut Frontend,
    b: &mut Frontend,
    f: &[u8],
    hdr: &VirtioNetHdr,
) -> Option<(VirtioNetHdr, Vec<u8>)> {
    assert_eq!(a.send(0, &[f], hdr), 1);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut got = None;
    while got.is_none() && Instant::now() < deadline {
        b.recv(0, |h, p| got = Some((*h, p.to_vec())));
        std::thread::sleep(Duration::from_micros(200));
    }
    got
}

/// Sends `f` with `hdr` from vnic0 and waits until it is counted as dropped
/// for `reason`; asserts that nothing reached vnic1.
fn refused(
    d: &Daemon,
    a: &mut Frontend,
    b: &mut Frontend,
    f: &[u8],
    hdr: &VirtioNetHdr,
    reason: DropReason,
) {
    let before = drops(d, "vnic0", reason);
    assert_eq!(a.send(0, &[f], hdr), 1);
    assert!(
        wait_for(Duration::from_secs(5), || drops(d, "vnic0", reason)
            > before),
        "not counted as {}",
        reason.as_str()
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        b.recv(0, |_, _| {}),
        0,
        "{} reached the peer",
        reason.as_str()
    );
}

#[test]
fn offload_metadata_reaches_another_guest_only_as_snapnet_checked_it() {
    let dir = TempDir::new("offload");
    let daemon = start(&two_vnics(&dir, 1, ""));
    let fc = FrontendConfig::default();
    let mut a = connect(&dir.path("vnic0.sock"), &fc);
    let mut b = connect(&dir.path("vnic1.sock"), &fc);
    wait_ready(&daemon);

    // A sender's DATA_VALID would make the receiver's Linux skip checking.
    let plain = frame(MAC1, MAC0, 100, 1);
    let valid = VirtioNetHdr {
        flags: VirtioNetHdr::F_DATA_VALID,
        ..Default::default()
    };
    let (h, p) = cross(&mut a, &mut b, &plain, &valid).expect("plain frame crosses");
    assert_eq!(p, plain);
    assert_eq!((h.flags, h.gso_type, h.hdr_len), (0, 0, 0));

    // A good super-frame crosses with the real header length and without
    // the receiver-only flag.
    let tso = tcp4_super_frame(MAC1, MAC0, 3000);
    let good = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM | VirtioNetHdr::F_DATA_VALID,
        gso_type: VirtioNetHdr::GSO_TCPV4,
        hdr_len: 14,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let (h, p) = cross(&mut a, &mut b, &tso, &good).expect("super-frame crosses");
    assert_eq!(p, tso);
    assert_eq!(
        (
            h.flags,
            h.gso_type,
            h.hdr_len,
            h.gso_size,
            h.csum_start,
            h.csum_offset
        ),
        (
            VirtioNetHdr::F_NEEDS_CSUM,
            VirtioNetHdr::GSO_TCPV4,
            54,
            1448,
            34,
            16
        )
    );

    let d = &daemon;
    let tiny = VirtioNetHdr {
        gso_size: 1,
        ..good
    };
    refused(d, &mut a, &mut b, &tso, &tiny, DropReason::GsoSizeTooSmall);
    let ufo = VirtioNetHdr {
        gso_type: VirtioNetHdr::GSO_UDP,
        ..good
    };
    refused(d, &mut a, &mut b, &tso, &ufo, DropReason::BadGso);
    let v6 = VirtioNetHdr {
        gso_type: VirtioNetHdr::GSO_TCPV6,
        ..good
    };
    refused(d, &mut a, &mut b, &tso, &v6, DropReason::BadGsoHeaders);
    let not_ip = frame(MAC1, MAC0, 3000, 2);
    refused(d, &mut a, &mut b, &not_ip, &good, DropReason::BadGsoHeaders);
    let outside = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        csum_start: 90,
        csum_offset: 16,
        ..Default::default()
    };
    refused(
        d,
        &mut a,
        &mut b,
        &plain,
        &outside,
        DropReason::BadCsumOffsets,
    );
    let long = VirtioNetHdr {
        hdr_len: 101,
        ..Default::default()
    };
    refused(d, &mut a, &mut b, &plain, &long, DropReason::BadHdrLen);

    // Nothing wedged: the guest's traffic goes on.
    assert!(cross(&mut a, &mut b, &plain, &VirtioNetHdr::default()).is_some());
    daemon.stop();
}

#[test]
fn a_guest_without_checksum_offload_cannot_ask_for_it() {
    let dir = TempDir::new("offload-nocsum");
    let daemon = start(&two_vnics(&dir, 1, ""));
    let no_offloads = FrontendConfig {
        offloads: false,
        ..FrontendConfig::default()
    };
    let mut a = connect(&dir.path("vnic0.sock"), &no_offloads);
    let mut b = connect(&dir.path("vnic1.sock"), &FrontendConfig::default());
    wait_ready(&daemon);
    let plain = frame(MAC1, MAC0, 100, 1);
    let partial = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    refused(
        &daemon,
        &mut a,
        &mut b,
        &plain,
        &partial,
        DropReason::CsumNotNegotiated,
    );
    let tso = tcp4_super_frame(MAC1, MAC0, 3000);
    let gso = VirtioNetHdr {
        gso_type: VirtioNetHdr::GSO_TCPV4,
        gso_size: 1448,
        ..partial
    };
    refused(
        &daemon,
        &mut a,
        &mut b,
        &tso,
        &gso,
        DropReason::CsumNotNegotiated,
    );
    daemon.stop();
}
