//! vNIC counters: packets and bytes each way, and a reason for every drop.
//!
//! The engine counts into plain integers and publishes them to the shared
//! atomics once per poll, so readers never slow the data path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a vNIC dropped a frame or returned a guest buffer unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum DropReason {
    /// Descriptor index past the end of the table.
    BadDescIndex,
    /// More descriptors than the queue has (a loop).
    ChainTooLong,
    /// A buffer outside guest memory.
    AddressOutOfRange,
    /// A device-writable buffer in a TX chain.
    WriteOnlyOnTx,
    /// A device-readable buffer in an RX chain.
    ReadOnlyOnRx,
    /// Indirect table malformed, nested, or not negotiated.
    BadIndirect,
    /// TX chain shorter than the virtio-net header plus an Ethernet header.
    TooShort,
    /// TX frame larger than MTU (or 64 KiB for GSO frames).
    TooBig,
    /// TX: a GSO type the guest did not negotiate or snapnet does not offer
    /// (UFO, USO, the ECN bit without HOST_ECN, unknown types), or a GSO
    /// frame without NEEDS_CSUM.
    BadGso,
    /// The avail index moved more than a queue size: the ring is corrupt.
    BadAvailIndex,
    /// No free frame in the pool (only where waiting is not possible).
    PoolEmpty,
    /// RX: without MRG_RXBUF the guest's buffer is smaller than the frame.
    RxBufferTooSmall,
    /// RX: GSO frame for a guest that did not negotiate GUEST_TSO.
    GsoNotAccepted,
    /// RX: frame arrived while no guest driver is attached.
    GuestNotReady,
    /// TX: source MAC is not the vNIC's.
    SpoofedMac,
    /// TX: IPv4/IPv6 source address not allowed for the vNIC.
    SpoofedIp,
    /// TX: ARP sender MAC or IP not the vNIC's.
    SpoofedArp,
    /// TX: neighbour advertisement for an address not allowed, or a
    /// link-layer address option that is not the vNIC's MAC.
    SpoofedNd,
    /// RX: over the vNIC's ingress rate limit.
    RateLimited,
    /// TX: addresses are checked but the frame hides them (too many VLAN
    /// tags or IPv6 extension headers, a fragmented neighbour discovery
    /// message).
    Unverifiable,
    /// RX: frames waited for guest buffers longer than a guest that is
    /// alive takes to post them (a stuck or paused guest): dropped so they
    /// hold no frames of the shared pool and no sender waits behind them.
    NoRxBuffers,
    /// RX: a guest buffer of zero bytes (returned unused, with the frame it
    /// was gathered for).
    ZeroLengthBuffer,
    /// TX: GSO frame with a gso_size below the floor (48 bytes, Linux's
    /// `tcp_min_snd_mss`): it would multiply the frames on the wire.
    GsoSizeTooSmall,
    /// TX: GSO frame whose headers are not what its gso_type says (or not
    /// headers snapnet can segment).
    BadGsoHeaders,
    /// TX: NEEDS_CSUM from a guest that did not negotiate VIRTIO_NET_F_CSUM.
    CsumNotNegotiated,
    /// TX: csum_start/csum_offset outside the frame, or (GSO) not at the
    /// TCP checksum.
    BadCsumOffsets,
    /// TX: hdr_len claims more headers than the frame holds.
    BadHdrLen,
    /// A migrated guest's announcement (SEND_RARP) was not sent: asked for
    /// again too soon, or no frame or link slot was free.
    AnnounceDropped,
}

impl DropReason {
    pub const ALL: [DropReason; 28] = [
        DropReason::BadDescIndex,
        DropReason::ChainTooLong,
        DropReason::AddressOutOfRange,
        DropReason::WriteOnlyOnTx,
        DropReason::ReadOnlyOnRx,
        DropReason::BadIndirect,
        DropReason::TooShort,
        DropReason::TooBig,
        DropReason::BadGso,
        DropReason::BadAvailIndex,
        DropReason::PoolEmpty,
        DropReason::RxBufferTooSmall,
        DropReason::GsoNotAccepted,
        DropReason::GuestNotReady,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::SpoofedNd,
        DropReason::RateLimited,
        DropReason::Unverifiable,
        DropReason::NoRxBuffers,
        DropReason::ZeroLengthBuffer,
        DropReason::GsoSizeTooSmall,
        DropReason::BadGsoHeaders,
        DropReason::CsumNotNegotiated,
        DropReason::BadCsumOffsets,
        DropReason::BadHdrLen,
        DropReason::AnnounceDropped,
    ];

