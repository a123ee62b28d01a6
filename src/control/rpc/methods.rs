//! The control API's methods: parameters in, the daemon's modules called,
//! results out. Every change goes through `Daemon`, whose operations validate
//! first and reach running engines only through their mailboxes.

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::protocol::*;
use crate::control::config::{
    AddressPair, ConfigError, GroupConfig, RateLimit, UplinkConfig, VnicConfig,
};
use crate::control::daemon::{Daemon, DaemonError, PortSecurityChange, UplinkReport, VnicReport};
use crate::switch::{PortCounters, PortDrop};
use crate::uplink::xsk::XskKernelStats;
use crate::uplink::{UplinkCounter, UplinkCounters};
use crate::vnic::{DropReason, QueueCounters};
use snapnet_wire::MacAddr;

/// Every method the server answers (the OpenRPC document lists the same).
pub const METHODS: &[&str] = &[
    "vnic.add",
    "vnic.remove",
    "vnic.list",
    "vnic.get",
    "vnic.stats",
    "vnic.update",
    "group.add",
    "group.remove",
    "group.list",
    "group.stats",
    "uplink.add",
    "uplink.remove",
    "uplink.list",
    "uplink.stats",
    "uplink.update",
    "switch.fdb.list",
    "switch.fdb.add",
    "switch.fdb.remove",
    "directory.status",
    "pony.status",
    "daemon.status",
    "daemon.upgrade",
    "daemon.shutdown",
];

/// What the methods work on.
pub struct Context {
    /// `None` once the daemon is stopping.
    pub daemon: Mutex<Option<Daemon>>,
    pub started: Instant,
    /// Asks the main thread to stop the daemon.
    pub request_shutdown: Box<dyn Fn() + Send + Sync>,
    /// Hands the daemon over to a new binary (`daemon.upgrade`); `None`
    /// where the process cannot be replaced (tests, fuzzing).
    pub upgrade: Option<Box<UpgradeHook>>,
    /// Set while `daemon.upgrade` runs, and for good once it succeeded: the
    /// control server accepts no new client, which waits in the socket's
    /// backlog for whichever process serves afterwards (a client this one
    /// accepted would only be told that it is going away).
    pub accept_paused: std::sync::atomic::AtomicBool,
    /// The overlay directory, when the config has one (set once, before
    /// the control socket serves).
    pub directory: std::sync::OnceLock<crate::directory::Directory>,
}

/// Hands `daemon` over to the binary at the path (or this one's): the new
/// process's report, or why not and whether the daemon still serves.
pub type UpgradeHook =
    dyn Fn(&mut Daemon, Option<std::path::PathBuf>) -> Result<Value, UpgradeFailure> + Send + Sync;

