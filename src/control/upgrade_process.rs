//! `snapnet ctl upgrade`: the running daemon starts the new binary as
//! `snapnet serve --takeover-fd 3` with one end of a handoff channel, and
//! hands it every vNIC over that channel (docs/upgrade.md). Both halves of
//! the protocol are here:
//!
//! 1. new -> old `hello` (its version): the new binary started and speaks
//!    a state format the old one can read.
//! 2. old -> new `prepare` (the configuration as it stands) with the pool's
//!    memfd and the control socket's listener; new -> old `ready` once the
//!    new process has mapped the pool and started its groups and switch.
//!    Until here nothing has stopped, and a failure leaves the old daemon
//!    serving.
//! 3. old -> new `state` (free frames, FDB), then one `vnic` message per
//!    vNIC and one `uplink` message per uplink with its fds
//!    ([`Daemon::export_for_upgrade`]): the blackout.
//! 4. new -> old `adopted` once it has built every vNIC, none connected
//!    yet. Until here a failure of the new process (or its silence) is
//!    rolled back: the old one kills it and takes its own export back
//!    ([`Daemon::roll_back_upgrade`]), and serves on.
//! 5. old -> new `serve`: the new process replays the connections, and
//!    from then on touches the guests' rings. new -> old `committed`: it
//!    serves every vNIC and the control socket. The old one lets go of its
//!    copies and exits; a failure after `serve` cannot be rolled back (the
//!    rings moved on), and the old process exits 1.
//!
//! `SNAPNET_UPGRADE_FAIL_AT=<step>` makes the new process exit at a step
//! (`hello`, `ready`, `state`, `vnic`, `uplink`, `adopted`), and `<step>-error` fail
//! there through its ordinary error path: the rollback tier of
//! tests/upgrade.rs.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::config::Config;
use super::daemon::{
    log_phase, Daemon, DaemonState, UpgradeExport, UplinkMove, UplinkTakeover, VnicMove,
};
use crate::packet::PoolConfig;
use crate::upgrade::vnic_handover::borrowed;
use crate::upgrade::{Channel, ChannelError};

/// How long one step of the protocol may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the whole upgrade may take, within the control client's 30 s:
/// the command's answer must say what happened.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(25);

/// How long the new process may take to build the vNICs it was sent (a
/// few milliseconds): every guest is stopped meanwhile, and a silent new
/// process is rolled back after this.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The hand-over protocol this binary speaks. 1: the state, then
/// `committed`. 2: the new process says `adopted` before it touches a ring
/// and waits for `serve` (rollback until then), and the metrics listener
/// crosses. Each side speaks the lower of the two, so an upgrade to and
/// from a binary of protocol 1 works as it did then. 3: uplinks cross (one
/// `uplink` message each, after the vNICs'); a daemon with uplinks is not
/// handed to a binary of protocol 1 or 2. 4: the vNICs move one at a
/// time, the switch and the uplinks last (`steps`). 5: the new process
/// serves a vNIC as soon as it has answered its step, without waiting for
/// `serve` (a round trip less per vNIC's blackout). 6: a brownout first:
/// the new process builds and replays every vNIC from a `preview` while
/// the old one serves on, and a step moves only what the engines moved
/// since (`upgrade::preview`).
const PROTOCOL: u32 = 6;

/// The protocol this binary claims to speak: [`PROTOCOL`], or lower when
/// `SNAPNET_UPGRADE_PROTOCOL` says so (to test an upgrade to an older
/// binary).
fn protocol_spoken() -> u32 {
    std::env::var("SNAPNET_UPGRADE_PROTOCOL")
        .ok()
        .and_then(|p| p.parse().ok())
        .map_or(PROTOCOL, |p: u32| p.clamp(1, PROTOCOL))
}

mod steps;

fn first_protocol() -> u32 {
    1
}

/// Where the new process finds its end of the channel.
pub const TAKEOVER_FD: i32 = 3;

#[derive(Debug, Error)]
pub enum UpgradeError {
    /// Nothing was stopped: the daemon serves on as before.
    #[error("upgrade not started: {0}")]
    NotStarted(String),
    /// The new process failed after the vNICs had stopped, before it
    /// served any: this process took them back and serves on.
    #[error("upgrade failed and was rolled back: {0}")]
    RolledBack(String),
    /// The new process failed after it began to serve, or the rollback
    /// failed: this process can no longer serve its vNICs.
    #[error("upgrade failed after the hand-over began: {0}")]
    Failed(String),
}

