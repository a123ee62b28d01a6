//! [`App`]: one application's attachment to the daemon's Pony engine.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::abi::{self, access, kind, op, status, Command, Completion, Layout};
use crate::arena::{Arena, Buffer, ALIGN};
use crate::attach;
use crate::region::Region;
use crate::Error;

/// How long [`App::attach`] waits for the daemon's reply.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// The top bit of `user_data` marks the blocking calls' own commands; the
/// asynchronous calls refuse values with it set.
pub const RESERVED_USER_DATA: u64 = 1 << 63;

/// An application attached to the daemon's Pony engine: the shared region
/// (rings, arena, receive area), the two eventfds and the attach socket,
/// whose close (when this value drops, or the process dies) tells the
/// daemon the application is gone.
///
/// Single-threaded: the methods that touch the rings take `&mut self`. The
/// value can move between threads (`Send`) but not be shared (`!Sync`).
///
/// Completions the blocking calls ([`App::connect`], [`App::register`],
/// [`App::deregister`]) meet while waiting for their own are kept, in
/// order, and [`App::poll`] / [`App::wait`] return them first.
#[derive(Debug)]
pub struct App {
    // Field order is drop order: unmap, close the eventfds, then the socket.
    region: Region,
    layout: Layout,
    arena: Arena,
    cmd_fd: OwnedFd,
    cpl_fd: OwnedFd,
    app_id: u32,
    address: Ipv4Addr,
    max_message_bytes: u32,
    /// Next command slot to fill (we alone write `CMD_TAIL`).
    cmd_tail: u32,
    /// Next completion to read (we alone write `CPL_HEAD`).
    cpl_head: u32,
    pending: VecDeque<Completion>,
    next_internal: u64,
    sock: UnixStream,
}

impl App {
    /// Connects to the daemon's Pony socket at `socket` and attaches as
    /// `name`, listening on `service` (0: connect out only).
    ///
    /// Waits at most [`ATTACH_TIMEOUT`] for the reply ([`Error::Timeout`]);
    /// [`Error::Attach`] when the daemon refuses, [`Error::BadRegion`] when
    /// the shared region's header fails its checks.
    pub fn attach(socket: impl AsRef<Path>, name: &str, service: u32) -> Result<App, Error> {
        let sock = UnixStream::connect(socket)?;
        sock.set_read_timeout(Some(ATTACH_TIMEOUT))?;
        sock.set_write_timeout(Some(ATTACH_TIMEOUT))?;
        Self::attach_stream(sock, name, service)
    }

    /// Attaches over an already connected socket (for tests, and for
    /// daemons that hand an application a connected socket). The socket's
    /// own timeouts apply to the handshake (they are cleared after it); it
    /// stays open as long as the returned `App`.
    pub fn attach_stream(sock: UnixStream, name: &str, service: u32) -> Result<App, Error> {
        let attach::Reply { reply, fds } = attach::handshake(&sock, name, service)?;
        if !reply.ok {
            return Err(Error::Attach(
                reply
                    .error
                    .unwrap_or_else(|| "refused without a reason".into()),
            ));
        }
        let [region_fd, cmd_fd, cpl_fd]: [OwnedFd; 3] =
            fds.try_into().map_err(|fds: Vec<OwnedFd>| {
                Error::Protocol(format!("expected 3 fds, got {}", fds.len()))
            })?;
        let address = if reply.address.is_empty() {
            Ipv4Addr::UNSPECIFIED
        } else {
            reply
                .address
                .parse()
                .map_err(|_| Error::Protocol(format!("bad address {:?}", reply.address)))?
        };

        let region_len = usize::try_from(reply.region_len).map_err(|_| Error::BadRegion)?;
        if region_len < abi::HEADER_LEN || file_len(&region_fd)? < reply.region_len {
            return Err(Error::BadRegion);
        }
        let region = Region::map(region_fd.as_fd(), region_len)?;
        drop(region_fd); // the mapping keeps the memory
        let mut header = vec![0u8; abi::HEADER_LEN];
        region.copy_out(0, &mut header);
        let layout = Layout::decode_header(&header, reply.region_len).ok_or(Error::BadRegion)?;
        if layout.arena_offset % ALIGN as u64 != 0 {
            return Err(Error::BadRegion);
        }

        let cmd_tail = region.word(abi::CMD_TAIL).load(Ordering::Acquire);
        let cpl_head = region.word(abi::CPL_HEAD).load(Ordering::Acquire);
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        Ok(App {
            region,
            layout,
            arena: Arena::new(layout.arena_len),
            cmd_fd,
            cpl_fd,
            app_id: reply.app,
            address,
            max_message_bytes: reply.max_message_bytes,
            cmd_tail,
            cpl_head,
            pending: VecDeque::new(),
            next_internal: 0,
            sock,
        })
    }

