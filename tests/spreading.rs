//! A daemon whose engines run in a spreading group: traffic crosses (guest
//! kicks wake sleeping engines), both with and without EVENT_IDX, and the
//! idle daemon uses almost no CPU.

mod common;

use std::time::Duration;

use common::*;
use snapnet::control::Config;
use snapnet_frontend::FrontendConfig;

fn spreading(dir: &TempDir) -> Config {
    Config::from_json(&format!(
        r#"{{ "runtime_dir": "{}",
              "vnics": [ {{ "name": "vnic0", "mac": "52:54:00:5a:00:01" }},
                         {{ "name": "vnic1", "mac": "52:54:00:5a:00:02" }} ],
              "groups": [ {{ "name": "sleepy", "policy": "spreading" }} ] }}"#,
        dir.0.display()
    ))
    .unwrap()
}

#[test]
fn traffic_wakes_sleeping_engines_and_idle_costs_nothing() {
    for event_idx in [true, false] {
        let dir = TempDir::new("spread");
        let daemon = start(&spreading(&dir));
        let fcfg = FrontendConfig {
            event_idx,
            ..Default::default()
        };
        let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
        let mut b = connect(&dir.path("vnic1.sock"), &fcfg);
        wait_ready(&daemon);
        // Let every engine fall asleep, then send: the kicks must wake them.
        for round in 0..5 {
            std::thread::sleep(Duration::from_millis(50));
            assert_crosses(
                &mut a,
                &mut b,
                20,
                300,
                &format!("event_idx={event_idx} round {round}"),
            );
        }
        let cpu = |d: &snapnet::control::Daemon| -> f64 {
            d.group_thread_cpu("sleepy")
                .unwrap()
                .iter()
                .map(|(_, s)| s)
                .sum()
        };
        std::thread::sleep(Duration::from_millis(300));
        let before = cpu(&daemon);
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu(&daemon) - before;
        assert!(
            used < 0.01,
            "idle spreading group used {used} s of CPU in 1 s (event_idx={event_idx})"
        );
        drop(a);
        drop(b);
        daemon.stop();
    }
}
