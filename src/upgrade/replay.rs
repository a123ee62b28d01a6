//! A vhost-user connection's negotiation, taken from the process that served
//! it and replayed to this process's own handler.
//!
//! The replay goes over a socketpair as the very messages a frontend sends,
//! so every field goes through the code that handles it when QEMU sends it;
//! then the handler takes over QEMU's stream (docs/upgrade.md). What the old
//! handler negotiated crosses the handoff channel as [`ConnectionState`],
//! with its fds beside it, named by their index.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_backend::{Negotiated, VringAddrs};
use vmm_sys_util::eventfd::EventFd;

use snapnet_frontend::raw_request::{send_u64, NET_SET_MTU, SET_STATUS, SET_VRING_BASE};
use snapnet_frontend::FrontendError;

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("replaying {step}: {source}")]
    Vhost {
        step: &'static str,
        source: vhost::Error,
    },
    #[error("replaying: {0}")]
    Raw(#[from] FrontendError),
    #[error("the connection state names fd {0}, which did not come with it")]
    MissingFd(usize),
    #[error("protocol features {0:#x} carry state a replay does not take over")]
    UnsupportedProtocolFeatures(u64),
    #[error("vring {0} is started but the state has no position for it (its engine's)")]
    NoPosition(usize),
    #[error("the frontend is resetting the device (packed rings, features not set)")]
    Resetting,
    #[error("a live migration is logging the guest's dirty pages")]
    Migrating,
    #[error("cannot duplicate an fd: {0}")]
    Dup(std::io::Error),
}

/// One guest memory region; `fd` indexes the fds sent with the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    pub guest_phys_addr: u64,
    pub memory_size: u64,
    pub user_addr: u64,
    pub mmap_offset: u64,
    /// How many times the frontend added it (QEMU 7.2's multiqueue devices
    /// each add the same regions).
    pub users: u32,
    pub fd: usize,
}

/// A vring's SET_VRING_ADDR, as the frontend sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VringAddrState {
    pub flags: u32,
    pub descriptor: u64,
    pub used: u64,
    pub available: u64,
    pub log: u64,
}

/// Where a vring's device side has got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VringPosition {
    pub next_avail: u16,
    /// Packed rings only: a split ring's used position is the used index
    /// in guest memory, which SET_VRING_ADDR reads back (a stopped engine
    /// has published it).
    pub next_used: u16,
}

/// One vring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VringState {
    pub size: u16,
    pub addrs: Option<VringAddrState>,
    pub ready: bool,
    pub enabled: bool,
    /// `None` for a started vring: the handler's positions are stale (the
    /// engines move the rings), so the upgrade puts the stopped engine's
    /// here before the replay.
    pub position: Option<VringPosition>,
    pub kick: Option<usize>,
    pub call: Option<usize>,
    pub err: Option<usize>,
}

/// What a vhost-user connection negotiated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionState {
    pub owned: bool,
    pub acked_features: Option<u64>,
    pub acked_protocol_features: u64,
    pub status: u8,
    /// Kept across a status reset, which clears the acked features.
    pub packed_rings: bool,
    /// The frontend's last NET_SET_MTU.
    pub mtu: Option<u16>,
    pub regions: Vec<RegionState>,
    pub vrings: Vec<VringState>,
}

impl ConnectionState {
    /// Splits a handler's view into the state and its fds.
    pub fn capture(n: Negotiated) -> (Self, Vec<OwnedFd>) {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut keep = |f: File| {
            fds.push(f.into());
            fds.len() - 1
        };
        let regions = n
            .regions
            .into_iter()
            .map(|r| RegionState {
                guest_phys_addr: r.guest_phys_addr,
                memory_size: r.memory_size,
                user_addr: r.user_addr,
                mmap_offset: r.mmap_offset,
                users: r.users,
                fd: keep(r.file),
            })
            .collect();
        let vrings = n
            .vrings
            .into_iter()
            .map(|v| VringState {
                size: v.size,
                addrs: v.addrs.map(addr_state),
                ready: v.ready,
                enabled: v.enabled,
                position: (!v.ready).then_some(VringPosition {
                    next_avail: v.next_avail,
                    next_used: v.next_used,
                }),
                kick: v.kick.map(&mut keep),
                call: v.call.map(&mut keep),
                err: v.err.map(&mut keep),
            })
            .collect();
        let state = ConnectionState {
            owned: n.owned,
            acked_features: n.acked_features,
            acked_protocol_features: n.acked_protocol_features,
            status: n.status,
            packed_rings: n.packed_rings,
            mtu: n.mtu,
            regions,
            vrings,
        };
        (state, fds)
    }
}

