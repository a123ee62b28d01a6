//! The blackout of a vNIC hand-over, measured in the in-process rehearsal
//! of an upgrade (`snapnet::upgrade::rehearsal`): N vNICs with one queue
//! pair each carry sequence-numbered frames from snapnet's own frontend,
//! reflected back to them, while every vNIC in turn moves from the "old"
//! side to the "new" one. Per vNIC: the blackout (its handler's pause to
//! the new side serving its stream) and the largest gap between two frames
//! its guest received; and frames lost, duplicated or reordered (must be 0).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use snapnet::frontend::{Frontend, FrontendConfig, VirtioNetHdr};
use snapnet::upgrade::rehearsal::{mac_of, Rehearsal};

use super::pingpong::pin;

#[derive(Args, Debug)]
pub struct HandoverArgs {
    /// vNIC counts to measure (one queue pair each).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    vnics: Vec<usize>,
    /// Rounds per count, each with fresh vNICs and guests.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// CPUs of the old and the new side's engine thread.
    #[arg(long, value_delimiter = ',', default_value = "1,1")]
    cpus: Vec<usize>,
    /// CPU of the guests' thread.
    #[arg(long, default_value_t = 0)]
    guest_cpu: usize,
}

/// Frames in flight per guest at most (it always has RX buffers).
const WINDOW: u64 = 16;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What one guest saw.
#[derive(Default)]
struct GuestRecord {
    sent: u64,
    received: u64,
    /// Out-of-sequence frames (lost before, duplicated or reordered).
    out_of_order: u64,
    largest_gap: Duration,
}

fn frame(vnic: usize, seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&[2, 0, 0, 0, 0xff, 0xff]);
    f[6..12].copy_from_slice(&mac_of(vnic).0);
    f[12..14].copy_from_slice(&super::ETHERTYPE.to_be_bytes());
    f[14..22].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Drives every guest from one thread until `stop`, then collects what is
/// still in flight.
fn guests(
    sockets: Vec<PathBuf>,
    cpu: usize,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Vec<GuestRecord>, String> {
    pin(cpu)?;
    let cfg = FrontendConfig::default();
    let mut fes = sockets
        .iter()
        .map(|s| Frontend::connect(s, &cfg, TIMEOUT).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut records: Vec<GuestRecord> = fes.iter().map(|_| GuestRecord::default()).collect();
    let mut last_rx: Vec<Option<Instant>> = vec![None; fes.len()];
    let hdr = VirtioNetHdr::default();
    let mut draining_since = None;
    loop {
        if stop.load(Ordering::Relaxed) && draining_since.is_none() {
            draining_since = Some(Instant::now());
        }
        let mut in_flight = 0;
        for (i, (fe, r)) in fes.iter_mut().zip(&mut records).enumerate() {
            while draining_since.is_none() && r.sent - r.received < WINDOW {
                if fe.send(0, &[&frame(i, r.sent)], &hdr) == 0 {
                    break;
                }
                r.sent += 1;
            }
            let now = Instant::now();
            let n = fe.recv(0, |_, p| {
                let seq = u64::from_be_bytes(p[14..22].try_into().unwrap_or_default());
                if seq != r.received {
                    r.out_of_order += 1;
                }
                r.received += 1;
            });
            if n > 0 {
                if let (Some(t), true) = (last_rx[i], measuring.load(Ordering::Relaxed)) {
                    r.largest_gap = r.largest_gap.max(now - t);
                }
                last_rx[i] = Some(now);
            }
            in_flight += r.sent - r.received;
        }
        if let Some(t) = draining_since {
            if in_flight == 0 || t.elapsed() > Duration::from_secs(2) {
                return Ok(records);
            }
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

pub fn run_handover(a: HandoverArgs) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("snapnet-bench-handover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for &n in &a.vnics {
        let mut blackouts = Vec::new();
        let mut engine_blackouts = Vec::new();
        let mut gaps = Vec::new();
        let (mut lost, mut out_of_order, mut frames) = (0, 0, 0);
        for round in 0..a.rounds {
            let mut r = Rehearsal::new(n, 1, &dir, &a.cpus).map_err(|e| e.to_string())?;
            let measuring = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let guests = {
                let sockets = r.vnics.iter().map(|v| v.socket.clone()).collect();
                let (cpu, measuring, stop) = (a.guest_cpu, measuring.clone(), stop.clone());
                std::thread::spawn(move || guests(sockets, cpu, measuring, stop))
            };
            // Brownout for all, then traffic settles, then the blackouts.
            for i in 0..n {
                r.prepare(i).map_err(|e| e.to_string())?;
            }
            std::thread::sleep(Duration::from_millis(300));
            measuring.store(true, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
            let mut round_blackouts = Vec::new();
            for i in 0..n {
                let timing = r.move_vnic(i).map_err(|e| e.to_string())?;
                round_blackouts.push(timing.handover);
                engine_blackouts.push(timing.engines);
            }
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, Ordering::Relaxed);
            let records = guests
                .join()
                .map_err(|_| "guest thread panicked".to_string())??;
            r.stop();
            let round_lost: u64 = records.iter().map(|g| g.sent - g.received).sum();
            let round_ooo: u64 = records.iter().map(|g| g.out_of_order).sum();
            let round_frames: u64 = records.iter().map(|g| g.received).sum();
            let round_gap = records
                .iter()
                .map(|g| g.largest_gap)
                .max()
                .unwrap_or_default();
            round_blackouts.sort();
            println!(
                "round test=handover vnics={n} round={round} blackout_p50_us={} blackout_max_us={} largest_gap_us={} frames={round_frames} lost={round_lost} out_of_order={round_ooo}",
                us(quantile(&round_blackouts, 0.5)),
                us(quantile(&round_blackouts, 1.0)),
                us(round_gap)
            );
            blackouts.extend(round_blackouts);
            gaps.extend(records.iter().map(|g| g.largest_gap));
            lost += round_lost;
            out_of_order += round_ooo;
            frames += round_frames;
        }
        blackouts.sort();
        engine_blackouts.sort();
        gaps.sort();
        println!(
            "result test=handover vnics={n} rounds={} moves={} blackout_p50_us={} blackout_p99_us={} blackout_max_us={} engine_blackout_p50_us={} engine_blackout_p99_us={} engine_blackout_max_us={} guest_gap_p50_us={} guest_gap_max_us={} frames={frames} lost={lost} out_of_order={out_of_order}",
            a.rounds,
            blackouts.len(),
            us(quantile(&blackouts, 0.5)),
            us(quantile(&blackouts, 0.99)),
            us(quantile(&blackouts, 1.0)),
            us(quantile(&engine_blackouts, 0.5)),
            us(quantile(&engine_blackouts, 0.99)),
            us(quantile(&engine_blackouts, 1.0)),
            us(quantile(&gaps, 0.5)),
            us(quantile(&gaps, 1.0)),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
