//! Tests of `split_ring.rs`.
use super::fake::FakeDevice;
use super::*;

fn ring(size: u16, event_idx: bool) -> SplitRing {
    let mut mem = GuestMemory::new(1 << 20, false).unwrap();
    let addrs = RingAddrs::alloc(&mut mem, size).unwrap();
    SplitRing::new(Arc::new(mem), addrs, size, event_idx).unwrap()
}

fn kicks(r: &SplitRing) -> u64 {
    r.kick_fd().read().unwrap_or(0)
}

#[test]
fn need_event_matches_spec() {
    assert!(vring_need_event(0, 1, 0));
    assert!(!vring_need_event(1, 1, 0));
    assert!(vring_need_event(5, 10, 0));
    assert!(!vring_need_event(10, 10, 0));
    // Wrapping: window [65534, 2) contains 65535 and 0 and 1.
    assert!(vring_need_event(65535, 2, 65534));
    assert!(vring_need_event(1, 2, 65534));
    assert!(!vring_need_event(2, 2, 65534));
    assert!(!vring_need_event(65533, 2, 65534));
}

#[test]
fn rejects_bad_geometry() {
    let mut mem = GuestMemory::new(1 << 16, false).unwrap();
    let addrs = RingAddrs::alloc(&mut mem, 8).unwrap();
    let mem = Arc::new(mem);
    assert!(SplitRing::new(mem.clone(), addrs, 6, false).is_err());
    let mut bad = addrs;
    bad.desc += 8;
    assert!(SplitRing::new(mem.clone(), bad, 8, false).is_err());
    bad = addrs;
    bad.used = 1 << 16;
    assert!(SplitRing::new(mem, bad, 8, false).is_err());
}

/// Runs many times around a small ring so the 16-bit indices wrap (65536 / 8 laps).
#[test]
fn indices_wrap_around() {
    for event_idx in [false, true] {
        let mut r = ring(8, event_idx);
        let mut dev = FakeDevice::new(&r);
        let mut total: u32 = 0;
        for round in 0..40_000u32 {
            let batch = 1 + (round % 8) as u16;
            let mut heads = Vec::new();
            for _ in 0..batch {
                let h = r.alloc_chain(1).unwrap();
                r.write_desc(h, 0x1000 + h as u64, round, 0, 0);
                r.push_avail(h);
                heads.push(h);
            }
            r.publish();
            for h in &heads {
                let got = dev.pop().unwrap();
                assert_eq!(got, *h);
                assert_eq!(r.read_desc(got).len, round);
                dev.push_used(got as u32, total);
                total += 1;
            }
            assert!(dev.pop().is_none());
            // Device must not be asked to interrupt in polling mode.
            assert!(!dev.publish_used(event_idx), "round {round}");
            let n = r.used_pending();
            assert_eq!(n, batch);
            for k in 0..n {
                let (id, len) = r.used_elem(r.last_used().wrapping_add(k));
                assert_eq!(len, total - (batch - k) as u32);
                assert_eq!(r.release(id), Some(false));
            }
            r.advance_used(n);
            assert_eq!(r.free_count(), 8);
        }
        assert!(total > 65536 * 2);
        assert_eq!(r.stats().bad_used, 0);
    }
}

#[test]
fn kick_suppression_no_event_idx() {
    let mut r = ring(16, false);
    let dev = FakeDevice::new(&r);
    let h = r.alloc_chain(1).unwrap();
    r.push_avail(h);
    assert!(r.publish_and_kick());
    assert_eq!(kicks(&r), 1);
    dev.set_used_flags(VRING_USED_F_NO_NOTIFY);
    for _ in 0..3 {
        let h = r.alloc_chain(1).unwrap();
        r.push_avail(h);
        assert!(!r.publish_and_kick());
    }
    assert_eq!(kicks(&r), 0);
    // Nothing new: no kick regardless of flags.
    dev.set_used_flags(0);
    assert!(!r.publish_and_kick());
    let h = r.alloc_chain(1).unwrap();
    r.push_avail(h);
    let h = r.alloc_chain(1).unwrap();
    r.push_avail(h);
    assert!(r.publish_and_kick(), "one kick per batch");
    assert_eq!(kicks(&r), 1);
    assert_eq!(r.stats().kicks, 2);
}

