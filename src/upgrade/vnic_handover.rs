//! Moving one vNIC to the process that takes over (docs/upgrade.md, the
//! blackout of step 3): its vhost-user connection, paused between two
//! messages and replayed to a handler of the new process, and its queue
//! engines, stopped at a batch boundary and continued from their state.
//!
//! The old process: [`pause_vnic`], take the engines out of their group,
//! [`export_vnic`], send the [`VnicHandover`] with its fds, and once the new
//! process has answered, `Connection::release`. The new process: build the
//! engines (`VnicEngine::take_over` with the exported states), place them,
//! then [`import_vnic`]. Their frames meanwhile cross between the two
//! processes through bridge engines (`bridge_engine`), on the links
//! [`export_vnic`] returns.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::replay::{replay, ConnectionState, ReplayError, VringPosition};
use crate::packet::{LinkRx, LinkTx};
use crate::vnic::connection::{self, ConnectionError, PausedHandler};
use crate::vnic::device::DeviceError;
use crate::vnic::engine::EngineState;
use crate::vnic::{Connection, EngineSink, VnicDevice, VnicEngine};

type Device = Arc<VnicDevice<EngineSink>>;

#[derive(Debug, Error)]
pub enum HandoverError {
    #[error("{vnic}: {source}")]
    Connection {
        vnic: String,
        source: ConnectionError,
    },
    #[error("{vnic}: {source}")]
    Device { vnic: String, source: DeviceError },
    #[error("{vnic}: {source}")]
    Replay { vnic: String, source: ReplayError },
    #[error("{vnic}: {what}: {source}")]
    Io {
        vnic: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{vnic}: {what}")]
    Invalid { vnic: String, what: String },
}

/// An I/O error of vNIC `vnic` while doing `what`.
fn io_err<'a>(
    vnic: &'a str,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> HandoverError + 'a {
    move |source| HandoverError::Io {
        vnic: vnic.to_string(),
        what,
        source,
    }
}

impl HandoverError {
    fn invalid(vnic: &str, what: impl Into<String>) -> Self {
        HandoverError::Invalid {
            vnic: vnic.to_string(),
            what: what.into(),
        }
    }
}

/// One vNIC as it crosses to the new process; the fds it names travel
/// beside it, by index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VnicHandover {
    pub name: String,
    /// What the connection negotiated; `None` while no frontend is
    /// connected.
    pub connection: Option<ConnectionState>,
    /// The frontend's stream.
    pub stream: Option<usize>,
    /// The listening socket (server role).
    pub listener: Option<usize>,
    /// One per queue pair, in order.
    pub engines: Vec<EngineState>,
}

/// What stays in the old process: the links of the stopped engines (for
/// its bridge engine) and the paused handler (for a rollback).
pub struct Exported {
    pub links: Vec<(LinkTx, LinkRx)>,
    pub handler: Option<PausedHandler>,
}

/// A vNIC whose handler and engines have stopped ([`pause_vnic`]).
pub struct PausedVnic {
    /// The paused handler; `None` while no frontend is connected.
    pub handler: Option<PausedHandler>,
    /// When its engines began to let go of the vrings: where the guest's
    /// blackout starts (traffic flows while the handler pauses).
    pub engines_stopping: Instant,
    /// The same moment on CLOCK_MONOTONIC, for the new process.
    pub engines_stopping_ns: u64,
}

/// The old process's first step: the handler stops between two messages
/// (a message QEMU sends from now on waits in the socket), then every
/// engine lets go of its vrings at a batch boundary. On an error nothing
/// has changed: the connection serves again.
pub fn pause_vnic(
    name: &str,
    connection: &Connection,
    device: &Device,
    timeout: Duration,
) -> Result<PausedVnic, HandoverError> {
    let handler = pause_handler(name, connection, timeout)?;
    // The dirty log is the frontend's and marks what this process writes:
    // a successor would not know it (docs/migration.md). Checked with the
    // handler paused, so no SET_LOG_BASE slips in after the check.
    if device.migrating() {
        connection.resume(handler);
        return Err(HandoverError::invalid(
            name,
            "its guest is being live-migrated (dirty-page logging is on): upgrade once the migration ended",
        ));
    }
    let engines_stopping = Instant::now();
    let engines_stopping_ns = super::monotonic_ns();
    if let Err(source) = device.hand_over_vrings() {
        match device.take_back_vrings() {
            Ok(()) => connection.resume(handler),
            // Vrings nobody serves would stall the guest for good: drop the
            // connection instead, so that the frontend connects again.
            Err(e) => {
                log::warn!("{name}: vrings not taken back ({e}): disconnecting the frontend");
                connection.resume(None);
            }
        }
        return Err(HandoverError::Device {
            vnic: name.to_string(),
            source,
        });
    }
    Ok(PausedVnic {
        handler,
        engines_stopping,
        engines_stopping_ns,
    })
}

