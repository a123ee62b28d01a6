//! The handoff channel: messages of any size with any number of fds between
//! the running snapnet and the one taking over.
//!
//! A `SOCK_SEQPACKET` unix socket keeps packet boundaries, so the fds passed
//! with a packet (SCM_RIGHTS, at most [`MAX_FDS_PER_PACKET`], below the
//! kernel's 253) always arrive with it, close-on-exec from the start. A message is a head packet (its body length and fd count) and as
//! many further packets as its body and fds need. Every packet starts with a
//! tag byte, so a packet carrying only fds is never mistaken for the peer
//! hanging up (a zero-byte read).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::format::{self, FormatError};

/// Fds sent with one packet: below the kernel's SCM_MAX_FD (253).
pub const MAX_FDS_PER_PACKET: usize = 250;
/// Body bytes in one packet: well below the socket's default send buffer.
const CHUNK: usize = 32 * 1024;
/// Largest message accepted: the state of a host full of vNICs is far below.
const MAX_BODY: u64 = 64 << 20;
/// Most fds one message may carry (memory regions, eventfds and sockets of
/// every vNIC and uplink).
const MAX_FDS: u32 = 1 << 16;

const MAGIC: [u8; 4] = *b"SNUP";
const TAG_HEAD: u8 = 0;
const TAG_MORE: u8 = 1;
/// Tag, magic, body length (u64 LE), fd count (u32 LE).
const HEAD_LEN: usize = 1 + 4 + 8 + 4;

#[derive(Debug, Error)]
pub enum ChannelError {
    #[error("handoff channel: {0}")]
    Io(io::Error),
    #[error("handoff channel: the other process hung up")]
    Closed,
    #[error("handoff channel: no answer within {0:?}")]
    TimedOut(Duration),
    #[error("handoff channel: {0}")]
    Protocol(&'static str),
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// One end of the handoff channel.
pub struct Channel {
    fd: OwnedFd,
    timeout: Option<Duration>,
}

impl ScmSocket for Channel {
    fn socket_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn last_error() -> ChannelError {
    ChannelError::Io(io::Error::last_os_error())
}

impl Channel {
    /// Both ends of a new channel (the running process keeps one and passes
    /// the other to the process it starts).
    pub fn pair() -> Result<(Channel, Channel), ChannelError> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds socketpair writes; the
        // result is checked.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(last_error());
        }
        // SAFETY: socketpair succeeded: both fds are new and owned by nothing else.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel::new(a), Channel::new(b)))
    }

    fn new(fd: OwnedFd) -> Self {
        Self { fd, timeout: None }
    }

    /// The channel end a process was started with (`--takeover-fd`): it must
    /// be a unix seqpacket socket.
    pub fn from_fd(fd: OwnedFd) -> Result<Channel, ChannelError> {
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `kind` and `len` are valid for getsockopt to write an int.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(last_error());
        }
        if kind != libc::SOCK_SEQPACKET {
            return Err(ChannelError::Protocol(
                "the takeover fd is not a unix seqpacket socket",
            ));
        }
        set_cloexec(&fd)?;
        Ok(Channel::new(fd))
    }

