//! Builds the running daemon from a config: the frame pool, engine groups, the
//! switch engine, and per vNIC its engines, switch port, device and socket.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::config::{Config, ConfigError, GroupConfig, VnicConfig};
use crate::engine::MailboxError;
use crate::packet::wire::MacAddr;
use crate::packet::{link, FramePool, PoolConfig, PoolError};
use crate::sched::stats::EngineStatsSnapshot;
use crate::sched::{EngineGroup, EngineId, GroupError};
use crate::switch::port::SharedPortCounters;
use crate::switch::{PortCounters, PortId, SwitchEngine, SwitchHandle, SwitchPort};
use crate::vnic::connection::ConnectionError;
use crate::vnic::device::DeviceError;
use crate::vnic::SocketRole;
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
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no {0}")]
    NotFound(String),
    #[error("{0}")]
    InUse(String),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

struct RunningVnic {
    config: VnicConfig,
    device: Arc<VnicDevice<EngineSink>>,
    socket: PathBuf,
    connection: Option<Connection>,
    port: PortId,
    port_counters: Arc<SharedPortCounters>,
    queues: Vec<Arc<SharedQueueCounters>>,
    engines: Vec<EngineId>,
}

struct RunningGroup {
    config: GroupConfig,
    group: Arc<EngineGroup>,
}

/// Per-engine accounting of a group and its thread-count history.
pub type GroupAccounting = (Vec<(String, EngineStatsSnapshot)>, Vec<(f64, usize)>);

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

/// The running daemon. The config file is applied through the same
/// `add_group` / `add_vnic` calls that serve runtime changes, and every
/// change is validated against the whole resulting configuration first, so a
/// refused change leaves everything as it was.
pub struct Daemon {
    pool: Arc<FramePool>,
    /// The configuration as it stands now (what `add_*`/`remove_*` changed).
    config: Config,
    groups: Vec<RunningGroup>,
    switch: SwitchHandle,
    switch_group: String,
    switch_engine: EngineId,
    vnics: Vec<RunningVnic>,
}

impl Daemon {
    pub fn start(cfg: &Config) -> Result<Self, DaemonError> {
        cfg.validate()?;
        let pool = FramePool::new(&PoolConfig::default())?;
        let (switch_engine, switch) = SwitchEngine::new(&pool).map_err(io("switch mailbox"))?;
        let mut daemon = Daemon {
            pool,
            config: Config {
                vnics: Vec::new(),
                ..cfg.clone()
            },
            groups: Vec::new(),
            switch,
            switch_group: String::new(),
            switch_engine: EngineId(0),
            vnics: Vec::new(),
        };
        daemon.config.groups.clear();
        for g in &cfg.groups {
            daemon.add_group(g.clone())?;
        }
        let switch_group = cfg
            .switch_group
            .clone()
            .unwrap_or_else(|| cfg.groups[0].name.clone());
        daemon.switch_engine = daemon.group(&switch_group)?.add(Box::new(switch_engine))?;
        daemon.switch_group = switch_group;
        for v in &cfg.vnics {
            if let Err(e) = daemon.add_vnic(v.clone()) {
                daemon.stop();
                return Err(e);
            }
        }
        Ok(daemon)
    }

    fn group(&self, name: &str) -> Result<&EngineGroup, DaemonError> {
        self.groups
            .iter()
            .find(|g| g.config.name == name)
            .map(|g| &*g.group)
            .ok_or_else(|| DaemonError::NotFound(format!("engine group '{name}'")))
    }

