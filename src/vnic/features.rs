//! What a snapnet vNIC offers a frontend: virtio-net feature bits, vhost-user
//! protocol features, and the virtio-net config space.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use snapnet_wire::MacAddr;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Virtio-net features every snapnet vNIC offers. MQ is added when the vNIC
/// has more than one queue pair.
pub const OFFERED: u64 = bit(VIRTIO_F_VERSION_1)
    | bit(VIRTIO_F_IN_ORDER)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_RING_F_EVENT_IDX)
    | bit(VIRTIO_RING_F_INDIRECT_DESC)
    | bit(VIRTIO_F_RING_PACKED)
    | bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    // After a live migration the guest announces itself (gratuitous ARP /
    // unsolicited NA); QEMU drives it through its own control queue.
    | bit(VIRTIO_NET_F_GUEST_ANNOUNCE);

/// VHOST_F_LOG_ALL: the frontend turns dirty-page logging on by acking it
/// during a live migration (docs/migration.md).
pub const LOG_ALL: u64 = VhostUserVirtioFeatures::LOG_ALL.bits();

/// Feature bits for `queue_pairs` queue pairs, plus PROTOCOL_FEATURES.
pub fn offered(queue_pairs: u16) -> u64 {
    let mq = if queue_pairs > 1 {
        bit(VIRTIO_NET_F_MQ)
    } else {
        0
    };
    OFFERED | mq | LOG_ALL | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// vhost-user protocol features snapnet offers. STATUS, NET_MTU, RARP and
/// LOG_SHMFD (snapnet maps the log itself) need the patched `vhost` crates
/// (vendor/PATCHES.md).
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::MTU
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::STATUS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::RARP
}

/// The negotiated features that change how the data path works, decoded once
/// per connection so the hot path tests plain booleans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub mrg_rxbuf: bool,
    pub event_idx: bool,
    pub indirect: bool,
    /// Packed virtqueues (VIRTIO_F_RING_PACKED) instead of split ones.
    pub packed: bool,
    /// Guest accepts frames with a partial checksum (NEEDS_CSUM).
    pub guest_csum: bool,
    /// Guest accepts TSO super-frames.
    pub guest_tso4: bool,
    pub guest_tso6: bool,
    /// Guest may send TCPv4 / TCPv6 super-frames (HOST_TSO4 / HOST_TSO6).
    pub host_tso4: bool,
    pub host_tso6: bool,
    /// Guest may send partial checksums (VIRTIO_NET_F_CSUM): without it a
    /// frame asking for NEEDS_CSUM is refused on TX.
    pub host_csum: bool,
    /// VIRTIO_F_IN_ORDER: buffers are used in the order they were made
    /// available, so a TX batch is returned with one used entry (its last).
    pub in_order: bool,
}

impl Negotiated {
    pub fn from_bits(acked: u64) -> Self {
        let has = |b: u32| acked & bit(b) != 0;
        Self {
            mrg_rxbuf: has(VIRTIO_NET_F_MRG_RXBUF),
            event_idx: has(VIRTIO_RING_F_EVENT_IDX),
            indirect: has(VIRTIO_RING_F_INDIRECT_DESC),
            packed: has(VIRTIO_F_RING_PACKED),
            guest_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            guest_tso4: has(VIRTIO_NET_F_GUEST_TSO4),
            guest_tso6: has(VIRTIO_NET_F_GUEST_TSO6),
            host_tso4: has(VIRTIO_NET_F_HOST_TSO4),
            host_tso6: has(VIRTIO_NET_F_HOST_TSO6),
            host_csum: has(VIRTIO_NET_F_CSUM),
            in_order: has(VIRTIO_F_IN_ORDER),
        }
    }
}

/// The virtio-net header length: 12 bytes with VERSION_1 or MRG_RXBUF, which
/// every frontend snapnet serves negotiates (VERSION_1 is required).
pub const VNET_HDR_LEN: usize = snapnet_wire::virtio_net::HEADER_LEN;

/// `struct virtio_net_config` as far as snapnet fills it.
#[derive(Clone, Copy, Debug)]
pub struct ConfigSpace {
    pub mac: MacAddr,
    pub link_up: bool,
    pub max_queue_pairs: u16,
    pub mtu: u16,
}

/// Bytes of `virtio_net_config` up to and including `mtu`.
pub const CONFIG_LEN: usize = 12;

impl ConfigSpace {
    pub fn to_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        b[0..6].copy_from_slice(&self.mac.0);
        let status = if self.link_up {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        b[6..8].copy_from_slice(&status.to_le_bytes());
        b[8..10].copy_from_slice(&self.max_queue_pairs.to_le_bytes());
        b[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }

    /// The `size` bytes at `offset`, as GET_CONFIG returns them; empty when
    /// the range is outside the config space.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.to_bytes();
        let (start, len) = (offset as usize, size as usize);
        match start.checked_add(len) {
            Some(end) if end <= bytes.len() => bytes[start..end].to_vec(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_layout_and_bounds() {
        let cfg = ConfigSpace {
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            link_up: true,
            max_queue_pairs: 2,
            mtu: 1500,
        };
        let b = cfg.read(0, 12);
        assert_eq!(&b[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 2);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 1500);
        assert!(cfg.read(10, 4).is_empty());
        assert!(cfg.read(u32::MAX, 2).is_empty());
        assert_eq!(cfg.read(6, 2), vec![1, 0]);
    }

    #[test]
    fn mq_only_with_several_queue_pairs() {
        assert_eq!(offered(1) & bit(VIRTIO_NET_F_MQ), 0);
        assert_ne!(offered(4) & bit(VIRTIO_NET_F_MQ), 0);
        let n = Negotiated::from_bits(offered(1));
        assert!(
            n.mrg_rxbuf
                && n.event_idx
                && n.indirect
                && n.guest_csum
                && n.host_tso4
                && n.host_tso6
                && n.host_csum
                && n.in_order
        );
    }
}
