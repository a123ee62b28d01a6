//! What the uplink does with frames off the wire, up to the guests' links:
//! the AF_XDP RX descriptor the kernel hands back (any address and length)
//! is taken back through the UMEM loan ledger, an overlay uplink
//! decapsulates it, and the switch learns from it and forwards it to the
//! vNIC ports. No panic, every handle fits its frame, no address becomes two
//! handles, and every frame returns to the pool.
//!
//! The socket itself is the kernel's; this drives the same steps as
//! `UplinkQueueEngine::receive` through their public parts, so it needs no
//! NIC, namespace or privilege.
#![no_main]
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use snapnet::engine::Engine;
use snapnet_wire::MacAddr;
use snapnet::packet::{link, FrameCache, FrameHandle, LinkRx, LinkTx, UmemLoans};
use snapnet::switch::{PortNetwork, SwitchEngine, SwitchPort};
use snapnet::uplink::overlay::{OverlayConfig, OverlayTable, RemoteHost};
use snapnet_fuzz::{assert_frame_fits, assert_no_frame_leaked, pool, Input};

const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xaa]);
const LOCAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The frame size an uplink posts to its fill ring (MTU 1500 plus header).
const FILL_FRAME: usize = 1514;
const MAX_OPS: usize = 256;

struct Port {
    to_switch: LinkTx,
    from_switch: LinkRx,
}

fn port(
    switch: &mut SwitchEngine,
    network: PortNetwork,
    macs: &[MacAddr],
) -> (Port, snapnet::switch::PortId) {
    let (to_switch, input) = link(64).expect("link");
    let (output, from_switch) = link(64).expect("link");
    let (id, _) = switch.add_port(
        SwitchPort::new("p", network, vec![input], vec![output]),
        macs,
    );
    (
        Port {
            to_switch,
            from_switch,
        },
        id,
    )
}

/// The fill ring gets a frame, holding what the kernel will have written
/// into it when it hands it back.
fn lend(inp: &mut Input, loans: &mut UmemLoans, cache: &mut FrameCache, lent: &mut Vec<u64>) {
    let pool = pool();
    let Some(mut f) = cache.alloc(FILL_FRAME) else {
        return;
    };
    let content = inp.chunk();
    let off = usize::from(f.offset);
    let n = content.len().min(pool.capacity(&f) - off);
    pool.frame_mut(&mut f)[off..off + n].copy_from_slice(&content[..n]);
    match loans.lend(f) {
        Ok(addr) => lent.push(addr),
        Err(f) => cache.free(f),
    }
}

/// A frame off the RX ring, on its way to the switch.
fn received(
    mut frame: FrameHandle,
    table: Option<&OverlayTable>,
    cache: &mut FrameCache,
    uplink: &mut Port,
) {
    let pool = pool();
    assert_frame_fits(pool, &frame);
    if let Some(t) = table {
        if t.decap(pool, &mut frame).is_err() {
            cache.free(frame);
            return;
        }
        assert_frame_fits(pool, &frame);
    }
    if let Err(f) = uplink.to_switch.push(frame) {
        cache.free(f);
    }
    uplink.to_switch.flush();
}

/// Everything a port handed out goes back to the pool.
fn drain(p: &mut Port, cache: &mut FrameCache) {
    while let Some(f) = p.from_switch.pop() {
        assert_frame_fits(pool(), &f);
        cache.free(f);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let pool = pool();
    let overlay = inp.bool();
    let table = overlay.then(|| {
        let cfg = OverlayConfig {
            local_ip: LOCAL_IP,
            remotes: vec![RemoteHost {
                ip: Ipv4Addr::new(192, 0, 2, 2),
                mac: MacAddr([2, 0, 0, 0, 0, 0xbb]),
                networks: vec![1, 2],
            }],
            macs: Vec::new(),
        };
        OverlayTable::new(&cfg, LOCAL_MAC).expect("overlay")
    });
    let (mut switch, _handle) = snapnet::switch::shards::single(pool).expect("switch");
    let (mut uplink, uplink_id) = port(
        &mut switch,
        if overlay {
            PortNetwork::Any
        } else {
            PortNetwork::Only(1)
        },
        &[],
    );
    let vnic_macs = [MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2])];
    let mut vnics = Vec::new();
    for (i, mac) in vnic_macs.iter().enumerate() {
        vnics.push(port(&mut switch, PortNetwork::Only(i as u32 + 1), &[*mac]));
    }

    let mut loans = UmemLoans::new(pool);
    let mut cache = pool.cache();
    let mut lent: Vec<u64> = Vec::new();
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 5 {
            // The fill ring gets a frame.
            0 => lend(&mut inp, &mut loans, &mut cache, &mut lent),
            // The RX ring returns a descriptor: near a lent address, or any.
            1 => {
                let pick = usize::from(inp.u8());
                let delta = i64::from(inp.u16() as i16);
                let len = u32::from(inp.u16());
                let addr = match lent.get(pick) {
                    Some(a) => a.wrapping_add_signed(delta),
                    None => inp.u64(),
                };
                let first = loans.reclaim(addr, len);
                if let Some(frame) = first {
                    assert!(
                        loans.reclaim(addr, len).is_none(),
                        "one address, two handles"
                    );
                    received(frame, table.as_ref(), &mut cache, &mut uplink);
                }
            }
            2 => {
                switch.poll(usize::from(inp.u8() % 64) + 1);
            }
            // A guest sends (the switch learns its MAC, or a spoofed one).
            3 => {
                let v = &mut vnics[usize::from(inp.u8() % 2)].0;
                let bytes = inp.chunk();
                if let Some(mut f) = cache.alloc(bytes.len()) {
                    let off = usize::from(f.offset);
                    pool.frame_mut(&mut f)[off..off + bytes.len()].copy_from_slice(bytes);
                    f.len = bytes.len() as u32;
                    if let Err(f) = v.to_switch.push(f) {
                        cache.free(f);
                    }
                    v.to_switch.flush();
                }
            }
            // Guests and the wire take what the switch sent them.
            _ => {
                drain(&mut uplink, &mut cache);
                for (p, _) in vnics.iter_mut() {
                    drain(p, &mut cache);
                }
            }
        }
    }
    for _ in 0..4 {
        switch.poll(64);
    }
    drain(&mut uplink, &mut cache);
    switch.remove_port(uplink_id);
    for (p, id) in vnics.iter_mut() {
        drain(p, &mut cache);
        switch.remove_port(*id);
    }
    for f in loans.reclaim_all() {
        cache.free(f);
    }
    drop(switch);
    drop(cache);
    assert_no_frame_leaked(pool);
});
