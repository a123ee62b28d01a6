//! A one-shot, non-blocking timer fd: readable once it expires, so an
//! engine's wake-up set can include "a bucket has refilled".

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

pub struct WakeTimer {
    fd: OwnedFd,
    /// When the armed timer expires; its expiry is read (cleared) only after
    /// that, so a polling engine makes no syscall while it waits.
    deadline: Option<Instant>,
}

impl WakeTimer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain timerfd_create; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, deadline: None })
    }

    /// Fires once after `after` (at least 1 µs). Re-arming replaces the
    /// earlier expiry.
    pub fn arm(&mut self, after: Duration) {
        let after = after.max(Duration::from_micros(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not wanted.
        unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        self.deadline = Some(Instant::now() + after);
    }

    /// Arms the timer for `until` unless it already fires by then, and
    /// consumes a due expiry. Called when the engine is about to sleep, never
    /// per poll: a polling engine needs no timer, and a throttled sender
    /// polled in a busy loop would otherwise cost its worker a syscall (and,
    /// in a VM, a timer reprogramming exit) every round.
    pub fn follow(&mut self, until: Option<Instant>) {
        let Some(until) = until else {
            return;
        };
        let now = Instant::now();
        self.clear(now);
        let fires_in_time = self.deadline.is_some_and(|d| now < d && d <= until);
        if now < until && !fires_in_time {
            self.arm(until - now);
        }
    }

    /// Consumes an expiry that is due; no clock read unless armed.
    #[inline]
    pub fn clear_due(&mut self) {
        if self.deadline.is_some() {
            self.clear(Instant::now());
        }
    }

    /// Whether an expiry is set and not yet consumed.
    pub fn is_armed(&self) -> bool {
        self.deadline.is_some()
    }

    /// Consumes an expiry once it is due, so the fd stops being readable.
    #[inline]
    pub fn clear(&mut self, now: Instant) {
        match self.deadline {
            Some(d) if now >= d => {
                let mut buf = [0u8; 8];
                // SAFETY: reads at most 8 bytes into `buf`; non-blocking.
                let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
                if n == 8 {
                    self.deadline = None;
                }
            }
            _ => {}
        }
    }
}

impl AsRawFd for WakeTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
