//! Pony Express against kernel TCP (scripts/bench-pony.sh, docs/pony.md):
//! a Pony server application, a Pony client with one mode per figure (RTT
//! of small messages, bulk messages, one-sided indirect reads, paced load),
//! and the TCP lookup server and client the indirect reads are compared
//! with. Every client prints one `result key=value ...` line.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use snapnet_pony::{access, kind, status, App, Buffer, Completion};

/// Largest message the server echoes (RTT and load modes); larger ones are
/// only released (bulk).
const ECHO_MAX: usize = 4096;
/// Echo replies the server has under way at once.
const ECHO_SLOTS: usize = 256;
/// Bytes of an indirection table entry (docs/pony.md): offset, length, spare.
const ENTRY_LEN: usize = snapnet_pony::abi::INDIRECT_ENTRY_LEN;
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct PonyServerArgs {
    /// The daemon's Pony socket.
    #[arg(long)]
    socket: PathBuf,
    #[arg(long, default_value_t = 7)]
    service: u32,
    /// Poll the completion ring instead of blocking on the eventfd.
    #[arg(long)]
    spin: bool,
    /// Entries of the lookup table the indirect reads go through.
    #[arg(long, default_value_t = 4096)]
    entries: usize,
    /// Bytes of each looked-up value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One message of `--size` bytes at a time, echoed: round-trip times.
    Rtt,
    /// Messages of `--size` bytes, `--window` under way: goodput.
    Bulk,
    /// One-sided indirect reads of a `--value-size` value, `--window` under
    /// way: operations per second.
    Indirect,
    /// `--rate` messages per second of `--size` bytes, echoed: the rate
    /// achieved and round-trip times, while the script measures CPU.
    Load,
}

#[derive(Args, Debug)]
pub struct PonyClientArgs {
    #[arg(long)]
    socket: PathBuf,
    /// The server's host address.
    #[arg(long)]
    peer: Ipv4Addr,
    #[arg(long, default_value_t = 7)]
    service: u32,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Message bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Operations under way at once (bulk, indirect).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Messages per second (load).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Poll the completion ring instead of blocking on the eventfd.
    #[arg(long)]
    spin: bool,
    /// The server's table size (indirect reads pick entries below it).
    #[arg(long, default_value_t = 4096)]
    entries: usize,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
}

#[derive(Args, Debug)]
pub struct TcpLookupServerArgs {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value_t = 4096)]
    entries: usize,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
}

#[derive(Args, Debug)]
pub struct TcpLookupClientArgs {
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Requests under way at once (pipelined on the one connection).
    #[arg(long, default_value_t = 16)]
    window: usize,
    #[arg(long, default_value_t = 4096)]
    entries: usize,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The byte at `i` of the looked-up data (both servers hold the same).
fn data_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) % 251) as u8
}

/// The next completion: polling the ring (yielding the CPU between polls)
/// or blocking on the eventfd.
fn next(
    app: &mut App,
    spin: bool,
    timeout: Option<Duration>,
) -> Result<Option<Completion>, String> {
    if spin {
        let until = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(c) = app.poll() {
                return Ok(Some(c));
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return Ok(None);
            }
            // This machine has a CPU per host, shared by the host's engine
            // and its application: a spinner that never gave its CPU up
            // would hold the engine off for a whole time slice.
            std::thread::yield_now();
        }
    }
    app.wait(timeout).map_err(err)
}

