//! What systemd hands a service and expects back: the control socket passed
//! by socket activation (`LISTEN_FDS`), and the `Type=notify` messages after
//! start (`READY=1`, `STATUS=`, `WATCHDOG=1`). Without systemd (no
//! `LISTEN_PID`/`NOTIFY_SOCKET` in the environment) all of it does nothing.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sd_notify::NotifyState;

/// How often `STATUS=` is refreshed when no watchdog asks for more.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}")]
    Environment(io::Error),
    #[error("socket activation passed {0} sockets; snapnet takes one, the control socket (a unix stream socket)")]
    Count(usize),
    #[error("socket activation: fd {fd} is not a listening unix stream socket ({why})")]
    NotUnixStream { fd: RawFd, why: String },
}

/// The control socket systemd passed (a `.socket` unit with
/// `ListenStream=/path`), if it passed one to this process.
pub fn activated_control_socket() -> Result<Option<UnixListener>, ActivationError> {
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(ActivationError::Environment)?
        .collect();
    match fds.as_slice() {
        [] => Ok(None),
        [fd] => {
            check_unix_stream_listener(*fd)
                .map_err(|why| ActivationError::NotUnixStream { fd: *fd, why })?;
            // SAFETY: systemd passed this fd to this process (LISTEN_PID is
            // ours) for it alone; it is a listening unix stream socket
            // (checked above) and nothing else in the process owns it.
            Ok(Some(unsafe { UnixListener::from_raw_fd(*fd) }))
        }
        more => Err(ActivationError::Count(more.len())),
    }
}

fn check_unix_stream_listener(fd: RawFd) -> Result<(), String> {
    let int_opt = |opt: libc::c_int| -> Result<libc::c_int, String> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid out pointers sized for an int
        // option; getsockopt fails cleanly on an fd that is not a socket.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error().to_string());
        }
        Ok(value)
    };
    if int_opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err("not a unix socket".into());
    }
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err("not a stream socket".into());
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err("not listening".into());
    }
    Ok(())
}

/// Tells systemd the daemon is up (a no-op without `NOTIFY_SOCKET`).
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]) {
        log::warn!("sd_notify READY failed: {e}");
    }
}

/// The main loop's heartbeat: how long it may wait for a signal before it
/// must report again, and what it reports.
pub struct Heartbeat {
    interval: Duration,
    watchdog: bool,
}

impl Heartbeat {
    /// Half of `WatchdogSec=` when systemd watches this process (as
    /// sd_watchdog_enabled(3) advises), else the status interval. An
    /// upgrade's successor (`taken_over`) inherits its predecessor's
    /// `WATCHDOG_PID`, which names the predecessor: the watchdog is this
    /// process's now (it sent `MAINPID=`).
    pub fn from_env(taken_over: bool) -> Self {
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&u| u > 0);
        let for_this_process = taken_over || sd_notify::watchdog_enabled().is_some();
        match usec.filter(|_| for_this_process).map(Duration::from_micros) {
            Some(timeout) => Self {
                interval: (timeout / 2).clamp(Duration::from_millis(1), STATUS_INTERVAL),
                watchdog: true,
            },
            None => Self {
                interval: STATUS_INTERVAL,
                watchdog: false,
            },
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Reports the daemon alive with `status`: the caller got here only if
    /// the main loop runs and the daemon answered it.
    pub fn beat(&self, status: &str) {
        let result = if self.watchdog {
            sd_notify::notify(&[NotifyState::Watchdog, NotifyState::Status(status)])
        } else {
            sd_notify::notify(&[NotifyState::Status(status)])
        };
        if let Err(e) = result {
            log::debug!("sd_notify failed: {e}");
        }
    }
}
