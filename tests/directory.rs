//! Three snapnet hosts that find each other's guests through etcd alone
//! (docs/directory.md): namespaces `h0`..`h2` each run a daemon whose
//! overlay uplink is a veth into namespace `fab` (the fabric, a bridge), and
//! `fab` runs a three-member etcd cluster on the bridge's addresses. No host
//! is given a remote host or MAC: the directory programs every table.
//! Guests (Rust frontends) in networks 100 and 200 on every host. Needs
//! root and Debian's etcd-server; skipped otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::guest::Guest;
use common::netns::{can_run, run, serve_in, Successor};
use common::packets::{arp, icmp_echo, parse_arp, parse_icmp_echo, BROADCAST};
use common::rpc::Checked;
use common::{wait_for, TempDir};
use serde_json::{json, Value};
use snapnet_frontend::{Frontend, FrontendConfig};

const HOSTS: usize = 3;
/// Seconds a host's keys outlive it.
const TTL: u64 = 3;

fn guest_mac(host: usize, network: u32, n: u8) -> [u8; 6] {
    [
        0x52,
        0x54,
        0x00,
        0x10 + host as u8,
        (network / 100) as u8,
        n,
    ]
}

/// Guests of both networks use the same addresses: isolation keeps them
/// apart. Host h's first guest in a network is 10.61.0.(h+1).
fn guest_ip(host: usize, n: u8) -> [u8; 4] {
    [10, 61, n, host as u8 + 1]
}

/// Host h's network-100 guest's IPv6 address, fd61::(h+1).
fn guest_ip6(host: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..2].copy_from_slice(&[0xfd, 0x61]);
    a[15] = host as u8 + 1;
    a
}

