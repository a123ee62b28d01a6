//! Prometheus / OpenMetrics text exposition of the daemon's counters
//! (`--metrics-listen ADDR`, path `/metrics`), encoded by `prometheus-client`.
//! A scrape reads the engines' published counters; it never touches an
//! engine.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::background::Background;
use super::daemon::Daemon;
use super::rpc::Context;
use crate::switch::{PortCounters, PortDrop};
use crate::uplink::UplinkCounter;
use crate::vnic::{DropReason, QueueCounters};

type Labels = Vec<(&'static str, String)>;

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    registry.register(name, help, f.clone());
    f
}

/// The exposition text for the daemon's current counters.
pub fn render(
    d: &Daemon,
    uptime: f64,
    directory: Option<&crate::directory::StatusReport>,
) -> String {
    let mut r = Registry::with_prefix("snapnet");
    let vnic_packets = counter_family(
        &mut r,
        "vnic_packets",
        "Frames per vNIC queue pair and direction (tx: from the guest, rx: to the guest)",
    );
    let vnic_bytes = counter_family(
        &mut r,
        "vnic_bytes",
        "Bytes per vNIC queue pair and direction",
    );
    let vnic_drops = counter_family(
        &mut r,
        "vnic_drops",
        "Frames dropped or guest buffers returned unused, by reason",
    );
    let vnic_backpressure = counter_family(
        &mut r,
        "vnic_backpressure",
        "Guest TX batches cut short because the frame pool was empty",
    );
    let port_packets = counter_family(
        &mut r,
        "switch_port_packets",
        "Frames per switch port and direction (rx: into the switch)",
    );
    let port_bytes = counter_family(
        &mut r,
        "switch_port_bytes",
        "Bytes per switch port and direction",
    );
    let port_drops = counter_family(
        &mut r,
        "switch_port_drops",
        "Frames the switch dropped, by port and reason",
    );
    let port_backpressure = counter_family(
        &mut r,
        "switch_port_backpressure",
        "Times a unicast frame from a port waited for its destination's full link",
    );
    let rings = Family::<Labels, Gauge>::default();
    r.register(
        "vnic_rings_attached",
        "Virtqueues a guest driver has set up",
        rings.clone(),
    );
    let blackout = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    r.register(
        "vnic_upgrade_blackout_seconds",
        "How long the vNIC's engines stood still in the upgrade that brought it to this process",
        blackout.clone(),
    );
    let engines = Family::<Labels, Gauge>::default();
    r.register(
        "group_engines",
        "Engines placed in an engine group",
        engines.clone(),
    );
    let cpu = Family::<Labels, Counter<f64>>::default();
    r.register(
        "group_thread_cpu_seconds",
        "CPU time of an engine group's thread",
        cpu.clone(),
    );
    let up = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    r.register(
        "uptime_seconds",
        "Seconds since the daemon started",
        up.clone(),
    );
    up.set(uptime);

    let port_metrics = |name: &str, c: &PortCounters| {
        let with =
            |k: &'static str, val: &str| vec![("port", name.to_string()), (k, val.to_string())];
        port_packets
            .get_or_create(&with("direction", "rx"))
            .inc_by(c.rx_packets);
        port_packets
            .get_or_create(&with("direction", "tx"))
            .inc_by(c.tx_packets);
        port_bytes
            .get_or_create(&with("direction", "rx"))
            .inc_by(c.rx_bytes);
        port_bytes
            .get_or_create(&with("direction", "tx"))
            .inc_by(c.tx_bytes);
        port_backpressure
            .get_or_create(&vec![("port", name.to_string())])
            .inc_by(c.backpressure);
        for reason in PortDrop::ALL {
            port_drops
                .get_or_create(&with("reason", reason.as_str()))
                .inc_by(c.dropped(reason));
        }
    };
    for v in d.report() {
        rings
            .get_or_create(&vec![("vnic", v.name.clone())])
            .set(v.rings_attached as i64);
        if let Some(b) = v.upgrade_blackout {
            blackout
                .get_or_create(&vec![("vnic", v.name.clone())])
                .set(b.as_secs_f64());
        }
        for (q, c) in v.queues.iter().enumerate() {
            let l = |extra: Vec<(&'static str, String)>| {
                let mut l = vec![("vnic", v.name.clone()), ("queue", q.to_string())];
                l.extend(extra);
                l
            };
            let QueueCounters {
                tx_packets,
                tx_bytes,
                rx_packets,
                rx_bytes,
                backpressure,
                ..
            } = *c;
            vnic_packets
                .get_or_create(&l(vec![("direction", "tx".into())]))
                .inc_by(tx_packets);
            vnic_packets
                .get_or_create(&l(vec![("direction", "rx".into())]))
                .inc_by(rx_packets);
            vnic_bytes
                .get_or_create(&l(vec![("direction", "tx".into())]))
                .inc_by(tx_bytes);
            vnic_bytes
                .get_or_create(&l(vec![("direction", "rx".into())]))
                .inc_by(rx_bytes);
            vnic_backpressure
                .get_or_create(&l(vec![]))
                .inc_by(backpressure);
            for reason in DropReason::ALL {
                vnic_drops
                    .get_or_create(&l(vec![("reason", reason.as_str().into())]))
                    .inc_by(c.dropped(reason));
            }
        }
        port_metrics(&v.name, &v.port);
    }
    let uplink_counters = counter_family(
        &mut r,
        "uplink",
        "Uplink queue counters by name (rx/tx packets and bytes, segments, drops by reason, ring events)",
    );
    let uplink_kernel = counter_family(
        &mut r,
        "uplink_kernel",
        "The kernel's counters of each uplink AF_XDP socket (XDP_STATISTICS)",
    );
    for u in d.uplink_report() {
        for (q, c, k) in &u.queues {
            let l = |name: &str| {
                vec![
                    ("uplink", u.name.clone()),
                    ("queue", q.to_string()),
                    ("counter", name.to_string()),
                ]
            };
            for counter in UplinkCounter::ALL {
                uplink_counters
                    .get_or_create(&l(counter.as_str()))
                    .inc_by(c.get(counter));
            }
            for (name, v) in [
                ("rx_dropped", k.rx_dropped),
                ("rx_invalid_descs", k.rx_invalid_descs),
                ("tx_invalid_descs", k.tx_invalid_descs),
                ("rx_ring_full", k.rx_ring_full),
                ("rx_fill_ring_empty", k.rx_fill_ring_empty),
                ("tx_ring_empty", k.tx_ring_empty),
            ] {
                uplink_kernel.get_or_create(&l(name)).inc_by(v);
            }
        }
        port_metrics(&u.name, &u.port);
    }
    for g in &d.config().groups {
        let n = d.group_engines(&g.name).unwrap_or(0);
        engines
            .get_or_create(&vec![("group", g.name.clone())])
            .set(n as i64);
        for (i, (_, secs)) in d
            .group_thread_cpu(&g.name)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            cpu.get_or_create(&vec![("group", g.name.clone()), ("thread", i.to_string())])
                .inc_by(secs);
        }
    }
    if let Some(status) = directory {
        directory_metrics(&mut r, status);
    }
    if let Ok(status) = d.pony_status() {
        pony_metrics(&mut r, &status);
    }
    let mut out = String::new();
    if encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

