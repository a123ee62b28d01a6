//! The daemon's two halves of an upgrade (docs/upgrade.md). The old process
//! stops every vNIC at once and exports it: its connection paused between
//! two vhost-user messages, its engines' state, the frames waiting for its
//! guest, with the FDB and every free frame of the shared pool. The new
//! process adds each vNIC from that export: the same sockets and streams,
//! engines that continue from the old ones, and those frames first.
//!
//! All vNICs stop together, so the blackout is the whole daemon's, not one
//! engine's at a time as the design goes on to (bridges, then the switch
//! last): this is the first step that moves a whole daemon.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::uplink_handover::{port_name, ExportedUplink};
use super::{place_engines, take_out_of, Daemon, DaemonError, ENGINE_CALL_TIMEOUT};
use crate::control::config::{Config, VnicConfig};
use crate::packet::{FrameHandle, FramePool, LinkRx, LinkTx, PoolConfig};
use crate::switch::fdb::FdbEntryState;
use crate::switch::{PortCounters, PortDrop, PortId};
use crate::upgrade::bridge::WireHandle;
use crate::upgrade::frame_set::FreeFrames;
use crate::upgrade::vnic_handover::{
    adopt_vnic, export_vnic, pause_vnic, replay_vnic, PausedVnic, ReplayedVnic, VnicHandover,
};
use crate::vnic::connection::PausedHandler;
use crate::vnic::stats::CountersState;
use crate::vnic::{Connection, EngineSink, VnicDevice, VnicEngine};

/// How long the switch may take to forward what the stopped engines sent.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// One vNIC as an upgrade moves it (its fds travel beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VnicMove {
    pub config: VnicConfig,
    pub handover: VnicHandover,
    /// Per queue pair, the frames that waited for the guest, in order.
    pub for_guest: Vec<Vec<WireHandle>>,
    /// When the vNIC's engines began to stop (CLOCK_MONOTONIC ns): its
    /// blackout ends when the new process's engines serve its vrings.
    #[serde(default)]
    pub stopped_ns: Option<u64>,
}

/// What the old process hands over beside its vNICs, once they stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonState {
    /// Every free frame; empty when `free` holds them (protocol 5).
    #[serde(default)]
    pub free_small: Vec<u32>,
    #[serde(default)]
    pub free_large: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free: Option<FreeFrames>,
    pub fdb: Vec<FdbEntryState>,
    /// How many vNIC messages follow.
    pub vnics: usize,
    /// How many uplink messages follow the vNICs' (protocol 3).
    #[serde(default)]
    pub uplinks: usize,
    /// Each vNIC's switch port counters, by vNIC name: they continue.
    #[serde(default)]
    pub ports: Vec<(String, CountersState)>,
}

/// A vNIC the old process exported: the message and its fds for the new
/// process, and what the old one keeps until the commit.
pub struct ExportedVnic {
    pub moved: VnicMove,
    pub fds: Vec<OwnedFd>,
    connection: Connection,
    handler: Option<PausedHandler>,
}

/// Everything the old process exported.
pub struct UpgradeExport {
    pub state: DaemonState,
    pub vnics: Vec<ExportedVnic>,
    pub uplinks: Vec<ExportedUplink>,
    /// When the first engine began to stop.
    pub stopped_at: Instant,
}

impl UpgradeExport {
    /// The new process serves every vNIC: the old copies of the
    /// connections go, with no hang-up and no socket unlinked.
    pub fn commit(self) {
        for v in self.vnics {
            drop(v.handler);
            v.connection.release();
        }
        for u in self.uplinks {
            u.commit();
        }
    }
}

/// Why an export failed.
#[derive(Debug)]
pub struct UpgradeRefused {
    pub error: DaemonError,
    /// True: nothing was taken apart, the daemon serves on as before.
    /// False: vNICs were taken apart and this daemon cannot serve them.
    pub serving: bool,
}

/// A vNIC coming over from the old process (see [`Daemon::take_over_vnic`]).
pub struct VnicTakeover {
    pub(super) handover: VnicHandover,
    fds: Vec<OwnedFd>,
    for_guest: Vec<Vec<FrameHandle>>,
    /// When the old process stopped the vNIC's engines (CLOCK_MONOTONIC ns).
    stopped_ns: Option<u64>,
    /// Moving step by step: no port on this switch yet; the switch's ends
    /// of its links (from, to the engine) come back in `switch_ends`.
    pub(super) bridged: bool,
    pub(super) switch_ends: Vec<(LinkRx, LinkTx)>,
}

