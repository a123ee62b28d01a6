//! `snapnet ctl`: one subcommand per control method; tables for people,
//! `--json` for scripts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use snapnet::control::rpc::client::{Client, ClientError};
use snapnet::control::Config;

#[derive(Args)]
pub struct CtlArgs {
    /// The daemon's control socket [default: $SNAPNET_CONTROL, else the
    /// control socket of --config, else the embedded default config's,
    /// /run/snapnet/control.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The daemon's config file, to find its control socket
    /// (`control_socket`, or `runtime_dir`/control.sock).
    #[arg(long, env = "SNAPNET_CONFIG")]
    config: Option<PathBuf>,
    /// Print the raw JSON result.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// vNICs: add, remove, list, get, stats, update.
    #[command(subcommand)]
    Vnic(VnicCmd),
    /// Engine groups: add, remove, list, stats.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Uplinks (host NICs through AF_XDP): add, remove, list, stats.
    #[command(subcommand)]
    Uplink(UplinkCmd),
    /// The switch's forwarding database.
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// The overlay directory in etcd (docs/directory.md).
    #[command(subcommand)]
    Directory(DirectoryCmd),
    /// Pony Express for host applications (docs/pony.md).
    #[command(subcommand)]
    Pony(PonyCmd),
    /// Version, uptime, counts.
    Status,
    /// Hand the daemon over to a new binary; guests keep their sockets
    /// (docs/upgrade.md).
    Upgrade {
        /// The new binary (default: the path the running one started from).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Stop the daemon (guests see their sockets close).
    Shutdown,
    /// Any method with raw JSON params.
    Call {
        method: String,
        params: Option<String>,
    },
}

#[derive(Subcommand)]
enum DirectoryCmd {
    /// Synced or degraded (and why), the table's size, counters.
    Status,
}

#[derive(Subcommand)]
enum PonyCmd {
    /// Applications, connections and flows (window, RTT, retransmissions),
    /// and the engine's counters.
    Status,
}

#[derive(Subcommand)]
enum VnicCmd {
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        mac: String,
        #[arg(long)]
        mtu: Option<u16>,
        #[arg(long)]
        queue_pairs: Option<u16>,
        /// vhost-user socket path (default: <runtime_dir>/<name>.sock).
        #[arg(long = "vhost-socket")]
        vhost_socket: Option<PathBuf>,
        /// server (snapnet listens) or client (snapnet connects).
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        group: Option<String>,
        /// The virtual network (the VNI on an overlay uplink).
        #[arg(long)]
        network: Option<u32>,
        /// Addresses the guest may send from, e.g. 10.0.0.5,2001:db8::5.
        #[arg(long, value_delimiter = ',')]
        allowed_ips: Vec<String>,
        /// One more MAC the guest may send from, with optional addresses:
        /// MAC or MAC=IP,IP (repeat for more pairs).
        #[arg(long = "address-pair")]
        address_pairs: Vec<String>,
        /// No anti-spoofing at all (router and firewall VMs).
        #[arg(long)]
        no_port_security: bool,
        /// This vNIC is the destination of a live migration on this host
        /// from vNIC NAME: it shares NAME's MAC (and network) and takes the
        /// MAC's frames once its guest's rings start.
        #[arg(long = "incoming-for", value_name = "NAME")]
        incoming_for: Option<String>,
    },
    Remove {
        name: String,
    },
    List,
    Get {
        name: String,
    },
    Stats {
        name: String,
    },
    Update {
        name: String,
        #[arg(long)]
        mtu: Option<u16>,
        /// Move the vNIC's engines to this engine group.
        #[arg(long)]
        group: Option<String>,
        /// Addresses the guest may send from, e.g. 10.0.0.5,2001:db8::5;
        /// `none` checks only the MAC.
        #[arg(long, value_delimiter = ',')]
        allowed_ips: Vec<String>,
        /// Replaces the allowed address pairs: MAC or MAC=IP,IP (repeat for
        /// more pairs); `none` removes them all.
        #[arg(long = "address-pair")]
        address_pairs: Vec<String>,
        /// Anti-spoofing on or off.
        #[arg(long, value_parser = ["on", "off"])]
        port_security: Option<String>,
        /// Guest egress limit in bytes per second (0: none).
        #[arg(long)]
        tx_bytes_per_sec: Option<u64>,
        /// Guest ingress limit in bytes per second (0: none).
        #[arg(long)]
        rx_bytes_per_sec: Option<u64>,
        /// Share of a congested uplink against other vNICs.
        #[arg(long)]
        weight: Option<u32>,
    },
}

