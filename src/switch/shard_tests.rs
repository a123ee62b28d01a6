//! A switch of several shards, set up through the control plane's handle
//! and driven by hand: unicast, flooding and learning across shards, and
//! per-port order.

use std::sync::Arc;

use super::engine::tests::{frame, A, B, C};
use super::*;
use crate::engine::Engine;
use crate::packet::{link, FrameCache, FramePool, LinkRx, LinkTx, PoolConfig};
use snapnet_wire::MacAddr;

struct Port {
    id: PortId,
    to_switch: LinkTx,
    from_switch: LinkRx,
}

/// Runs `f` (which makes control-plane calls) while this thread polls the
/// shards, as their threads would.
fn drive<R: Send>(shards: &mut [SwitchEngine], f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        let t = s.spawn(f);
        while !t.is_finished() {
            for e in shards.iter_mut() {
                e.poll(64);
            }
        }
        t.join().unwrap()
    })
}

fn poll_all(shards: &mut [SwitchEngine]) {
    for _ in 0..4 {
        for e in shards.iter_mut() {
            e.poll(64);
        }
    }
}

fn add(
    shards: &mut [SwitchEngine],
    h: &SwitchHandle,
    shard: usize,
    network: u32,
    mac: Option<MacAddr>,
    out_capacity: usize,
) -> Port {
    let (to_switch, input) = link(64).unwrap();
    let (output, from_switch) = link(out_capacity).unwrap();
    let port = SwitchPort::new("p", PortNetwork::Only(network), vec![input], vec![output]);
    let (id, _) = drive(shards, || {
        h.add_port_on(shard, port, mac.into_iter().collect())
            .unwrap()
    });
    assert_eq!(h.shard_of(id), Some(shard));
    Port {
        id,
        to_switch,
        from_switch,
    }
}

fn setup(count: usize) -> (Arc<FramePool>, FrameCache, Vec<SwitchEngine>, SwitchHandle) {
    let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
    let cache = pool.cache();
    // Short peer links: the small pool must hold every frame in flight.
    let (engines, h) = super::shards::linked(&pool, count, 16).unwrap();
    (pool, cache, engines, h)
}

/// A frame whose bytes 14..18 carry `seq`.
fn numbered(
    cache: &mut FrameCache,
    pool: &FramePool,
    dst: MacAddr,
    src: MacAddr,
    seq: u32,
) -> FrameHandle {
    let mut f = frame(cache, pool, dst, src, 60);
    let off = usize::from(f.offset);
    pool.frame_mut(&mut f)[off + 14..off + 18].copy_from_slice(&seq.to_be_bytes());
    f
}

fn seq_of(pool: &FramePool, f: &FrameHandle) -> u32 {
    u32::from_be_bytes(pool.bytes(f)[14..18].try_into().unwrap())
}

fn drain(cache: &mut FrameCache, ports: &mut [&mut Port]) {
    for p in ports.iter_mut() {
        while let Some(f) = p.from_switch.pop() {
            cache.free(f);
        }
    }
}

use crate::packet::FrameHandle;

/// Drains the ports, drops the shards and checks every frame came back.
fn finish(pool: &FramePool, mut cache: FrameCache, sw: Vec<SwitchEngine>, ports: &mut [&mut Port]) {
    drain(&mut cache, ports);
    drop(cache);
    drop(sw);
    assert_eq!(
        pool.free_frames().0,
        pool.total_frames().0,
        "no frame leaked"
    );
}