impl VnicTakeover {
    /// Queue pair `q`'s engine continues from the old one's state, and the
    /// frames that waited for the guest go first on the link to it.
    pub(super) fn continue_queue(
        &mut self,
        q: usize,
        engine: &mut VnicEngine,
        to_engine: &mut LinkTx,
        pool: &Arc<FramePool>,
    ) {
        if let Some(state) = self.handover.engines.get(q) {
            engine.take_over(state);
        }
        let Some(frames) = self.for_guest.get_mut(q) else {
            return;
        };
        let mut lost = 0;
        for frame in frames.drain(..) {
            if let Err(frame) = to_engine.push(frame) {
                pool.cache().free(frame);
                lost += 1;
            }
        }
        if lost > 0 {
            log::warn!(
                "{}: {lost} frames for the guest did not fit",
                self.handover.name
            );
        }
    }

    /// The old process's connection, replayed to a handler of this one
    /// that does not serve yet.
    fn replay(self, device: &Arc<VnicDevice<EngineSink>>) -> Result<ReplayedTakeover, DaemonError> {
        ReplayedTakeover::replay_to(device, self.handover, self.fds, self.stopped_ns)
    }
}

/// A taken-over vNIC whose connection is replayed, waiting for the old
/// process to let go ([`Daemon::serve_taken_over`]).
pub struct ReplayedTakeover {
    name: String,
    replayed: ReplayedVnic,
    stopped_ns: Option<u64>,
}

impl ReplayedTakeover {
    /// `handover`'s connection replayed to a handler of `device` that does
    /// not serve yet.
    pub(super) fn replay_to(
        device: &Arc<VnicDevice<EngineSink>>,
        handover: VnicHandover,
        fds: Vec<OwnedFd>,
        stopped_ns: Option<u64>,
    ) -> Result<Self, DaemonError> {
        let replayed = replay_vnic(&handover, fds, device, ENGINE_CALL_TIMEOUT)
            .map_err(|e| DaemonError::Upgrade(e.to_string()))?;
        Ok(ReplayedTakeover {
            name: handover.name,
            replayed,
            stopped_ns,
        })
    }

    /// The vNIC's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the old process stopped the vNIC's engines (its blackout).
    pub(super) fn stopped(mut self, stopped_ns: Option<u64>) -> Self {
        self.stopped_ns = stopped_ns;
        self
    }
}

/// Logs a step of an upgrade with the time since `since` (in the old
/// process, the vNICs beginning to stop).
pub fn log_phase(what: &str, since: Instant) {
    log::info!(
        "upgrade: {what}: {:.2} ms",
        since.elapsed().as_secs_f64() * 1e3
    );
}

pub(super) fn refused(what: impl std::fmt::Display) -> UpgradeRefused {
    UpgradeRefused {
        error: DaemonError::Upgrade(what.to_string()),
        serving: true,
    }
}

