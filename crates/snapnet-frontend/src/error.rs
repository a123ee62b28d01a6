//! The one error type of the frontend.

use std::io;

/// Everything that can go wrong while connecting to, negotiating with, or stopping a
/// vhost-user backend. The data path (`send`, `recv`, ...) does not return errors: it
/// counts malformed device behaviour in [`super::QueueStats`] instead.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A system call failed (memfd, mmap, socket, eventfd, ...).
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed (socket error, NACK through REPLY_ACK, bad reply).
    #[error("vhost-user {request} failed: {source}")]
    Vhost {
        /// The request, e.g. `SET_MEM_TABLE`.
        request: &'static str,
        /// The error from the `vhost` crate.
        #[source]
        source: vhost::Error,
    },
    /// Could not connect to / accept a connection from the backend in time.
    #[error("timed out after {0:?} waiting for the vhost-user backend on {1}")]
    Timeout(std::time::Duration, String),
    /// The backend does not offer something we cannot do without.
    #[error("backend does not offer {0}")]
    MissingFeature(&'static str),
    /// The backend supports fewer virtqueues than the configuration asks for.
    #[error("backend supports {have} virtqueues, {need} needed")]
    QueueNum {
        /// Rings needed (2 per queue pair).
        need: u64,
        /// What GET_QUEUE_NUM returned.
        have: u64,
    },
    /// `mem_size` cannot hold the rings and buffers.
    #[error("guest memory of {have} bytes is too small, {need} bytes needed")]
    MemoryTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes configured.
        have: usize,
    },
    /// The configuration is unusable.
    #[error("invalid frontend configuration: {0}")]
    InvalidConfig(String),
    /// The backend replied to a hand-made request (SET_STATUS) with something unexpected.
    #[error("vhost-user {0}: unexpected reply from backend")]
    BadReply(&'static str),
}

impl FrontendError {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> FrontendError {
        move |source| FrontendError::Io { what, source }
    }

    pub(crate) fn vhost(request: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
        move |source| FrontendError::Vhost { request, source }
    }
}
