//! Builds the running daemon from a config: the frame pool, engine groups, the
//! switch engine, and per vNIC its engines, switch port, device and socket.

use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::config::{
    AddressPair, Config, ConfigError, GroupConfig, RateLimit, UplinkConfig, VnicConfig,
};
use super::socket_group;
use super::socket_path::{self, SocketPathError};
use crate::engine::{MailboxError, MailboxSender};
use crate::packet::{link, FramePool, PoolError};
use crate::sched::stats::EngineStatsSnapshot;
use crate::sched::{EngineGroup, EngineId, GroupError};
use crate::shaping::VnicShaping;
use crate::switch::port::SharedPortCounters;
use crate::switch::{PortCounters, PortId, PortNetwork, SwitchHandle, SwitchPort};
use crate::uplink::engine::UplinkQueueConfig;
use crate::uplink::group_tap::GroupTap;
use crate::uplink::overlay::OverlayTable;
use crate::uplink::xsk::{RingSizes, UmemArea, XskKernelStats, XskSocket};
use crate::uplink::{
    SharedUplinkCounters, UplinkCounters, UplinkProgram, UplinkQueueEngine, XdpMode,
};
use crate::vnic::connection::ConnectionError;
use crate::vnic::device::DeviceError;
use crate::vnic::guest_log::{self, GuestLog};
use crate::vnic::SocketRole;
use crate::vnic::{
    Connection, EngineSink, QueueCounters, SharedQueueCounters, VnicDevice, VnicEngine,
    VnicEngineConfig,
};
use snapnet_wire::MacAddr;

/// How long a control request to a running engine may take.
const ENGINE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub use super::pool_sizing::LINK_CAPACITY;

/// The port of a vNIC that has none on this switch yet (moving step by
/// step: its links go to a bridge until the switch moves).
const UNPLUGGED: PortId = PortId(u16::MAX);

mod handover;
mod pony;
mod stepwise;
mod uplink_handover;
pub use handover::{
    log_phase, DaemonState, ExportedVnic, UpgradeExport, UpgradeRefused, VnicMove, VnicTakeover,
};
pub use stepwise::{SharedCpus, SwitchMove, VnicFrames, VnicStep};
pub use uplink_handover::{ExportedUplink, UplinkMove, UplinkTakeover};

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
    #[error("uplink {name}: {message}")]
    Uplink { name: String, message: String },
    #[error(transparent)]
    SocketPath(#[from] SocketPathError),
    #[error("upgrade: {0}")]
    Upgrade(String),
}

/// A change of a vNIC's port security; `None` leaves a part as it is.
#[derive(Clone, Debug, Default)]
pub struct PortSecurityChange {
    /// `Some(None)`: stop checking the addresses of the vNIC's own MAC.
    pub allowed_ips: Option<Option<Vec<std::net::IpAddr>>>,
    /// The new list of pairs (replaces the old one).
    pub allowed_address_pairs: Option<Vec<AddressPair>>,
    pub port_security: Option<bool>,
}

fn uplink_err(name: &str) -> impl Fn(String) -> DaemonError + '_ {
    move |message| DaemonError::Uplink {
        name: name.to_string(),
        message,
    }
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
    /// Its blackout in the upgrade that brought it to this process.
    upgrade_blackout: Option<std::time::Duration>,
}

struct RunningUplinkQueue {
    queue: u32,
    counters: Arc<SharedUplinkCounters>,
    mailbox: MailboxSender<UplinkQueueEngine>,
}

struct RunningUplink {
    config: UplinkConfig,
    program: UplinkProgram,
    zerocopy: bool,
    port: PortId,
    /// The switch shard its port is on.
    shard: usize,
    port_counters: Arc<SharedPortCounters>,
    queues: Vec<RunningUplinkQueue>,
    engines: Vec<EngineId>,
}

/// What one queue of an uplink is built from: a socket opened here, or
/// one an upgrade's old process handed over with its state.
struct QueueParts {
    xsk: XskSocket,
    tap: Option<GroupTap>,
    state: Option<crate::uplink::handover::UplinkQueueState>,
    for_wire: Vec<crate::packet::FrameHandle>,
}

/// Counters of one uplink, for display.
#[derive(Clone, Debug)]
pub struct UplinkReport {
    pub name: String,
    pub interface: String,
    /// The XDP attach mode in use (native or generic).
    pub xdp_mode: XdpMode,
    /// True when the sockets are bound zero-copy.
    pub zerocopy: bool,
    /// Per queue: its number, the engine's counters, the kernel's counters.
    pub queues: Vec<(u32, UplinkCounters, XskKernelStats)>,
    /// The uplink's port on the switch.
    pub port: PortCounters,
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
    /// Its blackout in the upgrade that brought it to this process.
    pub upgrade_blackout: Option<std::time::Duration>,
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
    /// One per switch shard, by shard index.
    switch_engines: Vec<EngineId>,
    vnics: Vec<RunningVnic>,
    uplinks: Vec<RunningUplink>,
    /// The new process of a step-by-step upgrade: the bridges of the vNICs
    /// that moved, until the switch moves too.
    step_bridges: Vec<stepwise::NewBridge>,
    prepared_steps: Vec<stepwise::PreparedStep>,
    /// Told the network and MACs of a vNIC whose guest's rings start (the
    /// directory claims them: a guest that migrated here runs here now).
    guest_started: Option<GuestStarted>,
    /// Pony Express, when the config has a `pony` section.
    pony: Option<pony::RunningPony>,
}

