//! The frame pool: one shared memory region of fixed-size frames
//! ([`PoolMemory`], a memfd another process can map: see docs/upgrade.md).
//!
//! Two size classes live in the one region. The small class (4 KiB frames, the
//! first part of the region) is what an AF_XDP UMEM registers: one frame per
//! UMEM chunk, room for a 1500 B MTU plus 256 B headroom. The large class holds a
//! guest's TSO/USO super-frame (up to 64 KiB) contiguously, so copy loops never
//! walk a chain of frames; it never reaches the uplink unsegmented.
//!
//! Frames are handed out through per-engine [`FrameCache`]s that refill from and
//! spill to the shared free lists in bulk, so an engine takes the pool lock once
//! per [`BULK`] frames, never per packet (the DPDK mempool-cache design). The
//! large class is cached the same way, in smaller batches and under a tighter
//! bound: it has few frames, and frames idle in one engine's cache are frames
//! no other tenant can get.

use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::pool_memory::{PageChoice, Pages, PoolMemory, PoolMemoryError};
use super::FrameHandle;

/// Bytes before the packet in every frame: room for the virtio-net header on
/// the vNIC side and for `XDP_PACKET_HEADROOM` on the AF_XDP side.
pub const HEADROOM: u16 = 256;

/// Frames moved between a cache and the shared free list at once.
pub const BULK: usize = 64;

/// Frames a cache holds at most before it spills a bulk back.
const CACHE_MAX: usize = 4 * BULK;

/// Small frames one [`FrameCache`] may hold at most (what the pool's sizing
/// sets aside per engine).
pub const CACHE_FRAMES: usize = CACHE_MAX + 1;

/// Large frames moved at once at most; a cache keeps at most twice its batch.
const LARGE_BULK_MAX: usize = 8;

/// The large batch is at most this fraction of the class, so one engine's
/// cache never holds more than 2/LARGE_SHARE of it (1/32 of 512 frames by
/// default) however many large frames it has passed.
const LARGE_SHARE: usize = 64;

/// Largest packet a frame may need: 64 KiB GSO payload plus Ethernet/VLAN.
pub const MAX_PACKET: usize = 65_535 + 14 + 4;

#[derive(Debug, Error)]
pub enum PoolError {
    #[error(transparent)]
    Memory(#[from] PoolMemoryError),
    #[error("frame pool: {0}")]
    Config(&'static str),
}

/// Sizes of the pool.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PoolConfig {
    pub frames: u32,
    pub frame_size: u32,
    pub large_frames: u32,
    pub large_frame_size: u32,
    /// The pages to back the pool with.
    pub pages: PageChoice,
}

/// Small frames of a pool sized by nothing else.
pub const DEFAULT_FRAMES: u32 = 16_384;
/// Large frames of a pool (TSO/USO super-frames in flight).
pub const DEFAULT_LARGE_FRAMES: u32 = 512;
/// Bytes of a small frame (one AF_XDP UMEM chunk).
pub const FRAME_SIZE: u32 = 4096;

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            frames: DEFAULT_FRAMES,
            frame_size: FRAME_SIZE,
            large_frames: DEFAULT_LARGE_FRAMES,
            large_frame_size: 69_632,
            pages: PageChoice::Auto,
        }
    }
}

impl PoolConfig {
    /// A few frames, for unit tests.
    pub fn small_for_tests() -> Self {
        Self {
            frames: 512,
            frame_size: 4096,
            large_frames: 8,
            large_frame_size: 69_632,
            // Tests run many pools at once: leave the machine's huge pages
            // to the daemons and the tests that ask for them.
            pages: PageChoice::Small,
        }
    }
}

/// The frame pool. Shared by every engine of the daemon.
pub struct FramePool {
    base: *mut u8,
    bytes: usize,
    /// The mapping `base` points into; the pool borrows from it for its life.
    memory: PoolMemory,
    frames: u32,
    frame_size: usize,
    large_frame_size: usize,
    free_small: Mutex<Vec<u32>>,
    free_large: Mutex<Vec<u32>>,
    total_large: u32,
    /// Large frames a cache refills or spills at once.
    large_bulk: usize,
}

