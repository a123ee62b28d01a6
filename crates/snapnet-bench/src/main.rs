//! snapnet-bench: a vhost-user load generator built on `snapnet_frontend`.
//!
//! Every subcommand prints one machine-readable line `result key=value ...` and one line for
//! humans. The bench thread's CPU share (from /proc/thread-self/schedstat) is reported so runs
//! where the tool did not get a full core can be thrown away.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
mod directory;
mod dirty_log;
mod engine_cost;
mod guests;
mod handover;
mod isolation;
mod pingpong;
mod plot;
mod pony;
mod switch_cost;
mod upgrade;
mod xsk_loop;
use snapnet_frontend::{Frontend, FrontendConfig, QueueStats, VirtioNetHdr};

/// EtherType of generated frames (IEEE 802.1 local experimental).
const ETHERTYPE: u16 = 0x88b5;
/// Ethernet header + sequence number + queue pair id: the smallest frame `--check` can use.
const CHECK_MIN_SIZE: usize = 14 + 8 + 2;
const WARMUP: Duration = Duration::from_millis(500);
const MAX_CHECK_BURST: usize = 64;

#[derive(Parser)]
#[command(name = "snapnet-bench", about = "vhost-user virtio-net load generator")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send on one device, receive on another, measure throughput and loss.
    Pair(PairArgs),
    /// Send only.
    Tx(TxArgs),
    /// Receive only.
    Rx(RxArgs),
    /// Paced, timestamped frames tx -> rx, reflected rx -> tx: achieved rate
    /// and round-trip time at a given offered load.
    Load(LoadArgs),
    /// Bare AF_XDP send loop on an interface (the uplink benchmark's reference).
    XskTx(xsk_loop::XskTxArgs),
    /// Bare AF_XDP receive loop behind snapnet's XDP program.
    XskRx(xsk_loop::XskRxArgs),
    /// PNG of the CSV written by scripts/bench-cpu-vs-load.sh: cores used and
    /// RTT median against offered load, one series per backend.
    Plot(plot::PlotArgs),
    /// Cache-line ping-pong between two CPUs: the vCPU placement of a run.
    Pingpong(pingpong::PingPongArgs),
    /// The switch engine's cost per frame, in process on one thread.
    SwitchCost(switch_cost::SwitchCostArgs),
    /// Busy time per unit of work of each engine of a running daemon's
    /// group, from two samples of `snapnet ctl --json group stats NAME`.
    EngineCost(engine_cost::EngineCostArgs),
    /// A steady pair's rate alone and while guests with no RX buffers are
    /// flooded, interleaved rounds, medians and ratio.
    Isolation(isolation::IsolationArgs),
    /// A steady pair's rate with a live migration's dirty-page logging
    /// off and on, interleaved rounds, medians and ratio.
    DirtyLog(dirty_log::DirtyLogArgs),
    /// Upgrade blackout per vNIC, in-process rehearsal of the hand-over:
    /// p50/p99/max, the largest gap a guest saw, frames lost.
    Handover(handover::HandoverArgs),
    /// `snapnet ctl upgrade` again and again through the real binary, under
    /// traffic: blackout per upgrade (p50/p99/max), the largest gap a guest
    /// saw, frames lost.
    Upgrade(upgrade::UpgradeArgs),
    /// From `vnic.add` on one host until a guest on another reaches the new
    /// guest through the directory: p50/p99 over many adds.
    DirectoryConvergence(directory::ConvergenceArgs),
    /// One snapnet following a large simulated directory: convergence, CPU,
    /// memory; then recovery after an outage with changes missed.
    DirectoryScale(directory::ScaleArgs),
    /// The overlay's per-frame lookup with many entries against few.
    OverlayLookup(directory::LookupArgs),
    /// A Pony Express server application: echoes messages, serves a lookup
    /// table to indirect reads (scripts/bench-pony.sh).
    PonyServer(pony::PonyServerArgs),
    /// A Pony Express client: RTT, bulk, indirect reads or paced load.
    PonyClient(pony::PonyClientArgs),
    /// The TCP request/response lookup server Pony's indirect reads are
    /// compared with.
    TcpLookupServer(pony::TcpLookupServerArgs),
    /// Its client: pipelined lookups per second.
    TcpLookupClient(pony::TcpLookupClientArgs),
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Socket of the device that sends and measures.
    #[arg(long)]
    tx: PathBuf,
    /// Socket of the device that reflects every frame back.
    #[arg(long)]
    rx: PathBuf,
    /// Offered load in frames per second (0: none; omit: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Frame size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measurement time in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Destination MAC of the forward frames (default: the rx device's MAC).
    #[arg(long)]
    dst_mac: Option<String>,
    /// With --rate: sleep this long whenever nothing is due, so a long paced
    /// run (the soak) does not spin a core; 0 keeps polling.
    #[arg(long, default_value_t = 0)]
    nap_us: u64,
    /// After --seconds, stop sending and keep receiving this long, so that
    /// frames in flight count as returned rather than lost.
    #[arg(long, default_value_t = 0)]
    drain_ms: u64,
    #[command(flatten)]
    dev: DevOpts,
}