/// See [`Daemon::set_guest_started_observer`].
pub type GuestStarted = Arc<dyn Fn(u32, &[MacAddr]) + Send + Sync>;

impl Daemon {
    pub fn start(cfg: &Config) -> Result<Self, DaemonError> {
        cfg.validate()?;
        let pool = FramePool::new(&cfg.pool_config())?;
        let mut daemon = Self::start_on_pool(cfg, pool)?;
        for v in &cfg.vnics {
            if let Err(e) = daemon.add_vnic(v.clone()) {
                daemon.stop();
                return Err(e);
            }
        }
        for u in &cfg.uplinks {
            if let Err(e) = daemon.add_uplink(u.clone()) {
                daemon.stop();
                return Err(e);
            }
        }
        if let Some(p) = &cfg.pony {
            if let Err(e) = daemon.start_pony(p) {
                daemon.stop();
                return Err(e);
            }
        }
        Ok(daemon)
    }

    /// The groups and the switch of `cfg` on `pool`, without its vNICs and
    /// uplinks (an upgrade's new process adds the vNICs it takes over).
    fn start_on_pool(cfg: &Config, pool: Arc<FramePool>) -> Result<Self, DaemonError> {
        log_pool_pages(&pool);
        let (shards, switch) = crate::switch::shards(&pool, usize::from(cfg.switch_shards))
            .map_err(io("switch shards"))?;
        let mut daemon = Daemon {
            pool,
            config: Config {
                vnics: Vec::new(),
                ..cfg.clone()
            },
            groups: Vec::new(),
            switch,
            switch_group: String::new(),
            switch_engines: Vec::new(),
            vnics: Vec::new(),
            uplinks: Vec::new(),
            step_bridges: Vec::new(),
            prepared_steps: Vec::new(),
            guest_started: None,
            pony: None,
        };
        daemon.config.groups.clear();
        daemon.config.uplinks.clear();
        for g in &cfg.groups {
            daemon.add_group(g.clone())?;
        }
        let switch_group = cfg
            .switch_group
            .clone()
            .unwrap_or_else(|| cfg.groups[0].name.clone());
        // Least-loaded placement spreads the shards over the group's threads.
        for mut shard in shards {
            shard.set_fdb_limits(cfg.fdb.limits());
            let id = daemon.group(&switch_group)?.add(Box::new(shard))?;
            daemon.switch_engines.push(id);
        }
        daemon.switch_group = switch_group;
        Ok(daemon)
    }

