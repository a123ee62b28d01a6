//! Tests of the packed-ring view and chain walker against a small driver
//! that writes guest memory directly, malformed chains included.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::chain::{Direction, Segment, MAX_CHAIN_DESCS};
use super::guest_memory::GuestMap;
use super::guest_ring::RingAddrs;
use super::packed_chain::{walk_packed, PackedWalk};
use super::packed_ring::{PackedView, Pos};
use super::stats::DropReason;
use snapnet_wire::virtq_packed::{
    self as vp, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, EVENT_F_DESC, EVENT_F_DISABLE,
    EVENT_F_ENABLE,
};

const QSIZE: u16 = 16;
/// (address, length, flags) of one descriptor a test posts.
type RawDesc3 = (u64, u32, u16);
const MEM: u64 = 0x40_0000;
const RING: u64 = 0x1000;
const DRIVER_EVT: u64 = 0x2000;
const DEVICE_EVT: u64 = 0x3000;
const TABLE: u64 = 0x8000;
const BUF: u64 = 0x10_0000;

struct Driver {
    mem: Arc<GuestMemoryMmap>,
    map: GuestMap,
    view: PackedView,
    /// Next slot to fill and its lap.
    next: Pos,
}

impl Driver {
    fn new(size: u16) -> Self {
        let mem =
            Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
        let map = GuestMap::new(mem.clone());
        let view = PackedView::new(&map, addrs(size)).unwrap();
        Driver {
            mem,
            map,
            view,
            next: Pos::START,
        }
    }

    fn w16(&self, gpa: u64, v: u16) {
        self.mem.write_obj(v.to_le(), GuestAddress(gpa)).unwrap();
    }

    fn r16(&self, gpa: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(gpa)).unwrap())
    }

    /// Writes a raw descriptor (flags exactly as given) at `gpa`.
    fn put(&self, gpa: u64, addr: u64, len: u32, id: u16, flags: u16) {
        self.mem.write_obj(addr.to_le(), GuestAddress(gpa)).unwrap();
        self.mem
            .write_obj(len.to_le(), GuestAddress(gpa + 8))
            .unwrap();
        self.w16(gpa + 12, id);
        self.w16(gpa + 14, flags);
    }

    /// Makes `descs` (addr, len, flags without NEXT/AVAIL/USED) available as
    /// one chain at the next slots, the head's flags last; every descriptor
    /// carries `id`, except that the head carries `head_id` when given.
    fn chain(&mut self, descs: &[RawDesc3], id: u16, head_id: Option<u16>) -> Pos {
        let start = self.next;
        let mut head_flags = 0;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let next = if i + 1 < descs.len() { DESC_F_NEXT } else { 0 };
            let f = flags | next | vp::avail_bits(self.next.wrap);
            let gpa = RING + 16 * u64::from(self.next.slot);
            let this_id = if i == 0 { head_id.unwrap_or(id) } else { id };
            self.put(gpa, addr, len, this_id, if i == 0 { 0 } else { f });
            if i == 0 {
                head_flags = f;
            }
            self.next = self.next.advance(1, self.view.size());
        }
        self.w16(RING + 16 * u64::from(start.slot) + 14, head_flags);
        start
    }

    fn table(&self, entries: &[RawDesc3]) -> u32 {
        for (i, &(addr, len, flags)) in entries.iter().enumerate() {
            self.put(TABLE + 16 * i as u64, addr, len, 0, flags);
        }
        16 * entries.len() as u32
    }

    fn walk(&self, at: Pos, dir: Direction, indirect: bool, segs: &mut Vec<Segment>) -> PackedWalk {
        walk_packed(&self.view, &self.map, at, dir, indirect, segs, &mut 0)
    }

    fn host(&self, gpa: u64) -> *mut u8 {
        self.map.translate(gpa, 1).unwrap().0
    }

    /// (len, id, flags) of slot `slot`.
    fn used(&self, slot: u16) -> (u32, u16, u16) {
        let gpa = RING + 16 * u64::from(slot);
        let len: u32 = self.mem.read_obj(GuestAddress(gpa + 8)).unwrap();
        (u32::from_le(len), self.r16(gpa + 12), self.r16(gpa + 14))
    }

    fn set_driver_event(&self, flags: u16, off_wrap: u16) {
        self.w16(DRIVER_EVT, off_wrap);
        self.w16(DRIVER_EVT + 2, flags);
    }

    /// The device event area: (flags, off_wrap).
    fn device_event(&self) -> (u16, u16) {
        (self.r16(DEVICE_EVT + 2), self.r16(DEVICE_EVT))
    }
}

fn addrs(size: u16) -> RingAddrs {
    RingAddrs {
        desc: RING,
        avail: DRIVER_EVT,
        used: DEVICE_EVT,
        size,
    }
}

