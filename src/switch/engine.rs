//! The switch engine: moves frame handles from every port's input links to
//! the output links that the forwarding database (or flooding) picks.
//!
//! The switch may run as several shards (see `shards.rs`), each an engine of
//! its own serving the ports homed on it. Port ids are switch-wide; a frame
//! for a port of another shard crosses a peer link, routed already.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use super::fdb::{Fdb, FdbLimits, DEFAULT_CAPACITY};
use super::peer::{PeerRx, PeerTag, PeerTx};
use super::port::{PortDrop, PortId, PortNetwork, SharedPortCounters, SwitchPort};
use crate::engine::{Engine, Mailbox};
use crate::packet::{FrameCache, FrameHandle, FramePool, LinkRx};
use snapnet_wire::flow::Parsed;
use snapnet_wire::{EthernetFrame, MacAddr};

/// Bytes a port of weight 1 may forward per deficit-round-robin round.
const QUANTUM: i64 = 16 * 1024;

/// A port homed on another shard, as this shard needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemotePort {
    pub shard: usize,
    pub network: PortNetwork,
    /// Its output queues: the shard that routes a frame picks the queue, so
    /// the frame is parsed (if at all) once.
    pub queues: usize,
}

/// A place a flooded frame goes.
#[derive(Clone, Copy)]
enum Target {
    Port(usize),
    Shard(usize),
}

pub struct SwitchEngine {
    name: String,
    pub(super) mailbox: Mailbox<SwitchEngine>,
    /// This shard's ports, by switch-wide id (`None`: free or elsewhere).
    pub(super) ports: Vec<Option<SwitchPort>>,
    /// Other shards' ports, by switch-wide id.
    pub(super) remote: Vec<Option<RemotePort>>,
    /// To each other shard, by shard index (`None` at this shard's own).
    pub(super) peers_out: Vec<Option<PeerTx>>,
    /// From each other shard.
    pub(super) peers_in: Vec<PeerRx>,
    /// Where the flood being sent goes; kept to flood without allocating.
    targets: Vec<Target>,
    pub(super) fdb: Fdb,
    /// The last learn and the last lookup: a burst of one flow repeats the
    /// same addresses, and two hash probes per frame are the switch's main
    /// cost. Valid while the FDB generation is unchanged.
    last_learn: Option<(u32, MacAddr, usize, u64)>,
    last_lookup: Option<LookupCache>,
    pool: Arc<FramePool>,
    cache: FrameCache,
}

impl SwitchEngine {
    /// Shard `shard` of `count`, not yet linked to the others.
    pub(super) fn shard(
        pool: &Arc<FramePool>,
        shard: usize,
        count: usize,
    ) -> std::io::Result<(Self, crate::engine::MailboxSender<SwitchEngine>)> {
        let (mailbox, sender) = Mailbox::new()?;
        let name = if count == 1 {
            "switch".to_string()
        } else {
            format!("switch/s{shard}")
        };
        Ok((
            Self {
                name,
                mailbox,
                ports: Vec::new(),
                remote: Vec::new(),
                peers_out: (0..count).map(|_| None).collect(),
                peers_in: Vec::new(),
                targets: Vec::new(),
                fdb: Fdb::new(DEFAULT_CAPACITY),
                last_learn: None,
                last_lookup: None,
                pool: pool.clone(),
                cache: pool.cache(),
            },
            sender,
        ))
    }

    /// Adds a port under the first free id; `static_macs` are pinned to it
    /// in the FDB (in the port's network; a port of any network takes none).
    pub fn add_port(
        &mut self,
        port: SwitchPort,
        static_macs: &[MacAddr],
    ) -> (PortId, Arc<SharedPortCounters>) {
        let free =
            |i: &usize| self.ports[*i].is_none() && self.remote.get(*i).is_none_or(Option::is_none);
        let slot = (0..self.ports.len()).find(free).unwrap_or(self.ports.len());
        let id = PortId(slot as u16);
        (id, self.attach(id, port, static_macs))
    }

    /// Adds a port under switch-wide id `id` (which the control plane chose).
    pub(super) fn attach(
        &mut self,
        id: PortId,
        port: SwitchPort,
        static_macs: &[MacAddr],
    ) -> Arc<SharedPortCounters> {
        let slot = usize::from(id.0);
        self.make_room(slot);
        let shared = port.shared.clone();
        let network = port.network;
        self.ports[slot] = Some(port);
        self.remote[slot] = None;
        self.pin(id, network, static_macs);
        shared
    }

    /// Learns of port `id` homed on another shard.
    pub(super) fn attach_remote(&mut self, id: PortId, port: RemotePort, static_macs: &[MacAddr]) {
        let slot = usize::from(id.0);
        self.make_room(slot);
        self.remote[slot] = Some(port);
        self.pin(id, port.network, static_macs);
    }

    /// Forgets port `id` of another shard and what was learned behind it.
    pub(super) fn detach_remote(&mut self, id: PortId) {
        if let Some(r) = self.remote.get_mut(usize::from(id.0)) {
            *r = None;
        }
        self.fdb.forget_port(id);
    }

    fn make_room(&mut self, slot: usize) {
        if self.ports.len() <= slot {
            self.ports.resize_with(slot + 1, || None);
        }
        if self.remote.len() <= slot {
            self.remote.resize(slot + 1, None);
        }
    }

    fn pin(&mut self, id: PortId, network: PortNetwork, static_macs: &[MacAddr]) {
        if let PortNetwork::Only(network) = network {
            for mac in static_macs {
                self.fdb.add_static(network, *mac, id);
            }
        }
    }