#[derive(Args, Clone, Debug)]
struct DevOpts {
    /// Queue pairs per device.
    #[arg(long, default_value_t = 1)]
    queue_pairs: u16,
    /// Ring size.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Do not negotiate VIRTIO_NET_F_MRG_RXBUF.
    #[arg(long)]
    no_mrg: bool,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX.
    #[arg(long)]
    no_event_idx: bool,
    /// Send TX packets through indirect descriptor tables.
    #[arg(long)]
    indirect: bool,
    /// Use packed virtqueues (VIRTIO_F_RING_PACKED).
    #[arg(long)]
    packed: bool,
    /// Do not negotiate checksum/TSO offloads.
    #[arg(long)]
    no_offloads: bool,
    /// Guest memory per device in MiB (default: enough for the configuration).
    #[arg(long)]
    mem_mb: Option<usize>,
    /// Back guest memory with 2 MiB huge pages.
    #[arg(long)]
    hugepages: bool,
    /// How long to wait for the backend socket, in seconds.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
}

impl DevOpts {
    /// Device configuration; TX buffers are made large enough for `frame_size` frames.
    fn config(&self, frame_size: usize) -> FrontendConfig {
        let tx_buf_len = (frame_size + VirtioNetHdr::LEN)
            .next_multiple_of(64)
            .max(2048);
        let mut cfg = FrontendConfig {
            tx_buf_len: tx_buf_len as u32,
            queue_pairs: self.queue_pairs,
            queue_size: self.queue_size,
            mrg_rxbuf: !self.no_mrg,
            event_idx: !self.no_event_idx,
            indirect: self.indirect,
            packed: self.packed,
            offloads: !self.no_offloads,
            hugepages: self.hugepages,
            ..FrontendConfig::default()
        };
        cfg.mem_size = match self.mem_mb {
            Some(mb) => mb << 20,
            None => cfg.min_mem_size().max(cfg.mem_size),
        };
        cfg
    }

