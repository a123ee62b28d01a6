//! Figures of the overlay directory (docs/directory.md), driven by
//! scripts/bench-directory.sh, which sets up the hosts and etcd:
//! - `directory-convergence`: from `vnic.add` on host B until a guest on
//!   host A reaches the new guest, over many adds;
//! - `directory-scale`: one real snapnet following a directory of simulated
//!   hosts (10 000 entries) under steady changes: convergence, the directory
//!   threads' CPU, memory; then an outage with changes missed, and the time
//!   to a consistent table after it;
//! - `overlay-lookup`: the per-frame overlay lookup with many entries
//!   against few, interleaved rounds, medians, ratio.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::{Client, PutOptions};
use serde_json::{json, Value};
use snapnet::control::rpc::client::Client as Rpc;
use snapnet::uplink::overlay::{OverlayConfig, OverlayTable, RemoteHost, RemoteMac};
use snapnet_frontend::{Frontend, FrontendConfig, VirtioNetHdr};
use snapnet_wire::MacAddr;

fn rpc(socket: &Path, method: &str, params: Value) -> Result<Value, String> {
    let mut c = Rpc::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    c.call(method, params).map_err(|e| format!("{method}: {e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn mac(kind: u8, a: u16, b: u16) -> MacAddr {
    let [a0, a1] = a.to_be_bytes();
    let [b0, b1] = b.to_be_bytes();
    MacAddr([0x52, kind, a0, a1, b0, b1])
}

#[derive(Args, Debug)]
pub struct ConvergenceArgs {
    /// Control socket of the host whose guest sends (A).
    #[arg(long)]
    control_a: PathBuf,
    /// Control socket of the host where vNICs are added (B).
    #[arg(long)]
    control_b: PathBuf,
    /// Directory for the new vNICs' sockets.
    #[arg(long)]
    socket_dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    adds: u32,
    /// Give up on one add after this long.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

/// A frame from `src` to `dst` (the benchmark's EtherType).
fn frame(dst: MacAddr, src: MacAddr, seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&crate::ETHERTYPE.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

/// A small guest (4 MiB of memory): what a guest's connection costs grows
/// with its memory (about 80 ms for the frontend's default 64 MiB on this
/// machine, against 10 ms for 4 MiB), and is no part of the directory's.
fn connect(socket: &Path) -> Result<Frontend, String> {
    let cfg = FrontendConfig {
        mem_size: 4 << 20,
        ..FrontendConfig::default()
    };
    Frontend::connect(socket, &cfg, Duration::from_secs(5))
        .map_err(|e| format!("{}: {e}", socket.display()))
}

/// Each add: a fresh network on both hosts (so host B is no flood member of
/// it before), the sender's vNIC on A first (not timed), then the clock
/// starts, `vnic.add` on B, its guest connects, and A's guest sends to the
/// new MAC every 200 µs until a frame arrives.
pub fn run_convergence(a: ConvergenceArgs) -> Result<(), String> {
    let mut reach = Vec::new();
    let mut rpc_done = Vec::new();
    let mut connected = Vec::new();
    let mut failed = 0;
    for i in 0..a.adds {
        let network = 5000 + i;
        let (ma, mb) = (mac(0xa, 1, i as u16), mac(0xb, 1, i as u16));
        let (na, nb) = (format!("conv-a{i}"), format!("conv-b{i}"));
        let (sa, sb) = (
            a.socket_dir.join(format!("{na}.sock")),
            a.socket_dir.join(format!("{nb}.sock")),
        );
        rpc(
            &a.control_a,
            "vnic.add",
            json!({ "name": na, "mac": ma.to_string(), "network": network, "socket": sa }),
        )?;
        let mut sender = connect(&sa)?;
        let t0 = Instant::now();
        let added = rpc(
            &a.control_b,
            "vnic.add",
            json!({ "name": nb, "mac": mb.to_string(), "network": network, "socket": sb }),
        )?;
        rpc_done.push(t0.elapsed().as_secs_f64() * 1e3);
        if added["directory"]["published"] != true {
            return Err(format!("add {i}: not published: {added}"));
        }
        let mut receiver = connect(&sb)?;
        connected.push(t0.elapsed().as_secs_f64() * 1e3);
        let deadline = t0 + Duration::from_millis(a.timeout_ms);
        let mut seq = 0u32;
        let mut arrived = None;
        while arrived.is_none() && Instant::now() < deadline {
            seq += 1;
            sender.send(0, &[&frame(mb, ma, seq)], &VirtioNetHdr::default());
            sender.recv(0, |_, _| {});
            let spin = Instant::now() + Duration::from_micros(200);
            while arrived.is_none() && Instant::now() < spin {
                receiver.recv(0, |_, p| {
                    if p.len() >= 14 && p[..6] == mb.0 && p[6..12] == ma.0 {
                        arrived = Some(t0.elapsed());
                    }
                });
            }
        }
        match arrived {
            Some(t) => reach.push(t.as_secs_f64() * 1e3),
            None => failed += 1,
        }
        drop(sender);
        drop(receiver);
        rpc(&a.control_a, "vnic.remove", json!({ "name": na }))?;
        rpc(&a.control_b, "vnic.remove", json!({ "name": nb }))?;
    }
    let reach = sorted(reach);
    let rpc_done = sorted(rpc_done);
    let connected = sorted(connected);
    println!(
        "result adds={} reached={} failed={failed} reach_p50_ms={:.2} reach_p99_ms={:.2} reach_max_ms={:.2} rpc_p50_ms={:.2} rpc_p99_ms={:.2} guest_connected_p50_ms={:.2}",
        a.adds,
        reach.len(),
        percentile(&reach, 0.5),
        percentile(&reach, 0.99),
        reach.last().copied().unwrap_or(f64::NAN),
        percentile(&rpc_done, 0.5),
        percentile(&rpc_done, 0.99),
        percentile(&connected, 0.5),
    );
    println!(
        "vnic.add on host B until host A's guest reaches the new guest: p50 {:.1} ms, p99 {:.1} ms over {} adds ({} never reached); the add's RPC itself (etcd write confirmed): p50 {:.1} ms; the new guest connected: p50 {:.1} ms",
        percentile(&reach, 0.5),
        percentile(&reach, 0.99),
        a.adds,
        failed,
        percentile(&rpc_done, 0.5),
        percentile(&connected, 0.5)
    );
    if failed > 0 {
        return Err(format!("{failed} adds never reached"));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// An etcd client URL.
    #[arg(long)]
    etcd: String,
    /// The followed daemon's `directory.prefix`.
    #[arg(long)]
    prefix: String,
    /// The followed daemon's control socket.
    #[arg(long)]
    control: PathBuf,
    /// The followed daemon's pid (its directory threads' CPU, its RSS).
    #[arg(long)]
    pid: u32,
    #[arg(long, default_value_t = 100)]
    hosts: u16,
    #[arg(long, default_value_t = 100)]
    vnics_per_host: u16,
    /// Networks each simulated host is a member of.
    #[arg(long, default_value_t = 10)]
    networks_per_host: u16,
    #[arg(long, default_value_t = 10)]
    changes_per_sec: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Changes written while the daemon cannot reach etcd.
    #[arg(long, default_value_t = 1000)]
    missed_changes: u32,
    /// Shell command that cuts the daemon off etcd (and one that restores
    /// it); without them the outage part is skipped.
    #[arg(long)]
    cut: Option<String>,
    #[arg(long)]
    restore: Option<String>,
}

/// CPU seconds of the daemon's directory threads, and its RSS in KiB.
fn directory_cpu_and_rss(pid: u32) -> (f64, u64) {
    let tick = 100.0; // USER_HZ on Linux
    let mut cpu = 0.0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if !comm.starts_with("snapnet-dir") {
                continue;
            }
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            // Fields after the parenthesised name: utime is the 14th, stime the 15th.
            if let Some(rest) = stat.rsplit(')').next() {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() > 13 {
                    let ut: f64 = f[11].parse().unwrap_or(0.0);
                    let st: f64 = f[12].parse().unwrap_or(0.0);
                    cpu += (ut + st) / tick;
                }
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

struct SimHost {
    id: String,
    ip: [u8; 4],
    lease: i64,
}

fn host_value(h: &SimHost, i: u16) -> String {
    let ip = std::net::Ipv4Addr::from(h.ip);
    json!({ "underlay_ip": ip.to_string(), "mac": mac(0xc, 0, i).to_string() }).to_string()
}

fn mac_value(host: &str) -> String {
    json!({ "host": host }).to_string()
}

/// Polls the daemon until its uplink has the directory at `revision`
/// (and `ok` holds of the status); the time it took.
fn wait_programmed(
    control: &Path,
    revision: i64,
    timeout: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut c = Rpc::connect(control).map_err(|e| e.to_string())?;
    loop {
        let s = c
            .call("directory.status", json!({}))
            .map_err(|e| e.to_string())?;
        if s["programmed_revision"].as_i64().unwrap_or(0) >= revision && ok(&s) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > timeout {
            return Err(format!(
                "revision {revision} not programmed within {timeout:?}: {s}"
            ));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

pub fn run_scale(a: ScaleArgs) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(scale(a))
}

async fn scale(a: ScaleArgs) -> Result<(), String> {
    let e = |e: etcd_client::Error| e.to_string();
    let mut etcd = Client::connect([&a.etcd], None).await.map_err(e)?;
    let (_, rss_before) = directory_cpu_and_rss(a.pid);
    // The simulated hosts, each under its own lease, as real hosts would.
    let mut hosts = Vec::new();
    for h in 0..a.hosts {
        let lease = etcd.lease_grant(3600, None).await.map_err(e)?.id();
        hosts.push(SimHost {
            id: format!("sim-{h}"),
            ip: [10, 200, (h >> 8) as u8, h as u8],
            lease,
        });
    }
    let p = &a.prefix;
    let t_load = Instant::now();
    let mut last_rev = 0;
    // Which host each simulated MAC is on now.
    let mut owner: BTreeMap<(u32, MacAddr), usize> = BTreeMap::new();
    for (i, h) in hosts.iter().enumerate() {
        let opts = || Some(PutOptions::new().with_lease(h.lease));
        etcd.put(
            format!("{p}/hosts/{}", h.id),
            host_value(h, i as u16),
            opts(),
        )
        .await
        .map_err(e)?;
        for n in 0..a.networks_per_host {
            let network = 7000 + u32::from((i as u16 + n) % 50);
            etcd.put(format!("{p}/members/{network}/{}", h.id), "{}", opts())
                .await
                .map_err(e)?;
        }
        for v in 0..a.vnics_per_host {
            let network = 7000 + u32::from((i as u16 + v % a.networks_per_host) % 50);
            let m = mac(0xd, i as u16, v);
            let r = etcd
                .put(format!("{p}/macs/{network}/{m}"), mac_value(&h.id), opts())
                .await
                .map_err(e)?;
            last_rev = r.header().map(|h| h.revision()).unwrap_or(last_rev);
            owner.insert((network, m), i);
        }
    }
    let entries = owner.len();
    let loaded = t_load.elapsed();
    let first = wait_programmed(&a.control, last_rev, Duration::from_secs(60), |s| {
        s["remote_macs"].as_u64().unwrap_or(0) >= entries as u64
    })?;
    let (_, rss_loaded) = directory_cpu_and_rss(a.pid);
    println!(
        "loaded {entries} entries of {} hosts into etcd in {:.1} s; the daemon's table had them {:.0} ms after the last write; RSS {} -> {} KiB (+{} KiB)",
        a.hosts,
        loaded.as_secs_f64(),
        first.as_secs_f64() * 1e3,
        rss_before,
        rss_loaded,
        rss_loaded.saturating_sub(rss_before)
    );

    // Steady changes: a guest moves to another simulated host (one put),
    // `changes_per_sec` a second; each timed until the uplink has it.
    let keys: Vec<(u32, MacAddr)> = owner.keys().copied().collect();
    let (cpu0, _) = directory_cpu_and_rss(a.pid);
    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(a.changes_per_sec));
    let mut samples = Vec::new();
    let mut k = 0usize;
    let mut next = Instant::now();
    while t0.elapsed() < Duration::from_secs(a.seconds) {
        let (network, m) = keys[(k * 7919) % keys.len()];
        let to = (owner[&(network, m)] + 1) % hosts.len();
        owner.insert((network, m), to);
        let h = &hosts[to];
        let put = Instant::now();
        let r = etcd
            .put(
                format!("{p}/macs/{network}/{m}"),
                mac_value(&h.id),
                Some(PutOptions::new().with_lease(h.lease)),
            )
            .await
            .map_err(e)?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        let took = wait_programmed(&a.control, rev, Duration::from_secs(10), |_| true)?;
        let _ = took;
        samples.push(put.elapsed().as_secs_f64() * 1e3);
        k += 1;
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, rss_steady) = directory_cpu_and_rss(a.pid);
    let s = sorted(samples);
    let cpu_pct = (cpu1 - cpu0) / wall * 100.0;
    println!(
        "result entries={entries} changes={} conv_p50_ms={:.2} conv_p99_ms={:.2} conv_max_ms={:.2} directory_cpu_pct={:.2} rss_kib={} rss_added_kib={}",
        s.len(),
        percentile(&s, 0.5),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(f64::NAN),
        cpu_pct,
        rss_steady,
        rss_steady.saturating_sub(rss_before)
    );
    println!(
        "following {entries} entries at {} changes/s for {wall:.0} s: put -> uplink programmed p50 {:.1} ms, p99 {:.1} ms; the directory's threads used {cpu_pct:.2} % of a core",
        a.changes_per_sec,
        percentile(&s, 0.5),
        percentile(&s, 0.99)
    );

    let (Some(cut), Some(restore)) = (&a.cut, &a.restore) else {
        return Ok(());
    };
    // An outage: the daemon loses etcd, `missed_changes` happen meanwhile,
    // then etcd is back: how long until its table is the directory's again.
    let sh = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .status()
            .map_err(|e| e.to_string())
            .and_then(|s| s.success().then_some(()).ok_or(format!("{cmd}: {s}")))
    };
    sh(cut)?;
    let t_cut = Instant::now();
    loop {
        let s = rpc(&a.control, "directory.status", json!({}))?;
        if s["state"] == "degraded" {
            break;
        }
        if t_cut.elapsed() > Duration::from_secs(30) {
            return Err(format!("the daemon never saw the outage: {s}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = t_cut.elapsed();
    let mut rev = 0;
    for c in 0..a.missed_changes as usize {
        let (network, m) = keys[((k + c) * 7919) % keys.len()];
        let to = (owner[&(network, m)] + 1) % hosts.len();
        owner.insert((network, m), to);
        let h = &hosts[to];
        let r = etcd
            .put(
                format!("{p}/macs/{network}/{m}"),
                mac_value(&h.id),
                Some(PutOptions::new().with_lease(h.lease)),
            )
            .await
            .map_err(e)?;
        rev = r.header().map(|h| h.revision()).unwrap_or(rev);
    }
    sh(restore)?;
    let recovered = wait_programmed(&a.control, rev, Duration::from_secs(60), |s| {
        s["state"] == "synced"
    })?;
    // Consistent: every simulated MAC points where etcd says.
    let list = rpc(&a.control, "uplink.list", json!({}))?;
    let ip_of: Vec<String> = hosts
        .iter()
        .map(|h| std::net::Ipv4Addr::from(h.ip).to_string())
        .collect();
    let mut wrong = 0usize;
    let mut seen = 0usize;
    for u in list.as_array().into_iter().flatten() {
        for m in u["overlay"]["macs"].as_array().into_iter().flatten() {
            let (Some(network), Some(Ok(mac))) = (
                m["network"].as_u64(),
                m["mac"].as_str().map(str::parse::<MacAddr>),
            ) else {
                continue;
            };
            if let Some(o) = owner.get(&(network as u32, mac)) {
                seen += 1;
                if m["remote"].as_str() != Some(ip_of[*o].as_str()) {
                    wrong += 1;
                }
            }
        }
    }
    println!(
        "result outage_noticed_ms={:.0} missed_changes={} recovery_ms={:.0} entries_checked={seen} entries_wrong={wrong}",
        noticed.as_secs_f64() * 1e3,
        a.missed_changes,
        recovered.as_secs_f64() * 1e3
    );
    println!(
        "etcd back after {} missed changes: the table was the directory's again {:.0} ms later ({seen} entries checked, {wrong} wrong)",
        a.missed_changes,
        recovered.as_secs_f64() * 1e3
    );
    for h in &hosts {
        let _ = etcd.lease_revoke(h.lease).await;
    }
    if wrong > 0 || seen != entries {
        return Err(format!("{wrong} wrong, {seen} of {entries} entries seen"));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct LookupArgs {
    #[arg(long, default_value_t = 10_000)]
    many: u32,
    #[arg(long, default_value_t = 10)]
    few: u32,
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    #[arg(long, default_value_t = 2_000_000)]
    lookups: u32,
}

/// A table of `macs` guest MACs over 100 remote hosts, and the MACs.
fn lookup_table(macs: u32) -> (OverlayTable, Vec<MacAddr>) {
    let remotes: Vec<RemoteHost> = (0..100u16)
        .map(|h| RemoteHost {
            ip: std::net::Ipv4Addr::new(10, 200, 0, h as u8 + 1),
            mac: mac(0xc, 0, h),
            networks: vec![7000],
        })
        .collect();
    let list: Vec<MacAddr> = (0..macs)
        .map(|i| mac(0xd, (i >> 16) as u16, i as u16))
        .collect();
    let cfg = OverlayConfig {
        local_ip: std::net::Ipv4Addr::new(10, 200, 1, 1),
        macs: list
            .iter()
            .enumerate()
            .map(|(i, m)| RemoteMac {
                network: 7000,
                mac: *m,
                remote: remotes[i % remotes.len()].ip,
                ips: vec![],
            })
            .collect(),
        remotes,
    };
    let table = OverlayTable::new(&cfg, mac(0xe, 0, 0)).expect("a valid table");
    (table, list)
}

/// ns per lookup of `n` destinations drawn across the table.
fn time_lookups(table: &OverlayTable, macs: &[MacAddr], n: u32) -> f64 {
    let mut out = Vec::with_capacity(4);
    let mut x = 0x9e37_79b9_u32;
    let mut hits = 0usize;
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let m = macs[x as usize % macs.len()];
        table.targets(7000, std::hint::black_box(m), &mut out);
        hits += out.len();
    }
    std::hint::black_box(hits);
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

pub fn run_lookup(a: LookupArgs) -> Result<(), String> {
    let (many, many_macs) = lookup_table(a.many);
    let (few, few_macs) = lookup_table(a.few);
    let (mut m, mut f) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        // Interleaved, alternating which goes first.
        if round % 2 == 0 {
            m.push(time_lookups(&many, &many_macs, a.lookups));
            f.push(time_lookups(&few, &few_macs, a.lookups));
        } else {
            f.push(time_lookups(&few, &few_macs, a.lookups));
            m.push(time_lookups(&many, &many_macs, a.lookups));
        }
    }
    let (m, f) = (sorted(m), sorted(f));
    let (mm, fm) = (percentile(&m, 0.5), percentile(&f, 0.5));
    println!(
        "result many={} few={} many_ns={mm:.2} few_ns={fm:.2} ratio={:.2}",
        a.many,
        a.few,
        mm / fm
    );
    println!(
        "overlay lookup per frame: {mm:.1} ns with {} entries, {fm:.1} ns with {} ({:.2}x), medians of {} interleaved rounds",
        a.many,
        a.few,
        mm / fm,
        a.rounds
    );
    Ok(())
}
