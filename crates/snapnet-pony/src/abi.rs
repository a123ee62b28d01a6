//! The shared-memory interface between a Pony application and snapnet's
//! Pony engine (docs/pony.md, "Application interface"). Both sides use this
//! module, so the layout is defined once.
//!
//! One memfd per application, mapped by both processes:
//!
//! | offset | what | written by |
//! |---|---|---|
//! | 0 | [`Header`] fields (magic, sizes, offsets) | engine, once |
//! | [`CMD_TAIL`] .. [`APP_WAITING`] | ring indices and wake-up flags, a cache line each | see each |
//! | `cmd_offset` | command ring: `cmd_entries` x [`Command`] | application |
//! | `cpl_offset` | completion ring: `cpl_entries` x [`Completion`] | engine |
//! | `arena_offset` | the application's arena: buffers it sends from, reads into, and registers for remote access | application (and the engine for reads into it and remote writes) |
//! | `rx_offset` | the receive area: messages the engine delivered, until released | engine |
//!
//! Both rings are single-producer single-consumer with free-running `u32`
//! indices (`tail - head` entries are full; the slot is `index % entries`).
//! The engine never trusts what the application wrote: indices, offsets,
//! lengths and ids are checked before use, and an application whose command
//! tail is out of range is detached.
//!
//! Offsets in commands and completions are relative to the part they name:
//! `local_offset` of SEND, READ, WRITE, INDIRECT_READ and REGISTER, and a
//! READ_DONE's `offset`, to the arena; RELEASE's `local_offset` and a
//! RECEIVED's `offset` to the receive area.

/// `"snappony"` in little-endian bytes.
pub const MAGIC: u64 = u64::from_le_bytes(*b"snappony");
pub const VERSION: u32 = 1;

/// Header field offsets (little-endian values).
pub mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const CMD_ENTRIES: usize = 12;
    pub const CPL_ENTRIES: usize = 16;
    pub const CMD_OFFSET: usize = 24;
    pub const CPL_OFFSET: usize = 32;
    pub const ARENA_OFFSET: usize = 40;
    pub const ARENA_LEN: usize = 48;
    pub const RX_OFFSET: usize = 56;
    pub const RX_LEN: usize = 64;
}

/// Command ring tail (next slot the application fills); application writes.
pub const CMD_TAIL: usize = 128;
/// Command ring head (next slot the engine reads); engine writes.
pub const CMD_HEAD: usize = 192;
/// Completion ring tail; engine writes.
pub const CPL_TAIL: usize = 256;
/// Completion ring head; application writes.
pub const CPL_HEAD: usize = 320;
/// Non-zero while the engine sleeps: an application that adds commands then
/// writes the command eventfd.
pub const ENGINE_WANTS_KICK: usize = 384;
/// Non-zero while the application blocks on the completion eventfd: the
/// engine then writes it after adding completions.
pub const APP_WAITING: usize = 448;
/// Where the command ring starts.
pub const HEADER_LEN: usize = 4096;

/// Size of a ring entry (a command or a completion).
pub const ENTRY_LEN: usize = 64;

/// Alignment of the receive area's allocations and of registered regions.
pub const RX_ALIGN: usize = 64;

/// Command opcodes.
pub mod op {
    /// Open a connection: `remote_addr` = peer IPv4 (host order, low 32
    /// bits), `aux` = the peer application's service id.
    pub const CONNECT: u8 = 1;
    /// Close `conn`.
    pub const CLOSE: u8 = 2;
    /// Send `len` bytes at `local_offset` of the arena as one message on
    /// `conn`'s `stream`.
    pub const SEND: u8 = 3;
    /// Give back a received message's buffer (`local_offset`, `len` as
    /// completed) in the receive area. No completion.
    pub const RELEASE: u8 = 4;
    /// Register `len` bytes at `local_offset` of the arena for remote access
    /// (`aux`: [`super::access`] bits). Completes with the region id.
    pub const REGISTER: u8 = 5;
    /// Withdraw region `region`.
    pub const DEREGISTER: u8 = 6;
    /// Read `len` bytes at `remote_addr` of the peer's region `region` into
    /// the arena at `local_offset`.
    pub const READ: u8 = 7;
    /// Write `len` bytes from the arena at `local_offset` to `remote_addr` of
    /// the peer's region `region`.
    pub const WRITE: u8 = 8;
    /// Indirect read: the peer's engine reads entry `remote_addr` of the
    /// indirection table in region `region` (entries of
    /// [`super::INDIRECT_ENTRY_LEN`] bytes: little-endian `u64` offset and
    /// `u32` length within region `aux`), then up to `len` bytes there, into
    /// the arena at `local_offset`.
    pub const INDIRECT_READ: u8 = 9;
}

