//! Guest kicks wake the engine that serves the ring, on its own thread: the
//! vhost-user threads take no part (they used to wake on every kick and ring
//! the engine's doorbell, a second wake-up), under both sleeping policies,
//! and a kick eventfd the frontend replaces is followed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use snapnet::control::{Config, Daemon};
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

/// vNIC names of each test's own: the vhost-user threads are named after
/// them, and tests run side by side in this process.
fn config(dir: &TempDir, policy: &str, [a, b]: [&str; 2]) -> Config {
    Config::from_json(&format!(
        r#"{{ "runtime_dir": "{}",
              "vnics": [ {{ "name": "{a}", "mac": "52:54:00:5a:00:01" }},
                         {{ "name": "{b}", "mac": "52:54:00:5a:00:02" }} ],
              "groups": [ {{ "name": "g", "policy": "{policy}", "threads": 1 }} ] }}"#,
        dir.0.display()
    ))
    .unwrap()
}

/// Context switches so far of this process's threads whose name is one of
/// `names` (the vhost-user connection thread `vhost-NAME` and its vring
/// worker thread `NAME`): each wake-up of a thread is one. Panics if no
/// such thread exists, so the count cannot be vacuously zero.
fn wakeups(names: &[String]) -> u64 {
    let mut total = 0;
    let mut found = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !names.iter().any(|n| n == comm.trim()) {
            continue;
        }
        found += 1;
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    assert_eq!(found, names.len(), "vhost-user threads {names:?}");
    total
}

fn vhost_threads(names: [&str; 2]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| [n.to_string(), format!("vhost-{n}")])
        .collect()
}

/// One frame from `a` to `b`, sent after the engines have had time to fall
/// asleep; returns how long it took to arrive. An engine that missed the
/// kick would only poll again at its sleep timeout (1 s).
fn one_frame_after_a_pause(a: &mut Frontend, b: &mut Frontend, seq: u32) -> Duration {
    std::thread::sleep(Duration::from_millis(30));
    let f = frame(MAC1, MAC0, 100, seq);
    let t = Instant::now();
    assert_eq!(a.send(0, &[&f], &VirtioNetHdr::default()), 1);
    let mut got = Vec::new();
    while got.is_empty() && t.elapsed() < Duration::from_secs(5) {
        b.recv(0, |_, p| got.push(p.to_vec()));
        std::hint::spin_loop();
    }
    assert_eq!(got, [f], "frame {seq} did not arrive");
    t.elapsed()
}

fn up(policy: &str, names: [&str; 2]) -> (TempDir, Daemon, Frontend, Frontend) {
    let dir = TempDir::new("kicks");
    let daemon = start(&config(&dir, policy, names));
    let fcfg = FrontendConfig::default();
    let a = connect(&dir.path(&format!("{}.sock", names[0])), &fcfg);
    let b = connect(&dir.path(&format!("{}.sock", names[1])), &fcfg);
    wait_ready(&daemon);
    (dir, daemon, a, b)
}

#[test]
fn a_kick_wakes_the_sleeping_engine_without_the_vhost_user_threads() {
    for policy in ["spreading", "compacting"] {
        let vnics = ["kicka", "kickb"];
        let (_dir, daemon, mut a, mut b) = up(policy, vnics);
        // Settle: set-up messages are over.
        one_frame_after_a_pause(&mut a, &mut b, 0);
        let names = vhost_threads(vnics);
        let (before, kicks_before) = (wakeups(&names), a.stats(0).tx_kicks);
        let mut worst = Duration::ZERO;
        const ROUNDS: u32 = 20;
        for seq in 1..=ROUNDS {
            worst = worst.max(one_frame_after_a_pause(&mut a, &mut b, seq));
        }
        let kicks = a.stats(0).tx_kicks - kicks_before;
        let woken = wakeups(&names).saturating_sub(before);
        // The engine slept before each frame, so the guest was asked to kick.
        assert!(
            kicks >= u64::from(ROUNDS),
            "{policy}: only {kicks} kicks for {ROUNDS} frames: the engine never slept"
        );
        assert!(
            worst < Duration::from_millis(300),
            "{policy}: a kicked frame took {worst:?}: the kick did not wake the engine"
        );
        assert!(
            woken <= 2,
            "{policy}: the vhost-user threads woke {woken} times for {kicks} kicks"
        );
        drop(a);
        drop(b);
        daemon.stop();
    }
}

#[test]
fn a_replaced_kick_eventfd_is_followed() {
    for policy in ["spreading", "compacting"] {
        let (_dir, daemon, mut a, mut b) = up(policy, ["repla", "replb"]);
        one_frame_after_a_pause(&mut a, &mut b, 0);
        let kicks_before = a.stats(0).tx_kicks;
        let mut worst = Duration::ZERO;
        for seq in 1..=8 {
            // The old fd is closed by the frontend and the daemon; the new
            // one may well get its number.
            a.replace_kick(0, false).unwrap();
            worst = worst.max(one_frame_after_a_pause(&mut a, &mut b, seq));
        }
        assert!(
            a.stats(0).tx_kicks - kicks_before >= 8,
            "{policy}: the engine never slept, the test shows nothing"
        );
        assert!(
            worst < Duration::from_millis(300),
            "{policy}: a frame kicked on a replaced eventfd took {worst:?}"
        );
        drop(a);
        drop(b);
        daemon.stop();
    }
}