    fn running_group(&self, name: &str) -> Result<&RunningGroup, DaemonError> {
        self.groups
            .iter()
            .find(|g| g.config.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("engine group '{name}'")))
    }

    fn group(&self, name: &str) -> Result<&EngineGroup, DaemonError> {
        self.running_group(name).map(|g| &*g.group)
    }

    /// The group, to hold while `self` changes.
    fn shared_group(&self, name: &str) -> Result<Arc<EngineGroup>, DaemonError> {
        self.running_group(name).map(|g| g.group.clone())
    }

    fn vnic_index(&self, name: &str) -> Result<usize, DaemonError> {
        self.vnics
            .iter()
            .position(|v| v.config.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("vNIC '{name}'")))
    }

    fn uplink_index(&self, name: &str) -> Result<usize, DaemonError> {
        self.uplinks
            .iter()
            .position(|u| u.config.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("uplink '{name}'")))
    }

    /// The switch shard a new port goes to: the one asked for, else the
    /// one with the fewest ports.
    fn shard_for(&self, asked: Option<u16>) -> usize {
        asked.map_or_else(|| self.switch.least_loaded_shard(), usize::from)
    }

    /// The engine a port's engines are placed beside: its switch shard, when
    /// the switch is sharded and they run in the same group (then a frame
    /// between a vNIC and its shard never changes cores). With one shard,
    /// engines are spread over the threads as before.
    fn near_shard(&self, group: &str, shard: usize) -> Option<EngineId> {
        (self.switch_engines.len() > 1 && group == self.switch_group)
            .then(|| self.switch_engines.get(shard).copied())
            .flatten()
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
            .chain(
                self.config
                    .uplinks
                    .iter()
                    .filter(|u| self.config.uplink_group_of(u) == name)
                    .map(|u| format!("uplink {}", u.name)),
            )
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
        self.add_vnic_with(v, None).map(|_| ())
    }

    /// Adds a vNIC, new or (`takeover`) one that an upgrade's old process
    /// hands over: its engines then continue from the old ones' state and
    /// the frames that were waiting for its guest go first. A taken-over
    /// vNIC comes back without its connection, which is the old process's
    /// and is replayed once every port exists (`Daemon::connect_taken_over`):
    /// until then its guest's frames would find no route.
    fn add_vnic_with(
        &mut self,
        v: VnicConfig,
        mut takeover: Option<VnicTakeover>,
    ) -> Result<Option<VnicTakeover>, DaemonError> {
        if let (Some(source), None) = (v.incoming_for.as_deref(), takeover.as_ref()) {
            if self.vnic_index(source).is_err() {
                return Err(DaemonError::NotFound(format!(
                    "vNIC '{source}' (the source of the migration '{}' is incoming for)",
                    v.name
                )));
            }
        }
        let mut next = self.config.clone();
        next.vnics.push(v.clone());
        next.validate()?;
        next.fits_pool(self.pool.total_frames().0)?;
        let socket = next.socket_path(&v);
        let socket_gid = match (&next.vnic_socket_group, v.role) {
            (Some(group), SocketRole::Server) => Some(
                socket_group::group_id("vnic_socket_group", group).map_err(|message| {
                    ConfigError::Invalid {
                        path: "vnic_socket_group".into(),
                        message,
                    }
                })?,
            ),
            _ => None,
        };
        // The other end of a migration keeps the MAC's frames until this
        // one's rings start.
        let static_macs = if self.migration_partner(&v).is_some() {
            Vec::new()
        } else {
            vec![v.mac]
        };
        // A client only connects: nothing of its frontend's is created or
        // removed. A server binds, replacing a socket left by an earlier run
        // (and nothing else).
        if v.role == SocketRole::Server && takeover.is_none() {
            socket_path::prepare(&socket, &next.socket_dirs(), true)?;
        }
        let group_name = next.group_of(&v).to_string();
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut senders = Vec::new();
        let mut queues = Vec::new();
        let mut engines = Vec::new();
        let guard = v.spoof_guard();
        let log = Arc::new(GuestLog::new(guest_log::INTERVAL));
        // One pair of buckets for all the queues: the limits are the vNIC's.
        let shaping = VnicShaping::new(
            &v.tx_limit.unwrap_or_default(),
            &v.rx_limit.unwrap_or_default(),
        );
        for q in 0..v.queue_pairs {
            let (to_switch, switch_in) = link(LINK_CAPACITY).map_err(io("link"))?;
            let (switch_out, from_switch) = link(LINK_CAPACITY).map_err(io("link"))?;
            let (mut engine, sender, counters) = VnicEngine::new(
                VnicEngineConfig {
                    name: format!("{}/q{q}", v.name),
                    mtu: v.mtu,
                    guard: guard.clone(),
                    shaping: shaping.for_queue(u32::from(q)),
                    log: log.clone(),
                },
                &self.pool,
                to_switch,
                from_switch,
            )
            .map_err(io("engine mailbox"))?;
            let mut switch_out = switch_out;
            if let Some(t) = takeover.as_mut() {
                t.continue_queue(usize::from(q), &mut engine, &mut switch_out, &self.pool);
            }
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
            // Taken over: its engines are gated until the old process has
            // let go, and so is what the replay asks of them.
            match takeover {
                Some(_) => EngineSink::gated(senders),
                None => EngineSink::new(senders),
            },
        ));
        // The socket last: a frontend may connect as soon as it exists.
        let shard = self.shard_for(v.shard);
        let (port, port_counters) = match takeover.as_mut().filter(|t| t.bridged) {
            // A vNIC moving step by step: its links go to a bridge to the
            // old process's switch until the switch moves too.
            Some(t) => {
                t.switch_ends = inputs.into_iter().zip(outputs).collect();
                (UNPLUGGED, Arc::default())
            }
            None => self.switch.add_port_on(
                shard,
                SwitchPort::new(&v.name, PortNetwork::Only(v.network), inputs, outputs)
                    .with_weight(v.weight),
                static_macs,
            )?,
        };
        let group = self.group(&group_name)?;
        let engine_ids = match place_engines(group, engines, self.near_shard(&group_name, shard)) {
            Ok(ids) => ids,
            Err(err) => {
                let _ = self.switch.remove_port(port);
                return Err(err);
            }
        };
        let connection = match takeover {
            Some(_) => None,
            None => match Connection::spawn(device.clone(), &socket, v.role, socket_gid) {
                Ok(c) => Some(c),
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
            },
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
        self.redirect_macs(&v.name, v.macs(), true);
        self.vnics.push(RunningVnic {
            config: v,
            device,
            socket,
            connection,
            port,
            port_counters,
            queues,
            engines: engine_ids,
            upgrade_blackout: None,
        });
        self.config = next;
        if takeover.is_none() {
            self.arm_rings_started(self.vnics.len() - 1);
        }
        Ok(takeover)
    }

    /// The vNICs whose guests are being live-migrated (dirty-page logging
    /// on, or a log mapped for it).
    pub fn migrating_vnics(&self) -> Vec<&str> {
        self.vnics
            .iter()
            .filter(|v| v.device.migrating())
            .map(|v| v.config.name.as_str())
            .collect()
    }

    /// The running vNIC that is the other end of `v`'s live migration on
    /// this host, if any.
    fn migration_partner(&self, v: &VnicConfig) -> Option<usize> {
        self.vnics.iter().position(|w| v.migrates_with(&w.config))
    }

    /// Runs `observer` each time a vNIC's guest starts its rings, with the
    /// vNIC's network and MACs (from the vhost-user thread: it must not
    /// wait for the daemon).
    pub fn set_guest_started_observer(&mut self, observer: GuestStarted) {
        self.guest_started = Some(observer);
        for i in 0..self.vnics.len() {
            self.arm_rings_started(i);
        }
    }

    /// What runs when vNIC `i`'s guest starts its rings, set on it and on
    /// the other end of its migration on this host (if there is one): each
    /// end takes the MAC's frames when its guest's rings start (the guest
    /// runs where its rings run: the destination once QEMU moved it, the
    /// source again after a migration that failed at the end), and the
    /// observer (the directory) hears of it.
    pub(super) fn arm_rings_started(&self, i: usize) {
        let partner = self.migration_partner(&self.vnics[i].config);
        for k in std::iter::once(i).chain(partner) {
            let v = &self.vnics[k];
            let moves_mac = partner.is_some().then(|| self.switch.clone());
            let observer = self.guest_started.clone();
            if moves_mac.is_none() && observer.is_none() {
                v.device.on_rings_started(None);
                continue;
            }
            let (name, network, port) = (v.config.name.clone(), v.config.network, v.port);
            let (mac, macs): (MacAddr, Vec<MacAddr>) = (v.config.mac, v.config.macs().collect());
            v.device.on_rings_started(Some(Arc::new(move || {
                if let Some(switch) = &moves_mac {
                    match switch.fdb_add_static(network, mac, port) {
                        Ok(true) => {
                            log::info!("{name}: its guest's rings started: {mac} goes to it")
                        }
                        Ok(false) => {}
                        Err(e) => log::warn!("{name}: cannot move {mac} to it: {e}"),
                    }
                }
                if let Some(observe) = &observer {
                    observe(network, &macs);
                }
            })));
        }
    }

    /// Disconnects the guest, stops the vNIC's engines and frees its frames.
    pub fn remove_vnic(&mut self, name: &str) -> Result<(), DaemonError> {
        let i = self.vnic_index(name)?;
        let mut v = self.vnics.remove(i);
        self.config.vnics.retain(|c| c.name != name);
        let unused = self.unused_macs(v.config.macs());
        self.redirect_macs(name, unused.into_iter(), false);
        self.teardown(&mut v);
        // The other end of its migration is the MAC's only port now.
        if let Some(j) = self.migration_partner(&v.config) {
            self.arm_rings_started(j);
            let w = &self.vnics[j];
            if let Err(e) = self
                .switch
                .fdb_add_static(w.config.network, w.config.mac, w.port)
            {
                log::warn!("{}: cannot take {}: {e}", w.config.name, w.config.mac);
            }
        }
        log::info!("{name}: removed");
        Ok(())
    }

    /// Tells every flat uplink to hand frames to `macs` to snapnet (`add`),
    /// or to the kernel again; a failure is logged, the vNIC works on
    /// without its uplink traffic.
    fn redirect_macs(&mut self, vnic: &str, macs: impl Iterator<Item = MacAddr>, add: bool) {
        let macs: Vec<MacAddr> = macs.collect();
        for u in self
            .uplinks
            .iter_mut()
            .filter(|u| u.config.overlay.is_none())
        {
            for &mac in &macs {
                let done = if add {
                    u.program.add_guest(mac)
                } else {
                    u.program.remove_guest(mac)
                };
                if let Err(e) = done {
                    log::warn!(
                        "{vnic}: uplink {} did not {} {mac}: {e}",
                        u.config.name,
                        if add { "redirect" } else { "stop redirecting" },
                    );
                }
            }
        }
    }

    /// Those of `macs` that no vNIC of the current config sends from (an
    /// address pair may be shared, e.g. by the two routers of a VRRP pair).
    fn unused_macs(&self, macs: impl Iterator<Item = MacAddr>) -> Vec<MacAddr> {
        let used: std::collections::HashSet<MacAddr> =
            self.config.vnics.iter().flat_map(|v| v.macs()).collect();
        macs.filter(|m| !used.contains(m)).collect()
    }

    fn teardown(&self, v: &mut RunningVnic) {
        if let Some(c) = v.connection.take() {
            c.stop();
        }
        if v.port != UNPLUGGED {
            if let Err(e) = self.switch.remove_port(v.port) {
                log::warn!("{}: switch did not remove the port: {e}", v.config.name);
            }
        }
        // Dropping an engine returns its queued frames to the pool.
        let group = self.config.group_of(&v.config).to_string();
        self.remove_engines(&group, &mut v.engines, &v.config.name);
    }

    /// Takes `ids` out of group `group` (the engines drop, freeing what
    /// they hold); failures are logged, for a teardown goes on regardless.
    fn remove_engines(&self, group: &str, ids: &mut Vec<EngineId>, owner: &str) {
        if let Ok(group) = self.group(group) {
            for id in ids.drain(..) {
                if let Err(e) = group.remove(id) {
                    log::warn!("{owner}: engine not removed: {e}");
                }
            }
        }
    }

    /// Attaches the XDP program to the uplink's interface, opens one AF_XDP
    /// socket per queue over the frame pool, and plugs the queue engines into
    /// the switch.
    pub fn add_uplink(&mut self, u: UplinkConfig) -> Result<(), DaemonError> {
        let next = self.config_with_uplink(&u)?;
        let uplink_name = u.name.clone();
        let fail = uplink_err(&uplink_name);
        let ifindex = interface_index(&u.name, &u.interface)?;
        let mut program = UplinkProgram::attach(&u.interface, ifindex, u.xdp_mode)
            .map_err(|e| fail(e.to_string()))?;
        match &u.overlay {
            Some(o) => program
                .add_vtep(o.local_ip)
                .map_err(|e| fail(e.to_string()))?,
            None => {
                // A flat uplink: guests' frames are redirected by MAC.
                for mac in self.vnics.iter().flat_map(|v| v.config.macs()) {
                    program.add_guest(mac).map_err(|e| fail(e.to_string()))?;
                }
            }
        }
        let (base, len, chunk_size) = self.pool.umem_region();
        let umem = UmemArea {
            base,
            len,
            chunk_size,
        };
        let mut queues = Vec::with_capacity(u.queues.len());
        for (i, &q) in u.queues.iter().enumerate() {
            let xsk = XskSocket::open(ifindex, q, umem, RingSizes::default(), u.bind_mode)
                .map_err(|e| fail(format!("queue {q}: {e}")))?;
            program
                .set_socket(q, &xsk)
                .map_err(|e| fail(e.to_string()))?;
            // One packet socket per flat uplink is enough for group-addressed
            // frames (an overlay's broadcasts come as VXLAN).
            let tap = if i == 0 && u.overlay.is_none() {
                Some(GroupTap::open(ifindex).map_err(|e| fail(format!("packet socket: {e}")))?)
            } else {
                None
            };
            queues.push(QueueParts {
                xsk,
                tap,
                state: None,
                for_wire: Vec::new(),
            });
        }
        let group_name = next.uplink_group_of(&u).to_string();
        let engines = self.plug_uplink(&next, u, program, queues)?;
        if let Err(e) = self.serve_uplink(&uplink_name, engines, &group_name) {
            if let Some(u) = self.uplinks.pop() {
                let _ = self.switch.remove_port(u.port);
            }
            return Err(e);
        }
        self.config = next;
        Ok(())
    }

    /// The configuration with uplink `u` added, checked.
    fn config_with_uplink(&self, u: &UplinkConfig) -> Result<Config, DaemonError> {
        let mut next = self.config.clone();
        next.uplinks.push(u.clone());
        next.validate()?;
        next.fits_pool(self.pool.total_frames().0)?;
        Ok(next)
    }

    /// Builds uplink `u`'s queue engines over their sockets and adds its
    /// switch port and its entry (last) in `self.uplinks`; the engines are
    /// not in a group yet ([`Self::serve_uplink`]).
    fn plug_uplink(
        &mut self,
        next: &Config,
        u: UplinkConfig,
        program: UplinkProgram,
        queues: Vec<QueueParts>,
    ) -> Result<Vec<UplinkQueueEngine>, DaemonError> {
        let name = u.name.clone();
        let fail = uplink_err(&name);
        let overlay = match &u.overlay {
            Some(o) => {
                let mac = interface_mac(&u.interface).map_err(|e| fail(e.to_string()))?;
                Some(OverlayTable::new(o, mac).map_err(&fail)?)
            }
            None => None,
        };
        let mut inputs = Vec::new();
        let mut outputs = Vec::new();
        let mut running_queues = Vec::new();
        let mut engines = Vec::new();
        let mut zerocopy = true;
        for (&q, parts) in u.queues.iter().zip(queues) {
            zerocopy &= parts.xsk.is_zerocopy();
            let (to_switch, switch_in) = link(LINK_CAPACITY).map_err(io("link"))?;
            let (mut switch_out, from_switch) = link(LINK_CAPACITY).map_err(io("link"))?;
            let cfg = UplinkQueueConfig {
                name: format!("{}/q{q}", u.name),
                max_frame: usize::from(u.mtu) + snapnet_wire::ethernet::HEADER_LEN,
                tx_limit: u.tx_limit.unwrap_or_default(),
                tap: parts.tap,
                overlay: overlay.clone(),
            };
            let built = match &parts.state {
                None => UplinkQueueEngine::new(cfg, parts.xsk, &self.pool, to_switch, from_switch),
                Some(state) => UplinkQueueEngine::take_over(
                    cfg,
                    parts.xsk,
                    &self.pool,
                    to_switch,
                    from_switch,
                    state,
                ),
            };
            let (engine, mailbox, counters) = built.map_err(io("uplink engine"))?;
            // Frames that waited for the wire in the old process go first.
            let mut cache = self.pool.cache();
            for frame in parts.for_wire {
                if let Err(frame) = switch_out.push(frame) {
                    cache.free(frame);
                }
            }
            inputs.push(switch_in);
            outputs.push(switch_out);
            running_queues.push(RunningUplinkQueue {
                queue: q,
                counters,
                mailbox,
            });
            engines.push(engine);
        }
        let shard = self.shard_for(u.shard);
        let (port, port_counters) = self.switch.add_port_on(
            shard,
            SwitchPort::new(
                &u.name,
                if u.overlay.is_some() {
                    PortNetwork::Any
                } else {
                    PortNetwork::Only(u.network)
                },
                inputs,
                outputs,
            ),
            Vec::new(),
        )?;
        log::info!(
            "{}: uplink on {} queue(s) {:?}, XDP {:?}, {} (mtu {}, group {})",
            u.name,
            u.interface,
            u.queues,
            program.mode(),
            if zerocopy { "zero-copy" } else { "copy mode" },
            u.mtu,
            next.uplink_group_of(&u),
        );
        self.uplinks.push(RunningUplink {
            config: u,
            program,
            zerocopy,
            port,
            shard,
            port_counters,
            queues: running_queues,
            engines: Vec::new(),
        });
        Ok(engines)
    }

    /// Puts a plugged uplink's engines in group `group_name`: it serves.
    fn serve_uplink(
        &mut self,
        name: &str,
        engines: Vec<UplinkQueueEngine>,
        group_name: &str,
    ) -> Result<(), DaemonError> {
        let i = self.uplink_index(name)?;
        let group = self.group(group_name)?;
        let ids = place_engines(
            group,
            engines.into_iter().map(Box::new).collect(),
            self.near_shard(group_name, self.uplinks[i].shard),
        )?;
        self.uplinks[i].engines = ids;
        Ok(())
    }

    /// Stops the uplink's engines, closes its sockets and detaches its XDP
    /// program: the interface is the kernel's alone again.
    pub fn remove_uplink(&mut self, name: &str) -> Result<(), DaemonError> {
        let i = self.uplink_index(name)?;
        if self.is_directory_uplink(name) {
            return Err(DaemonError::InUse(format!(
                "uplink '{name}' is the directory's (directory.uplink)"
            )));
        }
        if self.pony_uses(name) {
            return Err(DaemonError::InUse(format!(
                "uplink '{name}' carries Pony Express (pony.uplink)"
            )));
        }
        let u = self.uplinks.remove(i);
        self.teardown_uplink(u);
        self.config.uplinks.retain(|c| c.name != name);
        log::info!("{name}: uplink removed");
        Ok(())
    }

    fn teardown_uplink(&self, mut u: RunningUplink) {
        if let Err(e) = self.switch.remove_port(u.port) {
            log::warn!("{}: switch did not remove the port: {e}", u.config.name);
        }
        // Dropping an engine closes its socket, then reclaims its frames.
        let group = self.config.uplink_group_of(&u.config).to_string();
        self.remove_engines(&group, &mut u.engines, &u.config.name);
        // `u.program` drops here: the bpf_link goes and the program detaches.
    }

    /// Changes a running uplink's overlay table and/or egress limit, through
    /// its engines' mailboxes: traffic goes on, the next frame uses the new
    /// table. (A flat uplink cannot become an overlay here: remove and add it.)
    pub fn update_uplink(
        &mut self,
        name: &str,
        overlay: Option<crate::uplink::overlay::OverlayConfig>,
        tx_limit: Option<Option<RateLimit>>,
    ) -> Result<(), DaemonError> {
        if overlay.is_some() && self.is_directory_uplink(name) {
            return Err(DaemonError::InUse(format!(
                "uplink '{name}''s overlay table is the directory's (directory.uplink)"
            )));
        }
        self.change_uplink(name, overlay, tx_limit)
    }

    /// Gives the directory's uplink the table the directory derived. Only
    /// the overlay changes, so only it is checked (by building it), not the
    /// whole config: this runs at every change in the directory, with
    /// tables of thousands of entries.
    pub fn program_directory_table(
        &mut self,
        table: &crate::uplink::overlay::OverlayConfig,
    ) -> Result<(), DaemonError> {
        let Some(name) = self.config.directory.as_ref().map(|d| d.uplink.clone()) else {
            return Err(DaemonError::NotFound("a directory section".into()));
        };
        let i = self.uplink_index(&name)?;
        let mac =
            interface_mac(&self.uplinks[i].config.interface).map_err(io("interface address"))?;
        let built = OverlayTable::new(table, mac).map_err(uplink_err(&name))?;
        for q in &self.uplinks[i].queues {
            let built = built.clone();
            let old = q
                .mailbox
                .call(ENGINE_CALL_TIMEOUT, move |e: &mut UplinkQueueEngine| {
                    e.set_overlay(Some(built))
                })?;
            drop(old);
        }
        self.uplinks[i].config.overlay = Some(table.clone());
        if let Some(c) = self.config.uplinks.iter_mut().find(|c| c.name == name) {
            c.overlay = Some(table.clone());
        }
        Ok(())
    }

    fn is_directory_uplink(&self, name: &str) -> bool {
        self.config
            .directory
            .as_ref()
            .is_some_and(|d| d.uplink == name)
    }

    /// This host's guests as the directory publishes them: every vNIC's
    /// MAC and allowed-address-pair MACs in its network, with the addresses
    /// each may use. A vNIC incoming for a local migration shares its
    /// source's MAC, so it adds nothing.
    pub fn directory_entries(&self) -> crate::directory::LocalEntries {
        let mut out = crate::directory::LocalEntries::default();
        for v in &self.config.vnics {
            out.insert(v.network, v.mac, v.allowed_ips.clone());
            for p in &v.allowed_address_pairs {
                let ips = p.ips.clone().or_else(|| v.allowed_ips.clone());
                out.insert(v.network, p.mac, ips);
            }
        }
        out
    }

    /// The MAC other hosts send the directory's uplink's frames to.
    pub fn directory_uplink_mac(&self) -> Result<MacAddr, DaemonError> {
        let u = self
            .config
            .directory_uplink()
            .ok_or_else(|| DaemonError::NotFound("the directory's uplink".into()))?;
        interface_mac(&u.interface).map_err(io("interface address"))
    }

    fn change_uplink(
        &mut self,
        name: &str,
        overlay: Option<crate::uplink::overlay::OverlayConfig>,
        tx_limit: Option<Option<RateLimit>>,
    ) -> Result<(), DaemonError> {
        let i = self.uplink_index(name)?;
        let mut next = self.config.clone();
        let c = next
            .uplinks
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("uplink '{name}'")))?;
        if overlay.is_some() && c.overlay.is_none() {
            return Err(DaemonError::Uplink {
                name: name.to_string(),
                message: "a flat uplink cannot take an overlay table; remove and add it".into(),
            });
        }
        if let Some(o) = &overlay {
            c.overlay = Some(o.clone());
        }
        if let Some(t) = tx_limit {
            c.tx_limit = t;
        }
        let updated = c.clone();
        next.validate()?;
        let table = match &overlay {
            Some(o) => {
                let mac = interface_mac(&updated.interface).map_err(io("interface address"))?;
                Some(OverlayTable::new(o, mac).map_err(uplink_err(name))?)
            }
            None => None,
        };
        let limit = updated.tx_limit.unwrap_or_default();
        for q in &self.uplinks[i].queues {
            let table = table.clone();
            let change_limit = tx_limit.is_some();
            q.mailbox
                .call(ENGINE_CALL_TIMEOUT, move |e: &mut UplinkQueueEngine| {
                    if table.is_some() {
                        // Freed on this side, not on the engine's thread.
                        drop(e.set_overlay(table));
                    }
                    if change_limit {
                        e.set_tx_limit(&limit);
                    }
                })?;
        }
        self.uplinks[i].config = updated;
        self.config = next;
        Ok(())
    }

    /// Counters of every uplink.
    pub fn uplink_report(&self) -> Vec<UplinkReport> {
        self.uplinks
            .iter()
            .map(|u| UplinkReport {
                name: u.config.name.clone(),
                interface: u.config.interface.clone(),
                xdp_mode: u.program.mode(),
                zerocopy: u.zerocopy,
                queues: u
                    .queues
                    .iter()
                    .map(|q| (q.queue, q.counters.snapshot(), q.counters.kernel_snapshot()))
                    .collect(),
                port: u.port_counters.snapshot(),
            })
            .collect()
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
                upgrade_blackout: v.upgrade_blackout,
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

    /// The switch's forwarding entries: (network, MAC, port name, static).
    pub fn fdb_entries(&self) -> Result<Vec<(u32, MacAddr, String, bool)>, DaemonError> {
        let entries = self.switch.fdb_entries()?;
        Ok(entries
            .into_iter()
            .map(|(network, mac, e)| {
                let port = self
                    .vnics
                    .iter()
                    .find(|v| v.port == e.port)
                    .map(|v| v.config.name.clone())
                    .or_else(|| {
                        self.uplinks
                            .iter()
                            .find(|u| u.port == e.port)
                            .map(|u| u.config.name.clone())
                    })
                    .unwrap_or_else(|| format!("port{}", e.port.0));
                (network, mac, port, e.is_static)
            })
            .collect())
    }

    /// Pins `mac` to vNIC `vnic`'s switch port, in the vNIC's network (which
    /// it returns).
    pub fn fdb_add(&self, mac: MacAddr, vnic: &str) -> Result<u32, DaemonError> {
        let v = self
            .vnics
            .iter()
            .find(|v| v.config.name == vnic)
            .ok_or_else(|| DaemonError::NotFound(format!("vNIC '{vnic}'")))?;
        if !self.switch.fdb_add_static(v.config.network, mac, v.port)? {
            return Err(DaemonError::NotFound(format!(
                "switch port of vNIC '{vnic}'"
            )));
        }
        Ok(v.config.network)
    }

    /// Forgets `mac` in `network` in the switch.
    pub fn fdb_remove(&self, network: u32, mac: MacAddr) -> Result<(), DaemonError> {
        if !self.switch.fdb_remove(network, mac)? {
            return Err(DaemonError::NotFound(format!(
                "forwarding entry for {mac} in network {network}"
            )));
        }
        Ok(())
    }

    /// Changes vNIC `name`'s rate limits (`Some(None)` removes one) and its
    /// weight, without stopping its traffic.
    pub fn set_vnic_shaping(
        &mut self,
        name: &str,
        tx_limit: Option<Option<RateLimit>>,
        rx_limit: Option<Option<RateLimit>>,
        weight: Option<u32>,
    ) -> Result<(), DaemonError> {
        let i = self.vnic_index(name)?;
        let mut next = self.config.clone();
        let c = next
            .vnics
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("vNIC '{name}'")))?;
        if let Some(t) = tx_limit {
            c.tx_limit = t;
        }
        if let Some(r) = rx_limit {
            c.rx_limit = r;
        }
        if let Some(w) = weight {
            c.weight = w;
        }
        let updated = c.clone();
        next.validate()?;
        // Fresh, full buckets, one pair for all the vNIC's queues.
        let shaping = VnicShaping::new(
            &updated.tx_limit.unwrap_or_default(),
            &updated.rx_limit.unwrap_or_default(),
        );
        self.vnics[i].device.sink().configure_each(move |q| {
            let shaping = shaping.for_queue(q as u32);
            move |e: &mut VnicEngine| e.set_limits(shaping)
        })?;
        self.switch
            .set_port_weight(self.vnics[i].port, updated.weight)?;
        self.vnics[i].config = updated;
        self.config = next;
        Ok(())
    }

    /// Changes the addresses vNIC `name`'s guest may send from (`None`: only
    /// its MAC is checked).
    pub fn set_vnic_allowed_ips(
        &mut self,
        name: &str,
        allowed: Option<Vec<std::net::IpAddr>>,
    ) -> Result<(), DaemonError> {
        self.set_vnic_port_security(
            name,
            PortSecurityChange {
                allowed_ips: Some(allowed),
                ..Default::default()
            },
        )
    }

    /// Changes vNIC `name`'s port security: its allowed addresses and
    /// address pairs, or whether anything is checked. The new guard reaches
    /// each engine through its mailbox between two batches.
    pub fn set_vnic_port_security(
        &mut self,
        name: &str,
        change: PortSecurityChange,
    ) -> Result<(), DaemonError> {
        let i = self.vnic_index(name)?;
        let mut next = self.config.clone();
        let c = next
            .vnics
            .iter_mut()
            .find(|c| c.name == name)
            .ok_or_else(|| DaemonError::NotFound(format!("vNIC '{name}'")))?;
        if let Some(allowed) = change.allowed_ips {
            c.allowed_ips = allowed;
        }
        if let Some(pairs) = change.allowed_address_pairs {
            c.allowed_address_pairs = pairs;
        }
        if let Some(on) = change.port_security {
            c.port_security = on;
        }
        let updated = c.clone();
        next.validate()?;
        let guard = updated.spoof_guard();
        self.vnics[i]
            .device
            .sink()
            .configure(move |e| e.set_guard(guard.clone()))?;
        let old = std::mem::replace(&mut self.vnics[i].config, updated.clone());
        self.config = next;
        let unused = self.unused_macs(old.macs());
        self.redirect_macs(name, unused.into_iter(), false);
        self.redirect_macs(name, updated.macs(), true);
        Ok(())
    }

    /// The frame pool (for leak checks).
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }

    /// Disconnects every frontend, stops every engine, removes the sockets.
    pub fn stop(mut self) {
        self.stop_pony();
        let mut vnics = std::mem::take(&mut self.vnics);
        for v in vnics.iter_mut() {
            if let Some(c) = v.connection.take() {
                c.stop();
            }
        }
        for mut v in vnics {
            self.teardown(&mut v);
        }
        for u in std::mem::take(&mut self.uplinks) {
            self.teardown_uplink(u);
        }
        let shards = std::mem::take(&mut self.switch_engines);
        if let Ok(group) = self.group(&self.switch_group) {
            for id in shards {
                let _ = group.remove(id);
            }
        }
        for g in self.groups.drain(..) {
            g.group.stop();
        }
    }
}