    /// The socket, to pass to the process that is started with it.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// How long a send or a receive may wait (`None`: without limit). A
    /// process that stops answering is how a failed upgrade shows, so the
    /// running process always sets one.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ChannelError> {
        let tv = timeout.map_or(
            libc::timeval {
                tv_sec: 0,
                tv_usec: 0,
            },
            |t| libc::timeval {
                tv_sec: t.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                // Never zero for a positive timeout: zero means "no limit".
                tv_usec: libc::suseconds_t::from(t.subsec_micros().max(1)),
            },
        );
        for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: `tv` is a valid timeval for the length given.
            let r = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(last_error());
            }
        }
        self.timeout = timeout;
        Ok(())
    }

    /// Sends a `kind` message (see `format`) with `fds`.
    pub fn send_message<T: Serialize>(
        &self,
        kind: &str,
        body: &T,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ChannelError> {
        self.send(&format::encode(kind, body)?, fds)
    }

    /// Receives a `kind` message and its fds.
    pub fn recv_message<T: DeserializeOwned>(
        &self,
        kind: &str,
    ) -> Result<(T, Vec<OwnedFd>), ChannelError> {
        let (bytes, fds) = self.recv()?;
        Ok((format::decode(kind, &bytes)?, fds))
    }

    /// Sends `body` and `fds` as one message.
    pub fn send(&self, body: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if body.len() as u64 > MAX_BODY || fds.len() > MAX_FDS as usize {
            return Err(ChannelError::Protocol("message too large"));
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut head = Vec::with_capacity(HEAD_LEN);
        head.push(TAG_HEAD);
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&(body.len() as u64).to_le_bytes());
        head.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        let mut fd_chunks = raw.chunks(MAX_FDS_PER_PACKET);
        self.send_packet(&[&head], fd_chunks.next().unwrap_or(&[]))?;
        let mut body_chunks = body.chunks(CHUNK);
        loop {
            let (b, f) = (body_chunks.next(), fd_chunks.next());
            if b.is_none() && f.is_none() {
                return Ok(());
            }
            self.send_packet(&[&[TAG_MORE], b.unwrap_or(&[])], f.unwrap_or(&[]))?;
        }
    }

    fn send_packet(&self, parts: &[&[u8]], fds: &[RawFd]) -> Result<(), ChannelError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        match self.send_with_fds(parts, fds) {
            Ok(n) if n == len => Ok(()),
            Ok(_) => Err(ChannelError::Protocol("a packet was cut short")),
            Err(e) if e.errno() == libc::EPIPE || e.errno() == libc::ECONNRESET => {
                Err(ChannelError::Closed)
            }
            Err(e) if e.errno() == libc::EAGAIN => {
                Err(ChannelError::TimedOut(self.timeout.unwrap_or_default()))
            }
            Err(e) => Err(ChannelError::Io(io::Error::from_raw_os_error(e.errno()))),
        }
    }

    /// Whether the other process sent anything not received yet. Asked
    /// once it is gone: it tells whether it got as far as a message.
    pub fn has_unread(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into `byte`, which outlives the call.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n > 0
    }

    /// Receives one message: its body and its fds (close-on-exec).
    pub fn recv(&self) -> Result<(Vec<u8>, Vec<OwnedFd>), ChannelError> {
        // Room for the longest packet the protocol sends (tag and chunk): a
        // longer one is cut, and recvmsg says so (MSG_TRUNC).
        let mut buf = vec![0u8; 1 + CHUNK];
        let mut fds = Vec::new();
        let n = self.recv_packet(&mut buf, &mut fds, MAX_FDS_PER_PACKET)?;
        if n != HEAD_LEN || buf[0] != TAG_HEAD || buf[1..5] != MAGIC {
            return Err(ChannelError::Protocol("not a message head"));
        }
        let body_len = u64::from_le_bytes(buf[5..13].try_into().expect("8 bytes"));
        let fd_count = u32::from_le_bytes(buf[13..17].try_into().expect("4 bytes"));
        if body_len > MAX_BODY || fd_count > MAX_FDS {
            return Err(ChannelError::Protocol("message too large"));
        }
        let (body_len, fd_count) = (body_len as usize, fd_count as usize);
        let mut body = Vec::with_capacity(body_len);
        while body.len() < body_len || fds.len() < fd_count {
            let room = fd_count.saturating_sub(fds.len()).min(MAX_FDS_PER_PACKET);
            let n = self.recv_packet(&mut buf, &mut fds, room)?;
            if n == 0 || buf[0] != TAG_MORE {
                return Err(ChannelError::Protocol("a message was cut short"));
            }
            let chunk = &buf[1..n];
            if chunk.len() > body_len - body.len() {
                return Err(ChannelError::Protocol("more body than announced"));
            }
            body.extend_from_slice(chunk);
        }
        if fds.len() != fd_count {
            return Err(ChannelError::Protocol("more fds than announced"));
        }
        Ok((body, fds))
    }

    /// Receives one packet into `buf`, appending at most `room` fds to `fds`
    /// (more is a protocol error; every fd received is owned, and so closed,
    /// whatever happens). Returns the packet's length; 0 only for a packet
    /// that carried fds alone, never for a hang-up, which is an error.
    fn recv_packet(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        room: usize,
    ) -> Result<usize, ChannelError> {
        const FD: usize = std::mem::size_of::<RawFd>();
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_PACKET * FD) as u32) } as usize;
        // u64 words: the control buffer must be aligned for cmsghdr.
        let mut control = vec![0u64; space.div_ceil(8)];
        loop {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain data; all-zero is a valid value.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: `msg` points at `iov` (covering `buf`) and at
            // `control` (`space` bytes), all alive across the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => {
                        return Err(ChannelError::TimedOut(self.timeout.unwrap_or_default()))
                    }
                    _ => return Err(ChannelError::Io(e)),
                }
            }
            let before = fds.len();
            // SAFETY: `msg` was filled in by recvmsg; the CMSG macros walk
            // the control data it reports, and every fd in an SCM_RIGHTS
            // message is a new fd of this process, owned by nothing else.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                    {
                        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                        let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                        for i in 0..bytes / FD {
                            fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            let got = fds.len() - before;
            if got > room || msg.msg_flags & libc::MSG_CTRUNC != 0 {
                return Err(ChannelError::Protocol("more fds than announced"));
            }
            if msg.msg_flags & libc::MSG_TRUNC != 0 {
                return Err(ChannelError::Protocol("packet too large"));
            }
            if n == 0 && got == 0 {
                return Err(ChannelError::Closed);
            }
            return Ok(n as usize);
        }
    }
}

