//! Tier-1 tests of the vNIC data path against `virtio_queue`'s mock driver:
//! every ring path with and without MRG_RXBUF and EVENT_IDX, indirect
//! descriptors, and each kind of malformed chain.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor as SplitDesc;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::data_path::DataPath;
use super::features::{self, Negotiated, VNET_HDR_LEN};
use super::guest_memory::GuestMap;
use super::guest_ring::{
    RingAddrs, RingView, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use super::stats::DropReason;
use super::{guest_rx, guest_tx};
use crate::packet::segment::tests as seg;
use crate::packet::segment::{Ip, L4};
use crate::packet::{link, FrameHandle, FramePool, LinkRx, LinkTx, Offload, PoolConfig};
use snapnet_wire::virtio_net;

const QSIZE: u16 = 16;
/// (address, length, flags, explicit next).
type RawDesc4 = (u64, u32, u16, Option<u16>);
const MEM: u64 = 0x40_0000;
const BUF: u64 = 0x10_0000;
const USED: u64 = 0x1000;

pub(super) struct Guest<'a> {
    mem: &'a GuestMemoryMmap,
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    pub(super) queue: Queue,
    map: GuestMap,
    view: RingView,
    avail: u16,
    next_desc: u16,
    next_buf: u64,
}

impl<'a> Guest<'a> {
    pub(super) fn new(mem: &'a GuestMemoryMmap, arc: &Arc<GuestMemoryMmap>) -> Self {
        let mock = MockSplitQueue::new(mem, QSIZE);
        let mut queue: Queue = mock.create_queue().unwrap();
        // The mock places its used ring over the tail of its avail ring (it
        // adds the avail entry count, not bytes); use a used ring of our own.
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        let map = GuestMap::new(arc.clone());
        let addrs = RingAddrs {
            desc: queue.desc_table(),
            avail: queue.avail_ring(),
            used: queue.used_ring(),
            size: queue.size(),
        };
        let view = RingView::new(&map, addrs).unwrap();
        Guest {
            mem,
            mock,
            queue,
            map,
            view,
            avail: 0,
            next_desc: 0,
            next_buf: BUF,
        }
    }

    /// A fresh guest buffer holding `bytes` (or zeroes of `len`).
    pub(super) fn buffer(&mut self, bytes: &[u8], len: u32) -> u64 {
        let addr = self.next_buf;
        self.next_buf += u64::from(len).max(bytes.len() as u64).next_multiple_of(64);
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// Writes raw descriptors at the next table slots and publishes the
    /// first one; returns its index.
    pub(super) fn publish(&mut self, descs: &[RawDesc4]) -> u16 {
        let base = self.next_desc;
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            let idx = base + i as u16;
            let (flags, next) = match next {
                Some(n) => (*flags | VIRTQ_DESC_F_NEXT, *n),
                None if i + 1 < descs.len() => (*flags | VIRTQ_DESC_F_NEXT, idx + 1),
                None => (*flags, 0),
            };
            self.mock
                .desc_table()
                .store(
                    idx,
                    RawDescriptor::from(SplitDesc::new(*addr, *len, flags, next)),
                )
                .unwrap();
        }
        self.next_desc += descs.len() as u16;
        self.publish_head(base);
        base
    }

