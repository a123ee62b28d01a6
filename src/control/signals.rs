//! SIGINT/SIGTERM (stop) and SIGUSR1 (print counters), taken synchronously by
//! the main thread with sigwait: the signals are blocked before any other
//! thread starts, so no handler runs in an arbitrary thread.

use std::io;
use std::time::{Duration, Instant};

pub enum Signal {
    Stop,
    Report,
}

pub struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    /// Blocks the signals in this thread and in every thread it starts later.
    pub fn block() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset before use;
        // pthread_sigmask only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
                libc::sigaddset(&mut set, s);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self { set })
        }
    }

    /// Waits for the next signal, or `timeout` (then None).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Signal> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `set` was initialised in `block`; a null siginfo
            // pointer is allowed; `ts` is a valid timespec.
            let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
            if sig < 0 {
                // EAGAIN: the time is up; EINTR: another signal, wait on.
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return None;
            }
            return Some(match sig {
                libc::SIGUSR1 => Signal::Report,
                _ => Signal::Stop,
            });
        }
    }
}
