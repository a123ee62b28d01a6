//! The Pony engine (docs/pony.md, "Engine"): flows to remote hosts' engines
//! below, applications' operations above (their handlers are in `ops.rs`),
//! frames to and from the uplink's queue engines through links.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapnet_pony::abi::{kind, status, Completion};
use snapnet_wire::pony::{
    self as wire, AckBlock, FlowHeader, Op, OpHeader, Packet, ParseError, Segments,
};
use snapnet_wire::MacAddr;

use super::apps::{App, Conn};
use super::config::PonyConfig;
use super::flow::{Arrival, Receiver, Sender};
use super::frames;
use super::status::{AppStatus, ConnStatus, FlowStatus, PonyCounters, PonyStatus};
use crate::engine::{Engine, Mailbox, MailboxSender};
use crate::packet::fast_hash::FastMap;
use crate::packet::{FrameCache, FrameHandle, FramePool, LinkRx, LinkTx};
use crate::shaping::WakeTimer;

/// Packets a poll takes from the uplink, and commands from one application.
const COMMANDS_PER_APP: usize = 64;

/// Operations bundled after a DATA packet's first, at most (the packet's
/// room bounds them too).
const MAX_BUNDLE: usize = 64;

/// What a segment puts on the wire: its operation, payload length and
/// payload source, or a no-op when its application went away (its sequence
/// number, or its place in a bundle, still has to arrive).
fn wire_segment(apps: &FastMap<u32, App>, p: &InFlight) -> (OpHeader, usize, Option<(u32, u64)>) {
    let source = p
        .source
        .filter(|(app, _)| p.len > 0 && apps.contains_key(app));
    match source {
        Some(_) => (p.header, p.len as usize, source),
        None if p.len > 0 => (control(Op::Nop, 0, 0), 0, None),
        None => (p.header, 0, None),
    }
}

/// Copies a segment's payload from its application's arena.
fn copy_payload(apps: &FastMap<u32, App>, source: Option<(u32, u64)>, out: &mut [u8]) -> bool {
    match source {
        Some((app, at)) => apps.get(&app).is_some_and(|a| a.region.arena_read(at, out)),
        None => true,
    }
}

/// The next packet's worth of `out`: its operation and at most `max_len`
/// of the bytes it has left.
fn next_segment(out: &Outgoing, max_len: u32) -> InFlight {
    match *out {
        Outgoing::Control(header) => InFlight {
            header,
            len: 0,
            source: None,
            credit: None,
        },
        Outgoing::Bytes {
            header,
            app,
            arena,
            credit,
        } => InFlight {
            header,
            len: (header.total_len - header.offset).min(max_len),
            source: Some((app, arena + u64::from(header.offset))),
            credit: credit.map(|c| (app, c)),
        },
    }
}

/// `next` as a segment bundled into a packet with `room` payload bytes
/// left: only an operation that can never wait at the receiver
/// ([`Op::may_wait`]) and only whole.
fn bundled_segment(next: &Outgoing, room: usize) -> Option<InFlight> {
    let whole = next_segment(next, u32::MAX);
    (!whole.header.op.may_wait() && wire::SEGMENT_OVERHEAD + whole.len as usize <= room)
        .then_some(whole)
}

/// A packet in flight: enough to send it again.
#[derive(Clone, Copy, Debug)]
pub(super) struct InFlight {
    pub header: OpHeader,
    pub len: u32,
    /// Where the payload is: an application's arena offset.
    pub source: Option<(u32, u64)>,
    /// The operation its acknowledgement counts for (application,
    /// operation id): a message completes when all its packets are acked.
    pub credit: Option<(u32, u64)>,
}

/// What a flow has to send, in the order it was asked (one packet at a
/// time from each, round robin, so a long message does not hold up short
/// ones behind it).
#[derive(Clone, Copy, Debug)]
pub(super) enum Outgoing {
    /// One packet without payload.
    Control(OpHeader),
    /// `total` bytes at arena offset `arena` of application `app`, cut into
    /// packets; `header.offset` is where the next one starts.
    Bytes {
        header: OpHeader,
        app: u32,
        arena: u64,
        credit: Option<u64>,
    },
}

pub(super) struct Flow {
    pub peer: Ipv4Addr,
    pub mac: Option<MacAddr>,
    /// Our epoch for this flow, and the peer's (0: not heard yet).
    pub epoch: u32,
    pub peer_epoch: u32,
    pub sender: Sender<u32>,
    pub receiver: Receiver,
    /// Each slot's packet: its first operation...
    pub in_flight: Vec<Option<InFlight>>,
    /// ...and those bundled after it (kept apart, so that a slot's vector
    /// keeps its capacity from packet to packet).
    pub bundled: Vec<Vec<InFlight>>,
    pub free_slots: Vec<u32>,
    pub queue: VecDeque<Outgoing>,
    pub conns: usize,
    /// A neighbour look-up was asked for and has not answered.
    pub resolving: bool,
}

