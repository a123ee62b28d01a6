//! The control socket: a unix stream socket (mode 0600, or 0660 with a
//! group), one thread per client, newline-delimited JSON-RPC 2.0.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::methods::{call, Context};
use super::protocol::*;
use crate::control::background::Background;
use crate::control::socket_path::{self, SocketPathError};

/// Clients served at once; more are told to come back later.
const MAX_CLIENTS: usize = 64;

pub struct RpcServer {
    thread: Background,
    path: PathBuf,
    /// A copy of the listening socket, for the process an upgrade starts.
    listener: UnixListener,
    /// Whether stopping removes the socket (not once it is handed over).
    unlink: bool,
}

impl RpcServer {
    /// Listens on `path`. With `gid`, the socket is group-accessible (0660).
    pub fn start(path: &Path, gid: Option<u32>, ctx: Arc<Context>) -> io::Result<Self> {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running daemon", path.display()),
            ));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Bind under a temporary name, set the mode, then rename: the socket
        // is never reachable with looser permissions.
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        // Never remove (or rename over) anything that is not a socket.
        for p in [&tmp, path] {
            if let Err(SocketPathError::NotASocket(p, what)) = socket_path::remove_stale_socket(p) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} is {what}, not a socket; refusing to replace it",
                        p.display()
                    ),
                ));
            }
        }
        let listener = UnixListener::bind(&tmp)?;
        let mode = if gid.is_some() { 0o660 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)?;
        Self::adopt(listener, path, ctx)
    }

    /// Serves on a socket already bound at `path` (the one an upgrade's old
    /// process handed over).
    pub fn adopt(listener: UnixListener, path: &Path, ctx: Arc<Context>) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let copy = listener.try_clone()?;
        let thread = Background::spawn("control", move |stop| accept_loop(listener, ctx, stop))?;
        Ok(Self {
            thread,
            path: path.to_path_buf(),
            listener: copy,
            unlink: true,
        })
    }

    /// Stopping leaves the socket's path: it is systemd's (socket
    /// activation), which keeps listening there for the next start.
    pub fn keep_path(&mut self) {
        self.unlink = false;
    }

    /// The listening socket, to hand over.
    pub fn listener(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.listener.as_fd()
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Stops accepting, and leaves the socket to the process that took it
    /// over.
    pub fn release(mut self) {
        self.unlink = false;
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.thread.stop();
        if self.unlink {
            let _ = socket_path::remove_stale_socket(&self.path);
        }
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: UnixListener, ctx: Arc<Context>, stop: Arc<AtomicBool>) {
    let clients = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Acquire) {
        if ctx.accept_paused.load(Ordering::Acquire) {
            // Handing over: new clients wait in the backlog.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on the stack.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 || ctx.accept_paused.load(Ordering::Acquire)
        {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        if clients.load(Ordering::Acquire) >= MAX_CLIENTS {
            let mut s = stream;
            let e = RpcError::new(RESOURCE, format!("more than {MAX_CLIENTS} control clients"));
            let _ = writeln!(s, "{}", failure(Value::Null, &e));
            continue;
        }
        clients.fetch_add(1, Ordering::AcqRel);
        let (ctx, clients, stop) = (ctx.clone(), clients.clone(), stop.clone());
        let spawned = std::thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                let _ = serve_client(stream, &ctx, &stop);
                clients.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            log::warn!("control: cannot start a client thread");
        }
    }
}

fn serve_client(stream: UnixStream, ctx: &Context, stop: &AtomicBool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // Wake up now and then to notice a daemon shutdown.
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        if stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let limit = (MAX_REQUEST_BYTES + 1 - line.len()) as u64;
        match reader.by_ref().take(limit).read_until(b'\n', &mut line) {
            Ok(0) => return Ok(()), // closed; a partial request is dropped unexecuted
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if line.last() != Some(&b'\n') {
            if line.len() > MAX_REQUEST_BYTES {
                let e = RpcError::new(
                    INVALID_REQUEST,
                    format!("request larger than {MAX_REQUEST_BYTES} bytes"),
                );
                writeln!(writer, "{}", failure(Value::Null, &e))?;
                return Ok(());
            }
            continue; // more of this line to come
        }
        if let Some(answer) = handle_line(&line, ctx) {
            writer.write_all(answer.to_string().as_bytes())?;
            writer.write_all(b"\n")?;
        }
        line.clear();
    }
}

/// Answers one line: a request or a batch. `None` when nothing is to be sent
/// (notifications only, or a blank line).
pub fn handle_line(line: &[u8], ctx: &Context) -> Option<Value> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(failure(
                Value::Null,
                &RpcError::new(PARSE_ERROR, format!("invalid JSON: {e}")),
            ))
        }
    };
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Some(failure(
                    Value::Null,
                    &RpcError::new(INVALID_REQUEST, "empty batch"),
                ));
            }
            let answers: Vec<Value> = items
                .into_iter()
                .filter_map(|r| handle_one(r, ctx))
                .collect();
            (!answers.is_empty()).then_some(Value::Array(answers))
        }
        other => handle_one(other, ctx),
    }
}

fn handle_one(v: Value, ctx: &Context) -> Option<Value> {
    let req = match parse_request(v) {
        Ok(r) => r,
        Err((id, e)) => return Some(failure(id, &e)),
    };
    let result = call(ctx, &req.method, req.params);
    let id = req.id?;
    Some(match result {
        Ok(r) => success(id, r),
        Err(e) => failure(id, &e),
    })
}
