//! Pony Express between two snapnet hosts (docs/pony.md): namespaces `A`
//! and `B`, each joined by a veth pair to a bridge in a third namespace (the
//! wire), each with a daemon whose uplink is its end of its pair and whose
//! `pony` section serves applications. Applications (this test, through the
//! `snapnet-pony` client library) exchange messages and one-sided
//! operations; with loss, duplication and reordering on the wire (a relay
//! in the wire's namespace, `common::impaired_wire`: this kernel has no
//! netem) and a rate-limited bottleneck, every message still arrives once
//! and in order per stream; an application killed mid-transfer leaves
//! nothing behind; garbage from the wire is counted and dropped. Needs root;
//! skipped otherwise.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::impaired_wire::{ImpairedWire, Impairment};
use common::netns::{can_run, run, serve_in};
use common::rpc::Checked;
use common::{wait_for, TempDir};
use serde_json::{json, Value};
use snapnet_pony::{access, kind, status, App, Buffer, Completion};

const SERVICE: u32 = 7;
/// Set in the environment of the child that is killed mid-transfer.
const CHILD_ENV: &str = "SNAPNET_PONY_TEST_CHILD";

struct Hosts {
    ns: [String; 2],
    dev: [String; 2],
    /// The namespace of the wire between them, and its ends towards A and B.
    wire_ns: String,
    wire_dev: [String; 2],
    ip: [Ipv4Addr; 2],
    dir: TempDir,
    daemons: Vec<Child>,
    /// Relays frames between the wire's ends.
    wire: Option<ImpairedWire>,
}

impl Hosts {
    fn new() -> Hosts {
        let id = std::process::id() % 100_000;
        let net = (std::process::id() % 200) as u8 + 20;
        let mut h = Hosts {
            ns: [format!("snpa{id}"), format!("snpb{id}")],
            dev: [format!("pa{id}"), format!("pb{id}")],
            wire_ns: format!("snpw{id}"),
            wire_dev: [format!("wa{id}"), format!("wb{id}")],
            ip: [Ipv4Addr::new(10, 77, net, 1), Ipv4Addr::new(10, 77, net, 2)],
            dir: TempDir::new("pony"),
            daemons: Vec::new(),
            wire: None,
        };
        let w = &h.wire_ns;
        sh(&format!(
            "ip netns add {} && ip netns add {} && ip netns add {w}",
            h.ns[0], h.ns[1]
        ));
        for i in 0..2 {
            sh(&format!(
                "ip link add {dev} netns {ns} type veth peer name {wdev} netns {w} && ip -n {w} link set {wdev} up",
                ns = h.ns[i],
                dev = h.dev[i],
                wdev = h.wire_dev[i],
            ));
        }
        for i in 0..2 {
            sh(&format!(
                "ip -n {ns} addr add {ip}/24 dev {dev} && ip -n {ns} link set {dev} up && ip -n {ns} link set lo up",
                ns = h.ns[i],
                dev = h.dev[i],
                ip = h.ip[i]
            ));
        }
        let seed = u64::from(std::process::id());
        h.wire = Some(ImpairedWire::start(
            w,
            [&h.wire_dev[0], &h.wire_dev[1]],
            seed,
        ));
        h
    }

    fn socket(&self, host: usize) -> PathBuf {
        self.dir.path(&format!("pony{host}.sock"))
    }

    fn control(&self, host: usize) -> PathBuf {
        self.dir.path(&format!("control{host}.sock"))
    }

    fn start(&mut self, host: usize) {
        let config = self.dir.path(&format!("host{host}.json"));
        let policy = ["compacting", "spreading"][host];
        let text = json!({
            "runtime_dir": self.dir.0,
            "control_socket": self.control(host),
            "uplinks": [{ "name": "wire", "interface": self.dev[host] }],
            // The Pony engine in each kind of group: host A's compacts,
            // host B's spreads (the other tests use dedicated groups).
            "groups": [{ "name": "default", "policy": policy, "threads": 1 }],
            "pony": {
                "socket": self.socket(host),
                "uplink": "wire",
                "address": self.ip[host].to_string(),
                "rto_min_us": 1000,
            }
        });
        std::fs::write(&config, text.to_string()).unwrap();
        let child = serve_in(&self.ns[host], &config);
        self.daemons.push(child);
        let sock = self.socket(host);
        assert!(
            wait_for(Duration::from_secs(20), || sock.exists()
                && self.control(host).exists()),
            "host {host}: no Pony socket"
        );
    }

    fn status(&self, host: usize) -> Value {
        Checked::connect(&self.control(host)).ok("pony.status", json!({}))
    }

