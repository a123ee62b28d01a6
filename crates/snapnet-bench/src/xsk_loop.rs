//! Bare AF_XDP loops, the reference for the uplink benchmark: what one
//! thread gets through an AF_XDP socket on this interface with nothing else
//! to do. They use snapnet's own socket layer and frame pool, so they measure
//! the kernel path, not a different library.

use std::time::{Duration, Instant};

use clap::Args;
use snapnet::packet::{FramePool, PoolConfig, UmemLoans};
use snapnet::uplink::xsk::{BindMode, RingSizes, UmemArea, XskSocket};
use snapnet::uplink::{UplinkProgram, XdpMode};
use snapnet_wire::MacAddr;

const WARMUP: Duration = Duration::from_millis(500);
/// Frames kept circulating between the loop and the kernel.
const IN_FLIGHT: usize = 2048;

#[derive(Args, Debug)]
pub struct XskTxArgs {
    /// Interface to send on (in this network namespace).
    #[arg(long)]
    interface: String,
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// Destination MAC of the generated frames.
    #[arg(long)]
    dst_mac: String,
    #[arg(long, default_value = "02:00:00:00:00:99")]
    src_mac: String,
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measurement time in seconds (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

#[derive(Args, Debug)]
pub struct XskRxArgs {
    /// Interface to receive on (in this network namespace).
    #[arg(long)]
    interface: String,
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// Frames to this MAC are redirected to the socket (snapnet's XDP program).
    #[arg(long)]
    mac: String,
    /// Measurement time in seconds (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad interface {name:?}"))?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(format!("no interface {name}"))
    } else {
        Ok(i)
    }
}

fn open(interface: &str, queue: u32, pool: &FramePool) -> Result<XskSocket, String> {
    let (base, len, chunk_size) = pool.umem_region();
    XskSocket::open(
        ifindex(interface)?,
        queue,
        UmemArea {
            base,
            len,
            chunk_size,
        },
        RingSizes::default(),
        BindMode::Auto,
    )
    .map_err(|e| e.to_string())
}

pub fn run_xsk_tx(a: XskTxArgs) -> Result<(), String> {
    let dst: MacAddr = a.dst_mac.parse().map_err(|e| format!("--dst-mac: {e}"))?;
    let src: MacAddr = a.src_mac.parse().map_err(|e| format!("--src-mac: {e}"))?;
    if !(60..=1514).contains(&a.size) {
        return Err("--size must be in 60..=1514".into());
    }
    let pool = FramePool::new(&PoolConfig::default()).map_err(|e| e.to_string())?;
    let mut cache = pool.cache();
    let mut loans = UmemLoans::new(&pool);
    let mut xsk = open(&a.interface, a.queue, &pool)?;
    let mut free = Vec::with_capacity(IN_FLIGHT);
    for i in 0..IN_FLIGHT {
        let mut f = cache.alloc(a.size).ok_or("frame pool empty")?;
        f.len = a.size as u32;
        let off = usize::from(f.offset);
        let b = &mut pool.frame_mut(&mut f)[off..off + a.size];
        b.fill(0);
        b[0..6].copy_from_slice(&dst.0);
        b[6..12].copy_from_slice(&src.0);
        b[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        b[14..18].copy_from_slice(&(i as u32).to_be_bytes());
        free.push(loans.lend(f).map_err(|_| "large frame")?);
    }
    let len = a.size as u32;
    let step = || {
        while let Some(addr) = free.pop() {
            if xsk
                .tx
                .push(libc::xdp_desc {
                    addr,
                    len,
                    options: 0,
                })
                .is_err()
            {
                free.push(addr);
                break;
            }
        }
        xsk.tx.commit();
        xsk.kick_tx();
        let mut n = 0;
        while let Some(addr) = xsk.completion.pop() {
            free.push(addr);
            n += 1;
        }
        xsk.completion.release();
        n
    };
    let (count, secs) = measure(a.seconds, step);
    let mpps = count as f64 / secs / 1e6;
    println!(
        "result mode=xsk-tx size={} seconds={secs:.3} sent={count} tx_mpps={mpps:.4}",
        a.size
    );
    println!(
        "xsk-tx: {mpps:.3} Mpps of {} B frames on {}",
        a.size, a.interface
    );
    Ok(())
}

pub fn run_xsk_rx(a: XskRxArgs) -> Result<(), String> {
    let mac: MacAddr = a.mac.parse().map_err(|e| format!("--mac: {e}"))?;
    let pool = FramePool::new(&PoolConfig::default()).map_err(|e| e.to_string())?;
    let mut cache = pool.cache();
    let mut loans = UmemLoans::new(&pool);
    let mut program = UplinkProgram::attach(&a.interface, ifindex(&a.interface)?, XdpMode::Auto)
        .map_err(|e| e.to_string())?;
    program.add_guest(mac).map_err(|e| e.to_string())?;
    let mut xsk = open(&a.interface, a.queue, &pool)?;
    program
        .set_socket(a.queue, &xsk)
        .map_err(|e| e.to_string())?;
    for _ in 0..1024 {
        let f = cache.alloc(1514).ok_or("frame pool empty")?;
        let addr = loans.lend(f).map_err(|_| "large frame")?;
        let _ = xsk.fill.push(addr);
    }
    xsk.fill.commit();
    let step = || {
        let mut n = 0;
        while let Some(d) = xsk.rx.pop() {
            // Straight back to the fill ring: the slot just freed up.
            let _ = xsk.fill.push(d.addr);
            n += 1;
        }
        if n > 0 {
            xsk.rx.release();
            xsk.fill.commit();
        } else if xsk.fill.needs_wakeup() {
            xsk.kick_fill();
        }
        n
    };
    let (count, secs) = measure(a.seconds, step);
    let mpps = count as f64 / secs / 1e6;
    println!("result mode=xsk-rx seconds={secs:.3} received={count} rx_mpps={mpps:.4}");
    println!("xsk-rx: {mpps:.3} Mpps received on {}", a.interface);
    Ok(())
}

/// Runs `step` (which returns the frames it moved) for the warm-up and then
/// for `seconds`; returns the frames moved during the measurement and its
/// length in seconds.
fn measure(seconds: f64, mut step: impl FnMut() -> u64) -> (u64, f64) {
    let start = Instant::now();
    while start.elapsed() < WARMUP {
        step();
    }
    let t0 = Instant::now();
    let mut count = 0;
    while t0.elapsed().as_secs_f64() < seconds {
        count += step();
    }
    (count, t0.elapsed().as_secs_f64())
}
