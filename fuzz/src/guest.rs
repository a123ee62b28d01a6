//! A vNIC engine (the real one, with its TX and RX paths) serving one queue
//! pair whose guest memory, ring addresses, ring contents and negotiated
//! features all come from the fuzz input, while the input also plays the
//! guest (writes to its memory between polls) and the switch (frames for
//! the guest).
//!
//! Only public entry points are used: `VnicEngine::new/attach/detach/poll`
//! over `vhost_user_backend` vrings, exactly as the vhost-user side hands
//! them over. That keeps the target valid while the per-packet code behind
//! those entry points changes.

use snapnet::engine::Engine;
use snapnet::packet::{link, Offload};
use snapnet::shaping::RateLimit;
use snapnet::vnic::engine::{AttachedQueue, GuestMemory, Side};
use snapnet::vnic::features::{self, Negotiated};
use snapnet::vnic::VnicEngine;
use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::{assert_frame_fits, assert_no_frame_leaked, engine_config, pool, Input};

/// Guest RAM: two adjacent regions (a buffer may straddle them) and one
/// after a hole (an address in the hole must be refused).
const REGIONS: [(u64, usize); 3] = [(0, 0x8000), (0x8000, 0x8000), (0x2_0000, 0x8000)];
/// Guest addresses the input may name: the regions, the hole, and a little
/// past the end.
const ADDR_MASK: u32 = 0x3_ffff;

/// `VIRTIO_F_RING_PACKED`.
const RING_PACKED: u64 = 1 << 34;
/// A packed ring's first position: slot 0 with wrap counters 1.
const PACKED_START: u16 = 0x8000;

/// Most operations one input may ask for.
const MAX_OPS: usize = 256;

fn addr(inp: &mut Input) -> u64 {
    u64::from(inp.u32() & ADDR_MASK)
}

fn offload(inp: &mut Input) -> Offload {
    Offload {
        flags: inp.u8(),
        gso_type: inp.u8(),
        hdr_len: inp.u16(),
        gso_size: inp.u16(),
        csum_start: inp.u16(),
        csum_offset: inp.u16(),
    }
}

fn limit(inp: &mut Input) -> RateLimit {
    if !inp.bool() {
        return RateLimit::default();
    }
    RateLimit {
        bytes_per_sec: Some(u64::from(inp.u32())),
        packets_per_sec: Some(u64::from(inp.u16())),
        burst_bytes: Some(u64::from(inp.u16())),
        burst_packets: Some(u64::from(inp.u8())),
    }
}

/// One vring as the vhost-user side leaves it after SET_VRING_NUM/ADDR/BASE
/// and SET_VRING_ENABLE.
fn vring(
    inp: &mut Input,
    mem: &GuestMemory,
    size: u16,
    packed: bool,
    event_idx: bool,
) -> VringRwLock {
    let vring = VringRwLock::new(mem.clone(), 1024).expect("vring");
    vring.set_queue_size(size);
    let (desc, avail, used) = (addr(inp), addr(inp), addr(inp));
    // A misaligned address is refused here, as SET_VRING_ADDR would refuse
    // it; the ring then keeps its previous (zero) addresses.
    let _ = vring.set_queue_info(desc, avail, used);
    vring.set_queue_event_idx(event_idx);
    if packed {
        vring.set_queue_next_avail(PACKED_START);
        vring.set_queue_next_used(PACKED_START);
    }
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// Runs one input against a split (`packed == false`) or packed queue pair.
pub fn run(data: &[u8], packed: bool) {
    let mut inp = Input::new(data);
    let pool = pool();

    let mut acked = features::offered(1) & inp.u64();
    if packed {
        acked |= RING_PACKED;
    } else {
        acked &= !RING_PACKED;
    }
    let negotiated = Negotiated::from_bits(acked);
    let size = if packed {
        u16::from(inp.u8()) + 1
    } else {
        1 << (inp.u8() % 9)
    };
    let mtu = 68 + inp.u16() % 9200;
    let tx_limit = limit(&mut inp);
    let rx_limit = limit(&mut inp);

    let ram =
        GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(start, len)| (GuestAddress(start), len)))
            .expect("guest memory");
    let mem = GuestMemory::new(ram.clone());
    let rings = [
        vring(&mut inp, &mem, size, packed, negotiated.event_idx),
        vring(&mut inp, &mem, size, packed, negotiated.event_idx),
    ];

    let (to_switch, mut from_guest) = link(64).expect("link");
    let (mut to_guest, from_switch) = link(64).expect("link");
    let cfg = engine_config("fuzz".to_string(), mtu, tx_limit, rx_limit);
    let (mut engine, _mailbox, _counters) =
        VnicEngine::new(cfg, pool, to_switch, from_switch).expect("engine");
    let sides = [Side::Rx, Side::Tx];
    for (side, vring) in sides.iter().zip(&rings) {
        engine.attach(
            *side,
            AttachedQueue::new(vring.clone(), mem.clone()),
            negotiated,
        );
    }
    let mut cache = pool.cache();

    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 8 {
            // The guest writes its memory: descriptors, rings, buffers.
            0 => {
                let at = addr(&mut inp);
                let _ = ram.write_slice(inp.chunk(), GuestAddress(at));
            }
            // The guest moves an index or flips a flag.
            1 => {
                let at = addr(&mut inp);
                let _ = ram.write_obj(inp.u16().to_le(), GuestAddress(at));
            }
            // The switch has a frame for the guest.
            2 => {
                let len = usize::from(inp.u16()) % 9300;
                let o = offload(&mut inp);
                let head = inp.chunk();
                if let Some(mut f) = cache.alloc(len.max(1)) {
                    let off = usize::from(f.offset);
                    let buf = &mut pool.frame_mut(&mut f)[off..off + len];
                    let n = head.len().min(len);
                    buf[..n].copy_from_slice(&head[..n]);
                    f.len = len as u32;
                    f.offload = o;
                    if let Err(f) = to_guest.push(f) {
                        cache.free(f);
                    }
                    to_guest.flush();
                }
            }
            3 => {
                engine.poll(usize::from(inp.u8() % 64) + 1);
            }
            // The scheduler puts the engine to sleep or wakes it.
            4 => {
                if inp.bool() {
                    engine.arm();
                } else {
                    engine.disarm();
                }
            }
            // The frontend stops a ring and starts it again (GET_VRING_BASE,
            // then SET_VRING_BASE with a value of its choice).
            5 => {
                let i = usize::from(inp.u8() % 2);
                engine.detach(sides[i]);
                rings[i].set_queue_next_avail(inp.u16());
                rings[i].set_queue_next_used(inp.u16());
                engine.attach(
                    sides[i],
                    AttachedQueue::new(rings[i].clone(), mem.clone()),
                    negotiated,
                );
            }
            // The switch takes what the guest sent.
            6 => {
                while let Some(f) = from_guest.pop() {
                    assert_frame_fits(pool, &f);
                    cache.free(f);
                }
            }
            _ => {
                engine.set_mtu(68 + inp.u16() % 9200);
            }
        }
    }
    for _ in 0..4 {
        engine.poll(64);
    }
    while let Some(f) = from_guest.pop() {
        assert_frame_fits(pool, &f);
        cache.free(f);
    }
    drop(engine);
    drop(to_guest);
    drop(cache);
    assert_no_frame_leaked(pool);
}