    fn counter(&self, host: usize, name: &str) -> u64 {
        self.status(host)["counters"][name].as_u64().unwrap_or(0)
    }

    /// Loss, duplication and reordering on the wire, and a 200 Mbit/s
    /// bottleneck towards each host, or none.
    fn impair(&self, impairment: Option<Impairment>) {
        let w = &self.wire_ns;
        for dev in &self.wire_dev {
            let _ = run(&[
                "ip", "netns", "exec", w, "tc", "qdisc", "del", "dev", dev, "root",
            ]);
            if impairment.is_some() {
                sh(&format!(
                    "ip netns exec {w} tc qdisc add dev {dev} root tbf rate 200mbit burst 64kb latency 20ms"
                ));
            }
        }
        self.wire().set(impairment.unwrap_or_default());
    }

    fn wire(&self) -> &ImpairedWire {
        self.wire.as_ref().expect("the wire runs")
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.wire.take();
        for c in self.daemons.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.ns.iter().chain([&self.wire_ns]) {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

fn sh(cmd: &str) {
    let out = run(&["bash", "-c", cmd]);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A message's bytes: which stream and message, then a pattern, so that a
/// wrong, torn or misplaced message shows.
fn message_bytes(stream: u16, n: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(31)
                .wrapping_add(n * 7 + u32::from(stream)) as u8
        })
        .collect();
    let head = [stream.to_le_bytes().as_slice(), &n.to_le_bytes()].concat();
    let k = head.len().min(len);
    v[..k].copy_from_slice(&head[..k]);
    v
}

/// The next completion (blocking), failing the test after `secs`.
fn next(app: &mut App, secs: u64) -> Completion {
    app.wait(Some(Duration::from_secs(secs)))
        .unwrap()
        .unwrap_or_else(|| panic!("no completion within {secs} s"))
}

/// Sends `messages` (stream, length) from `a` on `conn` and checks that `b`
/// receives each exactly once, whole, in order per stream. A keeps at most
/// `window` messages in flight.
fn exchange(a: &mut App, b: &mut App, conn: u32, messages: &[(u16, usize)], window: usize) {
    let mut next_n: HashMap<u16, u32> = HashMap::new();
    let mut expect: HashMap<u16, u32> = HashMap::new();
    let mut in_flight: HashMap<u64, Buffer> = HashMap::new();
    let mut sent = 0;
    let mut received = 0;
    let mut done_sending = 0;
    while received < messages.len() || done_sending < messages.len() {
        while sent < messages.len() && in_flight.len() < window {
            let (stream, len) = messages[sent];
            let n = next_n.entry(stream).or_insert(0);
            let buf = a.alloc(len.max(1)).unwrap();
            let buf = buf.slice(0, len);
            a.write_bytes(&buf, 0, &message_bytes(stream, *n, len))
                .unwrap();
            *n += 1;
            a.send(conn, stream, &buf, sent as u64).unwrap();
            in_flight.insert(sent as u64, buf);
            sent += 1;
        }
        while let Some(c) = a.poll() {
            assert_eq!((c.kind, c.status), (kind::SENT, status::OK), "{c:?}");
            let buf = in_flight
                .remove(&c.user_data)
                .expect("one SENT per message");
            let whole = Buffer {
                offset: buf.offset,
                len: buf.len.max(1),
            };
            a.free(whole).unwrap();
            done_sending += 1;
        }
        if let Some(c) = b.wait(Some(Duration::from_millis(2))).unwrap() {
            assert_eq!((c.kind, c.status), (kind::RECEIVED, status::OK), "{c:?}");
            let e = expect.entry(c.stream).or_insert(0);
            let data = b.message(&c).unwrap();
            assert_eq!(
                data,
                message_bytes(c.stream, *e, data.len()),
                "stream {} message {} arrived wrong or out of order",
                c.stream,
                *e
            );
            *e += 1;
            b.release(&c).unwrap();
            received += 1;
        }
    }
    // Nothing more: every message exactly once.
    assert!(b.wait(Some(Duration::from_millis(300))).unwrap().is_none());
    for (s, n) in next_n {
        assert_eq!(expect.get(&s).copied().unwrap_or(0), n, "stream {s}");
    }
}

/// B's regions: a data region, an indirection table into it, and a
/// writable region. Returns (data, table, writable) region ids and the
/// data region's bytes.
fn serve_regions(b: &mut App) -> (u32, u32, u32, Buffer, Vec<u8>) {
    let data_buf = b.alloc(64 * 1024).unwrap();
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 13 % 251) as u8).collect();
    b.write_bytes(&data_buf, 0, &data).unwrap();
    let data_region = b.register(&data_buf, access::READ).unwrap();
    let table_buf = b.alloc(16 * 8).unwrap();
    for i in 0..8u64 {
        let mut entry = [0u8; 16];
        entry[..8].copy_from_slice(&(i * 4000).to_le_bytes());
        entry[8..12].copy_from_slice(&(100 + i as u32 * 10).to_le_bytes());
        b.write_bytes(&table_buf, i as usize * 16, &entry).unwrap();
    }
    let table_region = b.register(&table_buf, access::READ).unwrap();
    let writable = b.alloc(16 * 1024).unwrap();
    let writable_region = b.register(&writable, access::READ | access::WRITE).unwrap();
    (data_region, table_region, writable_region, writable, data)
}

