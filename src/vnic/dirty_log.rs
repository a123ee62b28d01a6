//! The dirty-page log of a live migration (vhost-user LOG_SHMFD): a bitmap
//! the frontend shares as a memfd, one bit per 4 KiB guest-physical page,
//! in which the backend marks every page it writes while the frontend copies
//! guest memory to the destination. A page written but not marked is copied
//! stale, and the guest finds old bytes after the move.
//!
//! The frontend shares one log among all its devices and clears words while
//! it copies, so every mark is an atomic OR. An engine collects what a batch
//! wrote ([`DirtyPages`]) and marks it once at the end of the batch, after
//! the writes, with one OR per 64 pages: marking before writing could let
//! the frontend clear the bit and copy the page between the two.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;

use super::guest_memory::GuestMap;
use super::guest_ring::RingAddrs;

/// The log's granule (vhost-user: VHOST_LOG_PAGE).
pub const LOG_PAGE: u64 = 4096;
/// Pages one word of the log covers.
const PAGES_PER_WORD: u64 = 64;
/// Largest log accepted: one bit per page of 64 TiB of guest memory.
const MAX_LOG_BYTES: u64 = 2 << 30;
/// Words a batch's marks are merged into before they are written; a batch
/// that touches more flushes early.
const CACHED_WORDS: usize = 32;

#[derive(Debug, Error)]
pub enum DirtyLogError {
    #[error("the dirty log's size {0} is not a multiple of 8 bytes between 8 B and 2 GiB")]
    Size(u64),
    #[error("the dirty log's offset {0} is not 8-byte aligned")]
    Offset(u64),
    #[error("cannot map the dirty log: {0}")]
    Map(std::io::Error),
}

/// A mapped dirty-page log.
pub struct DirtyLog {
    /// The log's first word, inside `mapping`.
    words: *const AtomicU64,
    len_words: usize,
    mapping: *mut libc::c_void,
    mapping_len: usize,
}

// SAFETY: the mapping is shared memory that only atomic operations touch;
// it stays mapped until the last `Arc` of this log is dropped.
unsafe impl Send for DirtyLog {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for DirtyLog {}

impl DirtyLog {
    /// Maps `size` bytes of `file` from `offset` (SET_LOG_BASE). The file
    /// may be closed afterwards: the mapping keeps the memory.
    pub fn map(file: &File, size: u64, offset: u64) -> Result<Self, DirtyLogError> {
        if size == 0 || size % 8 != 0 || size > MAX_LOG_BYTES {
            return Err(DirtyLogError::Size(size));
        }
        if offset % 8 != 0 {
            return Err(DirtyLogError::Offset(offset));
        }
        let page = LOG_PAGE;
        let start = offset - offset % page;
        let skip = (offset - start) as usize;
        let mapping_len = skip + size as usize;
        let file_offset =
            libc::off_t::try_from(start).map_err(|_| DirtyLogError::Offset(offset))?;
        // SAFETY: a fresh shared mapping of the caller's file; nothing else
        // in this process refers to the range the kernel picks.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                file_offset,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(DirtyLogError::Map(std::io::Error::last_os_error()));
        }
        Ok(Self {
            // `skip` is 8-aligned and the mapping page-aligned.
            words: mapping.cast::<u8>().wrapping_add(skip).cast::<AtomicU64>(),
            len_words: (size / 8) as usize,
            mapping,
            mapping_len,
        })
    }

    /// Bytes of guest-physical memory the log covers.
    pub fn covers(&self) -> u64 {
        self.len_words as u64 * PAGES_PER_WORD * LOG_PAGE
    }

    /// ORs `bits` into word `word`; a word past the log's end is ignored
    /// (the frontend sized the log to its memory: there is nothing to mark).
    #[inline]
    fn or_word(&self, word: usize, bits: u64) {
        if word < self.len_words {
            // SAFETY: word < len_words: inside the mapping, 8-aligned.
            unsafe { &*self.words.add(word) }.fetch_or(bits.to_le(), Ordering::Release);
        }
    }

    /// Marks the pages of `[gpa, gpa + len)` at once.
    pub fn mark(&self, gpa: u64, len: u64) {
        for_each_word(gpa, len, |w, bits| self.or_word(w, bits));
    }