/// Why `daemon.upgrade` failed.
pub struct UpgradeFailure {
    pub message: String,
    /// The daemon's vNICs had been handed over: it serves nothing now.
    pub daemon_gone: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeParams {
    #[serde(default)]
    binary: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VnicUpdateParams {
    name: String,
    #[serde(default)]
    mtu: Option<u16>,
    #[serde(default)]
    group: Option<String>,
    /// Present (a list, possibly empty): enforce those addresses; `null`:
    /// stop checking addresses. Absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    allowed_ips: Option<Option<Vec<std::net::IpAddr>>>,
    /// A list replaces the pairs (`[]` removes them); absent: unchanged.
    #[serde(default)]
    allowed_address_pairs: Option<Vec<AddressPair>>,
    #[serde(default)]
    port_security: Option<bool>,
    /// Same rule: a limit, `null` (no limit), or absent (unchanged).
    #[serde(default, deserialize_with = "present")]
    tx_limit: Option<Option<RateLimit>>,
    #[serde(default, deserialize_with = "present")]
    rx_limit: Option<Option<RateLimit>>,
    #[serde(default)]
    weight: Option<u32>,
}

/// Tells an absent member (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkUpdateParams {
    name: String,
    #[serde(default)]
    overlay: Option<crate::uplink::overlay::OverlayConfig>,
    #[serde(default, deserialize_with = "present")]
    tx_limit: Option<Option<RateLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FdbAddParams {
    mac: String,
    vnic: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FdbRemoveParams {
    mac: String,
    #[serde(default)]
    network: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn params<T: DeserializeOwned>(v: Value) -> Result<T, RpcError> {
    // Positional params are not part of this API.
    if v.is_array() {
        return Err(RpcError::new(
            INVALID_PARAMS,
            "params must be an object with named members",
        ));
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        RpcError::new(INVALID_PARAMS, format!("params: {at}{}", e.inner()))
    })
}

fn mac(s: &str, what: &str) -> Result<MacAddr, RpcError> {
    s.parse()
        .map_err(|e| RpcError::new(INVALID_PARAMS, format!("params.{what}: {e}")))
}

impl From<DaemonError> for RpcError {
    fn from(e: DaemonError) -> Self {
        let code = match &e {
            DaemonError::Config(ConfigError::Duplicate { .. }) => ALREADY_EXISTS,
            DaemonError::Config(ConfigError::Parse { .. }) => INVALID_PARAMS,
            DaemonError::Config(_) => INVALID_VALUE,
            DaemonError::NotFound(_) => NOT_FOUND,
            DaemonError::InUse(_) => IN_USE,
            DaemonError::Device(_) => INVALID_VALUE,
            DaemonError::SocketPath(_) => INVALID_VALUE,
            _ => RESOURCE,
        };
        // Config paths are relative to the whole config; say what was sent.
        RpcError::new(code, e.to_string().replace("config: ", ""))
    }
}

/// A config error about the entry being added is about the request's params.
fn as_params(e: DaemonError, entry: &str) -> RpcError {
    let mut r = RpcError::from(e);
    r.message = r.message.replace(entry, "params.");
    r
}

/// Runs one method.
pub fn call(ctx: &Context, method: &str, p: Value) -> Result<Value, RpcError> {
    let mut guard = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner());
    let Some(d) = guard.as_mut() else {
        return Err(RpcError::new(SHUTTING_DOWN, "the daemon is shutting down"));
    };
    match method {
        "vnic.add" => {
            let v: VnicConfig = params(p)?;
            let name = v.name.clone();
            let at = format!("vnics[{}].", d.config().vnics.len());
            d.add_vnic(v).map_err(|e| as_params(e, &at))?;
            let answer = vnic_info(d, &name)?;
            Ok(publish_vnics(ctx, guard, answer))
        }
        "vnic.remove" => {
            let NameParams { name } = params(p)?;
            d.remove_vnic(&name)?;
            Ok(publish_vnics(ctx, guard, json!({ "removed": name })))
        }
        "vnic.list" => {
            let NoParams {} = params(p)?;
            let names: Vec<String> = d.config().vnics.iter().map(|v| v.name.clone()).collect();
            Ok(Value::Array(
                names
                    .iter()
                    .map(|n| vnic_info(d, n))
                    .collect::<Result<_, _>>()?,
            ))
        }
        "vnic.get" => {
            let NameParams { name } = params(p)?;
            vnic_info(d, &name)
        }
        "vnic.stats" => {
            let NameParams { name } = params(p)?;
            let r = d
                .report()
                .into_iter()
                .find(|r| r.name == name)
                .ok_or_else(|| RpcError::new(NOT_FOUND, format!("no vNIC '{name}'")))?;
            Ok(vnic_stats(&r))
        }
        "vnic.update" => {
            let u: VnicUpdateParams = params(p)?;
            if d.config().vnics.iter().all(|v| v.name != u.name) {
                return Err(RpcError::new(NOT_FOUND, format!("no vNIC '{}'", u.name)));
            }
            if let Some(mtu) = u.mtu {
                d.set_vnic_mtu(&u.name, mtu)?;
            }
            if let Some(group) = &u.group {
                d.move_vnic(&u.name, group)?;
            }
            if u.allowed_ips.is_some()
                || u.allowed_address_pairs.is_some()
                || u.port_security.is_some()
            {
                let change = PortSecurityChange {
                    allowed_ips: u.allowed_ips,
                    allowed_address_pairs: u.allowed_address_pairs,
                    port_security: u.port_security,
                };
                d.set_vnic_port_security(&u.name, change)
                    .map_err(|e| as_params(e, &format!("vnics[{}].", vnic_at(d, &u.name))))?;
            }
            if u.tx_limit.is_some() || u.rx_limit.is_some() || u.weight.is_some() {
                d.set_vnic_shaping(&u.name, u.tx_limit, u.rx_limit, u.weight)?;
            }
            let answer = vnic_info(d, &u.name)?;
            Ok(publish_vnics(ctx, guard, answer))
        }
        "group.add" => {
            let g: GroupConfig = params(p)?;
            let name = g.name.clone();
            let at = format!("groups[{}].", d.config().groups.len());
            d.add_group(g).map_err(|e| as_params(e, &at))?;
            group_info(d, &name)
        }
        "group.remove" => {
            let NameParams { name } = params(p)?;
            d.remove_group(&name)?;
            Ok(json!({ "removed": name }))
        }
        "group.list" => {
            let NoParams {} = params(p)?;
            let names: Vec<String> = d.config().groups.iter().map(|g| g.name.clone()).collect();
            Ok(Value::Array(
                names
                    .iter()
                    .map(|n| group_info(d, n))
                    .collect::<Result<_, _>>()?,
            ))
        }
        "group.stats" => {
            let NameParams { name } = params(p)?;
            let threads = d.group_thread_cpu(&name)?;
            let (engines, history) = d.group_engine_stats(&name)?;
            Ok(json!({
                "name": name,
                "engines": d.group_engines(&name)?,
                "threads": threads.iter().map(|(tid, secs)| json!({ "tid": tid, "cpu_seconds": secs })).collect::<Vec<_>>(),
                "cpu_seconds": threads.iter().map(|(_, s)| s).sum::<f64>(),
                "engine_stats": engines.iter().map(|(n, e)| json!({
                    "engine": n,
                    "busy_seconds": e.busy_ns as f64 / 1e9,
                    "cpu_seconds": e.cpu_ns as f64 / 1e9,
                    "polls": e.polls,
                    "busy_polls": e.busy_polls,
                    "work": e.work,
                    "delay_p50_us": e.delay_p50_ns as f64 / 1e3,
                    "delay_p99_us": e.delay_p99_ns as f64 / 1e3,
                    "delay_max_us": e.delay_max_ns as f64 / 1e3,
                })).collect::<Vec<_>>(),
                "thread_history": history.iter().map(|(t, n)| json!({ "seconds": t, "threads": n })).collect::<Vec<_>>(),
            }))
        }
        "uplink.add" => {
            let u: UplinkConfig = params(p)?;
            let name = u.name.clone();
            let at = format!("uplinks[{}].", d.config().uplinks.len());
            d.add_uplink(u).map_err(|e| as_params(e, &at))?;
            uplink_info(d, &name)
        }
        "uplink.remove" => {
            let NameParams { name } = params(p)?;
            d.remove_uplink(&name)?;
            Ok(json!({ "removed": name }))
        }
        "uplink.list" => {
            let NoParams {} = params(p)?;
            let names: Vec<String> = d.config().uplinks.iter().map(|u| u.name.clone()).collect();
            Ok(Value::Array(
                names
                    .iter()
                    .map(|n| uplink_info(d, n))
                    .collect::<Result<_, _>>()?,
            ))
        }
        "uplink.stats" => {
            let NameParams { name } = params(p)?;
            let r = d
                .uplink_report()
                .into_iter()
                .find(|r| r.name == name)
                .ok_or_else(|| RpcError::new(NOT_FOUND, format!("no uplink '{name}'")))?;
            Ok(uplink_stats(&r))
        }
        "uplink.update" => {
            let u: UplinkUpdateParams = params(p)?;
            d.update_uplink(&u.name, u.overlay, u.tx_limit)?;
            uplink_info(d, &u.name)
        }
        "switch.fdb.list" => {
            let NoParams {} = params(p)?;
            let entries = d.fdb_entries()?;
            Ok(Value::Array(
                entries
                    .into_iter()
                    .map(|(network, mac, port, is_static)| json!({ "network": network, "mac": mac.to_string(), "port": port, "static": is_static }))
                    .collect(),
            ))
        }
        "switch.fdb.add" => {
            let a: FdbAddParams = params(p)?;
            let m = mac(&a.mac, "mac")?;
            if m.is_group() {
                return Err(RpcError::new(
                    INVALID_VALUE,
                    format!("params.mac: {m} is not a unicast address"),
                ));
            }
            let network = d.fdb_add(m, &a.vnic)?;
            Ok(json!({ "network": network, "mac": m.to_string(), "port": a.vnic, "static": true }))
        }
        "switch.fdb.remove" => {
            let r: FdbRemoveParams = params(p)?;
            let m = mac(&r.mac, "mac")?;
            d.fdb_remove(r.network, m)?;
            Ok(json!({ "removed": m.to_string() }))
        }
        "directory.status" => {
            let NoParams {} = params(p)?;
            let Some(dir) = ctx.directory.get() else {
                return Err(RpcError::new(
                    NOT_FOUND,
                    "no directory: the config has no `directory` section",
                ));
            };
            Ok(serde_json::to_value(dir.status()).unwrap_or_default())
        }
        "pony.status" => {
            let NoParams {} = params(p)?;
            let status = d.pony_status()?;
            Ok(serde_json::to_value(status).unwrap_or_default())
        }
        "daemon.status" => {
            let NoParams {} = params(p)?;
            let (free, _) = d.pool().free_frames();
            let (total, _) = d.pool().total_frames();
            Ok(json!({
                "version": crate::VERSION,
                "uptime_seconds": ctx.started.elapsed().as_secs_f64(),
                "vnics": d.config().vnics.len(),
                "uplinks": d.config().uplinks.len(),
                "groups": d.config().groups.len(),
                "pool": { "frames": total, "free_in_shared_list": free },
                "directory": ctx.directory.get().map(|dir| dir.status().state),
            }))
        }
        "daemon.upgrade" => {
            let UpgradeParams { binary } = params(p)?;
            let Some(hook) = ctx.upgrade.as_ref() else {
                return Err(RpcError::new(
                    RESOURCE,
                    "this process cannot be upgraded (it was not started by `snapnet serve`)",
                ));
            };
            ctx.accept_paused.store(true, Ordering::Release);
            match hook(d, binary) {
                Ok(report) => {
                    // Everything it held is the new process's now: nothing
                    // of it may be stopped or dropped here.
                    std::mem::forget(guard.take());
                    Ok(report)
                }
                Err(f) => {
                    if f.daemon_gone {
                        std::mem::forget(guard.take());
                    } else {
                        ctx.accept_paused.store(false, Ordering::Release);
                    }
                    Err(RpcError::new(RESOURCE, f.message))
                }
            }
        }
        "daemon.shutdown" => {
            let NoParams {} = params(p)?;
            drop(guard);
            (ctx.request_shutdown)();
            Ok(json!({ "shutting_down": true }))
        }
        _ => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("no method '{method}' (see schemas/openrpc.json)"),
        )),
    }
}

