//! The operation layer (docs/pony.md, "Pieces"): what an application's
//! command does, and what a DATA packet from a peer engine does. Every field
//! of either is checked here before anything uses it; a bad command
//! completes FAILED, a packet naming nothing known is a counted drop (and
//! still acknowledged: the flow delivered it).

use std::net::Ipv4Addr;

use snapnet_pony::abi::{access, kind, op, status, Command, Completion, INDIRECT_ENTRY_LEN};
use snapnet_wire::pony::{Op, OpHeader};

use super::apps::{
    Conn, ConnState, PendingKind, Reassembly, Registered, ACCESS_ALL, MAX_REASSEMBLIES,
};
use super::engine::{control, Outgoing, PonyEngine};

impl PonyEngine {
    fn fail(&mut self, app: u32, cmd: &Command, why: u8) {
        if let Some(a) = self.apps.get_mut(&app) {
            if why == status::BAD_COMMAND {
                a.bad_commands += 1;
            }
            a.complete(Completion {
                kind: kind::FAILED,
                status: why,
                conn: cmd.conn,
                user_data: cmd.user_data,
                ..Completion::default()
            });
        }
    }

    fn complete(&mut self, app: u32, c: Completion) {
        if let Some(a) = self.apps.get_mut(&app) {
            a.complete(c);
        }
    }

    /// The application's open connection `conn`, as (peer, peer's id).
    fn open_conn(&self, app: u32, conn: u32) -> Option<(Ipv4Addr, u32)> {
        let c = self.conns.get(&conn)?;
        (c.app == app && c.state == ConnState::Open).then_some((c.peer, c.peer_conn))
    }

    /// Runs one command of application `app`.
    pub(super) fn command(&mut self, app: u32, cmd: Command) {
        match cmd.opcode {
            op::CONNECT => self.cmd_connect(app, &cmd),
            op::CLOSE => {
                if self.conns.get(&cmd.conn).is_some_and(|c| c.app == app) {
                    self.close_conn(cmd.conn, true, status::OK, Some(cmd.user_data));
                } else {
                    self.fail(app, &cmd, status::NO_CONNECTION);
                }
            }
            op::SEND => self.cmd_send(app, &cmd),
            op::RELEASE => {
                let released = self
                    .apps
                    .get_mut(&app)
                    .is_some_and(|a| a.rx.release(cmd.local_offset));
                if !released {
                    self.fail(app, &cmd, status::BAD_COMMAND);
                }
            }
            op::REGISTER => self.cmd_register(app, &cmd),
            op::DEREGISTER => {
                let gone = self
                    .apps
                    .get_mut(&app)
                    .is_some_and(|a| a.deregister(cmd.region));
                if gone {
                    self.complete(
                        app,
                        Completion {
                            kind: kind::DEREGISTERED,
                            region: cmd.region,
                            user_data: cmd.user_data,
                            ..Completion::default()
                        },
                    );
                } else {
                    self.fail(app, &cmd, status::BAD_COMMAND);
                }
            }
            op::READ | op::INDIRECT_READ | op::WRITE => self.cmd_one_sided(app, &cmd),
            _ => self.fail(app, &cmd, status::BAD_COMMAND),
        }
    }

    fn cmd_connect(&mut self, app: u32, cmd: &Command) {
        let Ok(peer) = u32::try_from(cmd.remote_addr).map(Ipv4Addr::from) else {
            return self.fail(app, cmd, status::BAD_COMMAND);
        };
        let Ok(service) = u32::try_from(cmd.aux) else {
            return self.fail(app, cmd, status::BAD_COMMAND);
        };
        if peer.is_unspecified() || peer.is_multicast() || peer.is_broadcast() || service == 0 {
            return self.fail(app, cmd, status::BAD_COMMAND);
        }
        let limit = self.cfg.max_connections_per_app as usize;
        if self.apps.get(&app).is_none_or(|a| a.conns.len() >= limit) {
            return self.fail(app, cmd, status::LIMIT);
        }
        let id = self.new_conn_id();
        let Some(flow) = self.flow_to(peer, None) else {
            return self.fail(app, cmd, status::LIMIT);
        };
        flow.conns += 1;
        let mut h = control(Op::Connect, 0, id);
        h.aux = u64::from(service);
        flow.queue.push_back(Outgoing::Control(h));
        self.conns.insert(
            id,
            Conn::new(
                app,
                peer,
                0,
                ConnState::Connecting {
                    user_data: cmd.user_data,
                },
            ),
        );
        if let Some(a) = self.apps.get_mut(&app) {
            a.conns.insert(id);
        }
    }

