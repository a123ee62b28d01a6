//! The daemon's configuration: a JSON file, or the embedded default.
//!
//! Unknown keys are refused (serde `deny_unknown_fields`) and every error names
//! the path of the offending key (`vnics[1].mtu`), so a typo never silently
//! falls back to a default. `schemas/config.schema.json` describes the same
//! format; a test keeps the two in step.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::pool_sizing;
use super::socket_path::{check_inside, check_plain_absolute};
use crate::vnic::SocketRole;
use snapnet_wire::MacAddr;

/// Where sockets go when a vNIC names none.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/snapnet";

pub const MIN_MTU: u16 = 68;
pub const MAX_MTU: u16 = 9000;
pub const MAX_QUEUE_PAIRS: u16 = 16;
/// Addresses in one `allowed_ips` list.
pub const MAX_ALLOWED_IPS: usize = 64;
/// Allowed address pairs of one vNIC.
pub const MAX_ADDRESS_PAIRS: usize = 16;
/// Entries of `socket_dirs`.
pub const MAX_SOCKET_DIRS: usize = 16;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config: {path}: {message}")]
    Invalid { path: String, message: String },
    /// A name, MAC or socket path given twice.
    #[error("config: {path}: {message}")]
    Duplicate { path: String, message: String },
}

fn duplicate(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Duplicate {
        path: path.into(),
        message: message.into(),
    }
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for sockets of vNICs that give no `socket`.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// Directories besides `runtime_dir` where vNIC sockets may be (served
    /// or connected to). A socket path anywhere else is refused.
    #[serde(default)]
    pub socket_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub vnics: Vec<VnicConfig>,
    /// Host NICs the switch reaches through AF_XDP.
    #[serde(default)]
    pub uplinks: Vec<UplinkConfig>,
    #[serde(default = "default_groups")]
    pub groups: Vec<GroupConfig>,
    /// Group that runs the switch engine (default: the first group).
    #[serde(default)]
    pub switch_group: Option<String>,
    /// Switch shards: engines that switch in parallel, each serving the
    /// ports homed on it (1: one switch engine, as before).
    #[serde(default = "default_switch_shards")]
    pub switch_shards: u16,
    /// The JSON-RPC control socket (default: `<runtime_dir>/control.sock`).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Unix group allowed to use the control socket (mode 0660); without
    /// it the socket is root-only (0600).
    #[serde(default)]
    pub control_group: Option<String>,
    /// Unix group allowed to connect to the vNIC sockets snapnet listens on
    /// (mode 0660; e.g. `kvm`, libvirt's QEMU group on Debian); without it
    /// they are root's alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnic_socket_group: Option<String>,
    /// Address learning in the switch's forwarding database.
    #[serde(default)]
    pub fdb: FdbConfig,
    /// The shared frame pool's size (see `control::pool_sizing`).
    #[serde(default)]
    pub frame_pool: FramePoolConfig,
    /// The overlay directory in etcd (docs/directory.md): absent, overlay
    /// tables are only what the config and `uplink.update` give.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<crate::directory::DirectoryConfig>,
    /// Pony Express for host applications (docs/pony.md): absent, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pony: Option<crate::pony::PonyConfig>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbConfig {
    /// Addresses one port may have learned in one network; beyond it,
    /// frames to its new addresses are flooded.
    #[serde(default = "default_fdb_max_learned")]
    pub max_learned_per_port: u32,
    /// Seconds a learned address is kept after its last frame.
    #[serde(default = "default_fdb_max_age_s")]
    pub max_age_s: u32,
}

impl Default for FdbConfig {
    fn default() -> Self {
        Self {
            max_learned_per_port: default_fdb_max_learned(),
            max_age_s: default_fdb_max_age_s(),
        }
    }
}