/// Access a registered region allows remote engines.
pub mod access {
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
}

/// Size of an indirection table entry: offset `u64`, length `u32`, 4 spare.
pub const INDIRECT_ENTRY_LEN: usize = 16;

/// Completion kinds.
pub mod kind {
    /// `CONNECT` finished (see the status); `conn` is the new connection.
    pub const CONNECTED: u8 = 1;
    /// The connection closed (by either side, or its peer went away).
    pub const CLOSED: u8 = 2;
    /// A `SEND` was delivered to the peer's engine (acknowledged).
    pub const SENT: u8 = 3;
    /// A message arrived: `offset`/`len` in the receive area, on `stream`.
    pub const RECEIVED: u8 = 4;
    pub const REGISTERED: u8 = 5;
    pub const DEREGISTERED: u8 = 6;
    pub const READ_DONE: u8 = 7;
    pub const WRITE_DONE: u8 = 8;
    pub const INDIRECT_READ_DONE: u8 = 9;
    /// A peer opened a connection to this application's service.
    pub const ACCEPTED: u8 = 10;
    /// A command could not even start (see the status); `user_data` is the
    /// command's.
    pub const FAILED: u8 = 11;
}

/// Completion status.
pub mod status {
    pub const OK: u8 = 0;
    /// Malformed command: unknown opcode, offsets outside the arena, ...
    pub const BAD_COMMAND: u8 = 1;
    /// `conn` is not an open connection of this application.
    pub const NO_CONNECTION: u8 = 2;
    /// No application listens on that service at the peer.
    pub const REFUSED: u8 = 3;
    /// The peer did not answer (no neighbour, or retransmissions gave up).
    pub const UNREACHABLE: u8 = 4;
    /// The remote region does not exist, is too small, or lacks the access.
    pub const BAD_REGION: u8 = 5;
    /// Larger than the daemon's `max_message_bytes`.
    pub const TOO_LARGE: u8 = 6;
    /// A per-application limit (connections, regions, operations) is reached.
    pub const LIMIT: u8 = 7;
    /// The connection closed before the operation finished.
    pub const CLOSED: u8 = 8;
}

/// A command as the application writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Command {
    pub opcode: u8,
    pub flags: u8,
    pub stream: u16,
    pub conn: u32,
    pub user_data: u64,
    pub local_offset: u64,
    pub len: u32,
    pub region: u32,
    pub remote_addr: u64,
    pub aux: u64,
}

/// Command field offsets within an entry.
pub mod cmd_field {
    pub const OPCODE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const STREAM: usize = 2;
    pub const CONN: usize = 4;
    pub const USER_DATA: usize = 8;
    pub const LOCAL_OFFSET: usize = 16;
    pub const LEN: usize = 24;
    pub const REGION: usize = 28;
    pub const REMOTE_ADDR: usize = 32;
    pub const AUX: usize = 40;
}

impl Command {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        use cmd_field as f;
        let mut b = [0u8; ENTRY_LEN];
        b[f::OPCODE] = self.opcode;
        b[f::FLAGS] = self.flags;
        b[f::STREAM..f::STREAM + 2].copy_from_slice(&self.stream.to_le_bytes());
        b[f::CONN..f::CONN + 4].copy_from_slice(&self.conn.to_le_bytes());
        b[f::USER_DATA..f::USER_DATA + 8].copy_from_slice(&self.user_data.to_le_bytes());
        b[f::LOCAL_OFFSET..f::LOCAL_OFFSET + 8].copy_from_slice(&self.local_offset.to_le_bytes());
        b[f::LEN..f::LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        b[f::REGION..f::REGION + 4].copy_from_slice(&self.region.to_le_bytes());
        b[f::REMOTE_ADDR..f::REMOTE_ADDR + 8].copy_from_slice(&self.remote_addr.to_le_bytes());
        b[f::AUX..f::AUX + 8].copy_from_slice(&self.aux.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; ENTRY_LEN]) -> Self {
        use cmd_field as f;
        Self {
            opcode: b[f::OPCODE],
            flags: b[f::FLAGS],
            stream: le16(b, f::STREAM),
            conn: le32(b, f::CONN),
            user_data: le64(b, f::USER_DATA),
            local_offset: le64(b, f::LOCAL_OFFSET),
            len: le32(b, f::LEN),
            region: le32(b, f::REGION),
            remote_addr: le64(b, f::REMOTE_ADDR),
            aux: le64(b, f::AUX),
        }
    }
}

