//! Tenant isolation of the frame pool, measured: the rate of a steady vNIC
//! pair while guests that post no RX buffers (stuck, as a paused VM is) sit
//! idle, and while other vNICs flood them. Rounds alternate the two phases (A B A
//! B ...), as this machine's vCPU placement flips every few minutes, and the
//! medians and the median of each round's own ratio are printed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

use super::{build_frame, kv, sum_stats, CpuMeter, WARMUP};

#[derive(Args, Debug)]
pub struct IsolationArgs {
    /// Socket of the steady pair's sender.
    #[arg(long)]
    steady_tx: PathBuf,
    /// Socket of the steady pair's receiver.
    #[arg(long)]
    steady_rx: PathBuf,
    /// Sockets of the vNICs that flood the stuck guests (one thread sends
    /// for all of them).
    #[arg(long, value_delimiter = ',', required = true)]
    flood: Vec<PathBuf>,
    /// Stuck guests, as SOCKET:QUEUE_PAIRS: connected for the whole run
    /// with no RX buffer posted, and never one taken (so both phases poll
    /// the same engines; only the flood to them differs).
    #[arg(long, value_delimiter = ',', required = true)]
    stuck: Vec<String>,
    /// Frame size of the steady pair and of the flood.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Packets per second each flooder sends (0: as fast as it can). Paced
    /// in 1 ms steps by the flood thread itself, so it sleeps between them
    /// and leaves CPU 0 to the steady pair's frontend; polling a full ring
    /// instead would measure that thread's CPU share, not the daemon.
    #[arg(long, default_value_t = 20_000)]
    flood_pps: u64,
    /// Measured seconds per phase (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds of (alone, with stuck guests).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// UDP flows to the stuck guests: many source ports, so a guest with many
/// queue pairs gets frames on every queue.
const FLOWS: u16 = 256;

pub(super) fn connect(path: &Path, cfg: &FrontendConfig) -> Result<Frontend, String> {
    Frontend::connect(path, cfg, Duration::from_secs(10))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn flood_frame(size: usize, dst: [u8; 6], src: [u8; 6], sport: u16) -> Vec<u8> {
    let mut f = build_frame(size.max(42), dst, src);
    let ip_len = (f.len() - 14) as u16;
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14..34].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f[40..42].copy_from_slice(&[0, 0]);
    f
}

/// Sends the flood from every flooder until `stop`, in its own thread,
/// `pps` frames a second each (0: unpaced).
fn start_flood(
    mut floods: Vec<Frontend>,
    frames: Vec<Vec<Vec<u8>>>,
    pps: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Frontend>> {
    const STEP: Duration = Duration::from_millis(1);
    std::thread::spawn(move || {
        let hdr = VirtioNetHdr::default();
        let per_step = usize::try_from(pps / 1000).unwrap_or(usize::MAX).max(1);
        let mut at = 0;
        let mut next_step = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let mut sent = 0;
            for (f, frames) in floods.iter_mut().zip(&frames) {
                let mut left = if pps == 0 { 32 } else { per_step };
                while left > 0 {
                    let n = left.min(32);
                    let batch: Vec<&[u8]> = frames[at..at + n].iter().map(Vec::as_slice).collect();
                    let took = f.send(0, &batch, &hdr);
                    f.recv_count(0);
                    sent += took;
                    if took < n {
                        break;
                    }
                    left -= n;
                }
            }
            at = (at + 32) % (frames[0].len() - 32);
            if pps > 0 {
                next_step += STEP;
                let now = Instant::now();
                if next_step > now {
                    std::thread::sleep(next_step - now);
                } else {
                    next_step = now;
                }
            } else if sent == 0 {
                // Held back (the flooders' egress limit, or the stuck
                // guests' full links): leave the CPU to the steady pair.
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        floods
    })
}

/// The steady pair's received rate (Mpps) over `seconds`, and the bench
/// thread's CPU share.
pub(super) fn steady_rate(tx: &mut Frontend, rx: &mut Frontend, seconds: f64) -> (f64, f64) {
    let warm_end = Instant::now() + WARMUP;
    let step = |tx: &mut Frontend, rx: &mut Frontend| {
        tx.blast(0, 32);
        for q in 0..rx.queue_pairs() {
            rx.recv_count(q);
        }
    };
    while Instant::now() < warm_end {
        step(tx, rx);
    }
    let rx0 = sum_stats(rx).rx_packets;
    let cpu = CpuMeter::start();
    let start = Instant::now();
    let dur = Duration::from_secs_f64(seconds);
    while start.elapsed() < dur {
        for _ in 0..64 {
            step(tx, rx);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let got = sum_stats(rx).rx_packets - rx0;
    (got as f64 / secs / 1e6, cpu.finish().0)
}

/// One phase of one round, as a `result` line.
fn print_phase(phase: &str, round: usize, mpps: f64, cpu: f64) {
    println!(
        "result {}",
        kv(&[
            ("test", "isolation".into()),
            ("phase", phase.into()),
            ("round", round.to_string()),
            ("mpps", format!("{mpps:.4}")),
            ("cpu_share", format!("{cpu:.3}")),
        ])
    );
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn run_isolation(a: IsolationArgs) -> Result<(), String> {
    let cfg = FrontendConfig::default();
    let mut tx = connect(&a.steady_tx, &cfg)?;
    let mut rx = connect(&a.steady_rx, &cfg)?;
    tx.prepare_blast(0, &build_frame(a.size, rx.mac(), tx.mac()));
    let stuck: Vec<(PathBuf, u16)> = a
        .stuck
        .iter()
        .map(|s| {
            let (p, q) = s.rsplit_once(':').unwrap_or((s, "1"));
            let q = q.parse().map_err(|_| format!("bad queue pairs in {s:?}"))?;
            Ok((PathBuf::from(p), q))
        })
        .collect::<Result<_, String>>()?;
    // Guests that never post an RX buffer, and the flood to them.
    let guests = stuck
        .iter()
        .map(|(p, qps)| {
            let c = FrontendConfig {
                queue_pairs: *qps,
                raw_reserve: cfg.queue_size,
                ..cfg.clone()
            };
            connect(p, &c)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let macs: Vec<[u8; 6]> = guests.iter().map(Frontend::mac).collect();
    let mut floods = a
        .flood
        .iter()
        .map(|p| connect(p, &cfg))
        .collect::<Result<Vec<_>, _>>()?;
    let frames: Vec<Vec<Vec<u8>>> = floods
        .iter()
        .map(|f| {
            (0..FLOWS)
                .map(|i| {
                    let dst = macs[usize::from(i) % macs.len()];
                    flood_frame(a.size, dst, f.mac(), 1000 + i)
                })
                .collect()
        })
        .collect();
    let (mut alone, mut with_stuck) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let (mpps, cpu) = steady_rate(&mut tx, &mut rx, a.seconds);
        print_phase("alone", round, mpps, cpu);
        alone.push(mpps);

        let stop = Arc::new(AtomicBool::new(false));
        let flooder = start_flood(
            std::mem::take(&mut floods),
            frames.clone(),
            a.flood_pps,
            stop.clone(),
        );
        let (mpps, cpu) = steady_rate(&mut tx, &mut rx, a.seconds);
        stop.store(true, Ordering::Relaxed);
        floods = flooder.join().map_err(|_| "flood thread panicked")?;
        print_phase("stuck", round, mpps, cpu);
        with_stuck.push(mpps);
    }
    // Each round's two phases ran back to back, in one vCPU placement (the
    // placement flips every few minutes and halves or doubles the rate), so
    // the median of the rounds' own ratios is what compares like with like.
    let mut ratios: Vec<f64> = alone
        .iter()
        .zip(&with_stuck)
        .map(|(a, s)| if *a > 0.0 { s / a } else { 0.0 })
        .collect();
    let ratio = median(&mut ratios);
    let (m_alone, m_stuck) = (median(&mut alone), median(&mut with_stuck));
    println!(
        "result {}",
        kv(&[
            ("test", "isolation".into()),
            ("rounds", a.rounds.to_string()),
            ("alone_mpps_median", format!("{m_alone:.4}")),
            ("stuck_mpps_median", format!("{m_stuck:.4}")),
            ("round_ratio_median", format!("{ratio:.4}")),
        ])
    );
    println!(
        "steady pair: {m_alone:.3} Mpps alone, {m_stuck:.3} Mpps with stuck guests flooded; \
         with stuck guests flooded it keeps {:.1} % of its rate (median of {} rounds' ratios)",
        ratio * 100.0,
        a.rounds
    );
    Ok(())
}