    /// Removes a port; frames waiting in its input links go back to the pool.
    pub fn remove_port(&mut self, id: PortId) -> bool {
        let Some(mut port) = self.ports.get_mut(usize::from(id.0)).and_then(Option::take) else {
            return false;
        };
        for input in port.inputs.iter_mut() {
            while let Some(f) = input.pop() {
                self.cache.free(f);
            }
        }
        self.fdb.forget_port(id);
        true
    }

    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Gives the frames of this shard's cache back to the pool's free lists
    /// (an upgrade hands every free frame to the new process).
    pub fn release_cache(&mut self) {
        let fresh = self.cache.pool().cache();
        drop(std::mem::replace(&mut self.cache, fresh));
    }

    /// The forwarding database, to change.
    pub fn fdb_mut(&mut self) -> &mut Fdb {
        &mut self.fdb
    }

    /// Bounds learning and sets the age of learned entries.
    pub fn set_fdb_limits(&mut self, limits: FdbLimits) {
        self.fdb.set_limits(limits);
    }

    /// Learns `src` behind port `port` (of this shard or another).
    #[inline]
    fn learn(&mut self, network: u32, src: MacAddr, port: usize) {
        let generation = self.fdb.generation();
        if !src.is_group() && self.last_learn != Some((network, src, port, generation)) {
            self.fdb.learn(network, src, PortId(port as u16));
            self.last_learn = Some((network, src, port, self.fdb.generation()));
        }
    }

    /// Forwards `frame` along `route`, which [`route`] chose while the
    /// frame waited at the head of its input (`None`: a runt).
    #[inline]
    fn forward(&mut self, input: usize, mut frame: FrameHandle, route: Option<Route>) {
        let Some(mut route) = route else {
            port_mut(&mut self.ports, input).drop_frame(PortDrop::Runt);
            self.cache.free(frame);
            return;
        };
        {
            let p = port_mut(&mut self.ports, input);
            p.counters.rx_packets += 1;
            p.counters.rx_bytes += u64::from(frame.len);
            p.dirty = true;
        }
        let (network, src, dst) = (route.network, route.src, route.dst);
        frame.network = network;
        let generation = self.fdb.generation();
        self.learn(network, src, input);
        if self.fdb.generation() != generation && !dst.is_group() {
            // Learning changed the sender's own entry, which is the
            // destination's when a frame is addressed to its sender.
            let packet = self.pool.bytes(&frame);
            route.to = unicast(
                &self.ports,
                &self.remote,
                &self.fdb,
                &mut self.last_lookup,
                input,
                network,
                dst,
                |queues| queue_for(queues, &mut route.parsed, packet),
            );
        }
        frame.parsed = route.parsed;
        match route.to {
            To::SamePort => {
                port_mut(&mut self.ports, input).drop_frame(PortDrop::SamePort);
                self.cache.free(frame);
            }
            To::Port { port, queue } => {
                output(&mut self.ports, &mut self.cache, port, queue, frame)
            }
            To::Shard { shard, port, queue } => {
                let tag = PeerTag {
                    origin: input as u16,
                    to: port as u16,
                    queue: queue as u16,
                };
                self.send_to_shard(input, shard, frame, tag);
            }
            To::Flood => self.flood(input, frame, true),
        }
    }

    /// Hands a frame from local port `input` to another shard.
    #[inline]
    fn send_to_shard(&mut self, input: usize, shard: usize, frame: FrameHandle, tag: PeerTag) {
        let pushed = match self.peers_out.get_mut(shard).and_then(Option::as_mut) {
            Some(link) => link.push(frame, tag),
            None => Err(frame),
        };
        if let Err(frame) = pushed {
            port_mut(&mut self.ports, input).drop_frame(PortDrop::LinkFull);
            self.cache.free(frame);
        }
    }

    /// The route of the frame at the head of input `q` of port `p`, and
    /// whether it must wait there: when it is unicast to a known port whose
    /// link is full, it stays, so the sender is slowed down instead of
    /// losing it (a vNIC leaves the guest's frames in its TX ring). Flooded
    /// frames never wait. A guest that stops taking frames holds its
    /// senders back only until its vNIC engine gives up on it (`RX_STALL`
    /// in `vnic::engine`): the engine then drops what waits for it, and
    /// every later frame, as `no_rx_buffers` until the guest posts buffers
    /// again. Until then its full links hold no more than their capacity,
    /// which the frame pool is sized for (`control::pool_sizing`), so
    /// other ports never run out of frames because of it.
    #[inline]
    fn head_route(&mut self, p: usize, q: usize) -> (Option<Route>, bool) {
        let Some(port) = self.ports[p].as_ref() else {
            return (None, false);
        };
        let Some(head) = port.inputs[q].peek() else {
            return (None, false);
        };
        let route = route(
            &self.ports,
            &self.remote,
            &self.fdb,
            &mut self.last_lookup,
            &self.pool,
            p,
            head,
        );
        let blocked = match route.map(|r| r.to) {
            Some(To::Port { port, queue }) => self.output_full(port, queue),
            // A shard link fills when the other shard's output does: the
            // wait reaches back to the sender all the same.
            Some(To::Shard { shard, .. }) => self.peers_out[shard]
                .as_ref()
                .is_some_and(|l| l.free() == 0),
            _ => false,
        };
        (route, blocked)
    }

