//! Connections come and go: reconnect cycles leak nothing, snapnet as socket
//! client reconnects when the frontend comes back, a frontend that vanishes
//! mid-burst harms no one.

mod common;

use std::time::Duration;

use common::*;
use snapnet::control::{Config, Daemon};
use snapnet_frontend::{Frontend, FrontendConfig};

fn rings(daemon: &Daemon, vnic: usize) -> usize {
    daemon.report()[vnic].rings_attached
}

#[test]
fn as_socket_client_snapnet_waits_for_the_frontend_and_reconnects_after_it_restarts() {
    let dir = TempDir::new("client");
    let text = format!(
        r#"{{ "runtime_dir": "{0}", "vnics": [
            {{ "name": "vnic0", "socket": "{0}/vm0.sock", "role": "client", "mac": "52:54:00:5a:00:01" }},
            {{ "name": "vnic1", "socket": "{0}/vnic1.sock", "mac": "52:54:00:5a:00:02" }} ] }}"#,
        dir.0.display()
    );
    let cfg = Config::from_json(&text).unwrap();
    let daemon = start(&cfg);
    let fcfg = FrontendConfig::default();
    let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
    // The frontend (QEMU with server=on) appears after snapnet started.
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..3 {
        let mut a = Frontend::accept(&dir.path("vm0.sock"), &fcfg, Duration::from_secs(10))
            .expect("snapnet connects to the frontend");
        assert!(
            wait_for(Duration::from_secs(20), || rings(&daemon, 0) == 2),
            "round {round}"
        );
        assert_crosses(&mut a, &mut b, 16, 300, &format!("round {round}"));
        drop(a); // QEMU exits; the next round is QEMU restarting
        assert!(wait_for(Duration::from_secs(20), || rings(&daemon, 0) == 0));
    }
    daemon.stop();
}

#[test]
fn a_frontend_vanishing_mid_burst_harms_no_one() {
    let dir = TempDir::new("burst");
    let cfg = two_vnics(&dir, 1, "");
    let daemon = start(&cfg);
    let pool = daemon.pool().clone();
    let fcfg = FrontendConfig::default();
    let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
    {
        let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
        assert!(wait_for(Duration::from_secs(20), || rings(&daemon, 0) == 2));
        let f = frame(MAC1, MAC0, 64, 0);
        a.prepare_blast(0, &f);
        for _ in 0..2000 {
            a.blast(0, 64);
        }
        // Gone without GET_VRING_BASE while the daemon is busy with its frames.
    }
    // b was not reading: its frames pile up, then get dropped as link_full.
    assert!(wait_for(Duration::from_secs(20), || rings(&daemon, 0) == 0));
    // b still works with a new sender.
    let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
    assert!(wait_for(Duration::from_secs(20), || rings(&daemon, 0) == 2));
    // Drain what the blast left queued for b until nothing came for 200 ms.
    let mut quiet = std::time::Instant::now();
    while quiet.elapsed() < Duration::from_millis(200) {
        if b.recv_count(0).0 > 0 {
            quiet = std::time::Instant::now();
        }
    }
    assert_crosses(&mut a, &mut b, 50, 500, "frames");
    drop(a);
    drop(b);
    daemon.stop();
    assert_eq!(pool.free_frames(), pool.total_frames(), "frames leaked");
}

#[test]
fn vnic_socket_group_opens_listening_sockets_to_that_group_only() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("sockgroup");
    let frontend_socket = dir.path("fe.sock");
    let config = |group: &str| {
        Config::from_json(&format!(
            r#"{{ "runtime_dir": "{}", "vnic_socket_group": "{group}",
                 "vnics": [ {{ "name": "vnic0", "mac": "52:54:00:5a:00:01" }},
                            {{ "name": "vnic1", "mac": "52:54:00:5a:00:02", "role": "client",
                               "socket": "{}" }} ] }}"#,
            dir.0.display(),
            frontend_socket.display()
        ))
        .unwrap()
    };
    // The frontend's own listening socket (client role): snapnet leaves it.
    let listener = std::os::unix::net::UnixListener::bind(&frontend_socket).unwrap();
    std::fs::set_permissions(&frontend_socket, std::fs::Permissions::from_mode(0o700)).unwrap();
    let daemon = start(&config("root"));
    let meta = std::fs::metadata(dir.path("vnic0.sock")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "mode {:o}", meta.mode());
    assert_eq!(meta.gid(), 0);
    let theirs = std::fs::metadata(&frontend_socket).unwrap();
    assert_eq!(
        theirs.mode() & 0o777,
        0o700,
        "a client-role socket is the frontend's"
    );
    daemon.stop();
    drop(listener);
    let err = Daemon::start(&config("no-such-group-snapnet"))
        .err()
        .expect("an unknown group is refused")
        .to_string();
    assert!(
        err.contains("vnic_socket_group") && err.contains("no-such-group-snapnet"),
        "{err}"
    );
}