#[test]
fn unicast_and_floods_cross_shards_in_order_and_unicast_waits_rather_than_drops() {
    let (pool, mut cache, mut sw, h) = setup(2);
    let mut a = add(&mut sw, &h, 0, 0, Some(A), 8);
    // b's output is small: frames must wait (in the peer link and in a's
    // input), never be lost or reordered.
    let mut b = add(&mut sw, &h, 1, 0, Some(B), 4);
    let mut got = Vec::new();
    let total = 600u32;
    let mut sent = 0u32;
    // Bounded: a test that hangs holds everyone's CPU lock.
    for _ in 0..10_000 {
        while sent < total && a.to_switch.free() > 0 {
            // Every fifth a broadcast: it takes the same link as the
            // unicast frames, so it keeps its place among them.
            let dst = if sent % 5 == 4 { MacAddr::BROADCAST } else { B };
            a.to_switch
                .push(numbered(&mut cache, &pool, dst, A, sent))
                .unwrap();
            sent += 1;
        }
        for e in sw.iter_mut() {
            e.poll(64);
        }
        // b takes three frames per round: slower than a sends.
        for _ in 0..3 {
            if let Some(f) = b.from_switch.pop() {
                got.push(seq_of(&pool, &f));
                cache.free(f);
            }
        }
    }
    let counters = |s: &SwitchEngine, id: PortId| {
        s.ports[usize::from(id.0)]
            .as_ref()
            .unwrap()
            .counters
            .clone()
    };
    let ca = counters(&sw[0], a.id);
    let cb = counters(&sw[1], b.id);
    // Unicast frames wait, all of them arrive; a flooded frame that finds
    // b's link (or the link to b's shard: counted on a) full is dropped and
    // counted, as on one shard.
    let unicast: Vec<u32> = (0..total).filter(|s| s % 5 != 4).collect();
    let got_unicast: Vec<u32> = got.iter().copied().filter(|s| s % 5 != 4).collect();
    assert_eq!(got_unicast, unicast, "every unicast frame, once, in order");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "nothing reordered");
    assert!(got.iter().any(|s| s % 5 == 4), "some broadcasts made it");
    assert_eq!(
        got.len() as u64 + cb.dropped(PortDrop::LinkFull) + ca.dropped(PortDrop::LinkFull),
        u64::from(total)
    );
    assert_eq!(ca.rx_packets, u64::from(total));
    assert_eq!(cb.tx_packets, got.len() as u64);
    assert!(ca.backpressure > 0, "a was held back");
    // And back: b's unicast to A crosses the other link.
    b.to_switch
        .push(numbered(&mut cache, &pool, A, B, 7))
        .unwrap();
    poll_all(&mut sw);
    let f = a.from_switch.pop().unwrap();
    assert_eq!(seq_of(&pool, &f), 7);
    cache.free(f);
    finish(&pool, cache, sw, &mut [&mut a, &mut b]);
}

#[test]
fn a_flood_reaches_each_member_once_and_only_its_network() {
    let (pool, mut cache, mut sw, h) = setup(3);
    let mut a = add(&mut sw, &h, 0, 0, Some(A), 8);
    let mut b = add(&mut sw, &h, 1, 0, Some(B), 8);
    let mut c = add(&mut sw, &h, 1, 0, Some(C), 8);
    let mut d = add(&mut sw, &h, 2, 0, None, 8);
    let mut other = add(&mut sw, &h, 2, 9, None, 8);
    a.to_switch
        .push(numbered(&mut cache, &pool, MacAddr::BROADCAST, A, 42))
        .unwrap();
    poll_all(&mut sw);
    for p in [&mut b, &mut c, &mut d] {
        assert_eq!(p.from_switch.len(), 1);
        let f = p.from_switch.pop().unwrap();
        assert_eq!(seq_of(&pool, &f), 42, "byte-exact copy");
        cache.free(f);
    }
    assert!(a.from_switch.is_empty() && other.from_switch.is_empty());
    // A network with no other member anywhere: counted, not sent.
    other
        .to_switch
        .push(numbered(&mut cache, &pool, MacAddr::BROADCAST, C, 1))
        .unwrap();
    poll_all(&mut sw);
    let co = sw[2].ports[usize::from(other.id.0)]
        .as_ref()
        .unwrap()
        .counters
        .clone();
    assert_eq!(co.dropped(PortDrop::NoRoute), 1);
    // Unknown unicast floods too, within the network.
    const Z: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x5a]);
    d.to_switch
        .push(numbered(
            &mut cache,
            &pool,
            Z,
            MacAddr([2, 0, 0, 0, 0, 0xd]),
            2,
        ))
        .unwrap();
    poll_all(&mut sw);
    for p in [&mut a, &mut b, &mut c] {
        assert_eq!(p.from_switch.len(), 1);
    }
    finish(
        &pool,
        cache,
        sw,
        &mut [&mut a, &mut b, &mut c, &mut d, &mut other],
    );
}

