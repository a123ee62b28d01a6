//! A frontend that sets its rings up wrong (sizes that are not powers of two,
//! ring addresses outside its memory, rings on top of each other, no memory
//! table at all, indices past the queue count, garbage bytes) is refused or
//! served without effect; the daemon keeps serving every other vNIC and
//! serves the next connection on the same socket.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use snapnet_frontend::FrontendConfig;
use vhost::vhost_user::{Frontend as VuFrontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

const VERSION_1: u64 = 1 << 32;
const PROTOCOL_FEATURES: u64 = 1 << 30;

fn memfd(size: usize) -> (std::fs::File, *mut u8) {
    let file = memfd::MemfdOptions::new()
        .close_on_exec(false)
        .create("hostile")
        .unwrap()
        .into_file();
    file.set_len(size as u64).unwrap();
    // SAFETY: mapping the whole memfd we just sized, shared, checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    (file, p.cast())
}

/// Connects and does whatever `abuse` does; the connection is then dropped.
fn hostile(path: &std::path::Path, abuse: impl FnOnce(&mut VuFrontend, u64, &std::fs::File)) {
    let mut vu = VuFrontend::connect(path, 2).unwrap();
    let features = vu.get_features().unwrap();
    vu.set_owner().unwrap();
    if features & PROTOCOL_FEATURES != 0 {
        let pf = vu.get_protocol_features().unwrap();
        vu.set_protocol_features(pf & VhostUserProtocolFeatures::MQ)
            .unwrap();
    }
    let (file, base) = memfd(1 << 20);
    abuse(&mut vu, base as u64, &file);
    let _ = features & VERSION_1;
    // SAFETY: unmapping what memfd() mapped.
    unsafe { libc::munmap(base.cast(), 1 << 20) };
}

fn set_mem(vu: &mut VuFrontend, base: u64, file: &std::fs::File) {
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: base,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    let _ = vu.set_mem_table(&[region]);
}

fn ring(
    vu: &mut VuFrontend,
    index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
) -> (EventFd, EventFd) {
    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(0).unwrap();
    let _ = vu.set_vring_num(index, size);
    let _ = vu.set_vring_base(index, 0);
    let cfg = VringConfigData {
        queue_max_size: 1024,
        queue_size: size,
        flags: 0,
        desc_table_addr: desc,
        used_ring_addr: used,
        avail_ring_addr: avail,
        log_addr: None,
    };
    let _ = vu.set_vring_addr(index, &cfg);
    let _ = vu.set_vring_kick(index, &kick);
    let _ = vu.set_vring_call(index, &call);
    let _ = vu.set_vring_enable(index, true);
    let _ = kick.write(1);
    (kick, call)
}

#[test]
fn broken_ring_setups_harm_nobody() {
    let dir = TempDir::new("hostile");
    let cfg = two_vnics(&dir, 1, "");
    let daemon = start(&cfg);
    let fcfg = FrontendConfig::default();
    let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
    let sock0 = dir.path("vnic0.sock");
    let features = VERSION_1 | PROTOCOL_FEATURES;
    // Rings outside memory.
    hostile(&sock0, |vu, base, file| {
        let _ = vu.set_features(features);
        set_mem(vu, base, file);
        let _kept = ring(
            vu,
            1,
            256,
            base + (64 << 20),
            base + (65 << 20),
            base + (66 << 20),
        );
        std::thread::sleep(Duration::from_millis(100));
    });
    // A size that is not a power of two, rings overlapping each other.
    hostile(&sock0, |vu, base, file| {
        let _ = vu.set_features(features);
        set_mem(vu, base, file);
        let _kept = ring(vu, 1, 256, base, base, base);
        // The "guest" then scribbles over its rings while they run.
        // SAFETY: base maps 1 MiB of our own memfd; the first 64 KiB hold the rings.
        unsafe { std::ptr::write_bytes((base as *mut u8).add(2), 0xab, 60_000) };
        // Let the engine meet the scribbled ring, then ask for a bad size.
        std::thread::sleep(Duration::from_millis(200));
        let _ = vu.set_vring_num(1, 100);
        std::thread::sleep(Duration::from_millis(100));
    });
    // A queue size that is not a power of two.
    hostile(&sock0, |vu, base, file| {
        let _ = vu.set_features(features);
        set_mem(vu, base, file);
        let _kept = ring(vu, 0, 3, base + 8, base + 8, base + 8);
        std::thread::sleep(Duration::from_millis(50));
    });
    // Kicks and rings without any memory table; a ring index past the queues.
    hostile(&sock0, |vu, base, _| {
        let _ = vu.set_features(features);
        let _kept = ring(vu, 1, 256, base, base + 4096, base + 8192);
        let _kept9 = ring(vu, 9, 256, base, base + 4096, base + 8192);
        std::thread::sleep(Duration::from_millis(100));
    });
    // Nothing but garbage bytes.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(&sock0).unwrap();
        let _ = s.write_all(&[0xffu8; 4096]);
    }
    std::thread::sleep(Duration::from_millis(200));
    // The daemon still serves vnic1, and vnic0 serves a proper frontend next.
    let mut a = connect(&sock0, &fcfg);
    wait_ready(&daemon);
    assert_crosses(&mut a, &mut b, 30, 200, "after hostile frontends");
    let r = daemon.report();
    assert_eq!(
        r[0].queues[0].tx_packets, 30,
        "only the proper frontend's frames went through"
    );
    assert_eq!(r[1].queues[0].rx_packets, 30);
    let bad = r[0].queues[0].dropped(snapnet::vnic::DropReason::BadAvailIndex);
    assert_eq!(
        bad, 1,
        "the scribbled ring is counted as corrupt once, then left alone: {:?}",
        r[0].queues[0]
    );
    drop(a);
    drop(b);
    daemon.stop();
}

#[test]
fn a_memory_region_larger_than_its_file_is_refused() {
    let dir = TempDir::new("hostile-region");
    let cfg = two_vnics(&dir, 1, "");
    let daemon = start(&cfg);
    let fcfg = FrontendConfig::default();
    let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
    let sock0 = dir.path("vnic0.sock");
    hostile(&sock0, |vu, _, _| {
        let _ = vu.set_features(VERSION_1 | PROTOCOL_FEATURES);
        // A 64 KiB file declared as 1 MiB of guest memory, with the rings in
        // the part the file does not have: mapped, the engine's first look
        // at them would be a SIGBUS that kills the daemon.
        let small = 64 << 10;
        let (file, base) = memfd(small);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: 1 << 20,
            userspace_addr: base as u64,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        };
        let _ = vu.set_mem_table(&[region]);
        let _kept = ring(vu, 1, 256, 512 << 10, 600 << 10, 700 << 10);
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: unmapping what memfd() mapped.
        unsafe { libc::munmap(base.cast(), small) };
    });
    let mut a = connect(&sock0, &fcfg);
    wait_ready(&daemon);
    assert_crosses(&mut a, &mut b, 30, 200, "after a region past its file");
    drop(a);
    drop(b);
    daemon.stop();
}