    fn publish_head(&mut self, head: u16) {
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(self.avail % QSIZE))
            .unwrap()
            .store(head);
        self.avail = self.avail.wrapping_add(1);
        self.mock.avail().idx().store(self.avail);
    }

    fn used(&self, i: u16) -> (u32, u32) {
        let at = USED + 4 + 8 * u64::from(i % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }

    pub(super) fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    fn set_used_event(&self, v: u16) {
        let at = self.queue.avail_ring() + 4 + 2 * u64::from(QSIZE);
        self.mem.write_obj(v, GuestAddress(at)).unwrap();
    }

    fn set_avail_flags(&self, v: u16) {
        self.mem
            .write_obj(v, GuestAddress(self.queue.avail_ring()))
            .unwrap();
    }

    pub(super) fn tx(&mut self, dp: &mut TestPath) -> (usize, bool) {
        let TestPath { dp, to_switch } = dp;
        guest_tx::drain(&mut self.queue, &self.view, &self.map, 64, dp, to_switch)
    }

    fn rx(&mut self, dp: &mut TestPath) -> (usize, bool) {
        guest_rx::fill(&mut self.queue, &self.view, &self.map, 64, dp)
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// The per-packet state with the link toward the switch that its engine
/// lends each TX batch beside it (as `VnicEngine` does).
pub(super) struct TestPath {
    pub(super) dp: DataPath,
    pub(super) to_switch: LinkTx,
}

impl std::ops::Deref for TestPath {
    type Target = DataPath;
    fn deref(&self) -> &DataPath {
        &self.dp
    }
}

impl std::ops::DerefMut for TestPath {
    fn deref_mut(&mut self) -> &mut DataPath {
        &mut self.dp
    }
}

pub(super) struct Switch {
    pub(super) from_guest: LinkRx,
    pub(super) to_guest: LinkTx,
}

pub(super) fn setup(features: u64) -> (Arc<FramePool>, TestPath, Switch) {
    let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let (to_switch, from_guest) = link(64).unwrap();
    let (to_guest, from_switch) = link(64).unwrap();
    let mut dp = TestPath {
        dp: DataPath::new("test", &pool, 1500, guard(), from_switch),
        to_switch,
    };
    dp.features = Negotiated::from_bits(features);
    (
        pool,
        dp,
        Switch {
            from_guest,
            to_guest,
        },
    )
}

pub(super) fn memory() -> (GuestMemoryMmap, Arc<GuestMemoryMmap>) {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    (m.clone(), Arc::new(m))
}

pub(super) fn packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    p[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    p[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    p
}

pub(super) fn hdr(o: &Offload, num_buffers: u16) -> Vec<u8> {
    let mut h = vec![0u8; VNET_HDR_LEN];
    virtio_net::write(&mut h, o, num_buffers);
    h
}

/// A TCP super-frame from the test guest (`packet()`'s source MAC) with
/// `payload` bytes, and the header Linux sends with it.
pub(super) fn tso_frame(ip: Ip, payload: usize, gso_size: u16) -> (Vec<u8>, Offload) {
    gso_frame(ip, L4::Tcp, payload, gso_size)
}

/// A TCP or UDP super-frame from the test guest and the header for it.
pub(super) fn gso_frame(ip: Ip, l4: L4, payload: usize, gso_size: u16) -> (Vec<u8>, Offload) {
    let s = seg::spec(ip, l4, payload);
    let mut b = seg::super_bytes(&s);
    b[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    let o = Offload {
        hdr_len: s.header_len() as u16,
        ..seg::gso_offload(&s, gso_size)
    };
    (b, o)
}

/// Everything offered except IN_ORDER: the test driver hands out
/// descriptors in any order (in-order tests add it back).
pub(super) fn all_features() -> u64 {
    features::offered(1) & !(1u64 << VIRTIO_F_IN_ORDER)
}

pub(super) fn without(bits: &[u32]) -> u64 {
    bits.iter().fold(all_features(), |f, b| f & !(1u64 << b))
}

use virtio_bindings::virtio_config::VIRTIO_F_IN_ORDER;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

pub(super) fn frame_bytes(pool: &FramePool, f: &FrameHandle) -> Vec<u8> {
    pool.bytes(f).to_vec()
}

#[test]
fn tx_one_descriptor_split_header_and_indirect_all_arrive_byte_exact() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(all_features());
    let off = Offload {
        flags: 1,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    // Header and packet in one buffer.
    let p1 = packet(60, 1);
    let a = g.buffer(&[hdr(&off, 0), p1.clone()].concat(), 0);
    g.publish(&[(a, 72, 0, None)]);
    // Header in its own descriptor, packet split over two.
    let p2 = packet(1514, 2);
    let h = g.buffer(&hdr(&Offload::default(), 0), 0);
    let d1 = g.buffer(&p2[..1000], 0);
    let d2 = g.buffer(&p2[1000..], 0);
    g.publish(&[(h, 12, 0, None), (d1, 1000, 0, None), (d2, 514, 0, None)]);
    // Indirect table of two descriptors.
    let p3 = packet(200, 3);
    let ih = g.buffer(&hdr(&Offload::default(), 0), 0);
    let id = g.buffer(&p3, 0);
    let mut table = Vec::new();
    for (addr, len, flags, next) in [(ih, 12u32, VIRTQ_DESC_F_NEXT, 1u16), (id, 200, 0, 0)] {
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&flags.to_le_bytes());
        table.extend_from_slice(&next.to_le_bytes());
    }
    let t = g.buffer(&table, 0);
    g.publish(&[(t, 32, VIRTQ_DESC_F_INDIRECT, None)]);

    let (n, _) = g.tx(&mut dp);
    assert_eq!(n, 3);
    assert_eq!(g.used_idx(), 3);
    for (i, head) in [0u32, 1, 4].iter().enumerate() {
        assert_eq!(g.used(i as u16), (*head, 0));
    }
    for (want, want_off) in [
        (&p1, off),
        (&p2, Offload::default()),
        (&p3, Offload::default()),
    ] {
        let f = sw.from_guest.pop().unwrap();
        assert_eq!(&frame_bytes(&pool, &f), want);
        assert_eq!(f.offload, want_off);
        dp.cache.free(f);
    }
    assert_eq!(dp.counters.tx_packets, 3);
    assert_eq!(dp.counters.total_drops(), 0);
}

#[test]
fn tx_in_order_returns_a_batch_with_its_last_used_entry_only() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(all_features() | 1 << VIRTIO_F_IN_ORDER);
    let p = packet(60, 5);
    let mut heads = Vec::new();
    for _ in 0..3 {
        let b = g.buffer(&[hdr(&Offload::default(), 0), p.clone()].concat(), 0);
        heads.push(g.publish(&[(b, 72, 0, None)]));
    }
    // A sentinel in every used slot shows which ones the device wrote.
    for i in 0..QSIZE {
        let at = USED + 4 + 8 * u64::from(i);
        mem.write_obj(0xdead_u32, GuestAddress(at)).unwrap();
        mem.write_obj(0xbeef_u32, GuestAddress(at + 4)).unwrap();
    }
    let (n, _) = g.tx(&mut dp);
    assert_eq!(n, 3);
    assert_eq!(g.used_idx(), 3, "the index covers the whole batch");
    assert_eq!(
        g.used(2),
        (u32::from(heads[2]), 0),
        "the last entry names the last chain"
    );
    assert_eq!(
        g.used(0),
        (0xdead, 0xbeef),
        "earlier entries are left alone"
    );
    assert_eq!(g.used(1), (0xdead, 0xbeef));
    assert_eq!(sw.from_guest.len(), 3);
    while let Some(f) = sw.from_guest.pop() {
        assert_eq!(frame_bytes(&pool, &f), p);
        dp.cache.free(f);
    }
}

#[test]
fn tx_malformed_chains_return_with_zero_length_are_counted_and_serving_goes_on() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(all_features() & !(1 << VIRTIO_RING_F_INDIRECT_DESC));
    let good = packet(60, 9);
    let ok = g.buffer(&[hdr(&Offload::default(), 0), good.clone()].concat(), 0);
    let cases: Vec<(DropReason, Vec<RawDesc4>)> = vec![
        (
            DropReason::AddressOutOfRange,
            vec![(MEM + 0x1000, 72, 0, None)],
        ),
        (DropReason::AddressOutOfRange, vec![(MEM - 10, 72, 0, None)]),
        (
            DropReason::WriteOnlyOnTx,
            vec![(ok, 72, VIRTQ_DESC_F_WRITE, None)],
        ),
        (DropReason::TooShort, vec![(ok, 20, 0, None)]),
        (
            DropReason::BadIndirect,
            vec![(ok, 32, VIRTQ_DESC_F_INDIRECT, None)],
        ),
        (DropReason::BadDescIndex, vec![(ok, 12, 0, Some(QSIZE + 3))]),
    ];
    let mut want = Vec::new();
    for (reason, descs) in &cases {
        g.publish(descs);
        want.push(*reason);
        g.publish(&[(ok, 72, 0, None)]);
    }
    // A loop: descriptor pointing at itself.
    let looped = g.next_desc;
    g.publish(&[(ok, 72, 0, Some(looped))]);
    g.publish(&[(ok, 72, 0, None)]);
    let (n, _) = g.tx(&mut dp);
    assert_eq!(n, 2 * cases.len() + 2);
    for i in 0..n as u16 {
        assert_eq!(g.used(i).1, 0);
    }
    for reason in want {
        assert!(dp.counters.dropped(reason) >= 1, "{reason:?} not counted");
    }
    assert_eq!(dp.counters.dropped(DropReason::ChainTooLong), 1);
    assert_eq!(dp.counters.total_drops(), cases.len() as u64 + 1);
    assert_eq!(
        sw.from_guest.len(),
        cases.len() + 1,
        "every good chain still went through"
    );
    while let Some(f) = sw.from_guest.pop() {
        assert_eq!(frame_bytes(&pool, &f), good);
        dp.cache.free(f);
    }
}

#[test]
fn tx_frame_over_mtu_is_dropped_but_gso_frame_passes() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (_pool, mut dp, mut sw) = setup(all_features());
    dp.mtu = 1500;
    let big = packet(1600, 1);
    let a = g.buffer(&[hdr(&Offload::default(), 0), big.clone()].concat(), 0);
    g.publish(&[(a, 1612, 0, None)]);
    let (tso, gso) = tso_frame(Ip::V4, 30_000, 1448);
    let b = g.buffer(&[hdr(&gso, 0), tso.clone()].concat(), 0);
    g.publish(&[(b, tso.len() as u32 + 12, 0, None)]);
    g.tx(&mut dp);
    assert_eq!(dp.counters.dropped(DropReason::TooBig), 1);
    let f = sw.from_guest.pop().unwrap();
    assert_eq!(f.len as usize, tso.len());
    assert_eq!(f.offload, gso);
    dp.cache.free(f);
}