/// Pony Express: the engine's counters, and how many applications,
/// connections and flows it has.
fn pony_metrics(r: &mut Registry, status: &crate::pony::PonyStatus) {
    let packets = counter_family(
        r,
        "pony_packets",
        "Pony engine counters: packets, ACKs, retransmissions, duplicates, drops by reason",
    );
    for (name, v) in status.counters.named() {
        packets.get_or_create(&vec![("counter", name)]).inc_by(v);
    }
    let size = Family::<Labels, Gauge>::default();
    r.register(
        "pony_objects",
        "Pony applications, connections and flows",
        size.clone(),
    );
    for (name, v) in [
        ("apps", status.apps.len()),
        ("connections", status.connections.len()),
        ("flows", status.flows.len()),
    ] {
        size.get_or_create(&vec![("kind", name.to_string())])
            .set(v as i64);
    }
}

/// The overlay directory's state (one gauge per state, 1 for the current
/// one), the table's size, and its counters.
fn directory_metrics(r: &mut Registry, status: &crate::directory::StatusReport) {
    use crate::directory::State;
    let state = Family::<Labels, Gauge>::default();
    r.register(
        "directory_state",
        "The overlay directory's state: 1 for the current one (degraded: etcd unreachable, forwarding with the last table)",
        state.clone(),
    );
    for (name, s) in [
        ("connecting", State::Connecting),
        ("synced", State::Synced),
        ("degraded", State::Degraded),
    ] {
        state
            .get_or_create(&vec![("state", name.to_string())])
            .set(i64::from(status.state == s));
    }
    let size = Family::<Labels, Gauge>::default();
    r.register(
        "directory_entries",
        "Hosts and guest MACs in the directory's table (hosts, remote_hosts, remote_macs, local_macs)",
        size.clone(),
    );
    for (name, v) in [
        ("hosts", status.hosts),
        ("remote_hosts", status.remote_hosts),
        ("remote_macs", status.remote_macs),
        ("local_macs", status.local_macs),
    ] {
        size.get_or_create(&vec![("kind", name.to_string())])
            .set(v as i64);
    }
    let counters = counter_family(
        r,
        "directory_events",
        "The overlay directory's counters by name (watch events, resyncs, publishes, programs, failures)",
    );
    let c = &status.counters;
    for (name, v) in [
        ("events", c.events),
        ("malformed", c.malformed),
        ("resyncs", c.resyncs),
        ("lease_regrants", c.lease_regrants),
        ("publishes", c.publishes),
        ("publish_failures", c.publish_failures),
        ("repairs", c.repairs),
        ("claimed_elsewhere", c.claimed_elsewhere),
        ("programs", c.programs),
        ("program_failures", c.program_failures),
    ] {
        counters
            .get_or_create(&vec![("counter", name.to_string())])
            .inc_by(v);
    }
}

