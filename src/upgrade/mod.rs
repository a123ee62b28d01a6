//! Transparent upgrade (docs/upgrade.md): a new snapnet process takes over
//! the running one's guests, uplinks and engines without closing anything a
//! guest, QEMU or the kernel holds.
//!
//! Built so far: the handoff channel between the two processes (`channel`:
//! messages with any number of fds), the versioned envelope every message
//! travels in (`format`), the replay of a vhost-user connection's
//! negotiation to the new process's own handler (`replay`), and the shared
//! ring bridge engines pass frames over while the engines are split between
//! the two processes (`bridge`), those engines (`bridge_engine`), sets of
//! free frames as bitmaps (`frame_set`), and the
//! hand-over of one vNIC, connection and engines (`vnic_handover`), its
//! preview in a step-by-step upgrade's brownout (`preview`),
//! rehearsed inside one process by the tests and the benchmark
//! (`rehearsal`).

pub mod bridge;
pub mod bridge_engine;
pub mod channel;
pub mod format;
pub mod frame_set;
pub mod preview;
pub mod rehearsal;
pub mod replay;
pub mod vnic_handover;

/// CLOCK_MONOTONIC in nanoseconds: the one clock two processes on a host
/// share, so the new process can tell how long ago the old one stopped a
/// vNIC (`Instant` cannot cross a process boundary).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on
    // every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}
#[cfg(test)]
mod vnic_handover_tests;

pub use channel::{Channel, ChannelError};
pub use format::{FormatError, FORMAT, OLDEST_READABLE_FORMAT};
