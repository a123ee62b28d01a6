//! The control API against the running daemon: the OpenRPC document matches
//! the code, every error case answers with its code and leaves the state as
//! it was, concurrent clients, bad input on the socket.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::rpc::*;
use common::*;
use serde_json::{json, Value};
use snapnet::control::rpc::METHODS;
use snapnet::control::Config;

fn config(dir: &TempDir) -> Config {
    two_vnics(dir, 1, "")
}

#[test]
fn methods_in_code_and_document_are_the_same_set() {
    let doc = openrpc();
    let mut documented: Vec<String> = doc["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    let mut code: Vec<String> = METHODS.iter().map(|s| s.to_string()).collect();
    documented.sort();
    code.sort();
    assert_eq!(documented, code);
    // And the server answers each of them (not "method not found").
    let dir = TempDir::new("rpc-set");
    let ctl = Control::start(&config(&dir));
    let mut c = ctl.client();
    for m in METHODS.iter().filter(|m| **m != "daemon.shutdown") {
        if let Err(snapnet::control::rpc::client::ClientError::Rpc(e)) =
            c.client.call(m, json!({"bogus": 1}))
        {
            assert_ne!(e.code, -32601, "{m} is documented but not served");
        }
    }
    ctl.stop();
}

#[test]
fn runtime_changes_answer_as_documented() {
    let dir = TempDir::new("rpc-ok");
    let ctl = Control::start(&config(&dir));
    let mut c = ctl.client();
    let sock = dir.path("web0.sock").display().to_string();
    let info = c.ok(
        "vnic.add",
        json!({"name": "web0", "mac": "52:54:00:00:00:10", "queue_pairs": 2, "socket": sock}),
    );
    assert_eq!(info["queue_pairs"], 2);
    assert!(dir.path("web0.sock").exists());
    assert_eq!(c.ok("vnic.list", json!({})).as_array().unwrap().len(), 3);
    assert_eq!(
        c.ok("vnic.get", json!({"name": "web0"}))["mac"],
        "52:54:00:00:00:10"
    );
    let st = c.ok("vnic.stats", json!({"name": "web0"}));
    assert_eq!(st["queues"].as_array().unwrap().len(), 2);
    assert_eq!(
        c.ok("vnic.update", json!({"name": "web0", "mtu": 9000}))["mtu"],
        9000
    );
    c.ok(
        "group.add",
        json!({"name": "g2", "policy": "dedicated", "threads": 1}),
    );
    assert_eq!(c.ok("group.list", json!({})).as_array().unwrap().len(), 2);
    let gs = c.ok("group.stats", json!({"name": "default"}));
    assert!(gs["engines"].as_u64().unwrap() >= 5);
    c.ok("group.remove", json!({"name": "g2"}));
    let elastic = c.ok(
        "group.add",
        json!({"name": "elastic", "policy": "compacting", "threads": 2, "latency_bound_us": 100}),
    );
    assert_eq!(elastic["latency_bound_us"], 100);
    c.ok("vnic.update", json!({"name": "web0", "group": "elastic"}));
    let st = c.ok("group.stats", json!({"name": "elastic"}));
    assert_eq!(st["engine_stats"].as_array().unwrap().len(), 2);
    assert!(!st["thread_history"].as_array().unwrap().is_empty());
    c.ok("vnic.update", json!({"name": "web0", "group": "default"}));
    c.ok("group.remove", json!({"name": "elastic"}));
    c.ok(
        "group.add",
        json!({"name": "sleepy", "policy": "spreading"}),
    );
    c.ok("group.remove", json!({"name": "sleepy"}));
    c.ok(
        "switch.fdb.add",
        json!({"mac": "02:00:00:00:00:99", "vnic": "web0"}),
    );
    let fdb = c.ok("switch.fdb.list", json!({}));
    assert!(fdb
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["mac"] == "02:00:00:00:00:99" && e["port"] == "web0"));
    c.ok("switch.fdb.remove", json!({"mac": "02:00:00:00:00:99"}));
    let status = c.ok("daemon.status", json!({}));
    assert_eq!(status["vnics"], 3);
    c.ok("vnic.remove", json!({"name": "web0"}));
    assert!(
        !dir.path("web0.sock").exists(),
        "socket removed with the vNIC"
    );
    ctl.stop();
}