    /// Forwards frames from input `q` of port `p` along `run` while they
    /// take it, have credit and fit their output, at most `max`: the inner
    /// loop of [`Self::serve_inputs`] for the frames behind a routed one,
    /// with both links borrowed once and the counters added once. Returns
    /// the frames forwarded and why it stopped.
    #[inline]
    fn run_burst(&mut self, p: usize, q: usize, run: Run, max: usize) -> (usize, RunEnd) {
        if self.fdb.generation() != run.generation {
            return (0, RunEnd::Diverged);
        }
        let Some((Some(input), Some(output))) = two_mut(&mut self.ports, p, run.port) else {
            return (0, RunEnd::Diverged);
        };
        let (Some(from), Some(to)) = (input.inputs.get_mut(q), output.outputs.get_mut(run.queue))
        else {
            return (0, RunEnd::Diverged);
        };
        let pool = &self.pool;
        let (mut deficit, mut bytes) = (input.deficit, 0u64);
        let sent = from.move_while(
            to,
            max,
            |f| {
                let len = i64::from(f.len);
                if deficit < len || !run.carries(pool.bytes(f)) {
                    return false;
                }
                deficit -= len;
                bytes += u64::from(f.len);
                true
            },
            |mut f| {
                f.network = run.network;
                f
            },
        );
        input.deficit = deficit;
        // Why it stopped, from the frame it stopped at (once per burst).
        let end = match from.peek() {
            _ if sent == max => RunEnd::Budget,
            None => RunEnd::Empty,
            Some(head) if input.deficit < i64::from(head.len) => RunEnd::NoCredit,
            Some(head) if !run.carries(pool.bytes(head)) => RunEnd::Diverged,
            Some(_) if to.free() == 0 => {
                input.counters.backpressure += 1;
                RunEnd::Blocked
            }
            // It arrived after the move looked (the sender runs on another
            // thread): routed on its own, it starts the next run.
            Some(_) => RunEnd::Diverged,
        };
        input.counters.rx_packets += sent as u64;
        input.counters.rx_bytes += bytes;
        output.counters.tx_packets += sent as u64;
        output.counters.tx_bytes += bytes;
        input.dirty = true;
        output.dirty = true;
        (sent, end)
    }

    #[inline]
    fn output_full(&self, port: usize, queue: usize) -> bool {
        self.ports[port]
            .as_ref()
            .and_then(|o| o.outputs.get(queue))
            .is_some_and(|l| l.free() == 0)
    }

    /// One deficit-round-robin pass over the input ports and the links
    /// from other shards: each forwards while it has credit (`weight *
    /// QUANTUM` bytes per round). Returns the frames forwarded, and whether
    /// frames wait while no waiting input has credit left (the round is over).
    fn serve_inputs(&mut self, budget: usize) -> (usize, bool) {
        let mut work = 0;
        let mut backlogged = false;
        let mut credited = false;
        for p in 0..self.ports.len() {
            let queues = self.ports[p].as_ref().map_or(0, |port| port.inputs.len());
            let mut waiting = false;
            for q in 0..queues {
                let mut n = 0;
                let mut run: Option<Run> = None;
                while n < budget {
                    let port = port_mut(&mut self.ports, p);
                    let Some(head) = port.inputs[q].peek() else {
                        break;
                    };
                    let len = i64::from(head.len);
                    waiting = true;
                    if port.deficit < len {
                        break;
                    }
                    credited = true;
                    if let Some(r) = run {
                        let (sent, end) = self.run_burst(p, q, r, budget - n);
                        n += sent;
                        if end != RunEnd::Diverged {
                            break;
                        }
                        // The head is routed on its own below.
                        run = None;
                        continue;
                    }
                    let (route, blocked) = self.head_route(p, q);
                    if blocked {
                        let port = port_mut(&mut self.ports, p);
                        port.counters.backpressure += 1;
                        port.dirty = true;
                        break;
                    }
                    let port = port_mut(&mut self.ports, p);
                    let Some(frame) = port.inputs[q].pop() else {
                        break;
                    };
                    port.deficit -= len;
                    // Taken before the head's source is learned: if that
                    // changes the FDB, the run ends at once.
                    run = route.and_then(|r| Run::after(&self.ports, &self.fdb, p, &r));
                    self.forward(p, frame, route);
                    n += 1;
                }
                work += n;
            }
            if let Some(port) = self.ports[p].as_mut() {
                backlogged |= waiting;
                if !waiting && port.inputs.iter().all(LinkRx::is_empty) {
                    // No banking of credit while idle.
                    port.deficit = 0;
                }
            }
        }
        for k in 0..self.peers_in.len() {
            let (n, waiting, had_credit) = self.serve_peer(k, budget);
            work += n;
            backlogged |= waiting;
            credited |= had_credit;
        }
        (work, backlogged && !credited)
    }

    /// Serves the link from another shard like an input port: returns the
    /// frames taken, whether frames wait, and whether it had credit.
    fn serve_peer(&mut self, k: usize, budget: usize) -> (usize, bool, bool) {
        let (mut n, mut waiting, mut credited) = (0, false, false);
        while n < budget {
            let peer = &self.peers_in[k];
            let Some((len, tag)) = peer.peek().map(|(f, t)| (i64::from(f.len), *t)) else {
                break;
            };
            waiting = true;
            if peer.deficit < len {
                break;
            }
            credited = true;
            if tag.to != PeerTag::FLOOD
                && self.output_full(usize::from(tag.to), usize::from(tag.queue))
            {
                // Waits in the link, which fills and holds the sender back.
                break;
            }
            let peer = &mut self.peers_in[k];
            let Some((frame, tag)) = peer.pop() else {
                break;
            };
            peer.deficit -= len;
            self.deliver(frame, tag);
            n += 1;
        }
        if !waiting {
            self.peers_in[k].deficit = 0;
        }
        (n, waiting, credited)
    }