#[test]
fn shards_learn_from_each_other_and_forget_removed_ports() {
    let (pool, mut cache, mut sw, h) = setup(2);
    let mut a = add(&mut sw, &h, 0, 0, Some(A), 8);
    let mut b = add(&mut sw, &h, 0, 0, Some(B), 8);
    // u has no static MAC (an uplink): X behind it is learned.
    let mut u = add(&mut sw, &h, 1, 0, None, 8);
    const X: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x77]);
    u.to_switch
        .push(numbered(&mut cache, &pool, MacAddr::BROADCAST, X, 0))
        .unwrap();
    poll_all(&mut sw);
    drain(&mut cache, &mut [&mut a, &mut b]);
    // Shard 0 learned X from the flood: a's frame to X goes only to u.
    assert_eq!(sw[0].fdb().lookup(0, X), Some(u.id));
    a.to_switch
        .push(numbered(&mut cache, &pool, X, A, 5))
        .unwrap();
    poll_all(&mut sw);
    assert!(b.from_switch.is_empty(), "not flooded");
    let f = u.from_switch.pop().unwrap();
    assert_eq!(seq_of(&pool, &f), 5);
    cache.free(f);
    // Static entries are in every shard; the listing merges the shards.
    let entries = drive(&mut sw, || h.fdb_entries().unwrap());
    let listed: Vec<_> = entries
        .iter()
        .map(|(_, m, e)| (*m, e.port, e.is_static))
        .collect();
    assert_eq!(
        listed,
        vec![(A, a.id, true), (B, b.id, true), (X, u.id, false)]
    );
    assert_eq!(sw[1].fdb().lookup(0, A), Some(a.id));
    // X moves to b: a's next frame to X finds it there, on shard 0, once
    // X has sent (its announce reaches every shard).
    b.to_switch
        .push(numbered(&mut cache, &pool, MacAddr::BROADCAST, X, 0))
        .unwrap();
    poll_all(&mut sw);
    drain(&mut cache, &mut [&mut a, &mut u]);
    assert_eq!(sw[0].fdb().lookup(0, X), Some(b.id));
    assert_eq!(sw[1].fdb().lookup(0, X), Some(b.id));
    // Removing a port removes it from every shard's view.
    let bid = b.id;
    assert!(drive(&mut sw, || h.remove_port(bid).unwrap()));
    assert_eq!(sw[1].fdb().lookup(0, X), None);
    assert_eq!(sw[1].fdb().lookup(0, B), None);
    u.to_switch
        .push(numbered(
            &mut cache,
            &pool,
            B,
            MacAddr([2, 0, 0, 0, 0, 0x11]),
            9,
        ))
        .unwrap();
    poll_all(&mut sw);
    assert_eq!(a.from_switch.len(), 1, "B unknown now: flooded to a only");
    assert!(b.from_switch.is_empty());
    finish(&pool, cache, sw, &mut [&mut a, &mut b, &mut u]);
}

#[test]
fn weights_hold_across_shards_at_a_congested_output() {
    let (pool, mut cache, mut sw, h) = setup(2);
    let mut a = add(&mut sw, &h, 0, 0, Some(A), 8);
    let mut b = add(&mut sw, &h, 1, 0, Some(B), 8);
    let mut c = add(&mut sw, &h, 1, 0, Some(C), 4);
    let bid = b.id;
    assert!(drive(&mut sw, || h.set_port_weight(bid, 3).unwrap()));
    let mut from = [0u64; 2];
    for _ in 0..3000 {
        for (p, src) in [(&mut a, A), (&mut b, B)] {
            while p.to_switch.free() > 0 {
                p.to_switch
                    .push(frame(&mut cache, &pool, C, src, 1000))
                    .unwrap();
            }
        }
        for e in sw.iter_mut() {
            e.poll(64);
        }
        if let Some(f) = c.from_switch.pop() {
            from[usize::from(pool.bytes(&f)[6..12] == B.0)] += 1;
            cache.free(f);
        }
    }
    // b (weight 3, on c's shard) against a (weight 1, across the link).
    let ratio = from[1] as f64 / from[0] as f64;
    assert!((2.5..=3.5).contains(&ratio), "b:a = {ratio} ({from:?})");
    drain(&mut cache, &mut [&mut a, &mut b, &mut c]);
}
