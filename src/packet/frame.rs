//! The frame handle: what engines pass to each other instead of bytes.

use snapnet_wire::flow::Parsed;
pub use snapnet_wire::virtio_net::Offload;

use super::FramePool;

/// Owns one frame of the pool until it is handed on or freed.
///
/// Deliberately neither `Clone` nor `Copy`: exactly one handle exists per
/// allocated frame, which is what lets [`super::FramePool::bytes_mut`] hand out
/// a mutable view without a lock.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameHandle {
    pub(super) index: u32,
    /// Start of the packet within the frame (bytes before it are headroom).
    pub offset: u16,
    /// Packet length in bytes, from the Ethernet header on.
    pub len: u32,
    pub offload: Offload,
    /// The virtual network the frame travels in (set by the switch from the
    /// input port, or by an overlay uplink from the VXLAN VNI).
    pub network: u32,
    /// Header offsets and flow hash, filled by the first engine that needs
    /// them so that the next one does not parse again. Whoever moves the
    /// packet's start or rewrites its headers resets it.
    pub parsed: Parsed,
}

impl FrameHandle {
    /// A handle with no offload, network 0 and nothing parsed yet (only the
    /// pool and the UMEM loan ledger mint handles).
    #[inline]
    pub(super) fn new(index: u32, offset: u16, len: u32) -> Self {
        Self {
            index,
            offset,
            len,
            offload: Offload::default(),
            network: 0,
            parsed: Parsed::NOT_YET,
        }
    }

    /// Index of the frame in its pool.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The frame's headers: as carried, or parsed now (and not kept: the
    /// caller stores them in `parsed` if the frame goes on unchanged).
    /// `None` for a frame shorter than an Ethernet header.
    #[inline]
    pub fn headers(&self, pool: &FramePool) -> Option<Parsed> {
        if self.parsed.is_parsed() {
            return Some(self.parsed);
        }
        Parsed::of(pool.bytes(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_fits_half_a_cache_line() {
        // Links carry handles by value: two per line, and the parse it
        // carries costs no extra line.
        assert!(std::mem::size_of::<FrameHandle>() <= 32);
    }
}