    /// Takes a frame another shard routed here.
    #[inline]
    fn deliver(&mut self, frame: FrameHandle, tag: PeerTag) {
        let origin = usize::from(tag.origin);
        if self.remote.get(origin).is_some_and(Option::is_some) {
            // How learned entries reach every shard: from the frames
            // themselves, as between the switches of a network.
            if let Some(eth) = EthernetFrame::new_checked(self.pool.bytes(&frame)) {
                let src = eth.src();
                self.learn(frame.network, src, origin);
            }
        }
        let to = usize::from(tag.to);
        if tag.to == PeerTag::FLOOD {
            self.flood(origin, frame, false);
        } else if self.ports.get(to).is_some_and(Option::is_some) {
            output(
                &mut self.ports,
                &mut self.cache,
                to,
                usize::from(tag.queue),
                frame,
            );
        } else {
            // Its port was removed while the frame crossed.
            self.cache.free(frame);
        }
    }

    /// Sends a copy to every port of the frame's network but `input`; when
    /// the frame entered on this shard (`from_here`), one copy to each other
    /// shard that has such ports, which floods it to them.
    fn flood(&mut self, input: usize, mut frame: FrameHandle, from_here: bool) {
        let network = frame.network;
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        for (i, p) in self.ports.iter().enumerate() {
            if i != input && p.as_ref().is_some_and(|p| p.network.carries(network)) {
                targets.push(Target::Port(i));
            }
        }
        if from_here {
            let mut shards = 0u64;
            for r in self.remote.iter().flatten() {
                if r.network.carries(network) {
                    shards |= 1 << r.shard;
                }
            }
            while shards != 0 {
                targets.push(Target::Shard(shards.trailing_zeros() as usize));
                shards &= shards - 1;
            }
        }
        let Some((&last, rest)) = targets.split_last() else {
            if from_here {
                port_mut(&mut self.ports, input).drop_frame(PortDrop::NoRoute);
            }
            self.cache.free(frame);
            self.targets = targets;
            return;
        };
        for &target in rest {
            let Some(mut copy) = self.cache.alloc(frame.len as usize) else {
                let charged = match target {
                    Target::Port(i) => i,
                    Target::Shard(_) => input,
                };
                port_mut(&mut self.ports, charged).drop_frame(PortDrop::PoolEmpty);
                continue;
            };
            if let Target::Port(i) = target {
                // A multiqueue member parses the frame; the copies carry it.
                let _ = self.queue_of(i, &mut frame);
            }
            copy.len = frame.len;
            copy.offload = frame.offload;
            copy.network = frame.network;
            copy.parsed = frame.parsed;
            let off = usize::from(copy.offset);
            let src = self.pool.bytes(&frame);
            self.pool.frame_mut(&mut copy)[off..off + src.len()].copy_from_slice(src);
            self.flood_to(input, target, copy);
        }
        self.flood_to(input, last, frame);
        self.targets = targets;
    }

    #[inline]
    fn flood_to(&mut self, input: usize, target: Target, mut frame: FrameHandle) {
        match target {
            Target::Port(i) => {
                let queue = self.queue_of(i, &mut frame);
                output(&mut self.ports, &mut self.cache, i, queue, frame);
            }
            Target::Shard(s) => {
                let tag = PeerTag {
                    origin: input as u16,
                    to: PeerTag::FLOOD,
                    queue: 0,
                };
                self.send_to_shard(input, s, frame, tag);
            }
        }
    }

    /// The queue of port `port` that `frame` goes to, parsing the frame (once)
    /// if the port has more than one.
    #[inline]
    fn queue_of(&self, port: usize, frame: &mut FrameHandle) -> usize {
        let queues = self.ports[port].as_ref().map_or(0, |p| p.outputs.len());
        let mut parsed = frame.parsed;
        let queue = queue_for(queues, &mut parsed, self.pool.bytes(frame));
        frame.parsed = parsed;
        queue
    }
}

/// A route the frames behind a forwarded one may take without being routed
/// again: a burst of one flow repeats the head's addresses, and routing
/// (header read, lookups, learning) was most of the switch's per-frame cost.
/// Only for a unicast to a port of this shard with one output queue (a
/// multiqueue output picks the queue per flow) from a port of one network,
/// while the FDB is unchanged.
#[derive(Clone, Copy)]
struct Run {
    dst: MacAddr,
    src: MacAddr,
    network: u32,
    port: usize,
    queue: usize,
    generation: u64,
}

impl Run {
    /// The run behind a frame routed along `route` from port `input`, if
    /// its route can be reused.
    #[inline]
    fn after(ports: &[Option<SwitchPort>], fdb: &Fdb, input: usize, route: &Route) -> Option<Run> {
        let To::Port { port, queue } = route.to else {
            return None;
        };
        let single_network = matches!(
            ports[input].as_ref().map(|p| p.network),
            Some(PortNetwork::Only(_))
        );
        let one_queue = ports[port].as_ref().is_some_and(|o| o.outputs.len() == 1);
        if !single_network || !one_queue || route.src.is_group() {
            return None;
        }
        Some(Run {
            dst: route.dst,
            src: route.src,
            network: route.network,
            port,
            queue,
            generation: fdb.generation(),
        })
    }

    /// Whether a frame starting with `bytes` takes this run's route: a
    /// whole Ethernet header with the same addresses (the FDB is checked
    /// once per burst, as nothing in a burst changes it).
    #[inline]
    fn carries(&self, bytes: &[u8]) -> bool {
        EthernetFrame::new_checked(bytes)
            .is_some_and(|eth| eth.dst() == self.dst && eth.src() == self.src)
    }
}

/// Why [`SwitchEngine::run_burst`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunEnd {
    /// It forwarded what it was allowed to.
    Budget,
    /// The input is empty.
    Empty,
    /// The head has no credit left this round.
    NoCredit,
    /// The head's output is full: it waits.
    Blocked,
    /// The head takes another route (or the FDB changed): route it alone.
    Diverged,
}