impl Daemon {
    /// The old process: stops every vNIC and exports it with the rest of
    /// the state. On an error before anything was taken apart, every vNIC
    /// serves on as before ([`UpgradeRefused`]).
    pub fn export_for_upgrade(&mut self) -> Result<UpgradeExport, UpgradeRefused> {
        self.check_movable()?;
        if self.pony.is_some() {
            // Its applications' queues live in this process (docs/pony.md).
            return Err(refused(
                "Pony Express cannot be handed over yet: stop its applications and remove the pony section first",
            ));
        }
        let stopped_at = Instant::now();
        let all: Vec<usize> = (0..self.vnics.len()).collect();
        let (paused, engines) = self.stop_vnics(&all, stopped_at)?;
        let uplink_engines = match self.take_uplink_engines() {
            Ok(u) => u,
            Err(e) => {
                self.resume_vnics(&all, paused, engines);
                return Err(refused(e));
            }
        };
        log_phase("engines out of their groups", stopped_at);
        let pending = || {
            engines
                .iter()
                .flatten()
                .any(|e| e.frames_toward_switch() > 0)
                || uplink_engines
                    .iter()
                    .flatten()
                    .any(|e| e.frames_toward_switch() > 0)
        };
        let drained = self.drain_toward_switch(pending);
        let fdb = drained.and_then(|()| {
            log_phase("switch drained", stopped_at);
            self.switch
                .fdb_export(self.port_names().collect())
                .map_err(DaemonError::from)
        });
        let fdb = match fdb {
            Ok(f) => f,
            Err(e) => {
                self.put_back_uplink_engines(uplink_engines);
                self.resume_vnics(&all, paused, engines);
                return Err(refused(e));
            }
        };
        // The switch has settled: its published counters are its own.
        let ports = self.port_states();
        let mut vnics = Vec::with_capacity(self.vnics.len());
        for (i, (p, e)) in paused.into_iter().zip(engines).enumerate() {
            vnics.push(self.export_stopped(i, p, e)?);
        }
        let uplinks = self
            .export_uplinks(uplink_engines)
            .map_err(|error| UpgradeRefused {
                error,
                serving: false,
            })?;
        let (free_small, free_large) = self.take_every_free_frame();
        log_phase("exported", stopped_at);
        Ok(UpgradeExport {
            state: DaemonState {
                free_small,
                free_large,
                free: None,
                fdb,
                vnics: vnics.len(),
                uplinks: uplinks.len(),
                ports,
            },
            vnics,
            uplinks,
            stopped_at,
        })
    }

    /// Refuses an upgrade that could not finish, before anything stops.
    pub fn check_movable(&self) -> Result<(), UpgradeRefused> {
        if self.switch.shard_count() > 1 {
            // Frames waiting in the peer links between shards are not
            // drained yet.
            return Err(refused("a sharded switch is not handed over yet"));
        }
        if let Some(u) = self.uplinks.iter().find(|u| !u.program.can_hand_over()) {
            return Err(refused(format!(
                "uplink {}: its XDP program was attached without a bpf_link (kernel before 5.9), which cannot be handed over",
                u.config.name
            )));
        }
        Ok(())
    }