/// A completion as the engine writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Completion {
    pub kind: u8,
    pub status: u8,
    pub stream: u16,
    pub conn: u32,
    pub user_data: u64,
    /// RECEIVED: where the message is in the receive area; READ_DONE and
    /// INDIRECT_READ_DONE: where the data landed in the arena.
    pub offset: u64,
    pub len: u32,
    /// REGISTERED: the region id.
    pub region: u32,
    /// ACCEPTED and CONNECTED: the peer's IPv4 address (host order).
    pub peer_addr: u32,
    /// ACCEPTED: the peer's connection's service id (0: none).
    pub peer_service: u32,
}

/// Completion field offsets within an entry.
pub mod cpl_field {
    pub const KIND: usize = 0;
    pub const STATUS: usize = 1;
    pub const STREAM: usize = 2;
    pub const CONN: usize = 4;
    pub const USER_DATA: usize = 8;
    pub const OFFSET: usize = 16;
    pub const LEN: usize = 24;
    pub const REGION: usize = 28;
    pub const PEER_ADDR: usize = 32;
    pub const PEER_SERVICE: usize = 36;
}

impl Completion {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        use cpl_field as f;
        let mut b = [0u8; ENTRY_LEN];
        b[f::KIND] = self.kind;
        b[f::STATUS] = self.status;
        b[f::STREAM..f::STREAM + 2].copy_from_slice(&self.stream.to_le_bytes());
        b[f::CONN..f::CONN + 4].copy_from_slice(&self.conn.to_le_bytes());
        b[f::USER_DATA..f::USER_DATA + 8].copy_from_slice(&self.user_data.to_le_bytes());
        b[f::OFFSET..f::OFFSET + 8].copy_from_slice(&self.offset.to_le_bytes());
        b[f::LEN..f::LEN + 4].copy_from_slice(&self.len.to_le_bytes());
        b[f::REGION..f::REGION + 4].copy_from_slice(&self.region.to_le_bytes());
        b[f::PEER_ADDR..f::PEER_ADDR + 4].copy_from_slice(&self.peer_addr.to_le_bytes());
        b[f::PEER_SERVICE..f::PEER_SERVICE + 4].copy_from_slice(&self.peer_service.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; ENTRY_LEN]) -> Self {
        use cpl_field as f;
        Self {
            kind: b[f::KIND],
            status: b[f::STATUS],
            stream: le16(b, f::STREAM),
            conn: le32(b, f::CONN),
            user_data: le64(b, f::USER_DATA),
            offset: le64(b, f::OFFSET),
            len: le32(b, f::LEN),
            region: le32(b, f::REGION),
            peer_addr: le32(b, f::PEER_ADDR),
            peer_service: le32(b, f::PEER_SERVICE),
        }
    }
}

/// Where each part of the shared region lies, as the header states it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub cmd_entries: u32,
    pub cpl_entries: u32,
    pub cmd_offset: u64,
    pub cpl_offset: u64,
    pub arena_offset: u64,
    pub arena_len: u64,
    pub rx_offset: u64,
    pub rx_len: u64,
}

impl Layout {
    /// Rings of the given sizes (powers of two), then the arena, then the
    /// receive area, each page-aligned.
    pub fn new(cmd_entries: u32, cpl_entries: u32, arena_len: u64, rx_len: u64) -> Self {
        let page = 4096u64;
        let up = |x: u64| x.div_ceil(page) * page;
        let cmd_offset = HEADER_LEN as u64;
        let cpl_offset = up(cmd_offset + u64::from(cmd_entries) * ENTRY_LEN as u64);
        let arena_offset = up(cpl_offset + u64::from(cpl_entries) * ENTRY_LEN as u64);
        let rx_offset = up(arena_offset + arena_len);
        Self {
            cmd_entries,
            cpl_entries,
            cmd_offset,
            cpl_offset,
            arena_offset,
            arena_len,
            rx_offset,
            rx_len,
        }
    }

    /// Bytes the whole region takes.
    pub fn total_len(&self) -> u64 {
        self.rx_offset + self.rx_len
    }