    fn open(&self, path: &Path, accept: bool, frame_size: usize) -> Result<Frontend, String> {
        let cfg = self.config(frame_size);
        let timeout = Duration::from_secs_f64(self.connect_timeout);
        let r = if accept {
            Frontend::accept(path, &cfg, timeout)
        } else {
            Frontend::connect(path, &cfg, timeout)
        };
        r.map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[derive(Args, Debug)]
struct PairArgs {
    /// Socket of the sending device.
    #[arg(long)]
    tx: PathBuf,
    /// Socket of the receiving device.
    #[arg(long)]
    rx: PathBuf,
    /// Listen on --tx instead of connecting (backend is a vhost-user client).
    #[arg(long)]
    tx_accept: bool,
    /// Listen on --rx instead of connecting.
    #[arg(long)]
    rx_accept: bool,
    #[command(flatten)]
    traffic: TrafficOpts,
    /// Send sequence-numbered frames with `send` and verify every received frame.
    #[arg(long)]
    check: bool,
    /// Mark each frame as a TCPv4 TSO super-frame (gso_size 1448), as a guest
    /// with TSO sends them; needs --size up to 65550 and offloads.
    #[arg(long)]
    gso: bool,
    #[command(flatten)]
    dev: DevOpts,
}

#[derive(Args, Debug)]
struct TrafficOpts {
    /// Ethernet frame size in bytes (without virtio header and FCS).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Measurement time in seconds (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Destination MAC (default: the receiving device's MAC, or broadcast for `tx`).
    #[arg(long)]
    dst_mac: Option<String>,
    /// Packets offered to the TX ring per call.
    #[arg(long, default_value_t = 32)]
    burst: usize,
}

#[derive(Args, Debug)]
struct TxArgs {
    /// Backend socket.
    #[arg(long)]
    socket: PathBuf,
    /// Listen on the socket instead of connecting.
    #[arg(long)]
    accept: bool,
    #[command(flatten)]
    traffic: TrafficOpts,
    #[command(flatten)]
    dev: DevOpts,
}

#[derive(Args, Debug)]
struct RxArgs {
    /// Backend socket.
    #[arg(long)]
    socket: PathBuf,
    /// Listen on the socket instead of connecting.
    #[arg(long)]
    accept: bool,
    /// Measurement time in seconds (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[command(flatten)]
    dev: DevOpts,
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(format!("bad MAC {s:?}"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s:?}"))?;
    }
    Ok(mac)
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// CPU time and run-queue wait of the calling thread, in nanoseconds.
fn thread_schedstat() -> Option<(u64, u64)> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

struct CpuMeter {
    wall: Instant,
    stat: Option<(u64, u64)>,
}

impl CpuMeter {
    fn start() -> CpuMeter {
        CpuMeter {
            wall: Instant::now(),
            stat: thread_schedstat(),
        }
    }

    /// (cpu share 0..1, run-queue wait in ms); share is -1 when schedstat is unavailable.
    fn finish(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_nanos() as f64;
        match (self.stat, thread_schedstat()) {
            (Some((c0, w0)), Some((c1, w1))) => ((c1 - c0) as f64 / wall, (w1 - w0) as f64 / 1e6),
            _ => (-1.0, -1.0),
        }
    }
}

/// Builds the benchmark frame: dst, src, EtherType, then a byte pattern.
fn build_frame(size: usize, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; size.max(14)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    for (i, b) in f[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// Ethernet, IPv4 and TCP headers of a `--gso` frame.
const TCP4_HEADERS: usize = 54;

/// Makes `f` a TCP/IPv4 segment after its Ethernet addresses: a vNIC takes
/// a TSO super-frame only when its headers are what its gso_type says.
fn tcp4_headers(f: &mut [u8]) {
    let ip_len = (f.len() - 14).min(0xffff) as u16;
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14..34].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[34..54].copy_from_slice(&[
        0x1f, 0x90, 0, 0x50, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
    ]);
}

/// Payload byte `i` (after the sequence number and queue id) of the frame with `seq`.
#[inline]
fn check_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8)
}

fn fill_check_frame(f: &mut [u8], seq: u64, qp: u16) {
    f[14..22].copy_from_slice(&seq.to_le_bytes());
    f[22..24].copy_from_slice(&qp.to_le_bytes());
    for (i, b) in f[24..].iter_mut().enumerate() {
        *b = check_byte(seq, i);
    }
}

#[derive(Default, Debug)]
struct Checker {
    expected: Vec<u64>,
    ok: u64,
    mismatches: u64,
    out_of_order: u64,
    gaps: u64,
    foreign: u64,
    first_error: Option<String>,
}

impl Checker {
    fn new(queue_pairs: u16) -> Checker {
        Checker {
            expected: vec![0; queue_pairs as usize],
            ..Checker::default()
        }
    }

    fn error(&mut self, msg: String) {
        if self.first_error.is_none() {
            self.first_error = Some(msg);
        }
    }

    fn check(&mut self, frame: &[u8], template: &[u8]) {
        if frame.len() < 14 || frame[12..14] != ETHERTYPE.to_be_bytes() {
            self.foreign += 1;
            return;
        }
        if frame.len() != template.len() || frame.len() < CHECK_MIN_SIZE {
            self.mismatches += 1;
            self.error(format!(
                "frame of {} bytes, expected {}",
                frame.len(),
                template.len()
            ));
            return;
        }
        if frame[..14] != template[..14] {
            self.mismatches += 1;
            self.error(format!("Ethernet header {:02x?}", &frame[..14]));
            return;
        }
        let seq = u64::from_le_bytes(frame[14..22].try_into().unwrap());
        let qp = u16::from_le_bytes([frame[22], frame[23]]) as usize;
        if qp >= self.expected.len() {
            self.mismatches += 1;
            self.error(format!("queue pair id {qp} in frame seq {seq}"));
            return;
        }
        if let Some(i) = (0..frame.len() - 24).find(|&i| frame[24 + i] != check_byte(seq, i)) {
            self.mismatches += 1;
            self.error(format!("seq {seq} (qp {qp}) differs at byte {}", 24 + i));
            return;
        }
        let exp = self.expected[qp];
        if seq < exp {
            self.out_of_order += 1;
            self.error(format!("seq {seq} (qp {qp}) after {}", exp - 1));
            return;
        }
        self.gaps += seq - exp;
        self.expected[qp] = seq + 1;
        self.ok += 1;
    }
}

/// Counters before and after a timed run, and the bench thread's CPU share.
struct Measured {
    s0: QueueStats,
    s1: QueueStats,
    secs: f64,
    cpu_share: f64,
    runq_ms: f64,
}

/// Runs `step` for the warm-up, then for `seconds`, measuring.
fn measure(dev: &mut Frontend, seconds: f64, mut step: impl FnMut(&mut Frontend)) -> Measured {
    let warm_end = Instant::now() + WARMUP;
    while Instant::now() < warm_end {
        step(dev);
    }
    let s0 = sum_stats(dev);
    let cpu = CpuMeter::start();
    let dur = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut iter = 0u64;
    let elapsed = loop {
        step(dev);
        iter += 1;
        if iter % 64 == 0 {
            let e = start.elapsed();
            if e >= dur {
                break e;
            }
        }
    };
    let (cpu_share, runq_ms) = cpu.finish();
    Measured {
        s0,
        s1: sum_stats(dev),
        secs: elapsed.as_secs_f64(),
        cpu_share,
        runq_ms,
    }
}

fn sum_stats(dev: &Frontend) -> QueueStats {
    let mut t = QueueStats::default();
    for q in 0..dev.queue_pairs() {
        let s = dev.stats(q);
        t.tx_packets += s.tx_packets;
        t.tx_kicks += s.tx_kicks;
        t.rx_packets += s.rx_packets;
        t.rx_bytes += s.rx_bytes;
        t.rx_kicks += s.rx_kicks;
        t.rx_discarded += s.rx_discarded;
        t.bad_used += s.bad_used;
    }
    t
}

/// Sends sequence-numbered frames; keeps per-queue-pair sequence numbers.
struct CheckSender {
    batch: Vec<u8>,
    size: usize,
    seq: Vec<u64>,
}

impl CheckSender {
    fn new(template: &[u8], burst: usize, queue_pairs: u16) -> CheckSender {
        let burst = burst.clamp(1, MAX_CHECK_BURST);
        let mut batch = Vec::with_capacity(burst * template.len());
        for _ in 0..burst {
            batch.extend_from_slice(template);
        }
        CheckSender {
            batch,
            size: template.len(),
            seq: vec![0; queue_pairs as usize],
        }
    }

    fn send(&mut self, dev: &mut Frontend, qp: u16) -> usize {
        let seq0 = self.seq[qp as usize];
        for (k, f) in self.batch.chunks_mut(self.size).enumerate() {
            fill_check_frame(f, seq0 + k as u64, qp);
        }
        let mut refs: [&[u8]; MAX_CHECK_BURST] = [&[]; MAX_CHECK_BURST];
        let mut n = 0;
        for (r, f) in refs.iter_mut().zip(self.batch.chunks(self.size)) {
            *r = f;
            n += 1;
        }
        let sent = dev.send(qp, &refs[..n], &VirtioNetHdr::default());
        self.seq[qp as usize] += sent as u64;
        sent
    }
}

fn kv(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_pair(a: PairArgs) -> Result<(), String> {
    let t = &a.traffic;
    if a.check && t.size < CHECK_MIN_SIZE {
        return Err(format!("--check needs --size >= {CHECK_MIN_SIZE}"));
    }
    let mut tx = a.dev.open(&a.tx, a.tx_accept, t.size)?;
    let mut rx = a.dev.open(&a.rx, a.rx_accept, t.size)?;
    let dst = match &t.dst_mac {
        Some(m) => parse_mac(m)?,
        None => rx.mac(),
    };
    let mut template = build_frame(t.size, dst, tx.mac());
    if a.gso {
        if t.size < TCP4_HEADERS + 48 {
            return Err(format!("--gso needs --size >= {}", TCP4_HEADERS + 48));
        }
        tcp4_headers(&mut template);
    }
    let nq = tx.queue_pairs();
    let nrq = rx.queue_pairs();
    if !a.check {
        let hdr = if a.gso {
            VirtioNetHdr {
                flags: VirtioNetHdr::F_NEEDS_CSUM,
                gso_type: VirtioNetHdr::GSO_TCPV4,
                hdr_len: 54,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 0,
            }
        } else {
            VirtioNetHdr::default()
        };
        for q in 0..nq {
            tx.prepare_blast_with_hdr(q, &template, &hdr);
        }
    }
    let mut checker = Checker::new(nq);
    let mut sender = CheckSender::new(&template, t.burst, nq);
    let burst = t.burst.max(1);

    let mut step = |tx: &mut Frontend, rx: &mut Frontend, checker: &mut Checker| {
        for q in 0..nq {
            if a.check {
                sender.send(tx, q);
            } else {
                tx.blast(q, burst);
            }
        }
        for q in 0..nrq {
            if a.check {
                rx.recv(q, |_, f| checker.check(f, &template));
            } else {
                rx.recv_count(q);
            }
        }
    };

    let warm_end = Instant::now() + WARMUP;
    while Instant::now() < warm_end {
        step(&mut tx, &mut rx, &mut checker);
    }
    let (tx0, rx0) = (sum_stats(&tx), sum_stats(&rx));
    let cpu = CpuMeter::start();
    let dur = Duration::from_secs_f64(t.seconds);
    let start = Instant::now();
    let mut iter = 0u64;
    let elapsed = loop {
        step(&mut tx, &mut rx, &mut checker);
        iter += 1;
        if iter % 64 == 0 {
            let e = start.elapsed();
            if e >= dur {
                break e;
            }
        }
    };
    let (cpu_share, runq_ms) = cpu.finish();
    let (tx1, rx1) = (sum_stats(&tx), sum_stats(&rx));

    // Drain: stop sending, receive until nothing arrives for 100 ms (at most 2 s).
    let drain_end = Instant::now() + Duration::from_secs(2);
    let mut last_rx = Instant::now();
    while Instant::now() < drain_end && last_rx.elapsed() < Duration::from_millis(100) {
        for q in 0..nrq {
            let n = if a.check {
                rx.recv(q, |_, f| checker.check(f, &template))
            } else {
                rx.recv_count(q).0
            };
            if n > 0 {
                last_rx = Instant::now();
            }
        }
    }
    let (txf, rxf) = (sum_stats(&tx), sum_stats(&rx));

    let secs = elapsed.as_secs_f64();
    let sent = tx1.tx_packets - tx0.tx_packets;
    let received = rx1.rx_packets - rx0.rx_packets;
    let rx_bytes = rx1.rx_bytes - rx0.rx_bytes;
    let total_sent = txf.tx_packets;
    let total_received = rxf.rx_packets;
    let loss = total_sent.saturating_sub(total_received);
    let loss_pct = if total_sent > 0 {
        100.0 * loss as f64 / total_sent as f64
    } else {
        0.0
    };
    let rx_mpps = received as f64 / secs / 1e6;
    let tx_mpps = sent as f64 / secs / 1e6;
    let rx_gbps = rx_bytes as f64 * 8.0 / secs / 1e9;
    let mut fields = vec![
        ("mode", "pair".to_string()),
        ("size", t.size.to_string()),
        ("queue_pairs", nq.to_string()),
        ("seconds", format!("{secs:.3}")),
        ("sent", sent.to_string()),
        ("received", received.to_string()),
        ("tx_mpps", format!("{tx_mpps:.4}")),
        ("rx_mpps", format!("{rx_mpps:.4}")),
        ("rx_gbps", format!("{rx_gbps:.4}")),
        ("total_sent", total_sent.to_string()),
        ("total_received", total_received.to_string()),
        ("loss", loss.to_string()),
        ("loss_pct", format!("{loss_pct:.4}")),
        ("cpu_share", format!("{cpu_share:.3}")),
        ("runq_wait_ms", format!("{runq_ms:.1}")),
        ("tx_kicks", (txf.tx_kicks).to_string()),
        ("rx_kicks", (rxf.rx_kicks).to_string()),
        ("bad_used", (txf.bad_used + rxf.bad_used).to_string()),
        ("tx_features", format!("{:#x}", tx.acked_features())),
        ("rx_features", format!("{:#x}", rx.acked_features())),
    ];
    if a.check {
        fields.extend([
            ("checked_ok", checker.ok.to_string()),
            ("mismatches", checker.mismatches.to_string()),
            ("out_of_order", checker.out_of_order.to_string()),
            ("gaps", checker.gaps.to_string()),
            ("foreign", checker.foreign.to_string()),
        ]);
    }
    println!("result {}", kv(&fields));
    println!(
        "pair: {} B frames {} -> {}, {rx_mpps:.3} Mpps received ({rx_gbps:.3} Gbit/s), \
         {tx_mpps:.3} Mpps sent; lost {loss} of {total_sent} ({loss_pct:.3}%); \
         bench thread CPU {:.1}%",
        t.size,
        fmt_mac(tx.mac()),
        fmt_mac(dst),
        cpu_share * 100.0
    );
    if a.check {
        println!(
            "check: {} ok, {} mismatched, {} out of order, {} missing, {} foreign{}",
            checker.ok,
            checker.mismatches,
            checker.out_of_order,
            checker.gaps,
            checker.foreign,
            checker
                .first_error
                .as_ref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
    }
    let bad = a.check && (checker.mismatches > 0 || checker.out_of_order > 0);
    tx.shutdown().map_err(|e| format!("tx shutdown: {e}"))?;
    rx.shutdown().map_err(|e| format!("rx shutdown: {e}"))?;
    if bad {
        return Err("frame check failed".into());
    }
    Ok(())
}

fn run_tx(a: TxArgs) -> Result<(), String> {
    let t = &a.traffic;
    let mut dev = a.dev.open(&a.socket, a.accept, t.size)?;
    let dst = match &t.dst_mac {
        Some(m) => parse_mac(m)?,
        None => [0xff; 6],
    };
    let frame = build_frame(t.size, dst, dev.mac());
    let nq = dev.queue_pairs();
    for q in 0..nq {
        dev.prepare_blast(q, &frame);
    }
    let burst = t.burst.max(1);
    let step = |dev: &mut Frontend| {
        for q in 0..nq {
            dev.blast(q, burst);
            // Keep RX drained in case the backend loops traffic back.
            dev.recv_count(q);
        }
    };
    let Measured {
        s0,
        s1,
        secs,
        cpu_share,
        runq_ms,
    } = measure(&mut dev, t.seconds, step);
    let sent = s1.tx_packets - s0.tx_packets;
    let tx_mpps = sent as f64 / secs / 1e6;
    let tx_gbps = (sent * t.size as u64) as f64 * 8.0 / secs / 1e9;
    let fields = [
        ("mode", "tx".to_string()),
        ("size", t.size.to_string()),
        ("queue_pairs", nq.to_string()),
        ("seconds", format!("{secs:.3}")),
        ("sent", sent.to_string()),
        ("tx_mpps", format!("{tx_mpps:.4}")),
        ("tx_gbps", format!("{tx_gbps:.4}")),
        ("looped_back", (s1.rx_packets - s0.rx_packets).to_string()),
        ("cpu_share", format!("{cpu_share:.3}")),
        ("runq_wait_ms", format!("{runq_ms:.1}")),
        ("tx_kicks", (s1.tx_kicks - s0.tx_kicks).to_string()),
        ("bad_used", s1.bad_used.to_string()),
        ("features", format!("{:#x}", dev.acked_features())),
    ];
    println!("result {}", kv(&fields));
    println!(
        "tx: {} B frames to {}, {tx_mpps:.3} Mpps ({tx_gbps:.3} Gbit/s) taken by the device; \
         bench thread CPU {:.1}%",
        t.size,
        fmt_mac(dst),
        cpu_share * 100.0
    );
    dev.shutdown().map_err(|e| format!("shutdown: {e}"))
}

fn run_rx(a: RxArgs) -> Result<(), String> {
    let mut dev = a.dev.open(&a.socket, a.accept, 0)?;
    let nq = dev.queue_pairs();
    let step = |dev: &mut Frontend| {
        for q in 0..nq {
            dev.recv_count(q);
        }
    };
    let Measured {
        s0,
        s1,
        secs,
        cpu_share,
        runq_ms,
    } = measure(&mut dev, a.seconds, step);
    let received = s1.rx_packets - s0.rx_packets;
    let bytes = s1.rx_bytes - s0.rx_bytes;
    let rx_mpps = received as f64 / secs / 1e6;
    let rx_gbps = bytes as f64 * 8.0 / secs / 1e9;
    let fields = [
        ("mode", "rx".to_string()),
        ("queue_pairs", nq.to_string()),
        ("seconds", format!("{secs:.3}")),
        ("received", received.to_string()),
        ("rx_mpps", format!("{rx_mpps:.4}")),
        ("rx_gbps", format!("{rx_gbps:.4}")),
        ("cpu_share", format!("{cpu_share:.3}")),
        ("runq_wait_ms", format!("{runq_ms:.1}")),
        ("rx_kicks", (s1.rx_kicks - s0.rx_kicks).to_string()),
        ("bad_used", s1.bad_used.to_string()),
        ("mac", fmt_mac(dev.mac())),
        ("features", format!("{:#x}", dev.acked_features())),
    ];
    println!("result {}", kv(&fields));
    println!(
        "rx: {rx_mpps:.3} Mpps ({rx_gbps:.3} Gbit/s) received on {}; bench thread CPU {:.1}%",
        fmt_mac(dev.mac()),
        cpu_share * 100.0
    );
    dev.shutdown().map_err(|e| format!("shutdown: {e}"))
}

/// Where the send timestamp sits in a load frame (after the EtherType).
const TS_AT: usize = 14;

fn run_load(a: LoadArgs) -> Result<(), String> {
    if a.size < TS_AT + 8 {
        return Err(format!("--size must be at least {}", TS_AT + 8));
    }
    let mut tx = a.dev.open(&a.tx, false, a.size)?;
    let mut rx = a.dev.open(&a.rx, false, a.size)?;
    let dst = match &a.dst_mac {
        Some(m) => parse_mac(m)?,
        None => rx.mac(),
    };
    let template = build_frame(a.size, dst, tx.mac());
    let hdr = VirtioNetHdr::default();
    const BURST: usize = 32;
    let mut out = vec![template.clone(); BURST];
    // A reflector takes everything one receive returns: a backend that
    // batches (compacting) hands over up to a ring's worth at once.
    let echo_cap = usize::from(a.dev.queue_size);
    let mut echo: Vec<Vec<u8>> = vec![vec![0u8; a.size]; echo_cap];
    let mut rtts: Vec<u64> = Vec::with_capacity(1 << 22);
    let start = Instant::now();
    let dur = Duration::from_secs_f64(a.seconds);
    let (mut sent, mut back) = (0u64, 0u64);
    // Warm-up: let both devices attach before the clock starts.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let drain = Duration::from_millis(a.drain_ms);
    let nap = Duration::from_micros(a.nap_us);
    loop {
        let elapsed = t0.elapsed();
        if elapsed >= dur + drain {
            break;
        }
        let due = match (elapsed < dur, a.rate) {
            (false, _) => 0,
            (true, Some(r)) => ((elapsed.as_secs_f64() * r) as u64).saturating_sub(sent) as usize,
            (true, None) => BURST,
        };
        let n = due.min(BURST);
        if n > 0 {
            let now = start.elapsed().as_nanos() as u64;
            for f in out.iter_mut().take(n) {
                f[TS_AT..TS_AT + 8].copy_from_slice(&now.to_le_bytes());
            }
            let refs: Vec<&[u8]> = out.iter().take(n).map(Vec::as_slice).collect();
            sent += tx.send(0, &refs, &hdr) as u64;
        }
        // Reflect: swap the MACs and send back.
        let mut k = 0;
        rx.recv(0, |_, p| {
            if k < echo_cap && p.len() == a.size {
                let e = &mut echo[k];
                e.copy_from_slice(p);
                e[0..6].copy_from_slice(&p[6..12]);
                e[6..12].copy_from_slice(&p[0..6]);
                k += 1;
            }
        });
        if k > 0 {
            let refs: Vec<&[u8]> = echo.iter().take(k).map(Vec::as_slice).collect();
            let mut done = 0;
            while done < k {
                done += rx.send(0, &refs[done..], &hdr);
            }
        }
        tx.recv(0, |_, p| {
            // Only our own size: flooded frames from other guests are not returns.
            if p.len() == a.size {
                let ts = u64::from_le_bytes(p[TS_AT..TS_AT + 8].try_into().expect("8 bytes"));
                let now = start.elapsed().as_nanos() as u64;
                if rtts.len() < rtts.capacity() {
                    rtts.push(now.saturating_sub(ts));
                }
                back += 1;
            }
        });
        if n == 0 && k == 0 && !nap.is_zero() {
            std::thread::sleep(nap);
        }
    }
    let secs = dur.as_secs_f64();
    rtts.sort_unstable();
    let q = |f: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        rtts[((rtts.len() - 1) as f64 * f) as usize] as f64 / 1e3
    };
    println!(
        "result mode=load offered_pps={} sent={sent} returned={back} lost={} rate_pps={:.0} rtt_p50_us={:.1} rtt_p99_us={:.1} seconds={secs:.3}",
        a.rate.map_or("max".to_string(), |r| format!("{r:.0}")),
        sent.saturating_sub(back),
        back as f64 / secs,
        q(0.5),
        q(0.99)
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Pair(a) => run_pair(a),
        Cmd::Isolation(a) => isolation::run_isolation(a),
        Cmd::DirtyLog(a) => dirty_log::run_dirty_log(a),
        Cmd::Handover(a) => handover::run_handover(a),
        Cmd::Upgrade(a) => upgrade::run_upgrade(a),
        Cmd::DirectoryConvergence(a) => directory::run_convergence(a),
        Cmd::DirectoryScale(a) => directory::run_scale(a),
        Cmd::OverlayLookup(a) => directory::run_lookup(a),
        Cmd::Tx(a) => run_tx(a),
        Cmd::Rx(a) => run_rx(a),
        Cmd::Load(a) => run_load(a),
        Cmd::XskTx(a) => xsk_loop::run_xsk_tx(a),
        Cmd::XskRx(a) => xsk_loop::run_xsk_rx(a),
        Cmd::Plot(a) => plot::run_plot(a),
        Cmd::Pingpong(a) => pingpong::run_pingpong(a),
        Cmd::SwitchCost(a) => switch_cost::run_switch_cost(a),
        Cmd::EngineCost(a) => engine_cost::run_engine_cost(a),
        Cmd::PonyServer(a) => pony::run_pony_server(a),
        Cmd::PonyClient(a) => pony::run_pony_client(a),
        Cmd::TcpLookupServer(a) => pony::run_tcp_lookup_server(a),
        Cmd::TcpLookupClient(a) => pony::run_tcp_lookup_client(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapnet-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_frames_roundtrip() {
        let tpl = build_frame(64, [1; 6], [2; 6]);
        let mut c = Checker::new(2);
        let mut f = tpl.clone();
        fill_check_frame(&mut f, 0, 1);
        c.check(&f, &tpl);
        fill_check_frame(&mut f, 3, 1);
        c.check(&f, &tpl);
        fill_check_frame(&mut f, 2, 1);
        c.check(&f, &tpl);
        f[40] ^= 1;
        c.check(&f, &tpl);
        assert_eq!((c.ok, c.gaps, c.out_of_order, c.mismatches), (2, 2, 1, 1));
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap()[5], 10);
        assert!(parse_mac("02:00").is_err());
    }
}