/// The MAC address of a host interface.
/// Says what the pool got, and how to get huge pages when it got 4 KiB
/// pages (docs/performance.md has what they cost).
fn log_pool_pages(pool: &FramePool) {
    use crate::packet::pool_memory::{shmem_thp_setting, Pages};
    let (small, large) = pool.total_frames();
    let pages = pool.pages();
    log::info!("frame pool: {small} small and {large} large frames in {pages}");
    if pages == Pages::Small {
        log::warn!(
            "frame pool: 4 KiB pages (no free hugetlb pages, and shmem_enabled is {}): \
             reserve hugetlb pages (vm.nr_hugepages) or set \
             /sys/kernel/mm/transparent_hugepage/shmem_enabled to advise for huge pages",
            shmem_thp_setting()
        );
    }
}

/// The index of interface `name` in snapnet's network namespace.
fn interface_index(uplink: &str, name: &str) -> Result<u32, DaemonError> {
    let ifname = std::ffi::CString::new(name).map_err(|_| DaemonError::Uplink {
        name: uplink.to_string(),
        message: format!("'{name}' is not an interface name"),
    })?;
    // SAFETY: `ifname` is a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    if ifindex == 0 {
        return Err(DaemonError::NotFound(format!(
            "interface '{name}' (in snapnet's network namespace)"
        )));
    }
    Ok(ifindex)
}