    /// The application's id in the daemon's status.
    pub fn app_id(&self) -> u32 {
        self.app_id
    }

    /// This host's Pony address, as peers connect to it.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The largest message [`App::send`] takes.
    pub fn max_message_bytes(&self) -> u32 {
        self.max_message_bytes
    }

    /// Where the region's parts lie (ring sizes, arena and receive-area
    /// lengths).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    // ---- arena ----

    /// Allocates `len` bytes of the arena (64-byte aligned, first fit).
    /// [`Error::OutOfArena`] when no free block is large enough.
    pub fn alloc(&mut self, len: usize) -> Result<Buffer, Error> {
        self.arena.alloc(len)
    }

    /// Frees an allocation exactly as [`App::alloc`] returned it
    /// ([`Error::NotAllocated`] otherwise). The caller makes sure no
    /// operation in flight still uses it.
    pub fn free(&mut self, buf: Buffer) -> Result<(), Error> {
        self.arena.free(buf)
    }

    /// Bytes of the arena allocations can use (its length, rounded down to
    /// a multiple of [`ALIGN`]).
    pub fn arena_capacity(&self) -> u64 {
        self.arena.capacity()
    }

    /// Bytes of the arena not allocated (possibly fragmented).
    pub fn arena_free_bytes(&self) -> u64 {
        self.arena.free_bytes()
    }

    /// Copies `src` into `buf` at `at`. The engine may read or write the same
    /// bytes concurrently (an operation in flight); what either side sees
    /// then is unspecified, but never unsound.
    pub fn write_bytes(&self, buf: &Buffer, at: usize, src: &[u8]) -> Result<(), Error> {
        let abs = self.arena_range(buf, at, src.len())?;
        self.region.copy_in(abs, src);
        Ok(())
    }

    /// Copies `dst.len()` bytes of `buf` from `at` into `dst` (see
    /// [`App::write_bytes`] on concurrent access).
    pub fn read_bytes(&self, buf: &Buffer, at: usize, dst: &mut [u8]) -> Result<(), Error> {
        let abs = self.arena_range(buf, at, dst.len())?;
        self.region.copy_out(abs, dst);
        Ok(())
    }

    /// The region offset of `len` bytes at `at` of `buf`, all inside the
    /// arena.
    fn arena_range(&self, buf: &Buffer, at: usize, len: usize) -> Result<usize, Error> {
        self.check_arena(buf)?;
        let end = at.checked_add(len).ok_or(Error::OutOfRange)?;
        if end > buf.len {
            return Err(Error::OutOfRange);
        }
        // In range of the mapping (checked), so these fit usize.
        Ok((self.layout.arena_offset + buf.offset) as usize + at)
    }

    fn check_arena(&self, buf: &Buffer) -> Result<(), Error> {
        let end = u64::try_from(buf.len)
            .ok()
            .and_then(|l| buf.offset.checked_add(l))
            .ok_or(Error::OutOfRange)?;
        if end > self.layout.arena_len {
            return Err(Error::OutOfRange);
        }
        Ok(())
    }

