//! An upgrade rehearsed inside one process: an "old" and a "new" side, each
//! with its own mapping of one pool memfd and its own engine group, between
//! which vNICs move exactly as they would between two processes (the state
//! crosses a handoff channel, the fds with it), while a reflector stands in
//! for the old side's switch and sends every frame back to the queue it
//! came from. The hand-over tests and `snapnet-bench handover` drive it.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::bridge::{consumer, producer, BridgeRx, BridgeTx};
use super::bridge_engine::{BridgeCounters, BridgeEngine, Lane};
use super::vnic_handover::{
    borrowed, export_vnic, import_vnic, pause_vnic, HandoverError, VnicHandover,
};
use super::Channel;
use crate::engine::MailboxSender;
use crate::packet::{link, FrameHandle, FramePool, LinkRx, LinkTx, PoolConfig};
use crate::sched::{EngineGroup, EngineId, Policy};
use crate::vnic::antispoof::SpoofGuard;
use crate::vnic::guest_log::{self, GuestLog};
use crate::vnic::{
    Connection, EngineSink, QueueCounters, SharedQueueCounters, SocketRole, VnicDevice, VnicEngine,
    VnicEngineConfig,
};
use snapnet_wire::MacAddr;

/// Frame handles a link and a bridge ring hold (as in the daemon).
const CAPACITY: usize = 1024;
const TIMEOUT: Duration = Duration::from_secs(5);

type Device = Arc<VnicDevice<EngineSink>>;

/// The MAC of rehearsed vNIC `i` (what its guest must send from).
pub fn mac_of(i: usize) -> MacAddr {
    MacAddr([2, 0, 0, 0, (i >> 8) as u8, i as u8])
}

/// A vNIC's engines with fresh links.
struct Engines {
    engines: Vec<VnicEngine>,
    senders: Vec<MailboxSender<VnicEngine>>,
    counters: Vec<Arc<SharedQueueCounters>>,
    /// The switch's ends of each queue's links (from, to the engine).
    switch_ends: Vec<(LinkRx, LinkTx)>,
}

fn engines(
    pool: &Arc<FramePool>,
    name: &str,
    mac: MacAddr,
    queue_pairs: u16,
) -> std::io::Result<Engines> {
    let log = Arc::new(GuestLog::new(guest_log::INTERVAL));
    let mut e = Engines {
        engines: Vec::new(),
        senders: Vec::new(),
        counters: Vec::new(),
        switch_ends: Vec::new(),
    };
    for q in 0..queue_pairs {
        let (to_switch, switch_in) = link(CAPACITY)?;
        let (switch_out, from_switch) = link(CAPACITY)?;
        let cfg = VnicEngineConfig {
            name: format!("{name}/q{q}"),
            mtu: 1500,
            guard: SpoofGuard::new(mac, None),
            shaping: Default::default(),
            log: log.clone(),
        };
        let (engine, sender, counters) = VnicEngine::new(cfg, pool, to_switch, from_switch)?;
        e.engines.push(engine);
        e.senders.push(sender);
        e.counters.push(counters);
        e.switch_ends.push((switch_in, switch_out));
    }
    Ok(e)
}

