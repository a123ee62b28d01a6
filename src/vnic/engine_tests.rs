//! Tests of `engine.rs`.
use super::super::guest_log;
use super::*;
use vhost_user_backend::VringT;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 16;

/// A vring over `mock`'s rings, started and enabled as after a
/// frontend's SET_VRING_* messages.
fn attached(mem: &GuestMemoryMmap, mock: &MockSplitQueue<'_, GuestMemoryMmap>) -> AttachedQueue {
    let atomic = GuestMemory::new(mem.clone());
    let vring = VringRwLock::new(atomic.clone(), QSIZE).unwrap();
    vring.set_queue_size(QSIZE);
    vring
        .set_queue_info(mock.desc_table_addr().0, mock.avail_addr().0, 0x8000)
        .unwrap();
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    AttachedQueue::new(vring, atomic)
}

fn publish(mock: &MockSplitQueue<'_, GuestMemoryMmap>, count: u16) {
    let idx = mock.avail().idx().load();
    mock.avail().idx().store(idx.wrapping_add(count));
}

/// A batch that takes `take` entries.
fn take(q: &mut AttachedQueue, take: u16) {
    q.batch(|q, _, _| {
        q.set_next_avail(q.next_avail().wrapping_add(take));
        (usize::from(take), false)
    })
    .unwrap();
}

#[test]
fn an_unchanged_ring_is_skipped_without_the_lock_but_never_for_long() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    let mut q = attached(&mem, &mock);
    assert!(!q.quick_idle(), "no batch yet: the slow path looks");
    take(&mut q, 0);
    let quick = (0..1000).take_while(|_| q.quick_idle()).count();
    assert_eq!(
        quick,
        AttachedQueue::QUICK_POLLS as usize,
        "a full batch every so often"
    );
    take(&mut q, 0);
    assert!(q.quick_idle());
    publish(&mock, 1);
    assert!(!q.quick_idle(), "a posted chain is never skipped");
}

/// A guest held back by its egress limit keeps its TX ring full, so a
/// busy worker polls it every round: no round may cost a syscall (the
/// timer was once re-armed on every poll, which cost a shared worker
/// more than half its time). The timer is set only when the worker is
/// about to sleep.
#[test]
fn a_throttled_sender_arms_its_timer_only_when_the_worker_sleeps() {
    use crate::packet::{link, PoolConfig};
    use crate::shaping::{Cost, RateLimit};
    use snapnet_wire::MacAddr;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::Bytes;

    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    // A 12-byte virtio-net header, then a 60-byte frame from our MAC.
    let mut frame = vec![0u8; 72];
    frame[12..18].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    frame[18..24].copy_from_slice(&mac.0);
    mem.write_slice(&frame, GuestAddress(0x4000)).unwrap();
    let chains: Vec<RawDescriptor> = (0..QSIZE)
        .map(|_| RawDescriptor::from(SplitDescriptor::new(0x4000, 72, 0, 0)))
        .collect();
    mock.add_desc_chains(&chains, 0).unwrap();

    let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let (to_switch, mut from_guest) = link(64).unwrap();
    let (_to_guest, from_switch) = link(64).unwrap();
    let limit = RateLimit {
        packets_per_sec: Some(10),
        ..RateLimit::default()
    };
    let cfg = VnicEngineConfig {
        name: "t".into(),
        mtu: 1500,
        guard: SpoofGuard::new(mac, None),
        shaping: VnicShaping::new(&limit, &RateLimit::default()),
        log: Arc::new(GuestLog::new(guest_log::INTERVAL)),
    };
    let (mut engine, _mailbox, _counters) =
        VnicEngine::new(cfg, &pool, to_switch, from_switch).unwrap();
    let features = Negotiated::from_bits(1 << VIRTIO_F_VERSION_1);
    engine.attach(Side::Tx, attached(&mem, &mock), features);
    // Leave two packets in the bucket (its depth is at least 64).
    engine.dp.egress.as_ref().unwrap().with(|bucket| {
        while bucket.has(Cost::frame(60)) {
            bucket.take(Cost::frame(60));
        }
        bucket.refill(Instant::now() + Duration::from_millis(200));
    });

    for _ in 0..100 {
        engine.poll(64);
        assert!(!engine.timer.is_armed(), "a polling engine sets no timer");
    }
    let mut sent = 0;
    while let Some(f) = from_guest.pop() {
        pool.cache().free(f);
        sent += 1;
    }
    assert_eq!(sent, 2, "the burst, then the limit holds");
    assert!(!engine.arm(), "held-back chains are no work");
    assert!(
        engine.timer.is_armed(),
        "the timer wakes the sleeping worker"
    );
}