pub fn run_pony_server(a: PonyServerArgs) -> Result<(), String> {
    let mut app = App::attach(&a.socket, "bench-server", a.service).map_err(err)?;
    // The data the indirect reads fetch, and the table pointing into it.
    let data = app.alloc(a.entries * a.value_size).map_err(err)?;
    let bytes: Vec<u8> = (0..a.entries * a.value_size).map(data_byte).collect();
    app.write_bytes(&data, 0, &bytes).map_err(err)?;
    let data_region = app.register(&data, access::READ).map_err(err)?;
    let table = app.alloc(a.entries * ENTRY_LEN).map_err(err)?;
    let mut entries = vec![0u8; a.entries * ENTRY_LEN];
    for (i, e) in entries.chunks_mut(ENTRY_LEN).enumerate() {
        e[..8].copy_from_slice(&((i * a.value_size) as u64).to_le_bytes());
        e[8..12].copy_from_slice(&(a.value_size as u32).to_le_bytes());
    }
    app.write_bytes(&table, 0, &entries).map_err(err)?;
    let table_region = app.register(&table, access::READ).map_err(err)?;
    let slots: Vec<Buffer> = (0..ECHO_SLOTS)
        .map(|_| app.alloc(ECHO_MAX))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let mut free: Vec<usize> = (0..ECHO_SLOTS).rev().collect();
    let mut scratch = vec![0u8; ECHO_MAX];
    eprintln!(
        "pony server: service {}, regions table {table_region} data {data_region}",
        a.service
    );
    loop {
        let Some(c) = next(&mut app, a.spin, None)? else {
            continue;
        };
        match c.kind {
            // Tell each new peer where the table and the data are.
            kind::ACCEPTED => {
                let Some(s) = free.pop() else { continue };
                let mut hello = [0u8; 8];
                hello[..4].copy_from_slice(&table_region.to_le_bytes());
                hello[4..].copy_from_slice(&data_region.to_le_bytes());
                app.write_bytes(&slots[s], 0, &hello).map_err(err)?;
                app.send(c.conn, 0, &slots[s].slice(0, 8), s as u64)
                    .map_err(err)?;
            }
            kind::RECEIVED => {
                let len = c.len as usize;
                if len <= ECHO_MAX {
                    if let Some(s) = free.pop() {
                        app.message_into(&c, &mut scratch).map_err(err)?;
                        app.write_bytes(&slots[s], 0, &scratch[..len])
                            .map_err(err)?;
                        app.send(c.conn, c.stream, &slots[s].slice(0, len), s as u64)
                            .map_err(err)?;
                    }
                }
                app.release(&c).map_err(err)?;
            }
            kind::SENT => free.push(c.user_data as usize),
            _ => {}
        }
    }
}

/// Median and 99th percentile of sorted samples.
fn percentiles(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

pub fn run_pony_client(a: PonyClientArgs) -> Result<(), String> {
    let mut app = App::attach(&a.socket, "bench-client", 0).map_err(err)?;
    let conn = app.connect(a.peer, a.service).map_err(err)?;
    // The server's hello: its table's and data's region ids.
    let (table_region, data_region) = loop {
        let Some(c) = next(&mut app, false, Some(Duration::from_secs(5)))? else {
            return Err("no hello from the server".into());
        };
        if c.kind == kind::RECEIVED {
            let m = app.message(&c).map_err(err)?;
            app.release(&c).map_err(err)?;
            let id = |i: usize| u32::from_le_bytes(m[i..i + 4].try_into().unwrap_or([0; 4]));
            break (id(0), id(4));
        }
    };
    match a.mode {
        Mode::Rtt => rtt(&mut app, conn, &a),
        Mode::Bulk => bulk(&mut app, conn, &a),
        Mode::Indirect => indirect(&mut app, conn, table_region, data_region, &a),
        Mode::Load => load(&mut app, conn, &a),
    }
}

fn rtt(app: &mut App, conn: u32, a: &PonyClientArgs) -> Result<(), String> {
    let buf = app.alloc(a.size.max(1)).map_err(err)?;
    app.write_bytes(&buf, 0, &vec![7u8; a.size]).map_err(err)?;
    let msg = buf.slice(0, a.size);
    let start = Instant::now();
    let end = start + WARMUP + Duration::from_secs_f64(a.seconds);
    let mut samples = Vec::new();
    while Instant::now() < end {
        let t0 = Instant::now();
        app.send(conn, 0, &msg, 1).map_err(err)?;
        loop {
            let Some(c) = next(app, a.spin, Some(Duration::from_secs(2)))? else {
                return Err("echo lost".into());
            };
            if c.kind == kind::RECEIVED {
                app.release(&c).map_err(err)?;
                break;
            }
        }
        if t0 >= start + WARMUP {
            samples.push(t0.elapsed().as_secs_f64() * 1e6);
        }
    }
    let n = samples.len();
    let (p50, p99) = percentiles(&mut samples);
    println!(
        "result mode=rtt size={} spin={} samples={n} p50_us={p50:.2} p99_us={p99:.2}",
        a.size, a.spin
    );
    println!(
        "pony rtt {} B: p50 {p50:.1} us, p99 {p99:.1} us ({n} round trips)",
        a.size
    );
    Ok(())
}

fn bulk(app: &mut App, conn: u32, a: &PonyClientArgs) -> Result<(), String> {
    let buf = app.alloc(a.size).map_err(err)?;
    let mut in_flight = 0;
    let mut sent_bytes = 0u64;
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let mut counted = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        while in_flight < a.window {
            app.send(conn, (in_flight % 4) as u16, &buf, 1)
                .map_err(err)?;
            in_flight += 1;
        }
        let Some(c) = next(app, a.spin, Some(Duration::from_secs(2)))? else {
            return Err("no completion in 2 s".into());
        };
        match (c.kind, c.status) {
            (kind::SENT, status::OK) => {
                in_flight -= 1;
                if Instant::now() >= measure_from {
                    sent_bytes += a.size as u64;
                    counted += 1;
                }
            }
            (kind::RECEIVED, _) => app.release(&c).map_err(err)?,
            (kind::SENT, s) => return Err(format!("send failed: status {s}")),
            _ => {}
        }
    }
    let secs = a.seconds;
    let gbps = sent_bytes as f64 * 8.0 / secs / 1e9;
    println!(
        "result mode=bulk size={} window={} messages={counted} gbps={gbps:.3}",
        a.size, a.window
    );
    println!("pony bulk {} B x {}: {gbps:.2} Gbit/s", a.size, a.window);
    Ok(())
}