// SAFETY: the region is owned by the pool (`memory`) for its whole life; which thread may
// touch a frame is decided by who holds its (move-only) `FrameHandle`, and the
// free lists are behind mutexes.
unsafe impl Send for FramePool {}
// SAFETY: as for `Send`: shared access only ever reaches frames through a handle.
unsafe impl Sync for FramePool {}

impl FramePool {
    pub fn new(cfg: &PoolConfig) -> Result<Arc<Self>, PoolError> {
        let bytes = Self::region_bytes(cfg)?;
        let memory = PoolMemory::create(bytes, cfg.pages)?;
        // Hand out low indices last so a lightly loaded daemon touches few pages.
        let free_small = (0..cfg.frames).rev().collect();
        let free_large = (cfg.frames..cfg.frames + cfg.large_frames).rev().collect();
        Ok(Self::with_memory(
            cfg, bytes, memory, free_small, free_large,
        ))
    }

    /// The pool another snapnet process created with `cfg`, from its memfd
    /// (an upgrade's handoff). Its free lists start empty: the frames are
    /// the other process's until it hands some over with [`Self::give_free`].
    pub fn attach(cfg: &PoolConfig, memfd: std::os::fd::OwnedFd) -> Result<Arc<Self>, PoolError> {
        let bytes = Self::region_bytes(cfg)?;
        let memory = PoolMemory::open(memfd, bytes)?;
        Ok(Self::with_memory(
            cfg,
            bytes,
            memory,
            Vec::new(),
            Vec::new(),
        ))
    }

    /// Bytes of the region `cfg` describes, once `cfg` is checked.
    fn region_bytes(cfg: &PoolConfig) -> Result<usize, PoolError> {
        if cfg.frame_size < 2048 || !cfg.frame_size.is_power_of_two() {
            return Err(PoolError::Config(
                "frame_size must be a power of two of at least 2048",
            ));
        }
        if (cfg.large_frame_size as usize) < MAX_PACKET + HEADROOM as usize {
            return Err(PoolError::Config(
                "large_frame_size must hold 64 KiB plus headroom",
            ));
        }
        if cfg.frames == 0 {
            return Err(PoolError::Config("frames must be at least 1"));
        }
        let small_bytes = cfg.frames as usize * cfg.frame_size as usize;
        Ok(small_bytes + cfg.large_frames as usize * cfg.large_frame_size as usize)
    }

    fn with_memory(
        cfg: &PoolConfig,
        bytes: usize,
        memory: PoolMemory,
        free_small: Vec<u32>,
        free_large: Vec<u32>,
    ) -> Arc<Self> {
        Arc::new(Self {
            base: memory.base(),
            bytes,
            memory,
            frames: cfg.frames,
            frame_size: cfg.frame_size as usize,
            large_frame_size: cfg.large_frame_size as usize,
            free_small: Mutex::new(free_small),
            free_large: Mutex::new(free_large),
            total_large: cfg.large_frames,
            large_bulk: (cfg.large_frames as usize / LARGE_SHARE).clamp(1, LARGE_BULK_MAX),
        })
    }

    /// The pool's layout, for a process that maps the same memory
    /// (`attach`): page choice as the memory got it.
    pub fn layout(&self) -> PoolConfig {
        PoolConfig {
            frames: self.frames,
            frame_size: self.frame_size as u32,
            large_frames: self.total_large,
            large_frame_size: self.large_frame_size as u32,
            pages: PageChoice::Auto,
        }
    }

    /// The pages behind the pool.
    pub fn pages(&self) -> Pages {
        self.memory.pages()
    }

