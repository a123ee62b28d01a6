//! What an uplink queue's engine hands over in an upgrade (docs/upgrade.md):
//! its socket and tap (as fds), the frames it lent to the kernel (the
//! socket's rings hold them), the frames waiting for the wire, its counters
//! and its egress bucket's levels.
//!
//! The kernel keeps the socket, its rings and the UMEM registration as long
//! as one process holds the fd, and the UMEM is the shared frame pool, so a
//! lent frame's address means the same frame in both processes: the loans
//! cross as frame indices and nothing is copied or re-posted.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::packet::FrameHandle;
use crate::shaping::token_bucket::BucketLevels;

/// One queue's state, as the upgrade's message carries it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UplinkQueueState {
    /// The NIC queue.
    pub queue: u32,
    /// Counters by name: they continue.
    pub counters: BTreeMap<String, u64>,
    pub egress: Option<BucketLevels>,
    /// Pool frames lent to the kernel (in the fill, RX, TX or completion
    /// ring, or the driver's hands).
    pub lent: Vec<u32>,
    /// The group tap's next slot, if this queue reads the tap.
    pub tap_next: Option<u32>,
}

/// A queue's engine, taken apart for the new process.
pub struct UplinkQueueHandover {
    pub state: UplinkQueueState,
    /// The AF_XDP socket, then the tap's packet socket if there is one.
    pub fds: Vec<OwnedFd>,
    /// Frames the switch had given it for the wire, in order.
    pub for_wire: Vec<FrameHandle>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uplink::{UplinkCounter, UplinkCounters};

    #[test]
    fn counters_cross_by_name_and_unknown_ones_are_left_out() {
        let mut c = UplinkCounters::default();
        c.add(UplinkCounter::RxPackets, 5);
        c.add(UplinkCounter::DropTxStalled, 2);
        let mut state = UplinkQueueState {
            counters: c.to_state(),
            ..UplinkQueueState::default()
        };
        assert_eq!(state.counters.len(), 2, "only counters that counted");
        state.counters.insert("from_a_newer_release".into(), 9);
        let text = serde_json::to_string(&state).unwrap();
        let back: UplinkQueueState = serde_json::from_str(&text).unwrap();
        assert_eq!(UplinkCounters::from_state(&back.counters), c);
    }
}