/// The frame pool: every port may hold a bounded number of frames (its
/// quota), and the pool is sized for all of them, so no port can leave
/// another without frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramePoolConfig {
    /// Small (4 KiB) frames. Absent: what the configured ports may hold,
    /// plus `spare_queue_pairs` vNIC queue pairs' worth. A vNIC or uplink
    /// added at run time is refused when the pool cannot hold its quota.
    #[serde(default)]
    pub frames: Option<u32>,
    /// vNIC queue pairs that may be added at run time, when `frames` is
    /// derived (an uplink queue takes the room of about 2.3).
    #[serde(default = "default_spare_queue_pairs")]
    pub spare_queue_pairs: u16,
    /// Large frames (TSO/USO super-frames of up to 64 KiB).
    #[serde(default = "default_large_frames")]
    pub large_frames: u32,
    /// The pages behind the pool: `auto` (hugetlb where reserved, else
    /// transparent huge pages where the kernel allows them for shared
    /// memory, else 4 KiB), or one of them, refused when not available.
    #[serde(default)]
    pub pages: crate::packet::pool_memory::PageChoice,
}

/// Large frames when the config says nothing.
fn default_large_frames() -> u32 {
    crate::packet::pool::DEFAULT_LARGE_FRAMES
}

impl Default for FramePoolConfig {
    fn default() -> Self {
        Self {
            frames: None,
            spare_queue_pairs: default_spare_queue_pairs(),
            large_frames: default_large_frames(),
            pages: Default::default(),
        }
    }
}

impl FdbConfig {
    pub fn limits(&self) -> crate::switch::fdb::FdbLimits {
        crate::switch::fdb::FdbLimits {
            max_learned: self.max_learned_per_port,
            max_age: std::time::Duration::from_secs(u64::from(self.max_age_s)),
        }
    }
}

fn default_fdb_max_learned() -> u32 {
    crate::switch::fdb::FdbLimits::default().max_learned
}
fn default_fdb_max_age_s() -> u32 {
    crate::switch::fdb::FdbLimits::default().max_age.as_secs() as u32
}

fn default_spare_queue_pairs() -> u16 {
    8
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VnicConfig {
    pub name: String,
    /// Socket path (default: `<runtime_dir>/<name>.sock`).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub role: SocketRole,
    #[serde(with = "snapnet_wire::mac_string")]
    pub mac: MacAddr,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    #[serde(default = "default_queue_pairs")]
    pub queue_pairs: u16,
    /// Group that runs this vNIC's engines (default: the first group).
    #[serde(default)]
    pub group: Option<String>,
    /// The virtual network (VXLAN VNI on an overlay uplink): vNICs of
    /// different networks never see each other's frames.
    #[serde(default)]
    pub network: u32,
    /// Addresses the guest may send from (IP source, ARP/ND sender); absent:
    /// only the source MAC is checked.
    #[serde(default)]
    pub allowed_ips: Option<Vec<std::net::IpAddr>>,
    /// More MACs the guest may send from (a VRRP virtual MAC, a router's
    /// other interfaces), each with its own optional address list.
    #[serde(default)]
    pub allowed_address_pairs: Vec<AddressPair>,
    /// Anti-spoofing on (default). Off, the guest may send from any MAC and
    /// address: for router and firewall VMs that forward others' frames.
    #[serde(default = "default_port_security")]
    pub port_security: bool,
    /// Guest egress limit: the guest's TX waits while out of tokens.
    #[serde(default)]
    pub tx_limit: Option<RateLimit>,
    /// Guest ingress limit: frames over it are dropped and counted.
    #[serde(default)]
    pub rx_limit: Option<RateLimit>,
    /// Share of a congested output (an uplink) against other vNICs (deficit
    /// round robin), 1..=1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// The switch shard that serves this vNIC (default: the one with the
    /// fewest ports). Its engines run on that shard's thread.
    #[serde(default)]
    pub shard: Option<u16>,
    /// The destination of a live migration on this host: the vNIC named
    /// here is the guest's source, whose MAC this one shares while both
    /// exist. The switch sends the MAC's frames to whichever of the two
    /// started its rings last (docs/migration.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming_for: Option<String>,
}

/// An extra MAC a vNIC's guest may send from (OpenStack's allowed address
/// pair).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressPair {
    #[serde(with = "snapnet_wire::mac_string")]
    pub mac: MacAddr,
    /// Addresses frames from `mac` may carry; absent: the vNIC's
    /// `allowed_ips` apply (and, when that is absent too, none are checked).
    #[serde(default)]
    pub ips: Option<Vec<std::net::IpAddr>>,
}

