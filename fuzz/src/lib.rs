//! What the fuzz targets share: a reader that turns the fuzzer's bytes into
//! the values a target needs (never failing: a short input reads as zeroes,
//! so every input is a valid test), the frame pool, and a vNIC engine driven
//! against a fuzzed guest memory.

pub mod guest;
pub mod rpc;

use std::sync::{Arc, OnceLock};

use snapnet_wire::MacAddr;
use snapnet::packet::{FramePool, PoolConfig};
use snapnet::shaping::RateLimit;
use snapnet::vnic::antispoof::SpoofGuard;
use snapnet::vnic::VnicEngineConfig;

/// Reads values off the front of the fuzz input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// A length-prefixed (one byte) slice.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }
}

/// One small frame pool per process: every target checks that what it
/// borrowed is back before an input ends, so inputs cannot leak into each
/// other through it.
pub fn pool() -> &'static Arc<FramePool> {
    static POOL: OnceLock<Arc<FramePool>> = OnceLock::new();
    POOL.get_or_init(|| FramePool::new(&PoolConfig::small_for_tests()).expect("frame pool"))
}

/// Panics (a finding) when a frame of the pool was not given back.
pub fn assert_no_frame_leaked(pool: &FramePool) {
    assert_eq!(
        pool.free_frames(),
        pool.total_frames(),
        "frames leaked: (small, large) free vs total"
    );
}

/// Panics (a finding) when a handle claims bytes beyond its frame: the pool
/// would silently clamp them, hiding a length bug.
pub fn assert_frame_fits(pool: &FramePool, f: &snapnet::packet::FrameHandle) {
    assert!(
        usize::from(f.offset) + f.len as usize <= pool.capacity(f),
        "frame of {} bytes at offset {} does not fit its {}-byte buffer",
        f.len,
        f.offset,
        pool.capacity(f)
    );
}

/// The guest's MAC in every target (what its TX frames must carry as source).
pub const GUEST_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);

/// A queue-pair engine's configuration, made in this one place for every
/// target (only the MAC is checked on guest TX).
pub fn engine_config(
    name: String,
    mtu: u16,
    tx_limit: RateLimit,
    rx_limit: RateLimit,
) -> VnicEngineConfig {
    VnicEngineConfig {
        name,
        mtu,
        guard: SpoofGuard::new(GUEST_MAC, None),
        shaping: snapnet::shaping::VnicShaping::new(&tx_limit, &rx_limit),
        log: std::sync::Arc::new(snapnet::vnic::guest_log::GuestLog::new(
            snapnet::vnic::guest_log::INTERVAL,
        )),
    }
}
