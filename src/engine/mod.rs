//! The engine abstraction (after Snap): a stateful, single-threaded unit of
//! packet work that a scheduler polls, moves between threads, and puts to sleep.

pub mod doorbell;
pub mod mailbox;

use std::os::fd::RawFd;

pub use doorbell::{Doorbell, DoorbellFlags};
pub use mailbox::{Mailbox, MailboxError, MailboxSender};

/// Turns a boxed engine back into its own type (an upgrade takes a queue
/// engine out of its group and apart: docs/upgrade.md).
pub trait IntoAny {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

impl<T: std::any::Any + Send> IntoAny for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// What a scheduler needs from an engine.
///
/// `poll` never blocks. A policy that wants to sleep calls `arm`, which enables
/// the engine's wake-up sources and re-checks for work: only when it returns
/// `false` may the thread block on `wake_fds`; after waking it calls `disarm`.
pub trait Engine: Send + IntoAny {
    /// A name for logs and accounting (`vnic0/q0`, `switch`, ...).
    fn name(&self) -> &str;

    /// Does up to `budget` units of work (packets) and returns how many were
    /// done; 0 means the engine found nothing to do.
    fn poll(&mut self, budget: usize) -> usize;

    /// File descriptors whose readability means "poll me".
    fn wake_fds(&self) -> Vec<RawFd>;

    /// Changes whenever a file behind `wake_fds` is replaced or dropped. A
    /// new file may reuse a closed one's number (a guest kick eventfd the
    /// frontend replaced), so equal numbers do not prove an epoll set is
    /// still watching the right files; a sleeper rebuilds its set when this
    /// moves.
    fn wake_epoch(&self) -> u64 {
        0
    }

    /// Enables wake-ups, then re-checks; `true` means work arrived meanwhile
    /// and the caller must poll instead of sleeping.
    fn arm(&mut self) -> bool;

    /// Back to polling mode: wake-ups off.
    fn disarm(&mut self);

    /// How full the engine's input rings are right now, as a fraction of
    /// the fullest one's size (a guest's TX virtqueue, a NIC queue's RX
    /// ring): work that gathered while the engine was not polled. A napping
    /// scheduler keeps its naps short enough that this stays well below 1.
    fn backlog(&mut self) -> f64 {
        0.0
    }

    /// Whether the poll that just did work handed something to a thread of
    /// this host that waits for it (an application's completions): a
    /// spinning worker then offers its CPU once, so that such a thread on
    /// the same CPU runs now rather than after the worker's idle rounds.
    /// Asked only after a poll that did work; reading it clears it.
    fn take_handoff(&mut self) -> bool {
        false
    }

    /// Whether the engine moves work between the other engines (the
    /// switch): a worker polls it right after any engine that did work, so
    /// a frame crosses the worker in one round.
    fn relays(&self) -> bool {
        false
    }
}