impl VnicConfig {
    /// Whether this vNIC and `other` are the two ends of a live migration
    /// on this host (one is `incoming_for` the other, with its MAC).
    pub fn migrates_with(&self, other: &VnicConfig) -> bool {
        self.mac == other.mac
            && self.name != other.name
            && (self.incoming_for.as_deref() == Some(other.name.as_str())
                || other.incoming_for.as_deref() == Some(self.name.as_str()))
    }

    /// The anti-spoofing guard this vNIC's engines enforce.
    pub fn spoof_guard(&self) -> crate::vnic::antispoof::SpoofGuard {
        let own = self.allowed_ips.as_deref();
        self.allowed_address_pairs
            .iter()
            .fold(
                crate::vnic::antispoof::SpoofGuard::new(self.mac, own),
                |g, p| g.with_pair(p.mac, p.ips.as_deref().or(own)),
            )
            .enabled(self.port_security)
    }

    /// Every MAC this vNIC's guest may send from (the frames the uplink
    /// must hand to snapnet).
    pub fn macs(&self) -> impl Iterator<Item = MacAddr> + '_ {
        std::iter::once(self.mac).chain(self.allowed_address_pairs.iter().map(|p| p.mac))
    }
}

fn default_port_security() -> bool {
    true
}
fn default_weight() -> u32 {
    1
}
fn default_switch_shards() -> u16 {
    1
}

pub use crate::shaping::RateLimit;

/// Largest virtual network id (a 24-bit VXLAN VNI).
pub const MAX_NETWORK: u32 = (1 << 24) - 1;

pub use crate::sched::Policy;
pub use crate::uplink::{BindMode, XdpMode};

/// Largest uplink MTU: a wire frame must fit one 4 KiB UMEM chunk after the
/// 256 B headroom (jumbo frames would need AF_XDP multi-buffer).
pub const MAX_UPLINK_MTU: u16 = 3800;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    pub name: String,
    /// The host interface (in snapnet's network namespace).
    pub interface: String,
    /// NIC queues to bind, one AF_XDP socket and engine each.
    #[serde(default = "default_uplink_queues")]
    pub queues: Vec<u32>,
    #[serde(default = "default_xdp_mode")]
    pub xdp_mode: XdpMode,
    #[serde(default = "default_bind_mode")]
    pub bind_mode: BindMode,
    /// The wire MTU: larger guest frames are segmented (GSO) or dropped.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Group that runs the queue engines (default: the first group).
    #[serde(default)]
    pub group: Option<String>,
    /// The virtual network whose frames a flat (untagged) uplink carries.
    #[serde(default)]
    pub network: u32,
    /// What the uplink may send to the wire; when it is the bottleneck the
    /// vNICs share it by weight.
    #[serde(default)]
    pub tx_limit: Option<RateLimit>,
    /// VXLAN overlay: frames of every network travel encapsulated to the
    /// remote host that owns the destination (absent: a flat uplink carrying
    /// `network` untagged).
    #[serde(default)]
    pub overlay: Option<crate::uplink::overlay::OverlayConfig>,
    /// The switch shard that serves this uplink (default: the one with the
    /// fewest ports).
    #[serde(default)]
    pub shard: Option<u16>,
}

fn default_uplink_queues() -> Vec<u32> {
    vec![0]
}
fn default_xdp_mode() -> XdpMode {
    XdpMode::Auto
}
fn default_bind_mode() -> BindMode {
    BindMode::Auto
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub policy: Policy,
    /// Threads of a dedicated group (a spreading group has one per engine).
    #[serde(default = "default_threads")]
    pub threads: u16,
    /// CPUs the threads are pinned to (empty: not pinned).
    #[serde(default)]
    pub cpus: Vec<usize>,
    /// Compacting: the queueing delay (µs) an engine may see before the
    /// group adds a thread.
    #[serde(default = "default_latency_bound_us")]
    pub latency_bound_us: u32,
}