#[test]
fn sent_over_a_fresh_link_the_frames_keep_their_order() {
    use crate::packet::{link, PoolConfig};
    use snapnet_wire::MacAddr;
    let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let mut cache = pool.cache();
    let (to_switch, switch_in) = link(8).unwrap();
    let (_to_guest, from_switch) = link(8).unwrap();
    let cfg = VnicEngineConfig {
        name: "t".into(),
        mtu: 1500,
        guard: SpoofGuard::new(MacAddr([2, 0, 0, 0, 0, 1]), None),
        shaping: VnicShaping::default(),
        log: Arc::new(GuestLog::new(guest_log::INTERVAL)),
    };
    let (mut engine, _mailbox, _counters) =
        VnicEngine::new(cfg, &pool, to_switch, from_switch).unwrap();
    // Frames are told apart by length: 1-2 the old switch never took,
    // 3-4 still in the engine's link, 5 sent after the move.
    let mut frame = |len: u32| {
        let mut f = cache.alloc(64).unwrap();
        f.len = len;
        f
    };
    let earlier = vec![frame(1), frame(2)];
    for len in [3, 4] {
        engine.to_switch.push(frame(len)).unwrap();
    }
    let (small, mut small_rx) = link(3).unwrap();
    let refused = engine
        .send_over(small, earlier, switch_in)
        .err()
        .expect("4 frames do not fit 3 slots");
    let SendOverRefused {
        earlier,
        old_far_end,
        ..
    } = *refused;
    assert_eq!(old_far_end.len(), 2, "nothing moved");
    assert!(small_rx.pop().is_none());

    let (fresh, mut fresh_rx) = link(16).unwrap();
    let Ok(old) = engine.send_over(fresh, earlier, old_far_end) else {
        panic!("16 slots hold the 4 frames");
    };
    drop(old);
    engine.to_switch.push(frame(5)).unwrap();
    let mut lens = Vec::new();
    while let Some(f) = fresh_rx.pop() {
        lens.push(f.len);
        cache.free(f);
    }
    assert_eq!(lens, [1, 2, 3, 4, 5]);
}

/// Polls `q` `n` times: (address errors, batches that reached the ring).
fn poll_n(q: &mut AttachedQueue, n: usize) -> (usize, usize) {
    let (mut errors, mut served) = (0, 0);
    for _ in 0..n {
        match q.batch(|_, _, _| {
            served += 1;
            (0, false)
        }) {
            Ok(_) => {}
            Err(DropReason::AddressOutOfRange) => errors += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    (errors, served)
}

#[test]
fn a_ring_outside_guest_memory_is_counted_once_until_set_up_again() {
    for packed in [false, true] {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mock = MockSplitQueue::new(&mem, QSIZE);
        let mut q = attached(&mem, &mock);
        q.packed = packed;
        let (desc, avail) = (mock.desc_table_addr().0, mock.avail_addr().0);
        let set_used = |q: &AttachedQueue, used: u64| {
            q.vring.set_queue_info(desc, avail, used).unwrap();
        };
        set_used(&q, 0x2_0000);
        assert_eq!(poll_n(&mut q, 1000), (1, 0), "packed: {packed}");
        assert!(!q.has_avail(), "a broken ring has no work");
        // The memory table grows to hold the ring: it is served.
        let bigger = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap();
        q.mem.lock().unwrap().replace(bigger);
        let (errors, served) = poll_n(&mut q, 2 * AttachedQueue::QUICK_POLLS as usize);
        assert_eq!(errors, 0);
        assert!(served > 0, "never retried after the memory grew");
        // New bad addresses: one more count, then quiet again.
        set_used(&q, 0x8_0000);
        assert_eq!(poll_n(&mut q, 1000).0, 1);
        // Good addresses again: served.
        set_used(&q, 0x8000);
        let (errors, served) = poll_n(&mut q, 2 * AttachedQueue::QUICK_POLLS as usize);
        assert_eq!(errors, 0);
        assert!(served > 0, "never retried after new addresses");
    }
}

#[test]
fn backlog_is_the_share_of_the_ring_posted_since_the_last_batch() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mock = MockSplitQueue::new(&mem, QSIZE);
    let mut q = attached(&mem, &mock);
    assert_eq!(q.fill(), 0.0, "unknown before the first batch");
    take(&mut q, 0);
    publish(&mock, 4);
    assert_eq!(q.fill(), 0.25);
    take(&mut q, 3);
    assert_eq!(q.fill(), 1.0 / 16.0);
    // A driver moving its index past the ring reads as full, no more.
    publish(&mock, 100);
    assert_eq!(q.fill(), 1.0);
}
