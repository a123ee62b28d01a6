//! Hand-over protocol 4: the vNICs move one at a time, the switch and the
//! uplinks last (`control::daemon::stepwise`, docs/upgrade.md). After
//! `hello`, `prepare` and `ready` as in a whole-daemon upgrade:
//!
//! 1. old -> new `steps` (the vNICs, in the order they move).
//! 2. Per vNIC: old -> new `vnic` (as in a whole-daemon upgrade, for this
//!    vNIC alone) and `bridge` (the rings the old process's bridge
//!    receives on, and half its free frames); new -> old `bridge` once it
//!    has built and replayed the vNIC, touching no ring (its rings, and
//!    half its free frames). Protocol 5: the new process serves the vNIC
//!    from there on. Protocol 4: it waits for old -> new `serve`, a round
//!    trip more in the vNIC's blackout. Up to the first vNIC's answer
//!    (protocol 4: its `serve`) a failure of the new process is rolled
//!    back; after it, some vNICs live in the new process only, and a
//!    failure ends the old one (exit status 1) so that its supervisor
//!    starts a fresh daemon. Which side of that line a failure fell on,
//!    the old process tells once the new one is reaped: by whether the
//!    answer is in the channel.
//!
//!    Protocol 6 begins with a brownout: per vNIC, old -> new `preview`
//!    (the vNIC as it stands, serving on in the old process); the new
//!    process builds and replays each, its engines gated, then new -> old
//!    `prepared`. A step then only moves on what the running engines
//!    moved (`upgrade::preview`), unless the frontend changed something
//!    since the preview: then the step replays the vNIC again.
//! 3. old -> new `switch`; new -> old `bridges-stopped`; old -> new
//!    `state` (free frames, FDB, counters), one `vnic-frames` per vNIC
//!    (what was in flight) and one `uplink` per uplink; new -> old
//!    `adopted`; old -> new `serve`; new -> old `committed`.

use std::os::fd::OwnedFd;
use std::process::Child;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{
    fail_point, receive_uplinks, text, within, Adopted, CommitMessage, Serve, UpgradeError,
    UpgradeReport, ADOPT_TIMEOUT, STEP_TIMEOUT, UPGRADE_TIMEOUT,
};
use crate::control::daemon::{log_phase, Daemon, DaemonState, VnicFrames, VnicMove, VnicStep};
use crate::upgrade::frame_set::FreeFrames;
use crate::upgrade::vnic_handover::borrowed;
use crate::upgrade::{Channel, ChannelError};

/// The vNICs, in the order they move.
#[derive(Serialize, Deserialize)]
struct Steps {
    vnics: Vec<String>,
}

/// The new process built and replayed every previewed vNIC.
#[derive(Serialize, Deserialize)]
struct Prepared {}

/// Set (to anything), the new process takes every preview for stale and
/// replays each vNIC in its step, as protocol 5 does: a test of that path.
const STALE_PREVIEWS: &str = "SNAPNET_UPGRADE_STALE_PREVIEWS";

#[derive(Serialize, Deserialize)]
struct SwitchStop {}

#[derive(Serialize, Deserialize)]
struct BridgesStopped {}