fn default_runtime_dir() -> PathBuf {
    PathBuf::from(DEFAULT_RUNTIME_DIR)
}
fn default_mtu() -> u16 {
    1500
}
fn default_queue_pairs() -> u16 {
    1
}
fn default_threads() -> u16 {
    1
}
fn default_latency_bound_us() -> u32 {
    200
}
fn default_groups() -> Vec<GroupConfig> {
    vec![GroupConfig {
        name: "default".into(),
        policy: Policy::Dedicated,
        threads: 1,
        cpus: Vec::new(),
        latency_bound_us: default_latency_bound_us(),
    }]
}

/// The embedded default: two vNICs, one dedicated thread, no uplink.
pub const EMBEDDED_DEFAULT: &str = r#"{
  "runtime_dir": "/run/snapnet",
  "vnics": [
    { "name": "vnic0", "mac": "52:54:00:5a:00:01", "mtu": 1500, "queue_pairs": 1 },
    { "name": "vnic1", "mac": "52:54:00:5a:00:02", "mtu": 1500, "queue_pairs": 1 }
  ],
  "groups": [
    { "name": "default", "policy": "dedicated", "threads": 1 }
  ]
}"#;

impl Config {
    /// Parses and validates a config document.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        let mut cfg = cfg;
        cfg.give_directory_uplink_an_overlay();
        cfg.validate()?;
        if let Some(p) = &cfg.pony {
            if !cfg.uplinks.iter().any(|u| u.name == p.uplink) {
                return Err(invalid("pony.uplink", format!("no uplink '{}'", p.uplink)));
            }
        }
        if let Some(d) = &cfg.directory {
            if cfg.directory_uplink().is_none() {
                return Err(invalid(
                    "directory.uplink",
                    format!("no uplink '{}'", d.uplink),
                ));
            }
        }
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text)
    }

    pub fn embedded_default() -> Self {
        Self::from_json(EMBEDDED_DEFAULT).expect("the embedded default is valid")
    }

    /// The socket path of a vNIC.
    pub fn socket_path(&self, v: &VnicConfig) -> PathBuf {
        v.socket
            .clone()
            .unwrap_or_else(|| self.runtime_dir.join(format!("{}.sock", v.name)))
    }

    /// Where vNIC sockets may be: `runtime_dir` and `socket_dirs`.
    pub fn socket_dirs(&self) -> Vec<&Path> {
        std::iter::once(self.runtime_dir.as_path())
            .chain(self.socket_dirs.iter().map(PathBuf::as_path))
            .collect()
    }

    /// The control socket's path.
    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.runtime_dir.join("control.sock"))
    }

    /// The engine group that runs vNIC `v`.
    pub fn group_of<'a>(&'a self, v: &'a VnicConfig) -> &'a str {
        v.group.as_deref().unwrap_or(&self.groups[0].name)
    }

    /// The engine group that runs uplink `u`.
    pub fn uplink_group_of<'a>(&'a self, u: &'a UplinkConfig) -> &'a str {
        u.group.as_deref().unwrap_or(&self.groups[0].name)
    }

    /// Checks what the types cannot: ranges, uniqueness, references.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_plain_absolute(&self.runtime_dir).map_err(|m| invalid("runtime_dir", m))?;
        if self.socket_dirs.len() > MAX_SOCKET_DIRS {
            return Err(invalid(
                "socket_dirs",
                format!("at most {MAX_SOCKET_DIRS} directories"),
            ));
        }
        for (i, d) in self.socket_dirs.iter().enumerate() {
            check_plain_absolute(d).map_err(|m| invalid(format!("socket_dirs[{i}]"), m))?;
            if d.parent().is_none() {
                return Err(invalid(format!("socket_dirs[{i}]"), "'/' is too wide"));
            }
        }
        if let Some(c) = &self.control_socket {
            check_plain_absolute(c).map_err(|m| invalid("control_socket", m))?;
        }
        if self.groups.is_empty() {
            return Err(invalid("groups", "at least one engine group is needed"));
        }
        let mut group_names = HashSet::new();
        for (i, g) in self.groups.iter().enumerate() {
            let at = |k: &str| format!("groups[{i}].{k}");
            check_name(&g.name, &at("name"))?;
            if !group_names.insert(g.name.as_str()) {
                return Err(duplicate(
                    at("name"),
                    format!("group name '{}' is used twice", g.name),
                ));
            }
            if !(1..=1_000_000).contains(&g.latency_bound_us) {
                return Err(invalid(
                    at("latency_bound_us"),
                    format!("{} is not in 1..=1000000", g.latency_bound_us),
                ));
            }
            if g.threads == 0 || g.threads > 256 {
                return Err(invalid(
                    at("threads"),
                    format!("{} is not in 1..=256", g.threads),
                ));
            }
            let max = crate::sched::group::MAX_CPUS;
            if let Some(c) = g.cpus.iter().find(|c| **c >= max) {
                return Err(invalid(
                    at("cpus"),
                    format!("CPU {c} is out of range: threads can be pinned to CPUs 0..{max}"),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.fdb.max_learned_per_port) {
            return Err(invalid(
                "fdb.max_learned_per_port",
                format!("{} is not in 1..=1000000", self.fdb.max_learned_per_port),
            ));
        }
        if !(1..=1_000_000).contains(&self.fdb.max_age_s) {
            return Err(invalid(
                "fdb.max_age_s",
                format!("{} is not in 1..=1000000", self.fdb.max_age_s),
            ));
        }
        let known_group = |name: &Option<String>, at: String| match name {
            Some(n) if !group_names.contains(n.as_str()) => {
                Err(invalid(at, format!("no engine group named '{n}'")))
            }
            _ => Ok(()),
        };
        known_group(&self.switch_group, "switch_group".into())?;
        let shards = self.switch_shards;
        if shards == 0 || usize::from(shards) > crate::switch::MAX_SHARDS {
            return Err(invalid(
                "switch_shards",
                format!("{shards} is not in 1..={}", crate::switch::MAX_SHARDS),
            ));
        }
        let known_shard = |shard: Option<u16>, at: String| match shard {
            Some(s) if s >= shards => Err(invalid(
                at,
                format!("shard {s} does not exist (switch_shards is {shards})"),
            )),
            _ => Ok(()),
        };
        let (mut names, mut macs, mut sockets) = (HashSet::new(), HashSet::new(), HashSet::new());
        let own_macs: HashSet<MacAddr> = self.vnics.iter().map(|v| v.mac).collect();
        for (i, v) in self.vnics.iter().enumerate() {
            let at = |k: &str| format!("vnics[{i}].{k}");
            check_name(&v.name, &at("name"))?;
            if !names.insert(v.name.as_str()) {
                return Err(duplicate(
                    at("name"),
                    format!("vNIC name '{}' is used twice", v.name),
                ));
            }
            if v.mac.is_group() || v.mac.0 == [0; 6] {
                return Err(invalid(
                    at("mac"),
                    format!("{} is not a unicast address", v.mac),
                ));
            }
            if !macs.insert(v.mac) && !self.migration_pair(v) {
                return Err(duplicate(at("mac"), format!("MAC {} is used twice", v.mac)));
            }
            self.check_incoming_for(v, &at("incoming_for"))?;
            if !(MIN_MTU..=MAX_MTU).contains(&v.mtu) {
                return Err(invalid(
                    at("mtu"),
                    format!("{} is not in {MIN_MTU}..={MAX_MTU}", v.mtu),
                ));
            }
            if v.queue_pairs == 0 || v.queue_pairs > MAX_QUEUE_PAIRS {
                return Err(invalid(
                    at("queue_pairs"),
                    format!("{} is not in 1..={MAX_QUEUE_PAIRS}", v.queue_pairs),
                ));
            }
            check_inside(&self.socket_path(v), &self.socket_dirs())
                .map_err(|m| invalid(at("socket"), m))?;
            if !sockets.insert(self.socket_path(v)) {
                return Err(duplicate(
                    at("socket"),
                    format!("socket {} is used twice", self.socket_path(v).display()),
                ));
            }
            known_group(&v.group, at("group"))?;
            if v.network > MAX_NETWORK {
                return Err(invalid(
                    at("network"),
                    format!("{} is not in 0..={MAX_NETWORK}", v.network),
                ));
            }
            if v.allowed_ips
                .as_ref()
                .is_some_and(|l| l.len() > MAX_ALLOWED_IPS)
            {
                return Err(invalid(
                    at("allowed_ips"),
                    format!("at most {MAX_ALLOWED_IPS} addresses"),
                ));
            }
            check_address_pairs(v, &own_macs, &at("allowed_address_pairs"))?;
            if !(1..=1000).contains(&v.weight) {
                return Err(invalid(
                    at("weight"),
                    format!("{} is not in 1..=1000", v.weight),
                ));
            }
            check_limit(&v.tx_limit, &at("tx_limit"))?;
            check_limit(&v.rx_limit, &at("rx_limit"))?;
            known_shard(v.shard, at("shard"))?;
        }
        let mut interfaces = HashSet::new();
        for (i, u) in self.uplinks.iter().enumerate() {
            let at = |k: &str| format!("uplinks[{i}].{k}");
            check_name(&u.name, &at("name"))?;
            if !names.insert(u.name.as_str()) {
                return Err(duplicate(
                    at("name"),
                    format!("port name '{}' is used twice", u.name),
                ));
            }
            if u.interface.is_empty() || u.interface.len() >= libc::IFNAMSIZ {
                return Err(invalid(
                    at("interface"),
                    format!("'{}' is not an interface name", u.interface),
                ));
            }
            if !interfaces.insert(u.interface.as_str()) {
                return Err(duplicate(
                    at("interface"),
                    format!("interface {} has two uplinks", u.interface),
                ));
            }
            let mut queues = HashSet::new();
            if u.queues.is_empty() || u.queues.len() > 64 {
                return Err(invalid(at("queues"), "give 1 to 64 queue numbers"));
            }
            if let Some(q) = u.queues.iter().find(|q| **q > 255 || !queues.insert(**q)) {
                return Err(invalid(
                    at("queues"),
                    format!("queue {q} is above 255 or given twice"),
                ));
            }
            if !(MIN_MTU..=MAX_UPLINK_MTU).contains(&u.mtu) {
                return Err(invalid(
                    at("mtu"),
                    format!("{} is not in {MIN_MTU}..={MAX_UPLINK_MTU}", u.mtu),
                ));
            }
            known_group(&u.group, at("group"))?;
            check_limit(&u.tx_limit, &at("tx_limit"))?;
            known_shard(u.shard, at("shard"))?;
            if let Some(o) = &u.overlay {
                crate::uplink::overlay::OverlayTable::new(o, MacAddr([2, 0, 0, 0, 0, 1]))
                    .map_err(|m| invalid(at("overlay"), m))?;
                if u.mtu < MIN_MTU + crate::uplink::overlay::OVERHEAD as u16 {
                    return Err(invalid(at("mtu"), "too small for VXLAN"));
                }
            }
            if u.network > MAX_NETWORK {
                return Err(invalid(
                    at("network"),
                    format!("{} is not in 0..={MAX_NETWORK}", u.network),
                ));
            }
        }
        self.validate_directory()?;
        self.validate_pony()?;
        self.validate_frame_pool()
    }

    /// The directory's uplink needs no `overlay` section of its own: the
    /// directory's underlay address is its `local_ip`, the directory fills
    /// its table.
    fn give_directory_uplink_an_overlay(&mut self) {
        let Some(d) = &self.directory else { return };
        if let Some(u) = self.uplinks.iter_mut().find(|u| u.name == d.uplink) {
            u.overlay
                .get_or_insert_with(|| crate::uplink::overlay::OverlayConfig {
                    local_ip: d.underlay_ip,
                    remotes: Vec::new(),
                    macs: Vec::new(),
                });
        }
    }

    /// The uplink the directory programs, if the config has a directory.
    pub fn directory_uplink(&self) -> Option<&UplinkConfig> {
        let d = self.directory.as_ref()?;
        self.uplinks.iter().find(|u| u.name == d.uplink)
    }

    fn validate_directory(&self) -> Result<(), ConfigError> {
        let Some(d) = &self.directory else {
            return Ok(());
        };
        d.check()
            .map_err(|(field, m)| invalid(format!("directory.{field}"), m))?;
        // A daemon builds its config an uplink at a time (at start, in an
        // upgrade, in a rollback): that the uplink exists is checked of a
        // whole config (`from_json`), and its removal is refused.
        let Some(u) = self.directory_uplink() else {
            return Ok(());
        };
        match &u.overlay {
            Some(o) if o.local_ip == d.underlay_ip => Ok(()),
            Some(o) => Err(invalid(
                "directory.underlay_ip",
                format!(
                    "{} differs from uplink '{}''s overlay local_ip {}",
                    d.underlay_ip, u.name, o.local_ip
                ),
            )),
            None => Err(invalid(
                "directory.uplink",
                format!("uplink '{}' is not an overlay uplink", u.name),
            )),
        }
    }

    fn validate_pony(&self) -> Result<(), ConfigError> {
        let Some(p) = &self.pony else {
            return Ok(());
        };
        p.check()
            .map_err(|(field, m)| invalid(format!("pony.{field}"), m))?;
        if let Some(g) = &p.group {
            if !self.groups.iter().any(|x| &x.name == g) {
                return Err(invalid("pony.group", format!("no engine group '{g}'")));
            }
        }
        // As for the directory, the uplink's existence is checked of a whole
        // config (`from_json`) and its removal refused.
        Ok(())
    }

    /// The ports the frame pool is sized for.
    pub fn pool_ports(&self) -> pool_sizing::Ports {
        pool_sizing::Ports {
            vnic_queue_pairs: self.vnics.iter().map(|v| usize::from(v.queue_pairs)).sum(),
            uplink_queues: self.uplinks.iter().map(|u| u.queues.len()).sum(),
            switch_shards: usize::from(self.switch_shards),
        }
    }

    /// The small frames the pool gets: as configured, or what the ports
    /// need plus the spare queue pairs' worth (`control::pool_sizing`).
    pub fn pool_frames(&self) -> usize {
        let p = &self.frame_pool;
        pool_sizing::pool_frames(self.pool_ports(), p.frames, p.spare_queue_pairs)
    }

    /// The pool to create (for a config `validate` accepted).
    pub fn pool_config(&self) -> crate::packet::PoolConfig {
        crate::packet::PoolConfig {
            frames: self.pool_frames().min(pool_sizing::MAX_FRAMES) as u32,
            large_frames: self.frame_pool.large_frames,
            pages: self.frame_pool.pages,
            ..Default::default()
        }
    }

    /// Whether the ports fit a running pool of `frames` small frames (a
    /// pool is sized once, at start).
    pub fn fits_pool(&self, frames: usize) -> Result<(), ConfigError> {
        match pool_sizing::shortfall(self.pool_ports(), frames) {
            Some(why) => Err(invalid("frame_pool", why)),
            None => Ok(()),
        }
    }

    /// Whether `v` shares its MAC with exactly one other vNIC, the other
    /// end of its live migration on this host.
    fn migration_pair(&self, v: &VnicConfig) -> bool {
        let same: Vec<&VnicConfig> = self.vnics.iter().filter(|w| w.mac == v.mac).collect();
        same.len() == 2 && same.iter().any(|w| v.migrates_with(w))
    }

    /// `incoming_for`: names another vNIC, which (while it exists) has the
    /// same MAC and network and is no migration's destination itself, and
    /// for which no other vNIC is the destination.
    fn check_incoming_for(&self, v: &VnicConfig, at: &str) -> Result<(), ConfigError> {
        let Some(source) = v.incoming_for.as_deref() else {
            return Ok(());
        };
        let bad = |m: String| Err(invalid(at, m));
        if source == v.name {
            return bad("a vNIC cannot be its own migration's source".into());
        }
        if let Some(s) = self.vnics.iter().find(|w| w.name == source) {
            if s.mac != v.mac || s.network != v.network {
                return bad(format!(
                    "the source '{source}' has MAC {} in network {}; a migration's destination takes both ({} in network {} given)",
                    s.mac, s.network, v.mac, v.network
                ));
            }
            if s.incoming_for.is_some() {
                return bad(format!("'{source}' is itself a migration's destination"));
            }
        }
        if self
            .vnics
            .iter()
            .any(|w| w.name != v.name && w.incoming_for.as_deref() == Some(source))
        {
            return bad(format!(
                "another vNIC is already the destination for '{source}'"
            ));
        }
        Ok(())
    }

    fn validate_frame_pool(&self) -> Result<(), ConfigError> {
        use pool_sizing::MAX_FRAMES;
        let p = &self.frame_pool;
        if let Some(why) = p
            .frames
            .and_then(|f| pool_sizing::shortfall(self.pool_ports(), f as usize))
        {
            return Err(invalid("frame_pool.frames", why));
        }
        if self.pool_frames() > MAX_FRAMES {
            return Err(invalid(
                "frame_pool",
                format!("more than {MAX_FRAMES} frames: fewer queues, or fewer spare_queue_pairs"),
            ));
        }
        if !(1..=65_536).contains(&p.large_frames) {
            return Err(invalid(
                "frame_pool.large_frames",
                format!("{} is not in 1..=65536", p.large_frames),
            ));
        }
        if p.spare_queue_pairs > 1024 {
            return Err(invalid(
                "frame_pool.spare_queue_pairs",
                format!("{} is not in 0..=1024", p.spare_queue_pairs),
            ));
        }
        Ok(())
    }
}

fn check_address_pairs(
    v: &VnicConfig,
    vnic_macs: &HashSet<MacAddr>,
    at: &str,
) -> Result<(), ConfigError> {
    if v.allowed_address_pairs.len() > MAX_ADDRESS_PAIRS {
        return Err(invalid(at, format!("at most {MAX_ADDRESS_PAIRS} pairs")));
    }
    let mut seen = HashSet::new();
    for (j, p) in v.allowed_address_pairs.iter().enumerate() {
        let at = format!("{at}[{j}]");
        if p.mac.is_group() || p.mac.0 == [0; 6] {
            return Err(invalid(
                format!("{at}.mac"),
                format!("{} is not a unicast address", p.mac),
            ));
        }
        // A vNIC's MAC is pinned to its port: another guest may not claim it.
        if vnic_macs.contains(&p.mac) {
            return Err(invalid(
                format!("{at}.mac"),
                format!("{} is a vNIC's own MAC", p.mac),
            ));
        }
        if !seen.insert(p.mac) {
            return Err(invalid(
                format!("{at}.mac"),
                format!("{} is given twice", p.mac),
            ));
        }
        if p.ips.as_ref().is_some_and(|l| l.len() > MAX_ALLOWED_IPS) {
            return Err(invalid(
                format!("{at}.ips"),
                format!("at most {MAX_ALLOWED_IPS} addresses"),
            ));
        }
    }
    Ok(())
}

fn check_limit(l: &Option<RateLimit>, at: &str) -> Result<(), ConfigError> {
    let Some(l) = l else {
        return Ok(());
    };
    for (k, v) in [
        ("bytes_per_sec", l.bytes_per_sec),
        ("packets_per_sec", l.packets_per_sec),
        ("burst_bytes", l.burst_bytes),
        ("burst_packets", l.burst_packets),
    ] {
        if v.is_some_and(|v| v == 0 || v > 1 << 40) {
            return Err(invalid(format!("{at}.{k}"), "must be in 1..=2^40"));
        }
    }
    Ok(())
}

fn check_name(name: &str, at: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            at,
            format!("'{name}' is not a name (1-32 of A-Z a-z 0-9 - _ .)"),
        ))
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
