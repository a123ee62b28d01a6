//! The checked wire views and the flow parser on any bytes: no panic, and
//! what they report lies inside the packet.
#![no_main]
use std::str::FromStr;

use libfuzzer_sys::fuzz_target;
use snapnet_wire::flow::Parsed;
use snapnet_wire::ip::{l4_ports, Ipv4Packet, Ipv6Packet};
use snapnet_wire::virtq_packed::need_event;
use snapnet_wire::{EthernetFrame, MacAddr};
use snapnet_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    // Packed-ring event suppression arithmetic on any indices.
    let (off_wrap, old, new, wrap) = (inp.u16(), inp.u16(), inp.u16(), inp.bool());
    let size = inp.u16().max(1);
    let _ = need_event(off_wrap, old, new, wrap, size);
    let packet = inp.rest();

    if let Ok(text) = std::str::from_utf8(packet) {
        if let Ok(mac) = MacAddr::from_str(text) {
            assert_eq!(MacAddr::from_str(&mac.to_string()).ok(), Some(mac));
        }
    }
    if let Some(eth) = EthernetFrame::new_checked(packet) {
        let _ = (eth.dst().is_group(), eth.src().to_u64(), eth.ethertype());
        let l3 = eth.payload();
        assert!(l3.len() + 14 <= packet.len());
        if let Some(ip) = Ipv4Packet::new_checked(l3) {
            let _ = (ip.protocol(), ip.src(), ip.dst(), ip.is_fragment());
            assert!(ip.payload().len() <= l3.len());
            let _ = l4_ports(ip.payload());
        }
        if let Some(ip) = Ipv6Packet::new_checked(l3) {
            let _ = (ip.next_header(), ip.src(), ip.dst());
            assert!(ip.payload().len() <= l3.len());
            let _ = l4_ports(ip.payload());
        }
    }
    match Parsed::of(packet) {
        None => assert!(packet.len() < 14, "an Ethernet frame was not parsed"),
        Some(p) => {
            assert!(p.is_parsed());
            assert!(usize::from(p.l3) <= packet.len());
            if p.l4 != 0 {
                assert!(
                    usize::from(p.l4) + 4 <= packet.len(),
                    "L4 ports past the end"
                );
            }
        }
    }
});
