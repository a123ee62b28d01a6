//! Tests of `packed_ring.rs`.
use super::fake::FakePackedDevice;
use super::*;
use crate::queue::{RxQueue, TxQueue};
use crate::VirtioNetHdr;

fn ring(size: u16, event_idx: bool) -> PackedRing {
    let mut mem = GuestMemory::new(1 << 20, false).unwrap();
    let addrs = alloc_packed(&mut mem, size).unwrap();
    PackedRing::new(Arc::new(mem), addrs, size, event_idx).unwrap()
}

fn kicks(r: &PackedRing) -> u64 {
    r.kick_fd().read().unwrap_or(0)
}

/// Posts a chain of `n` descriptors whose lengths encode (round, k).
fn post(r: &mut PackedRing, n: u16, round: u32) -> u16 {
    let h = r.alloc_chain(n).unwrap();
    let mut d = h;
    for k in 0..n {
        r.write_desc(d, 0x1000 + d as u64, round * 4 + k as u32, 0, 0);
        d = r.next_of(d);
    }
    r.push_avail(h);
    h
}

#[test]
fn rejects_bad_geometry() {
    let mut mem = GuestMemory::new(1 << 16, false).unwrap();
    let addrs = alloc_packed(&mut mem, 8).unwrap();
    let mem = Arc::new(mem);
    assert!(PackedRing::new(mem.clone(), addrs, 0, false).is_err());
    assert!(PackedRing::new(mem.clone(), addrs, 40000, false).is_err());
    let mut bad = addrs;
    bad.desc += 8;
    assert!(PackedRing::new(mem.clone(), bad, 8, false).is_err());
    bad = addrs;
    bad.used = 1 << 16;
    assert!(PackedRing::new(mem, bad, 8, false).is_err());
}

/// Many laps around small rings (a power of two and not), chains of 1 to 3 slots,
/// completed out of order: both wrap counters flip many times.
#[test]
fn wrap_counters_many_laps() {
    for (size, event_idx) in [(8, false), (5, true), (7, false)] {
        let mut r = ring(size, event_idx);
        let mut dev = FakePackedDevice::new(&r);
        dev.set_device_event(EVENT_F_DISABLE, 0);
        let mut total = 0u32;
        for round in 0..3000u32 {
            let mut posted = Vec::new();
            while let Some(n) = Some(1 + (round + posted.len() as u32) as u16 % 3) {
                if r.free_count() < n as usize || posted.len() == 3 {
                    break;
                }
                posted.push((post(&mut r, n, round), n));
            }
            assert!(!r.publish(), "DISABLE: no kick");
            let mut popped = Vec::new();
            for &(h, n) in &posted {
                let (id, descs, slots) = dev.pop().unwrap();
                assert_eq!((id, slots), (h, n));
                for (k, d) in descs.iter().enumerate() {
                    assert_eq!(d.1, round * 4 + k as u32);
                    let last = k + 1 == descs.len();
                    assert_eq!(d.2 & DESC_F_NEXT == 0, last);
                }
                popped.push((id, slots));
            }
            assert!(dev.pop().is_none());
            // Complete in reverse order, each with its own length.
            for &(id, slots) in popped.iter().rev() {
                dev.push_used(id, total, slots);
                total += 1;
            }
            assert!(!dev.interrupt_wanted(), "polling mode: no interrupt");
            let n = r.used_pending();
            assert_eq!(n as usize, popped.len());
            for k in 0..n {
                let (id, len) = r.used_elem(r.last_used().wrapping_add(k));
                assert_eq!(id, popped[popped.len() - 1 - k as usize].0 as u32);
                assert_eq!(len, total - n as u32 + k as u32);
                assert_eq!(r.release(id), Some(false));
            }
            r.advance_used(n);
            assert_eq!(r.free_count(), size as usize);
        }
        assert_eq!(r.stats().bad_used, 0);
        assert_eq!(r.stats().kicks, 0);
    }
}

/// A batch becomes visible with its first slot's flags, written at publish.
#[test]
fn batch_published_by_first_slot() {
    let mut r = ring(8, false);
    let mut dev = FakePackedDevice::new(&r);
    post(&mut r, 1, 0);
    post(&mut r, 2, 0);
    assert!(dev.pop().is_none(), "nothing visible before publish");
    // The later slots already carry their flags; only slot 0 is held back.
    assert!(vp::is_avail(r.read_slot(1).3, true));
    assert!(!vp::is_avail(r.read_slot(0).3, true));
    assert!(r.publish_and_kick(), "ENABLE: kick");
    assert_eq!(kicks(&r), 1);
    assert_eq!(dev.pop().unwrap().2, 1);
    assert_eq!(dev.pop().unwrap().2, 2);
    assert!(!r.publish(), "nothing new: no kick");
}

