//! The `pony` section of the config (docs/pony.md): where applications
//! attach, which uplink and address carry Pony's packets, the per-tenant
//! bounds, and the congestion control's parameters.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use snapnet_wire::MacAddr;

use super::flow::{AckPolicy, FlowConfig};
use super::swift::SwiftConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PonyConfig {
    /// The Unix socket applications attach to.
    pub socket: PathBuf,
    /// The uplink whose interface carries Pony's packets.
    pub uplink: String,
    /// This host's Pony address: an IPv4 address of the uplink's interface.
    pub address: Ipv4Addr,
    /// The engine group the Pony engine runs in (default: the first group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where every Pony packet is sent at layer 2 (a router's MAC) when
    /// peers are not on the uplink's segment; without it, each peer's MAC
    /// comes from the kernel's neighbour table.
    #[serde(
        default,
        with = "snapnet_wire::optional_mac_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_hop_mac: Option<MacAddr>,
    /// Applications attached at once.
    #[serde(default = "default_max_apps")]
    pub max_apps: u32,
    /// Open connections per application.
    #[serde(default = "default_max_connections")]
    pub max_connections_per_app: u32,
    /// Registered regions per application.
    #[serde(default = "default_max_regions")]
    pub max_regions_per_app: u32,
    /// Remote hosts with a flow at once.
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
    /// Largest message (at least 1 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u32,
    /// Bytes of each application's arena (its buffers and regions).
    #[serde(default = "default_arena_bytes")]
    pub arena_bytes: u64,
    /// Bytes of each application's receive area: messages received and not
    /// yet released; a full area holds back the peers' senders.
    #[serde(default = "default_rx_bytes")]
    pub rx_bytes: u64,
    /// Entries of each command and completion ring (a power of two).
    #[serde(default = "default_queue_entries")]
    pub queue_entries: u32,
    /// Congestion control: delay below which the window grows.
    #[serde(default = "default_target_delay_us")]
    pub target_delay_us: u64,
    /// Congestion control: packets added to the window per round trip.
    #[serde(default = "default_additive_increase")]
    pub additive_increase: f64,
    /// Congestion control: decrease per unit of delay over the target.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Congestion control: largest decrease per round trip (a fraction).
    #[serde(default = "default_max_decrease")]
    pub max_decrease: f64,
    /// Congestion window bounds, in packets.
    #[serde(default = "default_min_window")]
    pub min_window: f64,
    #[serde(default = "default_max_window")]
    pub max_window: f64,
    /// Smallest retransmission timeout.
    #[serde(default = "default_rto_min_us")]
    pub rto_min_us: u64,
    /// Timeouts of one packet before its flow is given up.
    #[serde(default = "default_max_retransmits")]
    pub max_retransmits: u32,
    /// Longest an acknowledgement waits for data going back to the sender
    /// to ride on (0: none waits).
    #[serde(default = "default_ack_delay_us")]
    pub ack_delay_us: u64,
}

fn default_max_apps() -> u32 {
    64
}
fn default_max_connections() -> u32 {
    1024
}
fn default_max_regions() -> u32 {
    64
}
fn default_max_flows() -> u32 {
    1024
}
fn default_max_message_bytes() -> u32 {
    4 << 20
}
fn default_arena_bytes() -> u64 {
    64 << 20
}
fn default_rx_bytes() -> u64 {
    16 << 20
}
fn default_queue_entries() -> u32 {
    1024
}
fn default_target_delay_us() -> u64 {
    500
}
fn default_additive_increase() -> f64 {
    1.0
}
fn default_beta() -> f64 {
    0.8
}
fn default_max_decrease() -> f64 {
    0.5
}
fn default_min_window() -> f64 {
    1.0
}
fn default_max_window() -> f64 {
    256.0
}
fn default_rto_min_us() -> u64 {
    2000
}
fn default_max_retransmits() -> u32 {
    15
}
fn default_ack_delay_us() -> u64 {
    25
}

/// Packets that may wait for one delayed acknowledgement: the sender's
/// window keeps moving when it is small.
const ACK_EVERY_PACKETS: u32 = 4;

/// The most packets a flow's window may hold: what an ACK's selective
/// acknowledgement covers.
const WINDOW_LIMIT: f64 = snapnet_wire::pony::SACK_BITS as f64;

