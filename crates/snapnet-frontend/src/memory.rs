//! Guest memory: one memfd, mapped shared into this process, guest-physical 0..size.
//!
//! The backend maps the same memfd (it receives the fd with SET_MEM_TABLE), so every byte
//! here may be read or written by another process at any time. We therefore never create
//! long-lived Rust references into it: the rings use volatile/atomic accesses through raw
//! pointers, and packet buffers are only touched while the driver owns them (before they are
//! made available, or after the device returned them in the used ring).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr;

/// Page size used for rounding the memory size and for aligning ring areas.
pub const PAGE_SIZE: usize = 4096;
const HUGE_PAGE_SIZE: usize = 2 << 20;

/// A shared, memfd-backed guest memory region starting at guest-physical address 0.
#[derive(Debug)]
pub struct GuestMemory {
    fd: OwnedFd,
    base: *mut u8,
    size: usize,
    /// Bump allocator cursor (guest-physical), used while laying out rings and buffers.
    next: usize,
}

// SAFETY: `GuestMemory` owns its mapping exclusively (it unmaps it on drop); the raw pointer
// is only an address into that mapping, which is valid from any thread. All accesses through
// it are raw-pointer/volatile/atomic accesses whose ownership rules are enforced by the ring
// logic, not by thread identity.
unsafe impl Send for GuestMemory {}
// SAFETY: `&GuestMemory` only exposes reads of immutable fields and raw-pointer copies into
// the shared mapping, which is designed for concurrent access (another process writes it too).
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Creates and maps `size` bytes (rounded up to the page size) of zeroed shared memory.
    /// With `hugepages`, the memfd uses 2 MiB huge pages (needs reserved hugetlb pages).
    pub fn new(size: usize, hugepages: bool) -> io::Result<Self> {
        let page = if hugepages { HUGE_PAGE_SIZE } else { PAGE_SIZE };
        if size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "guest memory size is zero",
            ));
        }
        let size = size.div_ceil(page) * page;
        let huge = hugepages.then_some(memfd::HugetlbSize::Huge2MB);
        let fd: OwnedFd = memfd::MemfdOptions::new()
            .hugetlb(huge)
            .create("snapnet-guest")
            .map_err(io::Error::other)?
            .into_file()
            .into();
        // SAFETY: `fd` is a valid memfd owned by us.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: mapping a fresh shared memfd at an address chosen by the kernel cannot alias
        // any existing Rust object; the result is checked for MAP_FAILED below.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(GuestMemory {
            fd,
            base: base.cast(),
            size,
            // Keep guest page 0 unused so that GPA 0 never names a live buffer.
            next: PAGE_SIZE,
        })
    }

    /// Size of the region in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The memfd backing the region (sent to the backend with SET_MEM_TABLE).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Address of guest-physical 0 in this process.
    pub fn host_base(&self) -> *mut u8 {
        self.base
    }

    /// Frontend virtual address of `gpa` (what vhost-user SET_VRING_ADDR wants).
    pub fn host_addr(&self, gpa: u64) -> u64 {
        self.base as u64 + gpa
    }

    /// Bytes still free for [`GuestMemory::alloc`].
    pub fn remaining(&self) -> usize {
        self.size - self.next
    }

    /// Reserves `len` bytes aligned to `align` (a power of two); returns the guest-physical
    /// address, or `None` when the region is exhausted. Allocations are never freed.
    pub fn alloc(&mut self, len: usize, align: usize) -> Option<u64> {
        debug_assert!(align.is_power_of_two());
        let start = self.next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(len)?;
        if end > self.size {
            return None;
        }
        self.next = end;
        Some(start as u64)
    }

    /// Host pointer to `len` bytes at `gpa`, or `None` when the range is outside the region.
    pub fn host_ptr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        let start = usize::try_from(gpa).ok()?;
        let end = start.checked_add(len)?;
        if end > self.size {
            return None;
        }
        // SAFETY: `start + len <= size`, so the offset stays inside the mapping.
        Some(unsafe { self.base.add(start) })
    }

    /// Host pointers to the three parts `(gpa, len)` of a ring the driver is
    /// laying out, each zeroed; `None` when one lies outside the region.
    /// The device does not know the ring yet, so nobody else touches them.
    pub fn zeroed_ring_parts(&self, parts: [(u64, usize); 3]) -> Option<[*mut u8; 3]> {
        let mut out = [std::ptr::null_mut(); 3];
        for (slot, (gpa, len)) in out.iter_mut().zip(parts) {
            *slot = self.host_ptr(gpa, len)?;
        }
        for (p, (_, len)) in out.iter().zip(parts) {
            // SAFETY: `host_ptr` checked that `p..p+len` lies inside the mapping; the
            // device has not been told of the ring, so no one else accesses it.
            unsafe { std::ptr::write_bytes(*p, 0, len) };
        }
        Some(out)
    }

    /// Copies `bytes` into guest memory at `gpa`. Returns false when out of range.
    pub fn write(&self, gpa: u64, bytes: &[u8]) -> bool {
        match self.host_ptr(gpa, bytes.len()) {
            Some(dst) => {
                // SAFETY: `host_ptr` checked that `dst..dst+len` lies inside the mapping, and a
                // Rust slice cannot overlap the mmap'd region we never hand out references to.
                unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
                true
            }
            None => false,
        }
    }

    /// Copies guest memory at `gpa` into `buf`. Returns false when out of range.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match self.host_ptr(gpa, buf.len()) {
            Some(src) => {
                // SAFETY: `host_ptr` checked the source range; `buf` is a distinct Rust buffer.
                unsafe { ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
                true
            }
            None => false,
        }
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` describe the mapping created in `new`; every ring that caches
        // pointers into it holds an `Arc<GuestMemory>`, so nothing uses it after this.
        unsafe { libc::munmap(self.base.cast(), self.size) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_aligns_and_bounds() {
        let mut m = GuestMemory::new(3 * PAGE_SIZE, false).unwrap();
        assert_eq!(m.size(), 3 * PAGE_SIZE);
        let a = m.alloc(10, 16).unwrap();
        assert_eq!(a, PAGE_SIZE as u64);
        let b = m.alloc(10, 64).unwrap();
        assert_eq!(b % 64, 0);
        assert!(b >= a + 10);
        assert!(m.alloc(2 * PAGE_SIZE, 4096).is_none());
        assert!(m.write(b, b"hello"));
        let mut out = [0u8; 5];
        assert!(m.read(b, &mut out));
        assert_eq!(&out, b"hello");
        assert!(!m.write(3 * PAGE_SIZE as u64 - 2, b"abc"));
        assert!(m.host_ptr(u64::MAX, 1).is_none());
    }
}