    /// `buf`'s offset and length as a command carries them.
    fn local(&self, buf: &Buffer) -> Result<(u64, u32), Error> {
        self.check_arena(buf)?;
        let len =
            u32::try_from(buf.len).map_err(|_| Error::InvalidArgument("buffer over 4 GiB"))?;
        Ok((buf.offset, len))
    }

    // ---- received messages ----

    /// The region offset and length of a RECEIVED completion's message,
    /// checked against the receive area.
    fn rx_range(&self, c: &Completion) -> Result<(usize, usize), Error> {
        if c.kind != kind::RECEIVED {
            return Err(Error::InvalidArgument("not a RECEIVED completion"));
        }
        let end = c
            .offset
            .checked_add(u64::from(c.len))
            .ok_or(Error::OutOfRange)?;
        if end > self.layout.rx_len {
            return Err(Error::OutOfRange);
        }
        Ok(((self.layout.rx_offset + c.offset) as usize, c.len as usize))
    }

    /// A copy of a RECEIVED completion's message.
    pub fn message(&self, c: &Completion) -> Result<Vec<u8>, Error> {
        let (abs, len) = self.rx_range(c)?;
        let mut out = vec![0u8; len];
        self.region.copy_out(abs, &mut out);
        Ok(out)
    }

    /// Copies a RECEIVED completion's message to the start of `dst` and
    /// returns its length; [`Error::InvalidArgument`] when `dst` is
    /// shorter.
    pub fn message_into(&self, c: &Completion, dst: &mut [u8]) -> Result<usize, Error> {
        let (abs, len) = self.rx_range(c)?;
        let dst = dst.get_mut(..len).ok_or(Error::InvalidArgument(
            "destination shorter than the message",
        ))?;
        self.region.copy_out(abs, dst);
        Ok(len)
    }

    /// Gives a RECEIVED completion's buffer back to the engine (RELEASE; no
    /// completion). The message's bytes are not to be read afterwards.
    pub fn release(&mut self, c: &Completion) -> Result<(), Error> {
        self.rx_range(c)?;
        self.submit(&Command {
            opcode: op::RELEASE,
            stream: c.stream,
            conn: c.conn,
            local_offset: c.offset,
            len: c.len,
            ..Command::default()
        })
    }

    // ---- command ring ----

    /// Puts one command on the command ring as is (the typed methods below
    /// check their arguments first; the engine checks everything anyway),
    /// then wakes the engine if it asked for it. [`Error::QueueFull`] when
    /// the ring has no free slot.
    pub fn submit(&mut self, cmd: &Command) -> Result<(), Error> {
        let entries = self.layout.cmd_entries;
        let head = self.word(abi::CMD_HEAD).load(Ordering::Acquire);
        // A head the engine moved past our tail would make this huge: also
        // "full", never an overwrite of an unread command.
        if self.cmd_tail.wrapping_sub(head) >= entries {
            return Err(Error::QueueFull);
        }
        let slot = (self.cmd_tail % entries) as usize;
        let at = self.layout.cmd_offset as usize + slot * abi::ENTRY_LEN;
        self.region.copy_in(at, &cmd.encode());
        self.cmd_tail = self.cmd_tail.wrapping_add(1);
        self.word(abi::CMD_TAIL)
            .store(self.cmd_tail, Ordering::Release);
        // Pairs with the engine's fence between setting ENGINE_WANTS_KICK and
        // re-checking the ring: either it sees our tail or we see its flag.
        fence(Ordering::SeqCst);
        if self.word(abi::ENGINE_WANTS_KICK).load(Ordering::Acquire) != 0 {
            self.kick();
        }
        Ok(())
    }