    /// Whether page `page` is marked (for tests and checks).
    pub fn is_marked(&self, page: u64) -> bool {
        let word = (page / PAGES_PER_WORD) as usize;
        word < self.len_words
            // SAFETY: word < len_words: inside the mapping, 8-aligned.
            && u64::from_le(unsafe { &*self.words.add(word) }.load(Ordering::Acquire))
                & (1 << (page % PAGES_PER_WORD))
                != 0
    }
}

impl Drop for DirtyLog {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`; no reference into it outlives
        // the log (engines hold the log by `Arc`).
        unsafe { libc::munmap(self.mapping, self.mapping_len) };
    }
}

/// Calls `f(word, bits)` for each log word the pages of `[gpa, gpa+len)` fall
/// in, with those pages' bits.
#[inline]
fn for_each_word(gpa: u64, len: u64, mut f: impl FnMut(usize, u64)) {
    if len == 0 {
        return;
    }
    let first = gpa / LOG_PAGE;
    let last = gpa.saturating_add(len - 1) / LOG_PAGE;
    let mut page = first;
    while page <= last {
        let word = page / PAGES_PER_WORD;
        let from = page % PAGES_PER_WORD;
        let to = (last - word * PAGES_PER_WORD).min(PAGES_PER_WORD - 1);
        let n = to - from + 1;
        let bits = if n == PAGES_PER_WORD {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << from
        };
        f(word as usize, bits);
        page = (word + 1) * PAGES_PER_WORD;
    }
}

/// What one engine wrote into guest memory since its last flush, and the
/// log it marks.
pub struct DirtyPages {
    log: Arc<DirtyLog>,
    /// Guest buffers written, by host address (the per-packet code knows
    /// only those); translated back at the flush.
    written: Vec<(*const u8, u32)>,
    cache: Vec<(usize, u64)>,
}

// SAFETY: the host addresses are only compared with a GuestMap's regions,
// never dereferenced.
unsafe impl Send for DirtyPages {}

impl DirtyPages {
    pub fn new(log: Arc<DirtyLog>) -> Self {
        Self {
            log,
            written: Vec::with_capacity(256),
            cache: Vec::with_capacity(CACHED_WORDS),
        }
    }

    /// The per-packet code wrote `len` bytes of guest buffer at `host`.
    /// Writes that touch or overlap the previous one (the next buffer of
    /// a ring, the next part of a merged frame) extend it, so a batch
    /// usually leaves a few ranges to translate, not one per frame.
    #[inline]
    pub fn wrote(&mut self, host: *const u8, len: u32) {
        if let Some(last) = self.written.last_mut() {
            let (start, end) = (last.0 as usize, last.0 as usize + last.1 as usize);
            let at = host as usize;
            if (start..=end).contains(&at) {
                let grown = (at + len as usize).max(end) - start;
                if let Ok(grown) = u32::try_from(grown) {
                    last.1 = grown;
                    return;
                }
            }
        }
        self.written.push((host, len));
    }

    /// `[gpa, gpa + len)` was written.
    pub fn wrote_gpa(&mut self, gpa: u64, len: u64) {
        let Self { log, cache, .. } = self;
        for_each_word(gpa, len, |word, bits| {
            if let Some(e) = cache.iter_mut().find(|e| e.0 == word) {
                e.1 |= bits;
            } else if cache.len() < CACHED_WORDS {
                cache.push((word, bits));
            } else {
                log.or_word(word, bits);
            }
        });
    }

    /// The device-written parts of a ring were written: the used ring
    /// (split: entries, index, flags, avail_event) or the descriptor ring
    /// and device event area (packed).
    pub fn wrote_ring(&mut self, addrs: &RingAddrs, packed: bool) {
        let n = u64::from(addrs.size);
        if packed {
            self.wrote_gpa(addrs.desc, 16 * n);
            self.wrote_gpa(addrs.used, 4);
        } else {
            self.wrote_gpa(addrs.used, 4 + 8 * n + 2);
        }
    }

    /// Marks everything written since the last flush. `map` is the memory
    /// table the buffers were translated with.
    pub fn flush(&mut self, map: Option<&GuestMap>) {
        let written = std::mem::take(&mut self.written);
        if let Some(map) = map {
            for &(host, len) in &written {
                // A range may run from one region's mapping into the next
                // one's: each part is marked at its own guest address.
                let (mut host, mut len) = (host, u64::from(len));
                while len > 0 {
                    let Some((gpa, left)) = map.gpa_range_of(host) else {
                        break;
                    };
                    let n = len.min(left);
                    self.wrote_gpa(gpa, n);
                    host = host.wrapping_add(n as usize);
                    len -= n;
                }
            }
        }
        self.written = written;
        self.written.clear();
        for (word, bits) in self.cache.drain(..) {
            self.log.or_word(word, bits);
        }
    }

    /// The log this marks.
    pub fn log(&self) -> &Arc<DirtyLog> {
        &self.log
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// A zeroed log of `bytes` in a memfd, as a frontend shares it.
    pub(crate) fn log_file(bytes: usize) -> File {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"dirty-log-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd owned by nobody else.
        let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(&vec![0u8; bytes]).unwrap();
        f
    }

    #[test]
    fn pages_are_marked_by_word_across_boundaries() {
        let mut seen = Vec::new();
        for_each_word(63 * LOG_PAGE + 10, 3 * LOG_PAGE, |w, b| seen.push((w, b)));
        // Pages 63..=66: the last of word 0 and the first three of word 1.
        assert_eq!(seen, vec![(0, 1 << 63), (1, 0b111)]);
        seen.clear();
        for_each_word(0, 64 * LOG_PAGE, |w, b| seen.push((w, b)));
        assert_eq!(seen, vec![(0, u64::MAX)]);
        seen.clear();
        for_each_word(5, 0, |w, b| seen.push((w, b)));
        assert!(seen.is_empty());
    }

    #[test]
    fn a_mapped_log_is_marked_in_the_shared_memory_and_not_past_its_end() {
        let f = log_file(16);
        let log = DirtyLog::map(&f, 16, 0).unwrap();
        assert_eq!(log.covers(), 128 * LOG_PAGE);
        log.mark(70 * LOG_PAGE, 1);
        log.mark(1 << 40, LOG_PAGE); // past the end: ignored
        assert!(log.is_marked(70) && !log.is_marked(69) && !log.is_marked(71));
        let mut bytes = [0u8; 16];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut bytes, 0).unwrap();
        // Page 70: byte 8, bit 6 (little-endian words, as QEMU reads them).
        assert_eq!(bytes[8], 1 << 6);
        assert!(DirtyLog::map(&f, 12, 0).is_err());
        assert!(DirtyLog::map(&f, 8, 4).is_err());
    }

    #[test]
    fn buffers_written_by_host_address_are_marked_at_their_guest_pages() {
        let mem = Arc::new(
            GuestMemoryMmap::from_ranges(&[
                (GuestAddress(0), 0x10000),
                (GuestAddress(0x100000), 0x10000),
            ])
            .unwrap(),
        );
        let map = GuestMap::new(mem);
        let f = log_file(64);
        let log = Arc::new(DirtyLog::map(&f, 64, 0).unwrap());
        let mut pages = DirtyPages::new(log.clone());
        let (host, _) = map.translate(0x100000 + 3 * LOG_PAGE + 100, 10).unwrap();
        pages.wrote(host, 4000);
        pages.wrote_ring(
            &RingAddrs {
                desc: 0,
                avail: 0x4000,
                used: 0x5000,
                size: 1024,
            },
            false,
        );
        assert!(!log.is_marked(0x103), "marked only at the flush");
        pages.flush(Some(&map));
        // 100 + 4000 bytes from page 0x103 end in page 0x104.
        for p in [0x103, 0x104, 5, 6, 7] {
            assert!(log.is_marked(p), "page {p:#x}");
        }
        for p in [0x102, 0x105, 4, 8, 0] {
            assert!(!log.is_marked(p), "page {p:#x}");
        }
    }

    #[test]
    fn adjacent_writes_merge_and_still_mark_every_page() {
        let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap());
        let map = GuestMap::new(mem);
        let f = log_file(8);
        let log = Arc::new(DirtyLog::map(&f, 8, 0).unwrap());
        let mut pages = DirtyPages::new(log.clone());
        let (base, _) = map.translate(0, 0x40000).unwrap();
        let at = |off: usize| base.wrapping_add(off).cast_const();
        // Pages 3..=5 in three touching or overlapping writes.
        pages.wrote(at(3 * 4096 + 100), 4000);
        pages.wrote(at(3 * 4096 + 4100), 1000);
        pages.wrote(at(3 * 4096 + 2000), 7000);
        // A write elsewhere starts a range of its own.
        pages.wrote(at(9 * 4096), 10);
        assert_eq!(pages.written.len(), 2);
        pages.flush(Some(&map));
        for p in 0..16 {
            assert_eq!(log.is_marked(p), matches!(p, 3..=5 | 9), "page {p}");
        }
    }
}