/// After a change to this host's vNICs: hands their new state to the
/// directory (numbered under the daemon's lock, written outside it, so
/// that the directory may take the lock to program the uplink meanwhile)
/// and says in the answer whether etcd has it. The local change stays made
/// either way; the directory writes it once etcd answers again.
fn publish_vnics(
    ctx: &Context,
    guard: std::sync::MutexGuard<'_, Option<Daemon>>,
    mut answer: Value,
) -> Value {
    let (Some(dir), Some(d)) = (ctx.directory.get(), guard.as_ref()) else {
        return answer;
    };
    let snapshot = dir.snapshot(d.directory_entries());
    drop(guard);
    let outcome = match dir.publish(snapshot) {
        Ok(()) => json!({ "published": true }),
        Err(e) => json!({ "published": false, "error": e.to_string() }),
    };
    if let Value::Object(m) = &mut answer {
        m.insert("directory".into(), outcome);
    }
    answer
}

/// The index of vNIC `name` in the config (how config errors name it).
fn vnic_at(d: &Daemon, name: &str) -> usize {
    d.config()
        .vnics
        .iter()
        .position(|v| v.name == name)
        .unwrap_or_default()
}

fn vnic_info(d: &Daemon, name: &str) -> Result<Value, RpcError> {
    let cfg = d.config();
    let v = cfg
        .vnics
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| RpcError::new(NOT_FOUND, format!("no vNIC '{name}'")))?;
    let rings = d
        .report()
        .into_iter()
        .find(|r| r.name == name)
        .map_or(0, |r| r.rings_attached);
    Ok(json!({
        "name": v.name,
        "mac": v.mac.to_string(),
        "mtu": v.mtu,
        "queue_pairs": v.queue_pairs,
        "role": v.role,
        "socket": cfg.socket_path(v),
        "group": cfg.group_of(v),
        "network": v.network,
        "allowed_ips": v.allowed_ips,
        "allowed_address_pairs": v.allowed_address_pairs,
        "port_security": v.port_security,
        "tx_limit": v.tx_limit,
        "rx_limit": v.rx_limit,
        "weight": v.weight,
        "connected": rings > 0,
        "rings_attached": rings,
    }))
}

