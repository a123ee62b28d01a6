//! The blackout of a vNIC hand-over, measured in the in-process rehearsal
//! of an upgrade (`snapnet::upgrade::rehearsal`): N vNICs with one queue
//! pair each carry sequence-numbered frames from snapnet's own frontend,
//! reflected back to them, while every vNIC in turn moves from the "old"
//! side to the "new" one. Per vNIC: the blackout (its handler's pause to
//! the new side serving its stream) and the largest gap between two frames
//! its guest received; and frames lost, duplicated or reordered (must be 0).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use snapnet::upgrade::rehearsal::{mac_of, Rehearsal};

use super::guests::{drive, quantile, us, Drive};

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
                // The reflector sends every frame back to its sender.
                let drive_with = Drive {
                    sockets: r.vnics.iter().map(|v| v.socket.clone()).collect(),
                    macs: (0..n)
                        .map(|i| (mac_of(i).0, [2, 0, 0, 0, 0xff, 0xff]))
                        .collect(),
                    peers: (0..n).collect(),
                    cpu: a.guest_cpu,
                    measuring: measuring.clone(),
                    stop: stop.clone(),
                    epoch: Arc::new(AtomicUsize::new(0)),
                    flowing: Arc::new(AtomicBool::new(false)),
                };
                std::thread::spawn(move || drive(drive_with))
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
                .map_err(|_| "guest thread panicked".to_string())??
                .guests;
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