    fn kick(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local array to an fd we own.
        // A failure can only be EAGAIN (the counter is saturated, so the
        // engine has a wake-up pending anyway); it is ignored.
        unsafe {
            libc::write(self.cmd_fd.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.region.word(offset)
    }

    #[cfg(test)]
    pub(crate) fn region_word_for_tests(&self, offset: usize) -> u32 {
        self.word(offset).load(Ordering::Acquire)
    }

    fn check_user_data(user_data: u64) -> Result<(), Error> {
        if user_data & RESERVED_USER_DATA != 0 {
            return Err(Error::InvalidArgument(
                "user_data with the top bit set is reserved",
            ));
        }
        Ok(())
    }

    /// Opens a connection to `peer`'s application listening on `service`;
    /// completes CONNECTED (with the connection id in `conn`) or with an
    /// error status.
    pub fn connect_async(
        &mut self,
        peer: Ipv4Addr,
        service: u32,
        user_data: u64,
    ) -> Result<(), Error> {
        Self::check_user_data(user_data)?;
        self.submit(&connect_cmd(peer, service, user_data))
    }

    /// Sends `buf` as one message on `conn`'s `stream`; completes SENT once
    /// the peer's engine acknowledged it. `buf` stays in use until then.
    pub fn send(
        &mut self,
        conn: u32,
        stream: u16,
        buf: &Buffer,
        user_data: u64,
    ) -> Result<(), Error> {
        Self::check_user_data(user_data)?;
        let (local_offset, len) = self.local(buf)?;
        if len > self.max_message_bytes {
            return Err(Error::TooLarge {
                len: buf.len,
                max: self.max_message_bytes,
            });
        }
        self.submit(&Command {
            opcode: op::SEND,
            stream,
            conn,
            user_data,
            local_offset,
            len,
            ..Command::default()
        })
    }

    /// Reads `into.len` bytes at `remote_offset` of the peer's registered
    /// region `region` into `into`; completes READ_DONE.
    pub fn read(
        &mut self,
        conn: u32,
        region: u32,
        remote_offset: u64,
        into: &Buffer,
        user_data: u64,
    ) -> Result<(), Error> {
        self.one_sided(op::READ, conn, region, remote_offset, 0, into, user_data)
    }

    /// Writes `from` to `remote_offset` of the peer's registered region
    /// `region`; completes WRITE_DONE.
    pub fn write(
        &mut self,
        conn: u32,
        region: u32,
        remote_offset: u64,
        from: &Buffer,
        user_data: u64,
    ) -> Result<(), Error> {
        self.one_sided(op::WRITE, conn, region, remote_offset, 0, from, user_data)
    }

    /// Indirect read: the peer's engine reads entry `index` of the
    /// indirection table in its region `table_region` (an offset and a
    /// length within `data_region`) and returns up to `into.len` of those
    /// bytes into `into`; completes INDIRECT_READ_DONE (its `len` says how
    /// many).
    pub fn indirect_read(
        &mut self,
        conn: u32,
        table_region: u32,
        index: u64,
        data_region: u32,
        into: &Buffer,
        user_data: u64,
    ) -> Result<(), Error> {
        self.one_sided(
            op::INDIRECT_READ,
            conn,
            table_region,
            index,
            u64::from(data_region),
            into,
            user_data,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn one_sided(
        &mut self,
        opcode: u8,
        conn: u32,
        region: u32,
        remote_addr: u64,
        aux: u64,
        local: &Buffer,
        user_data: u64,
    ) -> Result<(), Error> {
        Self::check_user_data(user_data)?;
        let (local_offset, len) = self.local(local)?;
        self.submit(&Command {
            opcode,
            conn,
            user_data,
            local_offset,
            len,
            region,
            remote_addr,
            aux,
            ..Command::default()
        })
    }

    /// Registers `buf` (64-byte aligned in the arena) for remote access
    /// (`access`: [`crate::access`] bits); completes REGISTERED with the
    /// region id.
    pub fn register_async(
        &mut self,
        buf: &Buffer,
        access: u64,
        user_data: u64,
    ) -> Result<(), Error> {
        Self::check_user_data(user_data)?;
        let cmd = self.register_cmd(buf, access, user_data)?;
        self.submit(&cmd)
    }

    fn register_cmd(
        &self,
        buf: &Buffer,
        access_bits: u64,
        user_data: u64,
    ) -> Result<Command, Error> {
        let (local_offset, len) = self.local(buf)?;
        if local_offset % abi::RX_ALIGN as u64 != 0 {
            return Err(Error::InvalidArgument(
                "registered regions are 64-byte aligned",
            ));
        }
        if access_bits & !(access::READ | access::WRITE) != 0 {
            return Err(Error::InvalidArgument("unknown access bits"));
        }
        Ok(Command {
            opcode: op::REGISTER,
            user_data,
            local_offset,
            len,
            aux: access_bits,
            ..Command::default()
        })
    }

    /// Withdraws registered region `region`; completes DEREGISTERED.
    pub fn deregister_async(&mut self, region: u32, user_data: u64) -> Result<(), Error> {
        Self::check_user_data(user_data)?;
        self.submit(&deregister_cmd(region, user_data))
    }

    /// Closes connection `conn`; completes CLOSED.
    pub fn close(&mut self, conn: u32, user_data: u64) -> Result<(), Error> {
        Self::check_user_data(user_data)?;
        self.submit(&Command {
            opcode: op::CLOSE,
            conn,
            user_data,
            ..Command::default()
        })
    }

    // ---- blocking conveniences ----

    fn internal_user_data(&mut self) -> u64 {
        self.next_internal = self.next_internal.wrapping_add(1);
        RESERVED_USER_DATA | (self.next_internal & !RESERVED_USER_DATA)
    }

    /// Connects and waits for the outcome: the connection id, or
    /// [`Error::Status`] (REFUSED, UNREACHABLE, LIMIT, ...).
    pub fn connect(&mut self, peer: Ipv4Addr, service: u32) -> Result<u32, Error> {
        let ud = self.internal_user_data();
        self.submit(&connect_cmd(peer, service, ud))?;
        Ok(self.wait_for(kind::CONNECTED, ud)?.conn)
    }

    /// Registers `buf` (see [`App::register_async`]) and waits: the region
    /// id.
    pub fn register(&mut self, buf: &Buffer, access: u64) -> Result<u32, Error> {
        let ud = self.internal_user_data();
        let cmd = self.register_cmd(buf, access, ud)?;
        self.submit(&cmd)?;
        Ok(self.wait_for(kind::REGISTERED, ud)?.region)
    }

    /// Withdraws a registered region and waits until the engine has.
    pub fn deregister(&mut self, region: u32) -> Result<(), Error> {
        let ud = self.internal_user_data();
        self.submit(&deregister_cmd(region, ud))?;
        self.wait_for(kind::DEREGISTERED, ud).map(drop)
    }

    /// Waits for the completion of kind `want` (or FAILED) carrying
    /// `user_data`, keeping every other one for poll()/wait().
    fn wait_for(&mut self, want: u8, user_data: u64) -> Result<Completion, Error> {
        loop {
            let Some(c) = self.wait_ring(None)? else {
                continue;
            };
            if c.user_data == user_data && (c.kind == want || c.kind == kind::FAILED) {
                return if c.kind == want && c.status == status::OK {
                    Ok(c)
                } else if c.status == status::OK {
                    Err(Error::Status(status::BAD_COMMAND))
                } else {
                    Err(Error::Status(c.status))
                };
            }
            self.pending.push_back(c);
        }
    }

    // ---- completion ring ----

    /// The next completion, if any, without blocking.
    pub fn poll(&mut self) -> Option<Completion> {
        self.pending.pop_front().or_else(|| self.poll_ring())
    }

    fn poll_ring(&mut self) -> Option<Completion> {
        let tail = self.word(abi::CPL_TAIL).load(Ordering::Acquire);
        if tail == self.cpl_head {
            return None;
        }
        let entries = self.layout.cpl_entries;
        let slot = (self.cpl_head % entries) as usize;
        let at = self.layout.cpl_offset as usize + slot * abi::ENTRY_LEN;
        let mut entry = [0u8; abi::ENTRY_LEN];
        self.region.copy_out(at, &mut entry);
        self.cpl_head = self.cpl_head.wrapping_add(1);
        // Release: the entry is read before the engine may reuse its slot.
        self.word(abi::CPL_HEAD)
            .store(self.cpl_head, Ordering::Release);
        Some(Completion::decode(&entry))
    }

    /// The next completion, blocking up to `timeout` (`None`: no limit);
    /// `Ok(None)` when the time ran out, [`Error::Detached`] when the daemon
    /// closed the socket.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Option<Completion>, Error> {
        if let Some(c) = self.pending.pop_front() {
            return Ok(Some(c));
        }
        self.wait_ring(timeout.map(|t| Instant::now() + t))
    }

    fn wait_ring(&mut self, deadline: Option<Instant>) -> Result<Option<Completion>, Error> {
        loop {
            if let Some(c) = self.poll_ring() {
                return Ok(Some(c));
            }
            // Ask for a wake-up, then look again: the engine publishes its
            // tail, fences, then reads APP_WAITING, so either it sees the
            // flag or this poll sees its completion.
            self.word(abi::APP_WAITING).store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(c) = self.poll_ring() {
                self.word(abi::APP_WAITING).store(0, Ordering::Relaxed);
                return Ok(Some(c));
            }
            let timeout_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.word(abi::APP_WAITING).store(0, Ordering::Relaxed);
                        return Ok(None);
                    }
                    left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
                }
            };
            let slept = self.sleep(timeout_ms);
            self.word(abi::APP_WAITING).store(0, Ordering::Relaxed);
            slept?;
        }
    }

