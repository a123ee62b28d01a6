//! The switch engine's own cost per frame, in process on one thread: two
//! ports, a population of frames per port looping A -> B and B -> A through
//! `SwitchEngine::poll`, as the vNIC engines feed it. No guest, no second
//! core: the figure moves with the switch's code, not with where the host
//! placed the vCPUs, so a change to the switch is judged here first (the
//! data-path benchmark, `scripts/bench-vs-testpmd.sh`, then says what it is
//! worth end to end).

use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use snapnet::engine::Engine;
use snapnet::packet::{link, FrameCache, FramePool, LinkRx, LinkTx, PoolConfig};
use snapnet::switch::{PortNetwork, SwitchPort};
use snapnet_wire::{EthernetFrame, MacAddr};

#[derive(Args, Debug)]
pub struct SwitchCostArgs {
    /// Frames in flight per port (their headers are what the switch reads;
    /// more frames than L1 holds, as between real engines).
    #[arg(long, default_value_t = 512)]
    frames: usize,
    /// Frame length in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// The switch's poll budget (the workers' batch).
    #[arg(long, default_value_t = 64)]
    budget: usize,
    /// Seconds per sample.
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Samples; the median is reported.
    #[arg(long, default_value_t = 7)]
    samples: usize,
    /// The CPU to run on.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
}

/// One side of the loop: the vNIC engine's ends of a port's links.
struct Side {
    to_switch: LinkTx,
    from_switch: LinkRx,
}

const MACS: [MacAddr; 2] = [
    MacAddr([0x52, 0x54, 0, 0x5a, 0, 1]),
    MacAddr([0x52, 0x54, 0, 0x5a, 0, 2]),
];
/// Link depth between the engines (the daemon's default).
const LINK_CAPACITY: usize = 1024;

pub fn run_switch_cost(a: SwitchCostArgs) -> Result<(), String> {
    crate::pingpong::pin(a.cpu)?;
    if a.frames > LINK_CAPACITY || a.frames == 0 || a.size < 14 || a.size > 1514 {
        return Err("--frames must be 1..=1024 and --size 14..=1514".into());
    }
    let config = PoolConfig {
        frames: (a.frames * 2 + 1024) as u32,
        ..PoolConfig::default()
    };
    let pool = Arc::new(FramePool::new(&config).map_err(|e| e.to_string())?);
    let mut cache = pool.cache();
    let (mut sw, _handle) = snapnet::switch::shards::single(&pool).map_err(|e| e.to_string())?;
    let mut sides = Vec::with_capacity(2);
    for (i, mac) in MACS.iter().enumerate() {
        let (to_switch, input) = link(LINK_CAPACITY).map_err(|e| e.to_string())?;
        let (output, from_switch) = link(LINK_CAPACITY).map_err(|e| e.to_string())?;
        let port = SwitchPort::new(
            &format!("p{i}"),
            PortNetwork::Only(0),
            vec![input],
            vec![output],
        );
        sw.add_port(port, &[*mac]);
        sides.push(Side {
            to_switch,
            from_switch,
        });
    }
    for (i, side) in sides.iter_mut().enumerate() {
        for _ in 0..a.frames {
            let frame = ethernet_frame(&mut cache, &pool, MACS[1 - i], MACS[i], a.size)?;
            side.to_switch
                .push(frame)
                .map_err(|_| "link full while priming".to_string())?;
        }
    }
    let Ok(mut sides) = <[Side; 2]>::try_from(sides) else {
        return Err("two ports".into());
    };
    let mut per_frame = Vec::new();
    for _ in 0..a.samples {
        let (frames, secs) = sample(&mut sw, &mut sides, a.budget, a.seconds)?;
        per_frame.push(secs * 1e9 / frames as f64);
    }
    per_frame.sort_by(f64::total_cmp);
    let median = per_frame[per_frame.len() / 2];
    println!(
        "result switch_ns_per_frame={median:.2} mframes_per_s={:.2} samples={} frames={} size={} budget={}",
        1e3 / median,
        a.samples,
        a.frames,
        a.size,
        a.budget
    );
    Ok(())
}

/// Loops the frames for `seconds`: each poll routes what waits, and what
/// came out of a port goes back in on the other side (the same addresses,
/// as the other direction's frames are never touched). Returns the frames
/// switched and the time taken.
fn sample(
    sw: &mut snapnet::switch::SwitchEngine,
    sides: &mut [Side; 2],
    budget: usize,
    seconds: f64,
) -> Result<(u64, f64), String> {
    let start = Instant::now();
    let mut frames = 0u64;
    loop {
        for _ in 0..64 {
            frames += sw.poll(budget) as u64;
            let [a, b] = sides;
            send_back(a, b)?;
            send_back(b, a)?;
        }
        let secs = start.elapsed().as_secs_f64();
        if secs >= seconds {
            if frames == 0 {
                return Err("the switch forwarded nothing".into());
            }
            return Ok((frames, secs));
        }
    }
}

/// What came out of `out`'s port came from the other: it goes in again there.
fn send_back(out: &mut Side, other: &mut Side) -> Result<(), String> {
    while let Some(f) = out.from_switch.pop() {
        other
            .to_switch
            .push(f)
            .map_err(|_| "link full while looping".to_string())?;
    }
    Ok(())
}

fn ethernet_frame(
    cache: &mut FrameCache,
    pool: &FramePool,
    dst: MacAddr,
    src: MacAddr,
    len: usize,
) -> Result<snapnet::packet::FrameHandle, String> {
    let mut f = cache.alloc(len).ok_or("frame pool empty")?;
    f.len = len as u32;
    let off = usize::from(f.offset);
    let ethertype = snapnet_wire::ip::ETHERTYPE_IPV4;
    EthernetFrame::emit(
        &mut pool.frame_mut(&mut f)[off..off + len],
        dst,
        src,
        ethertype,
    )
    .ok_or("frame shorter than an Ethernet header")?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_runs_and_refuses_bad_arguments() {
        let args = |frames, size| SwitchCostArgs {
            frames,
            size,
            budget: 64,
            seconds: 0.01,
            samples: 1,
            cpu: 0,
        };
        run_switch_cost(args(64, 64)).unwrap();
        assert!(run_switch_cost(args(0, 64)).is_err());
        assert!(run_switch_cost(args(64, 10)).is_err());
        assert!(run_switch_cost(args(LINK_CAPACITY + 1, 64)).is_err());
    }
}