/// Sends every frame back to the queue it came from; a frame the engine's
/// link has no room for waits.
fn reflect(mut ends: Vec<(LinkRx, LinkTx)>, stop: Arc<AtomicBool>) {
    let mut waiting: Vec<Option<FrameHandle>> = ends.iter().map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0;
        for ((from, to), held) in ends.iter_mut().zip(&mut waiting) {
            while let Some(f) = held.take().or_else(|| from.pop()) {
                if let Err(f) = to.push(f) {
                    *held = Some(f);
                    break;
                }
                moved += 1;
            }
            to.flush();
        }
        if moved == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// The rings of one queue, both ways: the old side's producer and consumer,
/// then the new side's; each producer has its own mapping of the ring.
type QueueRings = ((BridgeTx, BridgeRx), (BridgeTx, BridgeRx));

fn rings() -> Result<QueueRings, HandoverError> {
    let err = |e: super::bridge::BridgeError| HandoverError::Io {
        vnic: String::new(),
        what: "bridge ring",
        source: std::io::Error::other(e.to_string()),
    };
    let old_in = consumer(CAPACITY as u32).map_err(err)?;
    let new_in = consumer(CAPACITY as u32).map_err(err)?;
    let to = |rx: &BridgeRx| -> Result<BridgeTx, HandoverError> {
        let ring = rx.ring_fd().try_clone_to_owned();
        let wake = rx.wake_fd().try_clone_to_owned();
        match (ring, wake) {
            (Ok(r), Ok(w)) => producer(r, w).map_err(err),
            (Err(e), _) | (_, Err(e)) => Err(err(e.into())),
        }
    };
    let (old_tx, new_tx) = (to(&new_in)?, to(&old_in)?);
    Ok(((old_tx, old_in), (new_tx, new_in)))
}

/// What the new side prepared for a vNIC during the brownout.
struct Prepared {
    device: Device,
    senders: Vec<MailboxSender<VnicEngine>>,
    counters: Vec<Arc<SharedQueueCounters>>,
    switch_ends: Vec<(LinkRx, LinkTx)>,
    rings: Vec<QueueRings>,
}

/// How long one vNIC's move took.
#[derive(Clone, Copy, Debug)]
pub struct MoveTiming {
    /// From the request to pause its handler to the new side serving its
    /// stream (traffic flows until the handler has paused).
    pub handover: Duration,
    /// Its engines' blackout: from their beginning to let go of the vrings
    /// to the new side's handler serving (the replay done, the connection
    /// adopted), a little after the new engines took the vrings.
    pub engines: Duration,
}

/// One rehearsed vNIC.
pub struct RehearsedVnic {
    pub name: String,
    pub socket: PathBuf,
    queue_pairs: u16,
    old_device: Device,
    old_connection: Option<Connection>,
    old_engines: Vec<EngineId>,
    old_counters: Vec<Arc<SharedQueueCounters>>,
    prepared: Option<Prepared>,
    new_connection: Option<Connection>,
    new_counters: Vec<Arc<SharedQueueCounters>>,
    bridges: Option<(Arc<BridgeCounters>, Arc<BridgeCounters>)>,
}

/// Two sides and the vNICs that move between them.
pub struct Rehearsal {
    old_pool: Arc<FramePool>,
    new_pool: Arc<FramePool>,
    old_group: Arc<EngineGroup>,
    new_group: Arc<EngineGroup>,
    pub vnics: Vec<RehearsedVnic>,
    stop: Arc<AtomicBool>,
    reflector: Option<JoinHandle<()>>,
}

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Rehearsal {
    /// `vnics` vNICs of `queue_pairs` queue pairs each on the old side, with
    /// their sockets in `dir`, served as usual. `cpus`: the old and the new
    /// side's engine thread (dedicated groups), or anywhere when empty.
    pub fn new(
        vnics: usize,
        queue_pairs: u16,
        dir: &Path,
        cpus: &[usize],
    ) -> std::io::Result<Self> {
        let frames = (vnics * usize::from(queue_pairs) * 4 * CAPACITY + 8192) as u32;
        let cfg = PoolConfig {
            frames,
            ..PoolConfig::small_for_tests()
        };
        let old_pool = FramePool::new(&cfg).map_err(other)?;
        let new_pool =
            FramePool::attach(&cfg, old_pool.memfd().try_clone_to_owned()?).map_err(other)?;
        let (small, large) = old_pool.take_free(frames as usize / 2, 4);
        new_pool.give_free(&small, &large).map_err(other)?;
        let cpu = |i: usize| cpus.get(i).map(|c| vec![*c]).unwrap_or_default();
        let old_group = EngineGroup::start("old", Policy::Dedicated, 1, &cpu(0)).map_err(other)?;
        let new_group = EngineGroup::start("new", Policy::Dedicated, 1, &cpu(1)).map_err(other)?;
        let mut all_ends = Vec::new();
        let mut list = Vec::new();
        for i in 0..vnics {
            let name = format!("vnic{i}");
            let socket = dir.join(format!("{name}.sock"));
            let e = engines(&old_pool, &name, mac_of(i), queue_pairs)?;
            let device = Arc::new(VnicDevice::new(
                &name,
                mac_of(i),
                1500,
                queue_pairs,
                EngineSink::new(e.senders),
            ));
            let ids = e
                .engines
                .into_iter()
                .map(|engine| old_group.add(Box::new(engine)).map_err(other))
                .collect::<Result<_, _>>()?;
            let connection = Connection::spawn(device.clone(), &socket, SocketRole::Server, None)
                .map_err(other)?;
            all_ends.extend(e.switch_ends);
            list.push(RehearsedVnic {
                name,
                socket,
                queue_pairs,
                old_device: device,
                old_connection: Some(connection),
                old_engines: ids,
                old_counters: e.counters,
                prepared: None,
                new_connection: None,
                new_counters: Vec::new(),
                bridges: None,
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let reflector = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("reflector".into())
                .spawn(move || reflect(all_ends, stop))?
        };
        Ok(Self {
            old_pool,
            new_pool,
            old_group,
            new_group,
            vnics: list,
            stop,
            reflector: Some(reflector),
        })
    }

    /// The brownout for vNIC `i`: the new side's engines (holding frames for
    /// their guest until the replay attaches its vrings), device and rings.
    pub fn prepare(&mut self, i: usize) -> Result<(), HandoverError> {
        let io = |what| {
            move |source| HandoverError::Io {
                vnic: format!("vnic{i}"),
                what,
                source,
            }
        };
        let v = &mut self.vnics[i];
        let mut e =
            engines(&self.new_pool, &v.name, mac_of(i), v.queue_pairs).map_err(io("engines"))?;
        for engine in &mut e.engines {
            engine.hold_frames(true);
        }
        let senders = e.senders.clone();
        let device = Arc::new(VnicDevice::new(
            &v.name,
            mac_of(i),
            1500,
            v.queue_pairs,
            EngineSink::new(e.senders),
        ));
        for engine in e.engines {
            self.new_group
                .add(Box::new(engine))
                .map_err(|g| io("engine group")(other(g)))?;
        }
        let rings = (0..v.queue_pairs)
            .map(|_| rings())
            .collect::<Result<_, _>>()?;
        v.prepared = Some(Prepared {
            device,
            senders,
            counters: e.counters,
            switch_ends: e.switch_ends,
            rings,
        });
        Ok(())
    }

    /// The blackout for vNIC `i` (prepared first): from the pause of its
    /// handler in the old side to the new side serving its stream.
    pub fn move_vnic(&mut self, i: usize) -> Result<MoveTiming, HandoverError> {
        let v = &mut self.vnics[i];
        let name = v.name.clone();
        let prepared = v.prepared.take().ok_or_else(|| HandoverError::Io {
            vnic: name.clone(),
            what: "prepare",
            source: std::io::Error::other("not prepared"),
        })?;
        let old_connection = v.old_connection.take().expect("served by the old side");
        let started = Instant::now();
        let paused = pause_vnic(&name, &old_connection, &v.old_device, TIMEOUT)?;
        let (handler, engines_stopped) = (paused.handler, paused.engines_stopping);
        let stopped: Vec<VnicEngine> = v
            .old_engines
            .drain(..)
            .filter_map(|id| self.old_group.remove(id).ok())
            .filter_map(|e| e.into_any().downcast::<VnicEngine>().ok())
            .map(|e| *e)
            .collect();
        let (message, fds, exported) =
            export_vnic(&name, handler, old_connection.listener(), stopped)
                .map_err(|failed| failed.error)?;
        let io = |what| {
            let vnic = name.clone();
            move |e: super::ChannelError| HandoverError::Io {
                vnic,
                what,
                source: other(e),
            }
        };
        let (tx, rx) = Channel::pair().map_err(io("channel"))?;
        tx.send_message("vnic", &message, &borrowed(&fds))
            .map_err(io("send"))?;
        drop(fds);
        let (message, fds): (VnicHandover, Vec<OwnedFd>) =
            rx.recv_message("vnic").map_err(io("receive"))?;

        for (sender, state) in prepared.senders.iter().zip(message.engines.clone()) {
            sender
                .call(TIMEOUT, move |e: &mut VnicEngine| e.take_over(&state))
                .map_err(|e| HandoverError::Io {
                    vnic: name.clone(),
                    what: "engine",
                    source: other(e),
                })?;
        }
        let (mut old_lanes, mut new_lanes) = (Vec::new(), Vec::new());
        for (((to_switch, from_switch), (switch_in, switch_out)), rings) in exported
            .links
            .into_iter()
            .zip(prepared.switch_ends)
            .zip(prepared.rings)
        {
            let ((old_tx, old_rx), (new_tx, new_rx)) = rings;
            old_lanes.push(Lane::new(from_switch, old_tx, old_rx, to_switch));
            new_lanes.push(Lane::new(switch_in, new_tx, new_rx, switch_out));
        }
        let old_bridge =
            BridgeEngine::new(format!("{name}/bridge"), self.old_pool.clone(), old_lanes);
        let new_bridge =
            BridgeEngine::new(format!("{name}/bridge"), self.new_pool.clone(), new_lanes);
        v.bridges = Some((old_bridge.counters(), new_bridge.counters()));
        let group_err = |g: crate::sched::GroupError| HandoverError::Io {
            vnic: name.clone(),
            what: "engine group",
            source: other(g),
        };
        self.old_group
            .add(Box::new(old_bridge))
            .map_err(group_err)?;
        self.new_group
            .add(Box::new(new_bridge))
            .map_err(group_err)?;
        let connection = import_vnic(&message, fds, &prepared.device, &v.socket, TIMEOUT)?;
        let timing = MoveTiming {
            handover: started.elapsed(),
            engines: engines_stopped.elapsed(),
        };
        old_connection.release();
        drop(exported.handler);
        v.new_connection = Some(connection);
        v.new_counters = prepared.counters;
        Ok(timing)
    }

    /// A hand-over of vNIC `i` that fails after the pause (the new process
    /// died, say): its handler stays paused for `hold`, then the old side
    /// serves on where it stopped.
    pub fn pause_and_roll_back(&mut self, i: usize, hold: Duration) -> Result<(), HandoverError> {
        let v = &mut self.vnics[i];
        let connection = v.old_connection.as_ref().expect("served by the old side");
        let handler = pause_vnic(&v.name, connection, &v.old_device, TIMEOUT)?.handler;
        std::thread::sleep(hold);
        let taken_back = v.old_device.take_back_vrings();
        connection.resume(handler);
        taken_back.map_err(|source| HandoverError::Device {
            vnic: v.name.clone(),
            source,
        })
    }

    /// The vNIC's counters: summed over its queues, on the side that serves
    /// it now (which continues the old side's).
    pub fn counters(&self, i: usize) -> QueueCounters {
        let v = &self.vnics[i];
        let side = if v.new_connection.is_some() {
            &v.new_counters
        } else {
            &v.old_counters
        };
        let mut sum = QueueCounters::default();
        for c in side {
            sum.add(&c.snapshot());
        }
        sum
    }

    /// What the bridges of vNIC `i` moved (old side, new side), once moved.
    pub fn bridge_counters(&self, i: usize) -> Option<(Arc<BridgeCounters>, Arc<BridgeCounters>)> {
        self.vnics[i].bridges.clone()
    }

    /// Stops everything.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reflector.take() {
            let _ = r.join();
        }
        for v in &mut self.vnics {
            if let Some(c) = v.new_connection.take() {
                c.stop();
            }
            if let Some(c) = v.old_connection.take() {
                c.stop();
            }
        }
        self.new_group.stop();
        self.old_group.stop();
    }
}
