//! The daemon's Pony Express (docs/pony.md): the engine plugged into its
//! uplink's queue engines, placed in its group, and the attach server.

use std::sync::mpsc;

use super::{interface_mac, Daemon, DaemonError, ENGINE_CALL_TIMEOUT, LINK_CAPACITY};
use crate::engine::MailboxSender;
use crate::packet::link;
use crate::pony::{PonyConfig, PonyEngine, PonyServer, PonySetup, PonyStatus};
use crate::sched::EngineId;
use crate::uplink::engine::{PonyPort, UplinkQueueEngine};

/// Pony as it runs in this daemon.
pub struct RunningPony {
    uplink: String,
    group: String,
    engine: EngineId,
    mailbox: MailboxSender<PonyEngine>,
    // Dropped first: no application attaches while the rest goes.
    server: Option<PonyServer>,
}

fn pony_err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Uplink {
        name: "pony".into(),
        message: e.to_string(),
    }
}

impl Daemon {
    /// Starts Pony on its uplink (which must be running).
    pub(super) fn start_pony(&mut self, cfg: &PonyConfig) -> Result<(), DaemonError> {
        let i = self.uplink_index(&cfg.uplink)?;
        let interface = self.uplinks[i].config.interface.clone();
        let mtu = self.uplinks[i].config.mtu;
        let mac = interface_mac(&interface).map_err(pony_err)?;
        let mut from_uplink = Vec::new();
        let mut to_uplink = Vec::new();
        let mut mailboxes = Vec::new();
        for q in &self.uplinks[i].queues {
            let (to_pony, pony_in) = link(LINK_CAPACITY).map_err(pony_err)?;
            let (pony_out, from_pony) = link(LINK_CAPACITY).map_err(pony_err)?;
            from_uplink.push(pony_in);
            to_uplink.push(pony_out);
            mailboxes.push((q.mailbox.clone(), to_pony, from_pony));
        }
        let (resolver, lookups) = mpsc::channel();
        let (engine, mailbox) = PonyEngine::new(
            PonySetup {
                name: "pony".into(),
                address: cfg.address,
                mac,
                mtu,
                from_uplink,
                to_uplink,
                resolver,
            },
            cfg.clone(),
            &self.pool,
        )
        .map_err(pony_err)?;
        let group = cfg
            .group
            .clone()
            .unwrap_or_else(|| self.config.groups[0].name.clone());
        let engine = self.group(&group)?.add(Box::new(engine))?;
        let mut running = RunningPony {
            uplink: cfg.uplink.clone(),
            group,
            engine,
            mailbox: mailbox.clone(),
            server: None,
        };
        let address = cfg.address;
        for (q, to_pony, from_pony) in mailboxes {
            let port = PonyPort {
                address,
                to_pony,
                from_pony,
            };
            if let Err(e) = q.call(ENGINE_CALL_TIMEOUT, move |e: &mut UplinkQueueEngine| {
                drop(e.set_pony(Some(port)));
            }) {
                self.stop_running_pony(running);
                return Err(e.into());
            }
        }
        if let Err(e) = self.uplinks[i].program.set_pony_address(address, true) {
            self.stop_running_pony(running);
            return Err(pony_err(e));
        }
        match PonyServer::start(cfg, interface, mailbox, lookups) {
            Ok(s) => running.server = Some(s),
            Err(e) => {
                self.stop_running_pony(running);
                return Err(pony_err(format!("socket: {e}")));
            }
        }
        log::info!(
            "pony: {} on uplink {} (applications attach at {})",
            cfg.address,
            cfg.uplink,
            cfg.socket.display()
        );
        self.pony = Some(running);
        Ok(())
    }

    /// Stops Pony: applications are cut off, the uplink sends Pony's
    /// packets to the kernel again.
    pub(super) fn stop_pony(&mut self) {
        if let Some(p) = self.pony.take() {
            self.stop_running_pony(p);
        }
    }

    fn stop_running_pony(&mut self, mut p: RunningPony) {
        drop(p.server.take());
        if let Ok(i) = self.uplink_index(&p.uplink) {
            if let Some(cfg) = &self.config.pony {
                let _ = self.uplinks[i].program.set_pony_address(cfg.address, false);
            }
            for q in &self.uplinks[i].queues {
                let _ = q
                    .mailbox
                    .call(ENGINE_CALL_TIMEOUT, |e: &mut UplinkQueueEngine| {
                        drop(e.set_pony(None));
                    });
            }
        }
        let mut ids = vec![p.engine];
        self.remove_engines(&p.group, &mut ids, "pony");
    }

    /// Whether Pony runs on uplink `name`.
    pub(super) fn pony_uses(&self, name: &str) -> bool {
        self.pony.as_ref().is_some_and(|p| p.uplink == name)
    }

    /// What `pony.status` shows.
    pub fn pony_status(&self) -> Result<PonyStatus, DaemonError> {
        let p = self
            .pony
            .as_ref()
            .ok_or_else(|| DaemonError::NotFound("pony section in the config".into()))?;
        Ok(p.mailbox
            .call(ENGINE_CALL_TIMEOUT, |e: &mut PonyEngine| e.status())?)
    }
}