    /// Stable name used in RPC, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadDescIndex => "bad_desc_index",
            DropReason::ChainTooLong => "chain_too_long",
            DropReason::AddressOutOfRange => "address_out_of_range",
            DropReason::WriteOnlyOnTx => "write_only_on_tx",
            DropReason::ReadOnlyOnRx => "read_only_on_rx",
            DropReason::BadIndirect => "bad_indirect",
            DropReason::TooShort => "too_short",
            DropReason::TooBig => "too_big",
            DropReason::BadGso => "bad_gso",
            DropReason::BadAvailIndex => "bad_avail_index",
            DropReason::PoolEmpty => "pool_empty",
            DropReason::RxBufferTooSmall => "rx_buffer_too_small",
            DropReason::GsoNotAccepted => "gso_not_accepted",
            DropReason::GuestNotReady => "guest_not_ready",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedNd => "spoofed_nd",
            DropReason::RateLimited => "rate_limited",
            DropReason::Unverifiable => "unverifiable",
            DropReason::NoRxBuffers => "no_rx_buffers",
            DropReason::ZeroLengthBuffer => "zero_length_buffer",
            DropReason::GsoSizeTooSmall => "gso_size_too_small",
            DropReason::BadGsoHeaders => "bad_gso_headers",
            DropReason::CsumNotNegotiated => "csum_not_negotiated",
            DropReason::BadCsumOffsets => "bad_csum_offsets",
            DropReason::BadHdrLen => "bad_hdr_len",
            DropReason::AnnounceDropped => "announce_dropped",
        }
    }
}

const REASONS: usize = DropReason::ALL.len();

/// Counters of one queue pair, owned by its engine.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct QueueCounters {
    /// Frames the guest sent (TX ring -> switch).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames delivered to the guest (switch -> RX ring).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Batches cut short because the frame pool was empty (guest TX waits).
    pub backpressure: u64,
    pub drops: [u64; REASONS],
}

/// [`QueueCounters`] as they cross to the process that takes over (an
/// upgrade): drops by name, so that a binary with more or fewer drop
/// reasons reads them all the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountersState {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub backpressure: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl CountersState {
    /// Drops by name, only those that counted.
    pub fn name_drops<'a>(
        counts: impl Iterator<Item = (&'a str, u64)>,
    ) -> std::collections::BTreeMap<String, u64> {
        counts
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| (name.to_string(), n))
            .collect()
    }

    /// Adds each drop to `out[index(name)]`. Only an older or the same
    /// release hands over (a newer state format is refused), so every
    /// reason is known; one that is not is logged and left out.
    pub fn add_drops_to(&self, out: &mut [u64], index: impl Fn(&str) -> Option<usize>) {
        for (name, n) in &self.drops {
            match index(name) {
                Some(i) => out[i] += n,
                None => log::warn!("handed-over drop counter {name} ({n}) is unknown here"),
            }
        }
    }
}

impl QueueCounters {
    /// The counters, for the process that takes over.
    pub fn to_state(&self) -> CountersState {
        CountersState {
            tx_packets: self.tx_packets,
            tx_bytes: self.tx_bytes,
            rx_packets: self.rx_packets,
            rx_bytes: self.rx_bytes,
            backpressure: self.backpressure,
            drops: CountersState::name_drops(
                DropReason::ALL
                    .iter()
                    .map(|r| (r.as_str(), self.dropped(*r))),
            ),
        }
    }

    /// Counters that continue from `state`.
    pub fn from_state(state: &CountersState) -> Self {
        let mut c = QueueCounters {
            tx_packets: state.tx_packets,
            tx_bytes: state.tx_bytes,
            rx_packets: state.rx_packets,
            rx_bytes: state.rx_bytes,
            backpressure: state.backpressure,
            drops: [0; REASONS],
        };
        state.add_drops_to(&mut c.drops, |name| {
            DropReason::ALL
                .iter()
                .find(|r| r.as_str() == name)
                .map(|r| *r as usize)
        });
        c
    }

    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another queue's counters (for per-vNIC totals).
    pub fn add(&mut self, o: &QueueCounters) {
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.backpressure += o.backpressure;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }
}

/// The published copy of a queue pair's counters.
#[derive(Default)]
pub struct SharedQueueCounters {
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    backpressure: AtomicU64,
    drops: [AtomicU64; REASONS],
}

impl SharedQueueCounters {
    /// Publishes `c` (single writer: the engine).
    pub fn publish(&self, c: &QueueCounters) {
        self.tx_packets.store(c.tx_packets, Ordering::Relaxed);
        self.tx_bytes.store(c.tx_bytes, Ordering::Relaxed);
        self.rx_packets.store(c.rx_packets, Ordering::Relaxed);
        self.rx_bytes.store(c.rx_bytes, Ordering::Relaxed);
        self.backpressure.store(c.backpressure, Ordering::Relaxed);
        for (a, v) in self.drops.iter().zip(c.drops.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> QueueCounters {
        let mut c = QueueCounters {
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            backpressure: self.backpressure.load(Ordering::Relaxed),
            ..Default::default()
        };
        for (v, a) in c.drops.iter_mut().zip(self.drops.iter()) {
            *v = a.load(Ordering::Relaxed);
        }
        c
    }
}
