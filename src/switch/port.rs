//! Switch ports and their counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::packet::{LinkRx, LinkTx};

/// Index of a port in the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// Why the switch dropped a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum PortDrop {
    /// Shorter than an Ethernet header.
    Runt,
    /// Flooded but no other port exists.
    NoRoute,
    /// Destination is the port it came from.
    SamePort,
    /// The output link was full (the receiver is not keeping up). Only
    /// copies of flooded frames are dropped so: a unicast frame waits.
    LinkFull,
    /// No frame available to copy a flooded frame into.
    PoolEmpty,
}

impl PortDrop {
    pub const ALL: [PortDrop; 5] = [
        PortDrop::Runt,
        PortDrop::NoRoute,
        PortDrop::SamePort,
        PortDrop::LinkFull,
        PortDrop::PoolEmpty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PortDrop::Runt => "runt",
            PortDrop::NoRoute => "no_route",
            PortDrop::SamePort => "same_port",
            PortDrop::LinkFull => "link_full",
            PortDrop::PoolEmpty => "pool_empty",
        }
    }
}

const REASONS: usize = PortDrop::ALL.len();

/// Counters of one port, from the switch's point of view: `rx` is what the
/// port sent into the switch, `tx` what the switch sent out of the port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Times a frame waited in this port's input because the port it goes
    /// to had a full link (nothing is lost: the sender is slowed down).
    pub backpressure: u64,
    pub drops: [u64; REASONS],
}

impl PortCounters {
    pub fn dropped(&self, r: PortDrop) -> u64 {
        self.drops[r as usize]
    }

    /// Adds `other` (counters a port had before it was moved).
    pub fn accumulate(&mut self, other: &PortCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        self.backpressure += other.backpressure;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
    }
}

/// Published copy, readable from any thread.
#[derive(Default)]
pub struct SharedPortCounters {
    values: [AtomicU64; 5 + REASONS],
}

impl SharedPortCounters {
    pub fn publish(&self, c: &PortCounters) {
        let v = [
            c.rx_packets,
            c.rx_bytes,
            c.tx_packets,
            c.tx_bytes,
            c.backpressure,
        ];
        for (a, x) in self.values.iter().zip(v.iter().chain(c.drops.iter())) {
            a.store(*x, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> PortCounters {
        let l = |i: usize| self.values[i].load(Ordering::Relaxed);
        let mut c = PortCounters {
            rx_packets: l(0),
            rx_bytes: l(1),
            tx_packets: l(2),
            tx_bytes: l(3),
            backpressure: l(4),
            drops: [0; REASONS],
        };
        for (i, d) in c.drops.iter_mut().enumerate() {
            *d = l(5 + i);
        }
        c
    }
}

/// Which virtual networks a port belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortNetwork {
    /// Exactly one: a vNIC, or a flat (untagged) uplink.
    Only(u32),
    /// Any: an overlay uplink, whose frames carry their network (VNI).
    Any,
}

impl PortNetwork {
    #[inline]
    pub fn carries(self, network: u32) -> bool {
        match self {
            PortNetwork::Only(n) => n == network,
            PortNetwork::Any => true,
        }
    }
}

/// A port as the switch engine owns it.
pub struct SwitchPort {
    pub name: String,
    pub network: PortNetwork,
    /// Deficit round robin: bytes this port may forward per round is
    /// `weight * QUANTUM`; `deficit` is what it has left.
    pub weight: u32,
    pub deficit: i64,
    /// Frames from the port into the switch, one link per queue.
    pub inputs: Vec<LinkRx>,
    /// Frames from the switch out of the port, one link per queue.
    pub outputs: Vec<LinkTx>,
    pub counters: PortCounters,
    pub shared: Arc<SharedPortCounters>,
    /// Counters changed since the last publish.
    pub dirty: bool,
}

impl SwitchPort {
    pub fn new(
        name: &str,
        network: PortNetwork,
        inputs: Vec<LinkRx>,
        outputs: Vec<LinkTx>,
    ) -> Self {
        Self {
            name: name.to_string(),
            network,
            weight: 1,
            deficit: 0,
            inputs,
            outputs,
            counters: PortCounters::default(),
            shared: Arc::new(SharedPortCounters::default()),
            dirty: false,
        }
    }

    /// Its share against other ports when an output is congested.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    #[inline]
    pub fn drop_frame(&mut self, reason: PortDrop) {
        self.counters.drops[reason as usize] += 1;
        self.dirty = true;
    }
}