fn chain_err(w: PackedWalk) -> (u16, DropReason) {
    match w {
        PackedWalk::Chain {
            slots,
            total: Err(e),
            ..
        } => (slots, e),
        other => panic!("expected a dropped chain, got {other:?}"),
    }
}

#[test]
fn view_checks_geometry() {
    let d = Driver::new(QSIZE);
    let ok = |a: RingAddrs| PackedView::new(&d.map, a).is_some();
    assert!(ok(addrs(5)), "any size up to 2^15, not only powers of two");
    assert!(ok(addrs(32768)));
    assert!(!ok(addrs(0)));
    assert!(!ok(RingAddrs {
        desc: RING + 8,
        ..addrs(8)
    }));
    assert!(!ok(RingAddrs {
        avail: DRIVER_EVT + 2,
        ..addrs(8)
    }));
    assert!(!ok(RingAddrs {
        used: MEM - 2,
        ..addrs(8)
    }));
    assert!(!ok(RingAddrs {
        desc: MEM - 16 * 7,
        ..addrs(8)
    }));
}

#[test]
fn pos_base_and_advance() {
    assert_eq!(Pos::START.to_base(), 0x8000);
    assert_eq!(
        Pos::from_base(0x8005),
        Pos {
            slot: 5,
            wrap: true
        }
    );
    assert_eq!(
        Pos::from_base(3),
        Pos {
            slot: 3,
            wrap: false
        }
    );
    let p = Pos {
        slot: 3,
        wrap: true,
    };
    assert_eq!(
        p.advance(2, 5),
        Pos {
            slot: 0,
            wrap: false
        }
    );
    assert_eq!(
        p.advance(1, 5),
        Pos {
            slot: 4,
            wrap: true
        }
    );
    assert_eq!(
        p.advance(5, 5),
        Pos {
            slot: 3,
            wrap: false
        }
    );
}

#[test]
fn walks_chain_across_the_wrap_with_the_last_id() {
    let mut d = Driver::new(QSIZE);
    let mut segs = Vec::new();
    assert_eq!(
        d.walk(Pos::START, Direction::DeviceReads, false, &mut segs),
        PackedWalk::Empty
    );
    // Fill 14 one-slot chains, then a 3-slot chain over the end of the ring.
    for i in 0..14 {
        d.chain(&[(BUF, 60, 0)], i, None);
    }
    let start = d.chain(
        &[(BUF, 10, 0), (BUF + 0x100, 20, 0), (BUF + 0x200, 30, 0)],
        9,
        Some(1),
    );
    assert_eq!(
        start,
        Pos {
            slot: 14,
            wrap: true
        }
    );
    assert_eq!(
        d.next,
        Pos {
            slot: 1,
            wrap: false
        }
    );
    let w = d.walk(start, Direction::DeviceReads, false, &mut segs);
    assert_eq!(
        w,
        PackedWalk::Chain {
            id: 9,
            slots: 3,
            total: Ok(60)
        }
    );
    let got: Vec<_> = segs.iter().map(|s| (s.ptr, s.len)).collect();
    assert_eq!(
        got,
        vec![
            (d.host(BUF), 10),
            (d.host(BUF + 0x100), 20),
            (d.host(BUF + 0x200), 30)
        ]
    );
    // Slot 1 in lap 0 is not available yet; slot 0 in lap 1 (the old lap) is
    // not available to a device that is in lap 0.
    assert_eq!(
        d.walk(d.next, Direction::DeviceReads, false, &mut segs),
        PackedWalk::Empty
    );
    assert_eq!(
        d.walk(
            Pos {
                slot: 2,
                wrap: false
            },
            Direction::DeviceReads,
            false,
            &mut segs
        ),
        PackedWalk::Empty
    );
}

#[test]
fn indirect_table_is_walked_in_order() {
    let mut d = Driver::new(QSIZE);
    let len = d.table(&[
        (BUF, 12, DESC_F_WRITE | DESC_F_NEXT),
        (BUF + 0x40, 100, DESC_F_WRITE),
        (BUF + 0x100, 8, DESC_F_WRITE),
    ]);
    let at = d.chain(&[(TABLE, len, DESC_F_INDIRECT)], 4, None);
    let mut segs = Vec::new();
    let w = d.walk(at, Direction::DeviceWrites, true, &mut segs);
    assert_eq!(
        w,
        PackedWalk::Chain {
            id: 4,
            slots: 1,
            total: Ok(120)
        }
    );
    assert_eq!(segs.len(), 3);
    assert_eq!((segs[2].ptr, segs[2].len), (d.host(BUF + 0x100), 8));
}