impl Flow {
    fn new(peer: Ipv4Addr, mac: Option<MacAddr>, epoch: u32, cfg: &PonyConfig) -> Self {
        let flow_cfg = cfg.flow();
        Self {
            peer,
            mac,
            epoch,
            peer_epoch: 0,
            sender: Sender::new(flow_cfg),
            receiver: Receiver::with_policy(flow_cfg.ack),
            in_flight: Vec::new(),
            bundled: Vec::new(),
            free_slots: Vec::new(),
            queue: VecDeque::new(),
            conns: 0,
            resolving: false,
        }
    }

    fn store(&mut self, p: InFlight, more: &[InFlight]) -> u32 {
        let slot = match self.free_slots.pop() {
            Some(s) => {
                self.in_flight[s as usize] = Some(p);
                s
            }
            None => {
                self.in_flight.push(Some(p));
                self.bundled.push(Vec::new());
                (self.in_flight.len() - 1) as u32
            }
        };
        let bundled = &mut self.bundled[slot as usize];
        bundled.clear();
        bundled.extend_from_slice(more);
        slot
    }

    /// Frees an acknowledged packet's slot; the operations its
    /// acknowledgement counts for go to `credits`.
    fn release(&mut self, slot: u32, credits: &mut Vec<(u32, u64)>) {
        let Some(p) = self.in_flight.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free_slots.push(slot);
        let more = &self.bundled[slot as usize];
        credits.extend(
            p.credit
                .iter()
                .chain(more.iter().filter_map(|m| m.credit.as_ref())),
        );
    }

    /// The header of a data packet sent now as `seq`.
    fn data_header(&self, seq: u32, now: u64) -> FlowHeader {
        FlowHeader {
            kind: wire::kind::DATA,
            src_epoch: self.epoch,
            dst_epoch: self.peer_epoch,
            seq,
            timestamp: now,
            hold: 0,
            more: 0,
        }
    }

    fn has_work(&self, now_ns: u64) -> bool {
        self.receiver.ack_due_now(now_ns)
            || (self.mac.is_some() && !self.queue.is_empty() && self.sender.can_send())
    }
}

/// Asks for a peer's MAC off the engine thread (the kernel's neighbour
/// table); the answer comes back through the mailbox.
pub type Resolver = mpsc::Sender<Ipv4Addr>;

/// What the engine is made of besides its config.
pub struct PonySetup {
    pub name: String,
    pub address: Ipv4Addr,
    /// The uplink interface's MAC: the source of every frame.
    pub mac: MacAddr,
    /// The uplink's MTU.
    pub mtu: u16,
    pub from_uplink: Vec<LinkRx>,
    pub to_uplink: Vec<LinkTx>,
    pub resolver: Resolver,
}

pub struct PonyEngine {
    pub(super) name: String,
    mailbox: Mailbox<PonyEngine>,
    pub(super) cfg: PonyConfig,
    pub(super) address: Ipv4Addr,
    mac: MacAddr,
    /// Payload bytes a DATA packet carries at most.
    pub(super) payload_max: usize,
    pool: Arc<FramePool>,
    cache: FrameCache,
    from_uplink: Vec<LinkRx>,
    to_uplink: Vec<LinkTx>,
    pub(super) resolver: Resolver,
    pub(super) apps: FastMap<u32, App>,
    /// Service id -> application.
    pub(super) services: FastMap<u32, u32>,
    pub(super) conns: FastMap<u32, Conn>,
    next_conn: u32,
    pub(super) flows: FastMap<Ipv4Addr, Flow>,
    pub(super) counters: PonyCounters,
    epoch_seed: u64,
    started: Instant,
    timer: WakeTimer,
    wake_epoch: u64,
    /// Completions reached an application since the worker last asked
    /// ([`Engine::take_handoff`]).
    handoff: bool,
    // Scratch, sized once.
    acked: Vec<u32>,
    credits: Vec<(u32, u64)>,
    bundle: Vec<InFlight>,
    resend: Vec<(u32, u32)>,
    ids: Vec<u32>,
    peers: Vec<Ipv4Addr>,
}

