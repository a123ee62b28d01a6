//! Serving one vNIC's vhost-user socket, as server or as client, one frontend
//! connection after another.
//!
//! Each connection gets a fresh `VhostUserDaemon` (fresh vrings and feature
//! state), so nothing of a previous guest leaks into the next; the device is
//! reset when a connection ends.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::device::{EngineSink, VnicDevice};

/// Which end of the vhost-user socket snapnet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SocketRole {
    /// snapnet listens; QEMU connects (`-chardev socket,path=…,reconnect=1`).
    #[default]
    Server,
    /// QEMU listens (`server=on`); snapnet connects and reconnects.
    Client,
}

#[derive(Debug, Error)]
pub enum ConnectionError {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot start connection thread: {0}")]
    Spawn(std::io::Error),
}

/// How long a client waits before connecting again.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Tells the connection thread to stop, and wakes it from any wait at once
/// (`vnic.remove` used to take up to a poll interval per vNIC).
struct StopSignal {
    raised: AtomicBool,
    wake: EventFd,
}

impl StopSignal {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            raised: AtomicBool::new(false),
            wake: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        // A full counter still wakes the waiter; nothing else can fail here.
        let _ = self.wake.write(1);
    }

    fn raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Waits until `fd` is readable (true), or the signal is raised or
    /// `timeout` passes (false). Without `fd`, just a sleep the signal ends.
    fn wait(&self, fd: Option<i32>, timeout: Duration) -> bool {
        let mut pfds = [
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(-1);
        // SAFETY: two valid pollfds on the stack (poll ignores a negative fd);
        // a negative timeout waits without limit.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        n > 0 && !self.raised() && pfds[1].revents & libc::POLLIN != 0
    }
}

type Device = Arc<VnicDevice<EngineSink>>;

/// The thread serving one vNIC socket.
pub struct Connection {
    stop: Arc<StopSignal>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    thread: Option<JoinHandle<()>>,
}

impl Connection {
    pub fn spawn(device: Device, path: &Path, role: SocketRole) -> Result<Self, ConnectionError> {
        let stop = Arc::new(StopSignal::new().map_err(ConnectionError::Spawn)?);
        let current = Arc::new(Mutex::new(None));
        let (s, c) = (stop.clone(), current.clone());
        let name = format!("vhost-{}", device.name());
        let thread = match role {
            SocketRole::Server => {
                let listener =
                    Listener::new(path, true).map_err(|source| ConnectionError::Listen {
                        path: path.to_path_buf(),
                        source,
                    })?;
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || serve_as_server(device, listener, s, c))
            }
            SocketRole::Client => {
                let path = path.to_path_buf();
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || serve_as_client(device, path, s, c))
            }
        }
        .map_err(ConnectionError::Spawn)?;
        Ok(Self {
            stop,
            current,
            thread: Some(thread),
        })
    }

    /// Disconnects the frontend (it sees the socket close) and stops serving;
    /// a server socket file is removed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.raise();
        if let Some(h) = lock(&self.current).as_ref() {
            h.shutdown();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn new_daemon(device: &Device) -> Option<VhostUserDaemon<Device>> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    match VhostUserDaemon::new(device.name().to_string(), device.clone(), mem) {
        Ok(d) => Some(d),
        Err(e) => {
            log::error!("{}: cannot create vhost-user handler: {e}", device.name());
            None
        }
    }
}

/// Runs one connection to its end, then resets the device.
fn run_connection(
    device: &Device,
    mut daemon: VhostUserDaemon<Device>,
    current: &Mutex<Option<ShutdownHandle>>,
    stop: &StopSignal,
) {
    *lock(current) = daemon.shutdown_handle();
    if stop.raised() {
        daemon.request_shutdown();
    }
    log::info!("{}: frontend connected", device.name());
    match daemon.wait() {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => log::info!("{}: frontend disconnected", device.name()),
        Err(e) => log::warn!("{}: connection ended: {e}", device.name()),
    }
    *lock(current) = None;
    device.disconnected();
    // Dropping the daemon joins its vring worker thread.
    drop(daemon);
}

fn serve_as_server(
    device: Device,
    mut listener: Listener,
    stop: Arc<StopSignal>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
) {
    while !stop.raised() {
        if !stop.wait(Some(listener.as_raw_fd()), Duration::MAX) {
            continue;
        }
        let Some(mut daemon) = new_daemon(&device) else {
            stop.wait(None, RETRY_INTERVAL);
            continue;
        };
        match daemon.start(&mut listener) {
            Ok(()) => run_connection(&device, daemon, &current, &stop),
            Err(e) => log::warn!("{}: accept failed: {e}", device.name()),
        }
    }
    // Dropping the listener removes the socket file.
}

fn serve_as_client(
    device: Device,
    path: PathBuf,
    stop: Arc<StopSignal>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
) {
    let path_str = path.to_string_lossy().into_owned();
    let mut waiting_logged = false;
    let mut daemon = None;
    while !stop.raised() {
        if daemon.is_none() {
            daemon = new_daemon(&device);
        }
        let Some(d) = daemon.as_mut() else {
            stop.wait(None, RETRY_INTERVAL);
            continue;
        };
        match d.start_client(&path_str) {
            Ok(()) => {
                waiting_logged = false;
                let d = daemon.take().expect("present");
                run_connection(&device, d, &current, &stop);
            }
            Err(e) => {
                if !waiting_logged {
                    log::info!("{}: waiting for frontend at {path_str}: {e}", device.name());
                    waiting_logged = true;
                }
                stop.wait(None, RETRY_INTERVAL);
            }
        }
    }
}
