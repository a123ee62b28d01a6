//! A vNIC moves between two "processes" (two pools mapping one memfd, two
//! engine groups, two vhost-user handlers; the state crosses a handoff
//! channel) while snapnet's own frontend sends sequence-numbered frames on
//! every queue: none may be lost, duplicated or reordered, and the counters
//! continue.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::MailboxSender;
use crate::frontend::{Frontend, FrontendConfig, VirtioNetHdr};
use crate::packet::wire::MacAddr;
use crate::packet::{link, FramePool, LinkRx, LinkTx, PoolConfig};
use crate::sched::{EngineGroup, EngineId, Policy};
use crate::upgrade::bridge::{consumer, producer, BridgeRx, BridgeTx};
use crate::upgrade::bridge_engine::{BridgeEngine, Lane};
use crate::upgrade::vnic_handover::{borrowed, export_vnic, import_vnic, pause_vnic, VnicHandover};
use crate::upgrade::Channel;
use crate::vnic::antispoof::SpoofGuard;
use crate::vnic::guest_log::{self, GuestLog};
use crate::vnic::{
    Connection, EngineSink, SharedQueueCounters, SocketRole, VnicDevice, VnicEngine,
    VnicEngineConfig,
};

const QPS: u16 = 2;
const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
/// Frames per queue.
const FRAMES: u32 = 20_000;
/// Frames in flight per queue at most: the guest always has RX buffers.
const WINDOW: u32 = 64;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A vNIC's engines with fresh links: the engines, their mailboxes, their
/// counters, and the switch's ends of their links (from, to the engine).
struct Engines {
    engines: Vec<VnicEngine>,
    senders: Vec<MailboxSender<VnicEngine>>,
    counters: Vec<Arc<SharedQueueCounters>>,
    switch_ends: Vec<(LinkRx, LinkTx)>,
}

fn engines(pool: &Arc<FramePool>) -> Engines {
    let log = Arc::new(GuestLog::new(guest_log::INTERVAL));
    let mut e = Engines {
        engines: Vec::new(),
        senders: Vec::new(),
        counters: Vec::new(),
        switch_ends: Vec::new(),
    };
    for q in 0..usize::from(QPS) {
        let (to_switch, switch_in) = link(1024).unwrap();
        let (switch_out, from_switch) = link(1024).unwrap();
        let cfg = VnicEngineConfig {
            name: format!("vnic0/q{q}"),
            mtu: 1500,
            guard: SpoofGuard::new(MAC, None),
            tx_limit: Default::default(),
            rx_limit: Default::default(),
            log: log.clone(),
        };
        let (engine, sender, counters) =
            VnicEngine::new(cfg, pool, to_switch, from_switch).unwrap();
        e.engines.push(engine);
        e.senders.push(sender);
        e.counters.push(counters);
        e.switch_ends.push((switch_in, switch_out));
    }
    e
}

fn place(group: &EngineGroup, engines: Vec<VnicEngine>) -> Vec<EngineId> {
    engines
        .into_iter()
        .map(|e| group.add(Box::new(e)).unwrap())
        .collect()
}

/// Sends every frame it gets back to the queue it came from (the switch's
/// place in this test); a frame the engine's link has no room for waits.
fn reflect(mut ends: Vec<(LinkRx, LinkTx)>, stop: Arc<AtomicBool>) {
    let mut waiting: Vec<Option<crate::packet::FrameHandle>> = ends.iter().map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0;
        for ((from, to), held) in ends.iter_mut().zip(&mut waiting) {
            while let Some(f) = held.take().or_else(|| from.pop()) {
                if let Err(f) = to.push(f) {
                    *held = Some(f);
                    break;
                }
                moved += 1;
            }
            to.flush();
        }
        if moved == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

fn frame(qp: u16, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&MAC.0);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..16].copy_from_slice(&qp.to_be_bytes());
    f[16..20].copy_from_slice(&seq.to_be_bytes());
    f
}

