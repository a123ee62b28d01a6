//! Tests of `queue.rs`.
use super::super::memory::GuestMemory;
use super::super::ring::RingAddrs;
use super::super::split_ring::fake::FakeDevice;
use super::super::split_ring::VRING_USED_F_NO_NOTIFY;
use super::*;
use std::sync::Arc;

struct Setup {
    mem: GuestMemory,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            mem: GuestMemory::new(8 << 20, false).unwrap(),
        }
    }
    fn ring_addrs(&mut self, size: u16) -> RingAddrs {
        RingAddrs::alloc(&mut self.mem, size).unwrap()
    }
}

fn tx_queue(size: u16, indirect: bool, buf_len: u32) -> TxQueue {
    let mut s = Setup::new();
    let addrs = s.ring_addrs(size);
    let buf = s.mem.alloc(size as usize * buf_len as usize, 64).unwrap();
    let ind = indirect.then(|| s.mem.alloc(size as usize * 32, 16).unwrap());
    let ring = SplitRing::new(Arc::new(s.mem), addrs, size, false).unwrap();
    TxQueue::new(ring, buf, buf_len, ind, 12).unwrap()
}

fn rx_queue(size: u16, mrg: bool, buf_len: u32, reserve: u16) -> RxQueue {
    let mut s = Setup::new();
    let addrs = s.ring_addrs(size);
    let buf = s.mem.alloc(size as usize * buf_len as usize, 64).unwrap();
    let ring = SplitRing::new(Arc::new(s.mem), addrs, size, true).unwrap();
    RxQueue::new(ring, buf, buf_len, buf_len as usize, 12, mrg, reserve).unwrap()
}

fn complete_all(dev: &mut FakeDevice, q: &TxQueue) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(h) = dev.pop() {
        out.push(dev.read_chain(h));
        dev.push_used(h as u32, 0);
    }
    let _ = q;
    dev.publish_used(false);
    out
}

#[test]
fn tx_send_small_large_and_indirect() {
    for indirect in [false, true] {
        let mut q = tx_queue(16, indirect, 256);
        let mut dev = FakeDevice::new(&q.ring);
        let small: Vec<u8> = (0..100u8).collect();
        let big: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let hdr = VirtioNetHdr {
            flags: 1,
            csum_start: 34,
            csum_offset: 6,
            ..Default::default()
        };
        assert_eq!(q.send(&[&small, &big, &[]], &hdr), 3);
        assert_eq!(q.ring.stats().kicks, 1, "one kick per call");
        // big needs ceil(1012 / 256) = 4 descriptors.
        assert_eq!(q.ring.free_count(), 16 - 1 - 4 - 1);
        let got = complete_all(&mut dev, &q);
        assert_eq!(got.len(), 3);
        let mut want = hdr.to_bytes().to_vec();
        want.extend_from_slice(&small);
        assert_eq!(got[0], want);
        want.truncate(12);
        want.extend_from_slice(&big);
        assert_eq!(got[1], want);
        assert_eq!(got[2], hdr.to_bytes().to_vec());
        if indirect {
            let h0 = dev.chain(0);
            assert_eq!(h0.len(), 2);
            assert_eq!(h0[0].len, 12);
            assert_eq!(h0[1].len, 100);
        }
        q.reclaim();
        assert_eq!(q.ring.free_count(), 16);
    }
}

#[test]
fn tx_ring_full_and_blast() {
    for indirect in [false, true] {
        let mut q = tx_queue(8, indirect, 2048);
        let mut dev = FakeDevice::new(&q.ring);
        dev.set_used_flags(VRING_USED_F_NO_NOTIFY);
        let frame = [0xabu8; 60];
        q.prepare_blast(&frame);
        assert_eq!(q.blast(5), 5);
        assert_eq!(q.blast(5), 3, "ring full");
        assert_eq!(q.blast(5), 0);
        assert_eq!(q.ring.stats().kicks, 0, "NO_NOTIFY honoured");
        let got = complete_all(&mut dev, &q);
        assert_eq!(got.len(), 8);
        for g in &got {
            assert_eq!(&g[..12], &[0u8; 12]);
            assert_eq!(&g[12..], &frame);
        }
        // A send overwrites some buffers; blast must restore the frame there.
        assert_eq!(q.send(&[b"other"], &VirtioNetHdr::default()), 1);
        complete_all(&mut dev, &q);
        assert_eq!(q.blast(8), 8);
        for g in complete_all(&mut dev, &q) {
            assert_eq!(&g[12..], &frame);
        }
    }
}

#[test]
#[should_panic(expected = "prepare_blast")]
fn blast_needs_prepare() {
    tx_queue(8, false, 2048).blast(1);
}