#[derive(Serialize, Deserialize)]
struct Hello {
    version: String,
    pid: u32,
    #[serde(default = "first_protocol")]
    protocol: u32,
}

#[derive(Serialize, Deserialize)]
struct CommitMessage {
    pid: u32,
    /// Each vNIC's blackout (ms): its engines beginning to stop in the old
    /// process to its engines serving in the new one.
    #[serde(default)]
    blackouts_ms: Vec<(String, f64)>,
}

#[derive(Serialize, Deserialize)]
struct Prepare {
    config: Config,
    /// The pool's layout, which the new process maps as it is.
    pool: PoolConfig,
    /// The metrics listener comes too (the third fd).
    #[serde(default)]
    metrics: bool,
    /// The protocol both speak (the lower of the two).
    #[serde(default = "first_protocol")]
    protocol: u32,
}

#[derive(Serialize, Deserialize)]
struct Ready {}

#[derive(Serialize, Deserialize)]
struct Adopted {}

#[derive(Serialize, Deserialize)]
struct Serve {}

/// The environment variable that makes the new process fail at a step.
const FAIL_AT: &str = "SNAPNET_UPGRADE_FAIL_AT";

/// Where the rollback tier asked for a failure: `step` exits at once, as a
/// crash would, with nothing sent or cleaned up; `step-error` returns an
/// error, which the new process's ordinary failure path then takes (it
/// drops what it built and exits).
fn fail_point(step: &str) -> Result<(), String> {
    match std::env::var(FAIL_AT) {
        Ok(s) if s == step => {
            eprintln!("snapnet: {FAIL_AT}={step}: exiting");
            std::process::exit(70);
        }
        Ok(s) if s.strip_suffix("-error") == Some(step) => {
            Err(format!("{FAIL_AT}={s}: failing on purpose"))
        }
        _ => Ok(()),
    }
}

/// What an upgrade did, for the command's output.
#[derive(Debug, Serialize)]
pub struct UpgradeReport {
    /// The process that serves now.
    pub pid: u32,
    pub version: String,
    pub vnics: usize,
    pub uplinks: usize,
    /// From the first vNIC's engines stopping to the new process serving
    /// them all.
    pub blackout_ms: f64,
    /// Each vNIC's own blackout (its engines stopping to its connection
    /// replayed), median and largest; absent from a protocol 1 new process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnic_blackout_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnic_blackout_max_ms: Option<f64>,
    /// Per vNIC, by name.
    pub vnic_blackouts_ms: std::collections::BTreeMap<String, f64>,
    /// Moving one vNIC at a time (protocol 4): the switch's own blackout,
    /// its engines stopping in the old process to the new one serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_blackout_ms: Option<f64>,
}

