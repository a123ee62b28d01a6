//! Counters of one uplink queue, kept by its engine and published once per
//! batch for the control plane to read.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::xsk::XskKernelStats;

/// What an uplink queue counts. Drops say why a frame was lost; events say
/// that the queue hit a limit without losing anything (backpressure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum UplinkCounter {
    /// Frames received from the wire through the AF_XDP socket.
    RxPackets,
    RxBytes,
    /// Group-addressed frames received through the packet socket.
    GroupRxPackets,
    /// Frames sent to the wire (after segmentation).
    TxPackets,
    TxBytes,
    /// Wire frames cut from guest GSO super-frames.
    TxSegments,
    /// Drop: a frame longer than the uplink takes and not segmentable.
    DropTooBig,
    /// Drop: a wire frame found the TX ring full although room was checked
    /// for its guest frame (an overlay's replicas or a GSO frame cut into
    /// more segments than estimated).
    DropTxRingFull,
    /// Drop: the kernel returned an RX descriptor for a UMEM address that
    /// was not lent to it (never expected; nothing is read from it).
    DropBadAddress,
    /// Drop: a guest GSO/checksum request that does not parse.
    DropBadOffload,
    /// Drop: no frame to segment into or to receive a group frame in.
    DropPoolEmpty,
    /// Drop: the NIC took nothing from a full TX ring for a while (link
    /// down?); frames for it are dropped so that senders are not held up.
    DropTxStalled,
    /// Drop (overlay): no remote host has the frame's network.
    DropNoRemote,
    /// Drop (overlay): received frame that is not VXLAN to this host.
    DropNotVxlan,
    /// Drop (overlay): VXLAN for a network no remote host is configured for.
    DropUnknownNetwork,
    /// Drop (overlay): VXLAN from a host that is not a remote of its network.
    DropUnknownRemote,
    /// Event: the fill ring could not be topped up (pool empty); the kernel
    /// drops what it cannot place (see `rx_fill_ring_empty`).
    FillPoolEmpty,
    /// Event: the TX ring was full; frames waited in the switch link.
    TxRingFull,
    /// Event: the switch link was full; frames waited in the RX ring.
    RxLinkFull,
    /// Event (overlay): a guest's ARP request for a remote guest answered
    /// here from the directory's addresses, not replicated to the fabric.
    ArpSuppressed,
    /// Event (overlay): the same for an IPv6 neighbour solicitation.
    NdSuppressed,
    /// Pony Express packets from the wire handed to the Pony engine.
    PonyRxPackets,
    /// Pony Express packets the Pony engine sent to the wire.
    PonyTxPackets,
    /// Drop: the link to the Pony engine was full (it retransmits).
    DropPonyLinkFull,
}

impl UplinkCounter {
    pub const ALL: [UplinkCounter; 24] = [
        UplinkCounter::RxPackets,
        UplinkCounter::RxBytes,
        UplinkCounter::GroupRxPackets,
        UplinkCounter::TxPackets,
        UplinkCounter::TxBytes,
        UplinkCounter::TxSegments,
        UplinkCounter::DropTooBig,
        UplinkCounter::DropTxRingFull,
        UplinkCounter::DropBadAddress,
        UplinkCounter::DropBadOffload,
        UplinkCounter::DropPoolEmpty,
        UplinkCounter::DropTxStalled,
        UplinkCounter::DropNoRemote,
        UplinkCounter::DropNotVxlan,
        UplinkCounter::DropUnknownNetwork,
        UplinkCounter::DropUnknownRemote,
        UplinkCounter::FillPoolEmpty,
        UplinkCounter::TxRingFull,
        UplinkCounter::RxLinkFull,
        UplinkCounter::ArpSuppressed,
        UplinkCounter::NdSuppressed,
        UplinkCounter::PonyRxPackets,
        UplinkCounter::PonyTxPackets,
        UplinkCounter::DropPonyLinkFull,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UplinkCounter::RxPackets => "rx_packets",
            UplinkCounter::RxBytes => "rx_bytes",
            UplinkCounter::GroupRxPackets => "group_rx_packets",
            UplinkCounter::TxPackets => "tx_packets",
            UplinkCounter::TxBytes => "tx_bytes",
            UplinkCounter::TxSegments => "tx_segments",
            UplinkCounter::DropTooBig => "drop_too_big",
            UplinkCounter::DropTxRingFull => "drop_tx_ring_full",
            UplinkCounter::DropBadAddress => "drop_bad_address",
            UplinkCounter::DropBadOffload => "drop_bad_offload",
            UplinkCounter::DropPoolEmpty => "drop_pool_empty",
            UplinkCounter::DropTxStalled => "drop_tx_stalled",
            UplinkCounter::DropNoRemote => "drop_no_remote",
            UplinkCounter::DropNotVxlan => "drop_not_vxlan",
            UplinkCounter::DropUnknownNetwork => "drop_unknown_network",
            UplinkCounter::DropUnknownRemote => "drop_unknown_remote",
            UplinkCounter::FillPoolEmpty => "fill_pool_empty",
            UplinkCounter::TxRingFull => "tx_ring_full",
            UplinkCounter::RxLinkFull => "rx_link_full",
            UplinkCounter::ArpSuppressed => "arp_suppressed",
            UplinkCounter::NdSuppressed => "nd_suppressed",
            UplinkCounter::PonyRxPackets => "pony_rx_packets",
            UplinkCounter::PonyTxPackets => "pony_tx_packets",
            UplinkCounter::DropPonyLinkFull => "drop_pony_link_full",
        }
    }
}