    /// Blocks in poll(2) on the completion eventfd (read to clear it when
    /// ready) and on the socket (a hang-up is [`Error::Detached`]).
    fn sleep(&mut self, timeout_ms: i32) -> Result<(), Error> {
        let mut fds = [
            libc::pollfd {
                fd: self.cpl_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a live array of two initialised pollfds whose
        // length is passed with it.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e.into())
            };
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut counter = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live local array from an
            // fd we own; poll reported it readable, so this does not block
            // (an EAGAIN would be harmless and is ignored).
            unsafe {
                libc::read(
                    self.cpl_fd.as_raw_fd(),
                    counter.as_mut_ptr().cast(),
                    counter.len(),
                );
            }
        }
        if fds[1].revents != 0 && self.socket_closed() {
            return Err(Error::Detached);
        }
        Ok(())
    }

    /// Whether the daemon has closed (or reset) the attach socket. Stray
    /// bytes it might send are discarded.
    fn socket_closed(&self) -> bool {
        let mut scratch = [0u8; 256];
        loop {
            // SAFETY: receives at most `scratch.len()` bytes into a live
            // local array from the socket we own, without blocking.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return true,
                n if n > 0 => continue,
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return false,
                        io::ErrorKind::Interrupted => continue,
                        _ => return true,
                    }
                }
            }
        }
    }
}

fn connect_cmd(peer: Ipv4Addr, service: u32, user_data: u64) -> Command {
    Command {
        opcode: op::CONNECT,
        user_data,
        remote_addr: u64::from(u32::from(peer)),
        aux: u64::from(service),
        ..Command::default()
    }
}

fn deregister_cmd(region: u32, user_data: u64) -> Command {
    Command {
        opcode: op::DEREGISTER,
        user_data,
        region,
        ..Command::default()
    }
}

/// The size of the file behind `fd`.
fn file_len(fd: &OwnedFd) -> Result<u64, Error> {
    // SAFETY: `stat` is plain data for which all-zero is valid.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: `fd` is an open descriptor we own and `st` a live, writable
    // stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    u64::try_from(st.st_size).map_err(|_| Error::BadRegion)
}
