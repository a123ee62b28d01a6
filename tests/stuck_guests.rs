//! Tenant isolation of the frame pool: guests that never post RX buffers
//! (one with one queue pair, one with sixteen), flooded by two other vNICs,
//! can neither starve the shared pool nor slow a third pair of vNICs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use snapnet::control::daemon::LINK_CAPACITY;
use snapnet::control::{Config, Daemon};
use snapnet::vnic::DropReason;
use snapnet_frontend::{FrontendConfig, VirtioNetHdr};

const STEADY0: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
const STEADY1: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const FLOOD0: [u8; 6] = [2, 0, 0, 0, 0, 0x20];
const FLOOD1: [u8; 6] = [2, 0, 0, 0, 0, 0x21];
const STUCK1: [u8; 6] = [2, 0, 0, 0, 0, 0x30];
const STUCK16: [u8; 6] = [2, 0, 0, 0, 0, 0x31];

fn mac(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

fn config(dir: &TempDir) -> Config {
    let vnic = |name: &str, m: [u8; 6], qps: u16| {
        format!(
            r#"{{ "name": "{name}", "mac": "{}", "queue_pairs": {qps} }}"#,
            mac(m)
        )
    };
    let text = format!(
        r#"{{
        "runtime_dir": "{}",
        "vnics": [ {}, {}, {}, {}, {}, {} ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display(),
        vnic("steady0", STEADY0, 1),
        vnic("steady1", STEADY1, 1),
        vnic("flood0", FLOOD0, 1),
        vnic("flood1", FLOOD1, 1),
        vnic("stuck1", STUCK1, 1),
        vnic("stuck16", STUCK16, 16),
    );
    Config::from_json(&text).unwrap()
}

/// A UDP/IPv4 frame whose source port picks one of the receiver's queues.
fn udp(dst: [u8; 6], src: [u8; 6], sport: u16) -> Vec<u8> {
    let mut f = frame(dst, src, 100, u32::from(sport));
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14..34].copy_from_slice(&[
        0x45, 0, 0, 86, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&[0x13, 0x88]);
    f[38..40].copy_from_slice(&66u16.to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    f
}

/// Frames a stuck vNIC holds now: what the switch gave it, less what it
/// dropped (it delivers none).
fn held(daemon: &Daemon, name: &str) -> u64 {
    let r = daemon.report();
    let v = r.iter().find(|v| v.name == name).unwrap();
    let dropped: u64 = v.queues.iter().map(|q| q.total_drops()).sum();
    v.port.tx_packets.saturating_sub(dropped)
}

fn no_rx_buffers(daemon: &Daemon, name: &str) -> u64 {
    let r = daemon.report();
    let v = r.iter().find(|v| v.name == name).unwrap();
    v.queues
        .iter()
        .map(|q| q.dropped(DropReason::NoRxBuffers))
        .sum()
}

#[test]
fn guests_without_rx_buffers_neither_starve_the_pool_nor_slow_others() {
    let dir = TempDir::new("stuck");
    let daemon = start(&config(&dir));
    let fcfg = FrontendConfig::default();
    let sock = |n: &str| dir.path(&format!("{n}.sock"));
    let mut steady0 = connect(&sock("steady0"), &fcfg);
    let mut steady1 = connect(&sock("steady1"), &fcfg);
    let mut floods = [
        connect(&sock("flood0"), &fcfg),
        connect(&sock("flood1"), &fcfg),
    ];
    // Drivers that never post an RX buffer: every RX descriptor is kept
    // back for raw use, and none is ever used.
    let no_rx = |qps: u16| FrontendConfig {
        queue_pairs: qps,
        raw_reserve: fcfg.queue_size,
        ..fcfg.clone()
    };
    let _stuck1 = connect(&sock("stuck1"), &no_rx(1));
    let _stuck16 = connect(&sock("stuck16"), &no_rx(16));
    wait_ready(&daemon);

    // Many flows, so the sixteen-queue guest's every queue fills.
    let flood: Vec<Vec<Vec<u8>>> = [FLOOD0, FLOOD1]
        .iter()
        .map(|&src| {
            (0..256u16)
                .map(|i| udp(if i % 4 == 0 { STUCK1 } else { STUCK16 }, src, 1000 + i))
                .collect()
        })
        .collect();
    let steady: Vec<Vec<u8>> = (0..40_000)
        .map(|s| frame(STEADY1, STEADY0, 64, s))
        .collect();
    let hdr = VirtioNetHdr::default();
    let (mut sent, mut got) = (0, Vec::with_capacity(steady.len()));
    let mut most_held = [0u64; 2];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 0usize;
    while got.len() < steady.len() && Instant::now() < deadline {
        round += 1;
        for (f, frames) in floods.iter_mut().zip(&flood) {
            let at = (round * 32) % frames.len();
            let batch: Vec<&[u8]> = frames[at..(at + 32).min(frames.len())]
                .iter()
                .map(Vec::as_slice)
                .collect();
            f.send(0, &batch, &hdr);
            f.recv(0, |_, _| {});
        }
        if sent < steady.len() {
            let batch: Vec<&[u8]> = steady[sent..].iter().take(32).map(Vec::as_slice).collect();
            sent += steady0.send(0, &batch, &hdr);
        }
        steady1.recv(0, |_, p| got.push(p.to_vec()));
        if round % 64 == 0 {
            for (m, name) in most_held.iter_mut().zip(["stuck1", "stuck16"]) {
                *m = (*m).max(held(&daemon, name));
            }
        }
    }
    assert_eq!(
        got.len(),
        steady.len(),
        "the steady pair lost or was stalled"
    );
    assert!(
        got == steady,
        "the steady pair's frames arrived out of order or changed"
    );

    // Nobody saw the pool run dry: no TX batch waited for frames, and the
    // switch never lacked one for a copy.
    for v in daemon.report() {
        for (i, q) in v.queues.iter().enumerate() {
            assert_eq!(
                q.backpressure, 0,
                "{}/q{i} waited for frames: {q:?}",
                v.name
            );
            assert_eq!(q.dropped(DropReason::PoolEmpty), 0, "{}/q{i}", v.name);
        }
        assert_eq!(
            v.port.dropped(snapnet::switch::PortDrop::PoolEmpty),
            0,
            "{}",
            v.name
        );
        if v.name.starts_with("steady") {
            assert_eq!(
                v.queues[0].total_drops(),
                0,
                "{}: {:?}",
                v.name,
                v.queues[0]
            );
            assert_eq!(v.port.drops.iter().sum::<u64>(), 0, "{}", v.name);
        }
    }
    // The stuck guests held no more than their links' quota, their frames
    // were dropped as no_rx_buffers, and once the flood stops they hold none.
    for (name, qps, most) in [("stuck1", 1, most_held[0]), ("stuck16", 16, most_held[1])] {
        assert!(
            most <= qps * LINK_CAPACITY as u64,
            "{name} held {most} frames"
        );
        assert!(no_rx_buffers(&daemon, name) > 0, "{name}: nothing dropped");
    }
    let busy_queues = daemon
        .report()
        .iter()
        .find(|v| v.name == "stuck16")
        .unwrap()
        .queues
        .iter()
        .filter(|q| q.dropped(DropReason::NoRxBuffers) > 0)
        .count();
    assert!(
        busy_queues >= 8,
        "the flood reached {busy_queues} of 16 queues"
    );
    for name in ["stuck1", "stuck16"] {
        assert!(
            wait_for(Duration::from_secs(5), || held(&daemon, name) == 0),
            "{name} still holds {} frames",
            held(&daemon, name)
        );
    }
    daemon.stop();
}