/// Log lines of this test binary, for the tests that check what is logged.
mod captured_log {
    use std::sync::{Mutex, Once};

    static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
            lines.push(r.args().to_string());
        }
        fn flush(&self) {}
    }

    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let _ = log::set_logger(&Capture);
            log::set_max_level(log::LevelFilter::Warn);
        });
    }

    pub fn containing(s: &str) -> Vec<String> {
        let lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().filter(|l| l.contains(s)).cloned().collect()
    }
}

#[test]
fn a_guest_on_the_wrong_mac_is_told_once_per_connection_not_per_frame() {
    captured_log::install();
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (_pool, mut dp, _sw) = setup(all_features());
    // No rate limit in the way: what is checked is once per connection.
    dp.log = Arc::new(super::guest_log::GuestLog::new(std::time::Duration::ZERO));
    let mut wrong = packet(60, 1);
    wrong[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0x63]);
    let send = |g: &mut Guest, n: usize, dp: &mut TestPath| {
        for _ in 0..n {
            let a = g.buffer(&[hdr(&Offload::default(), 0), wrong.clone()].concat(), 0);
            g.publish(&[(a, 72, 0, None)]);
        }
        g.tx(dp);
    };
    let said = || captured_log::containing("from MAC 02:00:00:00:00:63");
    send(&mut g, 6, &mut dp);
    assert_eq!(dp.counters.dropped(DropReason::SpoofedMac), 6);
    let lines = said();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("02:00:00:00:00:01") && lines[0].contains("mac="),
        "both MACs and the hint: {}",
        lines[0]
    );
    send(&mut g, 3, &mut dp);
    assert_eq!(said().len(), 1, "not once per frame");
    // The guest reconnects (still on the wrong MAC): said once more.
    dp.log.guest_connected();
    send(&mut g, 3, &mut dp);
    assert_eq!(dp.counters.dropped(DropReason::SpoofedMac), 12);
    assert_eq!(said().len(), 2);
}

