//! What the Pony engine does with packets off the wire (docs/pony.md): raw
//! frames of any content, and well-formed Pony packets whose every field
//! (epochs, sequence numbers, SACK bitmaps, operation, connection ids,
//! offsets, lengths, regions, addresses, indirection entries) comes from
//! the fuzzer, against an engine with one attached application that offers
//! a service and has registered regions. No panic, what the engine sends
//! fits its frames, the application's receive area never gives out more
//! than it holds, and every frame returns to the pool.
#![no_main]
use std::net::Ipv4Addr;
use std::sync::mpsc;

use libfuzzer_sys::fuzz_target;
use snapnet::engine::Engine;
use snapnet::packet::{link, FrameCache, LinkTx};
use snapnet::pony::apps::{App, Registered};
use snapnet::pony::frames;
use snapnet::pony::region::SharedRegion;
use snapnet::pony::{PonyConfig, PonyEngine, PonySetup};
use snapnet_fuzz::{assert_frame_fits, assert_no_frame_leaked, pool, Input};
use snapnet_pony::abi::{access, Layout};
use snapnet_wire::pony::{self as wire, FlowHeader, Op, OpHeader};
use snapnet_wire::MacAddr;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
/// Two peers, so that flows to more than one host are exercised.
const PEERS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 3)];
const PEER_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
const SERVICE: u32 = 7;
const ARENA: u64 = 1 << 16;
const MAX_OPS: usize = 128;

fn config() -> PonyConfig {
    serde_json::from_value(serde_json::json!({
        "socket": "/nonexistent/pony.sock",
        "uplink": "wire",
        "address": LOCAL.to_string(),
        "max_flows": 2,
        "max_connections_per_app": 8,
        "max_message_bytes": 1 << 20,
        "rx_bytes": 1 << 16,
        "queue_entries": 16,
        "rto_min_us": 1000,
    }))
    .expect("config")
}

fn app() -> App {
    let layout = Layout::new(16, 16, ARENA, 1 << 16);
    let (region, _memfd) = SharedRegion::create(layout).expect("region");
    let mut app = App::new(
        1,
        "fuzz".into(),
        SERVICE,
        region,
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    );
    // Region 1: all of the arena, every access; region 2: a read-only
    // indirection table of 16-byte entries in its first page.
    for r in [
        Registered {
            offset: 0,
            len: ARENA,
            access: access::READ | access::WRITE,
        },
        Registered {
            offset: 0,
            len: 4096,
            access: access::READ,
        },
    ] {
        app.register(r, 4).expect("register");
    }
    app
}

/// An operation header from fuzzed fields, ids and offsets kept small so
/// that they name things that exist.
fn op_header(inp: &mut Input) -> Option<OpHeader> {
    Some(OpHeader {
        op: Op::from_u8(inp.u8() % 12)?,
        flags: inp.u8(),
        stream: u16::from(inp.u8() & 3),
        dst_conn: u32::from(inp.u8() & 7),
        src_conn: u32::from(inp.u8() & 7),
        total_len: inp.u32() & 0x1f_ffff,
        op_id: u64::from(inp.u8()),
        offset: inp.u32() & 0x1f_ffff,
        region: u32::from(inp.u8() & 3),
        addr: inp.u64() & 0x1_ffff,
        aux: inp.u64(),
    })
}

