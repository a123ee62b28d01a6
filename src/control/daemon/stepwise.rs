//! The step-by-step upgrade (hand-over protocol 4, docs/upgrade.md): the
//! vNICs move to the new process one at a time, each with a blackout of
//! its own, while the switch (and the uplinks) stay in the old process;
//! the switch moves last.
//!
//! A vNIC's step: the old process stops and exports it as a whole-daemon
//! upgrade exports every vNIC, but alone, and its old switch port stays.
//! The new process builds it without a port of its own switch: its
//! engines' links go to a bridge engine whose rings reach a bridge engine
//! in the old process, on the old port's links. Its guest's frames cross
//! between the processes that way until the switch moves: the old process
//! stops its bridges, uplinks and switch once the new one stopped its
//! bridges, and hands over what is in flight per vNIC, in order, with the
//! FDB, the counters and the uplinks. The new process then gives each vNIC
//! a port of its own switch: the frames for the guest go first on the link
//! to its engine, and the engine itself sends the frames it had sent
//! toward the bridge on through the new port's link before anything it
//! sends next (`VnicEngine::send_over`), so nothing is lost, duplicated or
//! reordered.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::handover::{refused, DaemonState, UpgradeExport, UpgradeRefused};
use super::take_out_of;
use super::{place_engines, Daemon, DaemonError, ENGINE_CALL_TIMEOUT, LINK_CAPACITY};
use crate::packet::{link, FrameHandle, LinkRx, LinkTx};
use crate::sched::{EngineGroup, EngineId};
use crate::switch::{PortNetwork, SwitchPort};
use crate::upgrade::bridge::{consumer, producer, BridgeRx, WireHandle};
use crate::upgrade::bridge_engine::{BridgeEngine, Lane};
use crate::upgrade::frame_set::FreeFrames;
use crate::upgrade::preview::{continue_engines, preview_running, reposition, unchanged_since};
use crate::upgrade::vnic_handover::{preview_vnic, PausedVnic, VnicHandover};
use crate::vnic::VnicEngine;

use super::handover::ReplayedTakeover;

/// What crosses for one vNIC when the switch moves: per queue pair, the
/// frames its engine had sent that no switch took yet, and those the old
/// switch had forwarded to it that did not reach the new engine yet,
/// oldest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VnicFrames {
    pub name: String,
    pub toward_switch: Vec<Vec<WireHandle>>,
    pub for_guest: Vec<Vec<WireHandle>>,
}

/// One vNIC's step in the old process: its handler paused and its
/// engines out of their group but whole (until the new process has built
/// the vNIC, it can serve on here), the message for the new process with
/// its fds, half the free frames, and the rings its bridge will receive on
/// (one per queue pair).
pub struct VnicStep {
    index: usize,
    paused: Option<PausedVnic>,
    engines: Vec<VnicEngine>,
    pub moved: super::VnicMove,
    pub fds: Vec<OwnedFd>,
    pub share: FreeFrames,
    rings_in: Vec<BridgeRx>,
    /// When its engines began to stop.
    pub stopped_at: Instant,
}

impl VnicStep {
    /// The rings' fds for the new process: per queue pair, the ring and
    /// its wake-up eventfd.
    pub fn ring_fds(&self) -> Vec<BorrowedFd<'_>> {
        self.rings_in
            .iter()
            .flat_map(|r| [r.ring_fd(), r.wake_fd()])
            .collect()
    }
}

/// The old process's part of the switch move.
pub struct SwitchMove {
    pub export: UpgradeExport,
    pub frames: Vec<VnicFrames>,
}

/// A bridged vNIC in the new process, until the switch moves.
pub(super) struct NewBridge {
    name: String,
    group: String,
    /// Before the vNIC serves: the engine; after: its id in the group.
    engine: Option<BridgeEngine>,
    id: Option<EngineId>,
    /// Once stopped for the switch move.
    lanes: Vec<Lane>,
}

/// A vNIC the new process built and replayed, gated, from the old one's
/// preview in the brownout (protocol 6), until its step.
pub(super) struct PreparedStep {
    preview: VnicHandover,
    /// Copies of the preview's fds, to tell whether the step's are the
    /// same files.
    fds: Vec<OwnedFd>,
    replayed: ReplayedTakeover,
    /// The switch's ends of its engines' links (for its bridge).
    switch_ends: Vec<(LinkRx, LinkTx)>,
}

