//! Guest-physical to host address translation, built once per memory table.
//!
//! vm-memory's checked accessors cost a region search and a bounds check per
//! access; the data path instead keeps this small table (one entry per region,
//! usually one or two) and holds the `Arc` of the memory snapshot it was built
//! from, so the mappings it points into cannot be unmapped under it.

use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

#[derive(Clone, Copy)]
struct Region {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// A translation table for one snapshot of guest memory.
pub struct GuestMap {
    regions: Vec<Region>,
    snapshot: Arc<GuestMemoryMmap>,
}

// SAFETY: the raw pointers point into mappings owned by `snapshot`, which is
// itself Send + Sync; the table is read-only after construction.
unsafe impl Send for GuestMap {}

impl GuestMap {
    pub fn new(snapshot: Arc<GuestMemoryMmap>) -> Self {
        let regions = snapshot
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(Region {
                    gpa: r.start_addr().0,
                    len: r.len(),
                    host,
                })
            })
            .collect();
        Self { regions, snapshot }
    }

    /// The snapshot the table points into; a view built on the table holds
    /// a clone so that it cannot outlive the mappings either.
    #[inline]
    pub fn snapshot(&self) -> &Arc<GuestMemoryMmap> {
        &self.snapshot
    }

    /// True when this table was built from `mem`.
    #[inline]
    pub fn is_for(&self, mem: &GuestMemoryMmap) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.snapshot), mem)
    }

    /// Host address of `gpa` and how many bytes (at most `len`) are
    /// contiguous from there within one region; `None` if `gpa` is not guest
    /// memory.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<(*mut u8, u64)> {
        for r in &self.regions {
            let off = gpa.wrapping_sub(r.gpa);
            if off < r.len {
                // SAFETY: off < r.len, so the result stays inside the mapping.
                let host = unsafe { r.host.add(off as usize) };
                return Some((host, len.min(r.len - off)));
            }
        }
        None
    }

    /// The guest-physical address of host address `host`, when it lies in
    /// guest memory (the dirty log marks pages by their guest address).
    #[inline]
    pub fn gpa_of(&self, host: *const u8) -> Option<u64> {
        self.gpa_range_of(host).map(|(gpa, _)| gpa)
    }

    /// [`Self::gpa_of`], and how many bytes from `host` on lie in the same
    /// region (contiguous in guest-physical space).
    #[inline]
    pub fn gpa_range_of(&self, host: *const u8) -> Option<(u64, u64)> {
        self.regions.iter().find_map(|r| {
            let off = (host as usize).wrapping_sub(r.host as usize) as u64;
            (off < r.len).then_some((r.gpa + off, r.len - off))
        })
    }

    /// Host address of `[gpa, gpa+len)` when the whole range lies in one region.
    #[inline]
    pub fn contiguous(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        match self.translate(gpa, len) {
            Some((p, n)) if n == len => Some(p),
            _ => None,
        }
    }
}
