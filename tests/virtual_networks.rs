//! Virtual networks and anti-spoofing, through the real daemon: vNICs of
//! different networks never see each other's frames (broadcast included),
//! and a guest can only send as itself.

mod common;

use std::time::Duration;

use common::packets::{arp, BROADCAST};
use common::{connect, frame, start, wait_ready, TempDir};
use snapnet::control::Config;
use snapnet::vnic::DropReason;
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

const A: [u8; 6] = [0x52, 0x54, 0x00, 0x6e, 0x00, 0x0a];
const B: [u8; 6] = [0x52, 0x54, 0x00, 0x6e, 0x00, 0x0b];
const C: [u8; 6] = [0x52, 0x54, 0x00, 0x6e, 0x00, 0x0c];

fn config(dir: &TempDir) -> Config {
    Config::from_json(&format!(
        r#"{{
        "runtime_dir": "{}",
        "vnics": [
            {{ "name": "a", "mac": "52:54:00:6e:00:0a", "network": 7, "allowed_ips": ["10.7.0.10"] }},
            {{ "name": "b", "mac": "52:54:00:6e:00:0b", "network": 7 }},
            {{ "name": "c", "mac": "52:54:00:6e:00:0c", "network": 8 }}
        ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display()
    ))
    .unwrap()
}

fn ipv4_udp(dst: [u8; 6], src: [u8; 6], src_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&[10, 7, 0, 11]);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    f.resize(60, 0);
    f
}

/// Sends `frames` from `tx` and returns what each receiver got within a
/// short while.
fn send_and_collect(
    tx: &mut Frontend,
    frames: &[Vec<u8>],
    rxs: &mut [&mut Frontend],
) -> Vec<Vec<Vec<u8>>> {
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    assert_eq!(tx.send(0, &refs, &VirtioNetHdr::default()), frames.len());
    std::thread::sleep(Duration::from_millis(150));
    rxs.iter_mut()
        .map(|rx| {
            let mut got = Vec::new();
            rx.recv(0, |_, p| got.push(p.to_vec()));
            got
        })
        .collect()
}

#[test]
fn networks_are_isolated_and_guests_send_only_as_themselves() {
    let dir = TempDir::new("vnet");
    let mut daemon = start(&config(&dir));
    let fc = FrontendConfig::default();
    let mut a = connect(&dir.path("a.sock"), &fc);
    let mut b = connect(&dir.path("b.sock"), &fc);
    let mut c = connect(&dir.path("c.sock"), &fc);
    wait_ready(&daemon);

    // Broadcast from a reaches b (same network), not c.
    let got = send_and_collect(&mut a, &[frame(BROADCAST, A, 60, 1)], &mut [&mut b, &mut c]);
    assert_eq!(got[0].len(), 1, "b is in a's network");
    assert!(got[1].is_empty(), "c is in another network");
    // Broadcast and unicast from c reach nobody in network 7.
    let got = send_and_collect(
        &mut c,
        &[
            frame(BROADCAST, C, 60, 2),
            frame(A, C, 60, 3),
            frame(B, C, 60, 4),
        ],
        &mut [&mut a, &mut b],
    );
    assert!(
        got[0].is_empty() && got[1].is_empty(),
        "network 8 leaked into 7: {got:?}"
    );
    // Unicast from a to c's MAC does not cross networks either (it is
    // unknown in network 7 and flooded there only).
    let got = send_and_collect(&mut a, &[frame(C, A, 60, 5)], &mut [&mut b, &mut c]);
    assert!(got[1].is_empty());

    // Spoofing: a foreign source MAC, an IP source not allowed, an ARP
    // claiming another address. Each is dropped and counted; what a may send
    // still goes through.
    let good = ipv4_udp(B, A, [10, 7, 0, 10]);
    let frames = vec![
        frame(B, C, 60, 6),
        ipv4_udp(B, A, [10, 7, 0, 99]),
        arp(2, B, A, [10, 7, 0, 11], B, [10, 7, 0, 11]),
        arp(2, B, A, [10, 7, 0, 10], B, [10, 7, 0, 11]),
        good.clone(),
    ];
    let got = send_and_collect(&mut a, &frames, &mut [&mut b]);
    assert_eq!(got[0].len(), 2, "only the allowed ARP and IPv4 frames pass");
    assert_eq!(got[0][1], good);
    let drops = |d: &snapnet::control::Daemon, r: DropReason| -> u64 {
        d.report()
            .iter()
            .find(|v| v.name == "a")
            .unwrap()
            .queues
            .iter()
            .map(|q| q.dropped(r))
            .sum()
    };
    assert_eq!(drops(&daemon, DropReason::SpoofedMac), 1);
    assert_eq!(drops(&daemon, DropReason::SpoofedIp), 1);
    assert_eq!(drops(&daemon, DropReason::SpoofedArp), 1);

    // The allowed addresses change at runtime: the old one is refused, the
    // new one passes; with the list removed only the MAC is checked.
    daemon
        .set_vnic_allowed_ips("a", Some(vec!["10.7.0.99".parse().unwrap()]))
        .unwrap();
    let got = send_and_collect(
        &mut a,
        &[
            ipv4_udp(B, A, [10, 7, 0, 10]),
            ipv4_udp(B, A, [10, 7, 0, 99]),
        ],
        &mut [&mut b],
    );
    assert_eq!(got[0], vec![ipv4_udp(B, A, [10, 7, 0, 99])]);
    daemon.set_vnic_allowed_ips("a", None).unwrap();
    let got = send_and_collect(&mut a, &[ipv4_udp(B, A, [1, 2, 3, 4])], &mut [&mut b]);
    assert_eq!(got[0].len(), 1);

    // The forwarding database keeps the networks apart.
    let fdb = daemon.fdb_entries().unwrap();
    assert!(fdb
        .iter()
        .any(|(n, m, p, s)| *n == 7 && m.0 == A && p == "a" && *s));
    assert!(fdb
        .iter()
        .any(|(n, m, p, _)| *n == 8 && m.0 == C && p == "c"));
    daemon.stop();
}

