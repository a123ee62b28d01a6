//! The engine's side of an application's shared region
//! (`snapnet_pony::abi`): one memfd, mapped here and in the application.
//!
//! Everything the application writes is read once into a local copy and
//! checked before use: ring indices against the ring's size, offsets and
//! lengths against the part they name. The engine's own indices (command
//! head, completion tail) are kept here, never read back from shared memory.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};

use snapnet_pony::abi::{self, Command, Completion, Layout, ENTRY_LEN};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RegionError {
    /// The application moved its command tail out of range: it is detached.
    #[error("command tail {tail} is not within {entries} of the head {head}")]
    BadCommandTail { tail: u32, head: u32, entries: u32 },
}

pub struct SharedRegion {
    base: *mut u8,
    len: usize,
    layout: Layout,
    cmd_head: u32,
    cpl_tail: u32,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is used
// from one thread at a time (the engine's), and moving it between threads
// moves no thread-bound state.
unsafe impl Send for SharedRegion {}

impl SharedRegion {
    /// A new memfd of `layout`'s size with the header written, mapped here;
    /// also returns the memfd, for the application.
    pub fn create(layout: Layout) -> io::Result<(Self, OwnedFd)> {
        let len = usize::try_from(layout.total_len())
            .map_err(|_| io::Error::other("region larger than the address space"))?;
        // SAFETY: memfd_create with a valid NUL-terminated name; the result
        // is checked before use.
        let fd = unsafe { libc::memfd_create(c"snapnet-pony".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on our own memfd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: maps `len` bytes of the memfd we just sized; the result is
        // checked; the mapping is released in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let region = Self {
            base: base.cast(),
            len,
            layout,
            cmd_head: 0,
            cpl_tail: 0,
        };
        let mut header = [0u8; abi::HEADER_LEN];
        layout.encode_header(&mut header);
        region.copy_in(0, &header);
        Ok((region, fd))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        debug_assert!(at % 4 == 0 && at + 4 <= abi::HEADER_LEN);
        // SAFETY: `at` is one of abi's index offsets: 4-aligned (the mapping
        // is page-aligned) and inside the header page; the reference lives
        // no longer than `self`, which keeps the mapping.
        unsafe { &*(self.base.add(at) as *const AtomicU32) }
    }

    /// Copies `data` to byte `at` of the region (the caller checked the
    /// range against the part it writes).
    fn copy_in(&self, at: usize, data: &[u8]) {
        assert!(at
            .checked_add(data.len())
            .is_some_and(|end| end <= self.len));
        // SAFETY: the range is inside the mapping (asserted); the other
        // process may touch the same bytes, which only changes what it
        // reads there.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.base.add(at), data.len()) }
    }

    fn copy_out(&self, at: usize, out: &mut [u8]) {
        assert!(at.checked_add(out.len()).is_some_and(|end| end <= self.len));
        // SAFETY: as in `copy_in`; bytes the application changes meanwhile
        // are data, checked by whoever uses them.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(at), out.as_mut_ptr(), out.len()) }
    }

    /// Whether the application has added commands.
    pub fn commands_pending(&self) -> bool {
        self.word(abi::CMD_TAIL).load(Ordering::Acquire) != self.cmd_head
    }

    /// The next command, if any.
    pub fn take_command(&mut self) -> Result<Option<Command>, RegionError> {
        let tail = self.word(abi::CMD_TAIL).load(Ordering::Acquire);
        let head = self.cmd_head;
        if tail == head {
            return Ok(None);
        }
        let entries = self.layout.cmd_entries;
        if tail.wrapping_sub(head) > entries {
            return Err(RegionError::BadCommandTail {
                tail,
                head,
                entries,
            });
        }
        let slot = (head % entries) as usize;
        let mut entry = [0u8; ENTRY_LEN];
        self.copy_out(
            self.layout.cmd_offset as usize + slot * ENTRY_LEN,
            &mut entry,
        );
        self.cmd_head = head.wrapping_add(1);
        self.word(abi::CMD_HEAD)
            .store(self.cmd_head, Ordering::Release);
        Ok(Some(Command::decode(&entry)))
    }

    /// Adds a completion; `false` when the ring is full (or the
    /// application's head is nonsense, which the engine treats the same).
    pub fn push_completion(&mut self, c: &Completion) -> bool {
        let head = self.word(abi::CPL_HEAD).load(Ordering::Acquire);
        let entries = self.layout.cpl_entries;
        if self.cpl_tail.wrapping_sub(head) >= entries {
            return false;
        }
        let slot = (self.cpl_tail % entries) as usize;
        self.copy_in(
            self.layout.cpl_offset as usize + slot * ENTRY_LEN,
            &c.encode(),
        );
        self.cpl_tail = self.cpl_tail.wrapping_add(1);
        self.word(abi::CPL_TAIL)
            .store(self.cpl_tail, Ordering::Release);
        true
    }

    /// Whether the application sleeps on its completion eventfd (read
    /// after the completions were published).
    pub fn app_waiting(&self) -> bool {
        fence(Ordering::SeqCst);
        self.word(abi::APP_WAITING).load(Ordering::Acquire) != 0
    }

    /// Tells the application to write the command eventfd after adding
    /// commands (the engine is about to sleep), or not to.
    pub fn want_kicks(&self, on: bool) {
        self.word(abi::ENGINE_WANTS_KICK)
            .store(u32::from(on), Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Whether `[offset, offset + len)` lies inside the arena.
    pub fn arena_has(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.layout.arena_len)
    }

    /// Copies arena bytes out; `false` (nothing copied) outside the arena.
    pub fn arena_read(&self, offset: u64, out: &mut [u8]) -> bool {
        if !self.arena_has(offset, out.len() as u64) {
            return false;
        }
        self.copy_out((self.layout.arena_offset + offset) as usize, out);
        true
    }

    /// Copies bytes into the arena; `false` (nothing copied) outside it.
    pub fn arena_write(&self, offset: u64, data: &[u8]) -> bool {
        if !self.arena_has(offset, data.len() as u64) {
            return false;
        }
        self.copy_in((self.layout.arena_offset + offset) as usize, data);
        true
    }

    /// Copies bytes into the receive area; `false` outside it.
    pub fn rx_write(&self, offset: u64, data: &[u8]) -> bool {
        let fits = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= self.layout.rx_len);
        if fits {
            self.copy_in((self.layout.rx_offset + offset) as usize, data);
        }
        fits
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `create` made; nothing refers
        // to it after this (references from `word` borrow `self`).
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapnet_pony::abi::op;

    fn region() -> SharedRegion {
        SharedRegion::create(Layout::new(16, 16, 1 << 16, 1 << 16))
            .unwrap()
            .0
    }

    /// Plays the application: writes a command and moves the tail.
    fn app_push(r: &SharedRegion, index: u32, c: &Command) {
        let slot = (index % 16) as usize;
        r.copy_in(r.layout.cmd_offset as usize + slot * ENTRY_LEN, &c.encode());
        r.word(abi::CMD_TAIL)
            .store(index.wrapping_add(1), Ordering::Release);
    }

    #[test]
    fn commands_come_in_order_and_a_wild_tail_is_refused() {
        let mut r = region();
        assert_eq!(r.take_command(), Ok(None));
        for i in 0..3u32 {
            app_push(
                &r,
                i,
                &Command {
                    opcode: op::SEND,
                    user_data: u64::from(i),
                    ..Command::default()
                },
            );
        }
        for i in 0..3u32 {
            assert_eq!(r.take_command().unwrap().unwrap().user_data, u64::from(i));
        }
        assert_eq!(r.take_command(), Ok(None));
        r.word(abi::CMD_TAIL).store(1000, Ordering::Release);
        assert!(matches!(
            r.take_command(),
            Err(RegionError::BadCommandTail { .. })
        ));
    }

    #[test]
    fn completions_stop_when_the_ring_is_full() {
        let mut r = region();
        for _ in 0..16 {
            assert!(r.push_completion(&Completion::default()));
        }
        assert!(!r.push_completion(&Completion::default()));
        r.word(abi::CPL_HEAD).store(1, Ordering::Release);
        assert!(r.push_completion(&Completion::default()));
        // A head the application moved past the tail: treated as full.
        r.word(abi::CPL_HEAD).store(500, Ordering::Release);
        assert!(!r.push_completion(&Completion::default()));
    }

    #[test]
    fn arena_and_receive_area_are_bounds_checked() {
        let r = region();
        assert!(r.arena_write(10, b"abc"));
        let mut out = [0u8; 3];
        assert!(r.arena_read(10, &mut out));
        assert_eq!(&out, b"abc");
        assert!(!r.arena_write((1 << 16) - 2, b"abc"));
        assert!(!r.arena_read(u64::MAX - 1, &mut out));
        assert!(r.rx_write((1 << 16) - 3, b"abc"));
        assert!(!r.rx_write(1 << 16, b"a"));
    }
}