/// A Pony packet to the engine: raw bytes, or headers built from fuzzed
/// fields around a fuzzed payload.
fn packet(inp: &mut Input, out: &mut Vec<u8>) -> Ipv4Addr {
    let peer = PEERS[usize::from(inp.u8() & 1)];
    out.clear();
    out.resize(frames::HEADERS_LEN, 0);
    let sack = |inp: &mut Input| {
        let mut sack = [0u64; wire::SACK_BITS / 64];
        for w in &mut sack {
            *w = inp.u64();
        }
        sack
    };
    match inp.u8() % 4 {
        0 => out.extend_from_slice(inp.chunk()),
        kind => {
            let flow = FlowHeader {
                kind: [wire::kind::DATA, wire::kind::ACK, wire::kind::DATA_ACK]
                    [usize::from(kind) - 1],
                src_epoch: u32::from(inp.u8() & 3),
                dst_epoch: if inp.bool() { 0 } else { inp.u32() },
                seq: u32::from(inp.u16()),
                timestamp: inp.u64(),
                hold: inp.u32(),
                // Up to three operations bundled after the first.
                more: u16::from(inp.u8() % 4),
            };
            if kind != 2 {
                let Some(h) = op_header(inp) else {
                    return peer;
                };
                let payload = inp.chunk();
                out.resize(frames::HEADERS_LEN + wire::DATA_HEADER_LEN, 0);
                wire::emit_data(&flow, &h, &mut out[frames::HEADERS_LEN..]);
                if flow.more > 0 {
                    wire::set_first_len(payload.len() as u16, &mut out[frames::HEADERS_LEN..]);
                }
                out.extend_from_slice(payload);
                for _ in 0..flow.more {
                    let Some(h) = op_header(inp) else {
                        return peer;
                    };
                    let payload = inp.chunk();
                    let at = out.len();
                    out.resize(at + wire::SEGMENT_OVERHEAD, 0);
                    wire::emit_segment(&h, payload.len() as u16, &mut out[at..]);
                    out.extend_from_slice(payload);
                }
                if kind == 3 {
                    // A DATA_ACK: the acknowledgement trailer after the payload.
                    let ack = wire::AckBlock {
                        cumulative: u32::from(inp.u16()),
                        hold: inp.u32(),
                        echo: inp.u64(),
                        sack: sack(inp),
                    };
                    let at = out.len();
                    out.resize(at + wire::ACK_TRAILER_LEN, 0);
                    wire::emit_ack_trailer(&ack, &mut out[at..]);
                }
            } else {
                let sack = sack(inp);
                out.resize(frames::HEADERS_LEN + wire::ACK_LEN, 0);
                wire::emit_ack(&flow, &sack, &mut out[frames::HEADERS_LEN..]);
            }
        }
    }
    let pony_len = out.len() - frames::HEADERS_LEN;
    frames::write_headers(out, PEER_MAC, LOCAL_MAC, peer, LOCAL, pony_len);
    peer
}

fn deliver(bytes: &[u8], cache: &mut FrameCache, to_engine: &mut LinkTx) {
    let pool = pool();
    let Some(mut f) = cache.alloc(bytes.len()) else {
        return;
    };
    let off = usize::from(f.offset);
    pool.frame_mut(&mut f)[off..off + bytes.len()].copy_from_slice(bytes);
    f.len = bytes.len() as u32;
    if let Err(f) = to_engine.push(f) {
        cache.free(f);
    }
    to_engine.flush();
}

fuzz_target!(|data: &[u8]| {
    let pool = pool();
    let mut inp = Input::new(data);
    {
        let (mut to_engine, from_wire) = link(64).expect("link");
        let (to_wire, mut from_engine) = link(64).expect("link");
        let (resolver, _asked) = mpsc::channel();
        let setup = PonySetup {
            name: "pony".into(),
            address: LOCAL,
            mac: LOCAL_MAC,
            mtu: 1500,
            from_uplink: vec![from_wire],
            to_uplink: vec![to_wire],
            resolver,
        };
        let (mut engine, _mailbox) = PonyEngine::new(setup, config(), pool).expect("engine");
        engine.add_app(app()).expect("app");
        let mut cache = pool.cache();
        let mut buf = Vec::with_capacity(4096);
        for _ in 0..MAX_OPS {
            if inp.is_empty() {
                break;
            }
            let peer = packet(&mut inp, &mut buf);
            deliver(&buf, &mut cache, &mut to_engine);
            engine.resolved(peer, Some(PEER_MAC));
            engine.poll(64);
            while let Some(f) = from_engine.pop() {
                assert_frame_fits(pool, &f);
                assert!(
                    f.len as usize >= frames::HEADERS_LEN,
                    "a frame without headers"
                );
                cache.free(f);
            }
            let status = engine.status();
            for a in &status.apps {
                assert!(a.rx_used_bytes <= a.rx_bytes, "{a:?}");
            }
        }
        drop(engine);
        while let Some(f) = from_engine.pop() {
            cache.free(f);
        }
    }
    assert_no_frame_leaked(pool);
});
