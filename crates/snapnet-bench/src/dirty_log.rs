//! What a live migration's dirty-page logging costs the data path: a
//! steady vNIC pair's rate with logging off and on (both guests share a
//! log and ack VHOST_F_LOG_ALL, as QEMU does for the guest it migrates),
//! rounds alternating the two phases, medians and the median of each
//! round's own ratio.

use std::path::PathBuf;

use clap::Args;
use snapnet_frontend::FrontendConfig;

use super::isolation::{connect, median, steady_rate};
use super::{build_frame, kv};

#[derive(Args, Debug)]
pub struct DirtyLogArgs {
    /// Socket of the sending guest.
    #[arg(long)]
    tx: PathBuf,
    /// Socket of the receiving guest.
    #[arg(long)]
    rx: PathBuf,
    /// Frame sizes, one set of rounds each.
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    sizes: Vec<usize>,
    /// Measured seconds per phase (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds of (logging off, logging on) per size.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Do not negotiate VIRTIO_NET_F_MRG_RXBUF.
    #[arg(long)]
    no_mrg: bool,
}

pub fn run_dirty_log(a: DirtyLogArgs) -> Result<(), String> {
    for &size in &a.sizes {
        let cfg = FrontendConfig {
            mrg_rxbuf: !a.no_mrg,
            tx_buf_len: (size as u32 + 12).next_multiple_of(64).max(2048),
            ..FrontendConfig::default()
        };
        let mut tx = connect(&a.tx, &cfg)?;
        let mut rx = connect(&a.rx, &cfg)?;
        tx.prepare_blast(0, &build_frame(size, rx.mac(), tx.mac()));
        let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let mut marked = 0;
        for round in 0..a.rounds {
            let (r_off, _) = steady_rate(&mut tx, &mut rx, a.seconds);
            let logs = [
                tx.start_dirty_log().map_err(|e| e.to_string())?,
                rx.start_dirty_log().map_err(|e| e.to_string())?,
            ];
            let (r_on, _) = steady_rate(&mut tx, &mut rx, a.seconds);
            tx.stop_dirty_log().map_err(|e| e.to_string())?;
            rx.stop_dirty_log().map_err(|e| e.to_string())?;
            marked = logs.iter().map(|l| l.dirty_pages().len()).sum();
            for (phase, mpps) in [("off", r_off), ("on", r_on)] {
                println!(
                    "result {}",
                    kv(&[
                        ("test", "dirty-log".into()),
                        ("size", size.to_string()),
                        ("phase", phase.into()),
                        ("round", round.to_string()),
                        ("mpps", format!("{mpps:.4}")),
                    ])
                );
            }
            off.push(r_off);
            on.push(r_on);
            ratios.push(if r_off > 0.0 { r_on / r_off } else { 0.0 });
        }
        let (m_off, m_on, ratio) = (median(&mut off), median(&mut on), median(&mut ratios));
        println!(
            "result {}",
            kv(&[
                ("test", "dirty-log".into()),
                ("size", size.to_string()),
                ("rounds", a.rounds.to_string()),
                ("off_mpps_median", format!("{m_off:.4}")),
                ("on_mpps_median", format!("{m_on:.4}")),
                ("round_ratio_median", format!("{ratio:.4}")),
                ("pages_marked_last_round", marked.to_string()),
            ])
        );
        println!(
            "{size} B: {m_off:.3} Mpps with logging off, {m_on:.3} Mpps with it on: \
             {:.1} % (median of {} rounds' ratios; {marked} pages marked in the last round)",
            ratio * 100.0,
            a.rounds
        );
        tx.shutdown().map_err(|e| e.to_string())?;
        rx.shutdown().map_err(|e| e.to_string())?;
    }
    Ok(())
}