/// A's one-sided operations against B's regions; B's application takes no
/// part (it is never polled meanwhile).
fn one_sided(
    a: &mut App,
    b: &App,
    conn: u32,
    regions: &(u32, u32, u32, Buffer, Vec<u8>),
    rounds: u32,
) {
    let (data_region, table_region, writable_region, writable, data) = regions;
    let into = a.alloc(8192).unwrap();
    for r in 0..rounds {
        // Read.
        let at = (r as usize * 977) % 60_000;
        a.read(conn, *data_region, at as u64, &into.slice(0, 3000), 1)
            .unwrap();
        let c = next(a, 20);
        assert_eq!(
            (c.kind, c.status, c.len),
            (kind::READ_DONE, status::OK, 3000),
            "{c:?}"
        );
        let mut got = vec![0u8; 3000];
        a.read_bytes(&into, 0, &mut got).unwrap();
        assert_eq!(got, data[at..at + 3000], "read at {at}");
        // Indirect read: entry i points at i * 4000, 100 + 10 i bytes.
        let i = u64::from(r % 8);
        a.indirect_read(
            conn,
            *table_region,
            i,
            *data_region,
            &into.slice(0, 8192),
            2,
        )
        .unwrap();
        let c = next(a, 20);
        let len = 100 + i as usize * 10;
        assert_eq!(
            (c.kind, c.status, c.len as usize),
            (kind::INDIRECT_READ_DONE, status::OK, len),
            "{c:?}"
        );
        let mut got = vec![0u8; len];
        a.read_bytes(&into, 0, &mut got).unwrap();
        let from = i as usize * 4000;
        assert_eq!(got, data[from..from + len], "indirect read of entry {i}");
        // Write, then read it back from B's memory.
        let bytes: Vec<u8> = (0..2000).map(|k| (k as u32 + r) as u8).collect();
        a.write_bytes(&into, 0, &bytes).unwrap();
        let off = (r as usize * 131) % 14_000;
        a.write(conn, *writable_region, off as u64, &into.slice(0, 2000), 3)
            .unwrap();
        let c = next(a, 20);
        assert_eq!((c.kind, c.status), (kind::WRITE_DONE, status::OK), "{c:?}");
        let mut there = vec![0u8; 2000];
        b.read_bytes(writable, off, &mut there).unwrap();
        assert_eq!(there, bytes, "write at {off}");
    }
    // What B did not register, or not for this, is refused.
    a.read(conn, 999, 0, &into.slice(0, 10), 4).unwrap();
    let c = next(a, 20);
    assert_eq!((c.kind, c.status), (kind::READ_DONE, status::BAD_REGION));
    a.write(conn, *data_region, 0, &into.slice(0, 10), 5)
        .unwrap();
    let c = next(a, 20);
    assert_eq!((c.kind, c.status), (kind::WRITE_DONE, status::BAD_REGION));
    a.read(conn, *data_region, 64 * 1024 - 5, &into.slice(0, 10), 6)
        .unwrap();
    let c = next(a, 20);
    assert_eq!((c.kind, c.status), (kind::READ_DONE, status::BAD_REGION));
    a.free(into).unwrap();
}

