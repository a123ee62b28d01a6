//! The shared region as this process maps it, with the only accesses that
//! are sound while the other process writes the same memory: atomic loads
//! and stores of the header's `u32` words, and byte copies through raw
//! pointers (never a Rust reference to the bytes).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicU32;

/// A `MAP_SHARED` read/write mapping, unmapped on drop.
#[derive(Debug)]
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value alone (no
// thread-local state); moving it to another thread is fine. It is not
// `Sync`: the client is single-threaded.
unsafe impl Send for Region {}

impl Region {
    /// Maps the first `len` bytes of `fd` shared and read/write. The caller
    /// checks that the file is at least `len` bytes (touching a page beyond
    /// its end raises SIGBUS).
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh mapping chosen by the kernel (no address hint, no
        // MAP_FIXED) cannot alias any memory Rust already uses; the result is
        // checked before use.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::from(io::ErrorKind::Other))?;
        Ok(Self { ptr, len })
    }

    /// The `u32` word at `offset` (one of the header's index and flag
    /// words), for atomic access shared with the other process.
    ///
    /// # Panics
    ///
    /// When `offset` is misaligned or the word is not inside the mapping.
    pub(crate) fn word(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset % 4 == 0 && offset.checked_add(4).is_some_and(|e| e <= self.len),
            "word {offset} outside a region of {}",
            self.len
        );
        // SAFETY: the word is 4-byte aligned (the mapping is page-aligned and
        // `offset` a multiple of 4) and inside the mapping (asserted), which
        // stays mapped as long as `self`, and so as long as the returned
        // reference. `AtomicU32` has interior mutability, so the other
        // process's atomic writes to the word do not violate the shared
        // reference; both sides only ever access it atomically.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// Copies `src` into the region at `offset`.
    ///
    /// # Panics
    ///
    /// When the range is not inside the mapping.
    pub(crate) fn copy_in(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: the destination range is inside the mapping (checked
        // above), which lives as long as `self`; `src` is ordinary process
        // memory, so the ranges cannot overlap. Raw pointer copies create no
        // reference into the shared memory the other process may write.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(offset), src.len());
        }
    }

    /// Copies the region's bytes at `offset` into `dst`.
    ///
    /// # Panics
    ///
    /// When the range is not inside the mapping.
    pub(crate) fn copy_out(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: the source range is inside the mapping (checked above),
        // which lives as long as `self`; `dst` is ordinary process memory
        // borrowed mutably, so the ranges cannot overlap. Raw pointer copies
        // create no reference into the shared memory the other process may
        // write.
        unsafe {
            ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), dst.as_mut_ptr(), dst.len());
        }
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "range {offset}+{len} outside a region of {}",
            self.len
        );
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping `map` created, and
        // every reference handed out borrows `self`, so none outlives it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