#[test]
fn malformed_chains_are_dropped_whole() {
    let mut d = Driver::new(QSIZE);
    let mut segs = vec![Segment {
        ptr: std::ptr::null_mut(),
        len: 7,
    }];
    let rd = Direction::DeviceReads;
    let wr = Direction::DeviceWrites;
    // Buffer outside guest memory in the middle: the end is still found.
    let at = d.chain(&[(BUF, 10, 0), (MEM - 4, 10, 0), (BUF, 10, 0)], 1, None);
    assert_eq!(
        chain_err(d.walk(at, rd, false, &mut segs)),
        (3, DropReason::AddressOutOfRange)
    );
    // Wrong direction either way.
    let at = d.chain(&[(BUF, 10, 0), (BUF, 10, DESC_F_WRITE)], 2, None);
    assert_eq!(
        chain_err(d.walk(at, rd, false, &mut segs)),
        (2, DropReason::WriteOnlyOnTx)
    );
    let at = d.chain(&[(BUF, 10, 0)], 3, None);
    assert_eq!(
        chain_err(d.walk(at, wr, false, &mut segs)),
        (1, DropReason::ReadOnlyOnRx)
    );
    // Indirect: not negotiated, with NEXT, after a direct descriptor.
    let len = d.table(&[(BUF, 10, 0)]);
    let at = d.chain(&[(TABLE, len, DESC_F_INDIRECT)], 4, None);
    assert_eq!(
        chain_err(d.walk(at, rd, false, &mut segs)),
        (1, DropReason::BadIndirect)
    );
    let at = d.chain(&[(TABLE, len, DESC_F_INDIRECT), (BUF, 10, 0)], 5, None);
    assert_eq!(
        chain_err(d.walk(at, rd, true, &mut segs)),
        (2, DropReason::BadIndirect)
    );
    let at = d.chain(&[(BUF, 10, 0), (TABLE, len, DESC_F_INDIRECT)], 6, None);
    assert_eq!(
        chain_err(d.walk(at, rd, true, &mut segs)),
        (2, DropReason::BadIndirect)
    );
    // Bad table lengths, a table outside memory, an indirect inside indirect,
    // a wrong direction inside the table.
    for (addr, len) in [(TABLE, 0), (TABLE, 24)] {
        let at = d.chain(&[(addr, len, DESC_F_INDIRECT)], 7, None);
        assert_eq!(
            chain_err(d.walk(at, rd, true, &mut segs)),
            (1, DropReason::BadIndirect)
        );
    }
    let too_many = 16 * (MAX_CHAIN_DESCS + 1);
    let at = d.chain(&[(TABLE, too_many, DESC_F_INDIRECT)], 7, None);
    assert_eq!(
        chain_err(d.walk(at, rd, true, &mut segs)),
        (1, DropReason::ChainTooLong)
    );
    let at = d.chain(&[(MEM - 16, 32, DESC_F_INDIRECT)], 8, None);
    assert_eq!(
        chain_err(d.walk(at, rd, true, &mut segs)),
        (1, DropReason::AddressOutOfRange)
    );
    let len = d.table(&[(BUF, 10, 0), (TABLE, 16, DESC_F_INDIRECT)]);
    let at = d.chain(&[(TABLE, len, DESC_F_INDIRECT)], 9, None);
    assert_eq!(
        chain_err(d.walk(at, rd, true, &mut segs)),
        (1, DropReason::BadIndirect)
    );
    let len = d.table(&[(BUF, 10, 0), (BUF, 10, DESC_F_WRITE)]);
    let at = d.chain(&[(TABLE, len, DESC_F_INDIRECT)], 10, None);
    assert_eq!(
        chain_err(d.walk(at, rd, true, &mut segs)),
        (1, DropReason::WriteOnlyOnTx)
    );
    // Nothing of the dropped chains stayed in the scratch vector.
    assert_eq!(segs.len(), 1);
}

#[test]
fn chain_longer_than_the_ring_breaks_it() {
    let mut d = Driver::new(4);
    // Four slots all with NEXT: the last one's NEXT points past the ring.
    let at = d.next;
    for i in 0..4u16 {
        let gpa = RING + 16 * u64::from(i);
        d.put(gpa, BUF, 10, 0, DESC_F_NEXT | vp::avail_bits(true));
    }
    d.next = d.next.advance(4, 4);
    let mut segs = Vec::new();
    assert_eq!(
        d.walk(at, Direction::DeviceReads, false, &mut segs),
        PackedWalk::Broken(DropReason::ChainTooLong)
    );
    assert!(segs.is_empty());
    // A full ring as one legal chain is fine.
    let mut d = Driver::new(4);
    let at = d.chain(&[(BUF, 1, 0); 4], 3, None);
    assert_eq!(
        d.walk(at, Direction::DeviceReads, false, &mut segs),
        PackedWalk::Chain {
            id: 3,
            slots: 4,
            total: Ok(4)
        }
    );
}