/// vNIC `name`'s handler, paused between two vhost-user messages
/// (`None`: no frontend is connected).
pub fn pause_handler(
    name: &str,
    connection: &Connection,
    timeout: Duration,
) -> Result<Option<PausedHandler>, HandoverError> {
    connection
        .pause(timeout)
        .map_err(|source| HandoverError::Connection {
            vnic: name.to_string(),
            source,
        })
}

/// An export that failed, with what it was given: nothing was taken apart,
/// so the caller can put the engines back and resume the handler.
pub struct ExportFailed {
    pub error: HandoverError,
    pub handler: Option<PausedHandler>,
    pub engines: Vec<VnicEngine>,
}

/// What an export needs that may fail, gathered before anything is taken
/// apart.
struct Prepared {
    connection: Option<ConnectionState>,
    fds: Vec<OwnedFd>,
    stream: Option<usize>,
    listener: Option<usize>,
    spares: Vec<(LinkTx, LinkRx)>,
}

fn prepare(
    name: &str,
    handler: Option<&PausedHandler>,
    listener: Option<BorrowedFd<'_>>,
    engines: usize,
) -> Result<Prepared, HandoverError> {
    let io = |what| io_err(name, what);
    let (connection, mut fds, stream) = match handler {
        Some(h) => {
            let negotiated = h.daemon.negotiated().map_err(io("negotiated state"))?;
            // The engines let go of the vrings: the handler's positions
            // are where they stopped.
            let positions: Vec<VringPosition> = negotiated
                .vrings
                .iter()
                .map(|v| VringPosition {
                    next_avail: v.next_avail,
                    next_used: v.next_used,
                })
                .collect();
            let (mut state, fds) = ConnectionState::capture(negotiated);
            for (v, p) in state.vrings.iter_mut().zip(positions) {
                v.position = Some(p);
            }
            let stream = h.connection.try_clone_stream().map_err(io("stream"))?;
            (Some(state), fds, Some(OwnedFd::from(stream)))
        }
        None => (None, Vec::new(), None),
    };
    let stream = stream.map(|s| {
        fds.push(s);
        fds.len() - 1
    });
    let listener = listener
        .map(|l| l.try_clone_to_owned())
        .transpose()
        .map_err(io("listener"))?
        .map(|l| {
            fds.push(l);
            fds.len() - 1
        });
    let spares = (0..engines)
        .map(|_| crate::packet::link(1))
        .collect::<Result<_, _>>()
        .map_err(io("link"))?;
    Ok(Prepared {
        connection,
        fds,
        stream,
        listener,
        spares,
    })
}

/// The old process's second step, once the vNIC's engines are out of their
/// group: the message for the new process, the fds it names, and what
/// stays here. On an error nothing is taken apart ([`ExportFailed`]).
pub fn export_vnic(
    name: &str,
    handler: Option<PausedHandler>,
    listener: Option<BorrowedFd<'_>>,
    engines: Vec<VnicEngine>,
) -> Result<(VnicHandover, Vec<OwnedFd>, Exported), Box<ExportFailed>> {
    let prepared = match prepare(name, handler.as_ref(), listener, engines.len()) {
        Ok(p) => p,
        Err(error) => {
            return Err(Box::new(ExportFailed {
                error,
                handler,
                engines,
            }))
        }
    };
    let mut states = Vec::with_capacity(engines.len());
    let mut links = Vec::with_capacity(engines.len());
    for (engine, spare) in engines.into_iter().zip(prepared.spares) {
        let parts = engine.hand_over(spare);
        states.push(parts.state);
        links.push((parts.to_switch, parts.from_switch));
    }
    let message = VnicHandover {
        name: name.to_string(),
        connection: prepared.connection,
        stream: prepared.stream,
        listener: prepared.listener,
        engines: states,
    };
    Ok((message, prepared.fds, Exported { links, handler }))
}

/// The message and fds [`export_vnic`] would give, with nothing taken
/// apart: the engines stay whole and the handler paused, so that the vNIC
/// can serve on here if the new process fails (a step-by-step upgrade takes
/// the engines apart only once the new process has built the vNIC).
pub fn preview_vnic(
    name: &str,
    handler: Option<&PausedHandler>,
    listener: Option<BorrowedFd<'_>>,
    engines: &[VnicEngine],
) -> Result<(VnicHandover, Vec<OwnedFd>), HandoverError> {
    let prepared = prepare(name, handler, listener, 0)?;
    let message = VnicHandover {
        name: name.to_string(),
        connection: prepared.connection,
        stream: prepared.stream,
        listener: prepared.listener,
        engines: engines.iter().map(VnicEngine::handover_state).collect(),
    };
    Ok((message, prepared.fds))
}

/// A vNIC's connection replayed in the new process, not serving yet: its
/// handler is paused before the frontend's first unread message, and its
/// vrings are attached to engines that leave them alone until
/// [`adopt_vnic`]. Until then the old process can still take the vNIC back.
pub struct ReplayedVnic {
    listener: Option<OwnedFd>,
    handler: Option<PausedHandler>,
}

