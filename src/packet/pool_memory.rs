//! The memory behind the frame pool: one sealed memfd, mapped shared.
//!
//! A frame handle is an index into this memory, so a second snapnet process
//! that maps the same memfd (the new binary of an upgrade, docs/upgrade.md)
//! reads the same bytes through the same handle. Anonymous private memory,
//! which the pool used before, cannot be passed to another process.
//!
//! The page size matters: with 4 KiB pages every frame sits in a page of its
//! own, and the copies into and out of guests pay a TLB miss per frame. The
//! pool takes hugetlb pages where the operator reserved them (as DPDK users
//! do), else transparent huge pages where the kernel allows them for shared
//! memory (`shmem_enabled` `advise` or `always`), else 4 KiB pages; what it
//! got is logged and measured in docs/performance.md.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use memfd::{FileSeal, HugetlbSize, Memfd, MemfdOptions};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Bytes of a huge page (x86-64 and arm64 with 4 KiB base pages).
pub const HUGE_PAGE: usize = 2 << 20;

/// `statfs.f_type` of hugetlbfs, where hugetlb memfds live.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The seals a pool memfd carries: its size is fixed for good, so a peer that
/// was handed the fd cannot truncate it under the other's mappings (an access
/// past the end would be a SIGBUS in the packet path).
const SEALS: [FileSeal; 3] = [FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal];

#[derive(Debug, Error)]
pub enum PoolMemoryError {
    #[error("frame pool memory: {what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("frame pool memory: {0}")]
    Refused(String),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> PoolMemoryError {
    move |source| PoolMemoryError::Io { what, source }
}

fn memfd_err(what: &'static str) -> impl FnOnce(memfd::Error) -> PoolMemoryError {
    move |e| {
        let source = match e {
            memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => e,
        };
        PoolMemoryError::Io { what, source }
    }
}

/// The pages the configuration asks for (`frame_pool.pages`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageChoice {
    /// The best the machine offers: hugetlb, transparent huge, 4 KiB.
    #[default]
    Auto,
    /// Reserved 2 MiB hugetlb pages; refused when too few are free.
    Hugetlb,
    /// Transparent huge pages of shared memory; refused when the kernel
    /// gives 4 KiB pages instead.
    Transparent,
    /// 4 KiB pages.
    Small,
}

/// The pages the pool got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    Hugetlb,
    Transparent,
    Small,
}

impl std::fmt::Display for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pages::Hugetlb => "2 MiB hugetlb pages",
            Pages::Transparent => "transparent huge pages",
            Pages::Small => "4 KiB pages",
        })
    }
}

/// One shared mapping of the pool's memfd.
pub struct PoolMemory {
    memfd: Memfd,
    base: *mut u8,
    len: usize,
    pages: Pages,
}

// SAFETY: the mapping is owned by this value for its whole life and only
// unmapped in Drop; who may touch which bytes is the pool's business.
unsafe impl Send for PoolMemory {}
// SAFETY: as for `Send`; `&PoolMemory` hands out only the base address.
unsafe impl Sync for PoolMemory {}

impl PoolMemory {
    /// New pool memory of at least `bytes`, in the pages `choice` asks for,
    /// zeroed and populated so the packet path never faults.
    pub fn create(bytes: usize, choice: PageChoice) -> Result<Self, PoolMemoryError> {
        if bytes == 0 {
            return Err(PoolMemoryError::Refused("size is zero".into()));
        }
        match choice {
            PageChoice::Hugetlb => Self::create_hugetlb(bytes),
            PageChoice::Transparent => {
                let memory = Self::create_shmem(bytes)?;
                if memory.pages != Pages::Transparent {
                    return Err(PoolMemoryError::Refused(format!(
                        "the kernel gave 4 KiB pages where transparent huge pages were asked for \
                         (/sys/kernel/mm/transparent_hugepage/shmem_enabled is {})",
                        shmem_thp_setting()
                    )));
                }
                Ok(memory)
            }
            PageChoice::Small => Self::create_shmem(bytes),
            PageChoice::Auto => Self::create_hugetlb(bytes).or_else(|_| Self::create_shmem(bytes)),
        }
    }

    fn create_hugetlb(bytes: usize) -> Result<Self, PoolMemoryError> {
        let memfd = MemfdOptions::new()
            .allow_sealing(true)
            .hugetlb(Some(HugetlbSize::Huge2MB))
            .create("snapnet-frames")
            .map_err(memfd_err("memfd_create (hugetlb)"))?;
        let len = bytes.next_multiple_of(HUGE_PAGE);
        size_and_seal(&memfd, len)?;
        // A shared hugetlb mapping reserves its pages when it is made: too few
        // free pages fail here, never later in the packet path.
        let base = map_shared(memfd.as_file(), len, false).map_err(|e| {
            PoolMemoryError::Refused(format!(
                "{} hugetlb pages of 2 MiB are not free ({e}); reserve them with \
                 vm.nr_hugepages",
                len / HUGE_PAGE
            ))
        })?;
        Ok(Self {
            memfd,
            base,
            len,
            pages: Pages::Hugetlb,
        })
    }