#[test]
fn kick_suppression_event_idx() {
    let mut r = ring(8, true);
    let mut dev = FakePackedDevice::new(&r);
    // The device wants a kick once slot 3 of the first lap is made available.
    dev.set_device_event(EVENT_F_DESC, vp::off_wrap(3, true));
    post(&mut r, 1, 0);
    post(&mut r, 1, 0);
    assert!(!r.publish(), "slots 0, 1");
    post(&mut r, 1, 0);
    post(&mut r, 1, 0);
    assert!(r.publish(), "slots 2, 3 cross the event");
    post(&mut r, 1, 0);
    assert!(!r.publish(), "slot 4 is past it");
    for _ in 0..5 {
        let (id, _, slots) = dev.pop().unwrap();
        dev.push_used(id, 0, slots);
    }
    let n = r.used_pending();
    for k in 0..n {
        let (id, _) = r.used_elem(r.last_used().wrapping_add(k));
        r.release(id).unwrap();
    }
    r.advance_used(n);
    // Event in the next lap, slot 1: slots 5, 6, 7 (lap 1) and 0 (lap 0) do not kick,
    // slot 1 of lap 0 does.
    dev.set_device_event(EVENT_F_DESC, vp::off_wrap(1, false));
    for _ in 0..4 {
        post(&mut r, 1, 0);
    }
    assert!(!r.publish());
    post(&mut r, 1, 0);
    assert!(r.publish());
    // Without EVENT_IDX a DESC request is not honoured as an index (kick).
    let mut r = ring(8, false);
    let dev = FakePackedDevice::new(&r);
    dev.set_device_event(EVENT_F_DESC, vp::off_wrap(5, true));
    post(&mut r, 1, 0);
    assert!(r.publish());
}

#[test]
fn interrupts_enable_disable() {
    for event_idx in [false, true] {
        let mut r = ring(4, event_idx);
        let mut dev = FakePackedDevice::new(&r);
        assert_eq!(dev.driver_event().0, EVENT_F_DISABLE);
        for _ in 0..3 {
            post(&mut r, 1, 0);
        }
        r.publish();
        let (a, _, s) = dev.pop().unwrap();
        dev.push_used(a, 0, s);
        assert!(!dev.interrupt_wanted());
        r.enable_interrupts();
        assert_eq!(r.used_pending(), 1, "the re-check after arming sees it");
        let (id, _) = r.used_elem(r.last_used());
        r.release(id).unwrap();
        r.advance_used(1);
        r.enable_interrupts();
        let want = if event_idx {
            EVENT_F_DESC
        } else {
            EVENT_F_ENABLE
        };
        assert_eq!(dev.driver_event().0, want);
        if event_idx {
            assert_eq!(dev.driver_event().1, vp::off_wrap(1, true));
        }
        let (b, _, s) = dev.pop().unwrap();
        dev.push_used(b, 0, s);
        assert!(dev.interrupt_wanted(), "armed ring must be interrupted");
        r.disable_interrupts();
        let (c, _, s) = dev.pop().unwrap();
        dev.push_used(c, 0, s);
        assert!(!dev.interrupt_wanted());
    }
}

#[test]
fn raw_chain_and_broken_used_id() {
    let mut r = ring(8, false);
    let mut dev = FakePackedDevice::new(&r);
    let descs = [
        RawDesc {
            addr: 0x2000,
            len: 10,
            flags: DESC_F_NEXT,
            next: 0,
        },
        RawDesc {
            addr: 0x3000,
            len: 20,
            flags: 0,
            next: 0,
        },
    ];
    let head = r.post_raw_chain(&descs).unwrap();
    r.publish();
    assert_eq!(r.head_kind(head as u32), HeadKind::Raw);
    let (id, got, slots) = dev.pop().unwrap();
    assert_eq!((id, slots), (head, 2));
    assert_eq!(got, vec![(0x2000, 10, DESC_F_NEXT), (0x3000, 20, 0)]);
    dev.push_used(id, 7, slots);
    assert_eq!(r.used_pending(), 1);
    let (id, len) = r.used_elem(r.last_used());
    assert_eq!(r.release(id), Some(true));
    r.push_raw_used(id, len);
    r.advance_used(1);
    assert_eq!(r.take_raw_used(), vec![(head as u32, 7)]);
    // A used descriptor naming an id not in flight breaks the ring for good.
    post(&mut r, 1, 0);
    r.publish();
    let (id, _, _) = dev.pop().unwrap();
    dev.push_used(id ^ 1, 0, 1);
    assert_eq!(r.used_pending(), 0);
    assert_eq!(r.stats().bad_used, 1);
    // So does the same id completed twice.
    let mut r = ring(8, false);
    let mut dev = FakePackedDevice::new(&r);
    post(&mut r, 1, 0);
    post(&mut r, 1, 0);
    r.publish();
    let (a, _, _) = dev.pop().unwrap();
    dev.push_used(a, 0, 1);
    dev.push_used(a, 0, 1);
    assert_eq!(r.used_pending(), 1);
    assert_eq!(r.stats().bad_used, 1);
    assert_eq!(r.post_raw_chain(&[descs[1]; 9]), None, "not enough free");
}