/// The takeover fd must not leak into processes this one starts.
fn set_cloexec(fd: &OwnedFd) -> Result<(), ChannelError> {
    // SAFETY: F_SETFD on an fd we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(last_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
    struct State {
        name: String,
        blob: Vec<u8>,
    }

    #[test]
    fn has_unread_tells_whether_the_peer_got_as_far_as_a_message() {
        let (a, b) = Channel::pair().unwrap();
        assert!(!b.has_unread());
        a.send_message("answer", &1u32, &[]).unwrap();
        drop(a);
        assert!(b.has_unread(), "sent before it hung up");
        let (n, _): (u32, _) = b.recv_message("answer").unwrap();
        assert_eq!(n, 1);
        assert!(!b.has_unread(), "a hang-up is not a message");
    }

    #[test]
    fn a_large_message_with_many_fds_arrives_whole() {
        let (a, b) = Channel::pair().unwrap();
        // More fds than three packets carry, each an eventfd holding its
        // own number, so that order and identity are both checked.
        let events: Vec<EventFd> = (0..(2 * MAX_FDS_PER_PACKET + 17) as u64)
            .map(|i| {
                let e = EventFd::new(libc::EFD_NONBLOCK).unwrap();
                e.write(i + 1).unwrap();
                e
            })
            .collect();
        let borrowed: Vec<BorrowedFd<'_>> = events
            .iter()
            // SAFETY: the EventFds outlive the borrows.
            .map(|e| unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) })
            .collect();
        let state = State {
            name: "vnic0".into(),
            blob: (0..(5 * CHUNK + 3)).map(|i| i as u8).collect(),
        };
        let sender = std::thread::scope(|s| {
            let t = s.spawn(|| a.send_message("state", &state, &borrowed));
            let got: (State, Vec<OwnedFd>) = b.recv_message("state").unwrap();
            (t.join().unwrap(), got)
        });
        let (sent, (got, fds)) = sender;
        sent.unwrap();
        assert_eq!(got, state);
        assert_eq!(fds.len(), events.len());
        for (i, fd) in fds.into_iter().enumerate() {
            // SAFETY: the fd is an eventfd received above and owned here.
            let e = unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
            assert_eq!(e.read().unwrap(), i as u64 + 1, "fd {i}");
        }
    }

    #[test]
    fn a_peer_that_hangs_up_is_reported_as_such() {
        let (a, b) = Channel::pair().unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(ChannelError::Closed)));
        assert!(matches!(b.send(b"x", &[]), Err(ChannelError::Closed)));
    }

    #[test]
    fn a_message_cut_short_by_a_hang_up_is_an_error() {
        let (a, b) = Channel::pair().unwrap();
        let mut head = vec![TAG_HEAD];
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&100u64.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        a.send_packet(&[&head], &[]).unwrap();
        drop(a);
        assert!(matches!(b.recv(), Err(ChannelError::Closed)));
    }

    #[test]
    fn a_silent_peer_times_out() {
        let (_a, mut b) = Channel::pair().unwrap();
        b.set_timeout(Some(Duration::from_millis(30))).unwrap();
        assert!(matches!(b.recv(), Err(ChannelError::TimedOut(_))));
    }

    #[test]
    fn what_is_not_a_message_is_refused() {
        let (a, b) = Channel::pair().unwrap();
        a.send_packet(&[b"hello, world"], &[]).unwrap();
        assert!(matches!(b.recv(), Err(ChannelError::Protocol(_))));
        // A head announcing fewer fds than follow: the extra fd is closed
        // (the pipe's reader sees its last writer go).
        let mut ends = [0; 2];
        // SAFETY: `ends` has room for the two fds pipe writes.
        let r = unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0);
        // SAFETY: both fds were just created and are owned by nothing else.
        let (reader, writer) =
            unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
        let mut head = vec![TAG_HEAD];
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&1u64.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        a.send_packet(&[&head], &[]).unwrap();
        a.send_packet(&[&[TAG_MORE], b"x"], &[writer.as_raw_fd()])
            .unwrap();
        drop(writer);
        assert!(matches!(b.recv(), Err(ChannelError::Protocol(_))));
        let mut byte = [0u8];
        let mut reader = std::fs::File::from(reader);
        assert_eq!(std::io::Read::read(&mut reader, &mut byte).unwrap(), 0);
        // A packet longer than any the protocol sends is refused, not cut.
        let mut head = vec![TAG_HEAD];
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&(2 * CHUNK as u64).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        a.send_packet(&[&head], &[]).unwrap();
        a.send_packet(&[&[TAG_MORE], &vec![0u8; CHUNK + 1]], &[])
            .unwrap();
        assert!(matches!(
            b.recv(),
            Err(ChannelError::Protocol("packet too large"))
        ));
        // A format this binary cannot read stops at the envelope.
        let newer = serde_json::json!({ "format": format::FORMAT + 1, "kind": "state", "body": 0 });
        a.send(&serde_json::to_vec(&newer).unwrap(), &[]).unwrap();
        assert!(matches!(
            b.recv_message::<State>("state"),
            Err(ChannelError::Format(FormatError::Newer { .. }))
        ));
    }

    #[test]
    fn only_a_seqpacket_socket_is_a_takeover_fd() {
        let (s, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            Channel::from_fd(s.into()),
            Err(ChannelError::Protocol(_))
        ));
        let (a, _b) = Channel::pair().unwrap();
        let fd = a.fd.as_fd().try_clone_to_owned().unwrap();
        assert!(Channel::from_fd(fd).is_ok());
    }
}
