//! Serving one vNIC's vhost-user socket, as server or as client, one frontend
//! connection after another.
//!
//! Each connection gets a fresh `VhostUserDaemon` (fresh vrings and feature
//! state), so nothing of a previous guest leaks into the next; the device is
//! reset when a connection ends.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::{PauseHandle, PausedConnection, ShutdownHandle, VhostUserDaemon};
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
    #[error("the vhost-user handler did not pause within {0:?}")]
    PauseTimeout(Duration),
    #[error("a hand-over of this connection is already under way")]
    HandoverUnderWay,
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

    /// Wakes the thread from any wait without stopping it (it then looks
    /// at its hand-over slot).
    fn nudge(&self) {
        let _ = self.wake.write(1);
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
        if pfds[0].revents & libc::POLLIN != 0 && !self.raised() {
            // A nudge: drained, so the next wait waits again.
            let _ = self.wake.read();
        }
        n > 0 && !self.raised() && pfds[1].revents & libc::POLLIN != 0
    }
}

type Device = Arc<VnicDevice<EngineSink>>;

/// The handles of the connection being served: to shut it down, to pause it.
type Running = (ShutdownHandle, Option<PauseHandle>);

/// A vhost-user handler stopped between two messages for a hand-over to
/// another process (docs/upgrade.md), with its connection still open.
pub struct PausedHandler {
    pub daemon: VhostUserDaemon<Device>,
    pub connection: PausedConnection,
}

/// Where a connection thread and an upgrade meet.
enum Slot {
    Serving,
    /// An upgrade asked the thread to stop serving.
    Requested,
    /// The thread stopped; the handler (none while no frontend was
    /// connected) is for the upgrade to take.
    Parked(Option<PausedHandler>),
    /// The upgrade has the handler.
    Taken,
    /// Rolled back: the thread goes on with this handler.
    Resume(Option<PausedHandler>),
    /// The new process serves the vNIC now: the thread ends, leaving the
    /// socket, its file and the connection alone.
    Released,
}

struct Handover {
    slot: Mutex<Slot>,
    changed: Condvar,
}

/// What the thread does after a hand-over request.
enum AfterPause {
    Resume(Option<PausedHandler>),
    Released,
}

impl Handover {
    fn requested(&self) -> bool {
        matches!(*lock(&self.slot), Slot::Requested)
    }

