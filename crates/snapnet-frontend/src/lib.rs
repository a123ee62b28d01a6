//! A vhost-user frontend (the guest/driver side), used by tests and `snapnet-bench`.
//!
//! [`Frontend`] connects to a vhost-user virtio-net backend, negotiates features like QEMU
//! does, lays out split (or, with `packed`, packed) virtqueues and packet buffers in a
//! shared memfd, and then drives the rings from the calling thread in polling mode: no
//! allocation and, as long as the device suppresses notifications, no system call per
//! packet.
//!
//! Files, one job each:
//! * [`memory`]: the memfd-backed guest memory,
//! * [`split_ring`]: the driver side of one split virtqueue (indices, free list, kicks),
//! * [`packed_ring`]: the same for a packed virtqueue (wrap counters, event suppression),
//! * [`ring`]: [`ring::DriverRing`], what the queues need from either ring,
//! * [`queue`]: virtio-net TX/RX on top of a ring (buffers, copy, merged RX),
//! * `device`: the connected device, handshake and public API ([`Frontend`]),
//! * `hdr`: [`VirtioNetHdr`] and [`RawDesc`], `error`: [`FrontendError`],
//! * [`migration`]: a migration's dirty-page log and SEND_RARP,
//! * [`raw_request`]: requests the `vhost` crate's frontend cannot send as needed.
//!
//! Ring index `2k` is RX of queue pair `k`, `2k + 1` is its TX.

mod device;
mod error;
mod hdr;
pub mod memory;
pub mod migration;
pub mod packed_ring;
pub mod queue;
pub mod raw_request;
pub mod ring;
pub mod split_ring;

#[cfg(test)]
mod loopback_tests;

pub use device::{Frontend, RingInfo};
pub use error::FrontendError;
pub use hdr::{RawDesc, VirtioNetHdr};
pub use queue::QueueStats;
pub use split_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
};

/// Virtio feature bits the frontend knows about.
pub mod features {
    /// Device handles packets with partial checksum.
    pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
    /// Driver handles packets with partial checksum.
    pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
    /// Device reports an MTU in config space.
    pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
    /// Device has a MAC address in config space.
    pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
    /// Driver can receive TSOv4.
    pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
    /// Driver can receive TSOv6.
    pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
    /// Driver can receive UFO.
    pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
    /// Device can receive TSOv4.
    pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
    /// Device can receive TSOv6.
    pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
    /// Driver can merge receive buffers.
    pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
    /// Config space has a status field.
    pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
    /// Control virtqueue (never negotiated).
    pub const VIRTIO_NET_F_CTRL_VQ: u64 = 1 << 17;
    /// Multiple queue pairs.
    pub const VIRTIO_NET_F_MQ: u64 = 1 << 22;
    /// Indirect descriptors.
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
    /// used_event / avail_event.
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
    /// vhost-user protocol features.
    pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
    /// Virtio 1.x.
    pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
    /// Packed virtqueues.
    pub const VIRTIO_F_RING_PACKED: u64 = 1 << 34;
}

/// How to set up the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendConfig {
    /// Queue pairs (RX + TX rings each). More than one needs MQ from the backend.
    pub queue_pairs: u16,
    /// Entries per ring, a power of two.
    pub queue_size: u16,
    /// Guest memory in bytes (memfd, shared with the backend). See
    /// [`FrontendConfig::min_mem_size`].
    pub mem_size: usize,
    /// Negotiate VIRTIO_NET_F_MRG_RXBUF.
    pub mrg_rxbuf: bool,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Negotiate VIRTIO_RING_F_INDIRECT_DESC and send each TX packet that fits one buffer
    /// through a 2-entry indirect table (header, data).
    pub indirect: bool,
    /// Size of each posted RX buffer; 0 (the default) picks 2048 with MRG_RXBUF, and without
    /// it 65562 (64 KiB + 14 Ethernet + 12 header, rounded as in the virtio spec) when a guest
    /// GSO feature is negotiated, else 1526 bytes (or MTU + 30 when larger).
    pub rx_buf_len: u32,
    /// Negotiate CSUM, GUEST_CSUM, GUEST_TSO4/6, HOST_TSO4/6 when offered.
    pub offloads: bool,
    /// Size of each TX buffer (header + packet); packets that do not fit one buffer are sent
    /// as a chain of several. Default 2048.
    pub tx_buf_len: u32,
    /// Descriptors per RX ring kept out of the normal RX buffer pool so `rx_raw_chain` has
    /// some to use. 0 by default (the RX ring is full of buffers, like a real driver); set it
    /// to `queue_size` to post no normal RX buffers at all.
    pub raw_reserve: u16,
    /// Back guest memory with 2 MiB huge pages (needs reserved hugetlb pages).
    pub hugepages: bool,
    /// Negotiate VIRTIO_F_RING_PACKED and use packed virtqueues (an error when the backend
    /// does not offer it).
    pub packed: bool,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            queue_pairs: 1,
            queue_size: 256,
            mem_size: 64 << 20,
            mrg_rxbuf: true,
            event_idx: true,
            indirect: false,
            rx_buf_len: 0,
            offloads: true,
            tx_buf_len: 2048,
            raw_reserve: 0,
            hugepages: false,
            packed: false,
        }
    }
}

/// Largest RX buffer needed without MRG_RXBUF when guest GSO is on (virtio spec 5.1.6.3.1).
pub const RX_BUF_LEN_BIG: u32 = 65562;
/// RX buffer size with MRG_RXBUF.
pub const RX_BUF_LEN_MRG: u32 = 2048;
/// Minimum RX buffer without MRG_RXBUF or guest GSO (1514 + 12 header).
pub const RX_BUF_LEN_SMALL: u32 = 1526;
/// Bytes reserved for the raw-test scratch area (`Frontend::scratch_gpa`).
pub const SCRATCH_LEN: usize = 1 << 20;

impl FrontendConfig {
    /// Effective RX buffer size for the negotiated features (see `rx_buf_len`).
    pub fn effective_rx_buf_len(&self, acked_features: u64, mtu: u16) -> u32 {
        use features::*;
        if self.rx_buf_len != 0 {
            return self.rx_buf_len;
        }
        if acked_features & VIRTIO_NET_F_MRG_RXBUF != 0 {
            RX_BUF_LEN_MRG
        } else if acked_features
            & (VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6 | VIRTIO_NET_F_GUEST_UFO)
            != 0
        {
            RX_BUF_LEN_BIG
        } else {
            RX_BUF_LEN_SMALL.max(mtu as u32 + 14 + 4 + 12)
        }
    }

    /// Guest memory needed for a given RX buffer size.
    pub fn mem_needed(&self, rx_buf_len: u32, indirect: bool) -> usize {
        let n = self.queue_size as usize;
        let per_qp = 2 * ring::RingAddrs::footprint(self.queue_size)
            + 64
            + n * self.tx_buf_len as usize
            + 64
            + n * (rx_buf_len as usize).next_multiple_of(64)
            + if indirect { 16 + 32 * n } else { 0 };
        memory::PAGE_SIZE + self.queue_pairs as usize * per_qp + 4096 + SCRATCH_LEN
    }

    /// Guest memory that is enough whatever the backend offers (with `rx_buf_len` 0 this
    /// assumes the largest automatic RX buffer, in case MRG_RXBUF is not negotiated).
    pub fn min_mem_size(&self) -> usize {
        let rx = if self.rx_buf_len != 0 {
            self.rx_buf_len
        } else {
            RX_BUF_LEN_BIG.max(u16::MAX as u32 + 30)
        };
        self.mem_needed(rx, self.indirect)
    }
}
