//! Builds the running daemon from a config: the frame pool, engine groups, the
//! switch engine, and per vNIC its engines, switch port, device and socket.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::config::Config;
use crate::engine::MailboxError;
use crate::packet::{link, FramePool, PoolConfig, PoolError};
use crate::sched::{DedicatedGroup, EngineId, GroupError};
use crate::switch::port::SharedPortCounters;
use crate::switch::{PortCounters, PortId, SwitchEngine, SwitchHandle, SwitchPort};
use crate::vnic::connection::ConnectionError;
use crate::vnic::{
    Connection, EngineSink, QueueCounters, SharedQueueCounters, VnicDevice, VnicEngine,
    VnicEngineConfig,
};

/// Frame handles a link holds.
pub const LINK_CAPACITY: usize = 1024;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("cannot create {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("switch did not answer: {0}")]
    Switch(#[from] MailboxError),
    #[error("vNIC {name}: {source}")]
    Connection {
        name: String,
        source: ConnectionError,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

struct RunningVnic {
    name: String,
    device: Arc<VnicDevice<EngineSink>>,
    socket: PathBuf,
    connection: Option<Connection>,
    port: PortId,
    port_counters: Arc<SharedPortCounters>,
    queues: Vec<Arc<SharedQueueCounters>>,
    engines: Vec<EngineId>,
    group: usize,
}

/// Counters of one vNIC, for display.
#[derive(Clone, Debug)]
pub struct VnicReport {
    pub name: String,
    pub socket: PathBuf,
    /// Vrings a guest driver has set up and an engine serves (2 per queue pair).
    pub rings_attached: usize,
    /// Per queue pair, from the vNIC engines.
    pub queues: Vec<QueueCounters>,
    /// The vNIC's port on the switch.
    pub port: PortCounters,
}

/// The running daemon.
pub struct Daemon {
    pool: Arc<FramePool>,
    groups: Vec<DedicatedGroup>,
    switch: SwitchHandle,
    vnics: Vec<RunningVnic>,
}

impl Daemon {
    pub fn start(cfg: &Config) -> Result<Self, DaemonError> {
        let pool = FramePool::new(&PoolConfig::default())?;
        let mut groups = Vec::new();
        for g in &cfg.groups {
            groups.push(DedicatedGroup::start(
                &g.name,
                usize::from(g.threads),
                &g.cpus,
            )?);
        }
        let group_index = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| cfg.groups.iter().position(|g| &g.name == n))
                .unwrap_or(0)
        };
        let (switch_engine, switch) = SwitchEngine::new(&pool).map_err(io("switch mailbox"))?;
        groups[group_index(&cfg.switch_group)].add(Box::new(switch_engine));
        let mut daemon = Daemon {
            pool,
            groups,
            switch,
            vnics: Vec::new(),
        };
        for v in &cfg.vnics {
            let socket = cfg.socket_path(v);
            if let Some(dir) = socket.parent() {
                std::fs::create_dir_all(dir).map_err(io(format!("directory {}", dir.display())))?;
            }
            let group = group_index(&v.group);
            let mut inputs = Vec::new();
            let mut outputs = Vec::new();
            let mut senders = Vec::new();
            let mut queues = Vec::new();
            let mut engines = Vec::new();
            for q in 0..v.queue_pairs {
                let (to_switch, switch_in) = link(LINK_CAPACITY).map_err(io("link"))?;
                let (switch_out, from_switch) = link(LINK_CAPACITY).map_err(io("link"))?;
                let (engine, sender, counters) = VnicEngine::new(
                    VnicEngineConfig {
                        name: format!("{}/q{q}", v.name),
                        mtu: v.mtu,
                    },
                    &daemon.pool,
                    to_switch,
                    from_switch,
                )
                .map_err(io("engine mailbox"))?;
                inputs.push(switch_in);
                outputs.push(switch_out);
                senders.push(sender);
                queues.push(counters);
                engines.push(daemon.groups[group].add(Box::new(engine)));
            }
            let (port, port_counters) = daemon
                .switch
                .add_port(SwitchPort::new(&v.name, inputs, outputs), vec![v.mac])?;
            let device = Arc::new(VnicDevice::new(
                &v.name,
                v.mac,
                v.mtu,
                v.queue_pairs,
                EngineSink::new(senders),
            ));
            let connection =
                Connection::spawn(device.clone(), &socket, v.role).map_err(|source| {
                    DaemonError::Connection {
                        name: v.name.clone(),
                        source,
                    }
                })?;
            log::info!(
                "{}: {} socket {} (mac {}, mtu {}, {} queue pair(s))",
                v.name,
                match v.role {
                    crate::vnic::SocketRole::Server => "serving on",
                    crate::vnic::SocketRole::Client => "connecting to",
                },
                socket.display(),
                v.mac,
                v.mtu,
                v.queue_pairs
            );
            daemon.vnics.push(RunningVnic {
                name: v.name.clone(),
                device,
                socket,
                connection: Some(connection),
                port,
                port_counters,
                queues,
                engines,
                group,
            });
        }
        Ok(daemon)
    }

    /// Counters of every vNIC.
    pub fn report(&self) -> Vec<VnicReport> {
        self.vnics
            .iter()
            .map(|v| VnicReport {
                name: v.name.clone(),
                socket: v.socket.clone(),
                rings_attached: v.device.attached_rings(),
                queues: v.queues.iter().map(|q| q.snapshot()).collect(),
                port: v.port_counters.snapshot(),
            })
            .collect()
    }

    /// The frame pool (for leak checks).
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }

    /// Disconnects every frontend, stops every engine, removes the sockets.
    pub fn stop(mut self) {
        for v in self.vnics.iter_mut() {
            if let Some(c) = v.connection.take() {
                c.stop();
            }
        }
        for v in self.vnics.drain(..) {
            let _ = self.switch.remove_port(v.port);
            for id in v.engines {
                if let Ok(engine) = self.groups[v.group].remove(id) {
                    drop(engine);
                }
            }
        }
        for g in self.groups.drain(..) {
            g.stop();
        }
    }
}

/// A human-readable table of the report.
pub fn format_report(report: &[VnicReport]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<10} {:>12} {:>14} {:>12} {:>14} {:>10}  drops",
        "vnic", "tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "dropped"
    );
    for v in report {
        let mut total = QueueCounters::default();
        for q in &v.queues {
            total.add(q);
        }
        let mut reasons = Vec::new();
        for r in crate::vnic::DropReason::ALL {
            if total.dropped(r) > 0 {
                reasons.push(format!("{}={}", r.as_str(), total.dropped(r)));
            }
        }
        for r in crate::switch::PortDrop::ALL {
            if v.port.dropped(r) > 0 {
                reasons.push(format!("switch.{}={}", r.as_str(), v.port.dropped(r)));
            }
        }
        let dropped = total.total_drops() + v.port.drops.iter().sum::<u64>();
        let _ = writeln!(
            s,
            "{:<10} {:>12} {:>14} {:>12} {:>14} {:>10}  {}",
            v.name,
            total.tx_packets,
            total.tx_bytes,
            total.rx_packets,
            total.rx_bytes,
            dropped,
            reasons.join(" ")
        );
        if v.queues.len() > 1 {
            for (i, q) in v.queues.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  q{:<7} {:>12} {:>14} {:>12} {:>14} {:>10}",
                    i,
                    q.tx_packets,
                    q.tx_bytes,
                    q.rx_packets,
                    q.rx_bytes,
                    q.total_drops()
                );
            }
        }
    }
    s
}
