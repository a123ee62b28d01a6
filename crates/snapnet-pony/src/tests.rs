//! The client against a stand-in daemon: a socketpair for the attach
//! socket, a memfd and two eventfds made here, and a tiny engine that
//! consumes commands and writes completions with the same wake-up protocol
//! as the real one.

use std::io::{BufRead, BufReader};
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::abi::{self, AttachReply, AttachRequest};
use crate::region::Region;
use crate::{kind, op, status, App, Buffer, Command, Completion, Error, Layout};

fn memfd(len: u64) -> OwnedFd {
    // SAFETY: a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"pony-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: resizes the file we own.
    let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
    assert_eq!(rc, 0);
    fd
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain flags; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a new descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads an eventfd's counter (0 when it was not written).
fn eventfd_take(fd: &OwnedFd) -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: reads 8 bytes into a live local array from a non-blocking fd
    // we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
    if n == 8 {
        u64::from_ne_bytes(v)
    } else {
        0
    }
}

fn eventfd_write(fd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live local array to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    assert_eq!(n, 8);
}

/// Blocks until `fd` is readable or `timeout` passes.
fn readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live, initialised pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n == 1
}

/// One sendmsg of `data` with `fds` attached.
fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) {
    let mut control = [0u64; 16];
    let iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &iov as *const libc::iovec as *mut libc::iovec;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = mem::size_of_val(fds) as u32;
        // SAFETY: size computations only.
        let (space, len) = unsafe { (libc::CMSG_SPACE(bytes), libc::CMSG_LEN(bytes)) };
        assert!(space as usize <= mem::size_of_val(&control));
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is aligned, zeroed and large enough
        // for one header carrying `fds` (asserted), so the first header and
        // its data lie inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = len as _;
            ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        }
    }
    // SAFETY: `msg` describes live buffers (`data`, `control`).
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    assert_eq!(
        n,
        data.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

fn reply_line(reply: &AttachReply) -> Vec<u8> {
    let mut line = serde_json::to_vec(reply).unwrap();
    line.push(b'\n');
    line
}

fn ok_reply(layout: &Layout) -> AttachReply {
    AttachReply {
        ok: true,
        error: None,
        app: 3,
        region_len: layout.total_len(),
        address: "10.0.0.1".into(),
        max_message_bytes: 1 << 20,
    }
}

/// The daemon's side: its own mapping of the region, the eventfds, its end
/// of the socket, and the engine's ring positions.
struct Engine {
    region: Region,
    layout: Layout,
    cmd_efd: OwnedFd,
    cpl_efd: OwnedFd,
    sock: UnixStream,
    cmd_head: u32,
    cpl_tail: u32,
}

impl Engine {
    /// Region, eventfds and header as the daemon prepares them, with every
    /// ring index starting at `start`.
    fn new(layout: Layout, sock: UnixStream, start: u32) -> (Engine, OwnedFd) {
        let fd = memfd(layout.total_len());
        let region = Region::map(fd.as_fd(), layout.total_len() as usize).unwrap();
        let mut header = vec![0u8; abi::HEADER_LEN];
        layout.encode_header(&mut header);
        region.copy_in(0, &header);
        for w in [abi::CMD_TAIL, abi::CMD_HEAD, abi::CPL_TAIL, abi::CPL_HEAD] {
            region.word(w).store(start, Ordering::Relaxed);
        }
        let engine = Engine {
            region,
            layout,
            cmd_efd: eventfd(),
            cpl_efd: eventfd(),
            sock,
            cmd_head: start,
            cpl_tail: start,
        };
        (engine, fd)
    }

    fn word(&self, at: usize) -> &AtomicU32 {
        self.region.word(at)
    }

    fn request(&self) -> AttachRequest {
        let mut line = String::new();
        BufReader::new(&self.sock).read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'));
        serde_json::from_str(&line).unwrap()
    }

    fn take(&mut self) -> Option<Command> {
        let tail = self.word(abi::CMD_TAIL).load(Ordering::Acquire);
        if tail == self.cmd_head {
            return None;
        }
        let slot = (self.cmd_head % self.layout.cmd_entries) as usize;
        let mut e = [0u8; abi::ENTRY_LEN];
        self.region.copy_out(
            self.layout.cmd_offset as usize + slot * abi::ENTRY_LEN,
            &mut e,
        );
        self.cmd_head = self.cmd_head.wrapping_add(1);
        self.word(abi::CMD_HEAD)
            .store(self.cmd_head, Ordering::Release);
        Some(Command::decode(&e))
    }

    /// Sleeps the way the engine does: ENGINE_WANTS_KICK, fence, look
    /// again, then the command eventfd. Returns the command and whether a
    /// kick woke us.
    fn wait_command(&mut self, timeout: Duration) -> Option<(Command, bool)> {
        let deadline = Instant::now() + timeout;
        let mut kicked = false;
        loop {
            if let Some(c) = self.take() {
                return Some((c, kicked));
            }
            self.word(abi::ENGINE_WANTS_KICK)
                .store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if let Some(c) = self.take() {
                self.word(abi::ENGINE_WANTS_KICK)
                    .store(0, Ordering::Relaxed);
                return Some((c, kicked));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if readable(&self.cmd_efd, left) {
                kicked |= eventfd_take(&self.cmd_efd) > 0;
            }
            self.word(abi::ENGINE_WANTS_KICK)
                .store(0, Ordering::Relaxed);
        }
    }

    /// Publishes a completion; writes the completion eventfd when the
    /// application waits. Returns whether it did.
    fn complete(&mut self, c: Completion) -> bool {
        let slot = (self.cpl_tail % self.layout.cpl_entries) as usize;
        self.region.copy_in(
            self.layout.cpl_offset as usize + slot * abi::ENTRY_LEN,
            &c.encode(),
        );
        self.cpl_tail = self.cpl_tail.wrapping_add(1);
        self.word(abi::CPL_TAIL)
            .store(self.cpl_tail, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.word(abi::APP_WAITING).load(Ordering::Acquire) != 0 {
            eventfd_write(&self.cpl_efd);
            true
        } else {
            false
        }
    }

    /// Spins until the application has announced it sleeps.
    fn until_app_waits(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.word(abi::APP_WAITING).load(Ordering::Acquire) == 0 {
            assert!(Instant::now() < deadline, "the app never set APP_WAITING");
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn arena(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.region
            .copy_out((self.layout.arena_offset + offset) as usize, &mut v);
        v
    }

    fn put_rx(&self, offset: u64, bytes: &[u8]) {
        self.region
            .copy_in((self.layout.rx_offset + offset) as usize, bytes);
    }
}

fn small_layout() -> Layout {
    Layout::new(4, 4, 64 * 1024, 16 * 1024)
}

/// An attached App and the engine behind it, indices starting at `start`.
fn setup_at(layout: Layout, start: u32) -> (App, Engine) {
    let (app_sock, daemon_sock) = UnixStream::pair().unwrap();
    let (engine, fd) = Engine::new(layout, daemon_sock, start);
    send_with_fds(
        &engine.sock,
        &reply_line(&ok_reply(&layout)),
        &[
            fd.as_raw_fd(),
            engine.cmd_efd.as_raw_fd(),
            engine.cpl_efd.as_raw_fd(),
        ],
    );
    let app = App::attach_stream(app_sock, "test-app", 7).unwrap();
    let req = engine.request();
    assert_eq!((req.name.as_str(), req.service), ("test-app", 7));
    (app, engine)
}

fn setup(layout: Layout) -> (App, Engine) {
    setup_at(layout, 0)
}

/// Attaches with a hand-made reply and fds; the daemon's socket end is
/// returned to keep it open.
fn attach_with(chunks: &[(&[u8], &[RawFd])]) -> (Result<App, Error>, UnixStream) {
    let (app_sock, daemon_sock) = UnixStream::pair().unwrap();
    for (data, fds) in chunks {
        send_with_fds(&daemon_sock, data, fds);
    }
    (App::attach_stream(app_sock, "x", 0), daemon_sock)
}

#[test]
fn app_is_send() {
    fn send<T: Send>() {}
    send::<App>();
}

#[test]
fn attach_maps_the_region_and_reads_the_reply() {
    let layout = small_layout();
    let (app, engine) = setup(layout);
    assert_eq!(app.app_id(), 3);
    assert_eq!(app.address(), Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(app.max_message_bytes(), 1 << 20);
    assert_eq!(app.layout(), layout);
    assert_eq!(app.arena_capacity(), 64 * 1024);
    assert_eq!(app.arena_free_bytes(), 64 * 1024);
    // The mappings are shared: bytes the app writes, the engine sees.
    let b = Buffer {
        offset: 128,
        len: 16,
    };
    app.write_bytes(&b, 3, b"shared").unwrap();
    assert_eq!(engine.arena(131, 6), b"shared");
    engine
        .region
        .copy_in(app.layout().arena_offset as usize + 128, b"back");
    let mut got = [0u8; 4];
    app.read_bytes(&b, 0, &mut got).unwrap();
    assert_eq!(&got, b"back");
}

#[test]
fn attach_reply_may_arrive_in_pieces() {
    let layout = small_layout();
    let (_, daemon_sock) = UnixStream::pair().unwrap();
    let (engine, fd) = Engine::new(layout, daemon_sock, 0);
    let line = reply_line(&ok_reply(&layout));
    let (first, rest) = line.split_at(5);
    let fds = [
        fd.as_raw_fd(),
        engine.cmd_efd.as_raw_fd(),
        engine.cpl_efd.as_raw_fd(),
    ];
    let (app, _keep) = attach_with(&[(first, &fds), (rest, &[])]);
    assert_eq!(app.unwrap().layout(), layout);
}

#[test]
fn attach_refusal_is_reported() {
    let refusal = AttachReply {
        ok: false,
        error: Some("too many applications".into()),
        ..AttachReply::default()
    };
    let (app, _keep) = attach_with(&[(&reply_line(&refusal), &[])]);
    match app {
        Err(Error::Attach(e)) => assert_eq!(e, "too many applications"),
        other => panic!("{other:?}"),
    }
    // The daemon hung up without a word.
    let (app_sock, daemon_sock) = UnixStream::pair().unwrap();
    drop(daemon_sock);
    assert!(matches!(
        App::attach_stream(app_sock, "x", 0),
        Err(Error::Protocol(_) | Error::Io(_))
    ));
}

#[test]
fn attach_refuses_bad_replies_and_regions() {
    let layout = small_layout();
    let (_, daemon_sock) = UnixStream::pair().unwrap();
    let (engine, fd) = Engine::new(layout, daemon_sock, 0);
    let all = [
        fd.as_raw_fd(),
        engine.cmd_efd.as_raw_fd(),
        engine.cpl_efd.as_raw_fd(),
    ];
    let good = reply_line(&ok_reply(&layout));

    // Two fds instead of three.
    let (app, _k) = attach_with(&[(&good, &all[..2])]);
    assert!(matches!(app, Err(Error::Protocol(_))), "{app:?}");
    // Not JSON.
    let (app, _k) = attach_with(&[(b"hello\n", &all)]);
    assert!(matches!(app, Err(Error::Protocol(_))), "{app:?}");
    // A region longer than the memfd.
    let mut long = ok_reply(&layout);
    long.region_len += 4096;
    let (app, _k) = attach_with(&[(&reply_line(&long), &all)]);
    assert!(matches!(app, Err(Error::BadRegion)), "{app:?}");
    // A bad address.
    let mut addr = ok_reply(&layout);
    addr.address = "nowhere".into();
    let (app, _k) = attach_with(&[(&reply_line(&addr), &all)]);
    assert!(matches!(app, Err(Error::Protocol(_))), "{app:?}");
    // A corrupt header.
    engine.region.copy_in(abi::field::MAGIC, &[0]);
    let (app, _k) = attach_with(&[(&good, &all)]);
    assert!(matches!(app, Err(Error::BadRegion)), "{app:?}");
}

#[test]
fn commands_are_encoded_and_the_ring_fills() {
    let (mut app, mut engine) = setup(small_layout());
    let buf = app.alloc(256).unwrap();
    app.write_bytes(&buf, 0, b"hello").unwrap();
    let peer = Ipv4Addr::new(10, 0, 0, 2);
    app.connect_async(peer, 9, 1).unwrap();
    app.send(5, 2, &buf.slice(0, 5), 2).unwrap();
    app.read(5, 3, 100, &buf, 3).unwrap();
    app.indirect_read(5, 4, 6, 7, &buf.slice(64, 32), 4)
        .unwrap();
    assert!(matches!(app.close(5, 5), Err(Error::QueueFull)));
    // The engine never asked for a kick.
    assert_eq!(eventfd_take(&engine.cmd_efd), 0);

    let c = engine.take().unwrap();
    assert_eq!(
        (c.opcode, c.user_data, c.remote_addr, c.aux),
        (op::CONNECT, 1, u64::from(u32::from(peer)), 9)
    );
    let c = engine.take().unwrap();
    assert_eq!(
        (
            c.opcode,
            c.conn,
            c.stream,
            c.local_offset,
            c.len,
            c.user_data
        ),
        (op::SEND, 5, 2, buf.offset, 5, 2)
    );
    assert_eq!(engine.arena(c.local_offset, c.len as usize), b"hello");
    let c = engine.take().unwrap();
    assert_eq!(
        (
            c.opcode,
            c.conn,
            c.region,
            c.remote_addr,
            c.local_offset,
            c.len
        ),
        (op::READ, 5, 3, 100, buf.offset, 256)
    );
    let c = engine.take().unwrap();
    assert_eq!(
        (
            c.opcode,
            c.region,
            c.remote_addr,
            c.aux,
            c.local_offset,
            c.len,
            c.user_data
        ),
        (op::INDIRECT_READ, 4, 6, 7, buf.offset + 64, 32, 4)
    );
    assert!(engine.take().is_none());

    // Room again; with ENGINE_WANTS_KICK set, each command kicks.
    engine
        .word(abi::ENGINE_WANTS_KICK)
        .store(1, Ordering::Relaxed);
    app.write(5, 3, 8, &buf, 6).unwrap();
    assert_eq!(eventfd_take(&engine.cmd_efd), 1);
    app.register_async(&buf, crate::access::READ, 7).unwrap();
    app.deregister_async(11, 8).unwrap();
    app.close(5, 9).unwrap();
    assert_eq!(eventfd_take(&engine.cmd_efd), 3);
    let c = engine.take().unwrap();
    assert_eq!(
        (c.opcode, c.region, c.remote_addr, c.len, c.user_data),
        (op::WRITE, 3, 8, 256, 6)
    );
    let c = engine.take().unwrap();
    assert_eq!(
        (c.opcode, c.local_offset, c.len, c.aux),
        (op::REGISTER, buf.offset, 256, crate::access::READ)
    );
    let c = engine.take().unwrap();
    assert_eq!((c.opcode, c.region, c.user_data), (op::DEREGISTER, 11, 8));
    let c = engine.take().unwrap();
    assert_eq!((c.opcode, c.conn, c.user_data), (op::CLOSE, 5, 9));
}

#[test]
fn obviously_bad_arguments_are_refused() {
    let (mut app, engine) = setup(small_layout());
    let arena = app.layout().arena_len;
    let outside = Buffer {
        offset: arena - 8,
        len: 16,
    };
    assert!(matches!(
        app.send(1, 0, &outside, 0),
        Err(Error::OutOfRange)
    ));
    assert!(matches!(
        app.read(1, 1, 0, &outside, 0),
        Err(Error::OutOfRange)
    ));
    let huge = Buffer {
        offset: u64::MAX,
        len: 2,
    };
    assert!(matches!(
        app.write(1, 1, 0, &huge, 0),
        Err(Error::OutOfRange)
    ));
    assert!(matches!(
        app.write_bytes(&outside, 0, b"x"),
        Err(Error::OutOfRange)
    ));
    let buf = app.alloc(100).unwrap();
    assert!(matches!(
        app.write_bytes(&buf, 99, b"xy"),
        Err(Error::OutOfRange)
    ));
    let mut two = [0u8; 2];
    assert!(matches!(
        app.read_bytes(&buf, usize::MAX, &mut two),
        Err(Error::OutOfRange)
    ));
    assert!(matches!(
        app.send(1, 0, &buf, crate::RESERVED_USER_DATA | 1),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        app.register_async(&buf.slice(1, 10), crate::access::READ, 0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        app.register_async(&buf, 4, 0),
        Err(Error::InvalidArgument(_))
    ));
    // Nothing reached the ring.
    let mut engine = engine;
    assert!(engine.take().is_none());
}

#[test]
fn sends_over_the_message_limit_are_refused() {
    let layout = Layout::new(4, 4, 4 << 20, 4096);
    let (mut app, _engine) = setup(layout);
    let buf = app.alloc((1 << 20) + 1).unwrap();
    assert!(matches!(
        app.send(1, 0, &buf, 0),
        Err(Error::TooLarge { len, max: 1_048_576 }) if len == (1 << 20) + 1
    ));
    app.send(1, 0, &buf.slice(0, 1 << 20), 0).unwrap();
}

#[test]
fn received_messages_are_copied_checked_and_released() {
    let (mut app, mut engine) = setup(small_layout());
    engine.put_rx(128, b"ping");
    let rx_len = app.layout().rx_len;
    let c = Completion {
        kind: kind::RECEIVED,
        conn: 5,
        stream: 1,
        offset: 128,
        len: 4,
        ..Completion::default()
    };
    engine.complete(c);
    let got = app.poll().unwrap();
    assert_eq!(got, c);
    assert_eq!(app.message(&got).unwrap(), b"ping");
    let mut big = [0u8; 16];
    assert_eq!(app.message_into(&got, &mut big).unwrap(), 4);
    assert_eq!(&big[..4], b"ping");
    let mut small = [0u8; 3];
    assert!(matches!(
        app.message_into(&got, &mut small),
        Err(Error::InvalidArgument(_))
    ));
    let bad = Completion {
        offset: rx_len - 2,
        ..got
    };
    assert!(matches!(app.message(&bad), Err(Error::OutOfRange)));
    assert!(matches!(app.release(&bad), Err(Error::OutOfRange)));
    let wrapped = Completion {
        offset: u64::MAX - 1,
        ..got
    };
    assert!(matches!(app.message(&wrapped), Err(Error::OutOfRange)));
    let sent = Completion {
        kind: kind::SENT,
        ..got
    };
    assert!(matches!(app.message(&sent), Err(Error::InvalidArgument(_))));

    app.release(&got).unwrap();
    let r = engine.take().unwrap();
    assert_eq!(
        (r.opcode, r.conn, r.stream, r.local_offset, r.len),
        (op::RELEASE, 5, 1, 128, 4)
    );
    assert!(app.poll().is_none());
}

#[test]
fn rings_wrap_around_the_index_space() {
    // Indices start just below u32::MAX: they wrap during the test.
    let (mut app, mut engine) = setup_at(small_layout(), u32::MAX - 5);
    let buf = app.alloc(64).unwrap();
    for i in 0..40u64 {
        app.send(1, 0, &buf, i).unwrap();
        if i % 2 == 1 {
            // Two in flight, then both done.
            for j in [i - 1, i] {
                let c = engine.take().unwrap();
                assert_eq!(c.user_data, j);
                engine.complete(Completion {
                    kind: kind::SENT,
                    user_data: j,
                    ..Completion::default()
                });
            }
            assert_eq!(app.poll().unwrap().user_data, i - 1);
            assert_eq!(app.poll().unwrap().user_data, i);
            assert!(app.poll().is_none());
        }
    }
    assert_eq!(
        engine.word(abi::CPL_HEAD).load(Ordering::Acquire),
        engine.cpl_tail
    );
}

#[test]
fn wait_sleeps_until_the_engine_writes_the_eventfd() {
    let (mut app, mut engine) = setup(small_layout());
    let t = thread::spawn(move || {
        engine.until_app_waits();
        // Let the app reach poll(2).
        thread::sleep(Duration::from_millis(30));
        let woke = engine.complete(Completion {
            kind: kind::SENT,
            user_data: 77,
            ..Completion::default()
        });
        (engine, woke)
    });
    let c = app.wait(None).unwrap().unwrap();
    assert_eq!((c.kind, c.user_data), (kind::SENT, 77));
    let (engine, woke) = t.join().unwrap();
    assert!(woke, "APP_WAITING was not set while the app slept");
    assert_eq!(engine.word(abi::APP_WAITING).load(Ordering::Acquire), 0);
    // The eventfd was read (cleared) by the app.
    assert_eq!(eventfd_take(&engine.cpl_efd), 0);
}

#[test]
fn wait_times_out_and_spots_a_detached_daemon() {
    let (mut app, engine) = setup(small_layout());
    let start = Instant::now();
    assert!(app.wait(Some(Duration::from_millis(50))).unwrap().is_none());
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(engine.word(abi::APP_WAITING).load(Ordering::Acquire), 0);
    assert!(app.wait(Some(Duration::ZERO)).unwrap().is_none());
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(30));
        drop(engine);
    });
    assert!(matches!(app.wait(None), Err(Error::Detached)));
    t.join().unwrap();
}

#[test]
fn blocking_calls_keep_other_completions_for_later() {
    let (mut app, mut engine) = setup(small_layout());
    engine.put_rx(0, b"early");
    let t = thread::spawn(move || {
        // CONNECT, found by sleeping on the command eventfd.
        let (c, _) = engine.wait_command(Duration::from_secs(10)).unwrap();
        assert_eq!(c.opcode, op::CONNECT);
        assert_ne!(c.user_data & crate::RESERVED_USER_DATA, 0);
        // Unrelated completions first, including one with the same
        // user_data but another kind.
        engine.complete(Completion {
            kind: kind::RECEIVED,
            offset: 0,
            len: 5,
            conn: 9,
            ..Completion::default()
        });
        engine.complete(Completion {
            kind: kind::CLOSED,
            user_data: c.user_data,
            ..Completion::default()
        });
        engine.until_app_waits();
        engine.complete(Completion {
            kind: kind::CONNECTED,
            conn: 42,
            user_data: c.user_data,
            peer_addr: c.remote_addr as u32,
            ..Completion::default()
        });

        // Refused.
        let (c, _) = engine.wait_command(Duration::from_secs(10)).unwrap();
        engine.complete(Completion {
            kind: kind::CONNECTED,
            status: status::REFUSED,
            user_data: c.user_data,
            ..Completion::default()
        });
        // REGISTER, then DEREGISTER failing.
        let (c, _) = engine.wait_command(Duration::from_secs(10)).unwrap();
        assert_eq!((c.opcode, c.aux), (op::REGISTER, crate::access::WRITE));
        engine.complete(Completion {
            kind: kind::REGISTERED,
            region: 9,
            user_data: c.user_data,
            ..Completion::default()
        });
        let (c, _) = engine.wait_command(Duration::from_secs(10)).unwrap();
        assert_eq!((c.opcode, c.region), (op::DEREGISTER, 9));
        engine.complete(Completion {
            kind: kind::FAILED,
            status: status::LIMIT,
            user_data: c.user_data,
            ..Completion::default()
        });
        engine
    });
    let peer = Ipv4Addr::new(10, 0, 0, 2);
    assert_eq!(app.connect(peer, 7).unwrap(), 42);
    assert!(matches!(
        app.connect(peer, 8),
        Err(Error::Status(status::REFUSED))
    ));
    let buf = app.alloc(4096).unwrap();
    assert_eq!(app.register(&buf, crate::access::WRITE).unwrap(), 9);
    assert!(matches!(
        app.deregister(9),
        Err(Error::Status(status::LIMIT))
    ));
    let engine = t.join().unwrap();

    // The others, in order, first from poll() then wait().
    let c = app.poll().unwrap();
    assert_eq!(c.kind, kind::RECEIVED);
    assert_eq!(app.message(&c).unwrap(), b"early");
    let c = app.wait(Some(Duration::ZERO)).unwrap().unwrap();
    assert_eq!(c.kind, kind::CLOSED);
    assert!(app.poll().is_none());
    drop(engine);
}

#[test]
fn a_sleeping_engine_is_kicked() {
    let (mut app, mut engine) = setup(small_layout());
    let t = thread::spawn(move || {
        let got = engine.wait_command(Duration::from_secs(10));
        (engine, got)
    });
    // Wait until the engine sleeps, then submit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The flag is in our mapping too; read it through the app's region.
        if app.region_word_for_tests(abi::ENGINE_WANTS_KICK) != 0 {
            break;
        }
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(1));
    }
    thread::sleep(Duration::from_millis(20));
    app.close(3, 1).unwrap();
    let (_engine, got) = t.join().unwrap();
    let (c, kicked) = got.expect("the engine never saw the command");
    assert_eq!(c.opcode, op::CLOSE);
    assert!(kicked, "the engine slept but was not kicked");
}