/// `g` sends a neighbour solicitation for `target` (from `src`); the
/// target link-layer address of the advertisement that answers it.
fn solicit(g: &mut Guest, src: [u8; 16], target: [u8; 16]) -> Option<[u8; 6]> {
    use snapnet_wire::checksum::ones_sum;
    let mut f = vec![0u8; 14 + 40 + 32];
    f[..6].copy_from_slice(&[0x33, 0x33, 0xff, target[13], target[14], target[15]]);
    f[6..12].copy_from_slice(&g.mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x60;
    ip[5] = 32;
    ip[6] = 58;
    ip[7] = 255;
    ip[8..24].copy_from_slice(&src);
    ip[24..26].copy_from_slice(&[0xff, 0x02]);
    ip[35..40].copy_from_slice(&[1, 0xff, target[13], target[14], target[15]]);
    let (header, icmp) = ip.split_at_mut(40);
    icmp[0] = 135;
    icmp[8..24].copy_from_slice(&target);
    icmp[24..26].copy_from_slice(&[1, 1]);
    icmp[26..32].copy_from_slice(&g.mac);
    let pseudo = [0, 0, 0, 32, 0, 0, 0, 58];
    let mut sum = u32::from(ones_sum(&header[8..40]))
        + u32::from(ones_sum(&pseudo))
        + u32::from(ones_sum(icmp));
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    icmp[2..4].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    g.send(&f);
    let na = g.serve_until(Duration::from_secs(2), |r| {
        r.len() >= 14 + 40 + 32
            && r[12..14] == [0x86, 0xdd]
            && r[14 + 6] == 58
            && r[54] == 136
            && r[54 + 8..54 + 24] == target
    })?;
    (na[54 + 24] == 2).then(|| na[54 + 26..54 + 32].try_into().unwrap())
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

struct Lab {
    id: u32,
    hosts: Vec<String>,
    fabric: String,
    dir: TempDir,
    etcd: Vec<Option<Child>>,
    daemons: Vec<Option<Child>>,
}

fn sh(cmd: &str) {
    let out = run(&["bash", "-c", cmd]);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn etcd_ip(i: usize) -> String {
    format!("192.168.61.{}", 11 + i)
}

fn host_ip(h: usize) -> String {
    format!("192.168.61.{}", 1 + h)
}

impl Lab {
    fn new() -> Lab {
        let id = std::process::id() % 100_000;
        let lab = Lab {
            id,
            hosts: (0..HOSTS).map(|h| format!("sndh{h}x{id}")).collect(),
            fabric: format!("sndf{id}"),
            dir: TempDir::new("directory"),
            etcd: Vec::new(),
            daemons: Vec::new(),
        };
        let fab = &lab.fabric;
        sh(&format!("ip netns add {fab}"));
        sh(&format!(
            "ip -n {fab} link add br0 type bridge && ip -n {fab} link set br0 up && ip -n {fab} link set lo up"
        ));
        for i in 0..3 {
            sh(&format!("ip -n {fab} addr add {}/24 dev br0", etcd_ip(i)));
        }
        for (h, ns) in lab.hosts.iter().enumerate() {
            sh(&format!("ip netns add {ns}"));
            sh(&format!(
                "ip link add snu{h}x{id} netns {ns} type veth peer name snf{h}x{id} netns {fab}"
            ));
            sh(&format!(
                "ip -n {fab} link set snf{h}x{id} master br0 && ip -n {fab} link set snf{h}x{id} up"
            ));
            sh(&format!(
                "ip -n {ns} link set snu{h}x{id} name fabric0 && ip -n {ns} addr add {}/24 dev fabric0 && ip -n {ns} link set fabric0 up && ip -n {ns} link set lo up",
                host_ip(h)
            ));
        }
        lab
    }

    fn start_etcd(&mut self, i: usize) {
        let cluster: Vec<String> = (0..3)
            .map(|j| format!("e{j}=http://{}:2380", etcd_ip(j)))
            .collect();
        let ip = etcd_ip(i);
        let data = self.dir.path(&format!("etcd{i}"));
        let log = std::fs::File::create(self.dir.path(&format!("etcd{i}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.fabric, "etcd"])
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{ip}:2380"),
            ])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-token", &format!("snd{}", self.id)])
            .args(["--initial-cluster-state", "new"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (Debian's etcd-server)");
        if self.etcd.len() <= i {
            self.etcd.resize_with(i + 1, || None);
        }
        self.etcd[i] = Some(child);
    }

    fn kill_etcd(&mut self, i: usize) {
        if let Some(mut c) = self.etcd[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn etcd_healthy(&self) -> bool {
        let endpoints: Vec<String> = (0..3)
            .map(|j| format!("http://{}:2379", etcd_ip(j)))
            .collect();
        let out = run(&[
            "ip",
            "netns",
            "exec",
            &self.fabric,
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &endpoints.join(","),
            "endpoint",
            "health",
        ]);
        out.status.success()
    }

    fn socket(&self, name: &str) -> PathBuf {
        self.dir.path(&format!("{name}.sock"))
    }

    fn control(&self, h: usize) -> PathBuf {
        self.dir.path(&format!("h{h}-control.sock"))
    }

    fn config(&self, h: usize) -> PathBuf {
        let endpoints: Vec<String> = (0..3)
            .map(|j| format!("\"http://{}:2379\"", etcd_ip(j)))
            .collect();
        let vnics: Vec<String> = [100u32, 200]
            .iter()
            .map(|net| {
                let name = format!("h{h}n{net}");
                // Network 100's guests declare their address: the others
                // answer ARP for them from the directory (network 200's
                // requests cross the fabric).
                let ips = if *net == 100 {
                    let [a, b, c, d] = guest_ip(h, 0);
                    let v6 = std::net::Ipv6Addr::from(guest_ip6(h));
                    format!(r#", "allowed_ips": ["{a}.{b}.{c}.{d}", "{v6}"]"#)
                } else {
                    String::new()
                };
                format!(
                    r#"{{ "name": "{name}", "mac": "{}", "network": {net}, "socket": "{}"{ips} }}"#,
                    mac_str(guest_mac(h, *net, 0)),
                    self.socket(&name).display()
                )
            })
            .collect();
        let text = format!(
            r#"{{
            "runtime_dir": "{}",
            "control_socket": "{}",
            "vnics": [ {} ],
            "uplinks": [ {{ "name": "fabric", "interface": "fabric0" }} ],
            "groups": [ {{ "name": "default", "policy": "spreading", "threads": 1 }} ],
            "directory": {{ "endpoints": [ {} ], "host_id": "host-{h}",
                "underlay_ip": "{}", "uplink": "fabric",
                "prefix": "/snd{}", "lease_ttl_seconds": {TTL}, "request_timeout_ms": 1000 }}
        }}"#,
            self.dir.0.display(),
            self.control(h).display(),
            vnics.join(", "),
            endpoints.join(", "),
            host_ip(h),
            self.id,
        );
        let path = self.dir.path(&format!("h{h}.json"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start_daemon(&mut self, h: usize) {
        let cfg = self.config(h);
        let child = serve_in(&self.hosts[h], &cfg);
        if self.daemons.len() <= h {
            self.daemons.resize_with(h + 1, || None);
        }
        self.daemons[h] = Some(child);
        let ctl = self.control(h);
        assert!(
            wait_for(Duration::from_secs(10), || ctl.exists()),
            "host {h}: no control socket"
        );
    }

    fn status(&self, h: usize) -> Value {
        Checked::connect(&self.control(h)).ok("directory.status", json!({}))
    }

    /// The overlay table of host h's uplink now.
    fn table(&self, h: usize) -> Value {
        let list = Checked::connect(&self.control(h)).ok("uplink.list", json!({}));
        list[0]["overlay"].clone()
    }

    fn wait_status(&self, h: usize, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) {
        let mut last = Value::Null;
        let done = wait_for(timeout, || {
            last = self.status(h);
            ok(&last)
        });
        assert!(done, "host {h}: {what} within {timeout:?}: {last}");
    }

    fn wait_table(&self, h: usize, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) {
        let mut last = Value::Null;
        let done = wait_for(timeout, || {
            last = self.table(h);
            ok(&last)
        });
        assert!(done, "host {h}: {what} within {timeout:?}: {last}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self
            .daemons
            .iter_mut()
            .chain(self.etcd.iter_mut())
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.fabric)) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

fn has_mac(table: &Value, mac: [u8; 6]) -> bool {
    table["macs"]
        .as_array()
        .is_some_and(|m| m.iter().any(|e| e["mac"] == mac_str(mac)))
}

fn remotes(table: &Value) -> Vec<String> {
    table["remotes"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|e| e["ip"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn guest(sock: &Path, mac: [u8; 6], ip: [u8; 4]) -> Guest {
    assert!(
        wait_for(Duration::from_secs(10), || sock.exists()),
        "{}: no socket",
        sock.display()
    );
    let nic = Frontend::connect(sock, &FrontendConfig::default(), Duration::from_secs(10)).unwrap();
    Guest::new(nic, mac, ip)
}

/// Answers for `guests` until told to stop; returns them.
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

/// `g` resolves `peer` and pings it within `timeout`; returns the MAC that
/// answered.
fn resolve_and_ping(g: &mut Guest, peer: [u8; 4], timeout: Duration) -> Option<[u8; 6]> {
    let deadline = Instant::now() + timeout;
    let mut mac = None;
    while mac.is_none() && Instant::now() < deadline {
        g.send(&arp(1, BROADCAST, g.mac, g.ip, [0; 6], peer));
        mac = g
            .serve_until(Duration::from_millis(100), |f| {
                parse_arp(f).is_some_and(|a| a.op == 2 && a.ip == peer)
            })
            .map(|f| f[6..12].try_into().unwrap());
    }
    let mac = mac?;
    ping(g, mac, peer, 2)?;
    Some(mac)
}

fn ping(g: &mut Guest, mac: [u8; 6], peer: [u8; 4], count: u16) -> Option<()> {
    for seq in 1..=count {
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
    Some(())
}

fn add_vnic(ctl: &Path, name: &str, mac: [u8; 6], network: u32, socket: &Path) -> Value {
    Checked::connect(ctl).ok(
        "vnic.add",
        json!({ "name": name, "mac": mac_str(mac), "network": network, "socket": socket }),
    )
}

#[test]
fn hosts_form_an_overlay_from_the_directory_alone() {
    if !can_run() {
        return;
    }
    if run(&["sh", "-c", "command -v etcd"]).stdout.is_empty() {
        eprintln!("skipped: no etcd (Debian's etcd-server)");
        return;
    }
    let mut lab = Lab::new();
    for i in 0..3 {
        lab.start_etcd(i);
    }
    assert!(
        wait_for(Duration::from_secs(20), || lab.etcd_healthy()),
        "the etcd cluster did not come up (logs in {})",
        lab.dir.0.display()
    );
    for h in 0..HOSTS {
        lab.start_daemon(h);
    }
    // Every host learns the other two and their four guests.
    for h in 0..HOSTS {
        lab.wait_status(h, "synced with 3 hosts", Duration::from_secs(10), |s| {
            s["state"] == "synced" && s["hosts"] == 3 && s["remote_macs"] == 4
        });
    }
    let t0 = lab.table(0);
    let mut r = remotes(&t0);
    r.sort();
    assert_eq!(r, vec![host_ip(1), host_ip(2)], "{t0}");

    // Host 0's guests ping host 1's and host 2's in their own network.
    let mut a100 = guest(&lab.socket("h0n100"), guest_mac(0, 100, 0), guest_ip(0, 0));
    let mut a200 = guest(&lab.socket("h0n200"), guest_mac(0, 200, 0), guest_ip(0, 0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut far = Vec::new();
    for h in 1..HOSTS {
        for net in [100, 200] {
            let name = format!("h{h}n{net}");
            far.push(guest(
                &lab.socket(&name),
                guest_mac(h, net, 0),
                guest_ip(h, 0),
            ));
        }
    }
    let far = responder(far, stop.clone());
    for h in 1..HOSTS {
        assert_eq!(
            resolve_and_ping(&mut a100, guest_ip(h, 0), Duration::from_secs(5)),
            Some(guest_mac(h, 100, 0)),
            "network 100: host 0 reaches host {h}'s guest (and only it)"
        );
    }
    assert_eq!(
        resolve_and_ping(&mut a200, guest_ip(1, 0), Duration::from_secs(5)),
        Some(guest_mac(1, 200, 0)),
        "network 200: host 0 reaches host 1's guest"
    );
    // Isolation: network 100 sending to network 200's guest on host 1 by
    // its MAC and address reaches no one.
    a100.send(&icmp_echo(
        8,
        guest_mac(1, 200, 0),
        a100.mac,
        a100.ip,
        guest_ip(1, 0),
        9,
        1,
        &[0; 20],
    ));
    let leaked = a100.serve_until(Duration::from_millis(300), |f| {
        parse_icmp_echo(f).is_some_and(|e| e.kind == 0 && e.id == 9)
    });
    assert!(leaked.is_none(), "a frame crossed from network 100 to 200");
    // Host 0 answered network 100's ARP requests itself (the remote guests
    // declared their addresses); network 200's crossed the fabric.
    // Likewise a neighbour solicitation for host 1's guest's IPv6 address.
    assert_eq!(
        solicit(&mut a100, guest_ip6(0), guest_ip6(1)),
        Some(guest_mac(1, 100, 0)),
        "host 0 answers neighbour discovery for host 1's guest"
    );
    let stats = Checked::connect(&lab.control(0)).ok("uplink.stats", json!({ "name": "fabric" }));
    assert!(
        stats["arp_suppressed"].as_u64().unwrap_or(0) >= 2,
        "{stats}"
    );
    assert!(stats["nd_suppressed"].as_u64().unwrap_or(0) >= 1, "{stats}");

    // A vNIC added on host 2 becomes reachable from host 0; its RPC says
    // the directory has it.
    let x_mac = guest_mac(2, 100, 9);
    let x_ip = guest_ip(2, 9);
    let added = add_vnic(&lab.control(2), "h2x", x_mac, 100, &lab.socket("h2x"));
    assert_eq!(added["directory"]["published"], true, "{added}");
    let x = guest(&lab.socket("h2x"), x_mac, x_ip);
    let x_stop = Arc::new(AtomicBool::new(false));
    let x = responder(vec![x], x_stop.clone());
    assert_eq!(
        resolve_and_ping(&mut a100, x_ip, Duration::from_secs(5)),
        Some(x_mac),
        "host 0 reaches the vNIC added on host 2"
    );
    // Removed: it leaves every other host's table.
    x_stop.store(true, Ordering::Relaxed);
    drop(x.join().unwrap());
    let removed = Checked::connect(&lab.control(2)).ok("vnic.remove", json!({ "name": "h2x" }));
    assert_eq!(removed["directory"]["published"], true, "{removed}");
    for h in 0..2 {
        lab.wait_table(h, "the removed vNIC gone", Duration::from_secs(3), |t| {
            !has_mac(t, x_mac)
        });
    }

    // A guest moves from host 2 to host 1 (a live migration across hosts):
    // the destination's vNIC does not claim the MAC until its guest's rings
    // start there; then every host re-points the MAC, and the source's
    // removal leaves the new claim alone.
    let m_mac = guest_mac(2, 100, 5);
    let m_ip = guest_ip(2, 5);
    let owner = |t: &Value| -> Option<String> {
        t["macs"]
            .as_array()?
            .iter()
            .find(|e| e["mac"] == mac_str(m_mac))
            .map(|e| e["remote"].as_str().unwrap_or("").to_string())
    };
    add_vnic(&lab.control(2), "h2m", m_mac, 100, &lab.socket("h2m"));
    let src_stop = Arc::new(AtomicBool::new(false));
    let src = responder(
        vec![guest(&lab.socket("h2m"), m_mac, m_ip)],
        src_stop.clone(),
    );
    assert_eq!(
        resolve_and_ping(&mut a100, m_ip, Duration::from_secs(5)),
        Some(m_mac)
    );
    let added = add_vnic(&lab.control(1), "h1m", m_mac, 100, &lab.socket("h1m"));
    assert_eq!(added["directory"]["published"], true, "{added}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        owner(&lab.table(0)),
        Some(host_ip(2)),
        "claimed before the guest runs on host 1"
    );
    assert_eq!(lab.status(1)["deferred_claims"], 1);
    src_stop.store(true, Ordering::Relaxed);
    drop(src.join().unwrap());
    let dst_stop = Arc::new(AtomicBool::new(false));
    let dst = responder(
        vec![guest(&lab.socket("h1m"), m_mac, m_ip)],
        dst_stop.clone(),
    );
    lab.wait_table(
        0,
        "the MAC re-pointed to host 1",
        Duration::from_secs(3),
        |t| owner(t) == Some(host_ip(1)),
    );
    assert_eq!(
        ping(&mut a100, m_mac, m_ip, 2),
        Some(()),
        "the migrated guest answers on host 1"
    );
    let removed = Checked::connect(&lab.control(2)).ok("vnic.remove", json!({ "name": "h2m" }));
    assert_eq!(removed["directory"]["published"], true, "{removed}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        owner(&lab.table(0)),
        Some(host_ip(1)),
        "the source's removal took the destination's claim"
    );
    assert_eq!(lab.status(1)["deferred_claims"], 0);
    dst_stop.store(true, Ordering::Relaxed);
    drop(dst.join().unwrap());

    // Host 0 is upgraded to a new process: it writes host 0's keys again
    // under its own lease, so when the old process's lease has run out,
    // host 0's guests are still in the other tables, and reachable.
    let mut successor = Successor(None);
    let r = Checked::connect(&lab.control(0)).ok("daemon.upgrade", json!({}));
    successor.follow(&r);
    lab.wait_status(
        0,
        "synced after the upgrade",
        Duration::from_secs(10),
        |s| s["state"] == "synced",
    );
    thread::sleep(Duration::from_secs(TTL + 2));
    for h in 1..HOSTS {
        let t = lab.table(h);
        assert!(
            has_mac(&t, guest_mac(0, 100, 0)) && remotes(&t).contains(&host_ip(0)),
            "host {h} lost host 0 after its upgrade: {t}"
        );
    }
    assert_eq!(
        ping(&mut a100, guest_mac(1, 100, 0), guest_ip(1, 0), 2),
        Some(()),
        "host 0's guest reaches host 1's across the upgrade"
    );

    // One etcd member of three dies: the hosts go on following.
    lab.kill_etcd(0);
    let y_mac = guest_mac(1, 100, 7);
    for h in 0..HOSTS {
        lab.wait_status(h, "synced", Duration::from_secs(10), |s| {
            s["state"] == "synced"
        });
    }
    let added = add_vnic(&lab.control(1), "h1y", y_mac, 100, &lab.socket("h1y"));
    assert_eq!(added["directory"]["published"], true, "{added}");
    lab.wait_table(
        0,
        "the vNIC added with one member down",
        Duration::from_secs(3),
        |t| has_mac(t, y_mac),
    );
    lab.start_etcd(0);

    // Every member stops: the data path keeps the last tables (fail
    // static), the hosts say they are degraded, and a change made meanwhile
    // reaches the others once etcd is back.
    assert!(wait_for(Duration::from_secs(20), || lab.etcd_healthy()));
    for i in 0..3 {
        lab.kill_etcd(i);
    }
    for h in 0..HOSTS {
        lab.wait_status(h, "degraded", Duration::from_secs(10), |s| {
            s["state"] == "degraded" && s["reason"].is_string()
        });
    }
    let status = Checked::connect(&lab.control(0)).ok("daemon.status", json!({}));
    assert_eq!(status["directory"], "degraded", "{status}");
    assert_eq!(
        ping(&mut a100, guest_mac(1, 100, 0), guest_ip(1, 0), 3),
        Some(()),
        "known guests keep talking while etcd is down"
    );
    let z_mac = guest_mac(1, 100, 8);
    let added = add_vnic(&lab.control(1), "h1z", z_mac, 100, &lab.socket("h1z"));
    assert_eq!(added["directory"]["published"], false, "{added}");
    assert!(
        added["directory"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("degraded"),
        "{added}"
    );
    for i in 0..3 {
        lab.start_etcd(i);
    }
    for h in 0..HOSTS {
        lab.wait_status(h, "synced again", Duration::from_secs(20), |s| {
            s["state"] == "synced"
        });
    }
    lab.wait_table(
        0,
        "the vNIC added during the outage",
        Duration::from_secs(3),
        |t| has_mac(t, z_mac) && has_mac(t, y_mac),
    );

    // Host 2 is killed: within its lease's TTL it vanishes from the others.
    if let Some(mut c) = lab.daemons[2].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let killed = Instant::now();
    for h in 0..2 {
        lab.wait_table(h, "host 2 gone", Duration::from_secs(TTL + 3), |t| {
            !remotes(t).contains(&host_ip(2)) && !has_mac(t, guest_mac(2, 100, 0))
        });
    }
    eprintln!(
        "host 2 left the other tables {:.1} s after SIGKILL (lease TTL {TTL} s)",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        ping(&mut a100, guest_mac(1, 100, 0), guest_ip(1, 0), 2),
        Some(()),
        "host 1's guest stays reachable"
    );
    stop.store(true, Ordering::Relaxed);
    let far = far.join().unwrap();
    // Host 1's network-200 guest answered host 0's network-200 pings, not
    // the one sent from network 100.
    assert_eq!(far[1].answered_echo, 2, "h1n200");
    assert_eq!(
        far[0].answered_arp, 0,
        "h1n100's address was answered for on host 0"
    );
    assert!(far[1].answered_arp >= 1, "h1n200 answered its own ARP");
    let counters = lab.status(0)["counters"].clone();
    assert!(counters["resyncs"].as_u64().unwrap() >= 1, "{counters}");
    assert_eq!(counters["program_failures"], 0, "{counters}");
    drop(successor);
}
