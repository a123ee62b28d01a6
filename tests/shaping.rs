//! Rate limits through the real daemon: guest egress waits (backpressure,
//! no drops) and never exceeds its limit, counted in wire frames however a
//! guest packs them into super-frames; guest ingress drops and counts what
//! is over; limits change at runtime without disturbing the guests.
//! Bounds only (a limit is a ceiling); achieved rates are measured by
//! scripts/bench-shaping.sh.

mod common;

use std::time::{Duration, Instant};

use common::packets::tcp4_super_frame;
use common::{connect, drops, frame, start, wait_ready, TempDir, MAC0, MAC1};
use snapnet::control::config::RateLimit;
use snapnet::control::Config;
use snapnet::vnic::DropReason;
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

fn config(dir: &TempDir) -> Config {
    Config::from_json(&format!(
        r#"{{
        "runtime_dir": "{}",
        "vnics": [
            {{ "name": "vnic0", "mac": "52:54:00:5a:00:01",
               "tx_limit": {{ "bytes_per_sec": 1000000 }} }},
            {{ "name": "vnic1", "mac": "52:54:00:5a:00:02",
               "rx_limit": {{ "packets_per_sec": 2000, "burst_packets": 100 }} }}
        ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display()
    ))
    .unwrap()
}

/// Keeps `tx`'s ring full of 1000-byte frames for `secs`; returns the bytes
/// `rx` received and the time taken.
fn blast(tx: &mut Frontend, rx: &mut Frontend, secs: f64) -> (u64, f64) {
    let f = frame(MAC1, MAC0, 1000, 0);
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        tx.send(0, &[&f, &f, &f, &f], &VirtioNetHdr::default());
        rx.recv(0, |_, p| bytes += p.len() as u64);
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(50));
    rx.recv(0, |_, p| bytes += p.len() as u64);
    (bytes, start.elapsed().as_secs_f64())
}

#[test]
fn egress_waits_ingress_drops_and_limits_change_live() {
    let dir = TempDir::new("shaping");
    let mut daemon = start(&config(&dir));
    let fc = FrontendConfig::default();
    let mut a = connect(&dir.path("vnic0.sock"), &fc);
    let mut b = connect(&dir.path("vnic1.sock"), &fc);
    wait_ready(&daemon);
    // Lift vnic1's ingress limit for the egress part.
    daemon
        .set_vnic_shaping("vnic1", None, Some(None), None)
        .unwrap();

    // Egress: 1 MB/s plus the 64 KiB burst is a ceiling, and the guest
    // loses nothing (its frames wait in its ring).
    let (bytes, secs) = blast(&mut a, &mut b, 1.0);
    let ceiling = 1_000_000.0 * secs + 65_792.0 + 1000.0;
    assert!(
        (bytes as f64) <= ceiling,
        "{bytes} B in {secs:.2} s over the limit"
    );
    assert!(
        bytes > 300_000,
        "egress limit lets traffic through: {bytes} B"
    );
    let total_drops: u64 = DropReason::ALL
        .iter()
        .map(|r| drops(&daemon, "vnic0", *r))
        .sum();
    assert_eq!(total_drops, 0, "egress shaping must not drop");

    // Removed at runtime: the same guest, the same connection, much faster.
    daemon
        .set_vnic_shaping("vnic0", Some(None), None, None)
        .unwrap();
    let (fast, fast_secs) = blast(&mut a, &mut b, 0.5);
    assert!(
        fast as f64 / fast_secs > 3.0 * bytes as f64 / secs,
        "unlimited {fast} B in {fast_secs:.2} s vs limited {bytes} B in {secs:.2} s"
    );

    // Ingress: 2000 packets/s with a 100-packet burst on vnic1; what is over
    // is dropped and counted.
    daemon
        .set_vnic_shaping(
            "vnic1",
            None,
            Some(Some(RateLimit {
                packets_per_sec: Some(2000),
                burst_packets: Some(100),
                ..Default::default()
            })),
            None,
        )
        .unwrap();
    let (bytes, secs) = blast(&mut a, &mut b, 0.5);
    let delivered = bytes / 1000;
    assert!(
        delivered as f64 <= 2000.0 * secs + 100.0 + 10.0,
        "{delivered} frames in {secs:.2} s over 2000/s"
    );
    assert!(drops(&daemon, "vnic1", DropReason::RateLimited) > 0);
    daemon.stop();
}