/// The old process's half, from `steps` on.
pub(super) fn hand_over(
    daemon: &mut Daemon,
    ours: &mut Channel,
    child: &mut Child,
    version: String,
    protocol: u32,
    deadline: Instant,
) -> Result<UpgradeReport, UpgradeError> {
    let mut abandon = |why: String| {
        let _ = child.kill();
        let _ = child.wait();
        why
    };
    if let Err(r) = daemon.check_movable() {
        return Err(UpgradeError::NotStarted(abandon(r.error.to_string())));
    }
    let _sharing = daemon.share_cpus();
    let names: Vec<String> = daemon
        .config()
        .vnics
        .iter()
        .map(|v| v.name.clone())
        .collect();
    let first_stop = Instant::now();
    let sent = within(ours, STEP_TIMEOUT, deadline).and_then(|()| {
        ours.send_message(
            "steps",
            &Steps {
                vnics: names.clone(),
            },
            &[],
        )
    });
    let previewed = sent.map_err(text).and_then(|()| {
        if protocol < 6 {
            return Ok(());
        }
        for name in &names {
            let (moved, fds) = daemon.preview_vnic_step(name).map_err(|e| e.to_string())?;
            ours.send_message("preview", &moved, &borrowed(&fds))
                .map_err(text)?;
        }
        within(ours, STEP_TIMEOUT, deadline)
            .and_then(|()| ours.recv_message::<Prepared>("prepared"))
            .map(drop)
            .map_err(text)
    });
    if let Err(e) = previewed {
        return Err(UpgradeError::NotStarted(abandon(e)));
    }
    log_phase(
        "brownout: every vNIC prepared in the new process",
        first_stop,
    );
    let first_stop = Instant::now();
    for (k, name) in names.iter().enumerate() {
        let step = match daemon.export_vnic_step(name, protocol) {
            Ok(s) => s,
            Err(r) if r.serving && k == 0 => {
                return Err(UpgradeError::NotStarted(abandon(r.error.to_string())))
            }
            Err(r) => return Err(UpgradeError::Failed(abandon(r.error.to_string()))),
        };
        log::debug!(
            "upgrade: {name}: stopped: {:.2} ms",
            step.stopped_at.elapsed().as_secs_f64() * 1e3
        );
        let answer = within(ours, ADOPT_TIMEOUT, deadline).and_then(|()| send_step(ours, &step));
        log::debug!(
            "upgrade: {name}: built in the new process: {:.2} ms",
            step.stopped_at.elapsed().as_secs_f64() * 1e3
        );
        let (back, to_new) = match answer {
            Ok(a) => a,
            Err(e) => {
                let garbled = matches!(e, ChannelError::Protocol(_) | ChannelError::Format(_));
                let why = abandon(text(e));
                // Reaped: whatever it sent is in the channel. Protocol 5
                // serves once it answered, so an answer (or part of one)
                // means the guest's rings may have moved on there.
                if protocol >= 5 && (garbled || ours.has_unread()) {
                    return Err(UpgradeError::Failed(format!(
                        "{why}; the new process had answered for {name} and may have served it"
                    )));
                }
                return Err(roll_back_step(daemon, step, k, why));
            }
        };
        if let Err(e) = daemon.take_free_share(&back) {
            log::warn!("upgrade: free frames from the new process not taken: {e}");
        }
        let t0 = step.stopped_at;
        if let Err((step, e)) = daemon.bridge_vnic_step(step, to_new) {
            if protocol >= 5 {
                return Err(UpgradeError::Failed(abandon(format!(
                    "{name}: {e}; the new process serves it"
                ))));
            }
            return Err(roll_back_step(daemon, *step, k, abandon(e.to_string())));
        }
        log::debug!(
            "upgrade: {name}: bridged: {:.2} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        if protocol < 5 {
            if let Err(e) = ours.send_message("serve", &Serve {}, &[]) {
                return Err(UpgradeError::Failed(abandon(text(e))));
            }
        }
    }
    log_phase("every vNIC moved", first_stop);
    let stopped = within(ours, STEP_TIMEOUT, deadline)
        .and_then(|()| ours.send_message("switch", &SwitchStop {}, &[]))
        .and_then(|()| ours.recv_message::<BridgesStopped>("bridges-stopped"));
    if let Err(e) = stopped {
        return Err(UpgradeError::Failed(abandon(text(e))));
    }
    let moved = daemon
        .export_switch_move(protocol)
        .map_err(|e| UpgradeError::Failed(abandon(e.to_string())))?;
    let switch_stopped = moved.export.stopped_at;
    let committed = within(ours, UPGRADE_TIMEOUT, deadline).and_then(|()| {
        ours.send_message("state", &moved.export.state, &[])?;
        for f in &moved.frames {
            ours.send_message("vnic-frames", f, &[])?;
        }
        for u in &moved.export.uplinks {
            ours.send_message("uplink", &u.moved, &borrowed(&u.fds))?;
        }
        ours.recv_message::<Adopted>("adopted")?;
        ours.send_message("serve", &Serve {}, &[])?;
        ours.recv_message::<CommitMessage>("committed")
    });
    let (committed, _) = committed.map_err(|e| UpgradeError::Failed(abandon(text(e))))?;
    let switch_ms = switch_stopped.elapsed().as_secs_f64() * 1e3;
    let blackout_ms = first_stop.elapsed().as_secs_f64() * 1e3;
    let uplinks = moved.export.uplinks.len();
    moved.export.commit();
    log::info!(
        "upgrade: pid {} serves {} vNIC(s) and {uplinks} uplink(s), moved one by one in {blackout_ms:.1} ms; the switch's own blackout {switch_ms:.1} ms",
        committed.pid,
        names.len()
    );
    Ok(UpgradeReport::new(
        committed,
        version,
        names.len(),
        uplinks,
        blackout_ms,
        Some(switch_ms),
    ))
}

/// Sends a vNIC's step and waits for the new process's bridge.
fn send_step(ours: &Channel, step: &VnicStep) -> Result<(FreeFrames, Vec<OwnedFd>), ChannelError> {
    ours.send_message("vnic", &step.moved, &borrowed(&step.fds))?;
    ours.send_message("bridge", &step.share, &step.ring_fds())?;
    ours.recv_message("bridge")
}

