//! What `pony.status` reports: the engine's counters, its applications,
//! connections and flows.

use std::net::Ipv4Addr;

use serde::Serialize;

/// The engine's counters. Drops say why a packet from the wire was not
/// used; each reason is its own counter.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PonyCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    /// ACKs in packets of their own.
    pub acks_sent: u64,
    /// ACKs carried by DATA packets going back (DATA_ACK).
    pub acks_piggybacked: u64,
    /// Operations that rode in another's DATA packet (bundled).
    pub ops_bundled: u64,
    pub acks_received: u64,
    pub retransmits: u64,
    /// DATA packets that arrived twice (acknowledged again, not delivered).
    pub duplicates: u64,
    /// New packets left unacknowledged for lack of room (receive area,
    /// reassembly slots, or the application's completions backing up).
    pub held_no_room: u64,
    pub reads_served: u64,
    pub indirect_reads: u64,
    pub flow_resets: u64,
    pub flows_failed: u64,
    pub apps_detached_bad_ring: u64,
    pub drop_not_pony: u64,
    pub drop_truncated: u64,
    pub drop_bad_magic: u64,
    pub drop_unknown_kind: u64,
    pub drop_unknown_op: u64,
    pub drop_bad_length: u64,
    pub drop_bad_bundle: u64,
    pub drop_stale_epoch: u64,
    pub drop_out_of_window: u64,
    pub drop_unknown_conn: u64,
    pub drop_unknown_op_id: u64,
    pub drop_too_large: u64,
    pub drop_flow_limit: u64,
    pub drop_pool_empty: u64,
    pub drop_link_full: u64,
}

impl PonyCounters {
    /// Every counter by name (metrics).
    pub fn named(&self) -> Vec<(String, u64)> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m
                .into_iter()
                .filter_map(|(k, v)| v.as_u64().map(|v| (k, v)))
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AppStatus {
    pub id: u32,
    pub name: String,
    pub service: u32,
    pub connections: usize,
    pub regions: usize,
    pub operations: usize,
    pub rx_used_bytes: u64,
    pub rx_bytes: u64,
    pub commands: u64,
    pub bad_commands: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnStatus {
    pub id: u32,
    pub app: u32,
    pub peer: Ipv4Addr,
    pub peer_conn: u32,
    pub open: bool,
    pub tx_messages: u64,
    pub rx_messages: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowStatus {
    pub peer: Ipv4Addr,
    pub mac: Option<String>,
    pub epoch: u32,
    pub peer_epoch: u32,
    pub connections: usize,
    /// Congestion window, packets.
    pub window: f64,
    pub srtt_us: f64,
    pub rto_us: f64,
    pub in_flight: usize,
    pub queued: usize,
    pub sent: u64,
    pub acked: u64,
    pub retransmit_timeout: u64,
    pub retransmit_loss: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_window: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PonyStatus {
    pub engine: String,
    pub address: Ipv4Addr,
    pub counters: PonyCounters,
    pub apps: Vec<AppStatus>,
    pub connections: Vec<ConnStatus>,
    pub flows: Vec<FlowStatus>,
}
