//! Where applications attach (docs/pony.md, "Application interface"): a
//! Unix socket; each application gets its shared region and two eventfds,
//! and keeps the connection open. Its close, however the application ended,
//! is what frees everything it had in the engine. A second thread answers
//! the engine's neighbour look-ups.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use snapnet_pony::abi::{AttachReply, AttachRequest, Layout};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::apps::App;
use super::config::PonyConfig;
use super::engine::PonyEngine;
use super::neighbour;
use super::region::SharedRegion;
use crate::engine::MailboxSender;

/// How long an attaching application may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes an attach request may have.
const REQUEST_MAX: usize = 4096;
/// How long a request to the engine may wait for it.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the server looks at its stop flag.
const TICK_MS: i32 = 100;

pub struct PonyServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    socket: PathBuf,
}

impl PonyServer {
    /// Listens on the config's socket and starts the threads.
    pub fn start(
        cfg: &PonyConfig,
        interface: String,
        engine: MailboxSender<PonyEngine>,
        lookups: mpsc::Receiver<Ipv4Addr>,
    ) -> io::Result<Self> {
        let _ = std::fs::remove_file(&cfg.socket);
        let listener = UnixListener::bind(&cfg.socket)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cfg.socket.display())))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let attach = Attach {
            cfg: cfg.clone(),
            engine: engine.clone(),
            apps: HashMap::new(),
            next_id: 1,
        };
        let s = stop.clone();
        let server = std::thread::Builder::new()
            .name("pony-attach".into())
            .spawn(move || attach.run(listener, &s))?;
        let s = stop.clone();
        let local = cfg.address;
        let resolver = std::thread::Builder::new()
            .name("pony-neighbours".into())
            .spawn(move || resolve_loop(&interface, local, &engine, &lookups, &s))?;
        Ok(Self {
            stop,
            threads: vec![server, resolver],
            socket: cfg.socket.clone(),
        })
    }
}

impl Drop for PonyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn resolve_loop(
    interface: &str,
    local: Ipv4Addr,
    engine: &MailboxSender<PonyEngine>,
    lookups: &mpsc::Receiver<Ipv4Addr>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(peer) = lookups.recv_timeout(Duration::from_millis(TICK_MS as u64)) else {
            continue;
        };
        let mac = neighbour::resolve(interface, local, peer);
        if mac.is_none() {
            log::warn!("pony: no neighbour entry for {peer} on {interface}");
        }
        let _ = engine.call(ENGINE_TIMEOUT, move |e| e.resolved(peer, mac));
    }
}

struct Attach {
    cfg: PonyConfig,
    engine: MailboxSender<PonyEngine>,
    /// Attached applications' connections, by id.
    apps: HashMap<u32, UnixStream>,
    next_id: u32,
}

