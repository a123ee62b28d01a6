//! VXLAN decapsulation of any frame off the wire: no panic; an accepted
//! frame fits its buffer, was addressed to us from a remote host of its VNI,
//! and its network is that VNI. Encapsulating any inner frame for a remote
//! host and decapsulating it gives the same bytes and network back.
#![no_main]
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use snapnet_wire::MacAddr;
use snapnet::uplink::overlay::{OverlayConfig, OverlayTable, RemoteHost, OVERHEAD};
use snapnet_fuzz::{assert_frame_fits, assert_no_frame_leaked, pool, Input};

const LOCAL_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xaa]);

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let local_ip = Ipv4Addr::from(inp.u32());
    let remotes: Vec<RemoteHost> = (0..inp.u8() % 4)
        .map(|i| RemoteHost {
            ip: Ipv4Addr::from(inp.u32()),
            mac: MacAddr([2, 0, 0, 0, 1, i]),
            networks: (0..inp.u8() % 3).map(|_| inp.u32() & 0xff_ffff).collect(),
        })
        .collect();
    let cfg = OverlayConfig {
        local_ip,
        remotes,
        macs: Vec::new(),
    };
    let Ok(table) = OverlayTable::new(&cfg, LOCAL_MAC) else {
        return;
    };
    let encap_first = inp.bool();
    let (host, network, entropy) = (usize::from(inp.u8() % 4), inp.u32() & 0xff_ffff, inp.u16());
    let bytes = inp.rest();
    let pool = pool();
    let mut cache = pool.cache();
    let Some(mut frame) = cache.alloc(bytes.len()) else {
        return;
    };
    let off = usize::from(frame.offset);
    pool.frame_mut(&mut frame)[off..off + bytes.len()].copy_from_slice(bytes);
    frame.len = bytes.len() as u32;

    if encap_first {
        frame.network = network;
        if table.encap(pool, &mut frame, host, entropy) {
            assert_frame_fits(pool, &frame);
            let src = cfg.remotes[host].ip;
            let known = cfg.remotes.iter().any(|r| r.networks.contains(&network));
            // Our own frame comes back as if the remote host had sent it.
            let outer = pool.frame_mut(&mut frame);
            outer[off - OVERHEAD + 14 + 12..off - OVERHEAD + 14 + 16]
                .copy_from_slice(&src.octets());
            outer[off - OVERHEAD + 14 + 16..off - OVERHEAD + 14 + 20]
                .copy_from_slice(&local_ip.octets());
            let result = table.decap(pool, &mut frame);
            let from_member = cfg.remotes[host].networks.contains(&network);
            // The first remote with that address answers for it.
            let first = cfg.remotes.iter().position(|r| r.ip == src) == Some(host);
            if from_member && first && bytes.len() >= 14 {
                assert_eq!(result, Ok(()), "own encapsulation refused");
                assert_eq!(pool.bytes(&frame), bytes, "inner frame changed");
                assert_eq!(frame.network, network);
            } else if !known {
                assert!(result.is_err(), "frame of an unknown VNI accepted");
            }
        }
    } else if table.decap(pool, &mut frame).is_ok() {
        assert_frame_fits(pool, &frame);
        let outer = &bytes[..OVERHEAD];
        assert_eq!(
            &outer[14 + 16..14 + 20],
            &local_ip.octets(),
            "not addressed to us"
        );
        let vni = u32::from_be_bytes([0, outer[46], outer[47], outer[48]]);
        assert_eq!(frame.network, vni);
        let src = Ipv4Addr::new(outer[26], outer[27], outer[28], outer[29]);
        assert!(
            cfg.remotes
                .iter()
                .any(|r| r.ip == src && r.networks.contains(&vni)),
            "accepted from a host that is not a remote of the VNI"
        );
        assert!(frame.len as usize + OVERHEAD <= bytes.len());
    }
    cache.free(frame);
    drop(cache);
    assert_no_frame_leaked(pool);
});
