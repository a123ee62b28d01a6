//! The brownout of a step-by-step upgrade (hand-over protocol 6,
//! docs/upgrade.md): before any vNIC stops, the old process sends each
//! vNIC's connection as it stands (a preview), and the new process builds
//! and replays it with its engines gated. When the vNIC's step comes, only
//! what its running engines moved since is new: the vring positions and the
//! engines' own state (counters, bucket levels). If the frontend changed
//! anything else meanwhile (a memory table, a vring's set-up, an eventfd),
//! the preview is stale and the step replays the connection again.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use super::replay::ConnectionState;
use super::vnic_handover::{pause_handler, preview_vnic, HandoverError, VnicHandover};
use crate::vnic::engine::EngineState;
use crate::vnic::{Connection, EngineSink, VnicDevice, VnicEngine};

/// The old process: vNIC `name`'s connection as it stands, its engines
/// running on (their state comes with the step: here each queue pair's is
/// a default). The handler pauses between two messages for the capture.
pub fn preview_running(
    name: &str,
    connection: &Connection,
    listener: Option<BorrowedFd<'_>>,
    queue_pairs: usize,
    timeout: std::time::Duration,
) -> Result<(VnicHandover, Vec<OwnedFd>), HandoverError> {
    let handler = pause_handler(name, connection, timeout)?;
    let previewed = preview_vnic(name, handler.as_ref(), listener, &[]);
    connection.resume(handler);
    let (mut handover, fds) = previewed?;
    handover.engines = vec![EngineState::default(); queue_pairs];
    Ok((handover, fds))
}

/// Whether a step's `fresh` state is the `preview`'s but for what running
/// engines move (vring positions, engine state): the same negotiation, and
/// every fd the same open file (`kcmp`), not only the same number. A
/// stopped vring's position is the frontend's, and counts.
pub fn unchanged_since(
    preview: (&VnicHandover, &[OwnedFd]),
    fresh: (&VnicHandover, &[OwnedFd]),
) -> bool {
    let (p, p_fds) = preview;
    let (f, f_fds) = fresh;
    let settled = |c: &Option<ConnectionState>| {
        c.clone().map(|mut c| {
            // A started vring's position is the engines'; a stopped one's
            // is the frontend's (SET_VRING_BASE), and must not change.
            c.vrings
                .iter_mut()
                .filter(|v| v.ready)
                .for_each(|v| v.position = None);
            c
        })
    };
    p.name == f.name
        && p.stream == f.stream
        && p.listener == f.listener
        && p.engines.len() == f.engines.len()
        && settled(&p.connection) == settled(&f.connection)
        && p_fds.len() == f_fds.len()
        && p_fds.iter().zip(f_fds).all(|(a, b)| same_file(a, b))
}

/// Whether two fds of this process name the same open file description.
/// Where `kcmp` is unavailable, they are taken to differ (the step then
/// replays the connection, which is always right).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    const KCMP_FILE: libc::c_int = 0;
    // SAFETY: kcmp only compares kernel objects of the given pid; the fds
    // are open for the duration of the call (borrowed from `a` and `b`).
    let r = unsafe {
        let pid = libc::getpid();
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            a.as_raw_fd() as libc::c_ulong,
            b.as_raw_fd() as libc::c_ulong,
        )
    };
    r == 0
}

/// The new process, at the step of a vNIC prepared from a preview that is
/// still right: its started (and gated) vrings go on from the positions
/// the old process's engines stopped at.
pub fn reposition(
    device: &VnicDevice<EngineSink>,
    fresh: &VnicHandover,
) -> Result<(), HandoverError> {
    let Some(c) = &fresh.connection else {
        return Ok(());
    };
    for (index, v) in c.vrings.iter().enumerate() {
        if let (true, Some(p)) = (v.ready, v.position) {
            device
                .reposition_vring(index, p.next_avail, p.next_used)
                .map_err(|source| HandoverError::Device {
                    vnic: fresh.name.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// The new process, at the step of a prepared vNIC: each (gated) engine
/// goes on from the old one's state, before its gate opens.
pub fn continue_engines(
    device: &VnicDevice<EngineSink>,
    fresh: &VnicHandover,
) -> Result<(), HandoverError> {
    let states = fresh.engines.clone();
    device
        .sink()
        .configure_each(|qp| {
            let state = states.get(qp).cloned().unwrap_or_default();
            move |e: &mut VnicEngine| e.take_over(&state)
        })
        .map_err(|source| HandoverError::Device {
            vnic: fresh.name.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::replay::{VringPosition, VringState};

    fn handover(position: u16) -> VnicHandover {
        VnicHandover {
            name: "v".into(),
            connection: Some(ConnectionState {
                owned: true,
                acked_features: Some(1),
                acked_protocol_features: 0,
                status: 0,
                packed_rings: false,
                mtu: None,
                regions: Vec::new(),
                vrings: vec![VringState {
                    size: 256,
                    addrs: None,
                    ready: true,
                    enabled: true,
                    position: Some(VringPosition {
                        next_avail: position,
                        next_used: position,
                    }),
                    kick: Some(0),
                    call: None,
                    err: None,
                }],
            }),
            stream: None,
            listener: None,
            engines: vec![EngineState::default()],
        }
    }

    fn eventfd() -> OwnedFd {
        crate::vnic::device::tests::eventfd_file().into()
    }

    #[test]
    fn a_preview_is_right_while_only_positions_and_engine_state_moved() {
        let fd = eventfd();
        let dup = fd.try_clone().unwrap();
        let mut fresh = handover(900);
        fresh.engines[0].counters.tx_packets = 7;
        let preview = handover(3);
        let (p, f) = (&preview, &fresh);
        assert!(unchanged_since((p, &[fd]), (f, &[dup])));
    }

    #[test]
    fn a_preview_is_stale_once_the_frontend_changed_anything_else() {
        let fd = eventfd();
        let preview = handover(3);
        let same = || fd.try_clone().unwrap();
        let p = (&preview, std::slice::from_ref(&fd));
        // Another eventfd in the same place: a new kick fd.
        assert!(!unchanged_since(p, (&handover(3), &[eventfd()])));
        assert!(!unchanged_since(p, (&handover(3), &[])));
        let mut mtu = handover(3);
        mtu.connection.as_mut().unwrap().mtu = Some(1400);
        assert!(!unchanged_since(p, (&mtu, &[same()])));
        let mut size = handover(3);
        size.connection.as_mut().unwrap().vrings[0].size = 512;
        assert!(!unchanged_since(p, (&size, &[same()])));
        let mut gone = handover(3);
        gone.connection = None;
        assert!(!unchanged_since(p, (&gone, &[same()])));
    }
}