#[test]
fn every_error_has_its_code_and_changes_nothing() {
    let dir = TempDir::new("rpc-err");
    let ctl = Control::start(&config(&dir));
    let mut c = ctl.client();
    c.ok("group.add", json!({"name": "busy", "policy": "dedicated"}));
    c.ok(
        "vnic.add",
        json!({"name": "inbusy", "mac": "52:54:00:00:00:20", "group": "busy"}),
    );
    let before = c.state();
    let vnic0_sock = dir.path("vnic0.sock").display().to_string();
    let cases: Vec<(&str, Value, i64, &str)> = vec![
        ("vnic.addd", json!({}), -32601, "vnic.addd"),
        ("vnic.add", json!({"name": "x"}), -32602, "mac"),
        (
            "vnic.add",
            json!({"name": "x", "mac": "52:54:00:00:00:30", "mtu": "big"}),
            -32602,
            "mtu",
        ),
        (
            "vnic.add",
            json!({"name": "x", "mac": "52:54:00:00:00:30", "colour": 1}),
            -32602,
            "colour",
        ),
        (
            "vnic.add",
            json!({"name": "x", "mac": "nope"}),
            -32602,
            "mac",
        ),
        (
            "vnic.add",
            json!({"name": "vnic0", "mac": "52:54:00:00:00:30"}),
            1002,
            "name",
        ),
        (
            "vnic.add",
            json!({"name": "x", "mac": "52:54:00:5a:00:01"}),
            1002,
            "mac",
        ),
        (
            "vnic.add",
            json!({"name": "x", "mac": "52:54:00:00:00:30", "socket": vnic0_sock}),
            1002,
            "socket",
        ),
        (
            "vnic.add",
            json!({"name": "x", "mac": "52:54:00:00:00:30", "mtu": 60000}),
            1004,
            "mtu",
        ),
        (
            "vnic.add",
            json!({"name": "x", "mac": "52:54:00:00:00:30", "group": "nope"}),
            1004,
            "nope",
        ),
        (
            "vnic.add",
            json!({"name": "bad name!", "mac": "52:54:00:00:00:30"}),
            1004,
            "name",
        ),
        (
            "vnic.add",
            json!({"name": "x", "mac": "01:00:5e:00:00:01"}),
            1004,
            "unicast",
        ),
        ("vnic.remove", json!({"name": "ghost"}), 1001, "ghost"),
        ("vnic.remove", json!({}), -32602, "name"),
        ("vnic.get", json!({"name": "ghost"}), 1001, "ghost"),
        ("vnic.stats", json!({"name": "ghost"}), 1001, "ghost"),
        (
            "vnic.update",
            json!({"name": "ghost", "mtu": 1500}),
            1001,
            "ghost",
        ),
        (
            "vnic.update",
            json!({"name": "vnic0", "mtu": 20}),
            1004,
            "mtu",
        ),
        ("vnic.list", json!({"all": true}), -32602, "all"),
        (
            "group.add",
            json!({"name": "busy", "policy": "dedicated"}),
            1002,
            "busy",
        ),
        (
            "group.add",
            json!({"name": "g", "policy": "sometimes"}),
            -32602,
            "policy",
        ),
        (
            "group.add",
            json!({"name": "g", "policy": "dedicated", "threads": 0}),
            1004,
            "threads",
        ),
        ("group.remove", json!({"name": "busy"}), 1003, "inbusy"),
        ("group.remove", json!({"name": "default"}), 1003, "switch"),
        ("group.remove", json!({"name": "ghost"}), 1001, "ghost"),
        ("group.stats", json!({"name": "ghost"}), 1001, "ghost"),
        (
            "switch.fdb.add",
            json!({"mac": "02:00:00:00:00:01", "vnic": "ghost"}),
            1001,
            "ghost",
        ),
        (
            "switch.fdb.add",
            json!({"mac": "ff:ff:ff:ff:ff:ff", "vnic": "vnic0"}),
            1004,
            "unicast",
        ),
        (
            "switch.fdb.remove",
            json!({"mac": "02:00:00:00:00:77"}),
            1001,
            "02:00:00:00:00:77",
        ),
        ("daemon.status", json!({"verbose": true}), -32602, "verbose"),
    ];
    for (method, params, code, needle) in cases {
        let e = c.err(method, params.clone(), code);
        assert!(
            e.message.contains(needle),
            "{method} {params}: message should name '{needle}': {}",
            e.message
        );
        assert_eq!(c.state(), before, "{method} {params} changed the state");
    }
    ctl.stop();
}