    /// Whether an operation on `cmd.len` bytes of the application's arena at
    /// `cmd.local_offset` may start: not too large, inside the arena, within
    /// the application's bound on operations under way.
    fn admit(&self, app: u32, cmd: &Command) -> Result<(), u8> {
        if cmd.len > self.cfg.max_message_bytes {
            return Err(status::TOO_LARGE);
        }
        let a = self.apps.get(&app).ok_or(status::BAD_COMMAND)?;
        if !a.region.arena_has(cmd.local_offset, u64::from(cmd.len)) {
            return Err(status::BAD_COMMAND);
        }
        if a.pending_count() >= 2 * self.cfg.queue_entries as usize {
            return Err(status::LIMIT);
        }
        Ok(())
    }

    fn cmd_send(&mut self, app: u32, cmd: &Command) {
        let Some((peer, peer_conn)) = self.open_conn(app, cmd.conn) else {
            return self.fail(app, cmd, status::NO_CONNECTION);
        };
        if let Err(why) = self.admit(app, cmd) {
            return self.fail(app, cmd, why);
        }
        let Some(a) = self.apps.get_mut(&app) else {
            return;
        };
        let packets = (cmd.len as usize).div_ceil(self.payload_max).max(1) as u32;
        let op_id = a.add_pending(
            cmd.conn,
            cmd.user_data,
            PendingKind::Send {
                packets_left: packets,
            },
        );
        let Some(conn) = self.conns.get_mut(&cmd.conn) else {
            return;
        };
        let next = conn.next_message.entry(cmd.stream).or_insert(0);
        let message = *next;
        *next += 1;
        conn.tx_messages += 1;
        conn.tx_bytes += u64::from(cmd.len);
        let mut header = control(Op::Message, peer_conn, cmd.conn);
        header.stream = cmd.stream;
        header.op_id = message;
        header.total_len = cmd.len;
        if let Some(flow) = self.flows.get_mut(&peer) {
            flow.queue.push_back(Outgoing::Bytes {
                header,
                app,
                arena: cmd.local_offset,
                credit: Some(op_id),
            });
        }
    }

    fn cmd_register(&mut self, app: u32, cmd: &Command) {
        let limit = self.cfg.max_regions_per_app as usize;
        let Some(a) = self.apps.get_mut(&app) else {
            return;
        };
        let r = Registered {
            offset: cmd.local_offset,
            len: u64::from(cmd.len),
            access: cmd.aux,
        };
        if cmd.aux == 0 || cmd.aux & !ACCESS_ALL != 0 || !a.region.arena_has(r.offset, r.len) {
            return self.fail(app, cmd, status::BAD_COMMAND);
        }
        match a.register(r, limit) {
            Some(id) => a.complete(Completion {
                kind: kind::REGISTERED,
                region: id,
                user_data: cmd.user_data,
                offset: r.offset,
                len: cmd.len,
                ..Completion::default()
            }),
            None => self.fail(app, cmd, status::LIMIT),
        }
    }

    /// READ, INDIRECT_READ and WRITE: checked here, run by the peer's engine.
    fn cmd_one_sided(&mut self, app: u32, cmd: &Command) {
        let Some((peer, peer_conn)) = self.open_conn(app, cmd.conn) else {
            return self.fail(app, cmd, status::NO_CONNECTION);
        };
        let indirect_data_region = u32::try_from(cmd.aux);
        if cmd.opcode == op::INDIRECT_READ && indirect_data_region.is_err() {
            return self.fail(app, cmd, status::BAD_COMMAND);
        }
        if let Err(why) = self.admit(app, cmd) {
            return self.fail(app, cmd, why);
        }
        let Some(a) = self.apps.get_mut(&app) else {
            return;
        };
        let kind = match cmd.opcode {
            op::WRITE => PendingKind::Write,
            o => PendingKind::Read {
                local: cmd.local_offset,
                max: cmd.len,
                got: 0,
                indirect: o == op::INDIRECT_READ,
            },
        };
        let op_id = a.add_pending(cmd.conn, cmd.user_data, kind);
        let wire_op = match cmd.opcode {
            op::WRITE => Op::Write,
            op::READ => Op::ReadRequest,
            _ => Op::IndirectReadRequest,
        };
        let mut header = control(wire_op, peer_conn, cmd.conn);
        header.op_id = op_id;
        header.total_len = cmd.len;
        header.region = cmd.region;
        header.addr = cmd.remote_addr;
        header.aux = cmd.aux;
        let Some(flow) = self.flows.get_mut(&peer) else {
            return;
        };
        flow.queue.push_back(if cmd.opcode == op::WRITE {
            Outgoing::Bytes {
                header,
                app,
                arena: cmd.local_offset,
                credit: None,
            }
        } else {
            Outgoing::Control(header)
        });
    }