/// `count` indirect reads and `count` small reads from A at once, so that
/// the engines bundle them (and their answers) several to a packet; every
/// answer is checked against B's data.
fn one_sided_burst(
    a: &mut App,
    conn: u32,
    regions: &(u32, u32, u32, Buffer, Vec<u8>),
    count: usize,
) {
    let (data_region, table_region, _, _, data) = regions;
    const SLOT: usize = 256;
    let into = a.alloc(2 * count * SLOT).unwrap();
    for k in 0..count {
        let i = (k % 8) as u64;
        a.indirect_read(
            conn,
            *table_region,
            i,
            *data_region,
            &into.slice(2 * k * SLOT, SLOT),
            (2 * k) as u64,
        )
        .unwrap();
        let at = (k * 613) % 60_000;
        a.read(
            conn,
            *data_region,
            at as u64,
            &into.slice((2 * k + 1) * SLOT, 40),
            (2 * k + 1) as u64,
        )
        .unwrap();
    }
    let mut seen = vec![false; 2 * count];
    for _ in 0..2 * count {
        let c = next(a, 20);
        let n = c.user_data as usize;
        assert!(
            n < 2 * count && !seen[n],
            "completion {n} twice or unknown: {c:?}"
        );
        seen[n] = true;
        assert_eq!(c.status, status::OK, "{c:?}");
        let k = n / 2;
        let (from, len) = if n % 2 == 0 {
            assert_eq!(c.kind, kind::INDIRECT_READ_DONE, "{c:?}");
            ((k % 8) * 4000, 100 + (k % 8) * 10)
        } else {
            assert_eq!(c.kind, kind::READ_DONE, "{c:?}");
            ((k * 613) % 60_000, 40)
        };
        assert_eq!(c.len as usize, len, "{c:?}");
        let mut got = vec![0u8; len];
        a.read_bytes(&into, n * SLOT, &mut got).unwrap();
        assert_eq!(got, data[from..from + len], "operation {n}");
    }
    a.free(into).unwrap();
}

/// The child that is killed mid-transfer: attaches to host A, connects to
/// B, and sends large messages until it dies.
#[test]
#[ignore = "run by `pony_between_two_hosts` as a child process"]
fn pony_child_sender() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (socket, peer) = spec.split_once(',').unwrap();
    let mut app = App::attach(socket, "doomed", 0).unwrap();
    let conn = app.connect(peer.parse().unwrap(), SERVICE).unwrap();
    let buf = app.alloc(4 << 20).unwrap();
    let mut n = 0u64;
    loop {
        while app.send(conn, 9, &buf, n).is_ok() {
            n += 1;
        }
        let _ = app.wait(Some(Duration::from_millis(10)));
    }
}

