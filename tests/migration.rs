//! Live migration, driven as QEMU drives it from the Rust frontend: every
//! page of guest memory snapnet writes while a log is shared and
//! VHOST_F_LOG_ALL acked is marked in it (split rings with and without
//! MRG_RXBUF, packed rings), nothing after logging ends; SEND_RARP
//! announces the vNIC's own MAC only; and a vNIC that is a migration's
//! destination (`incoming_for`) takes its source's MAC once its guest's
//! rings start; after GET_VRING_BASE nothing more is written. The VM tier (`vm-tests/migration.sh`) migrates real QEMU
//! guests.

mod common;

use std::time::Duration;

use common::rpc::*;
use common::*;
use serde_json::json;
use snapnet::control::Config;
use snapnet_frontend::migration::LOG_PAGE;
use snapnet_frontend::{Frontend, FrontendConfig, RingInfo, VirtioNetHdr};

/// Guest pages holding the parts of a ring the driver writes (descriptor
/// table and avail ring; packed: the descriptor ring, written by both, and
/// the driver's event area).
fn driver_pages(r: &RingInfo, packed: bool) -> Vec<u64> {
    let size = u64::from(r.size);
    let mut areas = vec![(r.desc, 16 * size), (r.avail, 6 + 2 * size)];
    if packed {
        areas.truncate(1);
        areas.push((r.avail, 4));
    }
    areas
        .into_iter()
        .flat_map(|(gpa, len)| gpa / LOG_PAGE..=(gpa + len - 1) / LOG_PAGE)
        .collect()
}

/// The page where the device writes its part of the ring: the used ring,
/// or (packed) the descriptor ring.
fn device_page(r: &RingInfo, packed: bool) -> u64 {
    if packed {
        r.desc / LOG_PAGE
    } else {
        r.used / LOG_PAGE
    }
}

fn memory(f: &Frontend) -> Vec<u8> {
    let mut m = vec![0u8; f.mem_size()];
    f.read_guest(0, &mut m);
    m
}

/// The guest pages whose bytes differ between two copies of its memory.
fn changed_pages(before: &[u8], after: &[u8]) -> Vec<u64> {
    let page = LOG_PAGE as usize;
    before
        .chunks(page)
        .zip(after.chunks(page))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(p, _)| p as u64)
        .collect()
}

fn logs_every_page_it_writes(name: &str, fcfg: FrontendConfig) {
    let dir = TempDir::new(name);
    let cfg = two_vnics(&dir, 1, "");
    let daemon = start(&cfg);
    let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
    let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
    wait_ready(&daemon);
    assert_crosses(&mut a, &mut b, 20, 200, "before the migration");

    let log = b.start_dirty_log().expect("logging starts");
    let before = memory(&b);
    // Frames of every size up to the MTU, more than the RX ring holds.
    let frames: Vec<Vec<u8>> = (0..600u32)
        .map(|s| frame(MAC1, MAC0, 60 + (s as usize * 97) % 1455, s))
        .collect();
    let got = exchange(
        &mut a,
        0,
        &mut b,
        &frames,
        frames.len(),
        Duration::from_secs(10),
    );
    assert!(
        got == frames,
        "{name}: {} of {} frames",
        got.len(),
        frames.len()
    );
    let after = memory(&b);

    let packed = fcfg.packed;
    let (rx, tx) = (b.ring_info(0, true), b.ring_info(0, false));
    let driver: Vec<u64> = [&rx, &tx]
        .iter()
        .flat_map(|r| driver_pages(r, packed))
        .collect();
    let changed = changed_pages(&before, &after);
    let written: Vec<u64> = changed
        .iter()
        .copied()
        .filter(|p| !driver.contains(p))
        .collect();
    // 600 frames of 60..1514 bytes: well over 100 pages of buffers.
    assert!(
        written.len() > 100,
        "{name}: only {} pages written",
        written.len()
    );
    let unmarked: Vec<u64> = written
        .iter()
        .copied()
        .filter(|&p| !log.is_dirty(p * LOG_PAGE))
        .collect();
    assert!(
        unmarked.is_empty(),
        "{name}: {} of {} pages snapnet wrote are not in the log, first {:#x}",
        unmarked.len(),
        written.len(),
        unmarked[0] * LOG_PAGE
    );
    assert!(
        log.is_dirty(device_page(&rx, packed) * LOG_PAGE),
        "{name}: RX ring"
    );

    // What the guest sends: the TX ring's device part is marked too.
    log.clear();
    let back: Vec<Vec<u8>> = (0..50).map(|s| frame(MAC0, MAC1, 300, s)).collect();
    let got = exchange(&mut b, 0, &mut a, &back, back.len(), Duration::from_secs(5));
    assert_eq!(got.len(), back.len(), "{name}: guest to peer");
    assert!(
        log.is_dirty(device_page(&tx, packed) * LOG_PAGE),
        "{name}: TX ring"
    );

    // Logging ends: the reply means no engine marks the log any more.
    b.stop_dirty_log().expect("logging stops");
    log.clear();
    assert_crosses(&mut a, &mut b, 300, 1000, "after the migration's log");
    let late = log.dirty_pages();
    assert!(
        late.is_empty(),
        "{name}: {} pages marked after logging ended",
        late.len()
    );

    // The end of a migration: the rings stop (GET_VRING_BASE) while frames
    // for the guest are on their way; afterwards snapnet writes nothing.
    let _log = b.start_dirty_log().expect("logging starts again");
    let burst = frame(MAC1, MAC0, 800, 0);
    a.prepare_blast(0, &burst);
    a.blast(0, 64);
    let bases = b.stop_rings().expect("GET_VRING_BASE");
    assert_eq!(bases.len(), 2, "{name}");
    if !packed {
        // Every descriptor consumed was given back: the destination
        // starts where the used rings end, and no buffer is used twice.
        for (r, base) in [&rx, &tx].iter().zip(&bases) {
            let mut idx = [0u8; 2];
            b.read_guest(r.used + 2, &mut idx);
            assert_eq!(
                *base,
                u32::from(u16::from_le_bytes(idx)),
                "{name}: base vs used idx"
            );
        }
    }
    let stopped = memory(&b);
    for _ in 0..20 {
        a.blast(0, 32);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let late = changed_pages(&stopped, &memory(&b));
    assert!(
        late.is_empty(),
        "{name}: {} pages written after GET_VRING_BASE, first {:#x}",
        late.len(),
        late[0] * LOG_PAGE
    );
}

#[test]
fn every_page_snapnet_writes_is_logged_split_mrg() {
    logs_every_page_it_writes("log-mrg", FrontendConfig::default());
}

#[test]
fn every_page_snapnet_writes_is_logged_split_without_mrg() {
    logs_every_page_it_writes(
        "log-nomrg",
        FrontendConfig {
            mrg_rxbuf: false,
            ..Default::default()
        },
    );
}

#[test]
fn every_page_snapnet_writes_is_logged_packed() {
    logs_every_page_it_writes(
        "log-packed",
        FrontendConfig {
            packed: true,
            ..Default::default()
        },
    );
}

/// The next frame `f` receives within a second, if any.
fn next_frame(f: &mut Frontend) -> Option<Vec<u8>> {
    let mut got = None;
    wait_for(Duration::from_secs(1), || {
        f.recv(0, |_, p| got = got.take().or_else(|| Some(p.to_vec())));
        got.is_some()
    });
    got
}

#[test]
fn send_rarp_announces_the_vnics_own_mac_and_no_other() {
    let dir = TempDir::new("rarp");
    let cfg = two_vnics(&dir, 1, "");
    let daemon = start(&cfg);
    let fcfg = FrontendConfig::default();
    let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
    let b = connect(&dir.path("vnic1.sock"), &fcfg);
    wait_ready(&daemon);
    for asked in [MAC1, [0x52, 0x54, 0x00, 0x5a, 0x00, 0x77]] {
        b.send_rarp(asked).unwrap();
        let f = next_frame(&mut a).expect("an announcement");
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &MAC1, "from the vNIC's own MAC");
        assert_eq!(&f[12..14], &[0x80, 0x35], "RARP");
        // RARP request, "reverse request", sender and target: the vNIC's MAC.
        assert_eq!(&f[20..22], &[0, 3]);
        assert_eq!(&f[22..28], &MAC1);
        assert_eq!(&f[32..38], &MAC1);
        // One per 100 ms at most.
        b.send_rarp(MAC1).unwrap();
        assert!(
            next_frame(&mut a).is_none(),
            "a second announcement at once"
        );
    }
    drop(b);
}