impl PonyConfig {
    /// What is wrong with the section, as `(field, message)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.socket.as_os_str().is_empty() {
            return Err(("socket", "must name a path".into()));
        }
        if self.address.is_unspecified()
            || self.address.is_multicast()
            || self.address.is_broadcast()
        {
            return Err((
                "address",
                format!("{} is not a unicast address", self.address),
            ));
        }
        if self.next_hop_mac.is_some_and(|m| m.is_group()) {
            return Err(("next_hop_mac", "must be a unicast MAC".into()));
        }
        let within = |field: &'static str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err((field, format!("{v} is not within {lo}..={hi}")))
            }
        };
        within("max_apps", self.max_apps.into(), 1, 4096)?;
        within(
            "max_connections_per_app",
            self.max_connections_per_app.into(),
            1,
            1 << 20,
        )?;
        within(
            "max_regions_per_app",
            self.max_regions_per_app.into(),
            1,
            1 << 16,
        )?;
        within("max_flows", self.max_flows.into(), 1, 1 << 16)?;
        within(
            "max_message_bytes",
            self.max_message_bytes.into(),
            1 << 20,
            1 << 30,
        )?;
        within("arena_bytes", self.arena_bytes, 1 << 16, 1 << 40)?;
        within(
            "rx_bytes",
            self.rx_bytes,
            u64::from(self.max_message_bytes),
            1 << 40,
        )?;
        within("queue_entries", self.queue_entries.into(), 16, 1 << 16)?;
        if !self.queue_entries.is_power_of_two() {
            return Err((
                "queue_entries",
                format!("{} is not a power of two", self.queue_entries),
            ));
        }
        within("target_delay_us", self.target_delay_us, 1, 10_000_000)?;
        within("rto_min_us", self.rto_min_us, 100, 10_000_000)?;
        within("max_retransmits", self.max_retransmits.into(), 1, 1000)?;
        // Below the smallest retransmission timeout, so a delayed ACK never
        // makes its sender time out.
        within("ack_delay_us", self.ack_delay_us, 0, self.rto_min_us / 2)?;
        let fraction = |field: &'static str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err((field, format!("{v} is not within {lo}..={hi}")))
            }
        };
        fraction("additive_increase", self.additive_increase, 0.001, 100.0)?;
        fraction("beta", self.beta, 0.0, 1.0)?;
        fraction("max_decrease", self.max_decrease, 0.0, 1.0)?;
        fraction("min_window", self.min_window, 1.0, WINDOW_LIMIT)?;
        fraction("max_window", self.max_window, self.min_window, WINDOW_LIMIT)?;
        Ok(())
    }

    /// The flow layer's parameters.
    pub fn flow(&self) -> FlowConfig {
        FlowConfig {
            rto_min_ns: self.rto_min_us * 1000,
            max_retransmits: self.max_retransmits,
            swift: SwiftConfig {
                target_delay_ns: self.target_delay_us * 1000,
                additive_increase: self.additive_increase,
                beta: self.beta,
                max_decrease: self.max_decrease,
                min_window: self.min_window,
                max_window: self.max_window,
            },
            ack: AckPolicy {
                delay_ns: self.ack_delay_us * 1000,
                every: ACK_EVERY_PACKETS,
            },
            ..FlowConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> PonyConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_pass_and_bad_values_name_their_field() {
        let base = r#"{"socket":"/run/p.sock","uplink":"u","address":"10.0.0.1"}"#;
        let c = parse(base);
        assert_eq!(c.check(), Ok(()));
        assert_eq!(c.max_message_bytes, 4 << 20);
        let mut bad = c.clone();
        bad.queue_entries = 1000;
        assert_eq!(bad.check().unwrap_err().0, "queue_entries");
        let mut bad = c.clone();
        bad.max_message_bytes = 1000;
        assert_eq!(bad.check().unwrap_err().0, "max_message_bytes");
        let mut bad = c.clone();
        bad.max_window = 1000.0;
        assert_eq!(bad.check().unwrap_err().0, "max_window");
        let mut bad = c.clone();
        bad.ack_delay_us = bad.rto_min_us;
        assert_eq!(bad.check().unwrap_err().0, "ack_delay_us");
        let mut bad = c.clone();
        bad.beta = f64::NAN;
        assert_eq!(bad.check().unwrap_err().0, "beta");
        let mut bad = c;
        bad.address = Ipv4Addr::BROADCAST;
        assert_eq!(bad.check().unwrap_err().0, "address");
        let unknown = r#"{"socket":"/p","uplink":"u","address":"10.0.0.1","colour":1}"#;
        assert!(serde_json::from_str::<PonyConfig>(unknown).is_err());
    }
}