#[test]
fn unavailable_descriptor_mid_chain_breaks_the_ring() {
    let mut d = Driver::new(QSIZE);
    let at = d.chain(&[(BUF, 10, 0), (BUF, 10, 0), (BUF, 10, 0)], 1, None);
    // Take the middle one back: its flags say "previous lap".
    d.w16(RING + 16 + 14, vp::avail_bits(false));
    let mut segs = Vec::new();
    assert_eq!(
        d.walk(at, Direction::DeviceReads, false, &mut segs),
        PackedWalk::Broken(DropReason::BadAvailIndex)
    );
    assert!(segs.is_empty());
}

#[test]
fn used_batch_is_published_by_its_first_descriptor() {
    let mut d = Driver::new(4);
    for i in 0..4 {
        d.chain(&[(BUF, 10, 0)], 10 + i, None);
    }
    // Complete slots 2, 3 (lap 1) and 0 (lap 0) as one batch starting at 2.
    let first = Pos {
        slot: 2,
        wrap: true,
    };
    d.view.put_used(first, 12, 100, true);
    d.view.put_used(first.advance(1, 4), 13, 200, false);
    d.view.put_used(first.advance(2, 4), 10, 300, false);
    assert!(!vp::is_used(d.used(2).2, true), "held back until publish");
    assert!(vp::is_used(d.used(3).2, true));
    assert!(vp::is_used(d.used(0).2, false));
    d.view.publish_used(first);
    assert_eq!(d.used(2), (100, 12, vp::used_bits(true)));
    assert_eq!(d.used(3), (200, 13, vp::used_bits(true)));
    assert_eq!(d.used(0), (300, 10, vp::used_bits(false)));
}

#[test]
fn interrupt_suppression() {
    let d = Driver::new(8);
    let old = Pos {
        slot: 6,
        wrap: true,
    };
    let new = Pos {
        slot: 1,
        wrap: false,
    };
    for event_idx in [false, true] {
        d.set_driver_event(EVENT_F_DISABLE, 0);
        assert!(!d.view.needs_interrupt(event_idx, old, new));
        d.set_driver_event(EVENT_F_ENABLE, 0);
        assert!(d.view.needs_interrupt(event_idx, old, new));
        assert!(
            !d.view.needs_interrupt(event_idx, new, new),
            "nothing moved"
        );
    }
    // DESC: slot 7 of lap 1 and slot 0 of lap 0 were crossed, slot 1 was not.
    for (off_wrap, want) in [
        (vp::off_wrap(7, true), true),
        (vp::off_wrap(0, false), true),
        (vp::off_wrap(1, false), false),
        (vp::off_wrap(5, true), false),
    ] {
        d.set_driver_event(EVENT_F_DESC, off_wrap);
        assert_eq!(
            d.view.needs_interrupt(true, old, new),
            want,
            "{off_wrap:#x}"
        );
    }
    // DESC without EVENT_IDX is not something to decode: interrupt.
    d.set_driver_event(EVENT_F_DESC, vp::off_wrap(5, true));
    assert!(d.view.needs_interrupt(false, old, new));
}

#[test]
fn kick_suppression() {
    let d = Driver::new(8);
    let at = Pos {
        slot: 3,
        wrap: false,
    };
    d.view.set_kicks(true, true, at);
    assert_eq!(d.device_event(), (EVENT_F_DESC, 3));
    d.view.set_kicks(true, false, at);
    assert_eq!(d.device_event().0, EVENT_F_DISABLE);
    d.view.set_kicks(
        false,
        true,
        Pos {
            slot: 5,
            wrap: true,
        },
    );
    assert_eq!(d.device_event().0, EVENT_F_ENABLE);
}

#[test]
fn engine_sees_new_work_and_backlog_on_a_packed_ring() {
    use super::any_ring::GuestRing;
    let mut d = Driver::new(QSIZE);
    let ring = GuestRing::new(&d.map, addrs(QSIZE), true).unwrap();
    let seen = Pos::START.to_base();
    assert!(!ring.has_new(seen));
    assert_eq!(ring.backlog(seen), 0);
    d.chain(&[(BUF, 1, 0)], 0, None);
    assert!(ring.has_new(seen));
    assert_eq!(ring.backlog(seen), 1, "a lower bound from the probes");
    for _ in 0..4 {
        d.chain(&[(BUF, 1, 0)], 0, None);
    }
    assert_eq!(ring.backlog(seen), QSIZE / 4 + 1);
    while d.next.slot != 0 {
        d.chain(&[(BUF, 1, 0)], 0, None);
    }
    assert_eq!(ring.backlog(seen), QSIZE, "full");
    // A position off the ring is no work, never a read past it.
    let off = Pos {
        slot: QSIZE,
        wrap: true,
    }
    .to_base();
    assert!(!ring.has_new(off));
    assert_eq!(ring.backlog(off), 0);
    // Kicks: the device event area follows set_kicks for either layout.
    ring.set_kicks(true, true, vp::off_wrap(3, false));
    assert_eq!(d.device_event(), (EVENT_F_DESC, 3));
}

