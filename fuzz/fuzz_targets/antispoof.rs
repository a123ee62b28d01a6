//! Anti-spoofing on any frame a guest can send, against an independent
//! model of the rule: a frame passes only with the vNIC's source MAC and,
//! when addresses are enforced, only with an allowed IPv4/IPv6 source or
//! ARP sender, whatever VLAN tags (802.1Q, QinQ) or IPv6 extension headers
//! stand in front; a neighbour advertisement may only announce an allowed
//! address. A frame the model cannot read to the end is not judged.
#![no_main]
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use snapnet_wire::MacAddr;
use snapnet::vnic::antispoof::SpoofGuard;
use snapnet_fuzz::Input;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
/// Tag protocol identifiers a receiver reads past: 802.1Q and 802.1ad
/// (QinQ), as Linux's `eth_type_vlan`. (The pre-standard 0x9100 is an
/// unknown ethertype to Linux and passes like any other.)
const TPIDS: [u16; 2] = [0x8100, 0x88a8];
/// Most tags / extension headers the model walks.
const MAX_HEADERS: usize = 16;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Link-local address from the MAC (modified EUI-64), which a guest may
/// always use.
fn link_local(m: MacAddr) -> [u8; 16] {
    let m = m.0;
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..16].copy_from_slice(&[m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    a
}

/// What the model says of a frame that passed: `Some(reason)` when it must
/// have been dropped.
fn must_drop(frame: &[u8], v4: &[[u8; 4]], v6: &[[u8; 16]]) -> Option<&'static str> {
    let mut at = 12;
    let mut ethertype = be16(frame, at)?;
    for _ in 0..MAX_HEADERS {
        if !TPIDS.contains(&ethertype) {
            break;
        }
        at += 4;
        ethertype = be16(frame, at)?;
    }
    let l3 = frame.get(at + 2..)?;
    match ethertype {
        0x0800 => {
            let src: [u8; 4] = l3.get(12..16)?.try_into().ok()?;
            (!v4.contains(&src)).then_some("IPv4 source not allowed")
        }
        0x0806 => {
            let sender_mac = l3.get(8..14)?;
            let sender_ip: [u8; 4] = l3.get(14..18)?.try_into().ok()?;
            (sender_mac != MAC.0 || !v4.contains(&sender_ip)).then_some("ARP sender not allowed")
        }
        0x86dd => {
            let src: [u8; 16] = l3.get(8..24)?.try_into().ok()?;
            if !v6.contains(&src) {
                return Some("IPv6 source not allowed");
            }
            // Walk extension headers to the upper layer.
            let mut next = *l3.get(6)?;
            let mut at = 40;
            for _ in 0..MAX_HEADERS {
                match next {
                    0 | 43 | 60 => {
                        next = *l3.get(at)?;
                        at += (usize::from(*l3.get(at + 1)?) + 1) * 8;
                    }
                    44 => {
                        next = *l3.get(at)?;
                        at += 8;
                    }
                    _ => break,
                }
            }
            // ICMPv6 neighbour advertisement: the target must be allowed.
            if next == 58 && *l3.get(at)? == 136 {
                let target: [u8; 16] = l3.get(at + 8..at + 24)?.try_into().ok()?;
                if !v6.contains(&target) {
                    return Some("neighbour advertisement for an address not allowed");
                }
            }
            None
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let enforce = inp.bool();
    let mut allowed = Vec::new();
    for _ in 0..inp.u8() % 4 {
        if inp.bool() {
            allowed.push(IpAddr::V4(Ipv4Addr::from(inp.u32())));
        } else {
            let b: [u8; 16] = std::array::from_fn(|_| inp.u8());
            allowed.push(IpAddr::V6(Ipv6Addr::from(b)));
        }
    }
    let frame = inp.rest();
    if SpoofGuard::new(MAC, enforce.then_some(&allowed[..]))
        .check(frame)
        .is_err()
    {
        return;
    }
    assert_eq!(
        frame.get(6..12),
        Some(&MAC.0[..]),
        "foreign source MAC passed"
    );
    if !enforce {
        return;
    }
    // The unspecified addresses are always allowed (DHCP, DAD).
    let mut v4 = vec![[0u8; 4]];
    let mut v6 = vec![[0u8; 16], link_local(MAC)];
    for ip in &allowed {
        match ip {
            IpAddr::V4(a) => v4.push(a.octets()),
            IpAddr::V6(a) => v6.push(a.octets()),
        }
    }
    if let Some(why) = must_drop(frame, &v4, &v6) {
        panic!("spoofed frame passed: {why}");
    }
});