#[test]
fn the_mac_moves_to_the_incoming_vnic_when_its_guests_rings_start() {
    let dir = TempDir::new("incoming");
    let cfg = Config::from_json(&format!(
        r#"{{ "runtime_dir": "{}", "vnics": [
            {{ "name": "vnic0", "mac": "52:54:00:5a:00:01" }},
            {{ "name": "vnic1", "mac": "52:54:00:5a:00:02" }} ] }}"#,
        dir.0.display()
    ))
    .unwrap();
    let ctl = Control::start(&cfg);
    let mut c = ctl.client();
    let fcfg = FrontendConfig {
        mem_size: 16 << 20,
        ..Default::default()
    };
    let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
    let mut src = connect(&dir.path("vnic1.sock"), &fcfg);
    let mac1 = "52:54:00:5a:00:02";
    // Refused: an unknown source, a MAC other than the source's.
    c.err(
        "vnic.add",
        json!({"name": "in", "mac": mac1, "incoming_for": "nope"}),
        1001,
    );
    let e = c.err(
        "vnic.add",
        json!({"name": "in", "mac": "52:54:00:5a:00:09", "incoming_for": "vnic1"}),
        1004,
    );
    assert!(e.message.contains("incoming_for"), "{}", e.message);
    c.ok(
        "vnic.add",
        json!({"name": "vnic1-in", "mac": mac1, "incoming_for": "vnic1"}),
    );
    // Until the destination's rings start, the source keeps the MAC.
    let hdr = VirtioNetHdr::default();
    let mut seq = 0;
    let mut arrives_at = |a: &mut Frontend, to: &mut Frontend, other: Option<&mut Frontend>| {
        seq += 1;
        let f = frame(MAC1, MAC0, 200, seq);
        assert_eq!(a.send(0, &[&f], &hdr), 1);
        let got = next_frame(to);
        let stray = other.and_then(next_frame);
        got.as_deref() == Some(&f[..]) && stray.is_none()
    };
    assert!(arrives_at(&mut a, &mut src, None), "to the source before");
    let mut dst = connect(&dir.path("vnic1-in.sock"), &fcfg);
    assert!(
        wait_for(Duration::from_secs(10), || c
            .ok("vnic.get", json!({"name": "vnic1-in"}))["rings_attached"]
            == 2),
        "the destination's rings start"
    );
    assert!(
        arrives_at(&mut a, &mut dst, Some(&mut src)),
        "to the destination once its rings started"
    );
    // The control plane removes the source: the destination keeps the MAC.
    c.ok("vnic.remove", json!({"name": "vnic1"}));
    drop(src);
    assert!(
        arrives_at(&mut a, &mut dst, None),
        "after the source is gone"
    );
    drop((a, dst));
    ctl.stop();
}
