//! What the directory reports: its state (synced, degraded and why), the
//! table's size, and counters. Shared between the directory's thread, the
//! thread that programs the uplink, and the control API.

use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not yet read the directory once.
    #[default]
    Connecting,
    /// Published, read and watching: the uplink follows the directory.
    Synced,
    /// etcd is unreachable (or the watch or lease was lost): the uplink
    /// keeps the last table it had (fail static) until etcd is back.
    Degraded,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Watch events applied (puts and deletes).
    pub events: u64,
    /// Keys or values under the prefix that do not parse: ignored.
    pub malformed: u64,
    /// Full reads of the directory after the first (each reconnection).
    pub resyncs: u64,
    /// Leases granted after the first (the old one had expired).
    pub lease_regrants: u64,
    /// Local changes written to etcd, and writes that failed.
    pub publishes: u64,
    pub publish_failures: u64,
    /// Keys of this host written again after the directory lost them.
    pub repairs: u64,
    /// MAC keys this host did not write back because another host claims
    /// them now (a guest that moved).
    pub claimed_elsewhere: u64,
    /// Overlay tables sent to the uplink, and those it refused.
    pub programs: u64,
    pub program_failures: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusReport {
    pub state: State,
    /// Why the directory is degraded (the last error), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub host_id: String,
    pub uplink: String,
    pub lease_id: Option<i64>,
    /// The etcd revision the table reflects.
    pub revision: i64,
    /// Live hosts in the directory (this one included).
    pub hosts: usize,
    /// Remote hosts and guest MACs in the uplink's table now.
    pub remote_hosts: usize,
    pub remote_macs: usize,
    /// Guest MACs this host publishes.
    pub local_macs: usize,
    /// Of them, MACs not claimed because a guest with the MAC runs on
    /// another live host (a migration's destination, until its guest's
    /// rings start here).
    pub deferred_claims: usize,
    /// The etcd revision of the table the uplink has now.
    pub programmed_revision: i64,
    /// Seconds since the state last changed.
    pub state_seconds: f64,
    pub counters: Counters,
}

/// The report behind a lock, with the instant of the last state change.
#[derive(Default)]
pub struct Status {
    inner: Mutex<(StatusReport, Option<Instant>)>,
}

impl Status {
    pub fn new(host_id: &str, uplink: &str) -> Self {
        let report = StatusReport {
            host_id: host_id.into(),
            uplink: uplink.into(),
            ..Default::default()
        };
        Self {
            inner: Mutex::new((report, Some(Instant::now()))),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut StatusReport)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g.0);
    }

    /// Moves to `state`; logs once per change of state (not per retry), so
    /// an etcd outage writes two lines, not one per attempt.
    pub fn set_state(&self, state: State, reason: Option<String>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (report, since) = &mut *g;
        if report.state != state {
            match (state, &reason) {
                (State::Degraded, Some(r)) => {
                    log::warn!("directory: degraded ({r}); forwarding with the last known table")
                }
                (State::Synced, _) => log::info!(
                    "directory: synced at revision {} ({} hosts)",
                    report.revision,
                    report.hosts
                ),
                _ => {}
            }
            *since = Some(Instant::now());
        }
        report.state = state;
        report.reason = reason;
    }

    pub fn report(&self) -> StatusReport {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut r = g.0.clone();
        r.state_seconds = g.1.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        r
    }
}
