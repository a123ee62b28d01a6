//! Tests of `replay.rs`.
use super::*;
use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::{PausedConnection, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::upgrade::{format, Channel};
use crate::vnic::device::tests::MockSink;
use crate::vnic::VnicDevice;
use snapnet_frontend::{Frontend, FrontendConfig};
use snapnet_wire::MacAddr;

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
    assert!(matches!(d.wait(), Err(vhost_user_backend::Error::Paused)));
    d.take_paused().expect("paused, not ended")
}

/// Whether two fds name the same open file (all eventfds share one
/// inode, so `fstat` cannot tell them apart; kcmp(2) can).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(std::process::id() as i32);
    // SAFETY: kcmp only compares two fds of this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a.as_raw_fd()),
            libc::c_long::from(b.as_raw_fd()),
        )
    };
    assert!(r >= 0, "kcmp: {}", std::io::Error::last_os_error());
    r == 0
}

/// Replays `state` to a fresh handler over a socketpair and pauses it.
fn replayed(
    dev: &Device,
    state: &ConnectionState,
    fds: &[OwnedFd],
) -> (VhostUserDaemon<Device>, PausedConnection) {
    let mut d = daemon(dev);
    let (replay_end, handler_end) = UnixStream::pair().unwrap();
    d.start_on_stream(handler_end).unwrap();
    replay(state, fds, &replay_end).expect("replayed");
    let paused = pause(&mut d);
    (d, paused)
}