/// The new process failed during step `k`: its vNIC serves on here. Before
/// the first step completed that is a rollback; after it, vNICs that moved
/// are gone with the new process.
fn roll_back_step(daemon: &mut Daemon, step: VnicStep, k: usize, why: String) -> UpgradeError {
    let stopped_at = step.stopped_at;
    daemon.resume_vnic_step(step);
    if k == 0 {
        let why = format!(
            "{why}; the vNICs serve again after a {:.1} ms blackout",
            stopped_at.elapsed().as_secs_f64() * 1e3
        );
        log::warn!("upgrade: rolled back: {why}");
        UpgradeError::RolledBack(why)
    } else {
        UpgradeError::Failed(format!(
            "{why}; {k} vNIC(s) had moved to the new process, which is gone"
        ))
    }
}

/// The new process's half, from `steps` on; `channel` has its step timeout.
pub(super) fn take_over(
    mut daemon: Daemon,
    channel: Channel,
    protocol: u32,
) -> Result<(Daemon, Channel), String> {
    let (steps, _): (Steps, _) = channel.recv_message("steps").map_err(text)?;
    // Until the switch has moved: then the old process runs no engine.
    let sharing = daemon.share_cpus();
    fail_point("state")?;
    if protocol >= 6 {
        let since = Instant::now();
        for name in &steps.vnics {
            let (moved, fds): (VnicMove, Vec<OwnedFd>) =
                channel.recv_message("preview").map_err(text)?;
            if moved.handover.name != *name {
                return Err(format!("preview of {} for {name}", moved.handover.name));
            }
            daemon
                .prepare_vnic_step(moved, fds)
                .map_err(|e| format!("{name}: {e}"))?;
        }
        fail_point("prepared")?;
        channel
            .send_message("prepared", &Prepared {}, &[])
            .map_err(text)?;
        log_phase("new process: every vNIC prepared", since);
    }
    let trust_previews = std::env::var_os(STALE_PREVIEWS).is_none();
    for name in &steps.vnics {
        let (moved, fds): (VnicMove, Vec<OwnedFd>) = channel.recv_message("vnic").map_err(text)?;
        let t0 = Instant::now();
        fail_point("vnic")?;
        let (share, to_old): (FreeFrames, Vec<OwnedFd>) =
            channel.recv_message("bridge").map_err(text)?;
        daemon.take_free_share(&share).map_err(text)?;
        let (replayed, back) = daemon
            .take_over_vnic_step(moved, fds, to_old, trust_previews)
            .map_err(|e| format!("{name}: {e}"))?;
        log::debug!(
            "upgrade: new process: {name}: built and replayed: {:.2} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        fail_point("adopted")?;
        channel
            .send_message("bridge", &daemon.free_share(protocol), &borrowed(&back))
            .map_err(text)?;
        fail_point("answered")?;
        if protocol < 5 {
            channel.recv_message::<Serve>("serve").map_err(text)?;
            log::debug!(
                "upgrade: new process: {name}: told to serve: {:.2} ms",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        daemon
            .serve_vnic_step(replayed)
            .map_err(|e| format!("{name}: {e}"))?;
        log::debug!(
            "upgrade: new process: {name}: serving: {:.2} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    channel.recv_message::<SwitchStop>("switch").map_err(text)?;
    daemon.stop_step_bridges().map_err(text)?;
    channel
        .send_message("bridges-stopped", &BridgesStopped {}, &[])
        .map_err(text)?;
    let (state, _): (DaemonState, _) = channel.recv_message("state").map_err(text)?;
    let since = Instant::now();
    daemon.take_free_frames(&state).map_err(text)?;
    let mut frames = Vec::with_capacity(state.vnics);
    for _ in 0..state.vnics {
        let (f, _): (VnicFrames, _) = channel.recv_message("vnic-frames").map_err(text)?;
        frames.push(f);
    }
    let uplinks = receive_uplinks(&channel, &mut daemon, state.uplinks)?;
    let (fdb, ports) = (state.fdb, state.ports);
    daemon
        .finish_switch_move(frames, |d| {
            let skipped = d.import_fdb(fdb)?;
            if skipped > 0 {
                log::warn!("upgrade: {skipped} FDB entries not taken over");
            }
            d.import_port_counters(&ports)
        })
        .map_err(text)?;
    log_phase("new process: the switch moved, since the state came", since);
    channel
        .send_message("adopted", &Adopted {}, &[])
        .map_err(text)?;
    channel.recv_message::<Serve>("serve").map_err(text)?;
    daemon.serve_taken_over_uplinks(uplinks).map_err(text)?;
    drop(sharing);
    Ok((daemon, channel))
}