/// The protocol features whose state a replay carries over. The others
/// (a backend-request channel, an inflight area, postcopy, shared objects,
/// device state transfer) hold state of their own. LOG_SHMFD holds state
/// only while a live migration runs, and no vNIC is handed over then
/// (`vnic_handover::pause_vnic`; `replay` refuses a state with LOG_ALL).
fn replayable() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::MTU
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::STATUS
        | VhostUserProtocolFeatures::RARP
        | VhostUserProtocolFeatures::RESET_DEVICE
}

fn fd(fds: &[OwnedFd], index: usize) -> Result<BorrowedFd<'_>, ReplayError> {
    fds.get(index)
        .map(|f| f.as_fd())
        .ok_or(ReplayError::MissingFd(index))
}

/// An eventfd the frontend API can send (its own duplicate of `fd`).
fn eventfd(fd: BorrowedFd<'_>) -> Result<EventFd, ReplayError> {
    let own = fd.try_clone_to_owned().map_err(ReplayError::Dup)?;
    // SAFETY: `own` is a fresh duplicate owned by nothing else; the state
    // names it as an eventfd (kick, call or err), and the frontend API only
    // passes it on.
    Ok(unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(own)) })
}

fn step(step: &'static str) -> impl FnOnce(vhost::Error) -> ReplayError {
    move |source| ReplayError::Vhost { step, source }
}

/// Replays `state` (with its `fds`) as a frontend would, over `stream`,
/// to the handler serving the other end. Returns once the handler has taken
/// every message (the last one is answered). The caller keeps `stream` open
/// until it has paused that handler: a hang-up would end the handler's loop.
pub fn replay(
    state: &ConnectionState,
    fds: &[OwnedFd],
    stream: &UnixStream,
) -> Result<(), ReplayError> {
    let bits = state.acked_protocol_features;
    let protocol = VhostUserProtocolFeatures::from_bits(bits)
        .ok_or(ReplayError::UnsupportedProtocolFeatures(bits))?;
    let unsupported = protocol - replayable();
    if !unsupported.is_empty() {
        return Err(ReplayError::UnsupportedProtocolFeatures(unsupported.bits()));
    }
    if state.acked_features.is_none() && state.packed_rings {
        return Err(ReplayError::Resetting);
    }
    if state
        .acked_features
        .is_some_and(|f| f & crate::vnic::features::LOG_ALL != 0)
    {
        return Err(ReplayError::Migrating);
    }
    let stream = stream.try_clone().map_err(ReplayError::Dup)?;
    let mut fe = Frontend::from_stream(stream, state.vrings.len() as u64);
    // Replayed without REPLY_ACK, which is set with the rest at the end: the
    // requests then go out back to back instead of one per round trip. On a
    // host whose CPUs are busy each round trip waits for the handler's
    // thread to be scheduled; 20 of them took 50-200 ms per vNIC. A request
    // the handler fails ends its loop, so the answered request at the end
    // reports it.
    let pipelined = protocol - VhostUserProtocolFeatures::REPLY_ACK;
    let raw = RawRequests { fd: fe.as_raw_fd() };
    // QEMU's order. The handler learns the offer from GET_FEATURES (the
    // reply-ack flag follows it), and protocol features are negotiated
    // before the driver sets any virtio feature.
    fe.get_features().map_err(step("GET_FEATURES"))?;
    if !protocol.is_empty() {
        fe.get_protocol_features()
            .map_err(step("GET_PROTOCOL_FEATURES"))?;
        fe.set_protocol_features(pipelined)
            .map_err(step("SET_PROTOCOL_FEATURES"))?;
    }
    if state.owned {
        fe.set_owner().map_err(step("SET_OWNER"))?;
    }
    if let Some(features) = state.acked_features {
        fe.set_features(features).map_err(step("SET_FEATURES"))?;
    }
    if let (Some(mtu), true) = (state.mtu, protocol.contains(VhostUserProtocolFeatures::MTU)) {
        raw.send(NET_SET_MTU, u64::from(mtu), "NET_SET_MTU")?;
    }
    replay_regions(&mut fe, state, fds, protocol)?;
    let protocol_features = state
        .acked_features
        .is_some_and(|f| f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
    for (i, v) in state.vrings.iter().enumerate() {
        replay_vring(
            &mut fe,
            &raw,
            i,
            v,
            fds,
            state.packed_rings,
            protocol_features,
        )?;
    }
    if protocol.contains(VhostUserProtocolFeatures::STATUS) {
        raw.send(SET_STATUS, u64::from(state.status), "SET_STATUS")?;
    }
    if pipelined != protocol {
        fe.set_protocol_features(protocol)
            .map_err(step("SET_PROTOCOL_FEATURES"))?;
    }
    // An answered request: everything before it has been handled.
    fe.get_features().map_err(step("GET_FEATURES"))?;
    Ok(())
}

/// Requests the `vhost` crate's frontend cannot send as the replay needs
/// them, written to the same stream between its own.
struct RawRequests {
    fd: std::os::fd::RawFd,
}

impl RawRequests {
    fn send(&self, code: u32, value: u64, what: &'static str) -> Result<(), ReplayError> {
        Ok(send_u64(self.fd, code, value, false, what)?)
    }
}

fn replay_regions(
    fe: &mut Frontend,
    state: &ConnectionState,
    fds: &[OwnedFd],
    protocol: VhostUserProtocolFeatures,
) -> Result<(), ReplayError> {
    let mut infos = Vec::new();
    for r in &state.regions {
        infos.push(VhostUserMemoryRegionInfo {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.user_addr,
            mmap_offset: r.mmap_offset,
            mmap_handle: fd(fds, r.fd)?.as_raw_fd(),
        });
    }
    if protocol.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS) {
        for (info, r) in infos.iter().zip(&state.regions) {
            for _ in 0..r.users.max(1) {
                fe.add_mem_region(info).map_err(step("ADD_MEM_REG"))?;
            }
        }
    } else if !infos.is_empty() {
        fe.set_mem_table(&infos).map_err(step("SET_MEM_TABLE"))?;
    }
    Ok(())
}