/// Every engine group of a daemon sharing its CPUs with the other
/// process's (`EngineGroup::share_cpus`) until dropped: a step waits for
/// engine threads of both processes, which run on the same CPUs.
pub struct SharedCpus(Vec<Arc<EngineGroup>>);

impl Drop for SharedCpus {
    fn drop(&mut self) {
        for g in &self.0 {
            g.share_cpus(false);
        }
    }
}

/// The producers of a bridge's rings toward the peer, from its fds (a ring
/// and a wake-up eventfd per queue pair).
fn producers(
    fds: Vec<OwnedFd>,
    queues: usize,
) -> Result<Vec<crate::upgrade::bridge::BridgeTx>, DaemonError> {
    if fds.len() != 2 * queues {
        return Err(DaemonError::Upgrade(format!(
            "{} bridge fds for {queues} queue pairs",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    (0..queues)
        .map(|_| {
            let (ring, wake) = (fds.next().expect("counted"), fds.next().expect("counted"));
            producer(ring, wake).map_err(|e| DaemonError::Upgrade(format!("bridge ring: {e}")))
        })
        .collect()
}

fn consumers(queues: usize) -> Result<Vec<BridgeRx>, DaemonError> {
    (0..queues)
        .map(|_| {
            consumer(LINK_CAPACITY as u32)
                .map_err(|e| DaemonError::Upgrade(format!("bridge ring: {e}")))
        })
        .collect()
}

impl Daemon {
    /// Its engine groups share their CPUs with the other process's until
    /// the guard drops.
    pub fn share_cpus(&self) -> SharedCpus {
        let groups: Vec<_> = self.groups.iter().map(|g| g.group.clone()).collect();
        for g in &groups {
            g.share_cpus(true);
        }
        SharedCpus(groups)
    }

    /// The old process, in the brownout (protocol 6): vNIC `name` as it
    /// stands, for the new process to prepare while it serves on here.
    pub fn preview_vnic_step(
        &self,
        name: &str,
    ) -> Result<(super::VnicMove, Vec<OwnedFd>), DaemonError> {
        let v = &self.vnics[self.vnic_index(name)?];
        let c = v
            .connection
            .as_ref()
            .ok_or_else(|| DaemonError::Upgrade(format!("{name} has no connection")))?;
        let queues = usize::from(v.config.queue_pairs);
        let (handover, fds) = preview_running(name, c, c.listener(), queues, ENGINE_CALL_TIMEOUT)
            .map_err(|e| DaemonError::Upgrade(e.to_string()))?;
        let moved = super::VnicMove {
            config: v.config.clone(),
            handover,
            for_guest: vec![Vec::new(); queues],
            stopped_ns: None,
        };
        Ok((moved, fds))
    }

    /// The new process, in the brownout: builds and replays a previewed
    /// vNIC, its engines gated, for its step
    /// ([`Self::take_over_vnic_step`]).
    pub fn prepare_vnic_step(
        &mut self,
        moved: super::VnicMove,
        fds: Vec<OwnedFd>,
    ) -> Result<(), DaemonError> {
        let copies = fds
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(super::io("fd"))?;
        let preview = moved.handover.clone();
        let mut takeover = self.take_over_vnic_as(moved, fds, true)?;
        let switch_ends = std::mem::take(&mut takeover.switch_ends);
        let replayed = self.replay_taken_over(vec![takeover])?.pop().expect("one");
        self.prepared_steps.push(PreparedStep {
            preview,
            fds: copies,
            replayed,
            switch_ends,
        });
        Ok(())
    }

    /// The old process: stops vNIC `name` alone and prepares its step. Its
    /// switch port stays, and the frames for its guest wait in its links.
    /// On an error it serves on as before (`serving`).
    pub fn export_vnic_step(
        &mut self,
        name: &str,
        protocol: u32,
    ) -> Result<VnicStep, UpgradeRefused> {
        let i = self.vnic_index(name).map_err(refused)?;
        let stopped_at = Instant::now();
        let (mut paused, mut engines) = self.stop_vnics(&[i], stopped_at)?;
        let (paused, engines) = (paused.pop().expect("one"), engines.pop().expect("one"));
        let v = &self.vnics[i];
        let listener = v.connection.as_ref().and_then(|c| c.listener());
        let prepared = preview_vnic(name, paused.handler.as_ref(), listener, &engines)
            .map_err(|e| DaemonError::Upgrade(e.to_string()))
            .and_then(|(handover, fds)| Ok((handover, fds, consumers(engines.len())?)));
        let (handover, fds, rings_in) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.resume_vnics(&[i], vec![paused], vec![engines]);
                return Err(refused(e));
            }
        };
        let moved = super::VnicMove {
            config: v.config.clone(),
            handover,
            // They wait in its links, which its bridge empties in order.
            for_guest: vec![Vec::new(); engines.len()],
            stopped_ns: Some(paused.engines_stopping_ns),
        };
        Ok(VnicStep {
            index: i,
            paused: Some(paused),
            engines,
            moved,
            fds,
            share: self.free_share(protocol),
            rings_in,
            stopped_at,
        })
    }

    /// The old process, when the new one failed during a step: the vNIC
    /// serves on here as if nothing happened (its engines back in their
    /// group, its vrings and handler resumed), with the free frames.
    pub fn resume_vnic_step(&mut self, mut step: VnicStep) {
        let paused = step.paused.take().expect("resumed once");
        self.resume_vnics(
            &[step.index],
            vec![paused],
            vec![std::mem::take(&mut step.engines)],
        );
        if let Err(e) = self.take_free_share(&step.share) {
            log::warn!("upgrade: free frames not taken back: {e}");
        }
    }

    /// The old process, once the new one built the vNIC of `step` and sent
    /// its bridge's rings (`to_new`): the engines are taken apart, the
    /// vNIC's old switch port is bridged to the new process over their
    /// links, and this process's copies of its connection go. On an error
    /// nothing changed, and the step comes back (to be resumed).
    pub fn bridge_vnic_step(
        &mut self,
        mut step: VnicStep,
        to_new: Vec<OwnedFd>,
    ) -> Result<(), (Box<VnicStep>, DaemonError)> {
        let queues = step.rings_in.len();
        let i = step.index;
        let name = self.vnics[i].config.name.clone();
        let ready = producers(to_new, queues).and_then(|p| {
            let spares = (0..queues)
                .map(|_| link(1))
                .collect::<Result<Vec<_>, _>>()
                .map_err(super::io("link"))?;
            Ok((p, spares))
        });
        let (to_new, spares) = match ready {
            Ok(r) => r,
            Err(e) => return Err((Box::new(step), e)),
        };
        let lanes = std::mem::take(&mut step.engines)
            .into_iter()
            .zip(spares)
            .zip(std::mem::take(&mut step.rings_in))
            .zip(to_new)
            .map(|(((engine, spare), from_new), to_new)| {
                let parts = engine.hand_over(spare);
                Lane::new(parts.from_switch, to_new, from_new, parts.to_switch)
            })
            .collect();
        let bridge = BridgeEngine::new(format!("{name}/bridge"), self.pool.clone(), lanes);
        let group = self.config.group_of(&self.vnics[i].config).to_string();
        match self
            .group(&group)
            .and_then(|g| place_engines(g, vec![Box::new(bridge)], None))
        {
            Ok(ids) => self.vnics[i].engines = ids,
            // The rings are gone with the engine: the new process's
            // bridge finds its peer silent, and the switch move finds
            // nothing of this vNIC in flight here.
            Err(e) => log::error!("{name}: bridge not placed: {e}"),
        }
        // The new process serves the guest from here: this copy goes
        // without a hang-up.
        drop(step.paused.take());
        if let Some(c) = self.vnics[i].connection.take() {
            c.release();
        }
        Ok(())
    }

    /// The new process: builds the vNIC of a step (as a taken-over one,
    /// but with its links to a bridge toward the old process's port,
    /// `to_old`: a ring fd pair per queue pair) and replays its connection,
    /// or continues the one prepared from its preview if that is still
    /// right (`trust_preview`: else it is replayed again). Returns it, not
    /// serving yet, and the fds of the rings the old process's bridge
    /// sends on.
    pub fn take_over_vnic_step(
        &mut self,
        moved: super::VnicMove,
        fds: Vec<OwnedFd>,
        to_old: Vec<OwnedFd>,
        trust_preview: bool,
    ) -> Result<(ReplayedTakeover, Vec<OwnedFd>), DaemonError> {
        let name = moved.config.name.clone();
        let queues = usize::from(moved.config.queue_pairs);
        let to_old = producers(to_old, queues)?;
        let from_old = consumers(queues)?;
        let back = from_old
            .iter()
            .flat_map(|r| [r.ring_fd(), r.wake_fd()])
            .map(|fd| fd.try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(super::io("bridge ring"))?;
        let group = self.config.group_of(&moved.config).to_string();
        let prepared = self
            .prepared_steps
            .iter()
            .position(|p| p.preview.name == name)
            .map(|k| self.prepared_steps.swap_remove(k));
        let (replayed, switch_ends) = match prepared {
            Some(p) => self.continue_prepared_step(p, moved, fds, trust_preview)?,
            None => {
                let mut takeover = self.take_over_vnic_as(moved, fds, true)?;
                let ends = std::mem::take(&mut takeover.switch_ends);
                let replayed = self.replay_taken_over(vec![takeover])?.pop();
                (replayed.expect("one"), ends)
            }
        };
        let lanes = switch_ends
            .into_iter()
            .zip(from_old)
            .zip(to_old)
            .map(|(((switch_in, switch_out), from_old), to_old)| {
                Lane::new(switch_in, to_old, from_old, switch_out)
            })
            .collect();
        self.step_bridges.push(NewBridge {
            name: name.clone(),
            group,
            engine: Some(BridgeEngine::new(
                format!("{name}/bridge"),
                self.pool.clone(),
                lanes,
            )),
            id: None,
            lanes: Vec::new(),
        });
        Ok((replayed, back))
    }

    /// A prepared vNIC at its step: its vrings and engines go on from where
    /// the old process's stopped, or, if the frontend changed anything
    /// else since the preview, its connection is replayed again (on the
    /// same device and engines, still gated).
    fn continue_prepared_step(
        &mut self,
        p: PreparedStep,
        moved: super::VnicMove,
        fds: Vec<OwnedFd>,
        trust_preview: bool,
    ) -> Result<(ReplayedTakeover, Vec<(LinkRx, LinkTx)>), DaemonError> {
        let name = moved.handover.name.clone();
        if moved.for_guest.iter().any(|q| !q.is_empty()) {
            // A step's frames for the guest wait in the old port's links.
            return Err(DaemonError::Upgrade(format!(
                "{name}: frames for the guest in a step"
            )));
        }
        let device = self.vnics[self.vnic_index(&name)?].device.clone();
        let upgrade =
            |e: crate::upgrade::vnic_handover::HandoverError| DaemonError::Upgrade(e.to_string());
        let fresh = (&moved.handover, fds.as_slice());
        let replayed = if trust_preview && unchanged_since((&p.preview, &p.fds), fresh) {
            reposition(&device, &moved.handover).map_err(upgrade)?;
            p.replayed
        } else {
            log::info!("upgrade: {name}: changed since its preview: replayed again");
            drop(p.replayed);
            device.disconnected();
            ReplayedTakeover::replay_to(&device, moved.handover.clone(), fds, None)?
        };
        continue_engines(&device, &moved.handover).map_err(upgrade)?;
        Ok((replayed.stopped(moved.stopped_ns), p.switch_ends))
    }

    /// The new process, told to serve a step's vNIC: its guest's rings and
    /// its bridge.
    pub fn serve_vnic_step(&mut self, replayed: ReplayedTakeover) -> Result<(), DaemonError> {
        let name = replayed.name().to_string();
        self.serve_taken_over(vec![replayed])?;
        let b = self
            .step_bridges
            .iter_mut()
            .find(|b| b.name == name)
            .ok_or_else(|| DaemonError::Upgrade(format!("{name}: no bridge")))?;
        let engine = b.engine.take().expect("placed once");
        let group = self
            .groups
            .iter()
            .find(|g| g.config.name == b.group)
            .map(|g| g.group.clone())
            .ok_or_else(|| DaemonError::NotFound(format!("engine group '{}'", b.group)))?;
        b.id = place_engines(&group, vec![Box::new(engine)], None)?.pop();
        Ok(())
    }

    /// The new process, before the switch moves: every bridge stops (the
    /// old process may then empty the rings toward it).
    pub fn stop_step_bridges(&mut self) -> Result<(), DaemonError> {
        for i in 0..self.step_bridges.len() {
            let group = self.shared_group(&self.step_bridges[i].group.clone())?;
            let b = &mut self.step_bridges[i];
            let mut ids: Vec<EngineId> = b.id.take().into_iter().collect();
            let engine: BridgeEngine = take_out_of(&group, &mut ids)?
                .pop()
                .ok_or_else(|| DaemonError::Upgrade(format!("{}: no bridge", b.name)))?;
            b.lanes = engine.into_lanes();
        }
        Ok(())
    }

    /// The old process, once the new one stopped its bridges: stops its
    /// own bridges, the uplinks and (having let it forward what they sent)
    /// the switch, and exports what is in flight with the FDB, the port
    /// counters, the uplinks and every free frame.
    pub fn export_switch_move(&mut self, protocol: u32) -> Result<SwitchMove, DaemonError> {
        let stopped_at = Instant::now();
        let mut held = Vec::with_capacity(self.vnics.len());
        for i in 0..self.vnics.len() {
            let group = self.config.group_of(&self.vnics[i].config).to_string();
            let group = self.shared_group(&group)?;
            let bridge: BridgeEngine = take_out_of(&group, &mut self.vnics[i].engines)?
                .pop()
                .ok_or_else(|| {
                    DaemonError::Upgrade(format!("{}: no bridge", self.vnics[i].config.name))
                })?;
            let mut queues = Vec::new();
            for mut lane in bridge.into_lanes() {
                let (for_peer, for_switch) = lane.take_held();
                // Sent by the new engine, not taken by the switch: the
                // new process's switch takes them first.
                let toward_switch: Vec<FrameHandle> = for_switch
                    .into_iter()
                    .chain(lane.drain_peer(&self.pool))
                    .collect();
                let (from_switch, to_switch) = lane.into_links();
                queues.push((toward_switch, for_peer, from_switch, to_switch));
            }
            held.push(queues);
        }
        let uplink_engines = self.take_uplink_engines()?;
        super::log_phase("switch move: engines out of their groups", stopped_at);
        self.drain_toward_switch(|| {
            held.iter()
                .flatten()
                .any(|(_, _, _, to_switch)| to_switch.pending() > 0)
                || uplink_engines
                    .iter()
                    .flatten()
                    .any(|e| e.frames_toward_switch() > 0)
        })?;
        let fdb = self.switch.fdb_export(self.port_names().collect())?;
        let ports = self.port_states();
        let frames = self
            .vnics
            .iter()
            .zip(held)
            .map(|(v, queues)| {
                let mut f = VnicFrames {
                    name: v.config.name.clone(),
                    ..VnicFrames::default()
                };
                for (toward_switch, for_peer, mut from_switch, _) in queues {
                    f.toward_switch.push(
                        toward_switch
                            .into_iter()
                            .map(WireHandle::from_frame)
                            .collect(),
                    );
                    f.for_guest.push(
                        for_peer
                            .into_iter()
                            .chain(std::iter::from_fn(|| from_switch.pop()))
                            .map(WireHandle::from_frame)
                            .collect(),
                    );
                }
                f
            })
            .collect::<Vec<_>>();
        let uplinks = self.export_uplinks(uplink_engines)?;
        let (small, large) = self.take_every_free_frame();
        // A peer of protocol 4 reads the lists only.
        let (free_small, free_large, free) = match protocol {
            ..=4 => (small, large, None),
            _ => (
                Vec::new(),
                Vec::new(),
                Some(FreeFrames::new(small, large, protocol)),
            ),
        };
        super::log_phase("switch move: exported", stopped_at);
        Ok(SwitchMove {
            export: UpgradeExport {
                state: DaemonState {
                    free_small,
                    free_large,
                    free,
                    fdb,
                    vnics: frames.len(),
                    uplinks: uplinks.len(),
                    ports,
                },
                vnics: Vec::new(),
                uplinks,
                stopped_at,
            },
            frames,
        })
    }

    /// The new process, with the old one's part of the switch move: each
    /// bridged vNIC gets its port on this switch, the frames for its guest
    /// first on the link to its engine. Then `between` (the FDB, counters:
    /// every port exists by then, uplinks included, so no frame finds its
    /// destination missing); only then does each engine send on through
    /// its new port, the frames it had sent toward the bridge first.
    pub fn finish_switch_move(
        &mut self,
        frames: Vec<VnicFrames>,
        between: impl FnOnce(&mut Self) -> Result<(), DaemonError>,
    ) -> Result<(), DaemonError> {
        let mut sends = Vec::with_capacity(frames.len());
        for f in frames {
            let i = self.vnic_index(&f.name)?;
            let b = self
                .step_bridges
                .iter()
                .position(|b| b.name == f.name)
                .ok_or_else(|| DaemonError::Upgrade(format!("{}: no bridge", f.name)))?;
            let lanes = std::mem::take(&mut self.step_bridges.remove(b).lanes);
            sends.push((i, self.plug_bridged(i, lanes, f)?));
        }
        between(self)?;
        for (i, moves) in sends {
            self.send_over(i, moves)?;
        }
        Ok(())
    }

    /// Gives bridged vNIC `i` its port on this switch, with the frames for
    /// its guest in order (see the module); returns, per queue pair, what
    /// its engine needs to send on through the port.
    fn plug_bridged(
        &mut self,
        i: usize,
        lanes: Vec<Lane>,
        f: VnicFrames,
    ) -> Result<Vec<Mutex<Option<SendOver>>>, DaemonError> {
        let name = self.vnics[i].config.name.clone();
        let mut inputs = Vec::with_capacity(lanes.len());
        let mut outputs = Vec::with_capacity(lanes.len());
        let mut moves = Vec::with_capacity(lanes.len());
        let mut lost = 0;
        let wire = |w: Vec<WireHandle>, pool: &crate::packet::FramePool| -> Vec<FrameHandle> {
            w.into_iter().filter_map(|w| w.into_frame(pool)).collect()
        };
        let mut toward = f.toward_switch.into_iter();
        let mut for_guest = f.for_guest.into_iter();
        let mut cache = self.pool.cache();
        for mut lane in lanes {
            let (for_peer, for_engine) = lane.take_held();
            let from_old = lane.drain_peer(&self.pool);
            let (engine_out, mut to_engine) = lane.into_links();
            // For the guest, oldest first: held here, in the ring from the
            // old side, then what the old side still had.
            let old_rest = wire(for_guest.next().unwrap_or_default(), &self.pool);
            for frame in for_engine.into_iter().chain(from_old).chain(old_rest) {
                if let Err(frame) = to_engine.push(frame) {
                    cache.free(frame);
                    lost += 1;
                }
            }
            to_engine.flush();
            // Toward the switch, oldest first: what the old side had not
            // switched, then what waited here; the engine's own link after.
            let earlier: Vec<FrameHandle> = wire(toward.next().unwrap_or_default(), &self.pool)
                .into_iter()
                .chain(for_peer)
                .collect();
            let (fresh_tx, fresh_rx) =
                link(LINK_CAPACITY + earlier.len()).map_err(super::io("link"))?;
            inputs.push(fresh_rx);
            outputs.push(to_engine);
            moves.push(Mutex::new(Some((fresh_tx, earlier, engine_out))));
        }
        if lost > 0 {
            log::warn!("{name}: {lost} frames for the guest did not fit");
        }
        let cfg = &self.vnics[i].config;
        let shard = self.shard_for(cfg.shard);
        let (port, counters) = self.switch.add_port_on(
            shard,
            SwitchPort::new(&cfg.name, PortNetwork::Only(cfg.network), inputs, outputs)
                .with_weight(cfg.weight),
            vec![cfg.mac],
        )?;
        let v = &mut self.vnics[i];
        v.port = port;
        v.port_counters = counters;
        self.arm_rings_started(i);
        Ok(moves)
    }

    /// Each queue engine of vNIC `i` sends on through its port's link.
    fn send_over(&self, i: usize, moves: Vec<Mutex<Option<SendOver>>>) -> Result<(), DaemonError> {
        let v = &self.vnics[i];
        let name = &v.config.name;
        let (done_tx, done_rx) = mpsc::channel();
        v.device
            .sink()
            .configure_each(|q| {
                let m = moves[q]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .expect("one call per queue");
                let done = done_tx.clone();
                move |e: &mut VnicEngine| {
                    let (fresh, earlier, old) = m;
                    let _ = done.send(e.send_over(fresh, earlier, old).is_ok());
                }
            })
            .map_err(|e| DaemonError::Upgrade(format!("{name}: {e}")))?;
        drop(done_tx);
        if done_rx.iter().any(|ok| !ok) {
            return Err(DaemonError::Upgrade(format!(
                "{name}: a link to the switch had no room"
            )));
        }
        Ok(())
    }
}

/// What a queue engine needs to send on through its new port: the port's
/// link, the frames it sent that no switch took yet, and its old link's far
/// end.
type SendOver = (
    crate::packet::LinkTx,
    Vec<FrameHandle>,
    crate::packet::LinkRx,
);