    fn vnic_index(&self, name: &str) -> Result<usize, DaemonError> {
        self.vnics
            .iter()
            .position(|v| v.config.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("vNIC '{name}'")))
    }

    /// The configuration as it stands now.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts an engine group.
    pub fn add_group(&mut self, g: GroupConfig) -> Result<(), DaemonError> {
        let mut next = self.config.clone();
        next.groups.push(g.clone());
        next.validate()?;
        let group = EngineGroup::start_with_bound(
            &g.name,
            g.policy,
            usize::from(g.threads),
            &g.cpus,
            std::time::Duration::from_micros(u64::from(g.latency_bound_us)),
        )?;
        self.groups.push(RunningGroup { config: g, group });
        self.config = next;
        Ok(())
    }

    /// Stops an engine group that runs no engine.
    pub fn remove_group(&mut self, name: &str) -> Result<(), DaemonError> {
        let i = self
            .groups
            .iter()
            .position(|g| g.config.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("engine group '{name}'")))?;
        let users: Vec<String> = self
            .config
            .vnics
            .iter()
            .filter(|v| self.config.group_of(v) == name)
            .map(|v| v.name.clone())
            .collect();
        if !users.is_empty() || self.switch_group == name {
            let mut users = users;
            if self.switch_group == name {
                users.push("the switch".into());
            }
            return Err(DaemonError::InUse(format!(
                "engine group '{name}' still runs {}; move or remove them first",
                users.join(", ")
            )));
        }
        let mut next = self.config.clone();
        next.groups.retain(|g| g.name != name);
        next.validate()?;
        self.groups.remove(i).group.stop();
        self.config = next;
        Ok(())
    }

    /// Creates a vNIC: its engines, switch port, device and socket.
    pub fn add_vnic(&mut self, v: VnicConfig) -> Result<(), DaemonError> {
        let mut next = self.config.clone();
        next.vnics.push(v.clone());
        next.validate()?;
        let socket = next.socket_path(&v);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(io(format!("directory {}", dir.display())))?;
        }
        let group_name = next.group_of(&v).to_string();
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
                &self.pool,
                to_switch,
                from_switch,
            )
            .map_err(io("engine mailbox"))?;
            inputs.push(switch_in);
            outputs.push(switch_out);
            senders.push(sender);
            queues.push(counters);
            engines.push(Box::new(engine));
        }
        let device = Arc::new(VnicDevice::new(
            &v.name,
            v.mac,
            v.mtu,
            v.queue_pairs,
            EngineSink::new(senders),
        ));
        // The socket last: a frontend may connect as soon as it exists.
        let (port, port_counters) = self
            .switch
            .add_port(SwitchPort::new(&v.name, inputs, outputs), vec![v.mac])?;
        let group = self.group(&group_name)?;
        let mut engine_ids: Vec<EngineId> = Vec::new();
        for e in engines {
            match group.add(e) {
                Ok(id) => engine_ids.push(id),
                Err(err) => {
                    let _ = self.switch.remove_port(port);
                    for id in engine_ids {
                        let _ = group.remove(id);
                    }
                    return Err(err.into());
                }
            }
        }
        let connection = match Connection::spawn(device.clone(), &socket, v.role) {
            Ok(c) => c,
            Err(source) => {
                let _ = self.switch.remove_port(port);
                for id in engine_ids {
                    let _ = group.remove(id);
                }
                return Err(DaemonError::Connection {
                    name: v.name.clone(),
                    source,
                });
            }
        };
        log::info!(
            "{}: {} socket {} (mac {}, mtu {}, {} queue pair(s), group {group_name})",
            v.name,
            match v.role {
                SocketRole::Server => "serving on",
                SocketRole::Client => "connecting to",
            },
            socket.display(),
            v.mac,
            v.mtu,
            v.queue_pairs
        );
        self.vnics.push(RunningVnic {
            config: v,
            device,
            socket,
            connection: Some(connection),
            port,
            port_counters,
            queues,
            engines: engine_ids,
        });
        self.config = next;
        Ok(())
    }

    /// Disconnects the guest, stops the vNIC's engines and frees its frames.
    pub fn remove_vnic(&mut self, name: &str) -> Result<(), DaemonError> {
        let i = self.vnic_index(name)?;
        let mut v = self.vnics.remove(i);
        self.config.vnics.retain(|c| c.name != name);
        self.teardown(&mut v);
        log::info!("{name}: removed");
        Ok(())
    }

    fn teardown(&self, v: &mut RunningVnic) {
        if let Some(c) = v.connection.take() {
            c.stop();
        }
        if let Err(e) = self.switch.remove_port(v.port) {
            log::warn!("{}: switch did not remove the port: {e}", v.config.name);
        }
        let group_name = self.config.group_of(&v.config).to_string();
        if let Ok(group) = self.group(&group_name) {
            for id in v.engines.drain(..) {
                // Dropping the engine returns its queued frames to the pool.
                if let Err(e) = group.remove(id) {
                    log::warn!("{}: engine not removed: {e}", v.config.name);
                }
            }
        }
    }

    /// Changes a vNIC's MTU (enforced on guest TX; reported in config space).
    pub fn set_vnic_mtu(&mut self, name: &str, mtu: u16) -> Result<(), DaemonError> {
        let i = self.vnic_index(name)?;
        let mut next = self.config.clone();
        if let Some(c) = next.vnics.iter_mut().find(|c| c.name == name) {
            c.mtu = mtu;
        }
        next.validate()?;
        self.vnics[i].device.reconfigure_mtu(mtu)?;
        self.vnics[i].config.mtu = mtu;
        self.config = next;
        Ok(())
    }

    /// Moves a vNIC's engines to another engine group, state and queued
    /// frames included (an engine is taken off one thread between two polls
    /// and placed on another).
    pub fn move_vnic(&mut self, name: &str, group: &str) -> Result<(), DaemonError> {
        let i = self.vnic_index(name)?;
        let mut next = self.config.clone();
        if let Some(c) = next.vnics.iter_mut().find(|c| c.name == name) {
            c.group = Some(group.to_string());
        }
        next.validate()?;
        let from = self.config.group_of(&self.vnics[i].config).to_string();
        if from == group {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.vnics[i].engines);
        let mut moved = Vec::new();
        for id in ids {
            let engine = self.group(&from)?.remove(id)?;
            moved.push(self.group(group)?.add(engine)?);
        }
        self.vnics[i].engines = moved;
        self.vnics[i].config.group = Some(group.to_string());
        self.config = next;
        log::info!("{name}: engines moved from group {from} to {group}");
        Ok(())
    }

    /// Counters of every vNIC.
    pub fn report(&self) -> Vec<VnicReport> {
        self.vnics
            .iter()
            .map(|v| VnicReport {
                name: v.config.name.clone(),
                socket: v.socket.clone(),
                rings_attached: v.device.attached_rings(),
                queues: v.queues.iter().map(|q| q.snapshot()).collect(),
                port: v.port_counters.snapshot(),
            })
            .collect()
    }

    /// Engines placed in group `name`.
    pub fn group_engines(&self, name: &str) -> Result<usize, DaemonError> {
        Ok(self.group(name)?.engine_count())
    }

    /// Accounting of each engine of group `name`, and its thread-count
    /// history (compacting).
    pub fn group_engine_stats(&self, name: &str) -> Result<GroupAccounting, DaemonError> {
        let g = self.group(name)?;
        Ok((g.engine_stats(), g.thread_history()))
    }

    /// CPU seconds used by each thread of group `name`.
    pub fn group_thread_cpu(&self, name: &str) -> Result<Vec<(i32, f64)>, DaemonError> {
        Ok(self.group(name)?.thread_cpu())
    }

    /// The switch's forwarding entries: (MAC, vNIC name, static).
    pub fn fdb_entries(&self) -> Result<Vec<(MacAddr, String, bool)>, DaemonError> {
        let entries = self.switch.fdb_entries()?;
        Ok(entries
            .into_iter()
            .map(|(mac, e)| {
                let port = self
                    .vnics
                    .iter()
                    .find(|v| v.port == e.port)
                    .map_or_else(|| format!("port{}", e.port.0), |v| v.config.name.clone());
                (mac, port, e.is_static)
            })
            .collect())
    }

    /// Pins `mac` to vNIC `vnic`'s switch port.
    pub fn fdb_add(&self, mac: MacAddr, vnic: &str) -> Result<(), DaemonError> {
        let port = self
            .vnics
            .iter()
            .find(|v| v.config.name == vnic)
            .map(|v| v.port)
            .ok_or_else(|| DaemonError::NotFound(format!("vNIC '{vnic}'")))?;
        if !self.switch.fdb_add_static(mac, port)? {
            return Err(DaemonError::NotFound(format!(
                "switch port of vNIC '{vnic}'"
            )));
        }
        Ok(())
    }

    /// Forgets `mac` in the switch.
    pub fn fdb_remove(&self, mac: MacAddr) -> Result<(), DaemonError> {
        if !self.switch.fdb_remove(mac)? {
            return Err(DaemonError::NotFound(format!("forwarding entry for {mac}")));
        }
        Ok(())
    }

    /// The frame pool (for leak checks).
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }

    /// Disconnects every frontend, stops every engine, removes the sockets.
    pub fn stop(mut self) {
        let mut vnics = std::mem::take(&mut self.vnics);
        for v in vnics.iter_mut() {
            if let Some(c) = v.connection.take() {
                c.stop();
            }
        }
        for mut v in vnics {
            self.teardown(&mut v);
        }
        if let Ok(group) = self.group(&self.switch_group) {
            let _ = group.remove(self.switch_engine);
        }
        for g in self.groups.drain(..) {
            g.group.stop();
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