impl PonyEngine {
    pub fn new(
        setup: PonySetup,
        cfg: PonyConfig,
        pool: &Arc<FramePool>,
    ) -> std::io::Result<(Self, MailboxSender<PonyEngine>)> {
        let (mailbox, sender) = Mailbox::new()?;
        let payload_max =
            usize::from(setup.mtu).saturating_sub(frames::IP_UDP_LEN + wire::DATA_HEADER_LEN);
        if payload_max < 64 {
            return Err(std::io::Error::other(format!(
                "MTU {} leaves no room for Pony's payload",
                setup.mtu
            )));
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(u32::from(setup.address)) << 17;
        Ok((
            Self {
                name: setup.name,
                mailbox,
                cfg,
                address: setup.address,
                mac: setup.mac,
                payload_max,
                pool: pool.clone(),
                cache: pool.cache(),
                from_uplink: setup.from_uplink,
                to_uplink: setup.to_uplink,
                resolver: setup.resolver,
                apps: FastMap::default(),
                services: FastMap::default(),
                conns: FastMap::default(),
                next_conn: 1,
                flows: FastMap::default(),
                counters: PonyCounters::default(),
                epoch_seed: seed | 1,
                started: Instant::now(),
                timer: WakeTimer::new()?,
                wake_epoch: 0,
                handoff: false,
                acked: Vec::with_capacity(wire::SACK_BITS),
                credits: Vec::with_capacity(wire::SACK_BITS),
                bundle: Vec::with_capacity(MAX_BUNDLE),
                resend: Vec::with_capacity(wire::SACK_BITS),
                ids: Vec::new(),
                peers: Vec::new(),
            },
            sender,
        ))
    }

    /// Nanoseconds on the engine's clock (what timestamps carry).
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// A fresh non-zero epoch (xorshift: unpredictable enough to tell
    /// incarnations apart, which is all it is for).
    fn next_epoch(&mut self) -> u32 {
        let mut x = self.epoch_seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.epoch_seed = x;
        (x as u32).max(1)
    }

    pub(super) fn new_conn_id(&mut self) -> u32 {
        loop {
            let id = self.next_conn;
            self.next_conn = self.next_conn.wrapping_add(1).max(1);
            if !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    /// Adds an application (from the attach server, through the mailbox).
    pub fn add_app(&mut self, app: App) -> Result<(), String> {
        if self.apps.len() >= self.cfg.max_apps as usize {
            return Err(format!(
                "{} applications are attached already",
                self.apps.len()
            ));
        }
        if app.service != 0 && self.services.contains_key(&app.service) {
            return Err(format!(
                "service {} is taken by another application",
                app.service
            ));
        }
        if app.service != 0 {
            self.services.insert(app.service, app.id);
        }
        self.apps.insert(app.id, app);
        self.wake_epoch += 1;
        Ok(())
    }

    /// Removes an application that went away: its connections close (their
    /// peers are told), its operations and queued bytes are dropped, its
    /// region is unmapped.
    pub fn remove_app(&mut self, id: u32) -> bool {
        let Some(app) = self.apps.get(&id) else {
            return false;
        };
        let conns: Vec<u32> = app.conns.iter().copied().collect();
        for c in conns {
            self.close_conn(c, true, status::CLOSED, None);
        }
        for flow in self.flows.values_mut() {
            flow.queue
                .retain(|o| !matches!(o, Outgoing::Bytes { app, .. } if *app == id));
        }
        if let Some(app) = self.apps.remove(&id) {
            if self.services.get(&app.service) == Some(&id) {
                self.services.remove(&app.service);
            }
        }
        self.wake_epoch += 1;
        true
    }

    /// The flow to `peer`, made if there is none (`None` at the limit).
    pub(super) fn flow_to(&mut self, peer: Ipv4Addr, mac: Option<MacAddr>) -> Option<&mut Flow> {
        if !self.flows.contains_key(&peer) {
            if self.flows.len() >= self.cfg.max_flows as usize {
                self.counters.drop_flow_limit += 1;
                return None;
            }
            let epoch = self.next_epoch();
            let mac = self.cfg.next_hop_mac.or(mac);
            self.flows
                .insert(peer, Flow::new(peer, mac, epoch, &self.cfg));
        }
        self.flows.get_mut(&peer)
    }

    /// A neighbour look-up answered (from the resolver, by mailbox).
    pub fn resolved(&mut self, peer: Ipv4Addr, mac: Option<MacAddr>) {
        let Some(flow) = self.flows.get_mut(&peer) else {
            return;
        };
        flow.resolving = false;
        match mac {
            Some(m) if flow.mac.is_none() => flow.mac = Some(m),
            Some(_) => {}
            None if flow.mac.is_none() => self.fail_flow(peer, status::UNREACHABLE),
            None => {}
        }
    }

    /// Closes connection `id` here; `tell_peer` sends CLOSE. The owner gets
    /// CLOSED (`user_data` of its CLOSE command, if it asked), its
    /// operations on it fail with `why`, its half-received messages are
    /// freed.
    pub(super) fn close_conn(&mut self, id: u32, tell_peer: bool, why: u8, user_data: Option<u64>) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if let Some(flow) = self.flows.get_mut(&conn.peer) {
            flow.conns = flow.conns.saturating_sub(1);
            flow.queue.retain(|o| match o {
                Outgoing::Control(h) | Outgoing::Bytes { header: h, .. } => h.src_conn != id,
            });
            if tell_peer && conn.peer_conn != 0 {
                flow.queue
                    .push_back(Outgoing::Control(control(Op::Close, conn.peer_conn, id)));
            }
        }
        let Some(app) = self.apps.get_mut(&conn.app) else {
            return;
        };
        app.conns.remove(&id);
        for r in conn.reassembly.values() {
            app.rx.release(r.rx_offset);
        }
        for order in conn.streams.values() {
            for &(offset, _) in order.done.values() {
                app.rx.release(offset);
            }
        }
        for op in app.pending_of(id) {
            if let Some(p) = app.take_pending(op) {
                app.complete(Completion {
                    kind: p.kind.done_kind(),
                    status: why,
                    conn: id,
                    user_data: p.user_data,
                    ..Completion::default()
                });
            }
        }
        let (kind, user_data) = match conn.state {
            super::apps::ConnState::Connecting { user_data } => (kind::CONNECTED, user_data),
            super::apps::ConnState::Open => (kind::CLOSED, user_data.unwrap_or(0)),
        };
        app.complete(Completion {
            kind,
            status: if kind == kind::CONNECTED && why == status::OK {
                status::CLOSED
            } else {
                why
            },
            conn: id,
            user_data,
            peer_addr: u32::from(conn.peer),
            ..Completion::default()
        });
    }

    /// Gives up on a flow: its connections close with `why`, what it held
    /// is dropped.
    pub(super) fn fail_flow(&mut self, peer: Ipv4Addr, why: u8) {
        let ids: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer == peer)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close_conn(id, false, why, None);
        }
        if self.flows.remove(&peer).is_some() {
            self.counters.flows_failed += 1;
        }
    }