    /// The header's fixed fields.
    pub fn encode_header(&self, out: &mut [u8]) {
        use field as f;
        out[f::MAGIC..f::MAGIC + 8].copy_from_slice(&MAGIC.to_le_bytes());
        out[f::VERSION..f::VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
        out[f::CMD_ENTRIES..f::CMD_ENTRIES + 4].copy_from_slice(&self.cmd_entries.to_le_bytes());
        out[f::CPL_ENTRIES..f::CPL_ENTRIES + 4].copy_from_slice(&self.cpl_entries.to_le_bytes());
        for (at, v) in [
            (f::CMD_OFFSET, self.cmd_offset),
            (f::CPL_OFFSET, self.cpl_offset),
            (f::ARENA_OFFSET, self.arena_offset),
            (f::ARENA_LEN, self.arena_len),
            (f::RX_OFFSET, self.rx_offset),
            (f::RX_LEN, self.rx_len),
        ] {
            out[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Reads and checks a header: magic, version, ring sizes (powers of
    /// two), and every part inside `region_len` without overlaps.
    pub fn decode_header(b: &[u8], region_len: u64) -> Option<Self> {
        use field as f;
        if b.len() < HEADER_LEN || le64(b, f::MAGIC) != MAGIC || le32(b, f::VERSION) != VERSION {
            return None;
        }
        let l = Self {
            cmd_entries: le32(b, f::CMD_ENTRIES),
            cpl_entries: le32(b, f::CPL_ENTRIES),
            cmd_offset: le64(b, f::CMD_OFFSET),
            cpl_offset: le64(b, f::CPL_OFFSET),
            arena_offset: le64(b, f::ARENA_OFFSET),
            arena_len: le64(b, f::ARENA_LEN),
            rx_offset: le64(b, f::RX_OFFSET),
            rx_len: le64(b, f::RX_LEN),
        };
        let pow2 = |n: u32| n.is_power_of_two();
        let cmd_end = l
            .cmd_offset
            .checked_add(u64::from(l.cmd_entries) * ENTRY_LEN as u64)?;
        let cpl_end = l
            .cpl_offset
            .checked_add(u64::from(l.cpl_entries) * ENTRY_LEN as u64)?;
        let arena_end = l.arena_offset.checked_add(l.arena_len)?;
        let rx_end = l.rx_offset.checked_add(l.rx_len)?;
        let ordered = l.cmd_offset >= HEADER_LEN as u64
            && cmd_end <= l.cpl_offset
            && cpl_end <= l.arena_offset
            && arena_end <= l.rx_offset
            && rx_end <= region_len;
        (pow2(l.cmd_entries) && pow2(l.cpl_entries) && ordered).then_some(l)
    }
}

/// What the application sends on the attach socket (one JSON line).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    /// A name for status and logs.
    pub name: String,
    /// The service id peers connect to; 0: the application only connects
    /// out.
    #[serde(default)]
    pub service: u32,
}

/// The daemon's answer (one JSON line). With `ok`, the message carries three
/// fds: the region's memfd, the command eventfd (application -> engine) and
/// the completion eventfd (engine -> application).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AttachReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The application's id in the daemon's status.
    #[serde(default)]
    pub app: u32,
    /// Bytes of the region the memfd holds.
    #[serde(default)]
    pub region_len: u64,
    /// This host's Pony address (IPv4, dotted).
    #[serde(default)]
    pub address: String,
    /// Largest message the daemon takes.
    #[serde(default)]
    pub max_message_bytes: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_completion_round_trip() {
        let c = Command {
            opcode: op::INDIRECT_READ,
            flags: 3,
            stream: 7,
            conn: 9,
            user_data: u64::MAX - 1,
            local_offset: 1 << 40,
            len: 1 << 20,
            region: 4,
            remote_addr: 12,
            aux: 5,
        };
        assert_eq!(Command::decode(&c.encode()), c);
        let p = Completion {
            kind: kind::RECEIVED,
            status: status::CLOSED,
            stream: 2,
            conn: 3,
            user_data: 4,
            offset: 5,
            len: 6,
            region: 7,
            peer_addr: 0x0a00_0001,
            peer_service: 80,
        };
        assert_eq!(Completion::decode(&p.encode()), p);
    }

    #[test]
    fn header_round_trips_and_refuses_bad_layouts() {
        let l = Layout::new(256, 512, 1 << 20, 1 << 16);
        let mut h = vec![0u8; HEADER_LEN];
        l.encode_header(&mut h);
        assert_eq!(Layout::decode_header(&h, l.total_len()), Some(l));
        assert_eq!(Layout::decode_header(&h, l.total_len() - 1), None);
        let mut bad = h.clone();
        bad[field::CMD_ENTRIES..field::CMD_ENTRIES + 4].copy_from_slice(&300u32.to_le_bytes());
        assert_eq!(Layout::decode_header(&bad, l.total_len()), None);
        let mut bad = h.clone();
        bad[field::ARENA_OFFSET..field::ARENA_OFFSET + 8].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(Layout::decode_header(&bad, l.total_len()), None);
        let mut bad = h;
        bad[0] ^= 1;
        assert_eq!(Layout::decode_header(&bad, l.total_len()), None);
    }
}