const N: usize = UplinkCounter::ALL.len();

/// The engine's own copy: plain integers, no atomics on the packet path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UplinkCounters {
    values: [u64; N],
}

impl UplinkCounters {
    #[inline]
    pub fn add(&mut self, c: UplinkCounter, n: u64) {
        self.values[c as usize] += n;
    }

    pub fn get(&self, c: UplinkCounter) -> u64 {
        self.values[c as usize]
    }

    /// Adds another queue's counters (for per-uplink totals).
    pub fn accumulate(&mut self, other: &UplinkCounters) {
        for (a, b) in self.values.iter_mut().zip(other.values.iter()) {
            *a += b;
        }
    }

    /// The counters by name, for an upgrade's new process (names, not
    /// positions: a release may add or reorder counters).
    pub fn to_state(&self) -> BTreeMap<String, u64> {
        UplinkCounter::ALL
            .iter()
            .filter(|c| self.get(**c) > 0)
            .map(|c| (c.as_str().to_string(), self.get(*c)))
            .collect()
    }

    /// The reverse of [`Self::to_state`]; a name this release does not
    /// know is left out.
    pub fn from_state(state: &BTreeMap<String, u64>) -> Self {
        let mut c = Self::default();
        for counter in UplinkCounter::ALL {
            if let Some(v) = state.get(counter.as_str()) {
                c.add(counter, *v);
            }
        }
        c
    }
}

/// The published copy, with the kernel's counters of the queue's socket
/// (read by the engine itself: only the owner of a socket may hold its fd,
/// or closing it would not release the frames lent to the kernel).
#[derive(Default)]
pub struct SharedUplinkCounters {
    values: [AtomicU64; N],
    kernel: [AtomicU64; 6],
}

impl SharedUplinkCounters {
    pub fn publish(&self, c: &UplinkCounters) {
        for (a, v) in self.values.iter().zip(c.values.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
    }

    pub fn publish_kernel(&self, k: &XskKernelStats) {
        let v = [
            k.rx_dropped,
            k.rx_invalid_descs,
            k.tx_invalid_descs,
            k.rx_ring_full,
            k.rx_fill_ring_empty,
            k.tx_ring_empty,
        ];
        for (a, x) in self.kernel.iter().zip(v) {
            a.store(x, Ordering::Relaxed);
        }
    }

    pub fn kernel_snapshot(&self) -> XskKernelStats {
        let l = |i: usize| self.kernel[i].load(Ordering::Relaxed);
        XskKernelStats {
            rx_dropped: l(0),
            rx_invalid_descs: l(1),
            tx_invalid_descs: l(2),
            rx_ring_full: l(3),
            rx_fill_ring_empty: l(4),
            tx_ring_empty: l(5),
        }
    }

    pub fn snapshot(&self) -> UplinkCounters {
        let mut c = UplinkCounters::default();
        for (v, a) in c.values.iter_mut().zip(self.values.iter()) {
            *v = a.load(Ordering::Relaxed);
        }
        c
    }
}