    /// The peer's flow started again (it restarted, or gave up on ours):
    /// what was in flight is lost, so the connections over it close, and
    /// both directions start from sequence 0.
    fn reset_flow(&mut self, peer: Ipv4Addr) {
        let ids: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| c.peer == peer)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.close_conn(id, false, status::CLOSED, None);
        }
        if let Some(flow) = self.flows.get_mut(&peer) {
            let flow_cfg = self.cfg.flow();
            flow.sender = Sender::new(flow_cfg);
            flow.receiver = Receiver::with_policy(flow_cfg.ack);
            flow.in_flight.clear();
            flow.bundled.clear();
            flow.free_slots.clear();
            flow.queue.clear();
            flow.peer_epoch = 0;
        }
        self.counters.flow_resets += 1;
    }

    // ---- wire -> engine ----

    fn receive(&mut self, budget: usize) -> usize {
        let mut n = 0;
        for i in 0..self.from_uplink.len() {
            while n < budget {
                let Some(frame) = self.from_uplink[i].pop() else {
                    break;
                };
                n += 1;
                self.receive_frame(&frame);
                self.cache.free(frame);
            }
        }
        n
    }

    fn receive_frame(&mut self, frame: &FrameHandle) {
        let pool = self.pool.clone();
        let bytes = pool.bytes(frame);
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += bytes.len() as u64;
        let Some((src_mac, src_ip, payload)) = frames::parse(bytes, self.address) else {
            self.counters.drop_not_pony += 1;
            return;
        };
        match wire::parse(payload) {
            Err(e) => match e {
                ParseError::Truncated => self.counters.drop_truncated += 1,
                ParseError::BadMagic => self.counters.drop_bad_magic += 1,
                ParseError::UnknownKind => self.counters.drop_unknown_kind += 1,
                ParseError::UnknownOp => self.counters.drop_unknown_op += 1,
                ParseError::BadLength => self.counters.drop_bad_length += 1,
                ParseError::BadBundle => self.counters.drop_bad_bundle += 1,
            },
            Ok(packet) => self.receive_packet(src_mac, src_ip, packet),
        }
    }

    fn receive_packet(&mut self, src_mac: MacAddr, peer: Ipv4Addr, packet: Packet<'_>) {
        let flow_header = match &packet {
            Packet::Data { flow, .. } | Packet::Ack { flow, .. } => *flow,
        };
        if flow_header.src_epoch == 0 {
            self.counters.drop_stale_epoch += 1;
            return;
        }
        let Some(flow) = self.flow_to(peer, Some(src_mac)) else {
            return;
        };
        if flow.mac.is_none() {
            flow.mac = Some(src_mac);
        }
        if flow_header.dst_epoch != 0 && flow_header.dst_epoch != flow.epoch {
            // For an earlier flow of ours: tell the peer ours, so that it
            // starts over instead of retransmitting into nothing.
            let (epoch, dst) = (flow.epoch, flow_header.src_epoch);
            self.counters.drop_stale_epoch += 1;
            self.send_reset(peer, epoch, dst);
            return;
        }
        if flow.peer_epoch != 0 && flow.peer_epoch != flow_header.src_epoch {
            self.reset_flow(peer);
        }
        let now = self.now_ns();
        let Some(flow) = self.flows.get_mut(&peer) else {
            return;
        };
        flow.peer_epoch = flow_header.src_epoch;
        match packet {
            Packet::Ack { flow: f, sack } => {
                let ack = AckBlock {
                    cumulative: f.seq,
                    hold: f.hold,
                    echo: f.timestamp,
                    sack,
                };
                self.take_ack(peer, &ack, now);
            }
            Packet::Data {
                flow: f,
                op,
                payload,
                ack,
                more,
            } => {
                // The acknowledgement first: what it frees (window, credit)
                // is there for what the data asks.
                if let Some(ack) = ack {
                    self.take_ack(peer, &ack, now);
                }
                self.take_data(peer, &f, (&op, payload), more, now);
            }
        }
    }

    /// An acknowledgement from `peer` (an ACK packet or a DATA_ACK's
    /// trailer): frees what it covers and credits its operations.
    fn take_ack(&mut self, peer: Ipv4Addr, ack: &AckBlock, now: u64) {
        let Some(flow) = self.flows.get_mut(&peer) else {
            return;
        };
        self.counters.acks_received += 1;
        self.acked.clear();
        flow.sender.on_ack(
            ack.cumulative,
            &ack.sack,
            ack.echo,
            ack.hold,
            now,
            &mut self.acked,
        );
        let mut credits = std::mem::take(&mut self.credits);
        credits.clear();
        for &slot in &self.acked {
            flow.release(slot, &mut credits);
        }
        for &(app, op) in &credits {
            self.credit_packet(app, op);
        }
        self.credits = credits;
    }

    /// A DATA packet's operations: delivered once, unless it is a
    /// duplicate, beyond the window, or its first finds no room (then
    /// unacknowledged). The bundled ones cannot wait (`parse` checked), so
    /// a packet is taken whole or not at all.
    fn take_data(
        &mut self,
        peer: Ipv4Addr,
        f: &FlowHeader,
        (op, payload): (&OpHeader, &[u8]),
        more: Segments<'_>,
        now: u64,
    ) {
        let Some(flow) = self.flows.get_mut(&peer) else {
            return;
        };
        match flow.receiver.classify(f.seq) {
            Arrival::Duplicate => {
                flow.receiver.duplicate(f.timestamp, now);
                self.counters.duplicates += 1;
            }
            Arrival::OutOfWindow => {
                flow.receiver.count_out_of_window();
                self.counters.drop_out_of_window += 1;
            }
            Arrival::New => {
                if self.deliver(peer, op, payload) {
                    for (op, payload) in more {
                        self.deliver(peer, &op, payload);
                    }
                    if let Some(flow) = self.flows.get_mut(&peer) {
                        flow.receiver.accept(f.seq, f.timestamp, now);
                    }
                } else {
                    self.counters.held_no_room += 1;
                }
            }
        }
    }

    // ---- engine -> wire ----

    /// Sends every flow's retransmissions, new packets its window allows,
    /// and its ACK. Returns packets sent.
    fn transmit(&mut self) -> usize {
        let now = self.now_ns();
        let mut sent = 0;
        self.peers.clear();
        self.peers.extend(self.flows.keys().copied());
        let peers = std::mem::take(&mut self.peers);
        for &peer in &peers {
            sent += self.transmit_flow(peer, now);
            if self.flows.get(&peer).is_some_and(|f| f.sender.failed()) {
                self.fail_flow(peer, status::UNREACHABLE);
            }
        }
        self.peers = peers;
        if sent > 0 {
            for l in &self.to_uplink {
                l.flush();
            }
        }
        sent
    }

    fn transmit_flow(&mut self, peer: Ipv4Addr, now: u64) -> usize {
        let Some(flow) = self.flows.get_mut(&peer) else {
            return 0;
        };
        let Some(dst_mac) = flow.mac else {
            if !flow.resolving && !flow.queue.is_empty() {
                flow.resolving = true;
                let _ = self.resolver.send(peer);
            }
            return 0;
        };
        let mut sent = 0;
        // 1. Retransmissions, with their sequence numbers.
        self.resend.clear();
        flow.sender.retransmits(now, &mut self.resend);
        let resend = std::mem::take(&mut self.resend);
        for &(seq, slot) in &resend {
            let Some(flow) = self.flows.get(&peer) else {
                break;
            };
            let Some(p) = flow.in_flight.get(slot as usize).copied().flatten() else {
                continue;
            };
            let header = flow.data_header(seq, now);
            let mut more = std::mem::take(&mut self.bundle);
            more.clear();
            more.extend_from_slice(&flow.bundled[slot as usize]);
            let emitted = self.emit_data(dst_mac, peer, &header, &p, &more, None);
            self.bundle = more;
            if emitted {
                self.counters.retransmits += 1;
                sent += 1;
            }
        }
        self.resend = resend;
        // 2. New packets while the window is open.
        while let Some(flow) = self.flows.get_mut(&peer) {
            if !flow.sender.can_send() || self.to_uplink[0].free() == 0 {
                break;
            }
            let Some(out) = flow.queue.pop_front() else {
                break;
            };
            let p = next_segment(&out, self.payload_max as u32);
            if let Outgoing::Bytes {
                mut header,
                app,
                arena,
                credit,
            } = out
            {
                header.offset += p.len;
                if header.offset < header.total_len {
                    flow.queue.push_back(Outgoing::Bytes {
                        header,
                        app,
                        arena,
                        credit,
                    });
                }
            }
            // What arrived from the peer is acknowledged on the way back
            // when the packet has room for the trailer...
            let ack = flow.receiver.ack_due()
                && p.len as usize + wire::ACK_TRAILER_LEN <= self.payload_max;
            let trailer = if ack { wire::ACK_TRAILER_LEN } else { 0 };
            // ...and small operations queued behind this one ride along,
            // whole, while they fit. Not behind one that may wait at the
            // receiver (a message, a write, a connect): refused, it would
            // hold back everything riding with it, other tenants' included.
            let mut room = self.payload_max.saturating_sub(p.len as usize + trailer);
            let mut more = std::mem::take(&mut self.bundle);
            more.clear();
            while more.len() < MAX_BUNDLE && !p.header.op.may_wait() {
                let Some(m) = flow.queue.front().and_then(|o| bundled_segment(o, room)) else {
                    break;
                };
                flow.queue.pop_front();
                room -= wire::SEGMENT_OVERHEAD + m.len as usize;
                more.push(m);
            }
            let slot = flow.store(p, &more);
            let seq = flow.sender.sent(slot, now);
            let header = flow.data_header(seq, now);
            let ack = ack.then(|| flow.receiver.ack_fields(now));
            let emitted = self.emit_data(dst_mac, peer, &header, &p, &more, ack.as_ref());
            if emitted {
                sent += 1;
                self.counters.ops_bundled += more.len() as u64;
                if ack.is_some() {
                    self.counters.acks_piggybacked += 1;
                    if let Some(flow) = self.flows.get_mut(&peer) {
                        flow.receiver.ack_sent();
                    }
                }
            }
            self.bundle = more;
        }
        // 3. An ACK of its own for what arrived, when it cannot wait for
        // data going back any longer.
        if let Some(flow) = self.flows.get_mut(&peer) {
            if flow.receiver.ack_due_now(now) {
                let a = flow.receiver.ack_fields(now);
                let header = FlowHeader {
                    kind: wire::kind::ACK,
                    src_epoch: flow.epoch,
                    dst_epoch: flow.peer_epoch,
                    seq: a.cumulative,
                    timestamp: a.echo,
                    hold: a.hold,
                    more: 0,
                };
                if self.emit_ack(dst_mac, peer, &header, &a.sack) {
                    self.counters.acks_sent += 1;
                    sent += 1;
                    if let Some(flow) = self.flows.get_mut(&peer) {
                        flow.receiver.ack_sent();
                    }
                }
            }
        }
        sent
    }

    /// Tells a peer our epoch (an ACK of nothing), so that it resets.
    fn send_reset(&mut self, peer: Ipv4Addr, epoch: u32, dst_epoch: u32) {
        let Some(mac) = self.flows.get(&peer).and_then(|f| f.mac) else {
            return;
        };
        let header = FlowHeader {
            kind: wire::kind::ACK,
            src_epoch: epoch,
            dst_epoch,
            seq: 0,
            timestamp: 0,
            hold: 0,
            more: 0,
        };
        if self.emit_ack(mac, peer, &header, &[0; wire::SACK_BITS / 64]) {
            self.to_uplink[0].flush();
        }
    }

    fn emit_ack(&mut self, mac: MacAddr, peer: Ipv4Addr, h: &FlowHeader, sack: &[u64; 4]) -> bool {
        let Some(mut frame) = self.cache.alloc(frames::HEADERS_LEN + wire::ACK_LEN) else {
            self.counters.drop_pool_empty += 1;
            return false;
        };
        let start = usize::from(frame.offset);
        let len = frames::HEADERS_LEN + wire::ACK_LEN;
        let buf = &mut self.pool.frame_mut(&mut frame)[start..start + len];
        frames::write_headers(buf, self.mac, mac, self.address, peer, wire::ACK_LEN);
        wire::emit_ack(h, sack, &mut buf[frames::HEADERS_LEN..]);
        frame.len = len as u32;
        self.push_frame(frame)
    }

    /// Builds and queues a DATA packet: `p`, then the operations of `more`
    /// bundled after it, then `ack` as its trailer (a DATA_ACK).
    fn emit_data(
        &mut self,
        mac: MacAddr,
        peer: Ipv4Addr,
        h: &FlowHeader,
        p: &InFlight,
        more: &[InFlight],
        ack: Option<&AckBlock>,
    ) -> bool {
        let apps = &self.apps;
        let (op, len, source) = wire_segment(apps, p);
        let trailer = if ack.is_some() {
            wire::ACK_TRAILER_LEN
        } else {
            0
        };
        let bundled: usize = more
            .iter()
            .map(|m| wire::SEGMENT_OVERHEAD + wire_segment(apps, m).1)
            .sum();
        let pony_len = wire::DATA_HEADER_LEN + len + bundled + trailer;
        let Some(mut frame) = self.cache.alloc(frames::HEADERS_LEN + pony_len) else {
            self.counters.drop_pool_empty += 1;
            return false;
        };
        let start = usize::from(frame.offset);
        let total = frames::HEADERS_LEN + pony_len;
        let buf = &mut self.pool.frame_mut(&mut frame)[start..start + total];
        frames::write_headers(buf, self.mac, mac, self.address, peer, pony_len);
        let kind = if ack.is_some() {
            wire::kind::DATA_ACK
        } else {
            wire::kind::DATA
        };
        let flow = FlowHeader {
            kind,
            more: more.len() as u16,
            ..*h
        };
        let pony = &mut buf[frames::HEADERS_LEN..];
        wire::emit_data(&flow, &op, pony);
        if !more.is_empty() {
            wire::set_first_len(len as u16, pony);
        }
        let mut at = wire::DATA_HEADER_LEN;
        let mut copied = copy_payload(apps, source, &mut pony[at..at + len]);
        at += len;
        for m in more {
            let (op, len, source) = wire_segment(apps, m);
            wire::emit_segment(&op, len as u16, &mut pony[at..]);
            at += wire::SEGMENT_OVERHEAD;
            copied &= copy_payload(apps, source, &mut pony[at..at + len]);
            at += len;
        }
        if !copied {
            // Checked when the operation was taken; the arena does not
            // shrink, so this cannot happen.
            self.cache.free(frame);
            return false;
        }
        if let Some(a) = ack {
            wire::emit_ack_trailer(a, &mut pony[at..at + trailer]);
        }
        frame.len = total as u32;
        self.push_frame(frame)
    }

    fn push_frame(&mut self, frame: FrameHandle) -> bool {
        match self.to_uplink[0].push(frame) {
            Ok(()) => {
                self.counters.tx_packets += 1;
                true
            }
            Err(frame) => {
                self.cache.free(frame);
                self.counters.drop_link_full += 1;
                false
            }
        }
    }

    // ---- applications ----

    fn take_commands(&mut self) -> usize {
        self.ids.clear();
        self.ids.extend(self.apps.keys().copied());
        let ids = std::mem::take(&mut self.ids);
        let mut n = 0;
        for &id in &ids {
            let Some(app) = self.apps.get_mut(&id) else {
                continue;
            };
            app.flush_overflow();
            if !app.overflow.is_empty() {
                // Its completions back up: take no more work from it.
                continue;
            }
            for _ in 0..COMMANDS_PER_APP {
                let Some(app) = self.apps.get_mut(&id) else {
                    break;
                };
                match app.region.take_command() {
                    Ok(Some(cmd)) => {
                        app.commands += 1;
                        n += 1;
                        self.command(id, cmd);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!("{}: application {id} detached: {e}", self.name);
                        self.counters.apps_detached_bad_ring += 1;
                        self.remove_app(id);
                        break;
                    }
                }
            }
        }
        for &id in &ids {
            if let Some(app) = self.apps.get_mut(&id) {
                self.handoff |= app.notify_if_waiting();
            }
        }
        self.ids = ids;
        n
    }

    /// Earliest retransmission deadline, as an instant.
    fn deadline(&self) -> Option<Instant> {
        let ns = self
            .flows
            .values()
            .flat_map(|f| [f.sender.deadline(), f.receiver.ack_deadline()])
            .flatten()
            .min()?;
        Some(self.started + Duration::from_nanos(ns))
    }

    /// What `pony.status` shows.
    pub fn status(&self) -> PonyStatus {
        let mut apps: Vec<AppStatus> = self
            .apps
            .values()
            .map(|a| AppStatus {
                id: a.id,
                name: a.name.clone(),
                service: a.service,
                connections: a.conns.len(),
                regions: a.regions.iter().flatten().count(),
                operations: a.pending_count(),
                rx_used_bytes: a.rx.used(),
                rx_bytes: a.rx.capacity(),
                commands: a.commands,
                bad_commands: a.bad_commands,
            })
            .collect();
        apps.sort_by_key(|a| a.id);
        let mut connections: Vec<ConnStatus> = self
            .conns
            .iter()
            .map(|(&id, c)| ConnStatus {
                id,
                app: c.app,
                peer: c.peer,
                peer_conn: c.peer_conn,
                open: c.state == super::apps::ConnState::Open,
                tx_messages: c.tx_messages,
                rx_messages: c.rx_messages,
                tx_bytes: c.tx_bytes,
                rx_bytes: c.rx_bytes,
            })
            .collect();
        connections.sort_by_key(|c| c.id);
        let mut flows: Vec<FlowStatus> = self
            .flows
            .values()
            .map(|f| {
                let s = f.sender.stats();
                let r = f.receiver.stats();
                FlowStatus {
                    peer: f.peer,
                    mac: f.mac.map(|m| m.to_string()),
                    epoch: f.epoch,
                    peer_epoch: f.peer_epoch,
                    connections: f.conns,
                    window: s.window,
                    srtt_us: s.srtt_ns as f64 / 1000.0,
                    rto_us: s.rto_ns as f64 / 1000.0,
                    in_flight: s.in_flight,
                    queued: f.queue.len(),
                    sent: s.sent,
                    acked: s.acked,
                    retransmit_timeout: s.retransmit_timeout,
                    retransmit_loss: s.retransmit_loss,
                    received: r.received,
                    duplicates: r.duplicates,
                    out_of_window: r.out_of_window,
                }
            })
            .collect();
        flows.sort_by_key(|f| f.peer);
        PonyStatus {
            engine: self.name.clone(),
            address: self.address,
            counters: self.counters.clone(),
            apps,
            connections,
            flows,
        }
    }
}

