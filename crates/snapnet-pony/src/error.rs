//! The client's errors and the names of the ABI's codes.

use crate::abi::{kind, status};

/// What can go wrong talking to the daemon or its engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call failed (connect, sendmsg, recvmsg, mmap, poll, ...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon refused the attach (its reply had `ok: false`).
    #[error("the daemon refused the attach: {0}")]
    Attach(String),
    /// The daemon's reply did not follow the protocol (not JSON, no newline,
    /// wrong number of fds, bad address, ...).
    #[error("bad attach reply: {0}")]
    Protocol(String),
    /// The shared region's header failed its checks (magic, version, ring
    /// sizes, parts inside the region), or the memfd is smaller than
    /// announced.
    #[error("the shared region's header is not valid")]
    BadRegion,
    /// The command ring has no free slot: reap completions and retry.
    #[error("the command ring is full")]
    QueueFull,
    /// The arena has no free block large enough.
    #[error("the arena has no free block large enough")]
    OutOfArena,
    /// A buffer, offset or length lies outside the arena or the receive area.
    #[error("buffer or offset outside the shared region's part")]
    OutOfRange,
    /// `free` of a buffer that is not a live allocation (exactly as `alloc`
    /// returned it).
    #[error("not a live arena allocation")]
    NotAllocated,
    /// An argument no command could accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// A message larger than the daemon's `max_message_bytes`.
    #[error("message of {len} bytes is larger than the daemon's limit of {max}")]
    TooLarge { len: usize, max: u32 },
    /// The operation completed with a status other than OK.
    #[error("operation failed: {name} ({0})", name = status_name(*.0))]
    Status(u8),
    /// Nothing arrived in time.
    #[error("timed out")]
    Timeout,
    /// The daemon closed the attach socket: the queues are dead.
    #[error("the daemon closed the attach socket")]
    Detached,
}

/// The name of a completion status ([`crate::status`]).
pub fn status_name(code: u8) -> &'static str {
    match code {
        status::OK => "OK",
        status::BAD_COMMAND => "BAD_COMMAND",
        status::NO_CONNECTION => "NO_CONNECTION",
        status::REFUSED => "REFUSED",
        status::UNREACHABLE => "UNREACHABLE",
        status::BAD_REGION => "BAD_REGION",
        status::TOO_LARGE => "TOO_LARGE",
        status::LIMIT => "LIMIT",
        status::CLOSED => "CLOSED",
        _ => "UNKNOWN",
    }
}

/// The name of a completion kind ([`crate::kind`]).
pub fn kind_name(code: u8) -> &'static str {
    match code {
        kind::CONNECTED => "CONNECTED",
        kind::CLOSED => "CLOSED",
        kind::SENT => "SENT",
        kind::RECEIVED => "RECEIVED",
        kind::REGISTERED => "REGISTERED",
        kind::DEREGISTERED => "DEREGISTERED",
        kind::READ_DONE => "READ_DONE",
        kind::WRITE_DONE => "WRITE_DONE",
        kind::INDIRECT_READ_DONE => "INDIRECT_READ_DONE",
        kind::ACCEPTED => "ACCEPTED",
        kind::FAILED => "FAILED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_name_the_status() {
        assert_eq!(
            Error::Status(status::REFUSED).to_string(),
            "operation failed: REFUSED (3)"
        );
        assert_eq!(status_name(200), "UNKNOWN");
        assert_eq!(kind_name(kind::ACCEPTED), "ACCEPTED");
    }
}