impl UpgradeReport {
    fn new(
        committed: CommitMessage,
        version: String,
        vnics: usize,
        uplinks: usize,
        blackout_ms: f64,
        switch_blackout_ms: Option<f64>,
    ) -> Self {
        let mut each: Vec<f64> = committed.blackouts_ms.iter().map(|(_, ms)| *ms).collect();
        each.sort_by(f64::total_cmp);
        UpgradeReport {
            pid: committed.pid,
            version,
            vnics,
            uplinks,
            blackout_ms,
            vnic_blackout_p50_ms: each.get(each.len() / 2).copied(),
            vnic_blackout_max_ms: each.last().copied(),
            vnic_blackouts_ms: committed.blackouts_ms.into_iter().collect(),
            switch_blackout_ms,
        }
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The old process's half, with the daemon locked. On `Ok` the new process
/// serves and this one must exit without touching anything it handed over.
pub fn upgrade(
    daemon: &mut Daemon,
    binary: &Path,
    control: BorrowedFd<'_>,
    metrics: Option<BorrowedFd<'_>>,
) -> Result<UpgradeReport, UpgradeError> {
    let not_started = |e: String| UpgradeError::NotStarted(e);
    // A migration's dirty log marks what this process writes; a successor
    // would not know it (docs/migration.md).
    if let Some(name) = daemon.migrating_vnics().first() {
        return Err(not_started(format!(
            "vNIC {name}: its guest is being live-migrated (dirty-page logging is on): upgrade once the migration ended"
        )));
    }
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    let (mut ours, theirs) = Channel::pair().map_err(|e| not_started(text(e)))?;
    within(&mut ours, STEP_TIMEOUT, deadline).map_err(|e| not_started(text(e)))?;
    let mut child = spawn(binary, theirs.into_fd())
        .map_err(|e| not_started(format!("cannot start {}: {e}", binary.display())))?;
    let hello: Hello = match ours.recv_message("hello") {
        Ok((h, _)) => h,
        Err(e) => {
            return Err(not_started(abandon(
                &mut child,
                format!("{} did not answer: {e}", binary.display()),
            )))
        }
    };
    let protocol = hello.protocol.min(PROTOCOL);
    log::info!(
        "upgrade: snapnet {} (pid {}, protocol {protocol}) is taking over",
        hello.version,
        hello.pid
    );
    if protocol < 3 && !daemon.config().uplinks.is_empty() {
        return Err(not_started(abandon(
            &mut child,
            format!(
                "snapnet {} cannot take over uplinks (protocol {protocol}): remove them first",
                hello.version
            ),
        )));
    }
    // A protocol 1 binary takes exactly two fds.
    let metrics = metrics.filter(|_| protocol >= 2);
    let prepare = Prepare {
        config: daemon.config().clone(),
        pool: daemon.pool().layout(),
        metrics: metrics.is_some(),
        protocol,
    };
    let mut fds = vec![daemon.pool().memfd(), control];
    fds.extend(metrics);
    let prepared = within(&mut ours, STEP_TIMEOUT, deadline)
        .and_then(|()| ours.send_message("prepare", &prepare, &fds))
        .and_then(|()| ours.recv_message::<Ready>("ready"));
    if let Err(e) = prepared {
        return Err(not_started(abandon(
            &mut child,
            format!("the new process did not get ready: {e}"),
        )));
    }
    if protocol >= 4 {
        return steps::hand_over(
            daemon,
            &mut ours,
            &mut child,
            hello.version,
            protocol,
            deadline,
        );
    }
    let export = match daemon.export_for_upgrade() {
        Ok(x) => x,
        Err(r) if r.serving => return Err(not_started(abandon(&mut child, r.error.to_string()))),
        Err(r) => {
            return Err(UpgradeError::Failed(abandon(
                &mut child,
                r.error.to_string(),
            )))
        }
    };
    let vnics = export.vnics.len();
    let uplinks = export.uplinks.len();
    // `serve` may go only once `adopted` came: if it cannot be sent, the new
    // process never saw it and touched no ring either. (Protocol 1 has no
    // such step: the new process replays as soon as it has the state.)
    let adopted = within(&mut ours, ADOPT_TIMEOUT, deadline)
        .and_then(|()| hand_over(&ours, &export, protocol))
        .and_then(|()| match protocol {
            1 => Ok(()),
            _ => ours.send_message("serve", &Serve {}, &[]),
        });
    if let (Err(e), 2..) = (&adopted, protocol) {
        let e = text(e);
        // Killed and reaped first: nothing of it may run while this process
        // takes the vNICs back.
        let why = abandon(&mut child, e);
        let stopped_at = export.stopped_at;
        return Err(match daemon.roll_back_upgrade(export) {
            Ok(()) => {
                let why = format!(
                    "{why}; the vNICs serve again after a {:.1} ms blackout",
                    stopped_at.elapsed().as_secs_f64() * 1e3
                );
                log::warn!("upgrade: rolled back: {why}");
                UpgradeError::RolledBack(why)
            }
            Err(r) => UpgradeError::Failed(format!("{why}; the rollback failed: {r}")),
        });
    }
    let committed = adopted
        .and_then(|()| within(&mut ours, UPGRADE_TIMEOUT, deadline))
        .and_then(|()| ours.recv_message::<CommitMessage>("committed"));
    match committed {
        Ok((committed, _)) => {
            let blackout_ms = export.stopped_at.elapsed().as_secs_f64() * 1e3;
            export.commit();
            log::info!(
                "upgrade: pid {} serves {vnics} vNIC(s) and {uplinks} uplink(s) after a {blackout_ms:.1} ms blackout",
                committed.pid
            );
            Ok(UpgradeReport::new(
                committed,
                hello.version,
                vnics,
                uplinks,
                blackout_ms,
                None,
            ))
        }
        Err(e) => Err(UpgradeError::Failed(abandon(&mut child, text(e)))),
    }
}

/// Kills and reaps the new process; returns `why`.
fn abandon(child: &mut std::process::Child, why: String) -> String {
    let _ = child.kill();
    let _ = child.wait();
    why
}

/// Sends the state and every vNIC, and (protocol 2) waits for the new
/// process to have built them all.
fn hand_over(ours: &Channel, export: &UpgradeExport, protocol: u32) -> Result<(), ChannelError> {
    ours.send_message("state", &export.state, &[])?;
    for v in &export.vnics {
        ours.send_message("vnic", &v.moved, &borrowed(&v.fds))?;
    }
    for u in &export.uplinks {
        ours.send_message("uplink", &u.moved, &borrowed(&u.fds))?;
    }
    if protocol >= 2 {
        ours.recv_message::<Adopted>("adopted")?;
    }
    Ok(())
}

/// The channel's timeout for the next step: `step`, or what is left until
/// `deadline` if less (an error once it has passed).
fn within(channel: &mut Channel, step: Duration, deadline: Instant) -> Result<(), ChannelError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ChannelError::Protocol("the upgrade took too long"));
    }
    channel.set_timeout(Some(step.min(left)))
}

