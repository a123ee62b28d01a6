//! Packed virtqueues end to end: two Rust frontends with `packed` on
//! snapnet's own vNICs (the frontend crate's loopback backend is split-only),
//! with and without MRG_RXBUF, EVENT_IDX and indirect descriptors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use snapnet::control::{Config, Daemon};
use snapnet_frontend::features::VIRTIO_F_RING_PACKED;
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Packed virtqueues end to end: two frontends with `packed` on snapnet's own vNICs (the
/// loopback above is split-only), frames both ways over several laps of a small ring.
fn packed_through_snapnet(fcfg: FrontendConfig) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "snapnet-fe-packed-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let macs = [[0x52, 0x54, 0, 0x5a, 0, 1], [0x52, 0x54, 0, 0x5a, 0, 2]];
    let cfg = Config::from_json(&format!(
        r#"{{ "runtime_dir": "{}",
            "vnics": [ {{ "name": "vnic0", "mac": "52:54:00:5a:00:01" }},
                       {{ "name": "vnic1", "mac": "52:54:00:5a:00:02" }} ],
            "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ] }}"#,
        dir.display()
    ))
    .unwrap();
    let daemon = Daemon::start(&cfg).unwrap();
    let open = |name: &str| Frontend::connect(&dir.join(name), &fcfg, Duration::from_secs(10));
    let mut fes = [open("vnic0.sock").unwrap(), open("vnic1.sock").unwrap()];
    assert_ne!(fes[0].acked_features() & VIRTIO_F_RING_PACKED, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while daemon.report().iter().any(|v| v.rings_attached < 2) {
        assert!(std::time::Instant::now() < deadline, "rings not attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    // With 512-byte MRG buffers these take 1 to 3 buffers each.
    let sizes = [60usize, 1514, 600, 64, 1400, 1000];
    let rounds = 3 * fcfg.queue_size as usize;
    // Each frame takes up to 3 buffers of the ring (16 or 32 slots).
    const IN_FLIGHT: usize = 4;
    for (from, to) in [(0, 1), (1, 0)] {
        let mut got = Vec::new();
        let mut sent = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < rounds {
            assert!(
                std::time::Instant::now() < deadline,
                "got {} of {rounds}",
                got.len()
            );
            // A few frames in flight at most: they fit the receiver's
            // posted buffers, so none waits in snapnet for this thread to
            // post more. Descheduled 100 ms on a loaded machine, it would
            // have its waiting frames dropped (engine::RX_STALL), and the
            // test stalled at "got 49 of 96" once.
            if sent < rounds && sent < got.len() + IN_FLIGHT {
                let len = sizes[sent % sizes.len()];
                let mut f = pattern(len, sent as u8);
                f[0..6].copy_from_slice(&macs[to]);
                f[6..12].copy_from_slice(&macs[from]);
                f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
                sent += fes[from].send(0, &[&f], &VirtioNetHdr::default());
            }
            fes[to].recv(0, |_, p| got.push(p.to_vec()));
        }
        for (i, g) in got.iter().enumerate() {
            let len = sizes[i % sizes.len()];
            assert_eq!(g.len(), len, "frame {i}");
            assert_eq!(&g[14..], &pattern(len, i as u8)[14..], "frame {i}");
        }
        assert_eq!(fes[to].stats(0).bad_used, 0);
    }
    let report = daemon.report();
    for v in &report {
        assert_eq!(v.queues[0].tx_packets, rounds as u64);
        assert_eq!(v.queues[0].rx_packets, rounds as u64);
        assert_eq!(v.queues[0].total_drops(), 0, "{:?}", v.queues[0]);
    }
    // GET_VRING_BASE: TX of vnic0 took `rounds` one-slot chains, so its next avail and
    // next used slot is `rounds` on, wrap counter in bit 15, avail half and used half.
    let [a, b] = fes;
    let bases = a.shutdown_with_bases().unwrap();
    let size = fcfg.queue_size as usize;
    let wrap = (rounds / size) % 2 == 0;
    let half = ((rounds % size) | usize::from(wrap) << 15) as u32;
    assert_eq!(bases[1], half | half << 16);
    b.shutdown().unwrap();
    daemon.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn packed_rings_with_mrg_rxbuf_and_event_idx() {
    packed_through_snapnet(FrontendConfig {
        packed: true,
        queue_size: 32,
        rx_buf_len: 512,
        ..Default::default()
    });
}

#[test]
fn packed_rings_without_mrg_rxbuf() {
    packed_through_snapnet(FrontendConfig {
        packed: true,
        queue_size: 32,
        mrg_rxbuf: false,
        ..Default::default()
    });
}

#[test]
fn packed_rings_with_indirect_and_without_event_idx() {
    packed_through_snapnet(FrontendConfig {
        packed: true,
        queue_size: 16,
        indirect: true,
        event_idx: false,
        ..Default::default()
    });
}