    /// The thread's side: offers `handler` if a hand-over was asked for and
    /// waits for its outcome; without a request (it was given up on) goes
    /// on at once.
    fn park(&self, handler: Option<PausedHandler>) -> AfterPause {
        let mut slot = lock(&self.slot);
        if !matches!(*slot, Slot::Requested) {
            return AfterPause::Resume(handler);
        }
        *slot = Slot::Parked(handler);
        self.changed.notify_all();
        loop {
            match std::mem::replace(&mut *slot, Slot::Serving) {
                Slot::Resume(h) => return AfterPause::Resume(h),
                Slot::Released => {
                    *slot = Slot::Released;
                    return AfterPause::Released;
                }
                other => *slot = other,
            }
            slot = self.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The thread serving one vNIC socket.
pub struct Connection {
    stop: Arc<StopSignal>,
    current: Arc<Mutex<Option<Running>>>,
    handover: Arc<Handover>,
    /// The listening socket (server role), for the process that takes over.
    listener: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Connection {
    /// Serves `path`: listens there (server role; with `group`, the socket
    /// is that group's to connect to, mode 0660) or connects to it.
    pub fn spawn(
        device: Device,
        path: &Path,
        role: SocketRole,
        group: Option<u32>,
    ) -> Result<Self, ConnectionError> {
        let listener = match role {
            SocketRole::Server => {
                let _ = std::fs::remove_file(path);
                let listen_error = |e| ConnectionError::Listen {
                    path: path.to_path_buf(),
                    source: vhost::vhost_user::Error::SocketError(e),
                };
                let bound = UnixListener::bind(path).map_err(listen_error)?;
                // Until this is done the socket is root's alone (the
                // process's umask): nothing is ever looser than asked.
                if let Some(gid) = group {
                    std::os::unix::fs::chown(path, None, Some(gid))
                        .and_then(|()| {
                            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                        })
                        .map_err(|e| {
                            let _ = std::fs::remove_file(path);
                            listen_error(e)
                        })?;
                }
                Some(bound)
            }
            SocketRole::Client => None,
        };
        let bound = listener.is_some();
        Self::serve(device, path, listener, None).inspect_err(|_| {
            if bound {
                let _ = std::fs::remove_file(path);
            }
        })
    }

    /// Goes on serving a vNIC another process served until now: `listener`
    /// is its listening socket (server role), `handler` the replayed
    /// connection to its frontend, if one was connected (docs/upgrade.md).
    pub fn adopt(
        device: Device,
        path: &Path,
        listener: Option<OwnedFd>,
        handler: Option<PausedHandler>,
    ) -> Result<Self, ConnectionError> {
        Self::serve(device, path, listener.map(UnixListener::from), handler)
    }

    fn serve(
        device: Device,
        path: &Path,
        listener: Option<UnixListener>,
        handler: Option<PausedHandler>,
    ) -> Result<Self, ConnectionError> {
        let stop = Arc::new(StopSignal::new().map_err(ConnectionError::Spawn)?);
        let current = Arc::new(Mutex::new(None));
        let handover = Arc::new(Handover {
            slot: Mutex::new(Slot::Serving),
            changed: Condvar::new(),
        });
        let listener_copy = listener
            .as_ref()
            .map(|l| {
                l.try_clone()
                    .map(OwnedFd::from)
                    .map_err(ConnectionError::Spawn)
            })
            .transpose()?;
        let ctx = ThreadContext {
            device,
            path: path.to_path_buf(),
            stop: stop.clone(),
            current: current.clone(),
            handover: handover.clone(),
        };
        let name = format!("vhost-{}", ctx.device.name());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || match listener {
                Some(l) => ctx.serve_as_server(Listener::from(l), handler),
                None => ctx.serve_as_client(handler),
            })
            .map_err(ConnectionError::Spawn)?;
        Ok(Self {
            stop,
            current,
            handover,
            listener: listener_copy,
            thread: Some(thread),
        })
    }

    /// Disconnects the frontend (it sees the socket close) and stops serving;
    /// a server socket file is removed.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// The listening socket, to pass to the process that takes over.
    pub fn listener(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.listener.as_ref().map(|l| l.as_fd())
    }

    /// Stops serving between two vhost-user messages for a hand-over, and
    /// returns the paused handler (`None`: no frontend is connected). A
    /// message the frontend sends from now on waits in the socket. Give the
    /// handler back with [`Self::resume`] (rollback), or end with
    /// [`Self::release`] once the new process serves the vNIC.
    pub fn pause(&self, timeout: Duration) -> Result<Option<PausedHandler>, ConnectionError> {
        {
            let mut slot = lock(&self.handover.slot);
            match std::mem::replace(&mut *slot, Slot::Requested) {
                Slot::Serving => {}
                // Resumed a moment ago (an upgrade's preview), and the
                // thread, still parked, has not gone on yet: the handler
                // is ours again as it was.
                Slot::Resume(handler) => {
                    *slot = Slot::Taken;
                    return Ok(handler);
                }
                other => {
                    *slot = other;
                    return Err(ConnectionError::HandoverUnderWay);
                }
            }
        }
        if let Some((_, Some(pause))) = lock(&self.current).as_ref() {
            pause.pause();
        }
        self.stop.nudge();
        let deadline = Instant::now() + timeout;
        let mut slot = lock(&self.handover.slot);
        loop {
            if let Slot::Parked(_) = *slot {
                let Slot::Parked(handler) = std::mem::replace(&mut *slot, Slot::Taken) else {
                    unreachable!("matched just above");
                };
                return Ok(handler);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Given up: a thread that parks later goes on at once.
                if matches!(*slot, Slot::Requested) {
                    *slot = Slot::Serving;
                }
                return Err(ConnectionError::PauseTimeout(timeout));
            }
            slot = self
                .handover
                .changed
                .wait_timeout(slot, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A hand-over was rolled back: serving goes on with `handler` (what
    /// [`Self::pause`] returned).
    pub fn resume(&self, handler: Option<PausedHandler>) {
        *lock(&self.handover.slot) = Slot::Resume(handler);
        self.handover.changed.notify_all();
    }

    /// The new process serves the vNIC: the thread ends without closing or
    /// removing anything the frontend uses (the process's copies of the fds
    /// are closed, never shut down).
    pub fn release(mut self) {
        {
            let mut slot = lock(&self.handover.slot);
            if !matches!(*slot, Slot::Taken | Slot::Parked(_)) {
                // Nothing was handed over: an ordinary stop.
                log::error!("release without a paused connection: stopping it instead");
                drop(slot);
                self.shutdown();
                return;
            }
            *slot = Slot::Released;
            self.handover.changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn shutdown(&mut self) {
        self.stop.raise();
        if let Some((h, _)) = lock(&self.current).as_ref() {
            h.shutdown();
        }
        // A thread parked (or about to park) for a hand-over that will not
        // come goes on to stop. Once the upgrade has taken the handler, its
        // fds may be the new process's: the thread ends touching nothing.
        {
            let mut slot = lock(&self.handover.slot);
            match *slot {
                Slot::Requested | Slot::Parked(_) => *slot = Slot::Resume(None),
                Slot::Taken => *slot = Slot::Released,
                _ => {}
            }
            self.handover.changed.notify_all();
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

/// What a connection thread works with.
struct ThreadContext {
    device: Device,
    path: PathBuf,
    stop: Arc<StopSignal>,
    current: Arc<Mutex<Option<Running>>>,
    handover: Arc<Handover>,
}

/// How a connection's request loop ended.
enum Ended {
    /// The frontend went away, or the connection was shut down.
    Closed,
    /// Paused for a hand-over; the thread has been told what next.
    Released,
}

impl ThreadContext {
    fn new_daemon(&self) -> Option<VhostUserDaemon<Device>> {
        new_handler(&self.device)
            .inspect_err(|e| {
                log::error!(
                    "{}: cannot create vhost-user handler: {e}",
                    self.device.name()
                )
            })
            .ok()
    }

    /// Runs one connection until it ends or the vNIC is handed over; a
    /// hand-over that is rolled back goes on with the same connection.
    fn run_connection(&self, mut daemon: VhostUserDaemon<Device>) -> Ended {
        let name = self.device.name();
        log::info!("{name}: frontend connected");
        loop {
            *lock(&self.current) = daemon.shutdown_handle().map(|h| (h, daemon.pause_handle()));
            if self.stop.raised() {
                daemon.request_shutdown();
            } else if self.handover.requested() {
                if let Some(p) = daemon.pause_handle() {
                    p.pause();
                }
            }
            let result = daemon.wait();
            *lock(&self.current) = None;
            match result {
                Err(vhost_user_backend::Error::Paused) => {
                    let Some(connection) = daemon.take_paused() else {
                        log::warn!("{name}: paused without a connection");
                        break;
                    };
                    let parked = PausedHandler { daemon, connection };
                    match self.handover.park(Some(parked)) {
                        AfterPause::Released => return Ended::Released,
                        // The upgrade kept the handler (it was stopping).
                        AfterPause::Resume(None) => {
                            self.device.disconnected();
                            return Ended::Closed;
                        }
                        AfterPause::Resume(Some(h)) => {
                            daemon = h.daemon;
                            if let Err(e) = daemon.resume(h.connection) {
                                log::warn!("{name}: cannot resume after a hand-over: {e}");
                                break;
                            }
                            log::info!("{name}: hand-over rolled back, serving again");
                        }
                    }
                }
                Ok(())
                | Err(vhost_user_backend::Error::HandleRequest(
                    vhost::vhost_user::Error::Disconnected
                    | vhost::vhost_user::Error::PartialMessage,
                )) => {
                    log::info!("{name}: frontend disconnected");
                    break;
                }
                Err(e) => {
                    log::warn!("{name}: connection ended: {e}");
                    break;
                }
            }
        }
        self.device.disconnected();
        // Dropping the daemon joins its vring worker thread.
        drop(daemon);
        Ended::Closed
    }

    /// A hand-over asked for while no frontend is connected: parks with no
    /// handler. True when the vNIC now belongs to another process.
    fn park_idle(&self) -> bool {
        if !self.handover.requested() {
            return false;
        }
        matches!(self.handover.park(None), AfterPause::Released)
    }

    /// Serves an adopted handler first, if any: true when released.
    fn adopted(&self, handler: Option<PausedHandler>) -> bool {
        let Some(PausedHandler {
            mut daemon,
            connection,
        }) = handler
        else {
            return false;
        };
        if let Err(e) = daemon.resume(connection) {
            log::warn!(
                "{}: cannot serve the adopted connection: {e}",
                self.device.name()
            );
            return false;
        }
        matches!(self.run_connection(daemon), Ended::Released)
    }

    fn serve_as_server(&self, mut listener: Listener, handler: Option<PausedHandler>) {
        let mut released = self.adopted(handler);
        while !released && !self.stop.raised() {
            if self.park_idle() {
                released = true;
                break;
            }
            if !self.stop.wait(Some(listener.as_raw_fd()), Duration::MAX) {
                continue;
            }
            let Some(mut daemon) = self.new_daemon() else {
                self.stop.wait(None, RETRY_INTERVAL);
                continue;
            };
            match daemon.start(&mut listener) {
                Ok(()) => released = matches!(self.run_connection(daemon), Ended::Released),
                Err(e) => log::warn!("{}: accept failed: {e}", self.device.name()),
            }
        }
        // The socket file is the new process's once released; otherwise it
        // goes with the vNIC.
        if !released {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn serve_as_client(&self, handler: Option<PausedHandler>) {
        let name = self.device.name();
        let path_str = self.path.to_string_lossy().into_owned();
        let mut waiting_logged = false;
        let mut daemon = None;
        if self.adopted(handler) {
            return;
        }
        while !self.stop.raised() {
            if self.park_idle() {
                return;
            }
            if daemon.is_none() {
                daemon = self.new_daemon();
            }
            let Some(d) = daemon.as_mut() else {
                self.stop.wait(None, RETRY_INTERVAL);
                continue;
            };
            match d.start_client(&path_str) {
                Ok(()) => {
                    waiting_logged = false;
                    let d = daemon.take().expect("present");
                    if let Ended::Released = self.run_connection(d) {
                        return;
                    }
                }
                Err(e) => {
                    if !waiting_logged {
                        log::info!("{name}: waiting for frontend at {path_str}: {e}");
                        waiting_logged = true;
                    }
                    self.stop.wait(None, RETRY_INTERVAL);
                }
            }
        }
    }
}

/// A fresh vhost-user handler for `device` (each connection gets its own,
/// so nothing of a previous guest leaks into the next).
pub fn new_handler(device: &Device) -> Result<VhostUserDaemon<Device>, vhost_user_backend::Error> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    VhostUserDaemon::new(device.name().to_string(), device.clone(), mem)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