/// A payload-less operation header.
pub(super) fn control(op: Op, dst_conn: u32, src_conn: u32) -> OpHeader {
    OpHeader {
        op,
        flags: 0,
        stream: 0,
        dst_conn,
        src_conn,
        total_len: 0,
        op_id: 0,
        offset: 0,
        region: 0,
        addr: 0,
        aux: 0,
    }
}

impl Drop for PonyEngine {
    fn drop(&mut self) {
        for l in &mut self.from_uplink {
            while let Some(f) = l.pop() {
                self.cache.free(f);
            }
        }
    }
}

impl Engine for PonyEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self, budget: usize) -> usize {
        if let Some(job) = self.mailbox.take() {
            job(self);
        }
        self.timer.clear_due();
        let mut work = self.receive(budget);
        work += self.take_commands();
        work += self.transmit();
        if work > 0 {
            for app in self.apps.values_mut() {
                self.handoff |= app.notify_if_waiting();
            }
        }
        work
    }

    fn take_handoff(&mut self) -> bool {
        std::mem::take(&mut self.handoff)
    }

    fn wake_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.mailbox.doorbell().as_raw_fd(), self.timer.as_raw_fd()];
        fds.extend(self.from_uplink.iter().map(|l| l.doorbell().as_raw_fd()));
        fds.extend(self.apps.values().map(|a| a.kick.as_raw_fd()));
        fds
    }

    fn wake_epoch(&self) -> u64 {
        self.wake_epoch
    }

    fn arm(&mut self) -> bool {
        self.timer.follow(self.deadline());
        self.mailbox.doorbell().arm();
        for l in &self.from_uplink {
            l.doorbell().arm();
        }
        for app in self.apps.values() {
            app.region.want_kicks(true);
        }
        self.mailbox.pending()
            || self.from_uplink.iter().any(|l| !l.is_empty())
            || self
                .apps
                .values()
                .any(|a| a.region.commands_pending() || !a.overflow.is_empty())
            || {
                let now = self.now_ns();
                self.flows.values().any(|f| f.has_work(now))
            }
    }

    fn disarm(&mut self) {
        self.mailbox.doorbell().disarm();
        for l in &self.from_uplink {
            l.doorbell().disarm();
        }
        for app in self.apps.values() {
            app.region.want_kicks(false);
            // Consume the kick so that the eventfd stops being readable.
            let _ = app.kick.read();
        }
    }
}
