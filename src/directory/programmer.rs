//! The thread that hands overlay tables to the uplink. The directory's
//! thread never waits for the daemon (whose lock a control request may hold
//! while it waits for the directory): it leaves the newest table here, and
//! this thread programs it. Tables that arrive while one is being programmed
//! are coalesced: only the newest is programmed next.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::status::Status;
use crate::uplink::overlay::OverlayConfig;

/// Programs the directory's uplink with a table; `Err` says why it refused.
pub type Program = Box<dyn FnMut(&OverlayConfig) -> Result<(), String> + Send>;

#[derive(Default)]
struct Slot {
    /// The newest table and the etcd revision it reflects.
    newest: Option<(OverlayConfig, i64)>,
    stop: bool,
}

pub struct Programmer {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    status: Arc<Status>,
    thread: Option<JoinHandle<()>>,
}

impl Programmer {
    pub fn start(mut program: Program, status: Arc<Status>) -> std::io::Result<Self> {
        let slot: Arc<(Mutex<Slot>, Condvar)> = Arc::default();
        let shared = slot.clone();
        let reporting = status.clone();
        let thread = std::thread::Builder::new()
            .name("snapnet-dir-prog".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let (table, revision) = {
                        let (lock, cond) = &*shared;
                        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if s.stop {
                                return;
                            }
                            if let Some(t) = s.newest.take() {
                                break t;
                            }
                            s = cond.wait(s).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let result = program(&table);
                    reporting.update(|r| match &result {
                        Ok(()) => {
                            r.counters.programs += 1;
                            r.programmed_revision = r.programmed_revision.max(revision);
                            r.remote_hosts = table.remotes.len();
                            r.remote_macs = table.macs.len();
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

    /// Leaves `table` (the directory at `revision`) to be programmed,
    /// replacing one not yet programmed.
    pub fn offer(&self, table: OverlayConfig, revision: i64) {
        let (lock, cond) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).newest = Some((table, revision));
        cond.notify_one();
    }

    /// The directory moved to `revision` without changing the table: the
    /// uplink's table is that revision's too, once nothing waits.
    pub fn unchanged_at(&self, revision: i64) {
        let (lock, _) = &*self.slot;
        let s = lock.lock().unwrap_or_else(|e| e.into_inner());
        if s.newest.is_none() {
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