/// Port security as in clouds, through the daemon: an allowed address
/// pair's MAC may send with its own addresses, QinQ tags do not hide a
/// spoofed address, and with port security off a router VM forwards frames
/// from any MAC.
#[test]
fn address_pairs_qinq_and_port_security_off() {
    use snapnet::control::config::AddressPair;
    use snapnet::control::daemon::PortSecurityChange;
    use snapnet_wire::MacAddr;
    const VMAC: [u8; 6] = [0, 0, 0x5e, 0, 1, 7];
    let dir = TempDir::new("portsec");
    let mut daemon = start(&config(&dir));
    let fc = FrontendConfig::default();
    let mut a = connect(&dir.path("a.sock"), &fc);
    let mut b = connect(&dir.path("b.sock"), &fc);
    let _c = connect(&dir.path("c.sock"), &fc);
    wait_ready(&daemon);
    let spoofed_ip = |d: &snapnet::control::Daemon| -> u64 {
        d.report().iter().find(|v| v.name == "a").unwrap().queues[0].dropped(DropReason::SpoofedIp)
    };
    daemon
        .set_vnic_port_security(
            "a",
            PortSecurityChange {
                allowed_address_pairs: Some(vec![AddressPair {
                    mac: MacAddr(VMAC),
                    ips: Some(vec!["10.7.0.100".parse().unwrap()]),
                }]),
                ..Default::default()
            },
        )
        .unwrap();
    let qinq = |src_ip| {
        let mut f = ipv4_udp(B, A, src_ip);
        f.splice(12..12, [0x88, 0xa8, 0, 5, 0x81, 0x00, 0, 6]);
        f
    };
    let pair_frame = ipv4_udp(B, VMAC, [10, 7, 0, 100]);
    let got = send_and_collect(
        &mut a,
        &[
            pair_frame.clone(),
            ipv4_udp(B, VMAC, [10, 7, 0, 10]),
            qinq([10, 7, 0, 99]),
            qinq([10, 7, 0, 10]),
        ],
        &mut [&mut b],
    );
    assert_eq!(got[0].len(), 2, "the pair's own frame and a's QinQ frame");
    assert_eq!(got[0][0], pair_frame);
    assert_eq!(spoofed_ip(&daemon), 2);
    // A router VM: port security off, anything goes (and is counted sent).
    daemon
        .set_vnic_port_security(
            "a",
            PortSecurityChange {
                port_security: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
    let routed = ipv4_udp(B, [2, 0, 0, 0, 0, 0x77], [192, 0, 2, 1]);
    let got = send_and_collect(&mut a, std::slice::from_ref(&routed), &mut [&mut b]);
    assert_eq!(got[0], vec![routed]);
    assert_eq!(spoofed_ip(&daemon), 2);
    daemon.stop();
}