fn indirect(
    app: &mut App,
    conn: u32,
    table: u32,
    data: u32,
    a: &PonyClientArgs,
) -> Result<(), String> {
    let slots: Vec<Buffer> = (0..a.window)
        .map(|_| app.alloc(a.value_size))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let mut index = vec![0u64; a.window];
    let mut next_index = 0u64;
    let mut issue = |app: &mut App, s: usize, index: &mut [u64]| -> Result<(), String> {
        next_index = (next_index + 7919) % a.entries as u64;
        index[s] = next_index;
        app.indirect_read(conn, table, next_index, data, &slots[s], s as u64)
            .map_err(err)
    };
    for s in 0..a.window {
        issue(app, s, &mut index)?;
    }
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let (mut done, mut checked) = (0u64, 0u64);
    let mut got = vec![0u8; a.value_size];
    while Instant::now() < end {
        let Some(c) = next(app, a.spin, Some(Duration::from_secs(2)))? else {
            return Err("no completion in 2 s".into());
        };
        if c.kind != kind::INDIRECT_READ_DONE {
            continue;
        }
        if c.status != status::OK {
            return Err(format!("indirect read failed: status {}", c.status));
        }
        let s = c.user_data as usize;
        // Check one value in 64: the right bytes, from the right entry.
        if done % 64 == 0 {
            app.read_bytes(&slots[s], 0, &mut got).map_err(err)?;
            let base = index[s] as usize * a.value_size;
            if got
                .iter()
                .enumerate()
                .any(|(i, &b)| b != data_byte(base + i))
            {
                return Err(format!("entry {}: wrong bytes", index[s]));
            }
            checked += 1;
        }
        if Instant::now() >= measure_from {
            done += 1;
        }
        issue(app, s, &mut index)?;
    }
    let rate = done as f64 / a.seconds;
    println!("result mode=indirect window={} value_size={} ops={done} checked={checked} ops_per_sec={rate:.0}", a.window, a.value_size);
    println!("pony indirect reads x {}: {rate:.0}/s", a.window);
    Ok(())
}