    /// An acknowledged packet of a message: the message is SENT when its
    /// last packet is.
    pub(super) fn credit_packet(&mut self, app: u32, op_id: u64) {
        let Some(a) = self.apps.get_mut(&app) else {
            return;
        };
        let Some(p) = a.pending_mut(op_id) else {
            return;
        };
        let PendingKind::Send { packets_left } = &mut p.kind else {
            return;
        };
        *packets_left = packets_left.saturating_sub(1);
        if *packets_left == 0 {
            if let Some(p) = a.take_pending(op_id) {
                a.complete(Completion {
                    kind: kind::SENT,
                    conn: p.conn,
                    user_data: p.user_data,
                    ..Completion::default()
                });
            }
        }
    }

    /// A new DATA packet from `peer`. `false`: it cannot be taken now (no
    /// room for it): the flow leaves it unacknowledged, the peer sends it
    /// again later.
    pub(super) fn deliver(&mut self, peer: Ipv4Addr, h: &OpHeader, payload: &[u8]) -> bool {
        match h.op {
            Op::Nop => true,
            Op::Connect => self.on_connect(peer, h),
            Op::Accept | Op::Refuse => {
                self.on_connect_answer(peer, h);
                true
            }
            Op::Close => {
                if self.conn_from(peer, h).is_some() {
                    self.close_conn(h.dst_conn, false, status::OK, None);
                } else {
                    self.counters.drop_unknown_conn += 1;
                }
                true
            }
            Op::Message => self.on_message(peer, h, payload),
            Op::Write => self.on_write(peer, h, payload),
            Op::WriteDone => {
                self.finish_remote(peer, h, None);
                true
            }
            Op::ReadRequest | Op::IndirectReadRequest => self.on_read_request(peer, h),
            Op::ReadResponse => {
                self.finish_remote(peer, h, Some(payload));
                true
            }
        }
    }

    /// The connection a packet is for, if it is open and really with this
    /// peer's connection.
    fn conn_from(&self, peer: Ipv4Addr, h: &OpHeader) -> Option<u32> {
        let c = self.conns.get(&h.dst_conn)?;
        (c.peer == peer && c.state == ConnState::Open && c.peer_conn == h.src_conn)
            .then_some(h.dst_conn)
    }

    fn queue_to(&mut self, peer: Ipv4Addr, out: Outgoing) {
        if let Some(flow) = self.flows.get_mut(&peer) {
            flow.queue.push_back(out);
        }
    }

    fn on_connect(&mut self, peer: Ipv4Addr, h: &OpHeader) -> bool {
        let service = u32::try_from(h.aux).unwrap_or(0);
        let app = self.services.get(&service).copied();
        let limit = self.cfg.max_connections_per_app as usize;
        let refuse = |why: u8| {
            let mut r = control(Op::Refuse, h.src_conn, 0);
            r.flags = why;
            Outgoing::Control(r)
        };
        let Some(app) = app else {
            self.queue_to(peer, refuse(status::REFUSED));
            return true;
        };
        let Some(a) = self.apps.get(&app) else {
            self.queue_to(peer, refuse(status::REFUSED));
            return true;
        };
        if a.backlogged() {
            return false;
        }
        if a.conns.len() >= limit {
            self.queue_to(peer, refuse(status::LIMIT));
            return true;
        }
        let id = self.new_conn_id();
        self.conns
            .insert(id, Conn::new(app, peer, h.src_conn, ConnState::Open));
        if let Some(flow) = self.flows.get_mut(&peer) {
            flow.conns += 1;
        }
        self.queue_to(peer, Outgoing::Control(control(Op::Accept, h.src_conn, id)));
        if let Some(a) = self.apps.get_mut(&app) {
            a.conns.insert(id);
            a.complete(Completion {
                kind: kind::ACCEPTED,
                conn: id,
                peer_addr: u32::from(peer),
                peer_service: 0,
                ..Completion::default()
            });
        }
        true
    }