    /// Pauses vNICs `which` (side by side, one thread each: a pause waits
    /// for the handler's thread and for the engines to let go of the
    /// vrings, and every vNIC's blackout begins with its own pause) and
    /// takes their engines out of their groups. On an error every one of
    /// them serves on.
    pub(super) fn stop_vnics(
        &mut self,
        which: &[usize],
        stopped_at: Instant,
    ) -> Result<(Vec<PausedVnic>, Vec<Vec<VnicEngine>>), UpgradeRefused> {
        let vnics = &self.vnics;
        let results = side_by_side(which.iter().map(|&i| &vnics[i]), |v| {
            match v.connection.as_ref() {
                Some(c) => {
                    pause_vnic(&v.config.name, c, &v.device, ENGINE_CALL_TIMEOUT).map_err(refused)
                }
                None => Err(refused(format!("{} has no connection", v.config.name))),
            }
        });
        if results.iter().any(Result::is_err) {
            // Where a pause panicked, nobody knows what it left paused.
            return Err(UpgradeRefused {
                error: DaemonError::Upgrade("a vNIC's pause panicked".into()),
                serving: false,
            });
        }
        let results: Vec<Result<PausedVnic, UpgradeRefused>> =
            results.into_iter().flatten().collect();
        if results.iter().any(Result::is_err) {
            // A vNIC whose pause failed resumed by itself.
            let mut error = None;
            for (&i, r) in which.iter().zip(results) {
                match r {
                    Ok(p) => self.resume_vnic(i, p, None),
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
            }
            return Err(error.expect("one failed"));
        }
        let paused: Vec<PausedVnic> = results.into_iter().flatten().collect();
        log_phase("handlers paused", stopped_at);
        let mut engines: Vec<Vec<VnicEngine>> = Vec::with_capacity(which.len());
        for &i in which {
            match self.take_engines(i) {
                Ok(e) => engines.push(e),
                Err(e) => {
                    self.resume_vnics(which, paused, engines);
                    return Err(refused(e));
                }
            }
        }
        Ok((paused, engines))
    }

    /// Exports stopped vNIC `i` (its engines' frames toward the switch
    /// taken by it): its connection leaves `self.vnics[i]`, the frames that
    /// waited for its guest are taken from its links, which stay in the
    /// export.
    pub(super) fn export_stopped(
        &mut self,
        i: usize,
        p: PausedVnic,
        e: Vec<VnicEngine>,
    ) -> Result<ExportedVnic, UpgradeRefused> {
        let v = &mut self.vnics[i];
        let connection = v.connection.take().expect("checked by stop_vnics");
        let stopped_ns = p.engines_stopping_ns;
        let name = v.config.name.clone();
        // Only duplicating fds or making links can fail here, before
        // anything is taken apart.
        let (handover, fds, exported) = export_vnic(&name, p.handler, connection.listener(), e)
            .map_err(|failed| UpgradeRefused {
                error: DaemonError::Upgrade(failed.error.to_string()),
                serving: false,
            })?;
        let for_guest = exported
            .links
            .into_iter()
            .map(|(_, mut from_switch)| {
                std::iter::from_fn(|| from_switch.pop())
                    .map(WireHandle::from_frame)
                    .collect()
            })
            .collect();
        Ok(ExportedVnic {
            moved: VnicMove {
                config: v.config.clone(),
                handover,
                for_guest,
                stopped_ns: Some(stopped_ns),
            },
            fds,
            connection,
            handler: exported.handler,
        })
    }

    /// The old process, when the new one failed before it touched any
    /// guest's ring: takes its own export back the way a new process takes
    /// it over (the same sockets and streams, engines that continue from
    /// the exported state, the frames for the guests first, the free frames
    /// and the FDB), then lets go of the paused copies. The guests see a
    /// longer blackout and nothing else.
    pub fn roll_back_upgrade(&mut self, export: UpgradeExport) -> Result<(), DaemonError> {
        let mut paused = Vec::with_capacity(export.vnics.len());
        let mut moves = Vec::with_capacity(export.vnics.len());
        for v in export.vnics {
            paused.push((v.connection, v.handler));
            moves.push((v.moved, v.fds));
        }
        let result = self.take_back(export.state, moves, export.uplinks);
        // Taken back or not, the paused copies go without a hang-up: a
        // failed rollback ends this process, and the guests' sockets with it.
        for (connection, handler) in paused {
            drop(handler);
            connection.release();
        }
        result
    }

    fn take_back(
        &mut self,
        state: DaemonState,
        moves: Vec<(VnicMove, Vec<OwnedFd>)>,
        uplinks: Vec<ExportedUplink>,
    ) -> Result<(), DaemonError> {
        self.take_free_frames(&state)?;
        let mut taken = Vec::with_capacity(moves.len());
        for (moved, fds) in moves {
            // Its connection is in the export: no socket is closed or
            // removed, the port and the (emptied) engines go.
            self.remove_vnic(&moved.config.name)?;
            taken.push(self.take_over_vnic(moved, fds)?);
        }
        let uplinks = self.take_back_uplinks(uplinks)?;
        let skipped = self.import_fdb(state.fdb)?;
        if skipped > 0 {
            log::warn!("upgrade rollback: {skipped} FDB entries not taken back");
        }
        self.import_port_counters(&state.ports)?;
        let replayed = self.replay_taken_over(taken)?;
        self.serve_taken_over(replayed)?;
        self.serve_taken_over_uplinks(uplinks)
    }

    /// Every free frame, for the new process: the switch's caches first go
    /// back to the pool.
    pub(super) fn take_every_free_frame(&self) -> (Vec<u32>, Vec<u32>) {
        if let Err(e) = self.switch.release_caches() {
            log::warn!("upgrade: switch caches not released ({e}): their frames stay here");
        }
        self.pool.take_free(usize::MAX, usize::MAX)
    }

    /// Every port's counters, by the name an upgrade carries it under.
    pub(super) fn port_states(&self) -> Vec<(String, CountersState)> {
        self.vnics
            .iter()
            .map(|v| (v.config.name.clone(), &v.port_counters))
            .chain(
                self.uplinks
                    .iter()
                    .map(|u| (port_name(&u.config.name), &u.port_counters)),
            )
            .map(|(name, c)| (name, port_state(&c.snapshot())))
            .collect()
    }

    /// Every port's name as an upgrade carries it, by port id.
    pub(super) fn port_names(&self) -> impl Iterator<Item = (PortId, String)> + '_ {
        self.vnics
            .iter()
            .map(|v| (v.port, v.config.name.clone()))
            .chain(
                self.uplinks
                    .iter()
                    .map(|u| (u.port, port_name(&u.config.name))),
            )
    }