/// `--address-pair` values as the `allowed_address_pairs` param: `MAC` or
/// `MAC=IP,IP`; a lone `none` is the empty list.
fn address_pairs(args: &[String]) -> Option<Value> {
    match args {
        [] => None,
        [none] if none == "none" => Some(json!([])),
        list => Some(
            list.iter()
                .map(|a| match a.split_once('=') {
                    Some((mac, ips)) => json!({
                        "mac": mac,
                        "ips": ips.split(',').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
                    }),
                    None => json!({ "mac": a }),
                })
                .collect(),
        ),
    }
}

/// `--allowed-ips` as the `allowed_ips` param: absent when not given, null
/// for `none`.
fn allowed_ips(args: &[String]) -> Option<Value> {
    match args {
        [] => None,
        [none] if none == "none" => Some(Value::Null),
        list => Some(list.into()),
    }
}

/// A byte-rate limit param: 0 means none (JSON null).
fn byte_limit(v: Option<u64>) -> Option<Value> {
    v.map(|b| {
        if b == 0 {
            Value::Null
        } else {
            json!({ "bytes_per_sec": b })
        }
    })
}

#[derive(Subcommand)]
enum GroupCmd {
    Add {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "dedicated")]
        policy: String,
        #[arg(long)]
        threads: Option<u16>,
        /// CPUs to pin the threads to, e.g. 2,3.
        #[arg(long, value_delimiter = ',')]
        cpus: Vec<usize>,
        /// Compacting: queueing-delay bound in microseconds.
        #[arg(long)]
        latency_bound_us: Option<u32>,
    },
    Remove {
        name: String,
    },
    List,
    Stats {
        name: String,
    },
}

#[derive(Subcommand)]
enum UplinkCmd {
    Add {
        #[arg(long)]
        name: String,
        /// The host interface (in snapnet's network namespace).
        #[arg(long)]
        interface: String,
        /// NIC queues, e.g. 0,1 (default: 0).
        #[arg(long, value_delimiter = ',')]
        queues: Vec<u32>,
        /// auto, native or generic.
        #[arg(long)]
        xdp_mode: Option<String>,
        /// auto, zerocopy or copy.
        #[arg(long)]
        bind_mode: Option<String>,
        #[arg(long)]
        mtu: Option<u16>,
        #[arg(long)]
        group: Option<String>,
    },
    Remove {
        name: String,
    },
    List,
    Stats {
        name: String,
    },
    Update {
        name: String,
        /// A JSON file with the new overlay table (`local_ip`, `remotes`, `macs`).
        #[arg(long)]
        overlay: Option<PathBuf>,
        /// Egress limit in bytes per second (0: none).
        #[arg(long)]
        tx_bytes_per_sec: Option<u64>,
    },
}

#[derive(Subcommand)]
enum FdbCmd {
    List,
    /// Pin MAC to a vNIC's switch port.
    Add {
        mac: String,
        vnic: String,
    },
    Remove {
        mac: String,
    },
}

fn obj(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    }
    Value::Object(m)
}