#[test]
fn bad_input_on_the_socket_is_answered_and_harms_no_other_client() {
    let dir = TempDir::new("rpc-bad");
    let ctl = Control::start(&config(&dir));
    let mode = std::fs::metadata(&ctl.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket must be private");
    let mut good = ctl.client();
    let before = good.state();
    let mut c = ctl.client();
    // Invalid JSON.
    let a = c.client.raw("{\"jsonrpc\": \"2.0\", \"method\": ").unwrap();
    assert_eq!(a["error"]["code"], -32700);
    // Not a request.
    let a = c.client.raw("[]").unwrap();
    assert_eq!(a["error"]["code"], -32600);
    let a = c
        .client
        .raw(r#"{"jsonrpc": "1.0", "id": 1, "method": "daemon.status"}"#)
        .unwrap();
    assert_eq!(a["error"]["code"], -32600);
    assert_eq!(a["id"], 1);
    // A batch: answers in order, the notification gets none.
    let a = c
        .client
        .raw(r#"[{"jsonrpc":"2.0","id":1,"method":"daemon.status"},{"jsonrpc":"2.0","method":"vnic.list"},{"jsonrpc":"2.0","id":2,"method":"nope"}]"#)
        .unwrap();
    let a = a.as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["id"], 1);
    assert!(a[0]["result"]["version"].is_string());
    assert_eq!(a[1]["error"]["code"], -32601);
    // Too large: refused, connection closed; the other client goes on.
    let mut big = UnixStream::connect(&ctl.socket).unwrap();
    let huge = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"vnic.add\",\"params\":{{\"name\":\"{}\"}}}}\n",
        "a".repeat(2 << 20)
    );
    let _ = big.write_all(huge.as_bytes());
    let mut answer = String::new();
    use std::io::BufRead;
    let _ = std::io::BufReader::new(&big).read_line(&mut answer);
    assert!(
        answer.contains("-32600") && answer.contains("larger"),
        "{answer}"
    );
    // A client that goes away in the middle of a request changes nothing.
    let mut half = UnixStream::connect(&ctl.socket).unwrap();
    half.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"vnic.add","params":{"name":"half","mac":"52:54:00:00:00:40"}"#).unwrap();
    drop(half);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(good.state(), before);
    assert_eq!(good.ok("daemon.status", json!({}))["vnics"], 2);
    ctl.stop();
}

#[test]
fn concurrent_clients_add_and_remove_different_vnics() {
    let dir = TempDir::new("rpc-conc");
    // Room in the frame pool for the 20 vNICs this test leaves behind (a
    // vNIC is refused when the pool cannot hold its frames).
    let mut cfg = config(&dir);
    cfg.frame_pool.spare_queue_pairs = 20;
    let ctl = Control::start(&cfg);
    let socket = ctl.socket.clone();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Checked::connect(&socket);
                for round in 0..10u8 {
                    let name = format!("t{t}r{round}");
                    let mac = format!("52:54:00:01:{t:02x}:{round:02x}");
                    c.ok("vnic.add", json!({"name": name, "mac": mac}));
                    c.ok("vnic.get", json!({"name": name}));
                    if round % 2 == 0 {
                        c.ok("vnic.remove", json!({"name": name}));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut c = ctl.client();
    let list = c.ok("vnic.list", json!({}));
    assert_eq!(list.as_array().unwrap().len(), 2 + 4 * 5);
    // The pool is full now: one more queue pair is refused, saying why.
    let e = c.err(
        "vnic.add",
        json!({"name": "over", "mac": "52:54:00:02:00:01"}),
        1004,
    );
    assert!(e.message.contains("frame_pool"), "{}", e.message);
    ctl.stop();
}

/// Issue 13, item 6: `vnic.add` used to remove whatever file was at the
/// socket path (the daemon is root) and to create sockets anywhere.
#[test]
fn vnic_sockets_stay_in_their_directories_and_only_stale_sockets_are_replaced() {
    let dir = TempDir::new("rpc-paths");
    let outside = TempDir::new("rpc-paths-outside");
    let ctl = Control::start(&config(&dir));
    let mut c = ctl.client();
    let before = c.state();
    let victim = outside.path("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let add = |c: &mut common::rpc::Checked, socket: &std::path::Path| {
        c.err(
            "vnic.add",
            json!({"name": "x", "mac": "52:54:00:00:00:40", "socket": socket.display().to_string()}),
            1004,
        )
        .message
    };
    // Outside the runtime dir: refused before anything is touched.
    let m = add(&mut c, &victim);
    assert!(
        m.contains("params.socket") && m.contains("socket_dirs"),
        "{m}"
    );
    let m = add(&mut c, &dir.path("../x/../victim"));
    assert!(m.contains("params.socket"), "{m}");
    // Inside it: a regular file, a directory, and a symlink are not sockets.
    std::fs::write(dir.path("keep.sock"), b"mine").unwrap();
    let m = add(&mut c, &dir.path("keep.sock"));
    assert!(m.contains("not a socket"), "{m}");
    std::fs::create_dir(dir.path("d.sock")).unwrap();
    add(&mut c, &dir.path("d.sock"));
    std::os::unix::fs::symlink(&victim, dir.path("link.sock")).unwrap();
    let m = add(&mut c, &dir.path("link.sock"));
    assert!(m.contains("symlink"), "{m}");
    // A symlinked directory inside leads outside: refused too.
    std::os::unix::fs::symlink(&outside.0, dir.path("out")).unwrap();
    let m = add(&mut c, &dir.path("out/x.sock"));
    assert!(m.contains("outside"), "{m}");
    assert!(!outside.path("x.sock").exists());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::read(dir.path("keep.sock")).unwrap(), b"mine");
    assert!(dir.path("d.sock").is_dir());
    assert!(dir.path("link.sock").symlink_metadata().is_ok());
    assert_eq!(c.state(), before, "refused calls change nothing");
    // A socket left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(dir.path("stale.sock")).unwrap());
    c.ok(
        "vnic.add",
        json!({"name": "x", "mac": "52:54:00:00:00:40", "socket": dir.path("stale.sock").display().to_string()}),
    );
    UnixStream::connect(dir.path("stale.sock")).expect("the new socket serves");
    ctl.stop();
}

#[test]
fn control_socket_never_replaces_a_file() {
    let dir = TempDir::new("rpc-ctlpath");
    let text = format!(
        r#"{{"runtime_dir":"{0}","control_socket":"{0}/ctl"}}"#,
        dir.0.display()
    );
    let cfg = Config::from_json(&text).unwrap();
    std::fs::write(dir.path("ctl"), b"not a socket").unwrap();
    let daemon = snapnet::control::Daemon::start(&cfg).unwrap();
    let ctx = std::sync::Arc::new(snapnet::control::rpc::Context {
        daemon: std::sync::Mutex::new(Some(daemon)),
        started: std::time::Instant::now(),
        request_shutdown: Box::new(|| {}),
        upgrade: None,
        accept_paused: Default::default(),
        directory: Default::default(),
    });
    let e = snapnet::control::rpc::server::RpcServer::start(&dir.path("ctl"), None, ctx.clone())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(dir.path("ctl")).unwrap(), b"not a socket");
    let daemon = ctx.daemon.lock().unwrap().take();
    if let Some(d) = daemon {
        d.stop();
    }
}

#[test]
fn port_security_over_rpc() {
    let dir = TempDir::new("rpc-portsec");
    let ctl = Control::start(&config(&dir));
    let mut c = ctl.client();
    let info = c.ok(
        "vnic.add",
        json!({"name": "r1", "mac": "52:54:00:00:00:50", "allowed_ips": ["10.0.0.5"],
               "allowed_address_pairs": [{"mac": "00:00:5e:00:01:07", "ips": ["10.0.0.100"]}]}),
    );
    assert_eq!(info["port_security"], true);
    assert_eq!(
        info["allowed_address_pairs"],
        json!([{"mac": "00:00:5e:00:01:07", "ips": ["10.0.0.100"]}])
    );
    let fw = c.ok(
        "vnic.add",
        json!({"name": "fw", "mac": "52:54:00:00:00:51", "port_security": false}),
    );
    assert_eq!(fw["port_security"], false);
    let u = c.ok(
        "vnic.update",
        json!({"name": "r1", "allowed_address_pairs": [{"mac": "00:00:5e:00:01:08"}], "port_security": false}),
    );
    assert_eq!(
        u["allowed_address_pairs"],
        json!([{"mac": "00:00:5e:00:01:08", "ips": null}])
    );
    assert_eq!(u["port_security"], false);
    assert_eq!(u["allowed_ips"], json!(["10.0.0.5"]), "kept");
    let before = c.state();
    for (params, code, says) in [
        (
            json!({"name": "r1", "allowed_address_pairs": [{"mac": "52:54:00:5a:00:01"}]}),
            1004,
            "params.allowed_address_pairs[0].mac",
        ),
        (
            json!({"name": "r1", "allowed_address_pairs": [{"mac": "01:00:5e:00:00:01"}]}),
            1004,
            "unicast",
        ),
        (
            json!({"name": "r1", "allowed_address_pairs": [{"mac": "00:00:5e:00:01:08"}, {"mac": "00:00:5e:00:01:08"}]}),
            1004,
            "twice",
        ),
        (
            json!({"name": "r1", "port_security": "off"}),
            -32602,
            "port_security",
        ),
    ] {
        let e = c.err("vnic.update", params.clone(), code);
        assert!(e.message.contains(says), "{params}: {}", e.message);
    }
    let e = c.err(
        "vnic.add",
        json!({"name": "r2", "mac": "52:54:00:00:00:52", "allowed_address_pairs": [{"mac": "52:54:00:00:00:50"}]}),
        1004,
    );
    assert!(
        e.message.contains("params.allowed_address_pairs[0].mac"),
        "{}",
        e.message
    );
    assert_eq!(c.state(), before);
    ctl.stop();
}
