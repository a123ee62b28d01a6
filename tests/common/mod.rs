//! Shared helpers for the integration tests: a daemon in this process on
//! sockets in a private directory, and Rust frontends attached to it.

#![allow(dead_code)]

pub mod guest;
pub mod impaired_wire;
pub mod netns;
pub mod packets;
pub mod rpc;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use snapnet::control::{Config, Daemon};
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

pub const MAC0: [u8; 6] = [0x52, 0x54, 0x00, 0x5a, 0x00, 0x01];
pub const MAC1: [u8; 6] = [0x52, 0x54, 0x00, 0x5a, 0x00, 0x02];

/// A directory of its own for one test's sockets, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "snapnet-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config file `dir/c.json` for the `snapnet` binary: one vNIC, vnic0,
/// with its sockets (and the control socket) in `dir`.
pub fn one_vnic_config_file(dir: &TempDir) -> PathBuf {
    let cfg = dir.path("c.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"runtime_dir":"{}","vnics":[{{"name":"vnic0","mac":"52:54:00:5a:00:01"}}]}}"#,
            dir.0.display()
        ),
    )
    .unwrap();
    cfg
}

/// A config of two vNICs in `dir` with `queue_pairs` each.
pub fn two_vnics(dir: &TempDir, queue_pairs: u16, extra: &str) -> Config {
    let text = format!(
        r#"{{
        "runtime_dir": "{}",
        "vnics": [
            {{ "name": "vnic0", "mac": "52:54:00:5a:00:01", "queue_pairs": {queue_pairs} {extra} }},
            {{ "name": "vnic1", "mac": "52:54:00:5a:00:02", "queue_pairs": {queue_pairs} {extra} }}
        ],
        "groups": [ {{ "name": "default", "policy": "dedicated", "threads": 1 }} ]
    }}"#,
        dir.0.display()
    );
    Config::from_json(&text).unwrap()
}

pub fn start(cfg: &Config) -> Daemon {
    Daemon::start(cfg).expect("daemon starts")
}

pub fn connect(path: &Path, cfg: &FrontendConfig) -> Frontend {
    Frontend::connect(path, cfg, Duration::from_secs(5)).expect("frontend connects")
}

/// Waits until every ring of every vNIC is served (the guests are "up").
pub fn wait_ready(daemon: &Daemon) {
    let ok = wait_for(Duration::from_secs(20), || {
        daemon
            .report()
            .iter()
            .all(|v| v.rings_attached == 2 * v.queues.len())
    });
    assert!(
        ok,
        "rings not attached: {:?}",
        daemon
            .report()
            .iter()
            .map(|v| v.rings_attached)
            .collect::<Vec<_>>()
    );
}

/// An Ethernet frame `dst <- src` of `len` bytes whose payload encodes `seq`.
pub fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[18..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(7).wrapping_add(seq) as u8;
    }
    f
}

/// Sends every frame on `tx` (queue pair `qp`) and collects what arrives on
/// `rx` (any queue pair) until `want` frames came or `timeout` passed.
pub fn exchange(
    tx: &mut Frontend,
    qp: u16,
    rx: &mut Frontend,
    frames: &[Vec<u8>],
    want: usize,
    timeout: Duration,
) -> Vec<Vec<u8>> {
    let hdr = VirtioNetHdr::default();
    let mut sent = 0;
    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + timeout;
    while (got.len() < want || sent < frames.len()) && Instant::now() < deadline {
        if sent < frames.len() {
            let batch: Vec<&[u8]> = frames[sent..]
                .iter()
                .take(32)
                .map(|f| f.as_slice())
                .collect();
            sent += tx.send(qp, &batch, &hdr);
        }
        let mut n = 0;
        for q in 0..rx.queue_pairs() {
            n += rx.recv(q, |_, p| got.push(p.to_vec()));
        }
        if n == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    got
}

/// Sends `n` numbered frames of `size` bytes from `tx` (MAC0) to `rx` (MAC1)
/// on queue pair 0 and asserts that exactly they arrive, in order.
pub fn assert_crosses(tx: &mut Frontend, rx: &mut Frontend, n: u32, size: usize, what: &str) {
    let frames: Vec<Vec<u8>> = (0..n).map(|s| frame(MAC1, MAC0, size, s)).collect();
    let got = exchange(tx, 0, rx, &frames, frames.len(), Duration::from_secs(5));
    assert!(
        got == frames,
        "{what}: {} of {} frames arrived intact",
        got.len(),
        frames.len()
    );
}

/// Open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Resident memory of this process in KiB.
pub fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// Waits until `f` holds or the timeout passes.
/// Frames of `vnic` dropped for `reason`, over all its queues.
pub fn drops(d: &Daemon, vnic: &str, reason: snapnet::vnic::DropReason) -> u64 {
    d.report()
        .iter()
        .find(|v| v.name == vnic)
        .unwrap()
        .queues
        .iter()
        .map(|q| q.dropped(reason))
        .sum()
}

pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// Waits for `child` to exit; kills it after `timeout` (then None).
pub fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
