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

use crate::frontend::FrontendError;

#[derive(Debug, Error)]
pub enum ReplayError {
    #[error("replaying {step}: {source}")]
    Vhost {
        step: &'static str,
        source: vhost::Error,
    },
    #[error("replaying SET_STATUS: {0}")]
    Status(#[from] FrontendError),
    #[error("the connection state names fd {0}, which did not come with it")]
    MissingFd(usize),
    #[error("unknown protocol feature bits {0:#x}")]
    UnknownProtocolFeatures(u64),
    #[error(
        "vring {vring} is packed with descriptors in flight (avail {next_avail:#x}, used \
         {next_used:#x}): its engine must be stopped between two batches"
    )]
    InFlight {
        vring: usize,
        next_avail: u16,
        next_used: u16,
    },
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

/// One vring. `next_avail` and `next_used` are what the replay sets: the
/// upgrade puts there the positions the stopped engine reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VringState {
    pub size: u16,
    pub addrs: Option<VringAddrState>,
    pub ready: bool,
    pub enabled: bool,
    pub next_avail: u16,
    pub next_used: u16,
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
                next_avail: v.next_avail,
                next_used: v.next_used,
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
            regions,
            vrings,
        };
        (state, fds)
    }

    fn packed(&self) -> bool {
        let packed = 1 << virtio_bindings::bindings::virtio_config::VIRTIO_F_RING_PACKED;
        self.acked_features.is_some_and(|f| f & packed != 0)
    }
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
    let stream = stream.try_clone().map_err(ReplayError::Dup)?;
    let mut fe = Frontend::from_stream(stream, state.vrings.len() as u64);
    if state.owned {
        fe.set_owner().map_err(step("SET_OWNER"))?;
    }
    let protocol = VhostUserProtocolFeatures::from_bits(state.acked_protocol_features).ok_or(
        ReplayError::UnknownProtocolFeatures(state.acked_protocol_features),
    )?;
    let with_protocol = |f: u64| f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
    if let Some(features) = state.acked_features {
        // The handler learns the offer from GET_FEATURES (reply-ack follows it).
        fe.get_features().map_err(step("GET_FEATURES"))?;
        fe.set_features(features).map_err(step("SET_FEATURES"))?;
        if with_protocol(features) {
            fe.get_protocol_features()
                .map_err(step("GET_PROTOCOL_FEATURES"))?;
            fe.set_protocol_features(protocol)
                .map_err(step("SET_PROTOCOL_FEATURES"))?;
        }
    }
    replay_regions(&mut fe, state, fds, protocol)?;
    let packed = state.packed();
    for (i, v) in state.vrings.iter().enumerate() {
        replay_vring(
            &mut fe,
            i,
            v,
            fds,
            packed,
            state.acked_features.is_some_and(with_protocol),
        )?;
    }
    if protocol.contains(VhostUserProtocolFeatures::STATUS) {
        let reply_ack = protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        crate::frontend::set_status::send(fe.as_raw_fd(), state.status, reply_ack)?;
    }
    // An answered request: everything before it has been handled.
    fe.get_features().map_err(step("GET_FEATURES"))?;
    Ok(())
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
    index: usize,
    v: &VringState,
    fds: &[OwnedFd],
    packed: bool,
    protocol_features: bool,
) -> Result<(), ReplayError> {
    // A packed base carries one position; a stopped engine has returned
    // every chain it took, so both are the same.
    if packed && v.next_avail != v.next_used {
        return Err(ReplayError::InFlight {
            vring: index,
            next_avail: v.next_avail,
            next_used: v.next_used,
        });
    }
    fe.set_vring_num(index, v.size)
        .map_err(step("SET_VRING_NUM"))?;
    fe.set_vring_base(index, v.next_avail)
        .map_err(step("SET_VRING_BASE"))?;
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
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use vhost_user_backend::{PausedConnection, VhostUserDaemon};
    use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

    use crate::frontend::{Frontend, FrontendConfig};
    use crate::packet::wire::MacAddr;
    use crate::upgrade::Channel;
    use crate::vnic::device::tests::MockSink;
    use crate::vnic::VnicDevice;

    type Device = Arc<VnicDevice<MockSink>>;

    fn device(name: &str) -> Device {
        Arc::new(VnicDevice::new(
            name,
            MacAddr([2, 0, 0, 0, 0, 1]),
            1500,
            2,
            MockSink::default(),
        ))
    }

    fn daemon(d: &Device) -> VhostUserDaemon<Device> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        VhostUserDaemon::new("replay".into(), d.clone(), mem).unwrap()
    }

    fn calls(d: &Device) -> Vec<String> {
        d.sink().calls.lock().unwrap().clone()
    }

    /// Stops the daemon's request loop between two messages and takes its
    /// connection.
    fn pause(d: &mut VhostUserDaemon<Device>) -> PausedConnection {
        d.pause_handle().expect("running").pause();
        d.wait().unwrap();
        d.take_paused().expect("paused, not ended")
    }

    #[test]
    fn a_replayed_connection_goes_on_with_the_frontends_own_stream() {
        let (a_dev, b_dev) = (device("a"), device("b"));
        let mut a = daemon(&a_dev);
        let (frontend_end, a_end) = UnixStream::pair().unwrap();
        a.start_on_stream(a_end).unwrap();
        let cfg = FrontendConfig {
            queue_pairs: 2,
            ..Default::default()
        };
        let mut frontend = Frontend::from_stream(frontend_end, &cfg, Duration::from_secs(10))
            .expect("negotiated with the first handler");
        let paused_a = pause(&mut a);
        let (mut state, fds) = ConnectionState::capture(a.negotiated().unwrap());
        assert!(state.owned && state.acked_features.is_some());
        assert_eq!(state.vrings.len(), 4);
        assert!(
            state
                .vrings
                .iter()
                .all(|v| v.ready && v.enabled && v.kick.is_some()),
            "{state:?}"
        );
        // Where the stopped TX engine had got to.
        state.vrings[1].next_avail = 7;

        // The state crosses the handoff channel as it would between processes.
        let (tx, rx) = Channel::pair().unwrap();
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        tx.send_message("vhost-user", &state, &borrowed).unwrap();
        let (state, fds): (ConnectionState, _) = rx.recv_message("vhost-user").unwrap();

        // The frontend changes a kick fd during the blackout: the request
        // waits in the socket for the new handler.
        let during = std::thread::spawn(move || frontend.replace_kick(0, false).map(|()| frontend));

        let mut b = daemon(&b_dev);
        let (replay_end, b_end) = UnixStream::pair().unwrap();
        b.start_on_stream(b_end).unwrap();
        replay(&state, &fds, &replay_end).expect("replayed");
        let mut paused_b = pause(&mut b);
        drop(replay_end);
        paused_b.replace_stream(paused_a.try_clone_stream().unwrap());
        // The old side lets go of its copies without a hang-up.
        drop(paused_a);
        drop(a);
        b.resume(paused_b).unwrap();
        let frontend = during
            .join()
            .unwrap()
            .expect("the new handler answered the request sent during the blackout");

        let (again, _) = ConnectionState::capture(b.negotiated().unwrap());
        assert_eq!(
            again, state,
            "the new handler negotiated what the old one had"
        );
        let b_calls = calls(&b_dev);
        for vring in 0..4 {
            let attached = format!("attach {vring} ");
            assert!(
                b_calls.iter().any(|c| c.starts_with(&attached)),
                "vring {vring} not started: {b_calls:?}"
            );
        }
        // TX of queue pair 0 is vring 1.
        assert!(b_calls.contains(&"kick 1 true".to_string()), "{b_calls:?}");
        let a_calls = calls(&a_dev);
        assert!(
            !a_calls.iter().any(|c| c.starts_with("detach")),
            "the old handler stopped a vring: {a_calls:?}"
        );
        // The stream still carries requests both ways.
        let bases = frontend
            .shutdown_with_bases()
            .expect("answered by the new handler");
        assert_eq!(bases.len(), 4);
    }

    #[test]
    fn a_state_naming_fds_it_did_not_bring_is_refused() {
        let state = ConnectionState {
            owned: true,
            acked_features: None,
            acked_protocol_features: 0,
            status: 0,
            regions: vec![RegionState {
                guest_phys_addr: 0,
                memory_size: 4096,
                user_addr: 0x7000_0000,
                mmap_offset: 0,
                users: 1,
                fd: 3,
            }],
            vrings: Vec::new(),
        };
        let (ours, _theirs) = UnixStream::pair().unwrap();
        assert!(matches!(
            replay(&state, &[], &ours),
            Err(ReplayError::MissingFd(3))
        ));
    }
}