    fn create_shmem(bytes: usize) -> Result<Self, PoolMemoryError> {
        let memfd = MemfdOptions::new()
            .allow_sealing(true)
            .create("snapnet-frames")
            .map_err(memfd_err("memfd_create"))?;
        // Whole huge pages, so that the last one can be huge too.
        let len = bytes.next_multiple_of(HUGE_PAGE);
        size_and_seal(&memfd, len)?;
        let base = map_shared(memfd.as_file(), len, true).map_err(io_err("mmap"))?;
        let pages = pages_of(base, false);
        Ok(Self {
            memfd,
            base,
            len,
            pages,
        })
    }

    /// Maps the pool memory another snapnet process created and passed over
    /// (the upgrade's handoff channel). It must be a sealed memfd of at least
    /// `bytes`: what the peer sends is checked, even though it is snapnet.
    pub fn open(fd: OwnedFd, bytes: usize) -> Result<Self, PoolMemoryError> {
        let memfd = Memfd::try_from_fd(fd)
            .map_err(|_| PoolMemoryError::Refused("the pool fd is not a memfd".into()))?;
        let seals = memfd.seals().map_err(memfd_err("F_GET_SEALS"))?;
        if !SEALS.iter().all(|s| seals.contains(s)) {
            return Err(PoolMemoryError::Refused(
                "the pool memfd is not sealed against resizing".into(),
            ));
        }
        let file = memfd.as_file();
        let len = usize::try_from(file.metadata().map_err(io_err("fstat"))?.len())
            .map_err(|_| PoolMemoryError::Refused("the pool memfd is too large".into()))?;
        if len % HUGE_PAGE != 0 {
            return Err(PoolMemoryError::Refused(format!(
                "the pool memfd has {len} bytes, not a whole number of huge pages"
            )));
        }
        if len < bytes {
            return Err(PoolMemoryError::Refused(format!(
                "the pool memfd has {len} bytes, the pool needs {bytes}"
            )));
        }
        let hugetlb = is_hugetlb(file)?;
        let base = map_shared(file, len, !hugetlb).map_err(io_err("mmap"))?;
        let pages = pages_of(base, hugetlb);
        Ok(Self {
            memfd,
            base,
            len,
            pages,
        })
    }

    /// The start of the mapping: 2 MiB aligned, unless the aligned mapping
    /// failed (see `map_aligned`).
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Bytes mapped (the memfd's size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a pool has at least one frame. (Clippy asks for it next to `len`.)
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pages the pool got.
    pub fn pages(&self) -> Pages {
        self.pages
    }

    /// The memfd, to pass to another process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_file().as_fd()
    }
}

impl Drop for PoolMemory {
    fn drop(&mut self) {
        // SAFETY: `base..base + len` is exactly the mapping made by
        // `map_shared`, and nothing borrows from it past the pool's life.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

fn size_and_seal(memfd: &Memfd, len: usize) -> Result<(), PoolMemoryError> {
    memfd
        .as_file()
        .set_len(len as u64)
        .map_err(io_err("ftruncate"))?;
    memfd.add_seals(&SEALS).map_err(memfd_err("F_ADD_SEALS"))
}

fn is_hugetlb(file: &File) -> Result<bool, PoolMemoryError> {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `fs` is a writable statfs the call fills; the fd is open.
    if unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) } != 0 {
        return Err(io_err("fstatfs")(io::Error::last_os_error()));
    }
    // SAFETY: fstatfs returned 0, so it filled `fs`.
    let fs = unsafe { fs.assume_init() };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    Ok(fs.f_type as i64 == HUGETLBFS_MAGIC)
}

/// Maps `len` bytes of `file` shared and populates it. `transparent`: a shmem
/// file, mapped at a 2 MiB aligned address (the kernel backs a shmem range
/// with a huge page only where the virtual range is aligned too) and advised
/// to use transparent huge pages. A hugetlb file is mapped where the kernel
/// likes: it aligns hugetlb mappings itself.
///
/// Where the kernel picks the address, nothing can race: an earlier version
/// found an aligned hole, gave it back and mapped it with
/// MAP_FIXED_NOREPLACE, and failed with EEXIST when other threads kept
/// taking the hole (CI saw it).
fn map_shared(file: &File, len: usize, transparent: bool) -> io::Result<*mut u8> {
    let base = if transparent {
        map_aligned(file, len)?
    } else {
        map_file(file, len, std::ptr::null_mut(), 0)?
    };
    // SAFETY: advice and population on our own fresh mapping. Failing advice
    // only means smaller pages; a failing population is an error (hugetlb
    // pages run out, or the memory cgroup limit is reached), reported now
    // rather than as a SIGBUS in the packet path.
    unsafe {
        if transparent {
            libc::madvise(base.cast(), len, libc::MADV_HUGEPAGE);
        }
        if libc::madvise(base.cast(), len, libc::MADV_POPULATE_WRITE) != 0 {
            let error = io::Error::last_os_error();
            libc::munmap(base.cast(), len);
            return Err(error);
        }
    }
    Ok(base)
}