fn request(cmd: CtlCommand) -> Result<(String, Value), String> {
    Ok(match cmd {
        CtlCommand::Vnic(c) => match c {
            VnicCmd::Add {
                name,
                mac,
                mtu,
                queue_pairs,
                vhost_socket,
                role,
                group,
                network,
                allowed_ips: ips,
                address_pairs: pairs,
                no_port_security,
                incoming_for,
            } => (
                "vnic.add".into(),
                obj(vec![
                    ("name", Some(name.into())),
                    ("mac", Some(mac.into())),
                    ("mtu", mtu.map(Into::into)),
                    ("queue_pairs", queue_pairs.map(Into::into)),
                    (
                        "socket",
                        vhost_socket.map(|p| p.display().to_string().into()),
                    ),
                    ("role", role.map(Into::into)),
                    ("group", group.map(Into::into)),
                    ("network", network.map(Into::into)),
                    ("allowed_ips", allowed_ips(&ips)),
                    ("allowed_address_pairs", address_pairs(&pairs)),
                    ("port_security", no_port_security.then_some(false.into())),
                    ("incoming_for", incoming_for.map(Into::into)),
                ]),
            ),
            VnicCmd::Remove { name } => ("vnic.remove".into(), json!({ "name": name })),
            VnicCmd::List => ("vnic.list".into(), json!({})),
            VnicCmd::Get { name } => ("vnic.get".into(), json!({ "name": name })),
            VnicCmd::Stats { name } => ("vnic.stats".into(), json!({ "name": name })),
            VnicCmd::Update {
                name,
                mtu,
                group,
                allowed_ips: ips,
                address_pairs: pairs,
                port_security,
                tx_bytes_per_sec,
                rx_bytes_per_sec,
                weight,
            } => (
                "vnic.update".into(),
                obj(vec![
                    ("name", Some(name.into())),
                    ("mtu", mtu.map(Into::into)),
                    ("group", group.map(Into::into)),
                    ("allowed_ips", allowed_ips(&ips)),
                    ("allowed_address_pairs", address_pairs(&pairs)),
                    ("port_security", port_security.map(|s| (s == "on").into())),
                    ("tx_limit", byte_limit(tx_bytes_per_sec)),
                    ("rx_limit", byte_limit(rx_bytes_per_sec)),
                    ("weight", weight.map(Into::into)),
                ]),
            ),
        },
        CtlCommand::Group(c) => match c {
            GroupCmd::Add {
                name,
                policy,
                threads,
                cpus,
                latency_bound_us,
            } => (
                "group.add".into(),
                obj(vec![
                    ("name", Some(name.into())),
                    ("policy", Some(policy.into())),
                    ("threads", threads.map(Into::into)),
                    ("cpus", (!cpus.is_empty()).then(|| cpus.into())),
                    ("latency_bound_us", latency_bound_us.map(Into::into)),
                ]),
            ),
            GroupCmd::Remove { name } => ("group.remove".into(), json!({ "name": name })),
            GroupCmd::List => ("group.list".into(), json!({})),
            GroupCmd::Stats { name } => ("group.stats".into(), json!({ "name": name })),
        },
        CtlCommand::Uplink(c) => match c {
            UplinkCmd::Add {
                name,
                interface,
                queues,
                xdp_mode,
                bind_mode,
                mtu,
                group,
            } => (
                "uplink.add".into(),
                obj(vec![
                    ("name", Some(name.into())),
                    ("interface", Some(interface.into())),
                    ("queues", (!queues.is_empty()).then(|| queues.into())),
                    ("xdp_mode", xdp_mode.map(Into::into)),
                    ("bind_mode", bind_mode.map(Into::into)),
                    ("mtu", mtu.map(Into::into)),
                    ("group", group.map(Into::into)),
                ]),
            ),
            UplinkCmd::Remove { name } => ("uplink.remove".into(), json!({ "name": name })),
            UplinkCmd::List => ("uplink.list".into(), json!({})),
            UplinkCmd::Stats { name } => ("uplink.stats".into(), json!({ "name": name })),
            UplinkCmd::Update {
                name,
                overlay,
                tx_bytes_per_sec,
            } => {
                let overlay = match overlay {
                    Some(path) => {
                        let text = std::fs::read_to_string(&path)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        Some(
                            serde_json::from_str::<Value>(&text)
                                .map_err(|e| format!("{}: {e}", path.display()))?,
                        )
                    }
                    None => None,
                };
                (
                    "uplink.update".into(),
                    obj(vec![
                        ("name", Some(name.into())),
                        ("overlay", overlay),
                        ("tx_limit", byte_limit(tx_bytes_per_sec)),
                    ]),
                )
            }
        },
        CtlCommand::Fdb(c) => match c {
            FdbCmd::List => ("switch.fdb.list".into(), json!({})),
            FdbCmd::Add { mac, vnic } => {
                ("switch.fdb.add".into(), json!({ "mac": mac, "vnic": vnic }))
            }
            FdbCmd::Remove { mac } => ("switch.fdb.remove".into(), json!({ "mac": mac })),
        },
        CtlCommand::Directory(DirectoryCmd::Status) => ("directory.status".into(), json!({})),
        CtlCommand::Pony(PonyCmd::Status) => ("pony.status".into(), json!({})),
        CtlCommand::Status => ("daemon.status".into(), json!({})),
        CtlCommand::Upgrade { binary } => (
            "daemon.upgrade".into(),
            match binary {
                Some(b) => json!({ "binary": b }),
                None => json!({}),
            },
        ),
        CtlCommand::Shutdown => ("daemon.shutdown".into(), json!({})),
        CtlCommand::Call { method, params } => {
            let p = match params {
                Some(t) => {
                    serde_json::from_str(&t).map_err(|e| format!("params are not JSON: {e}"))?
                }
                None => json!({}),
            };
            (method, p)
        }
    })
}

