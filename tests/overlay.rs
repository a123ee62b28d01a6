//! Two snapnet hosts joined by a VXLAN overlay: namespaces `A` and `B` each
//! run a daemon whose uplink is a veth into namespace `F` (the data-centre
//! fabric, a bridge). Guests (Rust frontends) of the same virtual network on
//! the two hosts reach each other; guests of another network, even with the
//! same IP addresses, see nothing of it. Needs root; skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::guest::Guest;
use common::netns::{can_run, run, serve_in, Successor};
use common::packets::{arp, icmp_echo, parse_arp, parse_icmp_echo, BROADCAST};
use common::{wait_for, TempDir};
use snapnet_frontend::{Frontend, FrontendConfig};

const A100: [u8; 6] = [0x52, 0x54, 0x00, 0xa0, 0x01, 0x00];
const A200: [u8; 6] = [0x52, 0x54, 0x00, 0xa0, 0x02, 0x00];
const B100: [u8; 6] = [0x52, 0x54, 0x00, 0xb0, 0x01, 0x00];
const B200: [u8; 6] = [0x52, 0x54, 0x00, 0xb0, 0x02, 0x00];
/// Both networks use the same guest addresses: isolation, not addressing,
/// keeps them apart.
const IP1: [u8; 4] = [10, 50, 0, 1];
const IP2: [u8; 4] = [10, 50, 0, 2];

struct Fabric {
    ns: [String; 3],
    daemons: Vec<Child>,
}

