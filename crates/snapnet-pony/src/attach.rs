//! The attach handshake on the daemon's Pony socket: one JSON line out, one
//! JSON line back carrying the fds (SCM_RIGHTS).

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;

use crate::abi::{AttachReply, AttachRequest};
use crate::Error;

/// Longest reply line accepted.
const MAX_REPLY: usize = 64 * 1024;
/// Most fds one message may carry before the reply counts as malformed.
const MAX_FDS: usize = 8;

/// The daemon's reply and the fds that came with it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) reply: AttachReply,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Sends the request and reads the reply line with every fd that rode on
/// it.
pub(crate) fn handshake(sock: &UnixStream, name: &str, service: u32) -> Result<Reply, Error> {
    let req = AttachRequest {
        name: name.to_owned(),
        service,
    };
    let mut line = serde_json::to_vec(&req).map_err(|e| Error::Protocol(e.to_string()))?;
    line.push(b'\n');
    send_all(sock, &line)?;

    let mut text = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = recv_with_fds(sock, &mut chunk, &mut fds)?;
        if n == 0 {
            return Err(Error::Protocol(
                "the daemon closed the socket before answering".into(),
            ));
        }
        let chunk = &chunk[..n];
        if let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            text.extend_from_slice(&chunk[..end]);
            break;
        }
        text.extend_from_slice(chunk);
        if text.len() > MAX_REPLY {
            return Err(Error::Protocol("reply line too long".into()));
        }
    }
    let reply = serde_json::from_slice(&text)
        .map_err(|e| Error::Protocol(format!("reply is not an AttachReply: {e}")))?;
    Ok(Reply { reply, fds })
}

fn timeout(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
        _ => Error::Io(e),
    }
}

/// Writes all of `data` with MSG_NOSIGNAL: a daemon that hung up is an
/// error, not a SIGPIPE in a process that may not ignore it.
fn send_all(sock: &UnixStream, mut data: &[u8]) -> Result<(), Error> {
    while !data.is_empty() {
        // SAFETY: sends at most `data.len()` bytes from a live slice on the
        // socket we borrow.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(timeout(e));
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// One `recvmsg` into `buf`; fds received are appended to `fds` (owned,
/// close-on-exec) before anything else can fail.
fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> Result<usize, Error> {
    let fd_bytes = (MAX_FDS * mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // u64 words: aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: `msghdr` is plain data for which all-zero is valid (null
        // pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at `iov` (describing `buf`, valid for writes
        // of its length) and at `control` (valid for writes of `space`
        // bytes), all alive for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(timeout(e));
        }
        // SAFETY: `msg` was filled by a successful recvmsg; its control
        // pointer and length describe `control`, still alive.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return headers that lie
            // within the control length the kernel wrote; read unaligned to
            // make no assumption about their alignment.
            let hdr = unsafe { ptr::read_unaligned(cmsg) };
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: as above; CMSG_LEN only computes a size.
                let (data, header) = unsafe { (libc::CMSG_DATA(cmsg), libc::CMSG_LEN(0) as usize) };
                let count =
                    (hdr.cmsg_len as usize).saturating_sub(header) / mem::size_of::<RawFd>();
                for i in 0..count {
                    // SAFETY: the kernel wrote `count` fds after the header,
                    // inside `control`; each is a new descriptor this
                    // process now owns and nothing else refers to.
                    let fd = unsafe {
                        OwnedFd::from_raw_fd(ptr::read_unaligned(data.cast::<RawFd>().add(i)))
                    };
                    fds.push(fd);
                }
            }
            // SAFETY: `cmsg` is a header of `msg`'s control buffer.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(Error::Protocol("too many fds in the reply".into()));
        }
        return Ok(n as usize);
    }
}
