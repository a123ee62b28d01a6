//! The blackout of `snapnet ctl upgrade` through the real binary: a daemon
//! of N vNICs (one queue pair each, in pairs that send to each other through
//! the switch) carries sequence-numbered frames from snapnet's own frontend
//! while it is upgraded again and again. Per upgrade: the daemon's blackout
//! (its report: the first engine stopping to the new process serving every
//! vNIC) and the largest gap any guest saw between two frames; over the
//! run, frames lost, duplicated or reordered (must be 0). A gap is also
//! given less the time the guests' own thread did not run within it (the
//! daemon gap: two cores host both processes and this thread), with that
//! thread's longest stall.
//!
//! Per vNIC too (the daemon's report): from its engines beginning to stop
//! in the old process (before the mailbox call that detaches its vrings)
//! to the last of its engines in the new one serving the guest's vrings
//! (in the mailbox call that opens its gate).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use snapnet::control::rpc::client::Client;

use super::guests::{drive, quantile, us, Drive};

#[derive(Args, Debug)]
pub struct UpgradeArgs {
    /// vNIC counts to measure (one queue pair each; even: a vNIC's traffic
    /// needs a peer, so 1 is measured as 2).
    #[arg(long, value_delimiter = ',', default_value = "2,8,32")]
    vnics: Vec<usize>,
    /// Upgrades per count, one after the other on the same daemon.
    #[arg(long, default_value_t = 20)]
    upgrades: usize,
    /// The snapnet binary (default: the one beside this program).
    #[arg(long)]
    snapnet: Option<PathBuf>,
    /// CPU of the guests' thread.
    #[arg(long, default_value_t = 0)]
    guest_cpu: usize,
    /// CPU of the daemon's engine thread (a dedicated group of one).
    #[arg(long, default_value_t = 1)]
    engine_cpu: usize,
    /// Keep the daemons' log (every process writes to it) at this path.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Time between two upgrades, with traffic flowing.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
}

fn mac(i: usize) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x5b, (i >> 8) as u8, i as u8]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The daemon, however many times it was upgraded: stopped at the end or
/// if the benchmark fails.
struct Daemon {
    first: Option<Child>,
    /// The process that serves now.
    pid: u32,
    control: PathBuf,
}

