//! The vhost-user message stream into the backend: any sequence of
//! messages (codes, flags, sizes, payloads, attached fds) a frontend can
//! send over the socket, handled by the real `VhostUserDaemon` over a real
//! `VnicDevice`, whose vrings go to real vNIC engines that poll whatever
//! the stream set up (memory table, ring sizes, addresses, bases) over a
//! guest memory whose contents the input also gives. No panic, no hang,
//! and every frame back in the pool once the frontend is gone.
//!
//! Trust boundary kept: a memory region's file is at least as large as the
//! region the message declares (a frontend that lies about that can make
//! any mmap-based backend fault; see docs/fuzzing.md), so the harness
//! clamps region sizes and offsets and sizes the memfd to fit.
#![no_main]
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use snapnet::engine::Engine;
use snapnet_wire::MacAddr;
use snapnet::packet::{link, LinkRx, LinkTx};
use snapnet::shaping::RateLimit;
use snapnet::vnic::device::{DeviceError, QueueSink};
use snapnet::vnic::dirty_log::DirtyLog;
use snapnet::vnic::engine::{AttachedQueue, GuestMemory, Side};
use snapnet::vnic::features::Negotiated;
use snapnet::vnic::{VnicDevice, VnicEngine};
use snapnet_fuzz::{assert_no_frame_leaked, engine_config, pool, Input, GUEST_MAC};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserDaemon, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::EventConsumer;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Largest region (and region offset) the harness lets through.
const MAX_REGION: u64 = 64 << 20;
/// The memfd behind every region: room for any clamped region.
const MEMFD_SIZE: u64 = 2 * MAX_REGION;
const MAX_MESSAGES: usize = 64;
const MAX_PAYLOAD: usize = 1024;

/// vhost-user request codes whose message carries fds.
mod req {
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    /// One past the last request code the spec defines today.
    pub const END: u8 = 48;
}
/// Header flags: protocol version 1, and "reply wanted".
const FLAG_VERSION: u32 = 0x1;
const FLAG_NEED_REPLY: u32 = 0x8;
/// A vring fd message's "no fd" bit.
const VRING_NOFD: u64 = 0x100;
/// Size of one memory region description in SET_MEM_TABLE/ADD_MEM_REG.
const REGION: usize = 32;

/// Engines of the vNIC's queue pairs, reached directly (the real daemon
/// goes through their mailboxes to the group threads that poll them; here
/// the handler thread polls them itself right after each change).
struct Sink {
    engines: Mutex<Vec<VnicEngine>>,
}

impl Sink {
    fn with<R>(
        &self,
        index: usize,
        f: impl FnOnce(&mut VnicEngine) -> R,
    ) -> Result<R, DeviceError> {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        let e = engines
            .get_mut(index / 2)
            .ok_or(DeviceError::NoSuchVring(index))?;
        let r = f(e);
        for _ in 0..2 {
            e.poll(64);
        }
        Ok(r)
    }
}

impl QueueSink for Sink {
    fn attach(
        &self,
        index: usize,
        vring: VringRwLock,
        mem: GuestMemory,
        features: Negotiated,
        kick: Option<EventConsumer>,
    ) -> Result<(), DeviceError> {
        let q = AttachedQueue::new(vring, mem).with_kick(kick);
        self.with(index, |e| e.attach(Side::of_vring(index), q, features))
    }

    fn detach(&self, index: usize) -> Result<(), DeviceError> {
        self.with(index, |e| e.detach(Side::of_vring(index)))
    }

    fn set_kick(&self, index: usize, kick: Option<EventConsumer>) -> Result<(), DeviceError> {
        self.with(index, |e| e.set_kick(Side::of_vring(index), kick))
    }

    fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        engines.iter_mut().for_each(|e| e.set_mtu(mtu));
        Ok(())
    }

    fn hold_frames(&self, on: bool) -> Result<(), DeviceError> {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        engines.iter_mut().for_each(|e| e.hold_frames(on));
        Ok(())
    }

    fn set_dirty_log(&self, log: Option<Arc<DirtyLog>>) -> Result<(), DeviceError> {
        let mut engines = self.engines.lock().unwrap_or_else(|e| e.into_inner());
        engines
            .iter_mut()
            .for_each(|e| e.set_dirty_log(log.clone()));
        Ok(())
    }

    fn announce(&self, mac: MacAddr) -> Result<(), DeviceError> {
        self.with(0, |e| {
            e.announce(mac);
        })
    }
}

/// The socket every input's frontend connects to.
fn listener() -> &'static Mutex<Listener> {
    static LISTENER: OnceLock<Mutex<Listener>> = OnceLock::new();
    LISTENER.get_or_init(|| Mutex::new(Listener::new(socket_path(), true).expect("listen")))
}

fn socket_path() -> PathBuf {
    std::env::temp_dir().join(format!("snapnet-fuzz-vhost-{}.sock", std::process::id()))
}