/// The guest: sends FRAMES on every queue and checks what comes back.
/// Returns frames received per queue; `progress` is the fewest received.
fn guest(path: std::path::PathBuf, packed: bool, progress: Arc<AtomicU64>) -> Vec<u32> {
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
            while sent[q] < FRAMES && sent[q] - got[q] < WINDOW {
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

/// Rings both ways for one queue: (old side's producer and consumer, new
/// side's), each producer on its own mapping of the other's ring.
fn rings() -> ((BridgeTx, BridgeRx), (BridgeTx, BridgeRx)) {
    let old_in = consumer(1024).unwrap();
    let new_in = consumer(1024).unwrap();
    let to = |rx: &BridgeRx| {
        producer(
            rx.ring_fd().try_clone_to_owned().unwrap(),
            rx.wake_fd().try_clone_to_owned().unwrap(),
        )
        .unwrap()
    };
    let (old_tx, new_tx) = (to(&new_in), to(&old_in));
    ((old_tx, old_in), (new_tx, new_in))
}

fn hand_over_under_traffic(packed: bool, roll_back: bool) {
    let dir = tempfile_dir();
    let path = dir.join("vnic0.sock");
    let cfg = PoolConfig::small_for_tests();
    let old_pool = FramePool::new(&PoolConfig {
        frames: 8192,
        ..cfg.clone()
    })
    .unwrap();
    let new_cfg = PoolConfig {
        frames: 8192,
        ..cfg
    };
    let new_pool =
        FramePool::attach(&new_cfg, old_pool.memfd().try_clone_to_owned().unwrap()).unwrap();
    let (small, large) = old_pool.take_free(4096, 4);
    new_pool.give_free(&small, &large).unwrap();

    // The old process: a vNIC served as usual, its switch a reflector.
    let old_group = EngineGroup::start("old", Policy::Dedicated, 1, &[]).unwrap();
    let old = engines(&old_pool);
    let old_counters = old.counters.clone();
    let old_device = Arc::new(VnicDevice::new(
        "vnic0",
        MAC,
        1500,
        QPS,
        EngineSink::new(old.senders),
    ));
    let old_ids = place(&old_group, old.engines);
    let old_conn = Connection::spawn(old_device.clone(), &path, SocketRole::Server).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reflector = {
        let (ends, stop) = (old.switch_ends, stop.clone());
        std::thread::spawn(move || reflect(ends, stop))
    };
    let progress = Arc::new(AtomicU64::new(0));
    let guest = {
        let (path, progress) = (path.clone(), progress.clone());
        std::thread::spawn(move || guest(path, packed, progress))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::Relaxed) < u64::from(FRAMES / 3) {
        assert!(Instant::now() < deadline, "no traffic before the hand-over");
        std::thread::sleep(Duration::from_millis(1));
    }

    // Brownout: the new process prepares what it can while the old serves.
    let new_group = EngineGroup::start("new", Policy::Dedicated, 1, &[]).unwrap();
    let mut new = engines(&new_pool);
    let new_counters = new.counters.clone();
    let new_senders = new.senders.clone();
    for e in &mut new.engines {
        e.hold_frames(true);
    }
    let new_device = Arc::new(VnicDevice::new(
        "vnic0",
        MAC,
        1500,
        QPS,
        EngineSink::new(new.senders),
    ));
    let _new_ids = place(&new_group, new.engines);
    let queue_rings: Vec<_> = (0..QPS).map(|_| rings()).collect();

    // The blackout, under traffic.
    let started = Instant::now();
    let handler = pause_vnic("vnic0", &old_conn, &old_device, TIMEOUT).unwrap();
    if roll_back {
        // The new process failed before taking the engines: the old one
        // serves on where it stopped.
        std::thread::sleep(Duration::from_millis(20));
        old_device.take_back_vrings().unwrap();
        old_conn.resume(handler);
        let got = guest.join().expect("the guest saw every frame in order");
        assert_eq!(got, vec![FRAMES; usize::from(QPS)], "frames lost");
        let all = u64::from(FRAMES) * u64::from(QPS);
        let tx: u64 = old_counters.iter().map(|c| c.snapshot().tx_packets).sum();
        let drops: u64 = old_counters
            .iter()
            .map(|c| c.snapshot().total_drops())
            .sum();
        assert_eq!((tx, drops), (all, 0));
        stop.store(true, Ordering::Relaxed);
        reflector.join().unwrap();
        old_conn.stop();
        old_group.stop();
        new_group.stop();
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let stopped: Vec<VnicEngine> = old_ids
        .iter()
        .map(|id| {
            *old_group
                .remove(*id)
                .unwrap()
                .into_any()
                .downcast::<VnicEngine>()
                .unwrap()
        })
        .collect();
    let Ok((message, fds, exported)) = export_vnic("vnic0", handler, old_conn.listener(), stopped)
    else {
        panic!("export failed");
    };
    let (tx, rx) = Channel::pair().unwrap();
    tx.send_message("vnic", &message, &borrowed(&fds)).unwrap();
    drop(fds);
    let (message, fds): (VnicHandover, Vec<OwnedFd>) = rx.recv_message("vnic").unwrap();

    // The new process: engines that continue, and bridges both ways.
    for (sender, state) in new_senders.iter().zip(message.engines.clone()) {
        sender
            .call(TIMEOUT, move |e: &mut VnicEngine| e.take_over(&state))
            .unwrap();
    }
    let (mut old_lanes, mut new_lanes) = (Vec::new(), Vec::new());
    for (((to_switch, from_switch), (switch_in, switch_out)), rings) in exported
        .links
        .into_iter()
        .zip(new.switch_ends)
        .zip(queue_rings)
    {
        let ((old_tx, old_rx), (new_tx, new_rx)) = rings;
        old_lanes.push(Lane::new(from_switch, old_tx, old_rx, to_switch));
        new_lanes.push(Lane::new(switch_in, new_tx, new_rx, switch_out));
    }
    let old_bridge = BridgeEngine::new("bridge".into(), old_pool.clone(), old_lanes);
    let old_bridge_counters = old_bridge.counters();
    old_group.add(Box::new(old_bridge)).unwrap();
    let new_bridge = BridgeEngine::new("bridge".into(), new_pool.clone(), new_lanes);
    let new_bridge_counters = new_bridge.counters();
    new_group.add(Box::new(new_bridge)).unwrap();
    let new_conn = import_vnic(&message, fds, &new_device, &path, TIMEOUT).unwrap();
    let blackout = started.elapsed();
    old_conn.release();
    drop(exported.handler);
    eprintln!("hand-over blackout (packed={packed}): {blackout:?}");

    let got = guest.join().expect("the guest saw every frame in order");
    let show = |c: &[Arc<SharedQueueCounters>]| -> Vec<String> {
        c.iter()
            .map(|c| {
                let s = c.snapshot();
                format!(
                    "tx {} rx {} drops {:?} bp {}",
                    s.tx_packets, s.rx_packets, s.drops, s.backpressure
                )
            })
            .collect()
    };
    let bridge = |c: &crate::upgrade::bridge_engine::BridgeCounters| {
        format!(
            "to_peer {} from_peer {} waits {} refused {}",
            c.to_peer.load(Ordering::Relaxed),
            c.from_peer.load(Ordering::Relaxed),
            c.waits.load(Ordering::Relaxed),
            c.refused.load(Ordering::Relaxed)
        )
    };
    if got != vec![FRAMES; usize::from(QPS)] {
        eprintln!(
            "frames lost: got {got:?}; old engines {:?}\nnew engines {:?}\nold bridge {}\nnew bridge {}",
            show(&old_counters),
            show(&new_counters),
            bridge(&old_bridge_counters),
            bridge(&new_bridge_counters)
        );
        panic!("frames lost");
    }
    // Counters continue: the new engines count the old ones' frames too.
    let old_tx: u64 = old_counters.iter().map(|c| c.snapshot().tx_packets).sum();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let new_tx: u64 = new_counters.iter().map(|c| c.snapshot().tx_packets).sum();
        let new_rx: u64 = new_counters.iter().map(|c| c.snapshot().rx_packets).sum();
        let all = u64::from(FRAMES) * u64::from(QPS);
        if new_tx == all && new_rx == all {
            assert!(
                old_tx > 0 && old_tx < all,
                "the old engines carried part: {old_tx}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counters: tx {new_tx} rx {new_rx} of {all}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    reflector.join().unwrap();
    new_conn.stop();
    new_group.stop();
    old_group.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "snapnet-handover-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_split_ring_vnic_moves_under_traffic_losing_nothing() {
    hand_over_under_traffic(false, false);
}

#[test]
fn a_hand_over_rolled_back_after_the_pause_loses_nothing() {
    hand_over_under_traffic(false, true);
}

#[test]
fn a_packed_ring_vnic_moves_under_traffic_losing_nothing() {
    hand_over_under_traffic(true, false);
}