fn replay_vring(
    fe: &mut Frontend,
    raw: &RawRequests,
    index: usize,
    v: &VringState,
    fds: &[OwnedFd],
    packed: bool,
    protocol_features: bool,
) -> Result<(), ReplayError> {
    let position = v.position.ok_or(ReplayError::NoPosition(index))?;
    fe.set_vring_num(index, v.size)
        .map_err(step("SET_VRING_NUM"))?;
    // A packed base carries the used position too (bits 16..31, as QEMU
    // sends it), which the crate's 16-bit SET_VRING_BASE cannot.
    let base = if packed {
        u32::from(position.next_avail) | u32::from(position.next_used) << 16
    } else {
        u32::from(position.next_avail)
    };
    let body = index as u64 | u64::from(base) << 32;
    raw.send(SET_VRING_BASE, body, "SET_VRING_BASE")?;
    if let Some(a) = v.addrs {
        let config = VringConfigData {
            queue_max_size: v.size,
            queue_size: v.size,
            flags: a.flags,
            desc_table_addr: a.descriptor,
            used_ring_addr: a.used,
            avail_ring_addr: a.available,
            log_addr: (a.log != 0).then_some(a.log),
        };
        fe.set_vring_addr(index, &config)
            .map_err(step("SET_VRING_ADDR"))?;
    }
    if let Some(call) = v.call {
        fe.set_vring_call(index, &eventfd(fd(fds, call)?)?)
            .map_err(step("SET_VRING_CALL"))?;
    }
    if let Some(err) = v.err {
        fe.set_vring_err(index, &eventfd(fd(fds, err)?)?)
            .map_err(step("SET_VRING_ERR"))?;
    }
    if protocol_features {
        fe.set_vring_enable(index, v.enabled)
            .map_err(step("SET_VRING_ENABLE"))?;
    }
    // Last, as QEMU does: the vring starts (its engine attaches) with all
    // of the above in place. A stopped vring (GET_VRING_BASE) has no kick.
    if let (true, Some(kick)) = (v.ready, v.kick) {
        fe.set_vring_kick(index, &eventfd(fd(fds, kick)?)?)
            .map_err(step("SET_VRING_KICK"))?;
    }
    Ok(())
}

/// The vendored crate's `VringAddrs` as it crosses the channel (destructured
/// whole, so a field added there cannot be left behind here).
fn addr_state(a: VringAddrs) -> VringAddrState {
    let VringAddrs {
        flags,
        descriptor,
        used,
        available,
        log,
    } = a;
    VringAddrState {
        flags,
        descriptor,
        used,
        available,
        log,
    }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