fn hand_over(packed: bool) {
    let (a_dev, b_dev) = (device("a"), device("b"));
    let mut a = daemon(&a_dev);
    let (frontend_end, a_end) = UnixStream::pair().unwrap();
    a.start_on_stream(a_end).unwrap();
    let cfg = FrontendConfig {
        queue_pairs: 2,
        packed,
        ..Default::default()
    };
    let mut frontend = Frontend::from_stream(frontend_end, &cfg, Duration::from_secs(10))
        .expect("negotiated with the first handler");
    let paused_a = pause(&mut a);
    let (mut state, fds) = ConnectionState::capture(a.negotiated().unwrap());
    assert!(state.owned && state.acked_features.is_some());
    assert_eq!(state.packed_rings, packed);
    assert_eq!(state.vrings.len(), 4);
    for v in &mut state.vrings {
        assert!(v.ready && v.enabled && v.kick.is_some(), "{v:?}");
        assert_eq!(
            v.position, None,
            "a started vring's position is its engine's"
        );
        // Where the stopped engines had got to.
        v.position = Some(VringPosition {
            next_avail: 0,
            next_used: 0,
        });
    }
    let moved_tx = VringPosition {
        next_avail: 7,
        next_used: if packed { 7 } else { 0 },
    };
    state.vrings[1].position = Some(moved_tx);

    // The state crosses the handoff channel as it would between processes.
    let (tx, rx) = Channel::pair().unwrap();
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    tx.send_message("vhost-user", &state, &borrowed).unwrap();
    let (state, sent_fds): (ConnectionState, Vec<OwnedFd>) = rx.recv_message("vhost-user").unwrap();
    for (sent, kept) in sent_fds.iter().zip(&fds) {
        assert!(same_file(sent, kept));
    }

    // The frontend changes a kick fd during the blackout: the request
    // waits in the socket for the new handler.
    let during = std::thread::spawn(move || frontend.replace_kick(0, false).map(|()| frontend));

    let (mut b, mut paused_b) = replayed(&b_dev, &state, &sent_fds);
    paused_b.replace_stream(paused_a.try_clone_stream().unwrap());
    // The old side lets go of its copies without a hang-up.
    drop(paused_a);
    drop(a);
    b.resume(paused_b).unwrap();
    let frontend = during
        .join()
        .unwrap()
        .expect("the new handler answered the request sent during the blackout");

    let seen = b.negotiated().unwrap();
    assert_eq!(seen.vrings[1].next_avail, moved_tx.next_avail);
    if packed {
        assert_eq!(seen.vrings[1].next_used, moved_tx.next_used);
    }
    let (again, again_fds) = ConnectionState::capture(seen);
    let mut expected = state.clone();
    expected.vrings.iter_mut().for_each(|v| v.position = None);
    assert_eq!(
        again, expected,
        "the new handler negotiated what the old one had"
    );
    for (i, (now, before)) in again_fds.iter().zip(&sent_fds).enumerate() {
        // TX of queue pair 0 (vring 1) got a new kick fd meanwhile.
        let replaced = Some(i) == state.vrings[1].kick;
        assert_eq!(!same_file(now, before), replaced, "fd {i}");
    }
    let b_calls = calls(&b_dev);
    for vring in 0..4 {
        let attached = format!("attach {vring} ");
        assert!(
            b_calls.iter().any(|c| c.starts_with(&attached)),
            "vring {vring} not started: {b_calls:?}"
        );
    }
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
fn a_replayed_split_connection_goes_on_with_the_frontends_own_stream() {
    hand_over(false);
}

#[test]
fn a_replayed_packed_connection_keeps_both_positions() {
    hand_over(true);
}

/// The fd of `len` bytes of fresh guest memory (the frontend's memfd).
fn memfd(len: u64) -> OwnedFd {
    let mem = snapnet_frontend::memory::GuestMemory::new(len as usize, false).unwrap();
    // SAFETY: the fd is the memory's own, open while `mem` lives.
    unsafe { BorrowedFd::borrow_raw(mem.fd()) }
        .try_clone_to_owned()
        .unwrap()
}

/// A guest whose driver has not started yet (no virtio features acked)
/// on a QEMU that adds its memory region per device (ADD_MEM_REG).
fn before_the_driver() -> ConnectionState {
    let idle = VringState {
        size: 256,
        addrs: None,
        ready: false,
        enabled: false,
        position: Some(VringPosition {
            next_avail: 0,
            next_used: 0,
        }),
        kick: None,
        call: None,
        err: None,
    };
    ConnectionState {
        owned: true,
        acked_features: None,
        acked_protocol_features: (VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::STATUS
            | VhostUserProtocolFeatures::MTU)
            .bits(),
        status: 3,
        packed_rings: false,
        mtu: Some(1400),
        regions: vec![RegionState {
            guest_phys_addr: 0,
            memory_size: 1 << 20,
            user_addr: 0x7f00_0000_0000,
            mmap_offset: 0,
            users: 2,
            fd: 0,
        }],
        vrings: vec![idle; 4],
    }
}

#[test]
fn a_guest_without_its_driver_is_replayed_with_its_protocol_state() {
    let state = before_the_driver();
    let dev = device("b");
    let (d, _paused) = replayed(&dev, &state, &[memfd(1 << 20)]);
    let (again, _) = ConnectionState::capture(d.negotiated().unwrap());
    assert_eq!(again, state);
    assert!(calls(&dev).contains(&"mtu 1400".to_string()));
}

/// Replays `state` to a fresh handler and returns what the replay said.
fn replay_to_handler(state: &ConnectionState, fds: &[OwnedFd]) -> Result<(), ReplayError> {
    let dev = device("c");
    let mut d = daemon(&dev);
    let (replay_end, handler_end) = UnixStream::pair().unwrap();
    d.start_on_stream(handler_end).unwrap();
    replay(state, fds, &replay_end)
}

#[test]
fn what_a_replay_cannot_carry_is_refused() {
    let state = before_the_driver();
    let r = replay_to_handler(&state, &[]);
    assert!(matches!(r, Err(ReplayError::MissingFd(0))), "{r:?}");
    let mut started = before_the_driver();
    started.vrings[0].ready = true;
    started.vrings[0].position = None;
    let r = replay_to_handler(&started, &[memfd(1 << 20)]);
    assert!(matches!(r, Err(ReplayError::NoPosition(0))), "{r:?}");
    let mut postcopy = before_the_driver();
    postcopy.acked_protocol_features |= VhostUserProtocolFeatures::PAGEFAULT.bits();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    assert!(matches!(
        replay(&postcopy, &[], &ours),
        Err(ReplayError::UnsupportedProtocolFeatures(_))
    ));
    let mut logging = before_the_driver();
    logging.acked_protocol_features |= VhostUserProtocolFeatures::LOG_SHMFD.bits();
    logging.acked_features =
        Some(logging.acked_features.unwrap_or(0) | crate::vnic::features::LOG_ALL);
    assert!(matches!(
        replay(&logging, &[], &ours),
        Err(ReplayError::Migrating)
    ));
}

/// A state as format 1 wrote it: later formats must still read it (or
/// the format number must move on).
#[test]
fn format_1_state_is_still_read() {
    let bytes = include_bytes!("../../tests/fixtures/upgrade-state-v1.json");
    let state: ConnectionState = format::decode("vhost-user", bytes).unwrap();
    assert_eq!(state, before_the_driver());
}