/// The HTTP endpoint serving `/metrics`.
pub struct MetricsServer {
    thread: Background,
    pub addr: SocketAddr,
    listener: TcpListener,
}

impl MetricsServer {
    pub fn start(addr: &str, ctx: Arc<Context>) -> io::Result<Self> {
        Self::adopt(TcpListener::bind(addr)?, ctx)
    }

    /// Serves on a listener already bound (the one an upgrade's old process
    /// handed over: scrapers keep their address and never see it close).
    pub fn adopt(listener: TcpListener, ctx: Arc<Context>) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let kept = listener.try_clone()?;
        let thread = Background::spawn("metrics", move |stop| {
            while !stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &ctx);
                    }
                    // Nothing to accept (or a passing error): look again soon.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        Ok(Self {
            thread,
            addr,
            listener: kept,
        })
    }

    pub fn stop(mut self) {
        self.thread.stop();
    }

    /// The listening socket, for the process an upgrade starts.
    pub fn listener(&self) -> &TcpListener {
        &self.listener
    }
}

fn answer(stream: TcpStream, ctx: &Context) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.by_ref().take(8192).read_line(&mut request_line)?;
    // Skip the headers.
    let mut line = String::new();
    while reader.by_ref().take(8192).read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut w = stream;
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    if !request_line.starts_with("GET ") || (path != "/metrics" && path != "/") {
        return write!(
            w,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let body = {
        let guard = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().map(|d| {
            let directory = ctx.directory.get().map(|dir| dir.status());
            render(d, ctx.started.elapsed().as_secs_f64(), directory.as_ref())
        })
    };
    // No daemon: it is stopping, or it was handed over to a new process
    // that serves on the same listener. A failed scrape, never figures from
    // a daemon that no longer runs (they would look like a counter reset).
    let Some(body) = body else {
        return write!(
            w,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    )
}