    /// Takes the engines of vNIC `i` out of their group.
    fn take_engines(&mut self, i: usize) -> Result<Vec<VnicEngine>, DaemonError> {
        let group = self.config.group_of(&self.vnics[i].config).to_string();
        let group = self.shared_group(&group)?;
        take_out_of(&group, &mut self.vnics[i].engines)
    }

    /// Waits until the switch has taken and forwarded everything the
    /// stopped engines sent (`pending`: whether some of it waits still).
    pub(super) fn drain_toward_switch(
        &self,
        pending: impl Fn() -> bool,
    ) -> Result<(), DaemonError> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while pending() {
            if Instant::now() > deadline {
                return Err(DaemonError::Upgrade(
                    "the switch did not take the stopped engines' frames".into(),
                ));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(self.switch.settle()?)
    }

    /// Puts back what an upgrade that did not start had stopped.
    pub(super) fn resume_vnics(
        &mut self,
        which: &[usize],
        paused: Vec<PausedVnic>,
        engines: Vec<Vec<VnicEngine>>,
    ) {
        let mut engines = engines.into_iter();
        for (&i, p) in which.iter().zip(paused) {
            self.resume_vnic(i, p, engines.next());
        }
    }

    /// Puts vNIC `i` back: its engines (if they were taken), its vrings and
    /// its handler.
    fn resume_vnic(&mut self, i: usize, p: PausedVnic, engines: Option<Vec<VnicEngine>>) {
        let name = self.vnics[i].config.name.clone();
        if let Some(e) = engines {
            let group = self.config.group_of(&self.vnics[i].config).to_string();
            match self
                .shared_group(&group)
                .and_then(|g| place_engines(&g, e.into_iter().map(Box::new).collect(), None))
            {
                Ok(ids) => self.vnics[i].engines = ids,
                Err(err) => log::error!("{name}: engines not put back: {err}"),
            }
        }
        let v = &self.vnics[i];
        if let Err(e) = v.device.take_back_vrings() {
            log::error!("{name}: vrings not taken back: {e}");
        }
        if let Some(c) = v.connection.as_ref() {
            c.resume(p.handler);
        }
    }

    /// The new process, while the old one still serves: the groups and
    /// switch of `cfg` (the old process's configuration as it stands) on
    /// the pool the old process's `memfd` holds, with no free frame and no
    /// vNIC yet.
    pub fn start_taking_over(
        cfg: &Config,
        layout: &PoolConfig,
        memfd: OwnedFd,
    ) -> Result<Self, DaemonError> {
        cfg.validate()?;
        // The old pool's own layout: the configuration may have changed
        // since it was sized (vNICs added or removed at run time).
        let pool = FramePool::attach(layout, memfd)?;
        Self::start_on_pool(cfg, pool)
    }

    /// Half of this process's free frames, for the other side, which
    /// speaks hand-over `protocol` (the frames of a guest's traffic are
    /// freed where it ends, so either side may run low).
    pub fn free_share(&self, protocol: u32) -> FreeFrames {
        let (small, large) = self.pool.free_frames();
        let (small, large) = self.pool.take_free(small / 2, large / 2);
        FreeFrames::new(small, large, protocol)
    }

    /// Free frames the other side handed over.
    pub fn take_free_share(&self, share: &FreeFrames) -> Result<(), DaemonError> {
        let (small, large) = share
            .frames()
            .map_err(|e| DaemonError::Upgrade(format!("free frames: {e}")))?;
        Ok(self.pool.give_free(&small, &large)?)
    }

    /// The new process: the free frames the old one handed over.
    pub fn take_free_frames(&self, state: &DaemonState) -> Result<(), DaemonError> {
        self.pool.give_free(&state.free_small, &state.free_large)?;
        state
            .free
            .as_ref()
            .map_or(Ok(()), |f| self.take_free_share(f))
    }

    /// The new process: adds a vNIC the old process exported, all but its
    /// connection, which [`Self::connect_taken_over`] replays once every
    /// vNIC is there.
    pub fn take_over_vnic(
        &mut self,
        moved: VnicMove,
        fds: Vec<OwnedFd>,
    ) -> Result<VnicTakeover, DaemonError> {
        self.take_over_vnic_as(moved, fds, false)
    }

    /// [`Self::take_over_vnic`], with no switch port when `bridged`.
    pub(super) fn take_over_vnic_as(
        &mut self,
        moved: VnicMove,
        fds: Vec<OwnedFd>,
        bridged: bool,
    ) -> Result<VnicTakeover, DaemonError> {
        if moved.handover.engines.len() != usize::from(moved.config.queue_pairs) {
            return Err(DaemonError::Upgrade(format!(
                "{}: {} engine states for {} queue pairs",
                moved.config.name,
                moved.handover.engines.len(),
                moved.config.queue_pairs
            )));
        }
        let for_guest = moved
            .for_guest
            .iter()
            .map(|q| q.iter().filter_map(|w| w.into_frame(&self.pool)).collect())
            .collect();
        let takeover = VnicTakeover {
            handover: moved.handover,
            fds,
            for_guest,
            stopped_ns: moved.stopped_ns,
            bridged,
            switch_ends: Vec::new(),
        };
        let name = moved.config.name.clone();
        self.add_vnic_with(moved.config, Some(takeover))?
            .ok_or_else(|| DaemonError::Upgrade(format!("{name}: no connection to take over")))
    }

    /// The new process: the taken-over vNICs' connections replayed, every
    /// port existing, nothing served yet: the old process can still take
    /// them back, as no guest ring and no frontend message was touched.
    ///
    /// The replays run side by side, one thread each: a replay spends most
    /// of its time waiting (for its engines to attach a vring, for a
    /// thread to be scheduled), and a daemon's blackout would otherwise
    /// grow by a whole replay per vNIC.
    pub fn replay_taken_over(
        &mut self,
        taken: Vec<VnicTakeover>,
    ) -> Result<Vec<ReplayedTakeover>, DaemonError> {
        let at = taken
            .iter()
            .map(|t| self.vnic_index(&t.handover.name))
            .collect::<Result<Vec<_>, _>>()?;
        let vnics = &self.vnics;
        side_by_side(taken.into_iter().zip(&at), |(t, &i)| {
            t.replay(&vnics[i].device)
        })
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| Err(DaemonError::Upgrade("a replay panicked".into()))))
        .collect()
    }

    /// The new process, once the old one has let go: the replayed vNICs
    /// serve their guests (what they posted during the blackout first) and
    /// their frontends' streams.
    pub fn serve_taken_over(&mut self, replayed: Vec<ReplayedTakeover>) -> Result<(), DaemonError> {
        let at = replayed
            .iter()
            .map(|r| self.vnic_index(&r.name))
            .collect::<Result<Vec<_>, _>>()?;
        let vnics = &self.vnics;
        let served = side_by_side(replayed.into_iter().zip(&at), |(r, &i)| {
            let v = &vnics[i];
            let (connection, serving) = adopt_vnic(&r.name, r.replayed, &v.device, &v.socket)
                .map_err(|e| DaemonError::Upgrade(e.to_string()))?;
            // From its old engines beginning to stop to its new ones
            // serving the guest's vrings again.
            let serving_ns = crate::upgrade::monotonic_ns()
                .saturating_sub(serving.elapsed().as_nanos().try_into().unwrap_or(u64::MAX));
            let blackout = r
                .stopped_ns
                .map(|s| Duration::from_nanos(serving_ns.saturating_sub(s)));
            Ok((connection, blackout))
        })
        .into_iter()
        .map(|r| r.unwrap_or_else(|_| Err(DaemonError::Upgrade("an adoption panicked".into()))));
        let mut first_error = None;
        for (i, c) in at.into_iter().zip(served) {
            match c {
                Ok((c, blackout)) => {
                    self.vnics[i].connection = Some(c);
                    self.vnics[i].upgrade_blackout = blackout;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Each vNIC's blackout in the upgrade that brought it here: from its
    /// engines beginning to stop in the old process to the last of its
    /// engines here serving the guest's vrings.
    pub fn upgrade_blackouts(&self) -> Vec<(String, Duration)> {
        self.vnics
            .iter()
            .filter_map(|v| Some((v.config.name.clone(), v.upgrade_blackout?)))
            .collect()
    }

    /// The new process (or a rollback): the switch port counters the old
    /// one handed over, ports found by vNIC name; they continue.
    pub fn import_port_counters(
        &self,
        ports: &[(String, CountersState)],
    ) -> Result<(), DaemonError> {
        let ids: HashMap<String, PortId> = self.port_names().map(|(id, n)| (n, id)).collect();
        for (name, state) in ports {
            if let Some(id) = ids.get(name) {
                self.switch.add_port_counters(*id, port_counters(state))?;
            }
        }
        Ok(())
    }

    /// The new process: the old one's FDB, ports found by vNIC name.
    /// Returns the entries not taken.
    pub fn import_fdb(&self, entries: Vec<FdbEntryState>) -> Result<usize, DaemonError> {
        let ids = self.port_names().map(|(id, n)| (n, id)).collect();
        Ok(self.switch.fdb_import(entries, ids)?)
    }
}

/// Runs `f` on every item, each in a thread of its own, and returns the
/// results in order (a panic as its payload). An item whose thread cannot
/// be created (a task limit, memory) runs on this thread instead: slower,
/// never skipped.
fn side_by_side<T, R>(
    items: impl IntoIterator<Item = T>,
    f: impl Fn(T) -> R + Sync,
) -> Vec<std::thread::Result<R>>
where
    T: Send,
    R: Send,
{
    let mut items: Vec<T> = items.into_iter().collect();
    if items.len() == 1 {
        // One item (a step-by-step upgrade's vNIC): no thread to wait for.
        let item = items.pop().expect("one");
        return vec![std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || f(item),
        ))];
    }
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let take = |slot: &Mutex<Option<T>>| {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each item runs once")
    };
    let f = &f;
    std::thread::scope(|s| {
        let threads: Vec<_> = slots
            .iter()
            .map(|slot| {
                std::thread::Builder::new()
                    .name("snapnet-upgrade".into())
                    .spawn_scoped(s, move || f(take(slot)))
                    .ok()
            })
            .collect();
        threads
            .into_iter()
            .zip(&slots)
            .map(|(thread, slot)| match thread {
                Some(t) => t.join(),
                None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(take(slot)))),
            })
            .collect()
    })
}