impl Attach {
    fn run(mut self, listener: UnixListener, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let mut fds = vec![pollfd(listener.as_raw_fd())];
            let ids: Vec<u32> = self.apps.keys().copied().collect();
            fds.extend(ids.iter().map(|id| pollfd(self.apps[id].as_raw_fd())));
            // SAFETY: `fds` is a valid array of pollfd of the given length
            // for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS) };
            if n <= 0 {
                continue;
            }
            if fds[0].revents != 0 {
                while let Ok((stream, _)) = listener.accept() {
                    self.attach(stream);
                }
            }
            for (i, id) in ids.iter().enumerate() {
                if fds[i + 1].revents != 0 && self.gone(*id) {
                    self.detach(*id);
                }
            }
        }
        for id in self.apps.keys().copied().collect::<Vec<_>>() {
            self.detach(id);
        }
    }

    /// Whether application `id`'s connection has closed (bytes it sends
    /// after attaching are read and ignored).
    fn gone(&mut self, id: u32) -> bool {
        let Some(s) = self.apps.get_mut(&id) else {
            return false;
        };
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
            Err(_) => true,
        }
    }

    fn detach(&mut self, id: u32) {
        self.apps.remove(&id);
        match self.engine.call(ENGINE_TIMEOUT, move |e| e.remove_app(id)) {
            Ok(_) => log::info!("pony: application {id} detached"),
            Err(e) => log::warn!("pony: application {id}: engine did not answer ({e})"),
        }
    }

    fn attach(&mut self, mut stream: UnixStream) {
        let id = self.next_id;
        match self.set_up(&mut stream, id) {
            Ok((reply, fds)) => {
                if send_reply(&stream, &reply, &fds).is_ok() && stream.set_nonblocking(true).is_ok()
                {
                    self.next_id += 1;
                    self.apps.insert(id, stream);
                } else {
                    let _ = self.engine.call(ENGINE_TIMEOUT, move |e| e.remove_app(id));
                }
            }
            Err(error) => {
                log::info!("pony: attach refused: {error}");
                let reply = AttachReply {
                    ok: false,
                    error: Some(error),
                    ..AttachReply::default()
                };
                let _ = send_reply(&stream, &reply, &[]);
            }
        }
    }

    /// Reads the request, builds the application's region and eventfds,
    /// and hands it to the engine. Returns the reply and the fds to send.
    fn set_up(
        &mut self,
        stream: &mut UnixStream,
        id: u32,
    ) -> Result<(AttachReply, Vec<OwnedFd>), String> {
        stream
            .set_read_timeout(Some(REQUEST_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let line = read_line(stream).map_err(|e| format!("reading the request: {e}"))?;
        let req: AttachRequest =
            serde_json::from_slice(&line).map_err(|e| format!("bad attach request: {e}"))?;
        let name_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if req.name.is_empty() || req.name.len() > 64 || !req.name.chars().all(name_ok) {
            return Err(format!("name '{}' is not 1-64 of [A-Za-z0-9._-]", req.name));
        }
        let cfg = &self.cfg;
        let layout = Layout::new(
            cfg.queue_entries,
            cfg.queue_entries,
            cfg.arena_bytes,
            cfg.rx_bytes,
        );
        let (region, memfd) = SharedRegion::create(layout).map_err(|e| format!("region: {e}"))?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
        let notify = EventFd::new(EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
        let fds = vec![
            memfd,
            dup(&kick).map_err(|e| format!("dup: {e}"))?,
            dup(&notify).map_err(|e| format!("dup: {e}"))?,
        ];
        let app = App::new(id, req.name.clone(), req.service, region, kick, notify);
        self.engine
            .call(ENGINE_TIMEOUT, move |e| e.add_app(app))
            .map_err(|e| format!("engine: {e}"))??;
        log::info!(
            "pony: application {id} '{}' attached (service {})",
            req.name,
            req.service
        );
        Ok((
            AttachReply {
                ok: true,
                error: None,
                app: id,
                region_len: layout.total_len(),
                address: cfg.address.to_string(),
                max_message_bytes: cfg.max_message_bytes,
            },
            fds,
        ))
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn dup(fd: &impl AsRawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is open for the duration of the borrow; the clone is a
    // new descriptor we own.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) }.try_clone_to_owned()
}

/// One line, at most [`REQUEST_MAX`] bytes, without its newline.
fn read_line(stream: &mut UnixStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
            Ok(_) if byte[0] == b'\n' => return Ok(line),
            Ok(_) if line.len() >= REQUEST_MAX => {
                return Err(io::Error::other("request longer than 4096 bytes"))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sends the reply line, with `fds` attached to its first byte.
fn send_reply(stream: &UnixStream, reply: &AttachReply, fds: &[OwnedFd]) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    if fds.is_empty() {
        return (&*stream).write_all(&line);
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = send_with_fds(stream.as_raw_fd(), &line, &raw)?;
    (&*stream).write_all(&line[sent..])
}

fn send_with_fds(socket: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: `msg` points at `control`, which has CMSG_SPACE bytes for one
    // header carrying `fds`; CMSG_FIRSTHDR is non-null for such a buffer,
    // and the copy writes exactly `fd_bytes` into its data.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
    }
    // SAFETY: every pointer in `msg` is valid for the call.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Whether `path` is where a running daemon's applications attach.
pub fn is_listening(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}