fn uplink_info(d: &Daemon, name: &str) -> Result<Value, RpcError> {
    let cfg = d.config();
    let u = cfg
        .uplinks
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| RpcError::new(NOT_FOUND, format!("no uplink '{name}'")))?;
    let running = d.uplink_report().into_iter().find(|r| r.name == name);
    Ok(json!({
        "name": u.name,
        "interface": u.interface,
        "queues": u.queues,
        "xdp_mode": u.xdp_mode,
        "bind_mode": u.bind_mode,
        "mtu": u.mtu,
        "network": u.network,
        "tx_limit": u.tx_limit,
        "overlay": u.overlay,
        "group": cfg.uplink_group_of(u),
        "xdp_mode_in_use": running.as_ref().map(|r| r.xdp_mode),
        "zerocopy": running.as_ref().is_some_and(|r| r.zerocopy),
    }))
}

fn uplink_counters(c: &UplinkCounters, k: &XskKernelStats) -> Value {
    let mut v = Map::new();
    for counter in UplinkCounter::ALL {
        v.insert(counter.as_str().into(), c.get(counter).into());
    }
    v.insert(
        "kernel".into(),
        json!({
            "rx_dropped": k.rx_dropped,
            "rx_invalid_descs": k.rx_invalid_descs,
            "tx_invalid_descs": k.tx_invalid_descs,
            "rx_ring_full": k.rx_ring_full,
            "rx_fill_ring_empty": k.rx_fill_ring_empty,
            "tx_ring_empty": k.tx_ring_empty,
        }),
    );
    Value::Object(v)
}

