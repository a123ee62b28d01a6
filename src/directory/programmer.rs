//! The thread that programs the uplink. The directory's thread never waits
//! for the daemon (whose lock a control request may hold while it waits for
//! the directory), nor derives tables: it applies etcd's events to the
//! shared directory table and marks it changed; this thread derives the
//! uplink's table from it and programs it. Changes that come while one
//! table is being programmed are coalesced: a burst of events (a host's
//! hundred guests, a resynchronisation) costs one derivation, not one each.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::status::Status;
use super::table::{DirectoryTable, ThisHost};
use crate::uplink::overlay::OverlayConfig;

/// Programs the directory's uplink with a table; `Err` says why it refused.
pub type Program = Box<dyn FnMut(&OverlayConfig) -> Result<(), String> + Send>;

#[derive(Default)]
struct Slot {
    /// The directory's table changed, last at this etcd revision.
    changed_at: Option<i64>,
    /// The newest revision the directory has seen.
    seen: i64,
    /// A table is being derived and programmed.
    busy: bool,
    stop: bool,
}

pub struct Programmer {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    status: Arc<Status>,
    thread: Option<JoinHandle<()>>,
}

impl Programmer {
    pub fn start(
        mut program: Program,
        table: Arc<Mutex<DirectoryTable>>,
        me: ThisHost,
        status: Arc<Status>,
    ) -> std::io::Result<Self> {
        let slot: Arc<(Mutex<Slot>, Condvar)> = Arc::default();
        let shared = slot.clone();
        let reporting = status.clone();
        let thread = std::thread::Builder::new()
            .name("snapnet-dir-prog".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let revision = {
                        let (lock, cond) = &*shared;
                        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if s.stop {
                                return;
                            }
                            if let Some(r) = s.changed_at.take() {
                                s.busy = true;
                                break r;
                            }
                            s = cond.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let overlay = table.lock().unwrap_or_else(|e| e.into_inner()).overlay(&me);
                    let result = program(&overlay);
                    // Revisions seen since that changed nothing are this
                    // table's too, unless a change waits.
                    let done_at = {
                        let mut s = shared.0.lock().unwrap_or_else(|e| e.into_inner());
                        s.busy = false;
                        if s.changed_at.is_none() {
                            s.seen.max(revision)
                        } else {
                            revision
                        }
                    };
                    reporting.update(|r| match &result {
                        Ok(()) => {
                            r.counters.programs += 1;
                            r.programmed_revision = r.programmed_revision.max(done_at);
                            r.remote_hosts = overlay.remotes.len();
                            r.remote_macs = overlay.macs.len();
                        }
                        Err(_) => r.counters.program_failures += 1,
                    });
                    match result {
                        Err(e) if !failing => {
                            log::warn!("directory: the uplink refused the table: {e}");
                            failing = true;
                        }
                        Ok(()) if failing => {
                            log::info!("directory: the uplink takes the table again");
                            failing = false;
                        }
                        _ => {}
                    }
                }
            })?;
        Ok(Self {
            slot,
            status,
            thread: Some(thread),
        })
    }

    /// The directory's table changed (now at `revision`): derive and
    /// program the uplink's.
    pub fn changed_at(&self, revision: i64) {
        let (lock, cond) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.changed_at = Some(revision);
        s.seen = s.seen.max(revision);
        cond.notify_one();
    }

    /// The directory moved to `revision` without changing the table: the
    /// uplink's table is that revision's too, once nothing waits.
    pub fn unchanged_at(&self, revision: i64) {
        let (lock, _) = &*self.slot;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        s.seen = s.seen.max(revision);
        if s.changed_at.is_none() && !s.busy {
            self.status
                .update(|r| r.programmed_revision = r.programmed_revision.max(revision));
        }
    }
}

impl Drop for Programmer {
    fn drop(&mut self) {
        let (lock, cond) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cond.notify_one();
        if let Some(t) = self.thread.take() {
            // The program call takes the daemon's lock: never join from a
            // thread that holds it (the caller's duty, see Directory::stop).
            let _ = t.join();
        }
    }
}
