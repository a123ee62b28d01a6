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
    newest: Option<OverlayConfig>,
    stop: bool,
}

pub struct Programmer {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Programmer {
    pub fn start(mut program: Program, status: Arc<Status>) -> std::io::Result<Self> {
        let slot: Arc<(Mutex<Slot>, Condvar)> = Arc::default();
        let shared = slot.clone();
        let thread = std::thread::Builder::new()
            .name("snapnet-dir-prog".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let table = {
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
                    status.update(|r| match &result {
                        Ok(()) => {
                            r.counters.programs += 1;
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
            thread: Some(thread),
        })
    }

    /// Leaves `table` to be programmed (replacing one not yet programmed).
    pub fn offer(&self, table: OverlayConfig) {
        let (lock, cond) = &*self.slot;
        lock.lock().unwrap_or_else(|e| e.into_inner()).newest = Some(table);
        cond.notify_one();
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