/// Starts `binary serve --takeover-fd 3` with `fd` as its fd 3.
fn spawn(binary: &Path, fd: OwnedFd) -> std::io::Result<std::process::Child> {
    let raw = fd.as_raw_fd();
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--takeover-fd")
        .arg(TAKEOVER_FD.to_string())
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec: dup2
    // (whose copy does not carry FD_CLOEXEC), fcntl and close_range.
    unsafe {
        command.pre_exec(move || {
            if raw == TAKEOVER_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, TAKEOVER_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Nothing else of this process's: fds received from frontends
            // carry no FD_CLOEXEC, and guest memory would stay allocated
            // in the new process (what it needs comes over the channel).
            libc::syscall(
                libc::SYS_close_range,
                TAKEOVER_FD as libc::c_uint + 1,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            );
            Ok(())
        });
    }
    let child = command.spawn();
    drop(fd);
    child
}

/// What the new process took over, before it answers `committed`.
pub struct TakenOver {
    pub daemon: Daemon,
    /// The control socket's listener, to serve on.
    control: UnixListener,
    /// The metrics listener, if the old process served metrics.
    metrics: Option<TcpListener>,
    channel: Channel,
}

/// What the new process serves on once it has committed.
pub struct Committed {
    pub daemon: Daemon,
    pub control: UnixListener,
    pub metrics: Option<TcpListener>,
}

impl TakenOver {
    /// Tells the old process that this one serves (it then exits); the
    /// daemon and the control socket's listener to serve on.
    pub fn commit(self) -> Result<Committed, ChannelError> {
        // Under systemd (Type=notify, NotifyAccess=all) this process becomes
        // the service's main pid before the old one exits, so the exit is
        // not taken for the service's end. Without systemd it is a no-op.
        if let Err(e) = sd_notify::notify(&[
            sd_notify::NotifyState::MainPid(std::process::id()),
            sd_notify::NotifyState::Ready,
        ]) {
            log::warn!("upgrade: sd_notify MAINPID failed: {e}");
        }
        self.channel.send_message(
            "committed",
            &CommitMessage {
                pid: std::process::id(),
                blackouts_ms: self
                    .daemon
                    .upgrade_blackouts()
                    .into_iter()
                    .map(|(name, d)| (name, d.as_secs_f64() * 1e3))
                    .collect(),
            },
            &[],
        )?;
        Ok(Committed {
            daemon: self.daemon,
            control: self.control,
            metrics: self.metrics,
        })
    }
}