/// Where a frame goes, decided once per frame (the backpressure check
/// decides it, forwarding carries it out) from one read of its headers.
#[derive(Clone, Copy)]
struct Route {
    network: u32,
    src: MacAddr,
    dst: MacAddr,
    to: To,
    /// The frame's parse as carried in, or as made to pick an output queue.
    parsed: Parsed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    /// Group-addressed, or to an address no port is known for.
    Flood,
    /// Back to the port it came from.
    SamePort,
    /// One queue of one port.
    Port { port: usize, queue: usize },
    /// One queue of a port of another shard.
    Shard {
        shard: usize,
        port: usize,
        queue: usize,
    },
}

/// The route of `frame`, which arrived on port `input`; `None` for a runt.
#[inline]
fn route(
    ports: &[Option<SwitchPort>],
    remote: &[Option<RemotePort>],
    fdb: &Fdb,
    last: &mut Option<LookupCache>,
    pool: &FramePool,
    input: usize,
    frame: &FrameHandle,
) -> Option<Route> {
    let packet = pool.bytes(frame);
    let eth = EthernetFrame::new_checked(packet)?;
    let (src, dst) = (eth.src(), eth.dst());
    let network = match ports[input].as_ref().map(|p| p.network) {
        Some(PortNetwork::Only(n)) => n,
        _ => frame.network,
    };
    let mut parsed = frame.parsed;
    let to = if dst.is_group() {
        To::Flood
    } else {
        unicast(ports, remote, fdb, last, input, network, dst, |queues| {
            queue_for(queues, &mut parsed, packet)
        })
    };
    Some(Route {
        network,
        src,
        dst,
        to,
        parsed,
    })
}

/// Where a unicast frame to `dst` goes: the FDB's port (here or on another
/// shard), and the queue `queue` picks among its output queues, else
/// everywhere.
#[allow(clippy::too_many_arguments)]
#[inline]
fn unicast(
    ports: &[Option<SwitchPort>],
    remote: &[Option<RemotePort>],
    fdb: &Fdb,
    last: &mut Option<LookupCache>,
    input: usize,
    network: u32,
    dst: MacAddr,
    queue: impl FnOnce(usize) -> usize,
) -> To {
    match cached_lookup(fdb, last, network, dst).map(|o| usize::from(o.0)) {
        Some(out) if out == input => To::SamePort,
        Some(out) => match (ports.get(out), remote.get(out)) {
            (Some(Some(port)), _) => To::Port {
                port: out,
                queue: queue(port.outputs.len()),
            },
            (_, Some(Some(r))) => To::Shard {
                shard: r.shard,
                port: out,
                queue: queue(r.queues),
            },
            _ => To::Flood,
        },
        None => To::Flood,
    }
}

/// The queue among `queues` for the flow of `packet`: parsed only for ports
/// that have more than one (hashing the 5-tuple is a noticeable share of the
/// switch's per-frame cost, and most ports have one queue), and at most once
/// per frame, as `parsed` travels with it.
#[inline]
fn queue_for(queues: usize, parsed: &mut Parsed, packet: &[u8]) -> usize {
    if queues <= 1 {
        return 0;
    }
    if !parsed.is_parsed() {
        *parsed = Parsed::of(packet).unwrap_or(Parsed::NOT_YET);
    }
    parsed.hash as usize % queues
}

/// The last lookup: (network, MAC) -> port, valid for one FDB generation.
type LookupCache = (u32, MacAddr, Option<PortId>, u64);

/// An FDB lookup through the one-entry cache.
#[inline]
fn cached_lookup(
    fdb: &Fdb,
    last: &mut Option<LookupCache>,
    network: u32,
    dst: MacAddr,
) -> Option<PortId> {
    let generation = fdb.generation();
    match *last {
        Some((n, mac, out, g)) if n == network && mac == dst && g == generation => out,
        _ => {
            let out = fdb.lookup(network, dst);
            *last = Some((network, dst, out, generation));
            out
        }
    }
}

/// Two distinct elements of `v`, both mutable (`get_disjoint_mut` is
/// newer than the crate's MSRV).
#[inline]
fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> Option<(&mut T, &mut T)> {
    if a == b || a.max(b) >= v.len() {
        return None;
    }
    if a < b {
        let (low, high) = v.split_at_mut(b);
        Some((&mut low[a], &mut high[0]))
    } else {
        let (low, high) = v.split_at_mut(a);
        Some((&mut high[0], &mut low[b]))
    }
}

#[inline]
fn port_mut(ports: &mut [Option<SwitchPort>], i: usize) -> &mut SwitchPort {
    ports[i].as_mut().expect("caller checked the port exists")
}

#[inline]
fn output(
    ports: &mut [Option<SwitchPort>],
    cache: &mut FrameCache,
    out: usize,
    queue: usize,
    frame: FrameHandle,
) {
    let port = port_mut(ports, out);
    let Some(link) = port.outputs.get_mut(queue) else {
        // A port without output queues.
        port.drop_frame(PortDrop::NoRoute);
        cache.free(frame);
        return;
    };
    let len = u64::from(frame.len);
    match link.push(frame) {
        Ok(()) => {
            port.counters.tx_packets += 1;
            port.counters.tx_bytes += len;
            port.dirty = true;
        }
        Err(frame) => {
            port.drop_frame(PortDrop::LinkFull);
            cache.free(frame);
        }
    }
}

