//! A vNIC attached at runtime over the control API carries traffic, is
//! detached while traffic flows (no crash; fds, threads and frames all come
//! back), and can be attached again. Alone in its binary: fd and thread
//! counts are process-wide.

mod common;

use std::time::Duration;

use common::rpc::*;
use common::*;
use serde_json::json;
use snapnet::control::Config;
use snapnet_frontend::FrontendConfig;

#[test]
fn attach_pass_traffic_detach_while_flowing_and_attach_again() {
    let dir = TempDir::new("attach");
    let cfg = Config::from_json(&format!(
        r#"{{ "runtime_dir": "{}", "vnics": [ {{ "name": "vnic1", "mac": "52:54:00:5a:00:02" }} ] }}"#,
        dir.0.display()
    ))
    .unwrap();
    let ctl = Control::start(&cfg);
    let pool = ctl.with_daemon(|d| d.pool().clone());
    let mut c = ctl.client();
    let fcfg = FrontendConfig {
        mem_size: 16 << 20,
        ..Default::default()
    };
    let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
    let attached =
        |c: &mut Checked| c.ok("vnic.get", json!({"name": "vnic0"}))["rings_attached"] == 2;
    let baseline = (fd_count(), thread_count());
    for round in 0..3 {
        c.ok(
            "vnic.add",
            json!({"name": "vnic0", "mac": "52:54:00:5a:00:01"}),
        );
        let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
        assert!(
            wait_for(Duration::from_secs(20), || attached(&mut c)),
            "round {round}"
        );
        assert_crosses(&mut a, &mut b, 50, 400, "runtime-attached vNIC");
        // Detach while a blast is in flight.
        a.prepare_blast(0, &frame(MAC1, MAC0, 64, 0));
        for _ in 0..200 {
            a.blast(0, 32);
            while b.recv_count(0).0 > 0 {}
        }
        let removed = c.ok("vnic.remove", json!({"name": "vnic0"}));
        assert_eq!(removed["removed"], "vnic0");
        for _ in 0..50 {
            a.blast(0, 32); // the guest keeps sending into a dead ring: harmless
        }
        drop(a);
        assert!(!dir.path("vnic0.sock").exists());
        c.err("vnic.get", json!({"name": "vnic0"}), 1001);
        // vnic1 still works on its own: frames to it from nowhere are gone, none stuck.
        let drained = wait_for(Duration::from_secs(2), || b.recv_count(0).0 == 0);
        assert!(drained);
    }
    assert!(
        wait_for(Duration::from_secs(20), || (fd_count(), thread_count())
            == baseline),
        "fds/threads {:?} -> {:?}",
        baseline,
        (fd_count(), thread_count())
    );
    drop(b);
    ctl.stop();
    assert_eq!(pool.free_frames(), pool.total_frames(), "frames leaked");
}