fn child_sender(socket: &Path, peer: Ipv4Addr) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "pony_child_sender", "--nocapture"])
        .env(CHILD_ENV, format!("{},{peer}", socket.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Garbage and truncated Pony packets sent by host A's kernel to B's Pony
/// port (bash's /dev/udp).
fn send_garbage(h: &Hosts) {
    let to = format!("/dev/udp/{}/7471", h.ip[1]);
    // Two not Pony at all (one long enough for a header), two cut short.
    for payload in [
        r"garbage, and long enough to hold a flow header",
        r"PX\x01\x01\x00",
        r"PX\x09\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        r"PX\x01\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    ] {
        sh(&format!(
            "ip netns exec {} bash -c 'printf \"{payload}\" > {to}'",
            h.ns[0]
        ));
    }
}

#[test]
fn pony_between_two_hosts() {
    if !can_run() {
        return;
    }
    let mut h = Hosts::new();
    h.start(0);
    h.start(1);
    let mut b = App::attach(h.socket(1), "server", SERVICE).unwrap();
    let mut a = App::attach(h.socket(0), "client", 0).unwrap();
    assert_eq!(a.address(), h.ip[0]);

    // Nobody listens on another service: refused.
    match a.connect(h.ip[1], SERVICE + 1) {
        Err(snapnet_pony::Error::Status(s)) => assert_eq!(s, status::REFUSED),
        other => panic!("connect to a service nobody offers: {other:?}"),
    }
    let conn = a.connect(h.ip[1], SERVICE).unwrap();
    let accepted = next(&mut b, 10);
    assert_eq!(
        (accepted.kind, accepted.peer_addr),
        (kind::ACCEPTED, u32::from(h.ip[0]))
    );

    // 1. Messages on a clean wire: sizes from 0 to 1 MiB on four streams;
    // the small ones on streams 1-3 do not wait for the large ones on 0.
    let mut messages = Vec::new();
    for i in 0..40 {
        messages.push((0u16, [0, 1, 1391, 1392, 1393, 70_000, 1 << 20][i % 7]));
        messages.push((1 + (i % 3) as u16, 1 + i * 37));
    }
    exchange(&mut a, &mut b, conn, &messages, 16);

    // 2. One-sided operations on a clean wire.
    let regions = serve_regions(&mut b);
    one_sided(&mut a, &b, conn, &regions, 20);
    one_sided_burst(&mut a, conn, &regions, 100);
    // The requests went several to a packet, and so did their answers; the
    // answers carried the requests' acknowledgements.
    for host in [0, 1] {
        assert!(
            h.counter(host, "ops_bundled") > 0,
            "host {host}: nothing bundled: {}",
            h.status(host)
        );
        assert!(
            h.counter(host, "acks_piggybacked") > 0,
            "host {host}: no ACK rode on data: {}",
            h.status(host)
        );
    }

    // 3. The same through 2 % loss, 2 % duplication and 2 % reordering both
    // ways, and a bottleneck that queues and drops when full.
    let retransmits_before = h.counter(0, "retransmits");
    h.impair(Some(Impairment {
        loss: 20,
        duplicate: 20,
        reorder: 20,
    }));
    let mut lossy = Vec::new();
    for i in 0..300 {
        lossy.push(((i % 4) as u16, [10, 3000, 20_000, 200_000][i % 4]));
    }
    exchange(&mut a, &mut b, conn, &lossy, 32);
    one_sided(&mut a, &b, conn, &regions, 50);
    let bundled_before = h.counter(0, "ops_bundled");
    for _ in 0..5 {
        one_sided_burst(&mut a, conn, &regions, 100);
    }
    assert!(h.counter(0, "ops_bundled") > bundled_before);
    h.impair(None);
    let s0 = h.status(0);
    let s1 = h.status(1);
    assert!(
        h.counter(0, "retransmits") > retransmits_before,
        "loss without retransmissions? {s0}"
    );
    let dups = s0["counters"]["duplicates"].as_u64().unwrap()
        + s1["counters"]["duplicates"].as_u64().unwrap();
    assert!(dups > 0, "the wire duplicated nothing? {s0} {s1}");
    let counts = &h.wire().counts;
    for (what, n) in [
        ("lost", &counts.lost),
        ("duplicated", &counts.duplicated),
        ("reordered", &counts.reordered),
    ] {
        assert!(n.load(Ordering::Relaxed) > 0, "the wire {what} nothing");
    }
    let flow = &s0["flows"][0];
    assert_eq!(flow["peer"], h.ip[1].to_string());
    assert!(flow["srtt_us"].as_f64().unwrap() > 0.0, "{flow}");

    // 4. An application killed mid-transfer leaves nothing behind, here or
    // at the peer.
    let mut child = child_sender(&h.socket(0), h.ip[1]);
    assert!(
        wait_for(Duration::from_secs(20), || h.status(0)["apps"]
            .as_array()
            .unwrap()
            .len()
            == 2
            && h.status(1)["connections"].as_array().unwrap().len() == 2),
        "the child did not connect: {}",
        h.status(0)
    );
    let accepted = next(&mut b, 10);
    assert_eq!(accepted.kind, kind::ACCEPTED);
    // Let it get some of a 4 MiB message across, then SIGKILL.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || {
            let (s0, s1) = (h.status(0), h.status(1));
            s0["apps"].as_array().unwrap().len() == 1
                && s0["connections"].as_array().unwrap().len() == 1
                && s1["connections"].as_array().unwrap().len() == 1
        }),
        "the killed application left something: {} {}",
        h.status(0),
        h.status(1)
    );
    // B saw the connection close; its half-received message was freed.
    let closed = next(&mut b, 10);
    assert_eq!(closed.kind, kind::CLOSED, "{closed:?}");
    assert!(
        wait_for(Duration::from_secs(5), || h.status(1)["apps"][0]
            ["rx_used_bytes"]
            == 0),
        "{}",
        h.status(1)
    );

    // 5. Garbage from the wire: counted, dropped, nothing else disturbed.
    send_garbage(&h);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let c = &h.status(1)["counters"];
            c["drop_bad_magic"].as_u64() >= Some(2) && c["drop_truncated"].as_u64() >= Some(2)
        }),
        "{}",
        h.status(1)
    );
    exchange(&mut a, &mut b, conn, &[(0, 100), (1, 5000)], 4);

    // 6. Closing: the peer sees CLOSED, both sides forget the connection.
    a.close(conn, 77).unwrap();
    let c = next(&mut a, 10);
    assert_eq!((c.kind, c.user_data), (kind::CLOSED, 77));
    let c = next(&mut b, 10);
    assert_eq!(c.kind, kind::CLOSED);
    assert!(wait_for(Duration::from_secs(5), || {
        h.status(0)["connections"].as_array().unwrap().is_empty()
            && h.status(1)["connections"].as_array().unwrap().is_empty()
    }));
}
