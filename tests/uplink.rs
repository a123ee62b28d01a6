//! The AF_XDP uplink against a real kernel: a veth pair stands for the NIC,
//! a network namespace for another host on the wire, and a Rust frontend for
//! the guest. snapnet runs as its own process in the host namespace, so that
//! `kill -9` can be tested. Needs root (CI has it); skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::guest::Guest;
use common::netns::{can_run, Lab, Successor};
use common::packets::{arp, icmp_echo, parse_arp, parse_icmp_echo, BROADCAST};
use common::rpc::Checked;
use common::{wait_for, TempDir};
use serde_json::json;
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x77, 0x00, 0x10];

fn write_config(dir: &TempDir, lab: &Lab) -> PathBuf {
    let path = dir.path("snapnet.json");
    let text = format!(
        r#"{{
        "runtime_dir": "{}",
        "vnics": [ {{ "name": "guest", "mac": "52:54:00:77:00:10" }} ],
        "uplinks": [ {{ "name": "up0", "interface": "{}" }} ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display(),
        lab.uplink
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start_snapnet(lab: &mut Lab, config: &Path) -> u32 {
    start_snapnet_with(lab, config, &[])
}

fn start_snapnet_with(lab: &mut Lab, config: &Path, extra: &[&str]) -> u32 {
    let ns = lab.host_ns.clone();
    let mut args = vec![
        env!("CARGO_BIN_EXE_snapnet"),
        "serve",
        "--config",
        config.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lab.spawn(&ns, &args)
}

fn connect_guest(socket: &Path, ip: [u8; 4]) -> Guest {
    assert!(
        wait_for(Duration::from_secs(10), || socket.exists()),
        "vNIC socket never appeared"
    );
    let cfg = FrontendConfig {
        queue_pairs: 1,
        ..FrontendConfig::default()
    };
    let nic = Frontend::connect(socket, &cfg, Duration::from_secs(10)).expect("frontend connects");
    Guest::new(nic, GUEST_MAC, ip)
}

/// The guest resolves the peer and pings it; returns the peer's MAC.
fn guest_pings_peer(g: &mut Guest, lab: &Lab, timeout: Duration) -> [u8; 6] {
    let peer = lab.peer_ip_bytes();
    let deadline = Instant::now() + timeout;
    let mut peer_mac = None;
    // Retried: the uplink may still be coming up.
    while peer_mac.is_none() && Instant::now() < deadline {
        g.send(&arp(1, BROADCAST, g.mac, g.ip, [0; 6], peer));
        peer_mac = g
            .serve_until(Duration::from_millis(300), |f| {
                parse_arp(f).is_some_and(|a| a.op == 2 && a.ip == peer)
            })
            .map(|f| f[6..12].try_into().unwrap());
    }
    let peer_mac: [u8; 6] = peer_mac.expect("no ARP reply from the peer through the uplink");
    for seq in 1..=3u16 {
        let payload = [seq as u8; 56];
        g.send(&icmp_echo(
            8, peer_mac, GUEST_MAC, g.ip, peer, 0x5a, seq, &payload,
        ));
        let reply = g.serve_until(Duration::from_secs(2), |f| {
            parse_icmp_echo(f)
                .is_some_and(|e| e.kind == 0 && e.src == peer && e.id == 0x5a && e.seq == seq)
        });
        let reply = reply.unwrap_or_else(|| panic!("no echo reply {seq} from the peer"));
        assert_eq!(
            parse_icmp_echo(&reply).unwrap().payload,
            payload,
            "echo payload intact"
        );
    }
    peer_mac
}

/// The wire host, having forgotten the guest's address (so that its ARP
/// request is a broadcast, which reaches the guest through the group tap),
/// pings the guest three times while the guest answers.
fn peer_pings_guest(lab: &Lab, g: &mut Guest) -> std::process::Output {
    lab.exec(&lab.peer_ns, &["ip", "neigh", "flush", "all"]);
    let guest_ip = lab.guest_ip(0);
    let guest_ip_s = format!(
        "{}.{}.{}.{}",
        guest_ip[0], guest_ip[1], guest_ip[2], guest_ip[3]
    );
    let peer_ns = lab.peer_ns.clone();
    let pinger = thread::spawn(move || {
        common::netns::run(&[
            "ip",
            "netns",
            "exec",
            &peer_ns,
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "3",
            &guest_ip_s,
        ])
    });
    while !pinger.is_finished() {
        g.serve_until(Duration::from_millis(50), |_| false);
    }
    pinger.join().unwrap()
}

#[test]
fn guest_talks_to_the_wire_host_keeps_its_address_and_kill9_leaves_nothing() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new("a");
    let dir = TempDir::new("uplink");
    let config = write_config(&dir, &lab);
    let pid = start_snapnet(&mut lab, &config);
    let socket = dir.path("guest.sock");
    let mut g = connect_guest(&socket, lab.guest_ip(0));

    // Guest -> peer: ARP (broadcast out, unicast back through XDP) and ICMP.
    guest_pings_peer(&mut g, &lab, Duration::from_secs(10));

    // Peer -> guest: the peer's ARP broadcast must reach the guest (through
    // the packet socket) and its pings get answered.
    let out = peer_pings_guest(&lab, &mut g);
    assert!(
        out.status.success(),
        "peer could not ping the guest: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        g.answered_arp >= 1 && g.answered_echo >= 3,
        "arp {} echo {}",
        g.answered_arp,
        g.answered_echo
    );

    // The host's own address on the uplink still answers the peer.
    let out = lab.exec(
        &lab.peer_ns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", &lab.host_ip()],
    );
    assert!(
        out.status.success(),
        "host address unreachable while snapnet runs"
    );

    // kill -9: the bpf_link goes with the process, so no XDP program is left.
    assert!(lab.uplink_has_xdp(), "XDP program attached while running");
    lab.kill9(pid);
    assert!(
        wait_for(Duration::from_secs(5), || !lab.uplink_has_xdp()),
        "XDP program left on {} after kill -9",
        lab.uplink
    );
    drop(g);

    // Restarted at once on the same interface and queue: works (no EBUSY).
    let _ = std::fs::remove_file(&socket);
    let started = Instant::now();
    start_snapnet(&mut lab, &config);
    let mut g = connect_guest(&socket, lab.guest_ip(0));
    guest_pings_peer(&mut g, &lab, Duration::from_secs(10));
    eprintln!("restart to first echo reply: {:?}", started.elapsed());
}

#[test]
fn uplinks_come_and_go_through_the_control_socket() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new("b");
    let dir = TempDir::new("uplink-rpc");
    let config = write_config(&dir, &lab);
    start_snapnet_with(&mut lab, &config, &["--metrics-listen", "127.0.0.1:9733"]);
    let socket = dir.path("guest.sock");
    let mut g = connect_guest(&socket, lab.guest_ip(0));
    guest_pings_peer(&mut g, &lab, Duration::from_secs(10));

    // The uplink's counters are exported (the endpoint lives in snapnet's
    // network namespace).
    let out = lab.exec(
        &lab.host_ns,
        &[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9733; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(r#"snapnet_uplink_total{uplink="up0",queue="0",counter="tx_packets"}"#),
        "no uplink metrics: {text}"
    );

    let mut c = Checked::connect(&dir.path("control.sock"));
    let list = c.ok("uplink.list", json!({}));
    assert_eq!(list[0]["name"], "up0");
    assert_eq!(list[0]["zerocopy"], false, "veth has no zero-copy AF_XDP");
    assert_eq!(list[0]["xdp_mode_in_use"], "native");
    let stats = c.ok("uplink.stats", json!({"name": "up0"}));
    assert!(stats["rx_packets"].as_u64().unwrap() >= 4, "{stats}");
    assert!(stats["tx_packets"].as_u64().unwrap() >= 4, "{stats}");
    assert!(
        stats["switch_port"]["rx_packets"].as_u64().unwrap() >= 4,
        "{stats}"
    );

    // Bad requests change nothing.
    let before = c.state();
    c.err(
        "uplink.add",
        json!({"name": "up1", "interface": "nosuchif0"}),
        1001,
    );
    c.err(
        "uplink.add",
        json!({"name": "up1", "interface": lab.uplink}),
        1002,
    );
    c.err(
        "uplink.add",
        json!({"name": "up1", "interface": "x", "bogus": 1}),
        -32602,
    );
    c.err(
        "uplink.add",
        json!({"name": "up1", "interface": "x", "mtu": 9000}),
        1004,
    );
    c.err(
        "uplink.add",
        json!({"name": "up1", "interface": "x", "xdp_mode": "hw"}),
        -32602,
    );
    c.err("uplink.stats", json!({"name": "nope"}), 1001);
    c.err("uplink.remove", json!({"name": "nope"}), 1001);
    assert_eq!(c.state(), before);

    // Removed: the interface is the kernel's alone again.
    c.ok("uplink.remove", json!({"name": "up0"}));
    assert!(
        !lab.uplink_has_xdp(),
        "XDP program left after uplink.remove"
    );
    let out = lab.exec(
        &lab.peer_ns,
        &["ping", "-c", "1", "-W", "2", &lab.host_ip()],
    );
    assert!(
        out.status.success(),
        "host address unreachable after uplink.remove"
    );

    // Added back on two queues (one AF_XDP socket and engine each), in
    // generic mode and copy mode: the guest reaches the peer again.
    for (ns, dev) in [(&lab.host_ns, &lab.uplink), (&lab.peer_ns, &lab.wire)] {
        let out = lab.exec(ns, &["ethtool", "-L", dev, "rx", "2", "tx", "2"]);
        assert!(out.status.success(), "ethtool -L {dev}");
    }
    let info = c.ok(
        "uplink.add",
        json!({"name": "up0", "interface": lab.uplink, "queues": [0, 1],
               "xdp_mode": "generic", "bind_mode": "copy"}),
    );
    assert_eq!(info["xdp_mode_in_use"], "generic");
    guest_pings_peer(&mut g, &lab, Duration::from_secs(10));
    let stats = c.ok("uplink.stats", json!({"name": "up0"}));
    assert_eq!(stats["queues"].as_array().map(Vec::len), Some(2), "{stats}");
    assert!(stats["rx_packets"].as_u64().unwrap() >= 4, "{stats}");
    let status = c.ok("daemon.status", json!({}));
    assert_eq!(status["uplinks"], 1);
}

#[test]
fn a_rate_limited_uplink_is_shared_by_weight() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new("c");
    let dir = TempDir::new("uplink-share");
    let config = dir.path("snapnet.json");
    std::fs::write(
        &config,
        format!(
            r#"{{
        "runtime_dir": "{}",
        "vnics": [
            {{ "name": "guest", "mac": "52:54:00:77:00:10", "weight": 1 }},
            {{ "name": "heavy", "mac": "52:54:00:77:00:13", "weight": 3 }}
        ],
        "uplinks": [ {{ "name": "up0", "interface": "{}",
                        "tx_limit": {{ "bytes_per_sec": 4000000 }} }} ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
            dir.0.display(),
            lab.uplink
        ),
    )
    .unwrap();
    start_snapnet(&mut lab, &config);
    let mut light = connect_guest(&dir.path("guest.sock"), lab.guest_ip(0));
    // The switch learns the peer behind the uplink from its ARP reply, so
    // frames to it are unicast (flooded frames never wait).
    let peer_mac = guest_pings_peer(&mut light, &lab, Duration::from_secs(10));
    let mut heavy = connect_guest(&dir.path("heavy.sock"), lab.guest_ip(3));
    let mut c = Checked::connect(&dir.path("control.sock"));
    let port_bytes = |c: &mut Checked, name: &str| {
        c.ok("vnic.stats", json!({ "name": name }))["switch_port"]["rx_bytes"]
            .as_u64()
            .unwrap()
    };
    let frames = |src: [u8; 6]| common::frame(peer_mac, src, 1000, 0);
    let (fl, fh) = (
        frames(GUEST_MAC),
        frames([0x52, 0x54, 0x00, 0x77, 0x00, 0x13]),
    );
    let hdr = VirtioNetHdr::default();
    // Both keep their rings full; the uplink passes 4 MB/s.
    let fill = |light: &mut Guest, heavy: &mut Guest, secs: f64| {
        let start = Instant::now();
        while start.elapsed().as_secs_f64() < secs {
            light.nic.send(0, &[&fl, &fl, &fl, &fl], &hdr);
            heavy.nic.send(0, &[&fh, &fh, &fh, &fh], &hdr);
            light.nic.recv(0, |_, _| {});
            heavy.nic.recv(0, |_, _| {});
            thread::sleep(Duration::from_micros(500));
        }
    };
    fill(&mut light, &mut heavy, 0.5);
    // The time between the two reads bounds what may pass: on a loaded
    // machine this thread can be descheduled well past its 1.5 s.
    let counted_from = Instant::now();
    let (l0, h0) = (port_bytes(&mut c, "guest"), port_bytes(&mut c, "heavy"));
    fill(&mut light, &mut heavy, 1.5);
    let (l1, h1) = (port_bytes(&mut c, "guest"), port_bytes(&mut c, "heavy"));
    let counted_secs = counted_from.elapsed().as_secs_f64();
    let ratio = (h1 - h0) as f64 / (l1 - l0) as f64;
    assert!(
        (2.4..=3.6).contains(&ratio),
        "weights 1:3 gave {ratio:.2} ({} vs {} bytes)",
        l1 - l0,
        h1 - h0
    );
    // The limit itself holds (a ceiling: 4 MB/s plus the bucket).
    let total = (l1 - l0 + h1 - h0) as f64;
    assert!(
        total <= 4_000_000.0 * counted_secs * 1.07 + 70_000.0,
        "{total} bytes in {counted_secs:.2} s"
    );
}

/// The XDP program's id on the uplink (`None`: none attached).
fn xdp_prog_id(lab: &Lab) -> Option<u64> {
    let out = common::netns::run(&["ip", "-n", &lab.host_ns, "-j", "link", "show", &lab.uplink]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// The namespace tier of the upgrade (docs/upgrade.md): while the guest
/// pings the host on the wire through the AF_XDP uplink and that host pings
/// the uplink's own address every 10 ms, snapnet is upgraded three times
/// (to a binary with another version string when `SNAPNET_NEXT_BINARY`
/// names one). Every echo is answered on both paths, the XDP program is the
/// same one throughout (its id never changes, so it never detached), and
/// the uplink's counters go on.
#[test]
fn upgrades_hand_the_uplink_over_and_the_wire_sees_nothing() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new("g");
    let dir = TempDir::new("uplink-upgrade");
    let config = write_config(&dir, &lab);
    start_snapnet(&mut lab, &config);
    let socket = dir.path("guest.sock");
    let control = dir.path("control.sock");
    let mut g = connect_guest(&socket, lab.guest_ip(0));
    let peer_mac = guest_pings_peer(&mut g, &lab, Duration::from_secs(10));
    let prog = xdp_prog_id(&lab).expect("XDP program attached");
    let mut c = Checked::connect(&control);
    let before = c.ok("uplink.stats", json!({"name": "up0"}));

    // The wire host pings the uplink's own address (the kernel's, through
    // XDP_PASS) every 10 ms throughout.
    let peer_ns = lab.peer_ns.clone();
    let host_ip = lab.host_ip();
    let host_pings = thread::spawn(move || {
        common::netns::run(&[
            "ip", "netns", "exec", &peer_ns, "ping", "-n", "-q", "-i", "0.01", "-w", "6", "-W",
            "1", &host_ip,
        ])
    });

    // To the other version and back, then to the binary it runs (the
    // default); three times the same binary without another version.
    let this = env!("CARGO_BIN_EXE_snapnet").to_string();
    let binaries: Vec<Option<String>> = match std::env::var("SNAPNET_NEXT_BINARY") {
        Ok(next) => vec![Some(next), Some(this), None],
        Err(_) => vec![None, None, None],
    };
    let upgrades = {
        let control = control.clone();
        thread::spawn(move || {
            let mut reports = Vec::new();
            for b in binaries {
                thread::sleep(Duration::from_millis(700));
                let params = match b {
                    Some(b) => json!({ "binary": b }),
                    None => json!({}),
                };
                let r = snapnet::control::rpc::client::Client::connect(&control)
                    .and_then(|mut c| c.call("daemon.upgrade", params));
                reports.push(r.map_err(|e| e.to_string()));
            }
            thread::sleep(Duration::from_millis(700));
            reports
        })
    };

    // The guest pings the wire host, one echo at a time, until the upgrades
    // are done: each must be answered (a blackout only delays it).
    let mut successor = Successor(None);
    let (mut sent, mut lost, mut slowest) = (0u16, 0, Duration::ZERO);
    let peer = lab.peer_ip_bytes();
    while !upgrades.is_finished() {
        sent += 1;
        let at = Instant::now();
        let payload = [sent as u8; 56];
        g.send(&icmp_echo(
            8, peer_mac, GUEST_MAC, g.ip, peer, 0x77, sent, &payload,
        ));
        let reply = g.serve_until(Duration::from_secs(2), |f| {
            parse_icmp_echo(f)
                .is_some_and(|e| e.kind == 0 && e.src == peer && e.id == 0x77 && e.seq == sent)
        });
        match reply {
            Some(_) => slowest = slowest.max(at.elapsed()),
            None => lost += 1,
        }
        thread::sleep(Duration::from_millis(10));
    }
    let reports = upgrades.join().unwrap();
    for r in reports.iter().flatten() {
        successor.follow(r);
    }
    let host = host_pings.join().unwrap();
    let host_out = String::from_utf8_lossy(&host.stdout).to_string();
    eprintln!(
        "upgrades: {reports:?}\nguest echoes: {sent} sent, {lost} lost, slowest {slowest:?}\nhost pings: {}",
        host_out.lines().rev().take(2).collect::<Vec<_>>().join(" / ")
    );
    for r in &reports {
        let r = r.as_ref().expect("the upgrade succeeds");
        assert_eq!(r["uplinks"], 1, "{r}");
    }
    assert!(sent >= 50, "only {sent} echoes during the upgrades");
    assert_eq!(lost, 0, "guest echoes lost through the upgrades");
    assert!(
        host.status.success() && host_out.contains(" 0% packet loss"),
        "the uplink's own address stopped answering: {host_out}"
    );
    assert_eq!(
        xdp_prog_id(&lab),
        Some(prog),
        "the XDP program was replaced or detached"
    );

    // The new process serves the uplink, its counters went on, and the
    // peer's ARP broadcast still reaches the guest through the group tap.
    let mut c = Checked::connect(&control);
    let after = c.ok("uplink.stats", json!({"name": "up0"}));
    for k in ["rx_packets", "tx_packets"] {
        let (b, a) = (before[k].as_u64().unwrap(), after[k].as_u64().unwrap());
        assert!(
            a >= b + u64::from(sent),
            "{k}: {b} before, {a} after {sent} echoes"
        );
    }
    assert!(
        peer_pings_guest(&lab, &mut g).status.success(),
        "the peer cannot reach the guest after the upgrades"
    );
    // Removing the uplink in the new process detaches the program it adopted.
    c.ok("uplink.remove", json!({"name": "up0"}));
    assert!(
        wait_for(Duration::from_secs(5), || xdp_prog_id(&lab).is_none()),
        "the adopted program stayed attached after the uplink went"
    );
}

/// The rollback tier with an uplink. In a whole-daemon upgrade (a new
/// binary of hand-over protocol 3) a new process that dies right after it
/// built the uplink from the old one's sockets touched no ring, and the old
/// process takes the uplink back (the same program, sockets and lent
/// frames). Moving one vNIC at a time (protocol 4), a new process that fails
/// through its error path after replaying the first vNIC's connection is
/// rolled back before the uplink was ever stopped. Either way the guest
/// and the wire host go on talking, and the program never detached.
#[test]
fn a_failed_upgrade_gives_the_uplink_back() {
    if !can_run() {
        return;
    }
    for (tag, fail_at, protocol) in [("r", "uplink", "3"), ("s", "adopted-error", "4")] {
        let mut lab = Lab::new(tag);
        let dir = TempDir::new("uplink-rollback");
        let config = write_config(&dir, &lab);
        let ns = lab.host_ns.clone();
        let env = format!("SNAPNET_UPGRADE_FAIL_AT={fail_at}");
        let protocol = format!("SNAPNET_UPGRADE_PROTOCOL={protocol}");
        lab.spawn(
            &ns,
            &[
                "env",
                &env,
                &protocol,
                env!("CARGO_BIN_EXE_snapnet"),
                "serve",
                "--config",
                config.to_str().unwrap(),
            ],
        );
        let mut g = connect_guest(&dir.path("guest.sock"), lab.guest_ip(0));
        guest_pings_peer(&mut g, &lab, Duration::from_secs(10));
        let prog = xdp_prog_id(&lab).expect("XDP program attached");
        let mut c = Checked::connect(&dir.path("control.sock"));
        let before = c.ok("uplink.stats", json!({"name": "up0"}));
        let e = c.err("daemon.upgrade", json!({}), 1005);
        assert!(
            e.message.contains("rolled back"),
            "{fail_at}: {}",
            e.message
        );
        assert_eq!(xdp_prog_id(&lab), Some(prog), "{fail_at}: program replaced");
        // The same sockets serve on: the guest reaches the wire host, the
        // host's own address answers, and the counters went on.
        guest_pings_peer(&mut g, &lab, Duration::from_secs(5));
        let out = lab.exec(
            &lab.peer_ns,
            &["ping", "-c", "3", "-i", "0.05", "-W", "2", &lab.host_ip()],
        );
        assert!(out.status.success(), "{fail_at}: host address unreachable");
        let after = c.ok("uplink.stats", json!({"name": "up0"}));
        for k in ["rx_packets", "tx_packets"] {
            let (b, a) = (before[k].as_u64().unwrap(), after[k].as_u64().unwrap());
            assert!(a >= b + 3, "{fail_at}: {k}: {b} before, {a} after");
        }
    }
}