impl Fabric {
    fn new() -> Fabric {
        let id = std::process::id() % 100_000;
        let f = Fabric {
            ns: [
                format!("snoa{id}"),
                format!("snob{id}"),
                format!("snof{id}"),
            ],
            daemons: Vec::new(),
        };
        let [a, b, fab] = &f.ns;
        let sh = |cmd: String| {
            let out = run(&["bash", "-c", &cmd]);
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(format!(
            "ip netns add {a} && ip netns add {b} && ip netns add {fab}"
        ));
        sh(format!("ip -n {fab} link add br0 type bridge && ip -n {fab} link set br0 up && ip -n {fab} link set lo up"));
        for (ns, dev, peer, ip) in [
            (a, "ua", "fa", "192.168.50.1/24"),
            (b, "ub", "fb", "192.168.50.2/24"),
        ] {
            sh(format!(
                "ip link add {dev}{id} netns {ns} type veth peer name {peer}{id} netns {fab}"
            ));
            sh(format!(
                "ip -n {fab} link set {peer}{id} master br0 && ip -n {fab} link set {peer}{id} up"
            ));
            sh(format!("ip -n {ns} link set {dev}{id} name {dev} && ip -n {ns} addr add {ip} dev {dev} && ip -n {ns} link set {dev} up && ip -n {ns} link set lo up"));
        }
        f
    }

    fn mac(&self, host: usize, dev: &str) -> String {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.ns[host],
            "cat",
            &format!("/sys/class/net/{dev}/address"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn start(&mut self, host: usize, config: &Path) {
        let child = serve_in(&self.ns[host], config);
        self.daemons.push(child);
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for c in self.daemons.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[allow(clippy::too_many_arguments)]
fn config(
    dir: &TempDir,
    name: &str,
    local: &str,
    remote: &str,
    remote_mac: &str,
    vnics: [(&str, [u8; 6], u32); 2],
    macs: &str,
) -> PathBuf {
    let path = dir.path(&format!("{name}.json"));
    let v: Vec<String> = vnics
        .iter()
        .map(|(n, m, net)| {
            format!(
                r#"{{ "name": "{n}", "mac": "{}", "network": {net}, "socket": "{}" }}"#,
                mac_str(*m),
                dir.path(&format!("{n}.sock")).display()
            )
        })
        .collect();
    let text = format!(
        r#"{{
        "runtime_dir": "{}",
        "control_socket": "{}",
        "vnics": [ {} ],
        "uplinks": [ {{ "name": "fabric", "interface": "{}",
            "overlay": {{ "local_ip": "{local}",
                "remotes": [ {{ "ip": "{remote}", "mac": "{remote_mac}", "networks": [100, 200] }} ],
                "macs": [ {macs} ] }} }} ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display(),
        dir.path(&format!("{name}-control.sock")).display(),
        v.join(", "),
        if name == "a" { "ua" } else { "ub" },
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn guest(dir: &TempDir, name: &str, mac: [u8; 6], ip: [u8; 4]) -> Guest {
    let sock = dir.path(&format!("{name}.sock"));
    assert!(
        wait_for(Duration::from_secs(10), || sock.exists()),
        "{name}: no socket"
    );
    let nic =
        Frontend::connect(&sock, &FrontendConfig::default(), Duration::from_secs(10)).unwrap();
    Guest::new(nic, mac, ip)
}

/// Answers for the guests of host B until told to stop; returns them.
fn responder(guests: Vec<Guest>, stop: Arc<AtomicBool>) -> thread::JoinHandle<Vec<Guest>> {
    thread::spawn(move || {
        let mut guests = guests;
        while !stop.load(Ordering::Relaxed) {
            for g in guests.iter_mut() {
                g.serve_until(Duration::from_millis(5), |_| false);
            }
        }
        guests
    })
}

/// `g` resolves `peer` and pings it; returns the MAC that answered.
fn resolve_and_ping(g: &mut Guest, peer: [u8; 4]) -> Option<[u8; 6]> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut mac = None;
    while mac.is_none() && Instant::now() < deadline {
        g.send(&arp(1, BROADCAST, g.mac, g.ip, [0; 6], peer));
        mac = g
            .serve_until(Duration::from_millis(300), |f| {
                parse_arp(f).is_some_and(|a| a.op == 2 && a.ip == peer)
            })
            .map(|f| f[6..12].try_into().unwrap());
    }
    let mac = mac?;
    for seq in 1..=3u16 {
        g.send(&icmp_echo(
            8,
            mac,
            g.mac,
            g.ip,
            peer,
            7,
            seq,
            &[seq as u8; 40],
        ));
        g.serve_until(Duration::from_secs(2), |f| {
            parse_icmp_echo(f).is_some_and(|e| e.kind == 0 && e.seq == seq && e.src == peer)
        })?;
    }
    Some(mac)
}

#[test]
fn guests_of_a_network_reach_each_other_across_hosts_and_no_one_else() {
    if !can_run() {
        return;
    }
    let mut fab = Fabric::new();
    let dir = TempDir::new("overlay");
    let (mac_a, mac_b) = (fab.mac(0, "ua"), fab.mac(1, "ub"));
    // Host A knows where b100 lives (unicast straight to B); host B knows
    // nothing of A's MACs and replicates unicast to every remote of the
    // network: both paths are exercised.
    let cfg_a = config(
        &dir,
        "a",
        "192.168.50.1",
        "192.168.50.2",
        &mac_b,
        [("a100", A100, 100), ("a200", A200, 200)],
        &format!(
            r#"{{ "network": 100, "mac": "{}", "remote": "192.168.50.2" }}"#,
            mac_str(B100)
        ),
    );
    let cfg_b = config(
        &dir,
        "b",
        "192.168.50.2",
        "192.168.50.1",
        &mac_a,
        [("b100", B100, 100), ("b200", B200, 200)],
        "",
    );
    fab.start(0, &cfg_a);
    fab.start(1, &cfg_b);
    let mut a100 = guest(&dir, "a100", A100, IP1);
    // The control plane tells host B, live, where a200 lives; a100 stays
    // unknown there (its unicast is replicated to every remote of network 100).
    let b_ctl = dir.path("b-control.sock");
    assert!(wait_for(Duration::from_secs(10), || b_ctl.exists()));
    let mut ctl_b = common::rpc::Checked::connect(&b_ctl);
    let info = ctl_b.ok(
        "uplink.update",
        serde_json::json!({ "name": "fabric", "overlay": {
            "local_ip": "192.168.50.2",
            "remotes": [ { "ip": "192.168.50.1", "mac": mac_a, "networks": [100, 200] } ],
            "macs": [ { "network": 200, "mac": mac_str(A200), "remote": "192.168.50.1" } ] } }),
    );
    assert_eq!(info["overlay"]["macs"][0]["network"], 200);
    ctl_b.err(
        "uplink.update",
        serde_json::json!({ "name": "fabric", "overlay": {
            "local_ip": "192.168.50.2", "remotes": [],
            "macs": [ { "network": 200, "mac": mac_str(A200), "remote": "192.168.50.9" } ] } }),
        1004,
    );
    let mut a200 = guest(&dir, "a200", A200, IP1);
    let b_guests = vec![
        guest(&dir, "b100", B100, IP2),
        guest(&dir, "b200", B200, IP2),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let b = responder(b_guests, stop.clone());

    let got = resolve_and_ping(&mut a100, IP2);
    let got200 = resolve_and_ping(&mut a200, IP2);
    // A frame from network 100 to network 200's guest, by MAC, goes nowhere.
    a100.send(&icmp_echo(8, B200, A100, IP1, IP2, 9, 1, &[0; 20]));
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let b_guests = b.join().unwrap();
    assert_eq!(got, Some(B100), "a100 must reach b100 (and only b100)");
    assert_eq!(got200, Some(B200), "a200 must reach b200 (and only b200)");
    let (b100, b200) = (&b_guests[0], &b_guests[1]);
    assert_eq!(b100.answered_echo, 3, "b100 answered a100's pings only");
    assert_eq!(
        b200.answered_echo, 3,
        "b200 answered a200's pings only, not the cross-network one"
    );
    assert!(b100.answered_arp >= 1 && b200.answered_arp >= 1);
    // The fabric carried VXLAN: the uplink counters say so.
    let out = run(&[
        env!("CARGO_BIN_EXE_snapnet"),
        "ctl",
        "--socket",
        dir.path("b-control.sock").to_str().unwrap(),
        "--json",
        "uplink",
        "stats",
        "fabric",
    ]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(stats["rx_packets"].as_u64().unwrap() >= 8, "{stats}");
    assert_eq!(stats["drop_unknown_network"], 0);
    assert_eq!(stats["drop_unknown_remote"], 0);

    // Both hosts are upgraded: each overlay uplink (its table, the entry B
    // was given over RPC included) crosses to the new process, and the
    // guests reach each other across the fabric as before.
    let mut successors = [Successor(None), Successor(None)];
    for (host, successor) in ["a", "b"].iter().zip(successors.iter_mut()) {
        let ctl = dir.path(&format!("{host}-control.sock"));
        let r = common::rpc::Checked::connect(&ctl).ok("daemon.upgrade", serde_json::json!({}));
        successor.follow(&r);
    }
    let mut ctl_b = common::rpc::Checked::connect(&b_ctl);
    let list = ctl_b.ok("uplink.list", serde_json::json!({}));
    assert_eq!(
        list[0]["overlay"]["macs"][0]["network"], 200,
        "the table B was given over RPC went with the upgrade: {list}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let b = responder(b_guests, stop.clone());
    let got = resolve_and_ping(&mut a100, IP2);
    let got200 = resolve_and_ping(&mut a200, IP2);
    stop.store(true, Ordering::Relaxed);
    b.join().unwrap();
    assert_eq!(got, Some(B100), "a100 reaches b100 after the upgrades");
    assert_eq!(got200, Some(B200), "a200 reaches b200 after the upgrades");
    let after = ctl_b.ok("uplink.stats", serde_json::json!({ "name": "fabric" }));
    assert!(
        after["rx_packets"].as_u64() > stats["rx_packets"].as_u64(),
        "B's uplink counters went on: {after}"
    );
}