fn memfd(image: &[u8]) -> OwnedFd {
    // SAFETY: a NUL-terminated name and no flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: `fd` was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.set_len(MEMFD_SIZE).expect("size the memfd");
    f.write_all(image).expect("fill the memfd");
    f.into()
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd creation; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: `fd` was just created and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Keeps memory regions inside the memfd (see the trust boundary above).
fn clamp_regions(payload: &mut [u8], first: usize, count: usize) {
    for r in 0..count {
        let at = first + r * REGION;
        let Some(region) = payload.get_mut(at..at + REGION) else {
            return;
        };
        for field in [8, 24] {
            let v = u64::from_le_bytes(region[field..field + 8].try_into().expect("8 bytes"));
            region[field..field + 8].copy_from_slice(&(v % MAX_REGION).to_le_bytes());
        }
    }
}

/// The fds a frontend attaches to message `code` (and keeps for itself).
fn natural_fds(code: u32, payload: &[u8], mem: &OwnedFd, keep: &mut Vec<OwnedFd>) -> Vec<RawFd> {
    let u64_at = |at: usize| {
        payload
            .get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let fresh = |fd: OwnedFd, keep: &mut Vec<OwnedFd>| {
        let raw = fd.as_raw_fd();
        keep.push(fd);
        raw
    };
    match code {
        req::SET_MEM_TABLE => {
            let n = payload.first().map_or(0, |n| usize::from(*n).min(8));
            vec![mem.as_raw_fd(); n]
        }
        req::SET_LOG_BASE | req::SET_INFLIGHT_FD | req::ADD_MEM_REG | req::REM_MEM_REG => {
            vec![mem.as_raw_fd()]
        }
        req::SET_LOG_FD => vec![fresh(eventfd(), keep)],
        req::SET_VRING_KICK | req::SET_VRING_CALL | req::SET_VRING_ERR => {
            if u64_at(0) & VRING_NOFD != 0 {
                Vec::new()
            } else {
                vec![fresh(eventfd(), keep)]
            }
        }
        req::SET_BACKEND_REQ_FD => {
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            keep.push(ours.into());
            vec![fresh(theirs.into(), keep)]
        }
        _ => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let pool = pool();
    let queue_pairs = u16::from(inp.u8() % 4) + 1;
    let image_len = usize::from(inp.u16()) % 4096;
    let mem = memfd(inp.bytes(image_len));

    let mut engines = Vec::new();
    let mut switch_side: Vec<(LinkRx, LinkTx)> = Vec::new();
    for qp in 0..queue_pairs {
        let (to_switch, from_guest) = link(64).expect("link");
        let (to_guest, from_switch) = link(64).expect("link");
        let cfg = engine_config(
            format!("fuzz/q{qp}"),
            1500,
            RateLimit::default(),
            RateLimit::default(),
        );
        let (e, _, _) = VnicEngine::new(cfg, pool, to_switch, from_switch).expect("engine");
        engines.push(e);
        switch_side.push((from_guest, to_guest));
    }
    let device = Arc::new(VnicDevice::new(
        "fuzz",
        GUEST_MAC,
        1500,
        queue_pairs,
        Sink {
            engines: Mutex::new(engines),
        },
    ));
    let mut daemon = VhostUserDaemon::new(
        "fuzz".to_string(),
        device.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .expect("vhost-user daemon");
    let listener = listener();
    let frontend = UnixStream::connect(socket_path()).expect("connect");
    daemon
        .start(&mut listener.lock().unwrap_or_else(|e| e.into_inner()))
        .expect("accept");

    let mut keep = Vec::new();
    for _ in 0..MAX_MESSAGES {
        if inp.is_empty() {
            break;
        }
        let code = u32::from(inp.u8() % req::END);
        let how = inp.u8();
        let mut flags = FLAG_VERSION | if how & 1 != 0 { FLAG_NEED_REPLY } else { 0 };
        if how & 2 != 0 {
            flags = inp.u32();
        }
        let len = usize::from(inp.u16()) % MAX_PAYLOAD;
        let mut payload = inp.bytes(len).to_vec();
        match code {
            req::SET_MEM_TABLE => clamp_regions(&mut payload, 8, 8),
            req::ADD_MEM_REG | req::REM_MEM_REG => clamp_regions(&mut payload, 8, 1),
            _ => {}
        }
        let size = if how & 4 != 0 {
            inp.u32()
        } else {
            payload.len() as u32
        };
        let mut fds = natural_fds(code, &payload, &mem, &mut keep);
        if how & 8 != 0 {
            fds.clear();
        }
        if how & 16 != 0 {
            let raw = eventfd();
            fds.push(raw.as_raw_fd());
            keep.push(raw);
        }
        let mut header = Vec::with_capacity(12);
        for v in [code, flags, size] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        let bufs: [&[u8]; 2] = [&header, &payload];
        // The backend hangs up on what it refuses: nothing more to send.
        if frontend.send_with_fds(&bufs[..], &fds).is_err() {
            break;
        }
    }
    // The frontend goes away; the backend handles what it got, then ends.
    let _ = frontend.shutdown(std::net::Shutdown::Write);
    let _ = daemon.wait();
    // Rings still attached run once more over what the stream set up.
    {
        let mut engines = device
            .sink()
            .engines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for e in engines.iter_mut() {
            e.poll(64);
        }
    }
    device.disconnected();
    drop(daemon);
    drop(frontend);
    for (mut from_guest, _) in switch_side.drain(..) {
        let mut cache = pool.cache();
        while let Some(f) = from_guest.pop() {
            cache.free(f);
        }
    }
    drop(device);
    assert_no_frame_leaked(pool);
});