#[test]
fn rx_simple_and_len_validation() {
    let mut q = rx_queue(8, false, 2048, 0);
    let mut dev = FakeDevice::new(&q.ring);
    assert_eq!(q.fill(), 8);
    let mut pkt = VirtioNetHdr::default().to_bytes().to_vec();
    pkt.extend_from_slice(b"hello world");
    let a = dev.pop().unwrap();
    let desc = dev.chain(a)[0];
    assert_eq!(desc.flags, VRING_DESC_F_WRITE);
    assert_eq!(desc.len, 2048);
    dev.write(desc.addr, &pkt);
    dev.push_used(a as u32, pkt.len() as u32);
    let b = dev.pop().unwrap();
    dev.push_used(b as u32, 5); // shorter than the header
    let c = dev.pop().unwrap();
    dev.push_used(c as u32, 4096); // longer than the buffer
    dev.publish_used(true);
    let mut seen = Vec::new();
    let (n, _) = q.harvest::<true, _>(|h, p| seen.push((*h, p.to_vec())));
    assert_eq!(n, 1);
    assert_eq!(seen[0].1, b"hello world");
    assert_eq!(q.ring.stats().bad_used, 2);
    // The five never used plus the three returned ones are all available again.
    for _ in 0..8 {
        assert!(dev.pop().is_some());
    }
    assert!(dev.pop().is_none());
}

fn put(dev: &mut FakeDevice, bytes: &[u8]) {
    let h = dev.pop().unwrap();
    let d = dev.chain(h)[0];
    assert!(bytes.len() <= d.len as usize);
    dev.write(d.addr, bytes);
    dev.push_used(h as u32, bytes.len() as u32);
}

#[test]
fn rx_merged_assembly() {
    let mut q = rx_queue(16, true, 128, 0);
    let mut dev = FakeDevice::new(&q.ring);
    q.fill();
    // Packet A: 300 payload bytes in 3 buffers (116 + 128 + 56).
    let payload: Vec<u8> = (0..300u32).map(|i| (i * 13 + 1) as u8).collect();
    let hdr = VirtioNetHdr {
        num_buffers: 3,
        gso_type: 1,
        ..Default::default()
    };
    let mut first = hdr.to_bytes().to_vec();
    first.extend_from_slice(&payload[..116]);
    put(&mut dev, &first);
    put(&mut dev, &payload[116..244]);
    dev.publish_used(true);
    // Only 2 of 3 buffers are visible: nothing harvested yet.
    assert_eq!(
        q.harvest::<true, _>(|_, _| panic!("partial packet")),
        (0, 0)
    );
    put(&mut dev, &payload[244..]);
    // Packet B: single buffer with num_buffers = 1.
    let mut single = VirtioNetHdr {
        num_buffers: 1,
        ..Default::default()
    }
    .to_bytes()
    .to_vec();
    single.extend_from_slice(b"xyz");
    put(&mut dev, &single);
    dev.publish_used(true);
    let mut seen = Vec::new();
    let (n, bytes) = q.harvest::<true, _>(|h, p| seen.push((*h, p.to_vec())));
    assert_eq!((n, bytes), (2, 303));
    assert_eq!(seen[0].0, hdr);
    assert_eq!(seen[0].1, payload);
    assert_eq!(seen[1].1, b"xyz");
    // Counting mode gives the same numbers without delivering.
    put(&mut dev, &first);
    put(&mut dev, &payload[116..244]);
    put(&mut dev, &payload[244..]);
    dev.publish_used(true);
    assert_eq!(q.harvest::<false, _>(|_, _| unreachable!()), (1, 300));
    assert_eq!(q.ring.stats().bad_used, 0);
    assert_eq!(q.ring.free_count(), 0, "all buffers reposted");
}

#[test]
fn rx_raw_chain_and_reserve() {
    let mut q = rx_queue(8, false, 2048, 2);
    let mut dev = FakeDevice::new(&q.ring);
    assert_eq!(q.fill(), 6);
    let raw = RawDesc {
        addr: 0x10,
        len: 64,
        flags: VRING_DESC_F_WRITE,
        next: 0,
    };
    let head = q.raw_chain(&[raw]).unwrap();
    let mut normal = VirtioNetHdr::default().to_bytes().to_vec();
    normal.push(7);
    for _ in 0..6 {
        put(&mut dev, &normal);
    }
    assert_eq!(dev.pop(), Some(head));
    dev.push_used(head as u32, 33);
    dev.publish_used(true);
    assert_eq!(q.take_raw_used(), vec![(head as u32, 33)]);
    assert_eq!(q.counters().2, 6);
    assert_eq!(q.ring.free_count(), 2);
}