fn load(app: &mut App, conn: u32, a: &PonyClientArgs) -> Result<(), String> {
    let slots = 64usize;
    let bufs: Vec<Buffer> = (0..slots)
        .map(|_| app.alloc(a.size.max(8)))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let mut free: Vec<usize> = (0..slots).collect();
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let mut due = start;
    let (mut sent, mut echoed) = (0u64, 0u64);
    let mut samples = Vec::new();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        while due <= now {
            due += interval;
            let Some(s) = free.pop() else { break };
            let stamp = now.duration_since(start).as_nanos() as u64;
            app.write_bytes(&bufs[s], 0, &stamp.to_le_bytes())
                .map_err(err)?;
            app.send(conn, 0, &bufs[s].slice(0, a.size.max(8)), s as u64)
                .map_err(err)?;
            sent += 1;
        }
        let wait = due.saturating_duration_since(Instant::now());
        while let Some(c) = next(app, a.spin, Some(wait))? {
            match c.kind {
                kind::SENT => free.push(c.user_data as usize),
                kind::RECEIVED => {
                    let m = app.message(&c).map_err(err)?;
                    app.release(&c).map_err(err)?;
                    let stamp = u64::from_le_bytes(m[..8].try_into().unwrap_or([0; 8]));
                    let t = Duration::from_nanos(stamp);
                    if start + t >= measure_from {
                        echoed += 1;
                        samples.push((start.elapsed() - t).as_secs_f64() * 1e6);
                    }
                }
                _ => {}
            }
            if Instant::now() >= due {
                break;
            }
        }
    }
    let achieved = echoed as f64 / a.seconds;
    let (p50, p99) = percentiles(&mut samples);
    println!("result mode=load offered={:.0} sent={sent} achieved={achieved:.0} p50_us={p50:.2} p99_us={p99:.2}", a.rate);
    println!(
        "pony load {:.0}/s: {achieved:.0}/s echoed, RTT p50 {p50:.1} us",
        a.rate
    );
    Ok(())
}

pub fn run_tcp_lookup_server(a: TcpLookupServerArgs) -> Result<(), String> {
    let data: Vec<u8> = (0..a.entries * a.value_size).map(data_byte).collect();
    let listener = TcpListener::bind(a.listen).map_err(err)?;
    eprintln!("tcp lookup server on {}", a.listen);
    for stream in listener.incoming() {
        let mut s = stream.map_err(err)?;
        s.set_nodelay(true).map_err(err)?;
        // One request: an entry index (u64); one answer: its value. The
        // table lookup is the same as the Pony engine's indirect read.
        let mut req = [0u8; 8];
        while s.read_exact(&mut req).is_ok() {
            let i = u64::from_le_bytes(req) as usize % a.entries;
            if s.write_all(&data[i * a.value_size..(i + 1) * a.value_size])
                .is_err()
            {
                break;
            }
        }
    }
    Ok(())
}

pub fn run_tcp_lookup_client(a: TcpLookupClientArgs) -> Result<(), String> {
    let mut s = TcpStream::connect(a.connect).map_err(err)?;
    s.set_nodelay(true).map_err(err)?;
    let mut next_index = 0u64;
    let mut sent = std::collections::VecDeque::new();
    let mut request = |s: &mut TcpStream, sent: &mut std::collections::VecDeque<u64>| {
        next_index = (next_index + 7919) % a.entries as u64;
        sent.push_back(next_index);
        s.write_all(&next_index.to_le_bytes()).map_err(err)
    };
    for _ in 0..a.window {
        request(&mut s, &mut sent)?;
    }
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let mut got = vec![0u8; a.value_size];
    let mut done = 0u64;
    while Instant::now() < end {
        s.read_exact(&mut got).map_err(err)?;
        let i = sent.pop_front().unwrap_or(0) as usize;
        if done % 64 == 0
            && got
                .iter()
                .enumerate()
                .any(|(k, &b)| b != data_byte(i * a.value_size + k))
        {
            return Err(format!("entry {i}: wrong bytes"));
        }
        if Instant::now() >= measure_from {
            done += 1;
        }
        request(&mut s, &mut sent)?;
    }
    let rate = done as f64 / a.seconds;
    println!(
        "result mode=tcp_lookup window={} value_size={} ops={done} ops_per_sec={rate:.0}",
        a.window, a.value_size
    );
    println!("tcp lookups x {}: {rate:.0}/s", a.window);
    Ok(())
}