#[test]
fn tx_backpressure_leaves_chains_in_the_ring() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let (to_switch, mut from_guest) = link(2).unwrap();
    let (_to_guest, from_switch) = link(4).unwrap();
    let mut dp = TestPath {
        dp: DataPath::new("t", &pool, 1500, guard(), from_switch),
        to_switch,
    };
    dp.features = Negotiated::from_bits(all_features());
    let a = g.buffer(&[hdr(&Offload::default(), 0), packet(60, 1)].concat(), 0);
    for _ in 0..5 {
        g.publish(&[(a, 72, 0, None)]);
    }
    assert_eq!(g.tx(&mut dp).0, 2);
    assert_eq!(g.queue.next_avail(), 2, "the rest stays for later");
    for _ in 0..2 {
        let f = from_guest.pop().unwrap();
        dp.cache.free(f);
    }
    assert_eq!(g.tx(&mut dp).0, 2);
    assert_eq!(dp.counters.total_drops(), 0);
}

pub(super) fn push_frame(
    pool: &FramePool,
    dp: &mut TestPath,
    sw: &mut Switch,
    bytes: &[u8],
    off: Offload,
) {
    let mut f = dp.cache.alloc(bytes.len()).unwrap();
    f.len = bytes.len() as u32;
    f.offload = off;
    let o = usize::from(f.offset);
    pool.frame_mut(&mut f)[o..o + bytes.len()].copy_from_slice(bytes);
    assert!(sw.to_guest.push(f).is_ok());
}