impl Engine for SwitchEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn relays(&self) -> bool {
        true
    }

    #[inline]
    fn poll(&mut self, budget: usize) -> usize {
        if let Some(job) = self.mailbox.take() {
            job(self);
        }
        self.fdb.tick();
        // Deficit round robin: a new round starts only when no input with
        // frames waiting has credit left. When an output is full, inputs keep
        // their credit and wait, so a congested output (an uplink) is shared
        // by weight.
        let (mut work, round_over) = self.serve_inputs(budget);
        if round_over {
            for port in self.ports.iter_mut().flatten() {
                if port.inputs.iter().any(|l| !l.is_empty()) {
                    port.deficit += i64::from(port.weight) * QUANTUM;
                }
            }
            for peer in self.peers_in.iter_mut().filter(|p| !p.is_empty()) {
                peer.deficit += i64::from(peer.weight) * QUANTUM;
            }
            work += self.serve_inputs(budget).0;
        }
        if work > 0 {
            for port in self.ports.iter_mut().flatten() {
                for out in port.outputs.iter() {
                    out.flush();
                }
                if port.dirty {
                    port.shared.publish(&port.counters);
                    port.dirty = false;
                }
            }
            for peer in self.peers_out.iter().flatten() {
                peer.flush();
            }
        }
        work
    }

    fn wake_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.mailbox.doorbell().as_raw_fd()];
        for port in self.ports.iter().flatten() {
            fds.extend(port.inputs.iter().map(|l| l.doorbell().as_raw_fd()));
        }
        fds.extend(self.peers_in.iter().map(|p| p.doorbell().as_raw_fd()));
        fds
    }

    fn arm(&mut self) -> bool {
        self.mailbox.doorbell().arm();
        let mut work = self.mailbox.pending();
        for port in self.ports.iter().flatten() {
            for l in port.inputs.iter() {
                l.doorbell().arm();
                work |= !l.is_empty();
            }
        }
        for p in self.peers_in.iter() {
            p.doorbell().arm();
            work |= !p.is_empty();
        }
        work
    }

    fn disarm(&mut self) {
        self.mailbox.doorbell().disarm();
        for port in self.ports.iter().flatten() {
            for l in port.inputs.iter() {
                l.doorbell().disarm();
            }
        }
        for p in self.peers_in.iter() {
            p.doorbell().disarm();
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::packet::{link, LinkRx, LinkTx, PoolConfig};

    struct TestPort {
        to_switch: LinkTx,
        from_switch: LinkRx,
    }

    fn add(sw: &mut SwitchEngine, name: &str, mac: Option<MacAddr>) -> (TestPort, PortId) {
        let (to_switch, input) = link(64).unwrap();
        let (output, from_switch) = link(4).unwrap();
        let (id, _) = sw.add_port(
            SwitchPort::new(name, PortNetwork::Only(0), vec![input], vec![output]),
            &mac.into_iter().collect::<Vec<_>>(),
        );
        (
            TestPort {
                to_switch,
                from_switch,
            },
            id,
        )
    }

    pub(in crate::switch) fn frame(
        cache: &mut FrameCache,
        pool: &FramePool,
        dst: MacAddr,
        src: MacAddr,
        len: usize,
    ) -> FrameHandle {
        let mut f = cache.alloc(len).unwrap();
        f.len = len as u32;
        let off = usize::from(f.offset);
        let b = &mut pool.frame_mut(&mut f)[off..off + len];
        b[0..6].copy_from_slice(&dst.0);
        b[6..12].copy_from_slice(&src.0);
        f
    }

    pub(in crate::switch) const A: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    pub(in crate::switch) const B: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xb]);
    pub(in crate::switch) const C: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xc]);

    #[test]
    fn unicast_flood_learn_and_every_drop_reason() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut sw, _h) = crate::switch::shards::single(&pool).unwrap();
        let (mut pa, a) = add(&mut sw, "a", Some(A));
        let (mut pb, b) = add(&mut sw, "b", Some(B));
        let (mut pc, c) = add(&mut sw, "c", None);

        // Known unicast goes to exactly one port.
        pa.to_switch
            .push(frame(&mut cache, &pool, B, A, 60))
            .unwrap();
        sw.poll(64);
        assert_eq!(pb.from_switch.len(), 1);
        assert!(pc.from_switch.is_empty());
        // Broadcast reaches everyone but the sender, byte-exact.
        pc.to_switch
            .push(frame(&mut cache, &pool, MacAddr::BROADCAST, C, 100))
            .unwrap();
        sw.poll(64);
        assert_eq!(pa.from_switch.len(), 1);
        assert_eq!(pb.from_switch.len(), 2);
        let fa = pa.from_switch.pop().unwrap();
        assert_eq!(&pool.bytes(&fa)[6..12], &C.0);
        assert_eq!(pool.bytes(&fa).len(), 100);
        cache.free(fa);
        // C was learned: unicast to C now goes only to c.
        pa.to_switch
            .push(frame(&mut cache, &pool, C, A, 60))
            .unwrap();
        sw.poll(64);
        assert_eq!(pc.from_switch.len(), 1);
        assert_eq!(pb.from_switch.len(), 2);
        // A frame for the sender's own port, a runt, and a full link.
        pa.to_switch
            .push(frame(&mut cache, &pool, A, A, 60))
            .unwrap();
        let mut runt = cache.alloc(10).unwrap();
        runt.len = 10;
        pa.to_switch.push(runt).unwrap();
        for _ in 0..4 {
            pa.to_switch
                .push(frame(&mut cache, &pool, B, A, 60))
                .unwrap();
        }
        sw.poll(64);
        let ca = sw.ports[usize::from(a.0)]
            .as_ref()
            .unwrap()
            .counters
            .clone();
        let cb = sw.ports[usize::from(b.0)]
            .as_ref()
            .unwrap()
            .counters
            .clone();
        assert_eq!(ca.dropped(PortDrop::SamePort), 1);
        assert_eq!(ca.dropped(PortDrop::Runt), 1);
        assert_eq!(cb.dropped(PortDrop::LinkFull), 0, "unicast waits");
        assert_eq!(cb.tx_packets, 4, "link of 4 held 2 already");
        assert_eq!(ca.rx_packets, 5);
        assert!(ca.backpressure >= 1);
        assert_eq!(pa.to_switch.free(), 64 - 2, "two frames wait in a's input");
        // Once b takes its frames, the waiting two follow, in order.
        for _ in 0..4 {
            cache.free(pb.from_switch.pop().unwrap());
        }
        sw.poll(64);
        assert_eq!(pb.from_switch.len(), 2);
        let ca = sw.ports[usize::from(a.0)]
            .as_ref()
            .unwrap()
            .counters
            .clone();
        assert_eq!(ca.rx_packets, 7);
        // Removing a port forgets what was learned behind it.
        assert!(sw.remove_port(c));
        assert!(!sw.remove_port(c));
        assert!(sw.fdb().lookup(0, C).is_none());
        for p in [&mut pa, &mut pb, &mut pc] {
            while let Some(f) = p.from_switch.pop() {
                cache.free(f);
            }
        }
        drop(cache);
        drop(sw);
        assert_eq!(
            pool.free_frames().0,
            pool.total_frames().0,
            "no frame leaked"
        );
    }

    /// Frames behind a routed one reuse its route only while they carry
    /// its addresses and the FDB is unchanged: a burst that mixes flows,
    /// and a head whose learning moves its own destination, go where the
    /// FDB says for each frame, in order.
    #[test]
    fn a_burst_reuses_a_route_only_while_it_holds() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut sw, _h) = crate::switch::shards::single(&pool).unwrap();
        let (mut pa, a) = add(&mut sw, "a", None);
        let (mut pb, _) = add(&mut sw, "b", None);
        let (mut pc, _) = add(&mut sw, "c", None);
        // Learn B behind b and C behind c (each floods once).
        for (p, mac) in [(&mut pb, B), (&mut pc, C)] {
            p.to_switch
                .push(frame(&mut cache, &pool, MacAddr::BROADCAST, mac, 60))
                .unwrap();
            sw.poll(64);
        }
        for p in [&mut pa, &mut pb, &mut pc] {
            while let Some(f) = p.from_switch.pop() {
                cache.free(f);
            }
        }
        // A burst: B, B, C, B (lengths tell them apart at the outputs).
        for (dst, len) in [(B, 60), (B, 61), (C, 62), (B, 63)] {
            pa.to_switch
                .push(frame(&mut cache, &pool, dst, A, len))
                .unwrap();
        }
        sw.poll(64);
        let lens = |p: &mut TestPort, cache: &mut FrameCache| {
            let mut v = Vec::new();
            while let Some(f) = p.from_switch.pop() {
                v.push(f.len);
                cache.free(f);
            }
            v
        };
        assert_eq!(lens(&mut pb, &mut cache), [60, 61, 63]);
        assert_eq!(lens(&mut pc, &mut cache), [62]);
        // A run towards a port of a lower id than its input's.
        for len in [70, 71, 72] {
            pc.to_switch
                .push(frame(&mut cache, &pool, B, C, len))
                .unwrap();
        }
        sw.poll(64);
        assert_eq!(lens(&mut pb, &mut cache), [70, 71, 72]);
        // B now sends from a to itself: learning the first frame's source
        // moves B to a, so that frame and the two like it behind it are
        // dropped as addressed to their own port, none reaches b.
        for _ in 0..3 {
            pa.to_switch
                .push(frame(&mut cache, &pool, B, B, 60))
                .unwrap();
        }
        sw.poll(64);
        assert!(pb.from_switch.is_empty());
        let ca = sw.ports[usize::from(a.0)]
            .as_ref()
            .unwrap()
            .counters
            .clone();
        assert_eq!(ca.dropped(PortDrop::SamePort), 3);
        assert_eq!(ca.rx_packets, 7);
    }

    #[test]
    fn a_congested_output_is_shared_by_weight() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut sw, h) = crate::switch::shards::single(&pool).unwrap();
        let (mut pa, a) = add(&mut sw, "a", Some(A));
        let (mut pb, b) = add(&mut sw, "b", Some(B));
        let (mut pc, _) = add(&mut sw, "c", Some(C));
        sw.ports[usize::from(b.0)].as_mut().unwrap().weight = 3;
        let _ = (a, h);
        let mut from = [0u64; 2];
        for _ in 0..2000 {
            // Both senders always have frames waiting; the output is the
            // bottleneck.
            for (p, src) in [(&mut pa, A), (&mut pb, B)] {
                while p.to_switch.free() > 0 {
                    p.to_switch
                        .push(frame(&mut cache, &pool, C, src, 1000))
                        .unwrap();
                }
            }
            sw.poll(64);
            // The output takes one frame per poll (a slow uplink).
            if let Some(f) = pc.from_switch.pop() {
                let src = &pool.bytes(&f)[6..12];
                from[usize::from(src == B.0)] += 1;
                cache.free(f);
            }
        }
        let ratio = from[1] as f64 / from[0] as f64;
        assert!((2.8..=3.2).contains(&ratio), "b:a = {ratio} ({from:?})");
        for p in [&mut pa, &mut pb] {
            while let Some(f) = p.from_switch.pop() {
                cache.free(f);
            }
        }
        drop(sw);
        for p in [&mut pa, &mut pb] {
            drop(std::mem::replace(&mut p.to_switch, link(1).unwrap().0));
        }
    }

    /// A port whose output has `queues` links of 4 frames each.
    fn add_queues(
        sw: &mut SwitchEngine,
        mac: MacAddr,
        queues: usize,
    ) -> (LinkTx, Vec<LinkRx>, PortId) {
        let (to_switch, input) = link(64).unwrap();
        let (outputs, from_switch): (Vec<_>, Vec<_>) =
            (0..queues).map(|_| link(4).unwrap()).unzip();
        let (id, _) = sw.add_port(
            SwitchPort::new("mq", PortNetwork::Only(0), vec![input], outputs),
            &[mac],
        );
        (to_switch, from_switch, id)
    }

    /// A TCP/IPv4 frame from `src` to `dst` with source port `sport`.
    fn tcp(
        cache: &mut FrameCache,
        pool: &FramePool,
        dst: MacAddr,
        src: MacAddr,
        sport: u16,
    ) -> FrameHandle {
        let mut f = frame(cache, pool, dst, src, 60);
        let off = usize::from(f.offset);
        let b = &mut pool.frame_mut(&mut f)[off..off + 60];
        b[12..14].copy_from_slice(&[0x08, 0x00]);
        b[14] = 0x45;
        b[14 + 9] = 6;
        b[34..36].copy_from_slice(&sport.to_be_bytes());
        f
    }

    fn drain(links: &mut [LinkRx], cache: &mut FrameCache) {
        for l in links {
            while let Some(f) = l.pop() {
                cache.free(f);
            }
        }
    }

    #[test]
    fn a_frame_is_parsed_once_and_waits_for_the_queue_it_will_take() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut sw, _h) = crate::switch::shards::single(&pool).unwrap();
        let (mut pa, a) = add(&mut sw, "a", Some(A));
        let (mut to_b, mut from_b, _) = add_queues(&mut sw, B, 2);
        let queue_of = |f: &FrameHandle| Parsed::of(pool.bytes(f)).unwrap().hash as usize % 2;

        // One flow, five frames: its queue takes four, the fifth waits
        // although the other queue is empty.
        let probe = tcp(&mut cache, &pool, B, A, 1000);
        let q = queue_of(&probe);
        cache.free(probe);
        for _ in 0..5 {
            pa.to_switch
                .push(tcp(&mut cache, &pool, B, A, 1000))
                .unwrap();
        }
        sw.poll(64);
        assert_eq!((from_b[q].len(), from_b[1 - q].len()), (4, 0));
        let ca = sw.ports[usize::from(a.0)]
            .as_ref()
            .unwrap()
            .counters
            .clone();
        assert!(ca.backpressure >= 1);
        assert_eq!(ca.rx_packets, 4);
        // What the switch parsed travels on with the frame.
        let f = from_b[q].pop().unwrap();
        assert_eq!(Some(f.parsed), Parsed::of(pool.bytes(&f)));
        assert_eq!((f.parsed.l3, f.parsed.l4), (14, 34));
        cache.free(f);
        sw.poll(64);
        assert_eq!(from_b[q].len(), 4, "the waiting frame followed");
        drain(&mut from_b, &mut cache);

        // A parse that came with the frame is used, not redone: a carried
        // hash (here, deliberately not the frame's own) picks the queue.
        let mut f = tcp(&mut cache, &pool, B, A, 1000);
        f.parsed = Parsed {
            hash: (1 - q) as u32,
            l3: 14,
            l4: 34,
        };
        pa.to_switch.push(f).unwrap();
        sw.poll(64);
        assert_eq!((from_b[q].len(), from_b[1 - q].len()), (0, 1));
        drain(&mut from_b, &mut cache);

        // A port of one queue needs no flow hash: the frame is not parsed.
        to_b.push(tcp(&mut cache, &pool, A, B, 1000)).unwrap();
        sw.poll(64);
        let f = pa.from_switch.pop().unwrap();
        assert!(!f.parsed.is_parsed());
        cache.free(f);

        // Flooded copies carry the parse made for a multiqueue member.
        pa.to_switch
            .push(tcp(&mut cache, &pool, MacAddr::BROADCAST, A, 7))
            .unwrap();
        let (_to_c, mut from_c, _c) = add_queues(&mut sw, C, 2);
        sw.poll(64);
        let mut copies = 0;
        for l in from_b.iter_mut().chain(from_c.iter_mut()) {
            while let Some(f) = l.pop() {
                assert_eq!(Some(f.parsed), Parsed::of(pool.bytes(&f)));
                cache.free(f);
                copies += 1;
            }
        }
        assert_eq!(copies, 2, "b and c each got the broadcast");
        drain(&mut from_b, &mut cache);
        drain(&mut from_c, &mut cache);
    }

    #[test]
    fn a_frame_to_its_own_sender_is_routed_after_learning() {
        let pool = FramePool::new(&PoolConfig::small_for_tests()).unwrap();
        let mut cache = pool.cache();
        let (mut sw, _h) = crate::switch::shards::single(&pool).unwrap();
        let (mut pa, a) = add(&mut sw, "a", None);
        let (mut pc, c) = add(&mut sw, "c", None);
        // X is learned behind c, then moves to a with a frame addressed to
        // itself: the route chosen before learning (to c) is stale.
        const X: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x77]);
        pc.to_switch
            .push(frame(&mut cache, &pool, MacAddr::BROADCAST, X, 60))
            .unwrap();
        sw.poll(64);
        cache.free(pa.from_switch.pop().unwrap());
        assert_eq!(sw.fdb().lookup(0, X), Some(c));
        pa.to_switch
            .push(frame(&mut cache, &pool, X, X, 60))
            .unwrap();
        sw.poll(64);
        assert_eq!(sw.fdb().lookup(0, X), Some(a));
        assert!(pc.from_switch.is_empty(), "not sent where X used to be");
        let ca = sw.ports[usize::from(a.0)]
            .as_ref()
            .unwrap()
            .counters
            .clone();
        assert_eq!(ca.dropped(PortDrop::SamePort), 1);
    }
}