#[test]
fn kick_suppression_event_idx() {
    let mut r = ring(16, true);
    let mut dev = FakeDevice::new(&r);
    // avail_event = 0: the device wants a kick when entry 0 is published.
    let h = r.alloc_chain(1).unwrap();
    r.push_avail(h);
    assert!(r.publish_and_kick());
    // The device processes it and asks for a kick after index 3 is made available.
    dev.pop().unwrap();
    dev.set_avail_event(3);
    for _ in 0..2 {
        let h = r.alloc_chain(1).unwrap();
        r.push_avail(h);
        assert!(!r.publish_and_kick()); // avail idx 1, 2: no kick
    }
    let h1 = r.alloc_chain(1).unwrap();
    r.push_avail(h1);
    let h2 = r.alloc_chain(1).unwrap();
    r.push_avail(h2);
    assert!(r.publish_and_kick()); // publishes 3 and 4: crosses avail_event 3
    assert_eq!(r.stats().kicks, 2);
    // Device keeps avail_event stale (busy polling): no more kicks for a long while.
    let mut kicked = 0;
    let mut interrupts = 0;
    for _ in 0..1000 {
        let h = r.alloc_chain(1).unwrap();
        r.push_avail(h);
        if r.publish_and_kick() {
            kicked += 1;
        }
        // Recycle the descriptor as if the device completed it.
        while let Some(d) = dev.pop() {
            dev.push_used(d as u32, 0);
        }
        if dev.publish_used(true) {
            interrupts += 1;
        }
        let n = r.used_pending();
        for k in 0..n {
            let (id, _) = r.used_elem(r.last_used().wrapping_add(k));
            r.release(id).unwrap();
        }
        r.advance_used(n);
    }
    assert_eq!(kicked, 0);
    assert_eq!(interrupts, 0);
    // In polling mode flags are 0 with EVENT_IDX; used_event stays behind last_used.
    assert_eq!(dev.avail_flags(), 0);
    assert_eq!(dev.used_event(), 0xffff);
}

#[test]
fn interrupts_enable_disable() {
    for event_idx in [false, true] {
        let mut r = ring(8, event_idx);
        let mut dev = FakeDevice::new(&r);
        let h = r.alloc_chain(1).unwrap();
        r.push_avail(h);
        let h2 = r.alloc_chain(1).unwrap();
        r.push_avail(h2);
        r.publish();
        let a = dev.pop().unwrap();
        dev.push_used(a as u32, 0);
        assert!(!dev.publish_used(event_idx));
        r.enable_interrupts();
        // Pending entry is visible after arming (the re-check in wait_rx).
        assert_eq!(r.used_pending(), 1);
        let (id, _) = r.used_elem(r.last_used());
        r.release(id).unwrap();
        r.advance_used(1);
        r.enable_interrupts();
        let b = dev.pop().unwrap();
        dev.push_used(b as u32, 0);
        assert!(
            dev.publish_used(event_idx),
            "armed ring must be interrupted"
        );
        r.disable_interrupts();
        let (id, _) = r.used_elem(r.last_used());
        r.release(id).unwrap();
        r.advance_used(1);
        let h = r.alloc_chain(1).unwrap();
        r.push_avail(h);
        r.publish();
        let c = dev.pop().unwrap();
        dev.push_used(c as u32, 0);
        assert!(!dev.publish_used(event_idx));
    }
}

#[test]
fn raw_chain_translation_and_release() {
    let mut r = ring(8, false);
    let mut dev = FakeDevice::new(&r);
    let descs = [
        RawDesc {
            addr: 0x2000,
            len: 10,
            flags: VRING_DESC_F_NEXT,
            next: 1,
        },
        RawDesc {
            addr: 0x3000,
            len: 20,
            flags: VRING_DESC_F_NEXT,
            next: 0, // loop back to the head
        },
        RawDesc {
            addr: 0x4000,
            len: 30,
            flags: 0,
            next: 77, // verbatim, out of range
        },
    ];
    let head = r.post_raw_chain(&descs).unwrap();
    r.publish();
    assert_eq!(r.free_count(), 5);
    assert_eq!(dev.pop(), Some(head));
    let d0 = dev.desc(r.addrs().desc, head);
    assert_eq!((d0.addr, d0.len), (0x2000, 10));
    let d1 = dev.desc(r.addrs().desc, d0.next);
    assert_eq!((d1.addr, d1.next), (0x3000, head));
    let d2 = dev.desc(r.addrs().desc, r.next_of(d0.next));
    assert_eq!((d2.addr, d2.next), (0x4000, 77));
    assert_eq!(r.head_kind(head as u32), HeadKind::Raw);
    dev.push_used(head as u32, 5);
    dev.push_used(99, 5); // invalid id
    dev.push_used(d0.next as u32, 5); // not a head
    dev.publish_used(false);
    assert_eq!(r.used_pending(), 3);
    let (id, len) = r.used_elem(0);
    assert_eq!(r.release(id), Some(true));
    r.push_raw_used(id, len);
    assert_eq!(r.release(99), None);
    assert_eq!(r.release(d0.next as u32), None);
    r.advance_used(3);
    assert_eq!(r.free_count(), 8);
    assert_eq!(r.stats().bad_used, 2);
    assert_eq!(r.take_raw_used(), vec![(head as u32, 5)]);
    // Not enough descriptors.
    assert!(r.post_raw_chain(&[descs[2]; 9]).is_none());
}

#[test]
fn broken_used_idx_is_detected() {
    let mut r = ring(8, false);
    let mut dev = FakeDevice::new(&r);
    dev.force_used_idx(100);
    assert_eq!(r.used_pending(), 0);
    assert_eq!(r.used_pending(), 0);
    assert_eq!(r.stats().bad_used, 1);
}
