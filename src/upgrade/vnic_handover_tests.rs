//! A vNIC moves between two "processes" (`rehearsal`: two pools mapping one
//! memfd, two engine groups, two vhost-user handlers; the state crosses a
//! handoff channel) while snapnet's own frontend sends sequence-numbered
//! frames on every queue: none may be lost, duplicated or reordered, and
//! the counters continue.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::upgrade::rehearsal::{mac_of, Rehearsal};
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

const QPS: u16 = 2;
/// Frames per queue.
const FRAMES: u32 = 20_000;
/// Frames in flight per queue at most: the guest always has RX buffers.
const WINDOW: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(5);

fn frame(qp: u16, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0xff, 0xff]);
    f[6..12].copy_from_slice(&mac_of(0).0);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..16].copy_from_slice(&qp.to_be_bytes());
    f[16..20].copy_from_slice(&seq.to_be_bytes());
    f
}

/// The guest: sends FRAMES on every queue and checks what comes back.
/// Returns frames received per queue; `progress` is the fewest received.
/// It sends the last third only once `go` is set (after the hand-over), so
/// that traffic crosses the bridges however long the pause takes.
fn guest(
    path: std::path::PathBuf,
    packed: bool,
    progress: Arc<AtomicU64>,
    go: Arc<AtomicBool>,
) -> Vec<u32> {
    let cfg = FrontendConfig {
        queue_pairs: QPS,
        packed,
        ..Default::default()
    };
    let mut fe = Frontend::connect(&path, &cfg, TIMEOUT).expect("connected");
    let hdr = VirtioNetHdr::default();
    let mut sent = vec![0u32; usize::from(QPS)];
    let mut got = vec![0u32; usize::from(QPS)];
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.iter().any(|&g| g < FRAMES) && Instant::now() < deadline {
        for qp in 0..QPS {
            let q = usize::from(qp);
            let limit = if go.load(Ordering::Relaxed) {
                FRAMES
            } else {
                2 * FRAMES / 3
            };
            while sent[q] < limit && sent[q] - got[q] < WINDOW {
                if fe.send(qp, &[&frame(qp, sent[q])], &hdr) == 0 {
                    break;
                }
                sent[q] += 1;
            }
            fe.recv(qp, |_, p| {
                let seq = u32::from_be_bytes(p[16..20].try_into().unwrap());
                assert_eq!(
                    u16::from_be_bytes([p[14], p[15]]),
                    qp,
                    "frame on the wrong queue"
                );
                assert_eq!(
                    seq, got[q],
                    "queue {qp}: frame lost, duplicated or reordered"
                );
                got[q] += 1;
            });
        }
        progress.store(u64::from(*got.iter().min().unwrap()), Ordering::Relaxed);
    }
    got
}

fn temp_dir() -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "snapnet-handover-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hand_over_under_traffic(packed: bool, roll_back: bool) {
    let dir = temp_dir();
    let mut r = Rehearsal::new(1, QPS, &dir, &[]).unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let guest = {
        let (path, progress, go) = (r.vnics[0].socket.clone(), progress.clone(), go.clone());
        std::thread::spawn(move || guest(path, packed, progress, go))
    };
    r.prepare(0).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::Relaxed) < u64::from(FRAMES / 3) {
        assert!(Instant::now() < deadline, "no traffic before the hand-over");
        std::thread::sleep(Duration::from_millis(1));
    }
    if roll_back {
        // The new process failed after the pause: the old one serves on
        // where it stopped.
        r.pause_and_roll_back(0, Duration::from_millis(20)).unwrap();
    } else {
        let blackout = r.move_vnic(0).unwrap();
        eprintln!("hand-over blackout (packed={packed}): {blackout:?}");
    }
    go.store(true, Ordering::Relaxed);
    let got = guest.join().expect("the guest saw every frame in order");
    assert_eq!(got, vec![FRAMES; usize::from(QPS)], "frames lost");
    // Counters continue: the serving side counts every frame.
    let all = u64::from(FRAMES) * u64::from(QPS);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let c = r.counters(0);
        if c.tx_packets == all && c.rx_packets == all {
            assert_eq!(c.total_drops(), 0);
            break;
        }
        assert!(Instant::now() < deadline, "counters: {c:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some((old, new)) = r.bridge_counters(0) {
        assert!(
            old.to_peer.load(Ordering::Relaxed) > 0,
            "frames for the guest crossed"
        );
        assert!(
            new.to_peer.load(Ordering::Relaxed) > 0,
            "frames from the guest crossed"
        );
        assert_eq!(new.refused.load(Ordering::Relaxed), 0);
    }
    r.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_split_ring_vnic_moves_under_traffic_losing_nothing() {
    hand_over_under_traffic(false, false);
}

#[test]
fn a_packed_ring_vnic_moves_under_traffic_losing_nothing() {
    hand_over_under_traffic(true, false);
}

#[test]
fn a_hand_over_rolled_back_after_the_pause_loses_nothing() {
    hand_over_under_traffic(false, true);
}