#[test]
fn small_gso_sizes_cannot_carry_a_guest_past_its_egress_limit() {
    let dir = TempDir::new("shaping-gso");
    let cfg = Config::from_json(&format!(
        r#"{{
        "runtime_dir": "{}",
        "vnics": [
            {{ "name": "vnic0", "mac": "52:54:00:5a:00:01",
               "tx_limit": {{ "packets_per_sec": 2000, "burst_packets": 100,
                              "bytes_per_sec": 2000000 }} }},
            {{ "name": "vnic1", "mac": "52:54:00:5a:00:02" }}
        ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display()
    ))
    .unwrap();
    let mut daemon = start(&cfg);
    let fc = FrontendConfig::default();
    let mut a = connect(&dir.path("vnic0.sock"), &fc);
    let mut b = connect(&dir.path("vnic1.sock"), &fc);
    wait_ready(&daemon);

    // 8000 payload bytes cut at the 48-byte floor: 167 wire frames of 102
    // bytes, 17 018 bytes in all, for one 8054-byte super-frame.
    const SEGMENTS: u64 = 167;
    const WIRE_BYTES: u64 = 8054 + 166 * 54;
    let tso = tcp4_super_frame(MAC1, MAC0, 8000);
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 48,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        a.send(0, &[&tso, &tso], &hdr);
        b.recv(0, |_, p| {
            assert_eq!(p.len(), tso.len());
            frames += 1;
        });
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(50));
    b.recv(0, |_, _| frames += 1);
    let secs = start.elapsed().as_secs_f64();
    // A ceiling in wire frames and wire bytes: the rate, the bucket, and one
    // super-frame let through into debt.
    let packets = frames * SEGMENTS;
    assert!(
        packets as f64 <= 2000.0 * secs + 100.0 + SEGMENTS as f64,
        "{frames} super-frames = {packets} wire frames in {secs:.2} s over 2000/s"
    );
    let bytes = frames * WIRE_BYTES;
    assert!(
        bytes as f64 <= 2_000_000.0 * secs + 65_792.0 + WIRE_BYTES as f64,
        "{bytes} wire bytes in {secs:.2} s over 2 MB/s"
    );
    assert!(frames >= 5, "the limit lets traffic through: {frames}");
    let dropped: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), drops(&daemon, "vnic0", *r)))
        .filter(|(_, n)| *n > 0)
        .collect();
    assert!(
        dropped.is_empty(),
        "egress shaping must not drop: {dropped:?}"
    );

    // Below the floor the frames are refused and counted, not sent.
    let tiny = VirtioNetHdr { gso_size: 1, ..hdr };
    daemon
        .set_vnic_shaping("vnic0", Some(None), None, None)
        .unwrap();
    // What waited in the ring goes now; let it arrive first.
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(200) {
        if b.recv(0, |_, _| {}) > 0 {
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    a.send(0, &[&tso, &tso, &tso], &tiny);
    assert!(common::wait_for(Duration::from_secs(5), || {
        drops(&daemon, "vnic0", DropReason::GsoSizeTooSmall) == 3
    }));
    assert_eq!(b.recv(0, |_, _| {}), 0);
    daemon.stop();
}

#[test]
fn a_frame_larger_than_the_bucket_goes_by_debt_and_the_queue_does_not_wedge() {
    // 100 packets of burst; super-frames of 417 wire frames each. Without
    // debt none could ever go, and every frame behind them would wait.
    let dir = TempDir::new("shaping-debt");
    let cfg = Config::from_json(&format!(
        r#"{{
        "runtime_dir": "{}",
        "vnics": [
            {{ "name": "vnic0", "mac": "52:54:00:5a:00:01",
               "tx_limit": {{ "packets_per_sec": 5000, "burst_packets": 100 }} }},
            {{ "name": "vnic1", "mac": "52:54:00:5a:00:02" }}
        ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display()
    ))
    .unwrap();
    let daemon = start(&cfg);
    let fc = FrontendConfig::default();
    let mut a = connect(&dir.path("vnic0.sock"), &fc);
    let mut b = connect(&dir.path("vnic1.sock"), &fc);
    wait_ready(&daemon);
    let tso = tcp4_super_frame(MAC1, MAC0, 20_000);
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 48,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let plain = frame(MAC1, MAC0, 60, 7);
    assert_eq!(a.send(0, &[&tso, &tso, &tso], &hdr), 3);
    assert_eq!(a.send(0, &[&plain], &VirtioNetHdr::default()), 1);
    // 3 x 417 wire frames at 5000/s: about 170 ms after the first.
    let mut got = Vec::new();
    let ok = common::wait_for(Duration::from_secs(5), || {
        b.recv(0, |_, p| got.push(p.len()));
        got.len() == 4
    });
    assert!(ok, "only {} of 4 frames arrived", got.len());
    assert_eq!(got, vec![tso.len(), tso.len(), tso.len(), plain.len()]);
    daemon.stop();
}
