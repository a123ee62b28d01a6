//! The uplinks' part of an upgrade (docs/upgrade.md). The old process takes
//! each uplink's queue engines out of their group with the vNICs' and, once
//! the switch has settled, takes them apart: copies of the XDP program's
//! bpf_link and map fds, of each queue's AF_XDP socket and group tap, the
//! frames lent to the kernel and those waiting for the wire. The new
//! process adopts all of it: the program is never detached or reloaded (its
//! id stays, and the host's own traffic on the interface never notices), no
//! socket is closed or rebound, and the frames in the kernel's rings are the
//! same pool frames in both processes. Its engines join their group only
//! when the old process says `serve`, so that until then the old one can
//! take everything back.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::take_out_of;
use super::{
    interface_index, place_engines, uplink_err, Daemon, DaemonError, QueueParts, RunningUplink,
};
use crate::control::config::UplinkConfig;
use crate::upgrade::bridge::WireHandle;
use crate::uplink::group_tap::GroupTap;
use crate::uplink::handover::UplinkQueueState;
use crate::uplink::xdp_program::HANDOVER_FDS;
use crate::uplink::xsk::{RingSizes, XskSocket};
use crate::uplink::{UplinkProgram, UplinkQueueEngine, XdpMode};

/// One uplink as an upgrade moves it. Its fds travel beside it: the
/// program's ([`HANDOVER_FDS`]), then per queue its socket and, where
/// `tap_next` is set, its tap.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UplinkMove {
    pub config: UplinkConfig,
    /// The mode the program is attached in.
    pub xdp_mode: XdpMode,
    pub queues: Vec<UplinkQueueState>,
    /// Per queue, the frames that waited for the wire, in order.
    pub for_wire: Vec<Vec<WireHandle>>,
}

/// An uplink the old process exported: the message and its fds, and what
/// the old process keeps until the commit (its program, which holds the
/// link too, and its switch port).
pub struct ExportedUplink {
    pub moved: UplinkMove,
    pub fds: Vec<OwnedFd>,
    running: RunningUplink,
}

/// An uplink the new process has built from a move, whose engines wait for
/// `serve` to join their group.
pub struct UplinkTakeover {
    name: String,
    engines: Vec<UplinkQueueEngine>,
    group: String,
}

/// The name an uplink's switch port crosses under (FDB entries, counters):
/// apart from the vNICs'.
pub(super) fn port_name(uplink: &str) -> String {
    format!("uplink:{uplink}")
}

impl Daemon {
    /// Takes every uplink's queue engines out of their groups (their
    /// sockets keep receiving into their rings meanwhile). On an error the
    /// engines taken so far go back and nothing changed.
    pub(super) fn take_uplink_engines(
        &mut self,
    ) -> Result<Vec<Vec<UplinkQueueEngine>>, DaemonError> {
        let mut taken = Vec::with_capacity(self.uplinks.len());
        for i in 0..self.uplinks.len() {
            let group = self
                .config
                .uplink_group_of(&self.uplinks[i].config)
                .to_string();
            let group = self.shared_group(&group)?;
            let engines = match take_out_of(&group, &mut self.uplinks[i].engines) {
                Ok(e) => e,
                Err(err) => {
                    self.put_back_uplink_engines(taken);
                    return Err(err);
                }
            };
            taken.push(engines);
        }
        Ok(taken)
    }

    /// Puts engines [`Self::take_uplink_engines`] took back in their groups.
    pub(super) fn put_back_uplink_engines(&mut self, taken: Vec<Vec<UplinkQueueEngine>>) {
        for (i, engines) in taken.into_iter().enumerate() {
            let u = &self.uplinks[i];
            let group = self.config.uplink_group_of(&u.config).to_string();
            let near = self.near_shard(&group, u.shard);
            match self
                .group(&group)
                .and_then(|g| place_engines(g, engines.into_iter().map(Box::new).collect(), near))
            {
                Ok(ids) => self.uplinks[i].engines = ids,
                Err(e) => log::error!("{}: engines not put back: {e}", u.config.name),
            }
        }
    }

