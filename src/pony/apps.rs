//! The operation layer's state (docs/pony.md, "Pieces"): an attached
//! application, its connections, registered regions and operations in
//! flight, and what a connection reassembles. The engine owns all of it;
//! nothing here does I/O except the application's eventfds.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;

use snapnet_pony::abi::{access, kind, Completion};
use vmm_sys_util::eventfd::EventFd;

use super::region::SharedRegion;
use super::rx_area::RxArea;
use crate::packet::fast_hash::{FastMap, FastSet};

/// Messages one connection may reassemble at once, and remote writes into
/// one application in progress per connection: past these, packets wait
/// unacknowledged (the sender retransmits them).
pub const MAX_REASSEMBLIES: usize = 256;

/// A region the application registered for remote access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registered {
    /// Arena offset and length.
    pub offset: u64,
    pub len: u64,
    pub access: u64,
}

impl Registered {
    /// Arena offset of `[addr, addr + len)` of the region, if it lies
    /// inside and the region allows `want`.
    pub fn locate(&self, want: u64, addr: u64, len: u64) -> Option<u64> {
        let inside = addr.checked_add(len).is_some_and(|end| end <= self.len);
        (inside && self.access & want == want).then(|| self.offset + addr)
    }
}

/// What an operation in flight waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingKind {
    /// A message: its packets' acknowledgements.
    Send { packets_left: u32 },
    /// A remote write: the peer engine's WRITE_DONE.
    Write,
    /// A read or indirect read: the response's bytes, landing at arena
    /// offset `local` (room for `max` bytes was checked).
    Read {
        local: u64,
        max: u32,
        got: u32,
        indirect: bool,
    },
}

impl PendingKind {
    /// The completion kind the operation ends with.
    pub fn done_kind(&self) -> u8 {
        match self {
            PendingKind::Send { .. } => kind::SENT,
            PendingKind::Write => kind::WRITE_DONE,
            PendingKind::Read {
                indirect: false, ..
            } => kind::READ_DONE,
            PendingKind::Read { indirect: true, .. } => kind::INDIRECT_READ_DONE,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub conn: u32,
    pub user_data: u64,
    pub kind: PendingKind,
    pub generation: u32,
}

/// A connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// CONNECT sent; the application's CONNECT command's user data.
    Connecting {
        user_data: u64,
    },
    Open,
}

/// A message being put together.
#[derive(Debug)]
pub struct Reassembly {
    pub rx_offset: u64,
    pub total: u32,
    pub got: u32,
}

/// A remote write into this application being received.
#[derive(Debug, Default)]
pub struct WriteIn {
    pub got: u32,
    pub failed: bool,
}

/// Delivery order of one stream: messages complete in the order they were
/// sent; those that finish early wait here.
#[derive(Debug, Default)]
pub struct StreamOrder {
    pub next: u64,
    pub done: BTreeMap<u64, (u64, u32)>,
}

#[derive(Debug)]
pub struct Conn {
    pub app: u32,
    pub peer: Ipv4Addr,
    /// The peer engine's id of this connection (0 until accepted).
    pub peer_conn: u32,
    pub state: ConnState,
    /// Next message id per stream (sending).
    pub next_message: FastMap<u16, u64>,
    pub streams: FastMap<u16, StreamOrder>,
    pub reassembly: FastMap<(u16, u64), Reassembly>,
    pub writes_in: FastMap<u64, WriteIn>,
    pub tx_messages: u64,
    pub rx_messages: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
}

impl Conn {
    pub fn new(app: u32, peer: Ipv4Addr, peer_conn: u32, state: ConnState) -> Self {
        Self {
            app,
            peer,
            peer_conn,
            state,
            next_message: FastMap::default(),
            streams: FastMap::default(),
            reassembly: FastMap::default(),
            writes_in: FastMap::default(),
            tx_messages: 0,
            rx_messages: 0,
            tx_bytes: 0,
            rx_bytes: 0,
        }
    }
}

/// An attached application.
pub struct App {
    pub id: u32,
    pub name: String,
    pub service: u32,
    pub region: SharedRegion,
    /// The application writes it after adding commands (while the engine
    /// asked for kicks).
    pub kick: EventFd,
    /// The engine writes it after adding completions (while the
    /// application waits).
    pub notify: EventFd,
    pub conns: FastSet<u32>,
    /// Registered regions by id - 1.
    pub regions: Vec<Option<Registered>>,
    pending: Vec<Option<Pending>>,
    free_pending: Vec<u32>,
    generation: u32,
    pub rx: RxArea,
    /// Completions the full ring could not take yet, in order.
    pub overflow: VecDeque<Completion>,
    /// Completions added since the application was last woken.
    pub completed: bool,
    pub commands: u64,
    pub bad_commands: u64,
}

impl App {
    pub fn new(
        id: u32,
        name: String,
        service: u32,
        region: SharedRegion,
        kick: EventFd,
        notify: EventFd,
    ) -> Self {
        let rx = RxArea::new(region.layout().rx_len);
        Self {
            id,
            name,
            service,
            region,
            kick,
            notify,
            conns: FastSet::default(),
            regions: Vec::new(),
            pending: Vec::new(),
            free_pending: Vec::new(),
            generation: 0,
            rx,
            overflow: VecDeque::new(),
            completed: false,
            commands: 0,
            bad_commands: 0,
        }
    }