/// The new process, first half: the vNIC's engines (built from
/// `handover.engines`, placed, and gated) take the vrings as the replay
/// starts them. Nothing reads the frontend's stream or the guest's rings.
pub fn replay_vnic(
    handover: &VnicHandover,
    fds: Vec<OwnedFd>,
    device: &Device,
    timeout: Duration,
) -> Result<ReplayedVnic, HandoverError> {
    let name = handover.name.as_str();
    let take = |index: Option<usize>, what: &str| -> Result<Option<OwnedFd>, HandoverError> {
        index
            .map(|i| {
                fds.get(i)
                    .ok_or_else(|| {
                        HandoverError::invalid(name, format!("no fd {i} for the {what}"))
                    })
                    .and_then(|f| {
                        f.try_clone().map_err(|source| HandoverError::Io {
                            vnic: name.to_string(),
                            what: "fd",
                            source,
                        })
                    })
            })
            .transpose()
    };
    let listener = take(handover.listener, "listener")?;
    let handler = match (&handover.connection, take(handover.stream, "stream")?) {
        (Some(state), Some(stream)) => {
            let replayed = replayed(name, state, &fds, stream, device, timeout);
            Some(replayed.inspect_err(|_| undo(device))?)
        }
        (None, None) => None,
        _ => {
            return Err(HandoverError::invalid(
                name,
                "a connection without its stream",
            ))
        }
    };
    Ok(ReplayedVnic { listener, handler })
}

/// The new process, second half, once the old one has let go: the engines
/// serve the guest's rings (what it posted meanwhile first), and the
/// connection goes on serving the frontend's own stream, and its socket.
/// Returns it, and when the last engine began to serve (the end of the
/// vNIC's blackout).
pub fn adopt_vnic(
    name: &str,
    replayed: ReplayedVnic,
    device: &Device,
    path: &Path,
) -> Result<(Connection, Instant), HandoverError> {
    let device_err = |source| HandoverError::Device {
        vnic: name.to_string(),
        source,
    };
    // One mailbox call per engine: it also stops holding frames for the
    // guest (`VnicEngine::open_gate`).
    let serving = device.sink().open_gates().map_err(device_err)?;
    let connection = Connection::adopt(device.clone(), path, replayed.listener, replayed.handler)
        .map_err(|source| {
        undo(device);
        HandoverError::Connection {
            vnic: name.to_string(),
            source,
        }
    })?;
    Ok((connection, serving))
}

/// Both halves at once, where nobody can take the vNIC back in between
/// (the in-process rehearsal).
pub fn import_vnic(
    handover: &VnicHandover,
    fds: Vec<OwnedFd>,
    device: &Device,
    path: &Path,
    timeout: Duration,
) -> Result<Connection, HandoverError> {
    let replayed = replay_vnic(handover, fds, device, timeout)?;
    adopt_vnic(&handover.name, replayed, device, path).map(|(c, _)| c)
}

/// A failed import lets go of every vring the replay attached, so that the
/// old process can take them back without two processes on one ring.
fn undo(device: &Device) {
    device.disconnected();
}

/// Replays `state` to a fresh handler of `device` and pauses it, ready to
/// go on with the frontend's `stream`.
fn replayed(
    name: &str,
    state: &ConnectionState,
    fds: &[OwnedFd],
    stream: OwnedFd,
    device: &Device,
    timeout: Duration,
) -> Result<PausedHandler, HandoverError> {
    let io = |what| io_err(name, what);
    let mut daemon = connection::new_handler(device)
        .map_err(|e| HandoverError::invalid(name, format!("vhost-user handler: {e}")))?;
    let (replay_end, handler_end) = UnixStream::pair().map_err(io("socketpair"))?;
    replay_end
        .set_read_timeout(Some(timeout))
        .map_err(io("socket timeout"))?;
    daemon
        .start_on_stream(handler_end)
        .map_err(|e| HandoverError::invalid(name, format!("vhost-user handler: {e}")))?;
    replay(state, fds, &replay_end).map_err(|source| HandoverError::Replay {
        vnic: name.to_string(),
        source,
    })?;
    daemon
        .pause_handle()
        .ok_or_else(|| HandoverError::invalid(name, "the replayed handler is not running"))?
        .pause();
    match daemon.wait() {
        Err(vhost_user_backend::Error::Paused) => {}
        other => {
            return Err(HandoverError::invalid(
                name,
                format!("the replayed handler did not pause: {other:?}"),
            ))
        }
    }
    let mut connection = daemon
        .take_paused()
        .ok_or_else(|| HandoverError::invalid(name, "the replayed handler has no connection"))?;
    connection.replace_stream(UnixStream::from(stream));
    drop(replay_end);
    Ok(PausedHandler { daemon, connection })
}

/// The fds of a [`VnicHandover`], borrowed for the channel.
pub fn borrowed(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}