    fn on_connect_answer(&mut self, peer: Ipv4Addr, h: &OpHeader) {
        let Some(c) = self.conns.get_mut(&h.dst_conn) else {
            self.counters.drop_unknown_conn += 1;
            return;
        };
        let ConnState::Connecting { user_data } = c.state else {
            self.counters.drop_unknown_conn += 1;
            return;
        };
        if c.peer != peer {
            self.counters.drop_unknown_conn += 1;
            return;
        }
        if h.op == Op::Refuse {
            let why = if h.flags == status::OK {
                status::REFUSED
            } else {
                h.flags
            };
            // close_conn answers CONNECTED with `why` for a connecting one.
            self.close_conn(h.dst_conn, false, why, None);
            return;
        }
        c.state = ConnState::Open;
        c.peer_conn = h.src_conn;
        let app = c.app;
        self.complete(
            app,
            Completion {
                kind: kind::CONNECTED,
                conn: h.dst_conn,
                user_data,
                peer_addr: u32::from(peer),
                ..Completion::default()
            },
        );
    }

    fn on_message(&mut self, peer: Ipv4Addr, h: &OpHeader, payload: &[u8]) -> bool {
        let Some(id) = self.conn_from(peer, h) else {
            self.counters.drop_unknown_conn += 1;
            return true;
        };
        if h.total_len > self.cfg.max_message_bytes {
            self.counters.drop_too_large += 1;
            return true;
        }
        let conn = self.conns.get_mut(&id).expect("looked up");
        let Some(app) = self.apps.get_mut(&conn.app) else {
            return true;
        };
        let key = (h.stream, h.op_id);
        let order_next = conn.streams.get(&h.stream).map_or(0, |s| s.next);
        if h.op_id < order_next
            || conn
                .streams
                .get(&h.stream)
                .is_some_and(|s| s.done.contains_key(&h.op_id))
        {
            // A message already delivered: the peer reused an id.
            self.counters.drop_unknown_conn += 1;
            return true;
        }
        if !conn.reassembly.contains_key(&key) {
            if conn.reassembly.len() >= MAX_REASSEMBLIES || app.backlogged() {
                return false;
            }
            let Some(at) = app.rx.alloc(u64::from(h.total_len)) else {
                return false;
            };
            conn.reassembly.insert(
                key,
                Reassembly {
                    rx_offset: at,
                    total: h.total_len,
                    got: 0,
                },
            );
        }
        let r = conn.reassembly.get_mut(&key).expect("inserted");
        if r.total != h.total_len {
            self.counters.drop_bad_length += 1;
            return true;
        }
        app.region
            .rx_write(r.rx_offset + u64::from(h.offset), payload);
        r.got = r.got.saturating_add(payload.len() as u32);
        conn.rx_bytes += payload.len() as u64;
        if r.got < r.total || (r.total == 0 && h.offset != 0) {
            return true;
        }
        let done = conn.reassembly.remove(&key).expect("present");
        let order = conn.streams.entry(h.stream).or_default();
        order.done.insert(h.op_id, (done.rx_offset, done.total));
        // In stream order: this message and any finished ones after it.
        while let Some((offset, len)) = order.done.remove(&order.next) {
            order.next += 1;
            conn.rx_messages += 1;
            app.complete(Completion {
                kind: kind::RECEIVED,
                stream: h.stream,
                conn: id,
                offset,
                len,
                ..Completion::default()
            });
        }
        true
    }

    fn on_write(&mut self, peer: Ipv4Addr, h: &OpHeader, payload: &[u8]) -> bool {
        let Some(id) = self.conn_from(peer, h) else {
            self.counters.drop_unknown_conn += 1;
            return true;
        };
        let conn = self.conns.get_mut(&id).expect("looked up");
        let Some(app) = self.apps.get(&conn.app) else {
            return true;
        };
        if !conn.writes_in.contains_key(&h.op_id) && conn.writes_in.len() >= MAX_REASSEMBLIES {
            return false;
        }
        let target = app.region(h.region).and_then(|r| {
            r.locate(
                access::WRITE,
                h.addr.checked_add(u64::from(h.offset))?,
                payload.len() as u64,
            )
        });
        let fits_total = h
            .addr
            .checked_add(u64::from(h.total_len))
            .zip(app.region(h.region))
            .is_some_and(|(end, r)| end <= r.len);
        let w = conn.writes_in.entry(h.op_id).or_default();
        match target {
            Some(at) if fits_total && !w.failed => {
                app.region.arena_write(at, payload);
            }
            _ => w.failed = true,
        }
        w.got = w.got.saturating_add(payload.len() as u32);
        conn.rx_bytes += payload.len() as u64;
        if w.got < h.total_len || (h.total_len == 0 && h.offset != 0) {
            return true;
        }
        let w = conn.writes_in.remove(&h.op_id).expect("present");
        let mut done = control(Op::WriteDone, h.src_conn, id);
        done.op_id = h.op_id;
        done.flags = if w.failed {
            status::BAD_REGION
        } else {
            status::OK
        };
        self.queue_to(peer, Outgoing::Control(done));
        true
    }