impl Daemon {
    fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        Client::connect(&self.control)
            .and_then(|mut c| c.call(method, params))
            .map_err(|e| format!("{method}: {e}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.call("daemon.shutdown", json!({}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.control.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: a signal to the pid the daemon reported as its own; at
        // worst it is gone already.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        if let Some(mut c) = self.first.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(binary: &Path, dir: &Path, n: usize, cpu: usize) -> Result<Daemon, String> {
    let control = dir.join("control.sock");
    let vnics: Vec<Value> = (0..n)
        .map(|i| json!({ "name": format!("vnic{i}"), "mac": mac_text(mac(i)) }))
        .collect();
    let cfg = json!({
        "runtime_dir": dir,
        "control_socket": control,
        "vnics": vnics,
        "groups": [ { "name": "default", "policy": "dedicated", "threads": 1, "cpus": [cpu] } ]
    });
    let path = dir.join("snapnet.json");
    std::fs::write(&path, cfg.to_string()).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("snapnet.log")).map_err(|e| e.to_string())?;
    let child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let daemon = Daemon {
        pid: child.id(),
        first: Some(child),
        control,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.call("daemon.status", json!({})).is_err() {
        if Instant::now() > deadline {
            return Err("the daemon did not start (see its snapnet.log)".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(daemon)
}

fn default_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Ok(me.with_file_name("snapnet"))
}

pub fn run_upgrade(a: UpgradeArgs) -> Result<(), String> {
    let binary = match a.snapnet.clone() {
        Some(b) => b,
        None => default_binary()?,
    };
    for &asked in &a.vnics {
        let n = asked.max(2).next_multiple_of(2);
        let dir =
            std::env::temp_dir().join(format!("snapnet-bench-upgrade-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let result = measure(&a, &binary, &dir, n);
        if let Some(keep) = &a.log {
            let _ = std::fs::copy(dir.join("snapnet.log"), keep);
        }
        let _ = std::fs::remove_dir_all(&dir);
        result?;
    }
    Ok(())
}

fn measure(a: &UpgradeArgs, binary: &Path, dir: &Path, n: usize) -> Result<(), String> {
    let mut daemon = start(binary, dir, n, a.engine_cpu)?;
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Arc::new(AtomicUsize::new(0));
    let flowing = Arc::new(AtomicBool::new(false));
    let guests = {
        let drive_with = Drive {
            sockets: (0..n).map(|i| dir.join(format!("vnic{i}.sock"))).collect(),
            // vNIC 2k and 2k + 1 send to each other.
            macs: (0..n).map(|i| (mac(i), mac(i ^ 1))).collect(),
            peers: (0..n).map(|i| i ^ 1).collect(),
            cpu: a.guest_cpu,
            measuring: measuring.clone(),
            stop: stop.clone(),
            epoch: epoch.clone(),
            flowing: flowing.clone(),
        };
        std::thread::spawn(move || drive(drive_with))
    };
    let settle = Duration::from_millis(a.settle_ms);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !flowing.load(Ordering::Relaxed) && !guests.is_finished() {
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("{n} vNICs: not every guest received a frame"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(settle);
    measuring.store(true, Ordering::Relaxed);
    // Epoch 0: the steady state's gaps, for comparison.
    std::thread::sleep(settle);
    let mut blackouts = Vec::with_capacity(a.upgrades);
    let mut engine_blackouts = Vec::new();
    let mut failure = None;
    for u in 0..a.upgrades {
        epoch.store(u + 1, Ordering::Relaxed);
        match daemon.call("daemon.upgrade", json!({})) {
            Ok(report) => {
                let ms = report["blackout_ms"].as_f64().unwrap_or(f64::NAN);
                blackouts.push(Duration::from_secs_f64(ms.max(0.0) / 1e3));
                if let Some(each) = report["vnic_blackouts_ms"].as_object() {
                    engine_blackouts.extend(
                        each.values()
                            .filter_map(Value::as_f64)
                            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3)),
                    );
                }
                if let Some(pid) = report["pid"].as_u64() {
                    daemon.pid = pid as u32;
                }
            }
            Err(e) => {
                failure = Some(format!("upgrade {u}: {e}"));
                break;
            }
        }
        std::thread::sleep(settle);
    }
    stop.store(true, Ordering::Relaxed);
    let seen = guests
        .join()
        .map_err(|_| "guest thread panicked".to_string())??;
    if let Some(f) = failure {
        return Err(f);
    }
    let out_of_order: u64 = seen.guests.iter().map(|g| g.out_of_order).sum();
    let frames: u64 = seen.guests.iter().map(|g| g.received).sum();
    let sent: u64 = seen.guests.iter().map(|g| g.sent).sum();
    let lost = sent.saturating_sub(frames);
    // Epoch 0 is the traffic before the first upgrade.
    let mut gaps: Vec<Duration> = seen.epoch_gaps.iter().skip(1).copied().collect();
    let mut daemon_gaps: Vec<Duration> = seen.epoch_daemon_gaps.iter().skip(1).copied().collect();
    let mut stalls: Vec<Duration> = seen.epoch_own_stalls.iter().skip(1).copied().collect();
    for (u, b) in blackouts.iter().enumerate() {
        let at = |v: &[Duration]| us(v.get(u).copied().unwrap_or_default());
        println!(
            "round test=upgrade vnics={n} upgrade={u} blackout_us={} largest_guest_gap_us={} largest_daemon_gap_us={} bench_stall_us={}",
            us(*b),
            at(&gaps),
            at(&daemon_gaps),
            at(&stalls)
        );
    }
    let steady = seen.epoch_gaps.first().copied().unwrap_or_default();
    blackouts.sort();
    engine_blackouts.sort();
    gaps.sort();
    daemon_gaps.sort();
    stalls.sort();
    let q = |v: &[Duration], x| us(quantile(v, x));
    println!(
        "result test=upgrade vnics={n} upgrades={} engine_blackout_p50_us={} engine_blackout_p99_us={} engine_blackout_max_us={} daemon_blackout_p50_us={} daemon_blackout_p99_us={} daemon_blackout_max_us={} guest_gap_p50_us={} guest_gap_p99_us={} guest_gap_max_us={} daemon_gap_p50_us={} daemon_gap_p99_us={} daemon_gap_max_us={} bench_stall_max_us={} steady_gap_max_us={} frames={frames} lost={lost} out_of_order={out_of_order}",
        blackouts.len(),
        q(&engine_blackouts, 0.5),
        q(&engine_blackouts, 0.99),
        q(&engine_blackouts, 1.0),
        q(&blackouts, 0.5),
        q(&blackouts, 0.99),
        q(&blackouts, 1.0),
        q(&gaps, 0.5),
        q(&gaps, 0.99),
        q(&gaps, 1.0),
        q(&daemon_gaps, 0.5),
        q(&daemon_gaps, 0.99),
        q(&daemon_gaps, 1.0),
        q(&stalls, 1.0),
        us(steady),
    );
    Ok(())
}
