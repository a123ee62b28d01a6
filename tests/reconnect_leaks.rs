//! 100 connect/disconnect cycles leak no fd, thread, memory or frame. Alone
//! in its own test binary: fd and thread counts are process-wide.

mod common;

use std::time::Duration;

use common::*;
use snapnet::control::Daemon;
use snapnet_frontend::{Frontend, FrontendConfig};

fn rings(daemon: &Daemon, vnic: usize) -> usize {
    daemon.report()[vnic].rings_attached
}

#[test]
fn hundred_connect_disconnect_cycles_leak_no_fd_thread_memory_or_frame() {
    let dir = TempDir::new("cycles");
    let cfg = two_vnics(&dir, 1, "");
    let daemon = start(&cfg);
    let pool = daemon.pool().clone();
    let fcfg = FrontendConfig {
        mem_size: 8 << 20,
        queue_size: 64,
        ..Default::default()
    };
    let mut peer = connect(&dir.path("vnic1.sock"), &fcfg);
    let cycle = |i: u32, peer: &mut Frontend| {
        let mut a = connect(&dir.path("vnic0.sock"), &fcfg);
        assert!(
            wait_for(Duration::from_secs(20), || rings(&daemon, 0) == 2),
            "cycle {i}: not attached"
        );
        let frames: Vec<Vec<u8>> = (0..8).map(|s| frame(MAC1, MAC0, 100, s)).collect();
        let got = exchange(
            &mut a,
            0,
            peer,
            &frames,
            frames.len(),
            Duration::from_secs(5),
        );
        assert_eq!(got.len(), frames.len(), "cycle {i}");
        if i % 2 == 0 {
            a.shutdown().unwrap(); // orderly: GET_VRING_BASE first
        } else {
            drop(a); // abrupt: the socket just closes
        }
        assert!(
            wait_for(Duration::from_secs(20), || rings(&daemon, 0) == 0),
            "cycle {i}: not detached"
        );
    };
    // Warm up once so lazily created state is not counted as a leak.
    cycle(0, &mut peer);
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads, rss) = (fd_count(), thread_count(), rss_kib());
    for i in 1..=100 {
        cycle(i, &mut peer);
    }
    // Dropping a vhost-user connection joins its threads asynchronously.
    let settled = wait_for(Duration::from_secs(20), || {
        fd_count() <= fds && thread_count() <= threads
    });
    if !settled {
        eprintln!(
            "fds {} -> {}, threads {} -> {}",
            fds,
            fd_count(),
            threads,
            thread_count()
        );
        for e in std::fs::read_dir("/proc/self/fd").unwrap() {
            let p = e.unwrap().path();
            eprintln!("{} -> {:?}", p.display(), std::fs::read_link(&p));
        }
        for e in std::fs::read_dir("/proc/self/task").unwrap() {
            let p = e.unwrap().path().join("comm");
            eprintln!("task {:?}", std::fs::read_to_string(&p));
        }
    }
    assert_eq!(fd_count(), fds, "fds leaked over 100 cycles");
    assert_eq!(thread_count(), threads, "threads leaked over 100 cycles");
    let grown = rss_kib().saturating_sub(rss);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB over 100 cycles");
    drop(peer);
    daemon.stop();
    assert_eq!(pool.free_frames(), pool.total_frames(), "frames leaked");
}