    /// The pool's memfd, to pass to the process that takes over.
    pub fn memfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.memory.fd()
    }

    /// Takes up to `small` small and `large` large frames off the free
    /// lists, to hand to the other process of an upgrade (as indices: the
    /// memory is shared).
    pub fn take_free(&self, small: usize, large: usize) -> (Vec<u32>, Vec<u32>) {
        let take = |list: &Mutex<Vec<u32>>, n: usize| {
            let mut list = lock(list);
            let at = list.len().saturating_sub(n);
            list.split_off(at)
        };
        (take(&self.free_small, small), take(&self.free_large, large))
    }

    /// Puts frames the other process of an upgrade handed over into the free
    /// lists. An index outside its class is refused (and nothing is taken):
    /// the peer is snapnet too, but what it sends is checked all the same.
    pub fn give_free(&self, small: &[u32], large: &[u32]) -> Result<(), PoolError> {
        let large_range = self.frames..self.frames + self.total_large;
        if small.iter().any(|&i| i >= self.frames) || large.iter().any(|i| !large_range.contains(i))
        {
            return Err(PoolError::Config(
                "a handed-over free frame is outside its class",
            ));
        }
        lock(&self.free_small).extend_from_slice(small);
        lock(&self.free_large).extend_from_slice(large);
        Ok(())
    }

    /// A per-engine cache of free frames.
    pub fn cache(self: &Arc<Self>) -> FrameCache {
        FrameCache {
            pool: self.clone(),
            small: Vec::with_capacity(CACHE_MAX + BULK),
            large: Vec::with_capacity(self.large_cache_max() + 1),
        }
    }

    /// Frames in the shared free lists (small, large). Frames held in caches
    /// are not counted: drop the caches first when checking for leaks.
    pub fn free_frames(&self) -> (usize, usize) {
        (lock(&self.free_small).len(), lock(&self.free_large).len())
    }

    /// Most large frames one cache keeps (it spills a batch beyond).
    pub fn large_cache_max(&self) -> usize {
        2 * self.large_bulk
    }

    /// Total frames (small, large).
    pub fn total_frames(&self) -> (usize, usize) {
        (self.frames as usize, self.total_large as usize)
    }

    /// Where frame `index` lies in the region (offset, length); `None` for
    /// an index past the pool, which only a handle minted for another pool
    /// (a bug, never guest input) can carry. One compare on the packet path
    /// keeps such a handle from reaching outside the mapping.
    #[inline]
    fn span(&self, index: u32) -> Option<(usize, usize)> {
        if index < self.frames {
            Some((index as usize * self.frame_size, self.frame_size))
        } else if index - self.frames < self.total_large {
            let small_bytes = self.frames as usize * self.frame_size;
            Some((
                small_bytes + (index - self.frames) as usize * self.large_frame_size,
                self.large_frame_size,
            ))
        } else {
            None
        }
    }

    /// Whether `frame` is a frame of this pool.
    #[inline]
    pub fn owns(&self, frame: &FrameHandle) -> bool {
        self.span(frame.index).is_some()
    }

    /// Capacity in bytes of the frame behind `frame` (0 for a handle that
    /// is not of this pool).
    #[inline]
    pub fn capacity(&self, frame: &FrameHandle) -> usize {
        self.span(frame.index).map_or(0, |(_, len)| len)
    }

    /// The whole frame buffer, headroom included; empty for a handle that
    /// is not of this pool (callers find no room and drop the frame).
    #[inline]
    pub fn frame_mut<'a>(&'a self, frame: &'a mut FrameHandle) -> &'a mut [u8] {
        let Some((start, len)) = self.span(frame.index) else {
            return &mut [];
        };
        // SAFETY: `span` put the frame inside the region, and a handle is
        // move-only: `&mut FrameHandle` proves no other view of this frame
        // exists while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(start), len) }
    }

    /// A handle for frame `index` that the other process of an upgrade
    /// handed over: its own handle is gone with the hand-over, so exactly one
    /// owner of the frame remains across the two processes (the pool is
    /// their shared memory). `None` for values that do not fit this pool:
    /// the peer is snapnet too, but what it sends is checked all the same.
    pub fn adopt(&self, index: u32, offset: u16, len: u32) -> Option<FrameHandle> {
        let (_, cap) = self.span(index)?;
        (usize::from(offset) + len as usize <= cap).then(|| FrameHandle::new(index, offset, len))
    }

    /// The packet bytes of `frame` (empty for a handle not of this pool).
    #[inline]
    pub fn bytes(&self, frame: &FrameHandle) -> &[u8] {
        let Some((start, cap)) = self.span(frame.index) else {
            return &[];
        };
        let from = (frame.offset as usize).min(cap);
        let to = (from + frame.len as usize).min(cap);
        // SAFETY: as in `frame_mut`; the range is clamped to the frame, and the
        // shared borrow of the unique handle excludes writers.
        unsafe { std::slice::from_raw_parts(self.base.add(start + from), to - from) }
    }
}

