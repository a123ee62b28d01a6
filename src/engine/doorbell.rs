//! A doorbell: an eventfd that is only written when its owner sleeps.
//!
//! The producer side costs one atomic load per batch while the consumer is
//! awake; the eventfd write (a syscall) happens only to wake a sleeper.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub struct Doorbell {
    fd: EventFd,
    flags: DoorbellFlags,
}

/// A doorbell's state apart from its eventfd. Placed in shared memory, it
/// lets two processes use one doorbell (the upgrade's bridge rings), each
/// with its own copy of the eventfd.
#[repr(C)]
#[derive(Default)]
pub struct DoorbellFlags {
    sleeping: AtomicBool,
    /// The eventfd may have been written since the last drain: `disarm`
    /// reads it only then, saving a syscall per wake-up for every doorbell
    /// of a sleeper that something else woke.
    rung: AtomicBool,
}

impl DoorbellFlags {
    /// Producer: call after publishing work.
    #[inline]
    pub fn ring(&self, fd: &EventFd) {
        // Pairs with the fence in `arm`: either the sleeper sees our work when
        // it re-checks, or we see it sleeping and write the eventfd.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) {
            self.rung.store(true, Ordering::Relaxed);
            let _ = fd.write(1);
        }
    }

    /// Consumer: about to sleep. Re-check for work after this returns.
    pub fn arm(&self) {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Consumer: awake again; drains a pending wake-up. A producer that
    /// saw us sleeping but marks `rung` only after this looked leaves the
    /// eventfd readable: the next sleep then returns at once and drains it,
    /// one spurious wake-up and never a lost one.
    pub fn disarm(&self, fd: &EventFd) {
        self.sleeping.store(false, Ordering::Relaxed);
        if self.rung.swap(false, Ordering::Relaxed) {
            let _ = fd.read();
        }
    }

    /// Wakes the consumer unconditionally (control-plane use).
    pub fn wake(&self, fd: &EventFd) {
        self.rung.store(true, Ordering::Relaxed);
        let _ = fd.write(1);
    }
}

impl Doorbell {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            fd: EventFd::new(EFD_NONBLOCK)?,
            flags: DoorbellFlags::default(),
        })
    }

    /// Producer: call after publishing work.
    #[inline]
    pub fn ring(&self) {
        self.flags.ring(&self.fd);
    }

    /// Consumer: about to sleep. Re-check for work after this returns.
    pub fn arm(&self) {
        self.flags.arm();
    }

    /// Consumer: awake again; drains a pending wake-up.
    pub fn disarm(&self) {
        self.flags.disarm(&self.fd);
    }

    /// Wakes the consumer unconditionally (control-plane use).
    pub fn wake(&self) {
        self.flags.wake(&self.fd);
    }
}

impl AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
