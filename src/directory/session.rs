//! The directory's thread: a current-thread tokio runtime running one etcd
//! session at a time. A session connects, keeps (or grants) this host's
//! lease, writes this host's keys, reads the whole prefix, programs the
//! uplink, then watches from the next revision while it keeps the lease
//! alive and writes local changes. Any failure ends the session: the
//! directory is degraded, the uplink keeps its table (fail static), and the
//! next session starts over with a full read once etcd answers again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use snapnet_wire::MacAddr;
use tokio::sync::mpsc;

use super::config::DirectoryConfig;
use super::keys::{HostValue, Key, MacValue};
use super::local::LocalEntries;
use super::programmer::{Program, Programmer};
use super::status::{State, Status, StatusReport};
use super::table::{Applied, DirectoryTable, ThisHost};

/// Why a local change did not reach the directory.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the directory is degraded ({0}); the change is kept here and will be published when etcd answers")]
    Degraded(String),
    #[error(
        "etcd did not confirm the change within {0:?}; it will be published when etcd answers"
    )]
    Timeout(Duration),
    #[error("the directory has stopped")]
    Stopped,
}

/// This host's guests at one moment, numbered in the order the daemon's
/// state changed (taken under its lock), so that a publish that overtakes
/// a newer one cannot undo it.
pub struct Snapshot {
    seq: u64,
    entries: LocalEntries,
}

enum Command {
    Publish {
        snapshot: Snapshot,
        done: Option<std::sync::mpsc::SyncSender<Result<(), String>>>,
    },
    /// A guest's rings started here: its MACs are claimed now, whoever
    /// holds them (the guest migrated here, or back after a failed
    /// migration).
    GuestStarted {
        macs: Vec<(u32, MacAddr)>,
    },
    Stop {
        revoke: bool,
    },
}