#[test]
fn rx_with_and_without_mrg_rxbuf_and_in_order() {
    for (mrg, in_order) in [(true, false), (false, false), (true, true), (false, true)] {
        let (mem, arc) = memory();
        let mut g = Guest::new(&mem, &arc);
        let mut feats = if mrg {
            all_features()
        } else {
            without(&[VIRTIO_NET_F_MRG_RXBUF])
        };
        if in_order {
            // RX in order still writes every used entry: its length is news.
            feats |= 1 << VIRTIO_F_IN_ORDER;
        }
        let (pool, mut dp, mut sw) = setup(feats);
        let p = packet(3000, 4);
        push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
        let mut bufs = Vec::new();
        let n_bufs = if mrg { 4 } else { 1 };
        let len = if mrg { 1024 } else { 4096 };
        for _ in 0..n_bufs {
            let b = g.buffer(&[], len);
            bufs.push(b);
            g.publish(&[(b, len, VIRTQ_DESC_F_WRITE, None)]);
        }
        let (n, _) = g.rx(&mut dp);
        assert_eq!(n, 1, "mrg={mrg}");
        let mut got = Vec::new();
        let used = if mrg { 3 } else { 1 };
        assert_eq!(g.used_idx(), used);
        for i in 0..used {
            let (id, l) = g.used(i);
            assert_eq!(id, u32::from(i));
            got.extend(g.read(bufs[i as usize], l as usize));
        }
        let h = virtio_net::parse(&got[..12]);
        assert_eq!(h, Offload::default());
        assert_eq!(
            u16::from_le_bytes([got[10], got[11]]),
            used,
            "num_buffers, mrg={mrg}"
        );
        assert_eq!(&got[12..], &p[..]);
        assert_eq!(dp.counters.rx_packets, 1);
    }
}

#[test]
fn rx_waits_for_buffers_then_delivers() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(all_features());
    let p = packet(3000, 5);
    push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
    assert_eq!(g.rx(&mut dp).0, 0);
    let b = g.buffer(&[], 1024);
    g.publish(&[(b, 1024, VIRTQ_DESC_F_WRITE, None)]);
    assert_eq!(
        g.rx(&mut dp).0,
        0,
        "one buffer is not enough: nothing consumed"
    );
    assert_eq!(g.queue.next_avail(), 0);
    for _ in 0..2 {
        let b = g.buffer(&[], 1024);
        g.publish(&[(b, 1024, VIRTQ_DESC_F_WRITE, None)]);
    }
    assert_eq!(g.rx(&mut dp).0, 1);
    assert_eq!(g.used_idx(), 3);
    assert_eq!(dp.counters.total_drops(), 0);
}

#[test]
fn rx_malformed_and_too_small_buffers_are_returned_and_counted() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(without(&[VIRTIO_NET_F_MRG_RXBUF]));
    let b = g.buffer(&[], 2048);
    g.publish(&[(b, 2048, 0, None)]); // read-only on RX
    g.publish(&[(b, 100, VIRTQ_DESC_F_WRITE, None)]); // too small without MRG
    g.publish(&[(MEM, 2048, VIRTQ_DESC_F_WRITE, None)]); // outside memory
    g.publish(&[(b, 2048, VIRTQ_DESC_F_WRITE, None)]); // good
    let p = packet(500, 6);
    for _ in 0..4 {
        push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
    }
    assert_eq!(g.rx(&mut dp).0, 4);
    assert_eq!(dp.counters.dropped(DropReason::ReadOnlyOnRx), 1);
    assert_eq!(dp.counters.dropped(DropReason::RxBufferTooSmall), 1);
    assert_eq!(dp.counters.dropped(DropReason::AddressOutOfRange), 1);
    assert_eq!(dp.counters.rx_packets, 1);
    assert_eq!(
        (0..4).map(|i| g.used(i).1).collect::<Vec<_>>(),
        vec![0, 0, 0, 512]
    );
    assert_eq!(&g.read(b + 12, 500), &p);
}