/// The new process's half: everything up to `committed`, which the caller
/// sends once its control server runs ([`TakenOver::commit`]).
pub fn take_over(fd: OwnedFd) -> Result<TakenOver, String> {
    let mut channel = Channel::from_fd(fd).map_err(text)?;
    channel.set_timeout(Some(STEP_TIMEOUT)).map_err(text)?;
    fail_point("hello")?;
    channel
        .send_message(
            "hello",
            &Hello {
                version: crate::VERSION.to_string(),
                pid: std::process::id(),
                protocol: protocol_spoken(),
            },
            &[],
        )
        .map_err(text)?;
    let (prepare, mut fds): (Prepare, Vec<OwnedFd>) =
        channel.recv_message("prepare").map_err(text)?;
    let expected = if prepare.metrics { 3 } else { 2 };
    if fds.len() != expected {
        return Err(format!(
            "the configuration came with {} fds, not {expected}",
            fds.len()
        ));
    }
    let metrics = prepare
        .metrics
        .then(|| TcpListener::from(fds.pop().expect("counted")));
    let control = UnixListener::from(fds.pop().expect("counted"));
    let memfd = fds.pop().expect("counted");
    let mut daemon =
        Daemon::start_taking_over(&prepare.config, &prepare.pool, memfd).map_err(text)?;
    fail_point("ready")?;
    channel
        .send_message("ready", &Ready {}, &[])
        .map_err(text)?;
    if prepare.protocol >= 4 {
        let (daemon, channel) = steps::take_over(daemon, channel, prepare.protocol)?;
        return Ok(TakenOver {
            daemon,
            control,
            metrics,
            channel,
        });
    }
    let (state, _): (DaemonState, _) = channel.recv_message("state").map_err(text)?;
    let since = Instant::now();
    fail_point("state")?;
    daemon.take_free_frames(&state).map_err(text)?;
    let mut taken = Vec::with_capacity(state.vnics);
    for _ in 0..state.vnics {
        let (moved, fds): (VnicMove, Vec<OwnedFd>) = channel.recv_message("vnic").map_err(text)?;
        let name = moved.config.name.clone();
        taken.push(
            daemon
                .take_over_vnic(moved, fds)
                .map_err(|e| format!("{name}: {e}"))?,
        );
        fail_point("vnic")?;
    }
    let uplinks = receive_uplinks(&channel, &mut daemon, state.uplinks)?;
    log_phase(
        "new process: vNICs and uplinks built, since the state came",
        since,
    );
    let skipped = daemon.import_fdb(state.fdb).map_err(text)?;
    if skipped > 0 {
        log::warn!("upgrade: {skipped} FDB entries not taken over");
    }
    daemon.import_port_counters(&state.ports).map_err(text)?;
    // Every port exists: the connections are replayed, the engines attach
    // the vrings but leave them alone.
    let replayed = daemon.replay_taken_over(taken).map_err(text)?;
    log_phase(
        "new process: connections replayed, since the state came",
        since,
    );
    if prepare.protocol >= 2 {
        fail_point("adopted")?;
        channel
            .send_message("adopted", &Adopted {}, &[])
            .map_err(text)?;
        // The old process still holds everything: it may roll back until
        // it says `serve`.
        channel.recv_message::<Serve>("serve").map_err(text)?;
    }
    // The guests' frames flow from here.
    daemon.serve_taken_over(replayed).map_err(text)?;
    daemon.serve_taken_over_uplinks(uplinks).map_err(text)?;
    log_phase("new process: serving, since the state came", since);
    Ok(TakenOver {
        daemon,
        control,
        metrics,
        channel,
    })
}

/// The new process: the old one's `count` uplinks, built (their engines
/// wait for `serve`).
fn receive_uplinks(
    channel: &Channel,
    daemon: &mut Daemon,
    count: usize,
) -> Result<Vec<UplinkTakeover>, String> {
    let mut uplinks = Vec::with_capacity(count);
    for _ in 0..count {
        let (moved, fds): (UplinkMove, Vec<OwnedFd>) =
            channel.recv_message("uplink").map_err(text)?;
        let name = moved.config.name.clone();
        uplinks.push(
            daemon
                .take_over_uplink(moved, fds)
                .map_err(|e| format!("{name}: {e}"))?,
        );
        fail_point("uplink")?;
    }
    Ok(uplinks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protocol_1_peer_is_read_as_one() {
        // What a binary of protocol 1 sends: no protocol, no metrics flag.
        let hello: Hello = serde_json::from_str(r#"{"version":"0.1.0","pid":7}"#).unwrap();
        assert_eq!(hello.protocol, 1);
        let layout = serde_json::to_value(PoolConfig::small_for_tests()).unwrap();
        let config = serde_json::to_value(Config::embedded_default()).unwrap();
        let prepare: Prepare =
            serde_json::from_value(serde_json::json!({ "config": config, "pool": layout }))
                .unwrap();
        assert_eq!(prepare.protocol, 1);
        assert!(!prepare.metrics);
    }
}