    /// Operations in flight.
    pub fn pending_count(&self) -> usize {
        self.pending.len() - self.free_pending.len()
    }

    /// Records an operation; its id (slot and generation) goes on the wire.
    pub fn add_pending(&mut self, conn: u32, user_data: u64, kind: PendingKind) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        let p = Pending {
            conn,
            user_data,
            kind,
            generation: self.generation,
        };
        let slot = match self.free_pending.pop() {
            Some(s) => {
                self.pending[s as usize] = Some(p);
                s
            }
            None => {
                self.pending.push(Some(p));
                (self.pending.len() - 1) as u32
            }
        };
        (u64::from(self.generation) << 32) | u64::from(slot)
    }

    /// The operation an id names, if it is still in flight.
    pub fn pending_mut(&mut self, id: u64) -> Option<&mut Pending> {
        let (slot, generation) = (id as u32, (id >> 32) as u32);
        self.pending
            .get_mut(slot as usize)?
            .as_mut()
            .filter(|p| p.generation == generation)
    }

    pub fn take_pending(&mut self, id: u64) -> Option<Pending> {
        self.pending_mut(id)?;
        let slot = id as u32;
        self.free_pending.push(slot);
        self.pending[slot as usize].take()
    }

    /// Ids of the operations of connection `conn`.
    pub fn pending_of(&self, conn: u32) -> Vec<u64> {
        self.pending
            .iter()
            .enumerate()
            .filter_map(|(slot, p)| {
                p.filter(|p| p.conn == conn)
                    .map(|p| (u64::from(p.generation) << 32) | slot as u64)
            })
            .collect()
    }

    /// A new region id, or `None` at the limit.
    pub fn register(&mut self, r: Registered, limit: usize) -> Option<u32> {
        if let Some(i) = self.regions.iter().position(Option::is_none) {
            self.regions[i] = Some(r);
            return Some(i as u32 + 1);
        }
        if self.regions.len() >= limit {
            return None;
        }
        self.regions.push(Some(r));
        Some(self.regions.len() as u32)
    }

    pub fn region(&self, id: u32) -> Option<Registered> {
        let i = (id as usize).checked_sub(1)?;
        self.regions.get(i).copied().flatten()
    }

    pub fn deregister(&mut self, id: u32) -> bool {
        let Some(i) = (id as usize).checked_sub(1) else {
            return false;
        };
        self.regions.get_mut(i).and_then(Option::take).is_some()
    }

    /// Queues a completion for the application.
    pub fn complete(&mut self, c: Completion) {
        if !self.overflow.is_empty() || !self.region.push_completion(&c) {
            self.overflow.push_back(c);
        }
        self.completed = true;
    }

    /// Moves what waited in `overflow` to the ring, as room allows.
    pub fn flush_overflow(&mut self) {
        while let Some(c) = self.overflow.front() {
            if !self.region.push_completion(c) {
                break;
            }
            self.overflow.pop_front();
            self.completed = true;
        }
    }

    /// Wakes the application if completions came and it sleeps; returns
    /// whether completions came (a spinning application has them too).
    pub fn notify_if_waiting(&mut self) -> bool {
        if !self.completed {
            return false;
        }
        self.completed = false;
        if self.region.app_waiting() {
            let _ = self.notify.write(1);
        }
        true
    }

    /// Whether the application's completion backlog is so long that new
    /// incoming work for it should wait (its peers retransmit).
    pub fn backlogged(&self) -> bool {
        self.overflow.len() >= self.region.layout().cpl_entries as usize
    }
}

/// Access bits an application may ask for.
pub const ACCESS_ALL: u64 = access::READ | access::WRITE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_locate_inside_with_access_only() {
        let r = Registered {
            offset: 4096,
            len: 100,
            access: access::READ,
        };
        assert_eq!(r.locate(access::READ, 10, 90), Some(4106));
        assert_eq!(r.locate(access::READ, 10, 91), None);
        assert_eq!(r.locate(access::WRITE, 0, 1), None);
        assert_eq!(r.locate(access::READ, u64::MAX, 2), None);
    }
}