#[test]
fn rx_completes_checksum_and_refuses_tso_for_guests_without_offloads() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(without(&[
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ]));
    let mut p = packet(100, 7);
    p[50] = 0;
    p[51] = 0;
    let partial = Offload {
        flags: 1,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    push_frame(&pool, &mut dp, &mut sw, &p, partial);
    let tso = Offload {
        gso_type: 1,
        gso_size: 1448,
        ..partial
    };
    push_frame(&pool, &mut dp, &mut sw, &packet(5000, 1), tso);
    let b = g.buffer(&[], 2048);
    g.publish(&[(b, 2048, VIRTQ_DESC_F_WRITE, None)]);
    assert_eq!(g.rx(&mut dp).0, 2);
    assert_eq!(dp.counters.dropped(DropReason::GsoNotAccepted), 1);
    let got = g.read(b, 112);
    assert_eq!(got[0], 0, "NEEDS_CSUM cleared");
    assert_eq!(
        !snapnet_wire::checksum::ones_sum(&got[12 + 34..]),
        0,
        "checksum completed"
    );
}

#[test]
fn rx_header_carries_no_flag_snapnet_does_not_vouch_for() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(all_features());
    let o = Offload {
        flags: virtio_net::F_NEEDS_CSUM | virtio_net::F_DATA_VALID | virtio_net::F_RSC_INFO,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    push_frame(&pool, &mut dp, &mut sw, &packet(100, 7), o);
    let b = g.buffer(&[], 2048);
    g.publish(&[(b, 2048, VIRTQ_DESC_F_WRITE, None)]);
    assert_eq!(g.rx(&mut dp).0, 1);
    let h = virtio_net::parse(&g.read(b, VNET_HDR_LEN));
    assert_eq!(
        h,
        Offload {
            flags: virtio_net::F_NEEDS_CSUM,
            ..o
        }
    );
}

#[test]
fn interrupts_follow_event_idx_and_no_interrupt_flag() {
    for event_idx in [true, false] {
        let (mem, arc) = memory();
        let mut g = Guest::new(&mem, &arc);
        let feats = if event_idx {
            all_features()
        } else {
            without(&[VIRTIO_RING_F_EVENT_IDX])
        };
        let (_pool, mut dp, mut sw) = setup(feats);
        let a = g.buffer(&[hdr(&Offload::default(), 0), packet(60, 1)].concat(), 0);
        if event_idx {
            g.set_used_event(5);
        } else {
            g.set_avail_flags(1); // VRING_AVAIL_F_NO_INTERRUPT
        }
        for _ in 0..3 {
            g.publish(&[(a, 72, 0, None)]);
        }
        assert!(
            !g.tx(&mut dp).1,
            "event_idx={event_idx}: no interrupt wanted yet"
        );
        for _ in 0..3 {
            g.publish(&[(a, 72, 0, None)]);
        }
        if event_idx {
            assert!(g.tx(&mut dp).1, "used index crossed used_event");
        } else {
            g.set_avail_flags(0);
            assert!(g.tx(&mut dp).1, "interrupts enabled again");
        }
        while let Some(f) = sw.from_guest.pop() {
            dp.cache.free(f);
        }
    }
}

#[test]
fn corrupt_avail_index_is_counted_not_followed() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (_pool, mut dp, _sw) = setup(all_features());
    g.mock.avail().idx().store(QSIZE + 5);
    assert_eq!(g.tx(&mut dp).0, 0);
    assert_eq!(g.rx(&mut dp).0, 0);
    assert_eq!(dp.counters.dropped(DropReason::BadAvailIndex), 2);
}