    /// A READ or INDIRECT_READ from the peer: answered from this
    /// application's registered regions without waking it.
    fn on_read_request(&mut self, peer: Ipv4Addr, h: &OpHeader) -> bool {
        let Some(id) = self.conn_from(peer, h) else {
            self.counters.drop_unknown_conn += 1;
            return true;
        };
        let app_id = self.conns[&id].app;
        let Some(app) = self.apps.get(&app_id) else {
            return true;
        };
        let found = if h.op == Op::ReadRequest {
            app.region(h.region)
                .and_then(|r| r.locate(access::READ, h.addr, u64::from(h.total_len)))
                .map(|at| (at, h.total_len))
        } else {
            self.counters.indirect_reads += 1;
            indirect_target(app, h)
        };
        let mut header = control(Op::ReadResponse, h.src_conn, id);
        header.op_id = h.op_id;
        let out = match found {
            Some((at, len)) if len > 0 => {
                header.total_len = len;
                Outgoing::Bytes {
                    header,
                    app: app_id,
                    arena: at,
                    credit: None,
                }
            }
            Some(_) => Outgoing::Control(header),
            None => {
                header.flags = status::BAD_REGION;
                Outgoing::Control(header)
            }
        };
        self.counters.reads_served += 1;
        self.queue_to(peer, out);
        true
    }

    /// WRITE_DONE (`payload` None) or a READ_RESPONSE packet for one of our
    /// operations.
    fn finish_remote(&mut self, peer: Ipv4Addr, h: &OpHeader, payload: Option<&[u8]>) {
        let Some(id) = self.conn_from(peer, h) else {
            self.counters.drop_unknown_conn += 1;
            return;
        };
        let app_id = self.conns[&id].app;
        let Some(app) = self.apps.get_mut(&app_id) else {
            return;
        };
        let Some(mut p) = app.pending_mut(h.op_id).filter(|p| p.conn == id).copied() else {
            self.counters.drop_unknown_op_id += 1;
            return;
        };
        let finished = match (&mut p.kind, payload) {
            (PendingKind::Write, None) => Some((h.flags, 0)),
            (
                PendingKind::Read {
                    local, max, got, ..
                },
                Some(bytes),
            ) => {
                if h.flags != status::OK {
                    Some((h.flags, 0))
                } else if h.total_len > *max {
                    Some((status::BAD_REGION, 0))
                } else {
                    app.region.arena_write(*local + u64::from(h.offset), bytes);
                    *got = got.saturating_add(bytes.len() as u32);
                    (*got >= h.total_len).then_some((status::OK, h.total_len))
                }
            }
            _ => {
                self.counters.drop_unknown_op_id += 1;
                None
            }
        };
        if let Some(stored) = app.pending_mut(h.op_id) {
            *stored = p;
        }
        let Some((st, len)) = finished else {
            return;
        };
        if let Some(p) = app.take_pending(h.op_id) {
            let offset = match p.kind {
                PendingKind::Read { local, .. } => local,
                _ => 0,
            };
            app.complete(Completion {
                kind: p.kind.done_kind(),
                status: st,
                conn: id,
                user_data: p.user_data,
                offset,
                len,
                ..Completion::default()
            });
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.rx_bytes += u64::from(len);
        }
    }
}

/// Where an indirect read's bytes are: entry `h.addr` of table region
/// `h.region` names an offset and length in data region `h.aux`; at most
/// `h.total_len` bytes of it are answered.
fn indirect_target(app: &super::apps::App, h: &OpHeader) -> Option<(u64, u32)> {
    let table = app.region(h.region)?;
    let entry_at = h.addr.checked_mul(INDIRECT_ENTRY_LEN as u64)?;
    let at = table.locate(access::READ, entry_at, INDIRECT_ENTRY_LEN as u64)?;
    let mut entry = [0u8; INDIRECT_ENTRY_LEN];
    if !app.region.arena_read(at, &mut entry) {
        return None;
    }
    let offset = u64::from_le_bytes(entry[..8].try_into().ok()?);
    let len = u32::from_le_bytes(entry[8..12].try_into().ok()?).min(h.total_len);
    let data = app.region(u32::try_from(h.aux).ok()?)?;
    Some((data.locate(access::READ, offset, u64::from(len))?, len))
}
