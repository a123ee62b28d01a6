//! Guests for the hand-over benchmarks: one thread drives every guest with
//! snapnet's frontend, each sending sequence-numbered frames to a fixed
//! destination with a bounded window, and records what it received: frames
//! out of sequence (lost before, duplicated or reordered) and the largest
//! gap between two frames, for each guest and for each epoch (one upgrade
//! or move each).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};

use super::pingpong::pin;

/// Frames in flight per guest at most (it always has RX buffers).
const WINDOW: u64 = 16;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What one guest saw.
#[derive(Default)]
pub struct GuestRecord {
    pub sent: u64,
    pub received: u64,
    /// Out-of-sequence frames (lost before, duplicated or reordered).
    pub out_of_order: u64,
    pub largest_gap: Duration,
    /// The sequence number the next frame should carry.
    next: u64,
}

/// What the guests saw, once stopped and drained.
pub struct Seen {
    pub guests: Vec<GuestRecord>,
    /// Per epoch, the largest gap any guest saw (a gap counts in the epoch
    /// in which it ended).
    pub epoch_gaps: Vec<Duration>,
    /// The same, less the time this thread itself did not run within the
    /// gap (a pause between two looks at the clock longer than
    /// [`OWN_STALL`]): the part of a
    /// gap the daemon is answerable for, since a guest that is not polled
    /// sees nothing either.
    pub epoch_daemon_gaps: Vec<Duration>,
    /// Per epoch, the longest pause between two looks at the clock.
    pub epoch_own_stalls: Vec<Duration>,
}

/// A pause this long between two looks at the clock means the thread was
/// not running (it sends to or polls one guest in between: microseconds).
const OWN_STALL: Duration = Duration::from_millis(1);

/// Who each guest is and whom it sends to, and the flags the measuring
/// thread sets.
pub struct Drive {
    pub sockets: Vec<PathBuf>,
    /// Per guest: its source and destination MAC.
    pub macs: Vec<([u8; 6], [u8; 6])>,
    /// Per guest: the guest its frames reach (itself behind a reflector).
    pub peers: Vec<usize>,
    pub cpu: usize,
    /// Gaps count only while set (traffic has settled).
    pub measuring: Arc<AtomicBool>,
    /// Set: stop sending, collect what is in flight (2 s at most).
    pub stop: Arc<AtomicBool>,
    pub epoch: Arc<AtomicUsize>,
    /// Set once every guest has received a frame.
    pub flowing: Arc<AtomicBool>,
}

fn frame(macs: ([u8; 6], [u8; 6]), seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..6].copy_from_slice(&macs.1);
    f[6..12].copy_from_slice(&macs.0);
    f[12..14].copy_from_slice(&super::ETHERTYPE.to_be_bytes());
    f[14..22].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Drives every guest from this thread until `stop`.
pub fn drive(d: Drive) -> Result<Seen, String> {
    pin(d.cpu)?;
    let cfg = FrontendConfig::default();
    let mut fes = d
        .sockets
        .iter()
        .map(|s| Frontend::connect(s, &cfg, TIMEOUT).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut records: Vec<GuestRecord> = fes.iter().map(|_| GuestRecord::default()).collect();
    let mut last_rx: Vec<Option<Instant>> = vec![None; fes.len()];
    let mut epoch_gaps = vec![Duration::ZERO];
    let mut epoch_daemon_gaps = vec![Duration::ZERO];
    let mut epoch_own_stalls = vec![Duration::ZERO];
    // This thread's stalls so far, and their total at each guest's last
    // frame.
    let mut stalled = Duration::ZERO;
    let mut stalled_at_rx = vec![Duration::ZERO; fes.len()];
    let mut last_tick = Instant::now();
    let hdr = VirtioNetHdr::default();
    let mut draining_since = None;
    loop {
        if d.stop.load(Ordering::Relaxed) && draining_since.is_none() {
            draining_since = Some(Instant::now());
        }
        let epoch = d.epoch.load(Ordering::Relaxed);
        if epoch >= epoch_gaps.len() {
            epoch_gaps.resize(epoch + 1, Duration::ZERO);
            epoch_daemon_gaps.resize(epoch + 1, Duration::ZERO);
            epoch_own_stalls.resize(epoch + 1, Duration::ZERO);
        }
        let measuring = d.measuring.load(Ordering::Relaxed);
        // Time since the last look at the clock; a long one is a stall of
        // this thread, counted before the next frame's gap is judged.
        let mut tick = |stalled: &mut Duration| {
            let now = Instant::now();
            let since = now - last_tick;
            last_tick = now;
            if since > OWN_STALL {
                *stalled += since;
            }
            if measuring {
                epoch_own_stalls[epoch] = epoch_own_stalls[epoch].max(since);
            }
            now
        };
        tick(&mut stalled);
        for i in 0..fes.len() {
            // The peer receives only this guest's frames.
            let delivered = records[d.peers[i]].received;
            let r = &mut records[i];
            while draining_since.is_none() && r.sent - delivered < WINDOW {
                if fes[i].send(0, &[&frame(d.macs[i], r.sent)], &hdr) == 0 {
                    break;
                }
                r.sent += 1;
            }
        }
        for (i, (fe, r)) in fes.iter_mut().zip(&mut records).enumerate() {
            let now = tick(&mut stalled);
            let n = fe.recv(0, |_, p| {
                let seq = u64::from_be_bytes(p[14..22].try_into().unwrap_or_default());
                // One lost frame counts once, not for every frame after it.
                if seq != r.next {
                    r.out_of_order += 1;
                }
                r.next = seq.wrapping_add(1);
                r.received += 1;
            });
            if n > 0 {
                if let (Some(t), true) = (last_rx[i], measuring) {
                    r.largest_gap = r.largest_gap.max(now - t);
                    epoch_gaps[epoch] = epoch_gaps[epoch].max(now - t);
                    let daemon = (now - t).saturating_sub(stalled - stalled_at_rx[i]);
                    epoch_daemon_gaps[epoch] = epoch_daemon_gaps[epoch].max(daemon);
                }
                last_rx[i] = Some(now);
                stalled_at_rx[i] = stalled;
            }
        }
        if !d.flowing.load(Ordering::Relaxed) && records.iter().all(|r| r.received > 0) {
            d.flowing.store(true, Ordering::Relaxed);
        }
        let sent: u64 = records.iter().map(|r| r.sent).sum();
        let received: u64 = records.iter().map(|r| r.received).sum();
        let in_flight = sent.saturating_sub(received);
        if let Some(t) = draining_since {
            if in_flight == 0 || t.elapsed() > Duration::from_secs(2) {
                return Ok(Seen {
                    guests: records,
                    epoch_gaps,
                    epoch_daemon_gaps,
                    epoch_own_stalls,
                });
            }
        }
    }
}

/// The `q` quantile of sorted values (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Microseconds, for result lines.
pub fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}