fn mem_with(size: u16, bufs: usize) -> (GuestMemory, RingAddrs, u64) {
    let mut mem = GuestMemory::new(8 << 20, false).unwrap();
    let addrs = alloc_packed(&mut mem, size).unwrap();
    let buf = mem.alloc(bufs, 64).unwrap();
    (mem, addrs, buf)
}

#[test]
fn tx_queue_over_packed_ring() {
    for indirect in [false, true] {
        let (mut mem, addrs, buf) = mem_with(16, 16 * 256);
        let ind = indirect.then(|| mem.alloc(16 * 32, 16).unwrap());
        let ring = PackedRing::new(Arc::new(mem), addrs, 16, false).unwrap();
        let mut q = TxQueue::new(ring, buf, 256, ind, 12).unwrap();
        let mut dev = FakePackedDevice::new(&q.ring);
        let small: Vec<u8> = (0..100u8).collect();
        let big: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let hdr = VirtioNetHdr {
            flags: 1,
            ..Default::default()
        };
        assert_eq!(q.send(&[&small, &big], &hdr), 2);
        let mut want = hdr.to_bytes().to_vec();
        want.extend_from_slice(&small);
        let (a, da, sa) = dev.pop().unwrap();
        assert_eq!(dev.read(&da), want);
        assert_eq!(sa, 1);
        if indirect {
            assert_eq!(da.len(), 2);
            assert_eq!((da[0].1, da[1].1), (12, 100));
            assert_eq!(da[0].2 & DESC_F_WRITE, 0);
        }
        want.truncate(12);
        want.extend_from_slice(&big);
        let (b, db, sb) = dev.pop().unwrap();
        assert_eq!(dev.read(&db), want);
        assert_eq!(sb, 4, "1012 bytes in 256 byte buffers");
        dev.push_used(b, 0, sb);
        dev.push_used(a, 0, sa);
        assert_eq!(q.reclaim(), 2);
        assert_eq!(q.ring.free_count(), 16);
        q.prepare_blast(&[0xab; 60]);
        assert_eq!(q.blast(20), 16, "ring full");
        for _ in 0..16 {
            let (id, d, s) = dev.pop().unwrap();
            assert_eq!(&dev.read(&d)[12..], &[0xab; 60]);
            dev.push_used(id, 0, s);
        }
        assert_eq!(q.blast(20), 16, "all reclaimed, wrap counters flipped");
        assert_eq!(q.ring.stats().bad_used, 0);
    }
}

#[test]
fn rx_queue_over_packed_ring_merged() {
    let (mem, addrs, buf) = mem_with(8, 8 * 128);
    let ring = PackedRing::new(Arc::new(mem), addrs, 8, true).unwrap();
    let mut q = RxQueue::new(ring, buf, 128, 128, 12, true, 0).unwrap();
    let mut dev = FakePackedDevice::new(&q.ring);
    assert_eq!(q.fill(), 8);
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 13 + 1) as u8).collect();
    let hdr = VirtioNetHdr {
        num_buffers: 3,
        ..Default::default()
    };
    let mut first = hdr.to_bytes().to_vec();
    first.extend_from_slice(&payload[..116]);
    for _round in 0..5 {
        for part in [&first[..], &payload[116..244], &payload[244..]] {
            let (id, d, s) = dev.pop().unwrap();
            assert_eq!(d[0].2 & DESC_F_WRITE, DESC_F_WRITE);
            dev.write(d[0].0, part);
            dev.push_used(id, part.len() as u32, s);
        }
        let mut seen = Vec::new();
        let (n, bytes) = q.harvest::<true, _>(|h, p| seen.push((*h, p.to_vec())));
        assert_eq!((n, bytes), (1, 300));
        assert_eq!(seen[0].1, payload);
    }
    // A buffer longer than posted is counted and reposted.
    let (id, _, s) = dev.pop().unwrap();
    dev.push_used(id, 4096, s);
    assert_eq!(q.harvest::<false, _>(|_, _| {}), (0, 0));
    assert_eq!(q.ring.stats().bad_used, 1);
    assert_eq!(q.ring.free_count(), 0, "all buffers reposted");
}