    /// Takes every uplink apart for the new process (its engines out of
    /// their group, the switch settled). The uplinks leave `self.uplinks`.
    pub(super) fn export_uplinks(
        &mut self,
        taken: Vec<Vec<UplinkQueueEngine>>,
    ) -> Result<Vec<ExportedUplink>, DaemonError> {
        let mut out = Vec::with_capacity(taken.len());
        let running: Vec<RunningUplink> = self.uplinks.drain(..).collect();
        for (running, engines) in running.into_iter().zip(taken) {
            let name = running.config.name.clone();
            let fail = uplink_err(&name);
            let mut fds = running
                .program
                .handover_fds()
                .map_err(|e| fail(e.to_string()))?;
            let mut queues = Vec::with_capacity(engines.len());
            let mut for_wire = Vec::with_capacity(engines.len());
            for (engine, q) in engines.into_iter().zip(&running.queues) {
                let copies = engine
                    .handover_fds()
                    .map_err(|e| fail(format!("queue {}: {e}", q.queue)))?;
                let handed = engine.hand_over(copies);
                let mut state = handed.state;
                state.queue = q.queue;
                queues.push(state);
                fds.extend(handed.fds);
                for_wire.push(
                    handed
                        .for_wire
                        .into_iter()
                        .map(WireHandle::from_frame)
                        .collect(),
                );
            }
            out.push(ExportedUplink {
                moved: UplinkMove {
                    config: running.config.clone(),
                    xdp_mode: running.program.mode(),
                    queues,
                    for_wire,
                },
                fds,
                running,
            });
        }
        Ok(out)
    }

    /// The new process (or a rollback): builds an uplink from a move, all
    /// but its engines' place in their group ([`Self::serve_taken_over_uplinks`]).
    /// Nothing touches its sockets' rings until then.
    pub fn take_over_uplink(
        &mut self,
        moved: UplinkMove,
        fds: Vec<OwnedFd>,
    ) -> Result<UplinkTakeover, DaemonError> {
        let u = moved.config;
        let name = u.name.clone();
        let fail = uplink_err(&name);
        let next = self.config_with_uplink(&u)?;
        interface_index(&u.name, &u.interface)?;
        if moved.queues.len() != u.queues.len() || moved.for_wire.len() != u.queues.len() {
            return Err(fail(format!(
                "{} queue states for {} queues",
                moved.queues.len(),
                u.queues.len()
            )));
        }
        let wanted = HANDOVER_FDS
            + moved
                .queues
                .iter()
                .map(|q| 1 + usize::from(q.tap_next.is_some()))
                .sum::<usize>();
        if fds.len() != wanted {
            return Err(fail(format!("{} fds, not {wanted}", fds.len())));
        }
        let mut fds = fds.into_iter();
        let program =
            UplinkProgram::adopt(moved.xdp_mode, fds.by_ref().take(HANDOVER_FDS).collect())
                .map_err(|e| fail(e.to_string()))?;
        let mut queues = Vec::with_capacity(moved.queues.len());
        for (state, for_wire) in moved.queues.into_iter().zip(moved.for_wire) {
            let q = state.queue;
            let xsk = XskSocket::adopt(fds.next().expect("counted"), RingSizes::default())
                .map_err(|e| fail(format!("queue {q}: {e}")))?;
            let tap = match state.tap_next {
                Some(next) => Some(
                    GroupTap::adopt(fds.next().expect("counted"), next)
                        .map_err(|e| fail(format!("packet socket: {e}")))?,
                ),
                None => None,
            };
            let for_wire = for_wire
                .iter()
                .filter_map(|w| w.into_frame(&self.pool))
                .collect();
            queues.push(QueueParts {
                xsk,
                tap,
                state: Some(state),
                for_wire,
            });
        }
        let group = next.uplink_group_of(&u).to_string();
        let engines = self.plug_uplink(&next, u, program, queues)?;
        self.config = next;
        Ok(UplinkTakeover {
            name: name.clone(),
            engines,
            group,
        })
    }

    /// The uplinks taken over serve: their engines join their groups.
    pub fn serve_taken_over_uplinks(
        &mut self,
        taken: Vec<UplinkTakeover>,
    ) -> Result<(), DaemonError> {
        let mut first_error = None;
        for t in taken {
            if let Err(e) = self.serve_uplink(&t.name, t.engines, &t.group) {
                log::error!("{}: {e}", t.name);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A rollback: the uplinks the old process exported are built again
    /// from their moves, as a new process would. Each old uplink's port
    /// goes first; its program (and with it the bpf_link it holds) only
    /// once the rebuilt one holds its own copies, so the program stays
    /// attached throughout.
    pub(super) fn take_back_uplinks(
        &mut self,
        exported: Vec<ExportedUplink>,
    ) -> Result<Vec<UplinkTakeover>, DaemonError> {
        let mut taken = Vec::with_capacity(exported.len());
        for x in exported {
            if let Err(e) = self.switch.remove_port(x.running.port) {
                log::warn!(
                    "{}: switch did not remove the port: {e}",
                    x.moved.config.name
                );
            }
            self.config
                .uplinks
                .retain(|c| c.name != x.moved.config.name);
            let t = self.take_over_uplink(x.moved, x.fds);
            drop(x.running);
            taken.push(t?);
        }
        Ok(taken)
    }
}

impl ExportedUplink {
    /// The new process serves the uplink: this copy goes (the kernel keeps
    /// the program, sockets and rings for the new process's copies).
    pub fn commit(self) {
        drop(self.running);
    }
}
