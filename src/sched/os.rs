//! The system calls the engine groups' threads make: an epoll set to sleep
//! on, polling one fd, yielding, pinning to a CPU, and reading a thread's
//! CPU time.

use std::os::fd::RawFd;
use std::time::Duration;

/// An epoll set kept equal to the files a worker sleeps on.
pub(super) struct Poller {
    epfd: RawFd,
    registered: Vec<RawFd>,
    /// The engines' `wake_epoch`s (summed) when the set was built; `None`
    /// forces a rebuild.
    epoch: Option<u64>,
    events: Vec<epoll::Event>,
}

impl Poller {
    pub(super) fn new() -> Option<Self> {
        match epoll::create(true) {
            Ok(epfd) => Some(Self {
                epfd,
                registered: Vec::new(),
                epoch: None,
                events: vec![epoll::Event::new(epoll::Events::empty(), 0); 16],
            }),
            Err(e) => {
                log::warn!("epoll unavailable ({e}): engines will busy-poll");
                None
            }
        }
    }

    /// The engines changed: rebuild the set before the next wait.
    pub(super) fn forget(&mut self) {
        self.epoch = None;
    }

    pub(super) fn wait(&mut self, fds: &[RawFd], epoch: u64, timeout_ms: i32) {
        if self.epoch != Some(epoch) || self.registered != fds {
            self.rebuild(fds);
            self.epoch = Some(epoch);
        }
        let _ = epoll::wait(self.epfd, timeout_ms, &mut self.events);
    }

    /// A fresh epoll instance over `fds`. Deleting entries one by one is not
    /// enough: an entry belongs to the open file, not the number, so one
    /// whose fd was closed while another process (the frontend) still holds
    /// the file stays in the set under a number that may mean something
    /// else now, and cannot be deleted by that number.
    fn rebuild(&mut self, fds: &[RawFd]) {
        match epoll::create(true) {
            Ok(epfd) => {
                // SAFETY: the old epfd is this poller's own and is replaced
                // here, so it is closed exactly once.
                unsafe { libc::close(self.epfd) };
                self.epfd = epfd;
            }
            Err(e) => {
                // Keep the old set and re-add: better than no set at all.
                log::warn!("cannot rebuild the epoll set: {e}");
                for &fd in &self.registered {
                    let _ = epoll::ctl(
                        self.epfd,
                        epoll::ControlOptions::EPOLL_CTL_DEL,
                        fd,
                        epoll::Event::new(epoll::Events::empty(), 0),
                    );
                }
            }
        }
        self.registered.clear();
        for &fd in fds {
            let ev = epoll::Event::new(epoll::Events::EPOLLIN, fd as u64);
            if let Err(e) = epoll::ctl(self.epfd, epoll::ControlOptions::EPOLL_CTL_ADD, fd, ev) {
                log::warn!("cannot watch wake-up fd {fd}: {e}");
            }
        }
        // Compared as given, so an fd that could not be added is not retried
        // at every sleep.
        self.registered.extend_from_slice(fds);
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: epfd is the epoll fd this poller created and owns.
        unsafe { libc::close(self.epfd) };
    }
}

/// CPU time of a thread of this process, from its schedstat (nanoseconds on
/// CPU is the first field).
pub(super) fn thread_cpu_seconds(tid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9)
}

/// CPUs a thread can be pinned to: the ids a `cpu_set_t` holds (glibc's
/// fixed 1024-bit set, which `sched_setaffinity` is given here).
pub const MAX_CPUS: usize = libc::CPU_SETSIZE as usize;

/// Blocks until `fd` is readable or `timeout` passes.
pub(super) fn wait_readable(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; the fd is the
    // worker's own doorbell, open as long as the worker.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
}

/// Offers the CPU to another thread that waits for it.
pub(super) fn yield_cpu() {
    // SAFETY: sched_yield takes no arguments and touches no memory of ours.
    unsafe { libc::sched_yield() };
}

/// Pins the calling thread to `cpu`. An id beyond [`MAX_CPUS`] is an error,
/// not an index past the set (libc's `CPU_SET` panics on one).
pub(super) fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is not below {MAX_CPUS}, the CPUs a cpu_set_t holds"),
        ));
    }
    // SAFETY: `cpu_set_t` is plain data, so zeroed is a valid empty set;
    // CPU_SET writes inside it (cpu < CPU_SETSIZE, checked above), and
    // sched_setaffinity reads exactly size_of::<cpu_set_t>() bytes of it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
