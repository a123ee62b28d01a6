//! Starts the overlay directory for a daemon that has one in its config:
//! what it publishes comes from the daemon's vNICs, what it derives goes
//! to the daemon's uplink through the daemon's lock (on the directory's
//! programming thread, never while the directory waits for etcd).

use std::sync::Arc;

use super::rpc::Context;
use crate::directory::{Directory, Program};

/// The running directory, `None` without a `directory` section, or why it
/// could not start.
pub fn start(ctx: &Arc<Context>) -> Result<Option<Directory>, String> {
    let guard = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner());
    let Some(d) = guard.as_ref() else {
        return Ok(None);
    };
    let Some(cfg) = d.config().directory.clone() else {
        return Ok(None);
    };
    let mac = d
        .directory_uplink_mac()
        .map_err(|e| format!("directory: {e}"))?;
    let entries = d.directory_entries();
    drop(guard);
    let weak = Arc::downgrade(ctx);
    let observer = weak.clone();
    let program: Program = Box::new(move |table| {
        let Some(ctx) = weak.upgrade() else {
            return Err("the daemon has stopped".into());
        };
        let mut guard = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some(d) => d.program_directory_table(table).map_err(|e| e.to_string()),
            None => Err("the daemon is stopping or was handed over".into()),
        }
    });
    log::info!(
        "directory: host '{}' ({}) on {}, uplink {}",
        cfg.host_id,
        cfg.underlay_ip,
        cfg.endpoints.join(","),
        cfg.uplink
    );
    let dir = Directory::start(cfg, mac, entries, program)
        .map_err(|e| format!("directory: cannot start its thread: {e}"))?;
    // A guest whose rings start here runs here: the directory claims its
    // MACs (a migration's destination takes them from the source host).
    let mut guard = ctx.daemon.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = guard.as_mut() {
        d.set_guest_started_observer(Arc::new(move |network, macs| {
            if let Some(ctx) = observer.upgrade() {
                if let Some(dir) = ctx.directory.get() {
                    dir.guest_started(network, macs);
                }
            }
        }));
    }
    Ok(Some(dir))
}