#[test]
fn tx_waits_instead_of_dropping_when_the_pool_is_empty() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (_pool, mut dp, mut sw) = setup(all_features());
    let (tso, gso) = tso_frame(Ip::V4, 20_000, 1448);
    // The test pool has 8 large frames; send 10 TSO super-frames.
    let a = g.buffer(&[hdr(&gso, 0), tso.clone()].concat(), 0);
    for _ in 0..10 {
        g.publish(&[(a, tso.len() as u32 + 12, 0, None)]);
    }
    assert_eq!(g.tx(&mut dp).0, 8);
    assert_eq!(g.queue.next_avail(), 8, "two chains stay in the ring");
    assert_eq!(g.used_idx(), 8);
    assert_eq!(dp.counters.backpressure, 1);
    assert_eq!(dp.counters.total_drops(), 0);
    // Frames return to the pool: the rest goes through.
    while let Some(f) = sw.from_guest.pop() {
        dp.cache.free(f);
    }
    assert_eq!(g.tx(&mut dp).0, 2);
    assert_eq!(g.used_idx(), 10);
}

/// The guard of the test vNIC: `packet()` sends from 02:00:00:00:00:01.
fn guard() -> super::antispoof::SpoofGuard {
    super::antispoof::SpoofGuard::new(snapnet_wire::MacAddr([2, 0, 0, 0, 0, 1]), None)
}

/// An indirect table of `entries` (address, length, flags), chained in
/// order by NEXT, written to a fresh guest buffer: (its address, its length).
fn indirect_table(g: &mut Guest<'_>, entries: &[(u64, u32, u16)]) -> (u64, u32) {
    let mut table = Vec::with_capacity(16 * entries.len());
    for (i, &(addr, len, flags)) in entries.iter().enumerate() {
        let (flags, next) = if i + 1 < entries.len() {
            (flags | VIRTQ_DESC_F_NEXT, i as u16 + 1)
        } else {
            (flags, 0)
        };
        table.extend_from_slice(&addr.to_le_bytes());
        table.extend_from_slice(&len.to_le_bytes());
        table.extend_from_slice(&flags.to_le_bytes());
        table.extend_from_slice(&next.to_le_bytes());
    }
    (g.buffer(&table, 0), table.len() as u32)
}

use super::chain::MAX_CHAIN_DESCS;

#[test]
fn tx_batch_walks_a_bounded_number_of_descriptors() {
    // A hostile driver fills the ring with chains of the longest indirect
    // tables allowed, all zero-length descriptors: no segment, no byte, but
    // every one of them walked. One poll must stop after its descriptor
    // budget, not walk them all.
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (_pool, mut dp, _sw) = setup(all_features());
    let empty = vec![(BUF, 0, 0); MAX_CHAIN_DESCS as usize];
    let (t, len) = indirect_table(&mut g, &empty);
    for _ in 0..QSIZE {
        g.publish(&[(t, len, VIRTQ_DESC_F_INDIRECT, None)]);
    }
    let (n, _) = g.tx(&mut dp);
    let budget = super::data_path::desc_budget(64) as usize;
    let chains = budget.div_ceil(MAX_CHAIN_DESCS as usize + 1);
    assert!(
        n <= chains,
        "{n} chains of {MAX_CHAIN_DESCS} walked in one poll"
    );
    assert_eq!(dp.counters.dropped(DropReason::TooShort), n as u64);
    // The rest is left for the next polls, and nothing is lost.
    let mut total = n;
    while total < usize::from(QSIZE) {
        let (n, _) = g.tx(&mut dp);
        assert!(n > 0);
        total += n;
    }
    assert_eq!(g.used_idx(), QSIZE);
}