// The data path (packed_tx / packed_rx) over this driver's rings.

pub(super) mod data_path {
    use virtio_queue::{Queue, QueueT};

    use super::super::features::{self, VNET_HDR_LEN};
    use super::super::packed_rx;
    use super::super::packed_tx;
    use super::super::tests::{
        all_features, frame_bytes, hdr, packet, push_frame, setup, TestPath,
    };
    use super::*;
    use crate::packet::Offload;
    use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

    /// A queue at `at` of a packed ring, nothing in flight.
    fn queue_at(at: Pos) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_next_avail(at.to_base());
        q.set_next_used(at.to_base());
        q
    }

    fn queue() -> Queue {
        queue_at(Pos::START)
    }

    impl Driver {
        fn buffer(&self, at: u64, bytes: &[u8]) -> u64 {
            self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
            at
        }

        fn tx(&self, q: &mut Queue, dp: &mut TestPath) -> (usize, bool) {
            let TestPath { dp, to_switch } = dp;
            packed_tx::drain(q, &self.view, &self.map, 64, dp, to_switch)
        }

        fn rx(&self, q: &mut Queue, dp: &mut TestPath) -> (usize, bool) {
            packed_rx::fill(q, &self.view, &self.map, 64, dp)
        }
    }

    /// Sends `bytes` (virtio-net header included) as one chain through
    /// packed TX; returns the chains consumed.
    pub(in crate::vnic) fn tx_one(dp: &mut TestPath, bytes: &[u8]) -> usize {
        let mut d = Driver::new(QSIZE);
        let mut q = queue();
        let a = d.buffer(BUF, bytes);
        d.chain(&[(a, bytes.len() as u32, 0)], 0, None);
        d.tx(&mut q, dp).0
    }

    #[test]
    fn tx_chains_become_frames_and_used_descriptors() {
        let mut d = Driver::new(QSIZE);
        let (pool, mut dp, mut sw) = setup(all_features());
        d.set_driver_event(EVENT_F_ENABLE, 0);
        // Start near the end of the ring so the batch wraps.
        for _ in 0..14 {
            d.chain(&[(BUF, 1, 0)], 0, None);
        }
        let mut q = queue_at(d.next);
        let start = d.next;
        let p1 = packet(60, 1);
        let a = d.buffer(BUF, &[hdr(&Offload::default(), 0), p1.clone()].concat());
        d.chain(&[(a, 72, 0)], 7, None);
        let p2 = packet(1514, 2);
        let h = d.buffer(BUF + 0x1000, &hdr(&Offload::default(), 0));
        let b1 = d.buffer(BUF + 0x2000, &p2[..1000]);
        let b2 = d.buffer(BUF + 0x3000, &p2[1000..]);
        d.chain(&[(h, 12, 0), (b1, 1000, 0), (b2, 514, 0)], 3, None);
        let p3 = packet(200, 3);
        let ih = d.buffer(BUF + 0x4000, &hdr(&Offload::default(), 0));
        let id = d.buffer(BUF + 0x5000, &p3);
        let len = d.table(&[(ih, 12, 0), (id, 200, 0)]);
        d.chain(&[(TABLE, len, DESC_F_INDIRECT)], 9, None);
        let (n, irq) = d.tx(&mut q, &mut dp);
        assert_eq!((n, irq), (3, true));
        // Used descriptors where each chain began: slots 14, 15 (lap 1), 2 (lap 0).
        assert_eq!(d.used(14), (0, 7, vp::used_bits(true)));
        assert_eq!(d.used(15), (0, 3, vp::used_bits(true)));
        assert_eq!(d.used(2), (0, 9, vp::used_bits(false)));
        assert_eq!(Pos::from_base(q.next_avail()), start.advance(5, QSIZE));
        assert_eq!(q.next_used(), q.next_avail());
        assert!(!vp::is_used(d.used(3).2, false), "slots 3, 4 are not used");
        for want in [&p1, &p2, &p3] {
            let f = sw.from_guest.pop().unwrap();
            assert_eq!(&frame_bytes(&pool, &f), want);
            dp.cache.free(f);
        }
        assert_eq!(dp.counters.total_drops(), 0);
        // Nothing more; DISABLE suppresses the interrupt of the next batch.
        assert_eq!(d.tx(&mut q, &mut dp), (0, false));
        d.set_driver_event(EVENT_F_DISABLE, 0);
        d.chain(&[(a, 72, 0)], 1, None);
        assert_eq!(d.tx(&mut q, &mut dp), (1, false));
        dp.cache.free(sw.from_guest.pop().unwrap());
    }

    #[test]
    fn tx_malformed_chains_are_returned_and_counted_and_a_broken_ring_stops() {
        let mut d = Driver::new(QSIZE);
        let mut q = queue();
        let (pool, mut dp, mut sw) = setup(all_features() & !(1 << VIRTIO_RING_F_INDIRECT_DESC));
        let good = packet(60, 9);
        let ok = d.buffer(BUF, &[hdr(&Offload::default(), 0), good.clone()].concat());
        let cases: Vec<(DropReason, Vec<RawDesc3>)> = vec![
            (DropReason::AddressOutOfRange, vec![(MEM + 0x1000, 72, 0)]),
            (
                DropReason::AddressOutOfRange,
                vec![(ok, 12, 0), (MEM - 10, 60, 0)],
            ),
            (DropReason::WriteOnlyOnTx, vec![(ok, 72, DESC_F_WRITE)]),
            (DropReason::TooShort, vec![(ok, 20, 0)]),
            (DropReason::BadIndirect, vec![(TABLE, 32, DESC_F_INDIRECT)]),
        ];
        let mut slots = 0;
        for (i, (_, descs)) in cases.iter().enumerate() {
            d.chain(descs, i as u16, None);
            d.chain(&[(ok, 72, 0)], 100 + i as u16, None);
            slots += descs.len() as u16 + 1;
        }
        let (n, _) = d.tx(&mut q, &mut dp);
        assert_eq!(n, 2 * cases.len());
        for (reason, _) in &cases {
            assert!(dp.counters.dropped(*reason) >= 1, "{reason:?} not counted");
        }
        assert_eq!(dp.counters.total_drops(), cases.len() as u64);
        assert_eq!(
            Pos::from_base(q.next_avail()),
            Pos::START.advance(slots, QSIZE)
        );
        let mut frames = 0;
        while let Some(f) = sw.from_guest.pop() {
            assert_eq!(frame_bytes(&pool, &f), good);
            dp.cache.free(f);
            frames += 1;
        }
        assert_eq!(frames, cases.len(), "every good chain still went through");
        assert!(!dp.ring_corrupt);
        // A good chain, then one whose middle is not available: the good one
        // goes out, the ring is declared corrupt.
        let at = d.next;
        d.chain(&[(ok, 72, 0)], 1, None);
        let broken = d.chain(&[(ok, 12, 0), (ok, 60, 0)], 2, None);
        let mid = broken.advance(1, QSIZE);
        d.w16(
            RING + 16 * u64::from(mid.slot) + 14,
            vp::avail_bits(!mid.wrap),
        );
        assert_eq!(d.tx(&mut q, &mut dp).0, 1);
        assert!(dp.ring_corrupt);
        assert_eq!(dp.counters.dropped(DropReason::BadAvailIndex), 1);
        assert_eq!(Pos::from_base(q.next_avail()), at.advance(1, QSIZE));
        dp.cache.free(sw.from_guest.pop().unwrap());
    }

    #[test]
    fn tx_in_order_returns_a_batch_with_one_used_descriptor() {
        let mut d = Driver::new(QSIZE);
        let mut q = queue();
        let (_pool, mut dp, mut sw) = setup(features::offered(1));
        assert!(dp.features.in_order);
        let p = packet(60, 1);
        let a = d.buffer(BUF, &[hdr(&Offload::default(), 0), p.clone()].concat());
        let h = d.buffer(BUF + 0x1000, &hdr(&Offload::default(), 0));
        let b = d.buffer(BUF + 0x2000, &p);
        d.chain(&[(a, 72, 0)], 4, None);
        d.chain(&[(h, 12, 0), (b, 60, 0)], 5, None);
        d.chain(&[(a, 72, 0)], 6, None);
        assert_eq!(d.tx(&mut q, &mut dp).0, 3);
        // One used descriptor, at the batch's first slot, naming its last buffer.
        assert_eq!(d.used(0), (0, 6, vp::used_bits(true)));
        for slot in 1..4 {
            assert!(!vp::is_used(d.used(slot).2, true), "slot {slot}");
        }
        assert_eq!(Pos::from_base(q.next_used()), Pos::START.advance(4, QSIZE));
        assert_eq!(q.next_used(), q.next_avail());
        while let Some(f) = sw.from_guest.pop() {
            dp.cache.free(f);
        }
    }

    #[test]
    fn a_base_past_the_ring_is_refused() {
        let d = Driver::new(QSIZE);
        let (_pool, mut dp, _sw) = setup(all_features());
        let past = Pos {
            slot: QSIZE,
            wrap: true,
        }
        .to_base();
        for avail_side in [true, false] {
            let mut q = queue();
            if avail_side {
                q.set_next_avail(past);
            } else {
                q.set_next_used(past);
            }
            assert_eq!(d.tx(&mut q, &mut dp), (0, false));
            assert!(dp.ring_corrupt);
            dp.ring_corrupt = false;
            assert_eq!(d.rx(&mut q, &mut dp), (0, false));
            assert!(dp.ring_corrupt);
            dp.ring_corrupt = false;
        }
        assert_eq!(dp.counters.dropped(DropReason::BadAvailIndex), 4);
    }

    #[test]
    fn rx_with_and_without_mrg_rxbuf() {
        for mrg in [true, false] {
            let mut d = Driver::new(QSIZE);
            let mut q = queue();
            let feats = if mrg {
                all_features()
            } else {
                all_features() & !(1 << VIRTIO_NET_F_MRG_RXBUF)
            };
            let (pool, mut dp, mut sw) = setup(feats);
            let p = packet(3000, 4);
            push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
            let (n_bufs, len) = if mrg { (4, 1024) } else { (1, 4096) };
            let bufs: Vec<u64> = (0..n_bufs).map(|i| BUF + 0x2000 * i).collect();
            for (i, b) in bufs.iter().enumerate() {
                d.chain(&[(*b, len, DESC_F_WRITE)], 20 + i as u16, None);
            }
            let (n, _) = d.rx(&mut q, &mut dp);
            assert_eq!(n, 1, "mrg={mrg}");
            let used = if mrg { 3 } else { 1 };
            let mut got = Vec::new();
            for i in 0..used {
                let (l, id, flags) = d.used(i);
                assert_eq!((id, flags), (20 + i, vp::used_bits(true)));
                let mut b = vec![0u8; l as usize];
                d.mem
                    .read_slice(&mut b, GuestAddress(bufs[i as usize]))
                    .unwrap();
                got.extend(b);
            }
            assert!(
                !vp::is_used(d.used(used).2, true),
                "only {used} buffers used"
            );
            assert_eq!(u16::from_le_bytes([got[10], got[11]]), used, "num_buffers");
            assert_eq!(&got[VNET_HDR_LEN..], &p[..]);
            assert_eq!(
                Pos::from_base(q.next_avail()),
                Pos::START.advance(used, QSIZE)
            );
            assert_eq!(dp.counters.rx_packets, 1);
        }
    }

    #[test]
    fn rx_waits_for_buffers_and_returns_bad_ones() {
        let mut d = Driver::new(QSIZE);
        let mut q = queue();
        let (pool, mut dp, mut sw) = setup(all_features() & !(1 << VIRTIO_NET_F_MRG_RXBUF));
        let p = packet(1000, 5);
        push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
        assert_eq!(
            d.rx(&mut q, &mut dp),
            (0, false),
            "no buffer: the frame waits"
        );
        assert!(!dp.from_switch.is_empty());
        // A read-only buffer, then one too small: each is returned with
        // length 0 and costs its frame.
        d.chain(&[(BUF, 4096, 0)], 1, None);
        d.chain(&[(BUF, 100, DESC_F_WRITE)], 2, None);
        push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
        assert_eq!(d.rx(&mut q, &mut dp).0, 2);
        assert_eq!(d.used(0), (0, 1, vp::used_bits(true)));
        assert_eq!(d.used(1), (0, 2, vp::used_bits(true)));
        assert_eq!(dp.counters.dropped(DropReason::ReadOnlyOnRx), 1);
        assert_eq!(dp.counters.dropped(DropReason::RxBufferTooSmall), 1);
        assert_eq!(dp.counters.rx_packets, 0);
    }

    /// A table of `n` copies of `entry` at `at`, as the driver writes
    /// indirect tables: (its address, its length).
    fn table_of(d: &Driver, at: u64, entry: RawDesc3, n: u32) -> (u64, u32) {
        let (addr, len, flags) = entry;
        for i in 0..u64::from(n) {
            d.put(at + 16 * i, addr, len, 0, flags);
        }
        (at, 16 * n)
    }

    #[test]
    fn tx_batch_walks_a_bounded_number_of_descriptors() {
        let mut d = Driver::new(QSIZE);
        let mut q = queue();
        let (_pool, mut dp, _sw) = setup(all_features());
        // Chains of the longest tables allowed, all zero-length entries.
        let (t, len) = table_of(&d, TABLE, (BUF, 0, 0), MAX_CHAIN_DESCS);
        for i in 0..QSIZE {
            d.chain(&[(t, len, DESC_F_INDIRECT)], i, None);
        }
        let (n, _) = d.tx(&mut q, &mut dp);
        let budget = super::super::data_path::desc_budget(64) as usize;
        let chains = budget.div_ceil(MAX_CHAIN_DESCS as usize + 1);
        assert!(
            n <= chains,
            "{n} chains of {MAX_CHAIN_DESCS} walked in one poll"
        );
        assert_eq!(dp.counters.dropped(DropReason::TooShort), n as u64);
        let mut total = n;
        while total < usize::from(QSIZE) {
            let (n, _) = d.tx(&mut q, &mut dp);
            assert!(n > 0);
            total += n;
        }
    }

    #[test]
    fn tx_chain_of_more_descriptors_than_a_frame_may_have_is_dropped() {
        let mut d = Driver::new(QSIZE);
        let mut q = queue();
        let (pool, mut dp, mut sw) = setup(all_features());
        let p = packet(60, 3);
        let a = d.buffer(BUF, &[hdr(&Offload::default(), 0), p.clone()].concat());
        // The frame, then zero-length entries up to one past the cap; the
        // same at exactly the cap passes.
        for (at, n) in [
            (TABLE, MAX_CHAIN_DESCS + 1),
            (TABLE + 0x2000, MAX_CHAIN_DESCS),
        ] {
            let (t, len) = table_of(&d, at, (a, 0, 0), n);
            d.put(t, a, 72, 0, 0);
            d.chain(&[(t, len, DESC_F_INDIRECT)], 1, None);
        }
        assert_eq!(d.tx(&mut q, &mut dp).0, 2);
        assert_eq!(dp.counters.dropped(DropReason::ChainTooLong), 1);
        assert_eq!(dp.counters.total_drops(), 1);
        let f = sw.from_guest.pop().unwrap();
        assert_eq!(frame_bytes(&pool, &f), p);
        dp.cache.free(f);
    }

    #[test]
    fn rx_zero_length_buffers_are_returned_and_counted_not_walked_again() {
        for mrg in [true, false] {
            let mut d = Driver::new(QSIZE);
            let mut q = queue();
            let feats = if mrg {
                all_features()
            } else {
                all_features() & !(1 << VIRTIO_NET_F_MRG_RXBUF)
            };
            let (pool, mut dp, mut sw) = setup(feats);
            d.chain(&[(BUF, 0, DESC_F_WRITE)], 1, None);
            d.chain(&[(BUF, 0, DESC_F_WRITE), (BUF, 0, DESC_F_WRITE)], 2, None);
            d.chain(&[(BUF, 2048, DESC_F_WRITE)], 3, None);
            let p = packet(500, 6);
            for _ in 0..3 {
                push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
            }
            assert_eq!(d.rx(&mut q, &mut dp).0, 3, "mrg={mrg}");
            assert_eq!(d.used(0), (0, 1, vp::used_bits(true)));
            assert_eq!(d.used(1), (0, 2, vp::used_bits(true)));
            assert_eq!(d.used(3), (512, 3, vp::used_bits(true)));
            assert_eq!(dp.counters.dropped(DropReason::ZeroLengthBuffer), 2);
            assert_eq!(dp.counters.rx_packets, 1);
        }
    }

    #[test]
    fn rx_frame_and_batch_walk_a_bounded_number_of_descriptors() {
        let mut d = Driver::new(QSIZE);
        let mut q = queue();
        let (pool, mut dp, mut sw) = setup(all_features());
        // Each buffer is an indirect table of 200 one-byte descriptors.
        let (t, len) = table_of(&d, TABLE, (BUF, 1, DESC_F_WRITE), 200);
        for i in 0..QSIZE {
            d.chain(&[(t, len, DESC_F_INDIRECT)], i, None);
        }
        push_frame(
            &pool,
            &mut dp,
            &mut sw,
            &packet(3000, 1),
            Offload::default(),
        );
        assert_eq!(d.rx(&mut q, &mut dp).0, 1);
        assert_eq!(dp.counters.rx_packets, 0);
        assert_eq!(dp.counters.dropped(DropReason::RxBufferTooSmall), 1);
        let returned = Pos::from_base(q.next_avail()).slot;
        assert!(
            u32::from(returned) * 201 <= 2 * MAX_CHAIN_DESCS,
            "{returned} buffers walked for one frame"
        );
        for _ in 0..16 {
            push_frame(&pool, &mut dp, &mut sw, &packet(100, 2), Offload::default());
        }
        let (n, _) = d.rx(&mut q, &mut dp);
        let budget = super::super::data_path::desc_budget(64) as usize;
        assert!(n <= budget.div_ceil(201), "{n} frames of 201 descriptors");
        assert_eq!(dp.counters.rx_packets, n as u64);
    }
}