impl FramePool {
    /// The region an AF_XDP UMEM registers: its start, its length, and the
    /// chunk size (the small frame size). The large frames lie in the same
    /// region but are never put in a UMEM ring.
    pub fn umem_region(&self) -> (*mut u8, usize, u32) {
        (self.base, self.bytes, self.frame_size as u32)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a free-list lock cannot leave the Vec invalid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cache-line offsets a packet's start is spread over (see [`colored_offset`]).
const COLORS: u32 = 8;

/// Where the packet starts in frame `index`: after the headroom, shifted by
/// 0..COLORS cache lines when the frame has room. Frames are 4 KiB aligned,
/// so without the shift every packet's bytes would fall into the same few
/// L1/L2 sets and a batch of 1500 B frames would evict itself (DPDK pads its
/// mbufs for the same reason).
#[inline]
fn colored_offset(index: u32, need: usize, frame_size: usize) -> u16 {
    let shift = (index % COLORS) as usize * 64;
    if need + shift <= frame_size {
        HEADROOM + shift as u16
    } else {
        HEADROOM
    }
}

/// An engine's private stock of free frames.
pub struct FrameCache {
    pool: Arc<FramePool>,
    small: Vec<u32>,
    large: Vec<u32>,
}

impl FrameCache {
    /// A frame able to hold `len` packet bytes after the headroom, or `None`
    /// when the pool is exhausted (the caller counts a drop).
    #[inline]
    pub fn alloc(&mut self, len: usize) -> Option<FrameHandle> {
        let need = len + HEADROOM as usize;
        let index = if need <= self.pool.frame_size {
            if self.small.is_empty() {
                refill(&mut self.small, &self.pool.free_small, BULK);
            }
            self.small.pop()?
        } else if need <= self.pool.large_frame_size {
            if self.large.is_empty() {
                refill(&mut self.large, &self.pool.free_large, self.pool.large_bulk);
            }
            self.large.pop()?
        } else {
            return None;
        };
        Some(FrameHandle::new(
            index,
            colored_offset(index, need, self.pool.frame_size),
            0,
        ))
    }

    /// Returns a frame to the pool.
    #[inline]
    pub fn free(&mut self, frame: FrameHandle) {
        if !self.pool.owns(&frame) {
            // Not ours to hand out again: a free list with a foreign index
            // would give it to the next alloc.
            return;
        }
        if frame.index < self.pool.frames {
            self.small.push(frame.index);
            if self.small.len() > CACHE_MAX {
                spill(&mut self.small, &self.pool.free_small, BULK);
            }
        } else {
            self.large.push(frame.index);
            if self.large.len() > self.pool.large_cache_max() {
                spill(&mut self.large, &self.pool.free_large, self.pool.large_bulk);
            }
        }
    }

    /// The pool this cache draws from.
    pub fn pool(&self) -> &Arc<FramePool> {
        &self.pool
    }
}

/// Moves up to `n` frames from a shared free list into a cache's stock.
#[cold]
fn refill(stock: &mut Vec<u32>, shared: &Mutex<Vec<u32>>, n: usize) {
    let mut free = lock(shared);
    let from = free.len() - free.len().min(n);
    stock.extend(free.drain(from..));
}

/// Moves the `n` oldest frames of a cache's stock back to a shared free list.
/// The stock is used last-in first-out, so its newest frames are the ones
/// still in this core's caches: those stay.
#[cold]
fn spill(stock: &mut Vec<u32>, shared: &Mutex<Vec<u32>>, n: usize) {
    let to = stock.len().min(n);
    lock(shared).extend(stock.drain(..to));
}

impl Drop for FrameCache {
    fn drop(&mut self) {
        spill(&mut self.small, &self.pool.free_small, usize::MAX);
        spill(&mut self.large, &self.pool.free_large, usize::MAX);
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
