//! Cache-line ping-pong between two CPUs: how long one line takes to move
//! from one core to the other. On these VMs the two vCPUs flip between a
//! "near" (~100 ns) and a "far" (~400–800 ns) host placement, which moves
//! every cross-core packet rate; benchmarks record it before and after each
//! round so rounds can be told apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;

#[derive(Args, Debug)]
pub struct PingPongArgs {
    /// The CPU of the first thread.
    #[arg(long, default_value_t = 0)]
    cpu_a: usize,
    /// The CPU of the second thread.
    #[arg(long, default_value_t = 1)]
    cpu_b: usize,
    /// Round trips per sample.
    #[arg(long, default_value_t = 20_000)]
    trips: u64,
    /// Samples; the median is reported.
    #[arg(long, default_value_t = 7)]
    samples: usize,
}

/// One cache line, alone on it, so only the counter moves between cores.
#[repr(align(128))]
struct Line(AtomicU64);

pub(crate) fn pin(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is checked against the set's capacity by the libc macro.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(format!(
            "cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Nanoseconds for one one-way move of a cache line (half a round trip).
fn sample(line: &Arc<Line>, trips: u64, cpu_b: usize) -> Result<f64, String> {
    line.0.store(0, Ordering::SeqCst);
    let peer = line.clone();
    let responder = std::thread::spawn(move || -> Result<(), String> {
        pin(cpu_b)?;
        let mut expect = 1;
        while expect < 2 * trips {
            if peer.0.load(Ordering::Acquire) == expect {
                peer.0.store(expect + 1, Ordering::Release);
                expect += 2;
            }
            std::hint::spin_loop();
        }
        Ok(())
    });
    let t0 = Instant::now();
    let mut next = 0;
    while next < 2 * trips {
        if line.0.load(Ordering::Acquire) == next {
            line.0.store(next + 1, Ordering::Release);
            next += 2;
        }
        std::hint::spin_loop();
    }
    let ns = t0.elapsed().as_nanos() as f64;
    responder.join().map_err(|_| "responder panicked")??;
    Ok(ns / (2 * trips) as f64)
}

pub fn run_pingpong(a: PingPongArgs) -> Result<(), String> {
    pin(a.cpu_a)?;
    let line = Arc::new(Line(AtomicU64::new(0)));
    let mut ns = Vec::with_capacity(a.samples);
    for _ in 0..a.samples.max(1) {
        ns.push(sample(&line, a.trips.max(1), a.cpu_b)?);
    }
    ns.sort_by(f64::total_cmp);
    let median = ns[ns.len() / 2];
    let placement = if median < 250.0 { "near" } else { "far" };
    println!(
        "result mode=pingpong cpu_a={} cpu_b={} one_way_ns={median:.0} placement={placement}",
        a.cpu_a, a.cpu_b
    );
    println!(
        "cache line CPU {} <-> CPU {}: {median:.0} ns one way ({placement})",
        a.cpu_a, a.cpu_b
    );
    Ok(())
}