/// Maps a shmem file over an aligned reservation of exactly its length, which
/// MAP_FIXED replaces atomically. Should that fail, the range may already be
/// unmapped and taken by another thread, so it is left alone: `len` bytes of
/// address space leak, deliberately (PROT_NONE and NORESERVE: no memory),
/// and the file is mapped where the kernel likes, unaligned.
fn map_aligned(file: &File, len: usize) -> io::Result<*mut u8> {
    let reserved = reserve_aligned(len)?;
    map_file(file, len, reserved, libc::MAP_FIXED).or_else(|error| {
        log::warn!("frame pool memory: MAP_FIXED over its own reservation failed ({error}); mapped unaligned, with smaller pages");
        map_file(file, len, std::ptr::null_mut(), 0)
    })
}

/// One shared read-write mapping of `file`'s first `len` bytes; `at` and
/// `flags` as for mmap (null and 0: where the kernel likes).
fn map_file(file: &File, len: usize, at: *mut u8, flags: libc::c_int) -> io::Result<*mut u8> {
    // SAFETY: a new shared mapping of a file we hold open. `flags` is 0 or
    // MAP_FIXED at `at`, which the callers pass only over a reservation of
    // their own (`reserve_aligned`), which nothing else uses.
    let base = unsafe {
        libc::mmap(
            at.cast(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | flags,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(base.cast())
}

/// Reserves exactly `len` bytes of address space at a 2 MiB aligned address:
/// `len` plus a huge page is reserved, and the unaligned head and the tail
/// past `len` are given back.
fn reserve_aligned(len: usize) -> io::Result<*mut u8> {
    let reserve = len + HUGE_PAGE;
    // SAFETY: an inaccessible anonymous mapping at a kernel-chosen address;
    // it aliases nothing.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = reserve - head - len;
    // SAFETY: the head and the tail lie inside the reservation just made,
    // which nothing else knows of; page aligned, as mmap's start and a
    // multiple of HUGE_PAGE are.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    Ok(aligned as *mut u8)
}

/// The pages behind the mapping at `base` (of a hugetlb file, or not).
fn pages_of(base: *mut u8, hugetlb: bool) -> Pages {
    if hugetlb {
        Pages::Hugetlb
    } else if huge_mapped(base) {
        Pages::Transparent
    } else {
        Pages::Small
    }
}

/// Whether the kernel backs the mapping at `base` with huge pages
/// (`ShmemPmdMapped` in /proc/self/smaps).
fn huge_mapped(base: *mut u8) -> bool {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return false;
    };
    let header = format!("{:x}-", base as usize);
    smaps
        .lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(1)
        // Field lines start with a capitalised key, mapping headers with a
        // lowercase hex address.
        .take_while(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .filter_map(|l| l.strip_prefix("ShmemPmdMapped:"))
        .any(|v| v.trim().trim_end_matches("kB").trim() != "0")
}

/// The kernel's setting for transparent huge pages of shared memory, for
/// messages (`never` on Debian's default).
pub fn shmem_thp_setting() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .ok()
        .and_then(|s| {
            let start = s.find('[')? + 1;
            let end = start + s[start..].find(']')?;
            Some(s[start..end].to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hugetlb_pages_free() -> usize {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("HugePages_Free:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn write_and_read_through_two_mappings(memory: PoolMemory) {
        let len = memory.len();
        // SAFETY: both offsets lie in the mapping, which this test owns.
        unsafe {
            memory.base().write(0xa5);
            memory.base().add(len - 1).write(0x5a);
        }
        let fd = memory.fd().try_clone_to_owned().unwrap();
        let peer = PoolMemory::open(fd, len).unwrap();
        assert_eq!(peer.pages(), memory.pages());
        assert_eq!(peer.len(), len);
        assert_eq!(peer.base() as usize % HUGE_PAGE, 0);
        // SAFETY: as above, in the peer's mapping of the same memfd.
        unsafe {
            assert_eq!(peer.base().read(), 0xa5);
            assert_eq!(peer.base().add(len - 1).read(), 0x5a);
            peer.base().add(4096).write(7);
            assert_eq!(memory.base().add(4096).read(), 7);
        }
    }

    #[test]
    fn small_pages_are_shared_between_two_mappings() {
        let memory = PoolMemory::create(3 << 20, PageChoice::Small).unwrap();
        assert_eq!(memory.len(), 4 << 20);
        assert_eq!(memory.base() as usize % HUGE_PAGE, 0);
        write_and_read_through_two_mappings(memory);
    }

    #[test]
    fn auto_takes_what_the_machine_offers() {
        let memory = PoolMemory::create(1 << 20, PageChoice::Auto).unwrap();
        if hugetlb_pages_free() == 0 {
            assert_ne!(memory.pages(), Pages::Hugetlb);
        }
        if shmem_thp_setting() == "never" {
            assert_ne!(memory.pages(), Pages::Transparent);
        }
        write_and_read_through_two_mappings(memory);
    }

    #[test]
    fn hugetlb_when_pages_are_reserved() {
        // .ci/run reserves hugetlb pages; elsewhere this checks the refusal.
        match PoolMemory::create(2 << 20, PageChoice::Hugetlb) {
            Ok(memory) => {
                assert_eq!(memory.pages(), Pages::Hugetlb);
                write_and_read_through_two_mappings(memory);
            }
            Err(e) => {
                assert_eq!(hugetlb_pages_free(), 0, "{e}");
                assert!(e.to_string().contains("vm.nr_hugepages"), "{e}");
            }
        }
    }

    #[test]
    fn transparent_is_refused_when_the_kernel_says_never() {
        let result = PoolMemory::create(2 << 20, PageChoice::Transparent);
        match shmem_thp_setting().as_str() {
            "never" | "deny" => {
                let e = result.err().expect("4 KiB pages must be refused");
                assert!(e.to_string().contains("shmem_enabled is"), "{e}");
            }
            _ => assert_eq!(result.unwrap().pages(), Pages::Transparent),
        }
    }

    #[test]
    fn a_peer_fd_that_is_not_a_sealed_memfd_is_refused() {
        let file = File::open("/proc/self/exe").unwrap();
        let e = PoolMemory::open(file.into(), 4096).err().unwrap();
        assert!(e.to_string().contains("not a memfd"), "{e}");

        let unsealed = MemfdOptions::new().allow_sealing(true).create("t").unwrap();
        unsealed.as_file().set_len(4096).unwrap();
        let e = PoolMemory::open(unsealed.into_file().into(), 4096)
            .err()
            .unwrap();
        assert!(e.to_string().contains("not sealed"), "{e}");

        let memory = PoolMemory::create(4096, PageChoice::Small).unwrap();
        let fd = memory.fd().try_clone_to_owned().unwrap();
        let e = PoolMemory::open(fd, memory.len() + 1).err().unwrap();
        assert!(e.to_string().contains("the pool needs"), "{e}");
    }

    #[test]
    fn a_failing_hugetlb_mapping_never_unmaps_another_threads_memory() {
        use std::sync::atomic::{AtomicBool, Ordering};
        // More hugetlb pages than are free: every mapping attempt fails, the
        // way a daemon's does when another took the reserved pages first.
        let too_many = (hugetlb_pages_free() + 64) * HUGE_PAGE;
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Address space churn, as thread stacks and allocator arenas
            // make: mappings come and go at the top of the gap the pools are
            // placed in.
            s.spawn(|| {
                let zero = File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/zero")
                    .unwrap();
                while !done.load(Ordering::Relaxed) {
                    let churn = map_file(&zero, 6 << 20, std::ptr::null_mut(), 0).unwrap();
                    // SAFETY: the mapping just made, used by nothing.
                    unsafe { libc::munmap(churn.cast(), 6 << 20) };
                }
            });
            let mut workers = Vec::new();
            for _ in 0..2 {
                workers.push(s.spawn(|| {
                    for _ in 0..400 {
                        assert!(PoolMemory::create(too_many, PageChoice::Hugetlb).is_err());
                    }
                }));
            }
            for _ in 0..2 {
                workers.push(s.spawn(|| {
                    for _ in 0..400 {
                        let memory = PoolMemory::create(4 << 20, PageChoice::Small)
                            .expect("a failed mapping elsewhere must not take this one's range");
                        // Other threads map and unmap all the while: the
                        // pool still gets its alignment, and no error.
                        assert_eq!(memory.base() as usize % HUGE_PAGE, 0);
                        for offset in (0..memory.len()).step_by(4096) {
                            // SAFETY: every offset lies in this thread's own mapping.
                            unsafe { memory.base().add(offset).write(1) };
                        }
                    }
                }));
            }
            let outcomes: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
            done.store(true, Ordering::Relaxed);
            for outcome in outcomes {
                if let Err(panic) = outcome {
                    std::panic::resume_unwind(panic);
                }
            }
        });
    }
}
