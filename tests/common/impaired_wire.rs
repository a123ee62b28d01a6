//! A wire between two devices of a network namespace that loses, duplicates
//! and reorders IPv4 frames, as `tc netem` would: this kernel has neither
//! netem nor fq, and a token bucket (all the tc here can delay with) lets a
//! lone frame through at once, so it cannot reorder. A thread in the
//! namespace relays every frame between two packet sockets, one on each
//! device, drawing each frame's fate from a seeded generator; ARP and IPv6
//! pass untouched, so that neighbour resolution is not what a test measures.
//! A tc qdisc on either device still shapes what the relay sends.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What happens to IPv4 frames, per mille each.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    pub loss: u32,
    pub duplicate: u32,
    /// Held back and sent after the next frame in the same direction (or
    /// after [`HOLD_LIMIT`] when none follows).
    pub reorder: u32,
}

/// Frames the relay lost, duplicated and reordered.
#[derive(Debug, Default)]
pub struct WireCounts {
    pub lost: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
}

/// The longest a held frame waits for one to overtake it.
pub const HOLD_LIMIT: Duration = Duration::from_millis(1);

pub struct ImpairedWire {
    impairment: Arc<Mutex<Impairment>>,
    pub counts: Arc<WireCounts>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ImpairedWire {
    /// Starts relaying between `devs` (both up, in `ns`), unimpaired.
    pub fn start(ns: &str, devs: [&str; 2], seed: u64) -> ImpairedWire {
        let impairment = Arc::new(Mutex::new(Impairment::default()));
        let counts = Arc::new(WireCounts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let netns = File::open(format!("/run/netns/{ns}")).expect("the wire's namespace");
        let devs = devs.map(str::to_string);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (impairment, counts, stop) = (impairment.clone(), counts.clone(), stop.clone());
            std::thread::spawn(move || {
                // SAFETY: `netns` is an open namespace file; setns changes
                // only this thread's network namespace, which the sockets
                // below are then created in.
                let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let sockets = devs.map(|d| packet_socket(&d));
                ready_tx.send(()).unwrap();
                relay(sockets, &impairment, &counts, &stop, seed);
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the relay did not start");
        ImpairedWire {
            impairment,
            counts,
            stop,
            thread: Some(thread),
        }
    }

    pub fn set(&self, impairment: Impairment) {
        *self.impairment.lock().unwrap() = impairment;
    }
}

impl Drop for ImpairedWire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw packet socket bound to `dev`, seeing every frame it receives.
fn packet_socket(dev: &str) -> OwnedFd {
    let all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all)) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just opened and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no device {dev}");
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = all;
    addr.sll_ifindex = index as i32;
    // SAFETY: `addr` is a valid sockaddr_ll of the length passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind to {dev}: {}", std::io::Error::last_os_error());
    let buf: libc::c_int = 4 << 20;
    // SAFETY: SO_RCVBUF takes a c_int, passed with its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::addr_of!(buf).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    fd
}

/// One frame from `fd`, unless it is one this host sent (a packet socket
/// sees those too); `None` when nothing is waiting.
fn receive(fd: RawFd, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: as for bind above.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: `buf` and `from` are writable for the lengths passed.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            std::ptr::addr_of_mut!(from).cast(),
            &mut from_len,
        )
    };
    if n < 0 {
        return None;
    }
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Some(0);
    }
    Some(n as usize)
}

fn send(fd: RawFd, frame: &[u8]) {
    // A full queue below (the tc shaping the device) drops it: a loss.
    // SAFETY: `frame` is readable for its length.
    let _ = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
}

fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= 14 && frame[12..14] == [0x08, 0x00]
}

fn relay(
    sockets: [OwnedFd; 2],
    impairment: &Mutex<Impairment>,
    counts: &WireCounts,
    stop: &AtomicBool,
    seed: u64,
) {
    let mut rng = seed | 1;
    let mut draw = move || {
        // xorshift64*: reproducible from the seed.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as u32 % 1000
    };
    let fds = [sockets[0].as_raw_fd(), sockets[1].as_raw_fd()];
    // Per direction (from device i to the other): the frame held back.
    let mut held: [Option<(Vec<u8>, Instant)>; 2] = [None, None];
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfds = fds.map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: `pfds` is an array of two initialised pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, 1) };
        let now = Instant::now();
        let rates = *impairment.lock().unwrap();
        for from in 0..2 {
            let to = fds[1 - from];
            if let Some((late, _)) =
                held[from].take_if(|(_, at)| now.duration_since(*at) >= HOLD_LIMIT)
            {
                send(to, &late);
            }
            for _ in 0..64 {
                let Some(n) = receive(fds[from], &mut buf) else {
                    break;
                };
                if n == 0 {
                    continue;
                }
                let frame = &buf[..n];
                if !is_ipv4(frame) {
                    send(to, frame);
                    continue;
                }
                let d = draw();
                if d < rates.loss {
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let d = d - rates.loss;
                if d < rates.duplicate {
                    counts.duplicated.fetch_add(1, Ordering::Relaxed);
                    send(to, frame);
                } else if d - rates.duplicate < rates.reorder && held[from].is_none() {
                    counts.reordered.fetch_add(1, Ordering::Relaxed);
                    held[from] = Some((frame.to_vec(), now));
                    continue;
                }
                send(to, frame);
                if let Some((h, _)) = held[from].take() {
                    send(to, &h);
                }
            }
        }
    }
}