/// Where the daemon listens: `--socket`, else `SNAPNET_CONTROL`, else the
/// config's control socket (`--config` or `SNAPNET_CONFIG`, else the
/// embedded default, as `snapnet serve` without `--config`).
fn control_socket(
    socket: Option<PathBuf>,
    env: Option<std::ffi::OsString>,
    config: Option<&Path>,
) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s);
    }
    if let Some(s) = env.filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(s));
    }
    let cfg = match config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::embedded_default(),
    };
    Ok(cfg.control_socket_path())
}

pub fn run(args: CtlArgs) -> ExitCode {
    let socket = match control_socket(
        args.socket,
        std::env::var_os("SNAPNET_CONTROL"),
        args.config.as_deref(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapnet ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let (method, params) = match request(args.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("snapnet ctl: {e}");
            return ExitCode::from(2);
        }
    };
    let result = Client::connect(&socket).and_then(|mut c| c.call(&method, params));
    match result {
        Ok(v) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print!("{}", human(&method, &v));
            }
            ExitCode::SUCCESS
        }
        Err(ClientError::Rpc(e)) => {
            eprintln!("snapnet ctl: {method}: {} (error {})", e.message, e.code);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("snapnet ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(rows: &[Value], cols: &[&str]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| cols.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let mut out = String::new();
    let line = |vals: Vec<&str>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    out += &line(cols.to_vec());
    for r in &cells {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

fn nonzero_drops(d: &Value) -> String {
    let s: Vec<String> = d
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s.join(" ")
    }
}

fn human(method: &str, v: &Value) -> String {
    match method {
        "vnic.list" => table(
            v.as_array().map_or(&[][..], Vec::as_slice),
            &[
                "name",
                "mac",
                "mtu",
                "queue_pairs",
                "role",
                "group",
                "connected",
                "socket",
            ],
        ),
        "group.list" => table(
            v.as_array().map_or(&[][..], Vec::as_slice),
            &[
                "name",
                "policy",
                "threads",
                "cpus",
                "latency_bound_us",
                "engines",
            ],
        ),
        "uplink.list" => table(
            v.as_array().map_or(&[][..], Vec::as_slice),
            &[
                "name",
                "interface",
                "queues",
                "xdp_mode_in_use",
                "zerocopy",
                "mtu",
                "group",
            ],
        ),
        "uplink.stats" => {
            let cols = [
                "queue",
                "rx_packets",
                "group_rx_packets",
                "tx_packets",
                "tx_segments",
                "drops",
                "kernel",
            ];
            let row = |q: &Value, name: Value| {
                let drops: Map<String, Value> = q
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| {
                        k.starts_with("drop_") || k.ends_with("_full") || k.ends_with("_empty")
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                json!({
                    "queue": name,
                    "rx_packets": q["rx_packets"], "group_rx_packets": q["group_rx_packets"],
                    "tx_packets": q["tx_packets"], "tx_segments": q["tx_segments"],
                    "drops": nonzero_drops(&Value::Object(drops)),
                    "kernel": nonzero_drops(&q["kernel"]),
                })
            };
            let mut rows = vec![row(v, "all".into())];
            for q in v["queues"].as_array().into_iter().flatten() {
                rows.push(row(q, format!("q{}", q["queue"]).into()));
            }
            let mut out = format!("uplink {} on {}\n", cell(&v["name"]), cell(&v["interface"]));
            out += &table(&rows, &cols);
            out += &format!(
                "switch port: in {} pkts, out {} pkts, drops {}\n",
                v["switch_port"]["rx_packets"],
                v["switch_port"]["tx_packets"],
                nonzero_drops(&v["switch_port"]["drops"])
            );
            out
        }
        "directory.status" => {
            let mut out = format!(
                "directory: {} for {}s{}\nhost {} on uplink {}, lease {}, revision {}\n",
                cell(&v["state"]),
                v["state_seconds"]
                    .as_f64()
                    .map_or("?".into(), |s| format!("{s:.0}")),
                v["reason"]
                    .as_str()
                    .map_or(String::new(), |r| format!(" ({r})")),
                cell(&v["host_id"]),
                cell(&v["uplink"]),
                cell(&v["lease_id"]),
                cell(&v["revision"]),
            );
            out += &format!(
                "hosts {} (remote {}), remote MACs {}, local MACs {}\n",
                v["hosts"], v["remote_hosts"], v["remote_macs"], v["local_macs"]
            );
            out += &format!("counters: {}\n", nonzero_drops(&v["counters"]));
            out
        }
        "pony.status" => {
            let mut out = format!(
                "pony {} on {}\ncounters: {}\n",
                cell(&v["engine"]),
                cell(&v["address"]),
                nonzero_drops(&v["counters"])
            );
            let rows = |k: &str| v[k].as_array().cloned().unwrap_or_default();
            out += "applications:\n";
            out += &table(
                &rows("apps"),
                &[
                    "id",
                    "name",
                    "service",
                    "connections",
                    "regions",
                    "operations",
                    "rx_used_bytes",
                ],
            );
            out += "connections:\n";
            out += &table(
                &rows("connections"),
                &[
                    "id",
                    "app",
                    "peer",
                    "peer_conn",
                    "open",
                    "tx_messages",
                    "rx_messages",
                    "tx_bytes",
                    "rx_bytes",
                ],
            );
            out += "flows:\n";
            out += &table(
                &rows("flows"),
                &[
                    "peer",
                    "connections",
                    "window",
                    "srtt_us",
                    "rto_us",
                    "in_flight",
                    "sent",
                    "retransmit_timeout",
                    "retransmit_loss",
                    "duplicates",
                ],
            );
            out
        }
        "switch.fdb.list" => table(
            v.as_array().map_or(&[][..], Vec::as_slice),
            &["mac", "port", "static"],
        ),
        "vnic.stats" => {
            let mut rows = vec![json!({
                "queue": "all",
                "tx_packets": v["tx_packets"], "tx_bytes": v["tx_bytes"],
                "rx_packets": v["rx_packets"], "rx_bytes": v["rx_bytes"],
                "drops": nonzero_drops(&v["drops"]),
            })];
            for (i, q) in v["queues"].as_array().into_iter().flatten().enumerate() {
                rows.push(json!({
                    "queue": format!("q{i}"),
                    "tx_packets": q["tx_packets"], "tx_bytes": q["tx_bytes"],
                    "rx_packets": q["rx_packets"], "rx_bytes": q["rx_bytes"],
                    "drops": nonzero_drops(&q["drops"]),
                }));
            }
            let mut out = format!("vNIC {}\n", cell(&v["name"]));
            out += &table(
                &rows,
                &[
                    "queue",
                    "tx_packets",
                    "tx_bytes",
                    "rx_packets",
                    "rx_bytes",
                    "drops",
                ],
            );
            out += &format!(
                "switch port: in {} pkts, out {} pkts, drops {}\n",
                v["switch_port"]["rx_packets"],
                v["switch_port"]["tx_packets"],
                nonzero_drops(&v["switch_port"]["drops"])
            );
            out
        }
        _ => match v {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", cell(v)))
                .collect(),
            other => format!("{}\n", cell(other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ctl: CtlArgs,
    }

    fn req(args: &[&str]) -> (String, Value) {
        let cli = Cli::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        request(cli.ctl.command).unwrap()
    }

    #[test]
    fn control_socket_flag_then_environment_then_config_then_default() {
        let dir = std::env::temp_dir().join(format!("snapnet-ctl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let with_socket = dir.join("a.json");
        std::fs::write(&with_socket, r#"{"control_socket":"/run/a/ctl.sock"}"#).unwrap();
        let with_dir = dir.join("b.json");
        std::fs::write(&with_dir, r#"{"runtime_dir":"/run/b"}"#).unwrap();
        let flag = Some(PathBuf::from("/flag.sock"));
        let env = Some(std::ffi::OsString::from("/env.sock"));
        let resolve = |s: Option<PathBuf>, e: Option<std::ffi::OsString>, c: Option<&Path>| {
            control_socket(s, e, c).map(|p| p.display().to_string())
        };
        assert_eq!(
            resolve(flag, env.clone(), Some(&with_socket)).unwrap(),
            "/flag.sock"
        );
        assert_eq!(resolve(None, env, Some(&with_socket)).unwrap(), "/env.sock");
        assert_eq!(
            resolve(None, Some("".into()), Some(&with_socket)).unwrap(),
            "/run/a/ctl.sock"
        );
        assert_eq!(
            resolve(None, None, Some(&with_dir)).unwrap(),
            "/run/b/control.sock"
        );
        assert_eq!(
            resolve(None, None, None).unwrap(),
            "/run/snapnet/control.sock"
        );
        let err = resolve(None, None, Some(&dir.join("missing.json"))).unwrap_err();
        assert!(err.contains("missing.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn port_security_flags_become_params() {
        let (m, p) = req(&[
            "vnic",
            "add",
            "--name",
            "r1",
            "--mac",
            "52:54:00:00:00:01",
            "--allowed-ips",
            "10.0.0.5,2001:db8::5",
            "--address-pair",
            "00:00:5e:00:01:07=10.0.0.100,2001:db8::100",
            "--address-pair",
            "52:54:00:00:00:99",
        ]);
        assert_eq!(m, "vnic.add");
        assert_eq!(p["allowed_ips"], json!(["10.0.0.5", "2001:db8::5"]));
        assert_eq!(
            p["allowed_address_pairs"],
            json!([
                {"mac": "00:00:5e:00:01:07", "ips": ["10.0.0.100", "2001:db8::100"]},
                {"mac": "52:54:00:00:00:99"}
            ])
        );
        assert!(p.get("port_security").is_none());
        let (_, p) = req(&[
            "vnic",
            "add",
            "--name",
            "fw",
            "--mac",
            "52:54:00:00:00:02",
            "--no-port-security",
        ]);
        assert_eq!(p["port_security"], false);
        let (m, p) = req(&[
            "vnic",
            "update",
            "r1",
            "--port-security",
            "off",
            "--address-pair",
            "none",
            "--allowed-ips",
            "none",
        ]);
        assert_eq!(m, "vnic.update");
        assert_eq!(
            p,
            json!({"name": "r1", "port_security": false, "allowed_address_pairs": [], "allowed_ips": null})
        );
        let (_, p) = req(&["vnic", "update", "r1", "--port-security", "on"]);
        assert_eq!(p, json!({"name": "r1", "port_security": true}));
        assert!(
            Cli::try_parse_from(["ctl", "vnic", "update", "r1", "--port-security", "maybe"])
                .is_err()
        );
    }
}
