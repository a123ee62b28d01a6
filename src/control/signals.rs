//! SIGINT/SIGTERM (stop) and SIGUSR1 (print counters), taken synchronously by
//! the main thread with sigwait: the signals are blocked before any other
//! thread starts, so no handler runs in an arbitrary thread.

use std::io;

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

    /// Waits for the next signal.
    pub fn wait(&self) -> Signal {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` was initialised in `block`; `sig` is a valid out pointer.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            if rc != 0 {
                continue;
            }
            return match sig {
                libc::SIGUSR1 => Signal::Report,
                _ => Signal::Stop,
            };
        }
    }
}