/// The `uplink.stats` result: totals, per queue (with the kernel's own
/// counters of each AF_XDP socket), and the switch port.
pub fn uplink_stats(r: &UplinkReport) -> Value {
    let mut total = UplinkCounters::default();
    let mut kernel = XskKernelStats::default();
    for (_, c, k) in &r.queues {
        total.accumulate(c);
        kernel.accumulate(k);
    }
    let mut v = uplink_counters(&total, &kernel);
    v["name"] = r.name.clone().into();
    v["interface"] = r.interface.clone().into();
    v["queues"] = r
        .queues
        .iter()
        .map(|(q, c, k)| {
            let mut v = uplink_counters(c, k);
            v["queue"] = (*q).into();
            v
        })
        .collect();
    v["switch_port"] = port_stats(&r.port);
    v
}

fn port_stats(p: &PortCounters) -> Value {
    let mut drops = Map::new();
    for d in PortDrop::ALL {
        drops.insert(d.as_str().into(), p.dropped(d).into());
    }
    json!({
        "rx_packets": p.rx_packets,
        "rx_bytes": p.rx_bytes,
        "tx_packets": p.tx_packets,
        "tx_bytes": p.tx_bytes,
        "backpressure": p.backpressure,
        "drops": drops,
    })
}

fn group_info(d: &Daemon, name: &str) -> Result<Value, RpcError> {
    let g = d
        .config()
        .groups
        .iter()
        .find(|g| g.name == name)
        .ok_or_else(|| RpcError::new(NOT_FOUND, format!("no engine group '{name}'")))?;
    Ok(json!({
        "name": g.name,
        "policy": g.policy,
        "threads": g.threads,
        "cpus": g.cpus,
        "latency_bound_us": g.latency_bound_us,
        "engines": d.group_engines(name)?,
    }))
}

fn counters(c: &QueueCounters) -> Value {
    let mut drops = Map::new();
    for r in DropReason::ALL {
        drops.insert(r.as_str().into(), c.dropped(r).into());
    }
    json!({
        "tx_packets": c.tx_packets,
        "tx_bytes": c.tx_bytes,
        "rx_packets": c.rx_packets,
        "rx_bytes": c.rx_bytes,
        "backpressure": c.backpressure,
        "drops": drops,
    })
}

/// The `vnic.stats` result: totals, per queue, and the switch port.
pub fn vnic_stats(r: &VnicReport) -> Value {
    let mut total = QueueCounters::default();
    for q in &r.queues {
        total.add(q);
    }
    let mut v = counters(&total);
    v["name"] = r.name.clone().into();
    v["queues"] = r.queues.iter().map(counters).collect();
    v["switch_port"] = port_stats(&r.port);
    v
}