fn interface_mac(name: &str) -> std::io::Result<MacAddr> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address"))?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}")))
}

/// Takes engines `ids` (all of type `E`) out of `group`. On an error the
/// ones taken so far go back, and `ids` names the group's engines again.
fn take_out_of<E: crate::engine::Engine + 'static>(
    group: &crate::sched::EngineGroup,
    ids: &mut Vec<crate::sched::EngineId>,
) -> Result<Vec<E>, DaemonError> {
    let all = std::mem::take(ids);
    let mut engines = Vec::with_capacity(all.len());
    for (n, id) in all.iter().enumerate() {
        let removed = group.remove(*id).map_err(DaemonError::from).and_then(|e| {
            e.into_any()
                .downcast::<E>()
                .map_err(|_| DaemonError::Upgrade(format!("not a {}", std::any::type_name::<E>())))
        });
        match removed {
            Ok(e) => engines.push(*e),
            Err(err) => {
                let back = place_engines(group, engines.into_iter().map(Box::new).collect(), None);
                *ids = back.unwrap_or_default();
                ids.extend_from_slice(&all[n..]);
                return Err(err);
            }
        }
    }
    Ok(engines)
}

/// Adds every engine to `group` (on the thread of engine `near`, when
/// given), or none: on failure the ones already placed are taken out again
/// (and dropped, which frees what they hold).
fn place_engines<E: crate::engine::Engine + 'static>(
    group: &EngineGroup,
    engines: Vec<Box<E>>,
    near: Option<EngineId>,
) -> Result<Vec<EngineId>, DaemonError> {
    let mut ids = Vec::with_capacity(engines.len());
    for e in engines {
        let placed = match near {
            Some(near) => group.add_near(e, near),
            None => group.add(e),
        };
        match placed {
            Ok(id) => ids.push(id),
            Err(err) => {
                for id in ids {
                    let _ = group.remove(id);
                }
                return Err(err.into());
            }
        }
    }
    Ok(ids)
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