/// A running directory: its thread, what it reports, how to reach it.
pub struct Directory {
    commands: mpsc::UnboundedSender<Command>,
    status: Arc<Status>,
    seq: AtomicU64,
    /// How long a control request waits for etcd to confirm its change.
    deadline: Duration,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Directory {
    /// Starts following and publishing. `uplink_mac` is what other hosts
    /// send to, `entries` this host's guests now. The uplink's table is the
    /// directory's alone: its first sync replaces what the uplink had.
    pub fn start(
        cfg: DirectoryConfig,
        uplink_mac: MacAddr,
        entries: LocalEntries,
        program: Program,
    ) -> std::io::Result<Self> {
        let status = Arc::new(Status::new(&cfg.host_id, &cfg.uplink));
        let me = ThisHost {
            host_id: cfg.host_id.clone(),
            underlay_ip: cfg.underlay_ip,
            next_hop_mac: cfg.next_hop_mac,
        };
        let table: Arc<Mutex<DirectoryTable>> = Arc::default();
        let programmer = Programmer::start(program, table.clone(), me.clone(), status.clone())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let deadline = Duration::from_millis(u64::from(cfg.request_timeout_ms) + 500);
        let worker = Worker {
            me,
            host_value: HostValue {
                underlay_ip: cfg.underlay_ip,
                mac: uplink_mac,
            },
            timeout: Duration::from_millis(u64::from(cfg.request_timeout_ms)),
            cfg,
            wanted: entries,
            wanted_seq: 0,
            claimed: BTreeMap::new(),
            confirmed: BTreeSet::new(),
            force: BTreeSet::new(),
            table,
            lease: None,
            sessions: 0,
            status: status.clone(),
            programmer,
            commands: rx,
            waiting: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("snapnet-directory".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        log::error!("directory: no runtime: {e}");
                        return;
                    }
                };
                runtime.block_on(worker.run());
            })?;
        Ok(Self {
            commands: tx,
            status,
            seq: AtomicU64::new(1),
            deadline,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Numbers `entries`: call under the lock that orders the daemon's
    /// changes, then publish outside it.
    pub fn snapshot(&self, entries: LocalEntries) -> Snapshot {
        Snapshot {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            entries,
        }
    }

    /// Writes this host's guests to etcd and waits (a request timeout and a
    /// bit) for it to confirm. On an error the directory still has the
    /// change and writes it as soon as it can.
    pub fn publish(&self, snapshot: Snapshot) -> Result<(), PublishError> {
        let deadline = self.deadline;
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.commands
            .send(Command::Publish {
                snapshot,
                done: Some(done),
            })
            .map_err(|_| PublishError::Stopped)?;
        match result.recv_timeout(deadline) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(PublishError::Degraded(reason)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(PublishError::Timeout(deadline)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(PublishError::Stopped),
        }
    }

    /// Tells the directory that a guest's rings started here (see
    /// [`Command::GuestStarted`]); does not wait.
    pub fn guest_started(&self, network: u32, macs: &[MacAddr]) {
        let macs = macs.iter().map(|m| (network, *m)).collect();
        let _ = self.commands.send(Command::GuestStarted { macs });
    }

    pub fn status(&self) -> StatusReport {
        self.status.report()
    }

    /// Stops the thread. With `revoke`, this host's keys go at once (a
    /// clean shutdown); without, they live out their lease (a process that
    /// hands over to a successor, which writes them again under its own).
    /// Not to be called while holding the daemon's lock: the programming
    /// thread may be waiting for it.
    pub fn stop(&self, revoke: bool) {
        let _ = self.commands.send(Command::Stop { revoke });
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// How a session ended.
enum End {
    Stop,
    Lost(String),
}

type Res<T> = Result<T, String>;

struct Worker {
    cfg: DirectoryConfig,
    me: ThisHost,
    host_value: HostValue,
    timeout: Duration,
    /// This host's guests as the daemon last said, and that snapshot's number.
    wanted: LocalEntries,
    wanted_seq: u64,
    /// Every key this host has written, with the value: a claim stays
    /// claimed across sessions (a session only re-confirms it).
    claimed: BTreeMap<Key, Vec<u8>>,
    /// Claimed keys known to be in etcd under this session's lease.
    confirmed: BTreeSet<Key>,
    /// MAC keys to claim whoever holds them (their guest started here).
    force: BTreeSet<Key>,
    /// Shared with the programming thread, which derives the uplink's
    /// table from it.
    table: Arc<Mutex<DirectoryTable>>,
    lease: Option<i64>,
    sessions: u64,
    status: Arc<Status>,
    programmer: Programmer,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Publishes to answer once their change is written.
    waiting: Vec<std::sync::mpsc::SyncSender<Result<(), String>>>,
}

/// Runs `f` for at most `t`, with etcd's error and the timeout as text.
async fn within<T, E: std::fmt::Display>(
    t: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Res<T> {
    match tokio::time::timeout(t, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {t:?}")),
    }
}

impl Worker {
    /// Sessions, one etcd member at a time: a session that fails moves to
    /// the next member at once; only when every member failed in a row does
    /// the next attempt wait, longer each round (up to a second).
    async fn run(mut self) {
        let members = self.cfg.endpoints.len();
        let mut member = 0;
        let mut failures_in_a_row = 0u32;
        loop {
            let started = Instant::now();
            let end = self.session(member).await;
            let reason = match end {
                End::Stop => return,
                End::Lost(reason) => reason,
            };
            self.status.set_state(State::Degraded, Some(reason.clone()));
            for w in self.waiting.drain(..) {
                let _ = w.try_send(Err(reason.clone()));
            }
            member = (member + 1) % members;
            // A session that ran a while was a working one.
            if started.elapsed() > Duration::from_secs(5) {
                failures_in_a_row = 0;
            }
            failures_in_a_row += 1;
            let rounds = failures_in_a_row / members as u32;
            let pause = if rounds == 0 {
                Duration::from_millis(20)
            } else {
                (Duration::from_millis(100) * 2u32.pow(rounds.min(4))).min(Duration::from_secs(1))
            };
            if self.wait_offline(pause, &reason).await {
                return;
            }
        }
    }

    /// Between sessions: takes local changes (answering that they wait for
    /// etcd) for `pause`. True when told to stop.
    async fn wait_offline(&mut self, pause: Duration, reason: &str) -> bool {
        let until = tokio::time::Instant::now() + pause;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Stop { .. }) => return true,
                    Some(Command::Publish { snapshot, done }) => {
                        self.take(snapshot);
                        if let Some(d) = done {
                            let _ = d.try_send(Err(reason.to_string()));
                        }
                    }
                    Some(Command::GuestStarted { macs }) => self.claim(macs),
                },
            }
        }
    }

    fn claim(&mut self, macs: Vec<(u32, MacAddr)>) {
        for (network, mac) in macs {
            self.force.insert(Key::Mac { network, mac });
        }
    }

    fn take(&mut self, s: Snapshot) {
        if s.seq >= self.wanted_seq {
            self.wanted_seq = s.seq;
            self.wanted = s.entries;
        }
    }

    fn key(&self, k: &Key) -> String {
        k.encode(&self.cfg.prefix)
    }

    async fn session(&mut self, member: usize) -> End {
        match self.connect_and_follow(member).await {
            Ok(()) => End::Stop,
            Err(SessionError::Lost(r)) => End::Lost(format!("{}: {r}", self.cfg.endpoints[member])),
            Err(SessionError::Stop) => End::Stop,
        }
    }

    /// One session with etcd member `member` (of the config's endpoints).
    /// One member, not a balanced channel over all: a channel over all
    /// keeps sending some requests to a dead member; a session that fails
    /// moves on to the next member instead.
    async fn connect_and_follow(&mut self, member: usize) -> Result<(), SessionError> {
        let t = self.timeout;
        let options = ConnectOptions::new()
            .with_connect_timeout(t)
            .with_keep_alive(Duration::from_secs(1), t)
            .with_require_leader(true);
        let endpoint = &self.cfg.endpoints[member];
        let mut client = within(t, "connect", Client::connect([endpoint], Some(options))).await?;

        // The lease: the old one if it still lives (a short outage), else a
        // new one, under which every key must be written again.
        let ttl = i64::from(self.cfg.lease_ttl_seconds);
        let alive = match self.lease {
            Some(id) => {
                let r =
                    within(t, "lease time-to-live", client.lease_time_to_live(id, None)).await?;
                r.ttl() > 0
            }
            None => false,
        };
        if !alive {
            let r = within(t, "lease grant", client.lease_grant(ttl, None)).await?;
            if self.lease.is_some() {
                self.status.update(|s| s.counters.lease_regrants += 1);
            }
            self.lease = Some(r.id());
        }
        let lease = self.lease.unwrap_or_default();
        self.confirmed.clear();
        self.status.update(|s| s.lease_id = Some(lease));

        // The whole directory, this host's keys written where they are
        // missing (the read says which MACs another host claims now), then
        // a watch from the revision after the read (this host's writes
        // come back as events).
        let prefix = format!("{}/", self.cfg.prefix);
        let all = within(
            t,
            "read",
            client.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut revision = all.header().map(|h| h.revision()).unwrap_or(0);
        let mut malformed = 0;
        let hosts = {
            let mut table = self.table();
            table.clear();
            for kv in all.kvs() {
                if table.put(&self.cfg.prefix, kv.key(), kv.value()) == Applied::Malformed {
                    malformed += 1;
                }
            }
            table.hosts()
        };
        self.sessions += 1;
        let resync = self.sessions > 1;
        self.status.update(|s| {
            s.revision = revision;
            s.hosts = hosts;
            s.counters.malformed += malformed;
            if resync {
                s.counters.resyncs += 1;
            }
        });
        self.offer_table(revision, true);
        self.write_local(&mut client, lease).await?;
        let mut events = within(
            t,
            "watch",
            client.watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        let (mut keeper, mut answers) =
            within(t, "lease keep-alive", client.lease_keep_alive(lease)).await?;
        self.status.set_state(State::Synced, None);
        for w in self.waiting.drain(..) {
            let _ = w.try_send(Ok(()));
        }

        let period = Duration::from_millis(u64::from(self.cfg.lease_ttl_seconds) * 1000 / 3);
        let mut tick = tokio::time::interval(period);
        let mut last_answer = Instant::now();
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    None => return Err(SessionError::Stop),
                    Some(Command::Stop { revoke }) => {
                        if revoke {
                            let _ = within(t, "lease revoke", client.lease_revoke(lease)).await;
                        }
                        return Err(SessionError::Stop);
                    }
                    Some(Command::Publish { snapshot, done }) => {
                        self.take(snapshot);
                        if let Some(d) = done {
                            self.waiting.push(d);
                        }
                        // Every publish queued now is written by one pass.
                        while let Ok(Command::Publish { snapshot, done }) = self.commands.try_recv() {
                            self.take(snapshot);
                            if let Some(d) = done {
                                self.waiting.push(d);
                            }
                        }
                        self.write_local(&mut client, lease).await?;
                        for w in self.waiting.drain(..) {
                            let _ = w.try_send(Ok(()));
                        }
                    }
                    Some(Command::GuestStarted { macs }) => {
                        self.claim(macs);
                        self.write_local(&mut client, lease).await?;
                    }
                },
                msg = events.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err(SessionError::Lost("the watch ended".into())),
                        Err(e) => return Err(SessionError::Lost(format!("watch: {e}"))),
                    };
                    if resp.canceled() {
                        return Err(SessionError::Lost(format!(
                            "the watch was cancelled ({}; compacted at {})",
                            resp.cancel_reason(),
                            resp.compact_revision()
                        )));
                    }
                    if let Some(h) = resp.header() {
                        revision = revision.max(h.revision());
                    }
                    let Applying { malformed, lost_own, changed, hosts } =
                        self.apply(resp.events());
                    let n = resp.events().len() as u64;
                    self.status.update(|s| {
                        s.revision = revision;
                        s.hosts = hosts;
                        s.counters.events += n;
                        s.counters.malformed += malformed;
                    });
                    self.offer_table(revision, changed);
                    if lost_own {
                        self.write_local(&mut client, lease).await?;
                    }
                }
                _ = tick.tick() => {
                    if last_answer.elapsed() > period * 2 {
                        return Err(SessionError::Lost("lease keep-alives unanswered".into()));
                    }
                    within(t, "lease keep-alive", keeper.keep_alive()).await?;
                }
                answer = answers.message() => match answer {
                    Ok(Some(r)) if r.ttl() > 0 => last_answer = Instant::now(),
                    Ok(Some(_)) => {
                        self.lease = None;
                        return Err(SessionError::Lost("the lease expired".into()));
                    }
                    Ok(None) => return Err(SessionError::Lost("the keep-alive stream ended".into())),
                    Err(e) => return Err(SessionError::Lost(format!("lease keep-alive: {e}"))),
                },
            }
        }
    }

    /// Applies one watch response's events to the table.
    fn apply(&mut self, events: &[etcd_client::Event]) -> Applying {
        let mut out = Applying::default();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let applied = match ev.event_type() {
                EventType::Put => table.put(&self.cfg.prefix, kv.key(), kv.value()),
                EventType::Delete => {
                    // One of ours gone (its lease expired in an outage, or
                    // someone deleted it): written again if this host
                    // still has it.
                    if let Some(k) = Key::decode(&self.cfg.prefix, kv.key()) {
                        if self.confirmed.remove(&k) {
                            out.lost_own = true;
                        }
                    }
                    table.delete(&self.cfg.prefix, kv.key())
                }
            };
            match applied {
                Applied::Malformed => out.malformed += 1,
                Applied::Changed => out.changed = true,
                Applied::Unchanged => {}
            }
        }
        out.hosts = table.hosts();
        out
    }

    /// Tells the programming thread that the directory is at `revision`,
    /// and whether its table changed (then the uplink's is derived anew).
    fn offer_table(&mut self, revision: i64, changed: bool) {
        if changed {
            self.programmer.changed_at(revision);
        } else {
            self.programmer.unchanged_at(revision);
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, DirectoryTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings etcd to this host's wanted keys: new and changed keys are
    /// claimed (written whatever is there: the guest is here now), keys
    /// claimed before but not confirmed in this session are written back
    /// unless another host claims them now, keys no longer wanted are
    /// deleted if they still hold this host's value.
    async fn write_local(&mut self, client: &mut Client, lease: i64) -> Res<()> {
        let t = self.timeout;
        let wanted = self.wanted.keys(&self.me.host_id, &self.host_value);
        let local_macs = self.wanted.macs.len();
        let mut wrote = 0u64;
        let mut repaired = 0u64;
        let mut elsewhere = 0u64;
        let mut deferred = 0usize;
        let result: Res<()> = async {
            for (k, v) in &wanted {
                let key = self.key(k);
                let put = || {
                    TxnOp::put(
                        key.clone(),
                        v.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                };
                let forced = self.force.contains(k);
                if !forced && self.claimed.get(k) != Some(v) && self.held_elsewhere(k) {
                    // A guest with this MAC runs on another live host: the
                    // vNIC here is a migration's destination, whose claim
                    // waits for its guest's rings to start.
                    deferred += 1;
                    continue;
                }
                if forced || self.claimed.get(k) != Some(v) {
                    within(t, "write", client.txn(Txn::new().and_then([put()]))).await?;
                    wrote += 1;
                } else if !self.confirmed.contains(k) {
                    // Written before: put it back only where it is missing
                    // or still this host's.
                    let txn = Txn::new()
                        .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                        .and_then([put()])
                        .or_else([TxnOp::get(key.clone(), None)]);
                    let r = within(t, "write back", client.txn(txn)).await?;
                    if r.succeeded() {
                        repaired += 1;
                    } else if self.holds_other_claim(&r.op_responses(), k) {
                        elsewhere += 1;
                    } else {
                        within(t, "write back", client.txn(Txn::new().and_then([put()]))).await?;
                    }
                } else {
                    continue;
                }
                self.claimed.insert(k.clone(), v.clone());
                self.confirmed.insert(k.clone());
                self.force.remove(k);
            }
            self.force.retain(|k| wanted.contains_key(k));
            let gone: Vec<(Key, Vec<u8>)> = self
                .claimed
                .iter()
                .filter(|(k, _)| !wanted.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (k, v) in gone {
                let key = self.key(&k);
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, v)])
                    .and_then([TxnOp::delete(key, None)]);
                within(t, "delete", client.txn(txn)).await?;
                self.claimed.remove(&k);
                self.confirmed.remove(&k);
                wrote += 1;
            }
            Ok(())
        }
        .await;
        let failed = result.is_err();
        self.status.update(|s| {
            s.local_macs = local_macs;
            s.counters.publishes += wrote;
            s.counters.repairs += repaired;
            s.counters.claimed_elsewhere += elsewhere;
            s.deferred_claims = deferred;
            if failed {
                s.counters.publish_failures += 1;
            }
        });
        result
    }

    /// Whether the table has MAC key `k` claimed by another live host.
    fn held_elsewhere(&self, k: &Key) -> bool {
        let Key::Mac { network, mac } = k else {
            return false;
        };
        let table = self.table();
        table
            .mac(*network, *mac)
            .is_some_and(|c| c.host != self.me.host_id && table.has_host(&c.host))
    }

    /// Whether a `get` answer shows a MAC key claimed by another host.
    fn holds_other_claim(&self, answers: &[TxnOpResponse], k: &Key) -> bool {
        if !matches!(k, Key::Mac { .. }) {
            return false;
        }
        answers.iter().any(|a| match a {
            TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| {
                serde_json::from_slice::<MacValue>(kv.value())
                    .map(|v| v.host != self.me.host_id)
                    .unwrap_or(false)
            }),
            _ => false,
        })
    }
}

/// What one watch response did.
#[derive(Default)]
struct Applying {
    malformed: u64,
    /// A key of this host was deleted.
    lost_own: bool,
    changed: bool,
    /// Live hosts after it.
    hosts: usize,
}

enum SessionError {
    Lost(String),
    Stop,
}

impl From<String> for SessionError {
    fn from(s: String) -> Self {
        SessionError::Lost(s)
    }
}