/// A switch port's counters as the handoff carries them: the vNIC queue
/// counters' shape, drops by name.
pub(super) fn port_state(c: &PortCounters) -> CountersState {
    CountersState {
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        backpressure: c.backpressure,
        drops: CountersState::name_drops(PortDrop::ALL.iter().map(|r| (r.as_str(), c.dropped(*r)))),
    }
}

/// The reverse of [`port_state`].
fn port_counters(s: &CountersState) -> PortCounters {
    let mut c = PortCounters {
        tx_packets: s.tx_packets,
        tx_bytes: s.tx_bytes,
        rx_packets: s.rx_packets,
        rx_bytes: s.rx_bytes,
        backpressure: s.backpressure,
        ..PortCounters::default()
    };
    s.add_drops_to(&mut c.drops, |name| {
        PortDrop::ALL
            .iter()
            .find(|r| r.as_str() == name)
            .map(|r| *r as usize)
    });
    c
}

#[cfg(test)]
mod tests {
    use super::side_by_side;

    #[test]
    fn port_counters_cross_by_name() {
        use super::{port_counters, port_state};
        use crate::switch::{PortCounters, PortDrop};
        let mut c = PortCounters {
            rx_packets: 1,
            rx_bytes: 2,
            tx_packets: 3,
            tx_bytes: 4,
            backpressure: 5,
            ..PortCounters::default()
        };
        c.drops[PortDrop::NoRoute as usize] = 6;
        let mut state = port_state(&c);
        assert_eq!(state.drops.len(), 1, "only reasons that counted");
        assert_eq!(port_counters(&state), c);
        state.drops.insert("from_a_newer_release".into(), 7);
        assert_eq!(port_counters(&state), c, "an unknown reason is left out");
    }

    #[test]
    fn side_by_side_keeps_the_order_and_reports_panics() {
        let out = side_by_side(0..8u32, |i| {
            assert!(i != 5, "five panics");
            std::thread::sleep(std::time::Duration::from_millis(u64::from(8 - i)));
            i * 10
        });
        assert_eq!(out.len(), 8);
        for (i, r) in out.into_iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(v, i as u32 * 10),
                Err(_) => assert_eq!(i, 5),
            }
        }
    }
}