#[test]
fn tx_chain_of_more_descriptors_than_a_frame_may_have_is_dropped() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(all_features());
    let p = packet(60, 3);
    let h = g.buffer(&hdr(&Offload::default(), 0), 0);
    let d = g.buffer(&p, 0);
    // Header, packet, then zero-length padding past the cap.
    let mut entries = vec![(h, 12, 0), (d, 60, 0)];
    let pad = |n: u32| vec![(d, 0u32, 0u16); n as usize - 2];
    entries.extend(pad(MAX_CHAIN_DESCS + 1));
    let (t, len) = indirect_table(&mut g, &entries);
    g.publish(&[(t, len, VIRTQ_DESC_F_INDIRECT, None)]);
    // The same at exactly the cap passes.
    entries.truncate(MAX_CHAIN_DESCS as usize);
    let (t, len) = indirect_table(&mut g, &entries);
    g.publish(&[(t, len, VIRTQ_DESC_F_INDIRECT, None)]);
    assert_eq!(g.tx(&mut dp).0, 2);
    assert_eq!(dp.counters.dropped(DropReason::ChainTooLong), 1);
    assert_eq!(dp.counters.total_drops(), 1);
    let f = sw.from_guest.pop().unwrap();
    assert_eq!(frame_bytes(&pool, &f), p);
    dp.cache.free(f);
}

#[test]
fn rx_zero_length_buffers_are_returned_and_counted_not_walked_again() {
    for mrg in [true, false] {
        let (mem, arc) = memory();
        let mut g = Guest::new(&mem, &arc);
        let feats = if mrg {
            all_features()
        } else {
            without(&[VIRTIO_NET_F_MRG_RXBUF])
        };
        let (pool, mut dp, mut sw) = setup(feats);
        let b = g.buffer(&[], 2048);
        // Two empty buffers (one a chain of empty descriptors), then a good one.
        g.publish(&[(b, 0, VIRTQ_DESC_F_WRITE, None)]);
        g.publish(&[
            (b, 0, VIRTQ_DESC_F_WRITE, None),
            (b, 0, VIRTQ_DESC_F_WRITE, None),
        ]);
        g.publish(&[(b, 2048, VIRTQ_DESC_F_WRITE, None)]);
        let p = packet(500, 6);
        for _ in 0..3 {
            push_frame(&pool, &mut dp, &mut sw, &p, Offload::default());
        }
        assert_eq!(g.rx(&mut dp).0, 3, "mrg={mrg}");
        assert_eq!(g.used_idx(), 3);
        assert_eq!(
            (0..3).map(|i| g.used(i).1).collect::<Vec<_>>(),
            vec![0, 0, 512],
            "mrg={mrg}"
        );
        assert_eq!(dp.counters.dropped(DropReason::ZeroLengthBuffer), 2);
        assert_eq!(dp.counters.rx_packets, 1);
        assert_eq!(&g.read(b + 12, 500), &p);
    }
}

#[test]
fn rx_frame_and_batch_walk_a_bounded_number_of_descriptors() {
    let (mem, arc) = memory();
    let mut g = Guest::new(&mem, &arc);
    let (pool, mut dp, mut sw) = setup(all_features());
    // Each buffer is an indirect table of 200 one-byte descriptors.
    let b = g.buffer(&[], 256);
    let bytes: Vec<(u64, u32, u16)> = (0..200).map(|i| (b + i, 1, VIRTQ_DESC_F_WRITE)).collect();
    let (t, len) = indirect_table(&mut g, &bytes);
    for _ in 0..QSIZE {
        g.publish(&[(t, len, VIRTQ_DESC_F_INDIRECT, None)]);
    }
    // A frame that would need 16 such buffers (3200 descriptors) is
    // refused after the per-frame cap, its buffers returned.
    push_frame(
        &pool,
        &mut dp,
        &mut sw,
        &packet(3000, 1),
        Offload::default(),
    );
    assert_eq!(g.rx(&mut dp).0, 1);
    assert_eq!(dp.counters.rx_packets, 0);
    assert_eq!(dp.counters.dropped(DropReason::RxBufferTooSmall), 1);
    let returned = g.used_idx();
    assert!(
        u32::from(returned) * 201 <= 2 * MAX_CHAIN_DESCS,
        "{returned} buffers walked for one frame"
    );
    // Small frames that fit one buffer each: one poll stops at its
    // descriptor budget.
    for _ in 0..16 {
        push_frame(&pool, &mut dp, &mut sw, &packet(100, 2), Offload::default());
    }
    let (n, _) = g.rx(&mut dp);
    let budget = super::data_path::desc_budget(64) as usize;
    assert!(n <= budget.div_ceil(201), "{n} frames of 201 descriptors");
    assert_eq!(dp.counters.rx_packets, n as u64);
}
