//! The connected vhost-user virtio-net device: handshake, queue pairs, public API.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend as VuFrontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

use super::error::FrontendError;
use super::features::*;
use super::memory::GuestMemory;
use super::packed_ring::{alloc_packed, PackedRing};
use super::queue::{QueueStats, RxQueue, TxQueue};
use super::ring::DriverRing;
use super::ring::RingAddrs;
use super::split_ring::SplitRing;
use super::{FrontendConfig, RawDesc, VirtioNetHdr, SCRATCH_LEN};
use snapnet_wire::virtq_packed::WRAP_BIT;

/// ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK.
const STATUS_RUNNING: u8 = 1 | 2 | 4 | 8;
/// Control messages must be answered within this time (or the timeout given to connect).
const MIN_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Guest-physical layout of one ring, for raw tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingInfo {
    /// Descriptor table GPA (packed: the descriptor ring).
    pub desc: u64,
    /// Avail ring GPA (packed: the driver event suppression area).
    pub avail: u64,
    /// Used ring GPA (packed: the device event suppression area).
    pub used: u64,
    /// Entries.
    pub size: u16,
}

#[derive(Debug)]
struct QueuePair<R> {
    rx: RxQueue<R>,
    tx: TxQueue<R>,
}

/// The queue pairs, over one ring layout (monomorphised: no dispatch per packet).
#[derive(Debug)]
enum QueuePairs {
    Split(Vec<QueuePair<SplitRing>>),
    Packed(Vec<QueuePair<PackedRing>>),
}

/// Runs `$body` with `$v` bound to the queue pair vector, whichever the ring layout.
macro_rules! with_qps {
    ($qps:expr, $v:ident => $body:expr) => {
        match $qps {
            QueuePairs::Split($v) => $body,
            QueuePairs::Packed($v) => $body,
        }
    };
}

/// Queue pair `qp` of `v`; panics with a clear message when out of range.
fn pick<T>(v: &mut [T], qp: u16) -> &mut T {
    let n = v.len();
    v.get_mut(qp as usize)
        .unwrap_or_else(|| panic!("queue pair {qp} out of range (have {n})"))
}

/// Builds the queue pairs on rings made by `ring`, and posts the RX buffers.
fn build_qps<R: DriverRing>(
    layouts: &[Layout],
    cfg: &FrontendConfig,
    rx_buf_len: u32,
    rx_stride: usize,
    hdr_len: usize,
    mrg: bool,
    ring: impl Fn(RingAddrs) -> Result<R, FrontendError>,
) -> Result<Vec<QueuePair<R>>, FrontendError> {
    let bad = || FrontendError::InvalidConfig("buffer layout".into());
    let mut qps = Vec::with_capacity(layouts.len());
    for l in layouts {
        let tx =
            TxQueue::new(ring(l.tx)?, l.tx_buf, cfg.tx_buf_len, l.ind, hdr_len).ok_or_else(bad)?;
        let mut rx = RxQueue::new(
            ring(l.rx)?,
            l.rx_buf,
            rx_buf_len,
            rx_stride,
            hdr_len,
            mrg,
            cfg.raw_reserve,
        )
        .ok_or_else(bad)?;
        rx.fill();
        qps.push(QueuePair { rx, tx });
    }
    Ok(qps)
}

/// Tells the backend where each ring is (NUM, BASE, ADDR, KICK, CALL, ENABLE per ring).
fn announce_rings<R: DriverRing>(
    vu: &mut VuFrontend,
    mem: &GuestMemory,
    qps: &[QueuePair<R>],
    base: u16,
    enable: bool,
) -> Result<(), FrontendError> {
    let e = FrontendError::vhost;
    for (i, qp) in qps.iter().enumerate() {
        for (r, ring) in [(2 * i, &qp.rx.ring), (2 * i + 1, &qp.tx.ring)] {
            let a = ring.addrs();
            let size = ring.size();
            vu.set_vring_num(r, size).map_err(e("SET_VRING_NUM"))?;
            vu.set_vring_base(r, base).map_err(e("SET_VRING_BASE"))?;
            let vcd = VringConfigData {
                queue_max_size: size,
                queue_size: size,
                flags: 0,
                desc_table_addr: mem.host_addr(a.desc),
                used_ring_addr: mem.host_addr(a.used),
                avail_ring_addr: mem.host_addr(a.avail),
                log_addr: None,
            };
            vu.set_vring_addr(r, &vcd).map_err(e("SET_VRING_ADDR"))?;
            vu.set_vring_kick(r, ring.kick_fd())
                .map_err(e("SET_VRING_KICK"))?;
            vu.set_vring_call(r, ring.call_fd())
                .map_err(e("SET_VRING_CALL"))?;
            if enable {
                vu.set_vring_enable(r, true)
                    .map_err(e("SET_VRING_ENABLE"))?;
            }
        }
    }
    Ok(())
}

/// Guest-physical placement of one queue pair's rings and buffers.
struct Layout {
    rx: RingAddrs,
    tx: RingAddrs,
    rx_buf: u64,
    tx_buf: u64,
    ind: Option<u64>,
}

/// A vhost-user virtio-net device driven from this process (see the module docs).
pub struct Frontend {
    // Field order is drop order: rings first, then the socket, then memory (Arc).
    qps: QueuePairs,
    pub(super) vu: VuFrontend,
    mem: Arc<GuestMemory>,
    pub(super) features: u64,
    /// What the backend offered (GET_FEATURES).
    pub(super) offered_features: u64,
    pub(super) protocol_features: VhostUserProtocolFeatures,
    mac: [u8; 6],
    mtu: u16,
    hdr_len: usize,
    rx_buf_len: u32,
    tx_buf_len: u32,
    queue_size: u16,
    scratch_gpa: u64,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol_features", &self.protocol_features)
            .field("mac", &self.mac)
            .field("mtu", &self.mtu)
            .field("queue_pairs", &self.queue_pairs())
            .field("queue_size", &self.queue_size)
            .finish_non_exhaustive()
    }
}

fn retryable_connect_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::WouldBlock
    )
}

/// Waits up to `timeout` for `fd` to become readable.
fn poll_in(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: `pfd` is a valid pollfd for the duration of the call; count is 1.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

impl Frontend {
    /// Connects to a backend listening on `path` (vhost-user client role), retrying for up
    /// to `timeout`, and sets the device up.
    pub fn connect(
        path: &Path,
        cfg: &FrontendConfig,
        timeout: Duration,
    ) -> Result<Self, FrontendError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if retryable_connect_error(&e) => {
                    if Instant::now() >= deadline {
                        return Err(FrontendError::Timeout(timeout, path.display().to_string()));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(FrontendError::io("connect to backend socket")(e)),
            }
        };
        Self::from_stream(stream, cfg, timeout)
    }

    /// Listens on `path` (replacing a stale socket file) and accepts one backend connection
    /// (for backends that are vhost-user socket clients). The socket file is removed again
    /// once the backend is connected.
    pub fn accept(
        path: &Path,
        cfg: &FrontendConfig,
        timeout: Duration,
    ) -> Result<Self, FrontendError> {
        let listener = match UnixListener::bind(path) {
            Ok(l) => l,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                std::fs::remove_file(path).map_err(FrontendError::io("remove stale socket"))?;
                UnixListener::bind(path).map_err(FrontendError::io("bind socket"))?
            }
            Err(e) => return Err(FrontendError::io("bind socket")(e)),
        };
        listener
            .set_nonblocking(true)
            .map_err(FrontendError::io("set_nonblocking"))?;
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= deadline {
                        let _ = std::fs::remove_file(path);
                        return Err(FrontendError::Timeout(timeout, path.display().to_string()));
                    }
                    poll_in(listener.as_raw_fd(), deadline - now);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrontendError::io("accept")(e)),
            }
        };
        drop(listener);
        let _ = std::fs::remove_file(path);
        stream
            .set_nonblocking(false)
            .map_err(FrontendError::io("set_nonblocking"))?;
        Self::from_stream(stream, cfg, timeout)
    }

    /// Sets the device up over an already connected socket. Control replies must arrive
    /// within `max(timeout, 10 s)`.
    pub fn from_stream(
        stream: UnixStream,
        cfg: &FrontendConfig,
        timeout: Duration,
    ) -> Result<Self, FrontendError> {
        validate(cfg)?;
        stream
            .set_read_timeout(Some(timeout.max(MIN_REPLY_TIMEOUT)))
            .map_err(FrontendError::io("set socket timeout"))?;
        let nrings = 2 * cfg.queue_pairs as usize;
        let mut vu = VuFrontend::from_stream(stream, nrings as u64);
        let e = FrontendError::vhost;

        // Feature negotiation, in QEMU's order.
        let offered = vu.get_features().map_err(e("GET_FEATURES"))?;
        let has_pf = offered & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let mut pf = VhostUserProtocolFeatures::empty();
        if has_pf {
            let offered_pf = vu
                .get_protocol_features()
                .map_err(e("GET_PROTOCOL_FEATURES"))?;
            pf = offered_pf
                & (VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MTU
                    | VhostUserProtocolFeatures::STATUS
                    | VhostUserProtocolFeatures::LOG_SHMFD
                    | VhostUserProtocolFeatures::RARP);
            vu.set_protocol_features(pf)
                .map_err(e("SET_PROTOCOL_FEATURES"))?;
        }
        let reply_ack = pf.contains(VhostUserProtocolFeatures::REPLY_ACK);
        // Like QEMU, ask for an ack only on requests that have no reply of their own.
        let acks = |vu: &VuFrontend, on: bool| {
            vu.set_hdr_flags(if on && reply_ack {
                VhostUserHeaderFlag::NEED_REPLY
            } else {
                VhostUserHeaderFlag::empty()
            })
        };
        if cfg.queue_pairs > 1 {
            if !pf.contains(VhostUserProtocolFeatures::MQ) {
                return Err(FrontendError::MissingFeature("the MQ protocol feature"));
            }
            if offered & VIRTIO_NET_F_MQ == 0 {
                return Err(FrontendError::MissingFeature("VIRTIO_NET_F_MQ"));
            }
        }
        if pf.contains(VhostUserProtocolFeatures::MQ) {
            let have = vu.get_queue_num().map_err(e("GET_QUEUE_NUM"))?;
            if have < nrings as u64 {
                return Err(FrontendError::QueueNum {
                    need: nrings as u64,
                    have,
                });
            }
        }
        acks(&vu, true);
        vu.set_owner().map_err(e("SET_OWNER"))?;

        let mut want =
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | VIRTIO_NET_F_STATUS;
        if has_pf {
            want |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        if cfg.mrg_rxbuf {
            want |= VIRTIO_NET_F_MRG_RXBUF;
        }
        if cfg.event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        if cfg.indirect {
            want |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        if cfg.packed {
            want |= VIRTIO_F_RING_PACKED;
        }
        if cfg.offloads {
            want |= VIRTIO_NET_F_CSUM
                | VIRTIO_NET_F_GUEST_CSUM
                | VIRTIO_NET_F_GUEST_TSO4
                | VIRTIO_NET_F_GUEST_TSO6
                | VIRTIO_NET_F_HOST_TSO4
                | VIRTIO_NET_F_HOST_TSO6;
        }
        if cfg.queue_pairs > 1 {
            want |= VIRTIO_NET_F_MQ;
        }
        let features = offered & want & !VIRTIO_NET_F_CTRL_VQ;
        if cfg.indirect && features & VIRTIO_RING_F_INDIRECT_DESC == 0 {
            return Err(FrontendError::MissingFeature("VIRTIO_RING_F_INDIRECT_DESC"));
        }
        let packed = features & VIRTIO_F_RING_PACKED != 0;
        if cfg.packed && !packed {
            return Err(FrontendError::MissingFeature("VIRTIO_F_RING_PACKED"));
        }
        if features & VIRTIO_F_VERSION_1 == 0 {
            log::warn!("backend does not offer VIRTIO_F_VERSION_1; using the legacy header");
        }
        vu.set_features(features).map_err(e("SET_FEATURES"))?;
        let hdr_len = if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            VirtioNetHdr::LEN
        } else {
            VirtioNetHdr::LEGACY_LEN
        };

        // Config space: mac[6], status, max_virtqueue_pairs, mtu.
        let (mut mac, mut mtu) = ([0u8; 6], 0u16);
        if pf.contains(VhostUserProtocolFeatures::CONFIG) {
            acks(&vu, false);
            match vu.get_config(0, 12, VhostUserConfigFlags::empty(), &[0u8; 12]) {
                Ok((_, cs)) if cs.len() >= 12 => {
                    mac.copy_from_slice(&cs[..6]);
                    if features & VIRTIO_NET_F_MTU != 0 {
                        mtu = u16::from_le_bytes([cs[10], cs[11]]);
                    }
                }
                Ok(_) => log::warn!("GET_CONFIG returned a short config space"),
                Err(err) => log::warn!("GET_CONFIG failed ({err}); MAC unknown"),
            }
            acks(&vu, true);
        }

        // Guest memory layout.
        let size = cfg.queue_size;
        let indirect = features & VIRTIO_RING_F_INDIRECT_DESC != 0;
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mrg = features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let rx_buf_len = cfg.effective_rx_buf_len(features, mtu);
        if (rx_buf_len as usize) < hdr_len {
            return Err(FrontendError::InvalidConfig(format!(
                "rx_buf_len {rx_buf_len} is smaller than the {hdr_len} byte header"
            )));
        }
        let need = cfg.mem_needed(rx_buf_len, indirect);
        if cfg.mem_size < need {
            return Err(FrontendError::MemoryTooSmall {
                need,
                have: cfg.mem_size,
            });
        }
        let mut mem =
            GuestMemory::new(cfg.mem_size, cfg.hugepages).map_err(FrontendError::io("memfd"))?;
        let n = size as usize;
        let rx_stride = (rx_buf_len as usize).next_multiple_of(64);
        let too_small = |need| FrontendError::MemoryTooSmall {
            need,
            have: cfg.mem_size,
        };
        let alloc_ring = if packed {
            alloc_packed
        } else {
            RingAddrs::alloc
        };
        let mut layouts = Vec::with_capacity(cfg.queue_pairs as usize);
        for _ in 0..cfg.queue_pairs {
            let l = (|| {
                Some(Layout {
                    rx: alloc_ring(&mut mem, size)?,
                    tx: alloc_ring(&mut mem, size)?,
                    tx_buf: mem.alloc(n * cfg.tx_buf_len as usize, 64)?,
                    rx_buf: mem.alloc(n * rx_stride, 64)?,
                    ind: if indirect {
                        Some(mem.alloc(32 * n, 16)?)
                    } else {
                        None
                    },
                })
            })()
            .ok_or_else(|| too_small(need))?;
            layouts.push(l);
        }
        let scratch_gpa = mem
            .alloc(SCRATCH_LEN, 4096)
            .ok_or_else(|| too_small(need))?;
        let mem = Arc::new(mem);
        let (l, bl) = (&layouts[..], rx_buf_len);
        let qps = if packed {
            QueuePairs::Packed(build_qps(l, cfg, bl, rx_stride, hdr_len, mrg, |a| {
                PackedRing::new(mem.clone(), a, size, event_idx).map_err(FrontendError::io("ring"))
            })?)
        } else {
            QueuePairs::Split(build_qps(l, cfg, bl, rx_stride, hdr_len, mrg, |a| {
                SplitRing::new(mem.clone(), a, size, event_idx).map_err(FrontendError::io("ring"))
            })?)
        };

        // One region: guest-physical 0..size, our mapping address, memfd offset 0. (The
        // struct update covers the extra fields of `vhost` built with its `xen` feature.)
        #[allow(clippy::needless_update)]
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: mem.size() as u64,
            userspace_addr: mem.host_base() as u64,
            mmap_offset: 0,
            mmap_handle: mem.fd(),
            ..Default::default()
        };
        vu.set_mem_table(&[region]).map_err(e("SET_MEM_TABLE"))?;

        // QEMU and DPDK put the avail wrap counter of a packed ring in bit 15 of the base;
        // it starts at 1.
        let base = if packed { WRAP_BIT } else { 0 };
        with_qps!(&qps, v => announce_rings(&mut vu, &mem, v, base, has_pf))?;
        let mut dev = Frontend {
            qps,
            vu,
            mem,
            features,
            offered_features: offered,
            protocol_features: pf,
            mac,
            mtu,
            hdr_len,
            rx_buf_len,
            tx_buf_len: cfg.tx_buf_len,
            queue_size: size,
            scratch_gpa,
        };
        if pf.contains(VhostUserProtocolFeatures::STATUS) {
            dev.set_status(STATUS_RUNNING)?;
        }
        // Like a guest driver after filling the RX ring: tell the device there are buffers.
        with_qps!(&mut dev.qps, v => v.iter_mut().for_each(|qp| qp.rx.ring.kick()));
        log::debug!(
            "vhost-user device up: features {features:#x}, protocol features {:#x}, \
             {} queue pair(s) of {size}, rx buffers {rx_buf_len} B, mac {mac:02x?}",
            pf.bits(),
            dev.queue_pairs()
        );
        Ok(dev)
    }

    /// Sends VHOST_USER_SET_STATUS (see [`super::raw_request`]).
    fn set_status(&self, status: u8) -> Result<(), FrontendError> {
        use super::raw_request::{send_u64, SET_STATUS};
        let reply_ack = self
            .protocol_features
            .contains(VhostUserProtocolFeatures::REPLY_ACK);
        let fd = self.vu.as_raw_fd();
        send_u64(fd, SET_STATUS, u64::from(status), reply_ack, "SET_STATUS")
    }

    /// Negotiated virtio feature bits.
    pub fn acked_features(&self) -> u64 {
        self.features
    }

    /// Negotiated vhost-user protocol feature bits.
    pub fn acked_protocol_features(&self) -> u64 {
        self.protocol_features.bits()
    }

    /// MAC from the device config space (GET_CONFIG), zeroes when unavailable.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// MTU from the config space when VIRTIO_NET_F_MTU is negotiated, else 0.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Bytes of virtio-net header in front of every packet (12 with VERSION_1).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Queue pairs set up.
    pub fn queue_pairs(&self) -> u16 {
        with_qps!(&self.qps, v => v.len() as u16)
    }

    /// Entries per ring.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Size of each posted RX buffer.
    pub fn rx_buf_len(&self) -> u32 {
        self.rx_buf_len
    }

    /// Size of each TX buffer (header + packet that fit one descriptor).
    pub fn tx_buf_len(&self) -> u32 {
        self.tx_buf_len
    }

    /// Copies each packet (with `hdr` prepended) into TX buffers and publishes them; returns
    /// how many were queued (fewer when the ring is full). Reclaims completed buffers first;
    /// kicks at most once, only when the device asks for it.
    pub fn send(&mut self, qp: u16, pkts: &[&[u8]], hdr: &VirtioNetHdr) -> usize {
        with_qps!(&mut self.qps, v => pick(v, qp).tx.send(pkts, hdr))
    }

    /// Pre-fills every TX buffer of `qp` with a zero header and `frame` for [`Self::blast`].
    pub fn prepare_blast(&mut self, qp: u16, frame: &[u8]) {
        with_qps!(&mut self.qps, v => pick(v, qp).tx.prepare_blast(frame))
    }

    /// Like [`Self::prepare_blast`] with the virtio-net header `hdr`.
    pub fn prepare_blast_with_hdr(&mut self, qp: u16, frame: &[u8], hdr: &VirtioNetHdr) {
        with_qps!(&mut self.qps, v => pick(v, qp).tx.prepare_blast_with_hdr(frame, hdr))
    }

    /// Publishes up to `n` pre-filled frames (no copy); returns how many.
    pub fn blast(&mut self, qp: u16, n: usize) -> usize {
        with_qps!(&mut self.qps, v => pick(v, qp).tx.blast(n))
    }

    /// Harvests received packets on `qp`, calling `f(hdr, payload)` for each complete one
    /// (MRG_RXBUF buffers assembled), reposts the buffers; returns packets harvested.
    pub fn recv(&mut self, qp: u16, f: impl FnMut(&VirtioNetHdr, &[u8])) -> usize {
        with_qps!(&mut self.qps, v => pick(v, qp).rx.harvest::<true, _>(f).0)
    }

    /// Count-only harvesting: (packets, payload bytes without virtio header).
    pub fn recv_count(&mut self, qp: u16) -> (usize, usize) {
        with_qps!(&mut self.qps, v => pick(v, qp).rx.harvest::<false, _>(|_, _| {}))
    }

    /// Blocks until RX used entries are pending on `qp` or `timeout` passes, with RX
    /// interrupts enabled only for the wait. Returns whether entries are pending.
    pub fn wait_rx(&mut self, qp: u16, timeout: Duration) -> bool {
        with_qps!(&mut self.qps, v => pick(v, qp).rx.wait(timeout))
    }

    /// Publishes a raw descriptor chain on the TX ring of `qp` (see [`RawDesc`] for how
    /// `next` is translated). Returns the head index. Panics when not enough descriptors are
    /// free.
    pub fn tx_raw_chain(&mut self, qp: u16, descs: &[RawDesc]) -> u16 {
        let (head, free) = with_qps!(&mut self.qps, v => {
            let q = &mut pick(v, qp).tx;
            (q.raw_chain(descs), q.ring.free_count())
        });
        head.unwrap_or_else(|| {
            panic!(
                "tx_raw_chain: {} descriptors wanted, {free} free (chain must be non-empty)",
                descs.len()
            )
        })
    }

    /// Same on the RX ring. RX descriptors are all posted as buffers unless
    /// `FrontendConfig::raw_reserve` keeps some free; panics when not enough are free.
    pub fn rx_raw_chain(&mut self, qp: u16, descs: &[RawDesc]) -> u16 {
        let (head, free) = with_qps!(&mut self.qps, v => {
            let q = &mut pick(v, qp).rx;
            (q.raw_chain(descs), q.ring.free_count())
        });
        head.unwrap_or_else(|| {
            panic!(
                "rx_raw_chain: {} descriptors wanted, {free} free (raise raw_reserve)",
                descs.len()
            )
        })
    }

    /// Used entries (id, len) the device returned for raw chains since the last call. This
    /// first processes pending completions of that ring: on TX it reclaims, on RX it
    /// harvests, discarding (and counting in `rx_discarded`) normal packets in front.
    pub fn take_raw_used(&mut self, qp: u16, rx: bool) -> Vec<(u32, u32)> {
        with_qps!(&mut self.qps, v => {
            let q = pick(v, qp);
            if rx {
                q.rx.take_raw_used()
            } else {
                q.tx.reclaim();
                q.tx.ring.take_raw_used()
            }
        })
    }

    /// Free descriptors on a ring of `qp` (what raw chains can use).
    pub fn free_descs(&mut self, qp: u16, rx: bool) -> usize {
        with_qps!(&mut self.qps, v => {
            let q = pick(v, qp);
            if rx {
                q.rx.ring.free_count()
            } else {
                q.tx.reclaim();
                q.tx.ring.free_count()
            }
        })
    }

    /// Guest-physical layout of a ring of `qp`.
    pub fn ring_info(&self, qp: u16, rx: bool) -> RingInfo {
        let (a, size) = with_qps!(&self.qps, v => {
            let q = &v[qp as usize];
            if rx {
                (q.rx.ring.addrs(), q.rx.ring.size())
            } else {
                (q.tx.ring.addrs(), q.tx.ring.size())
            }
        });
        RingInfo {
            desc: a.desc,
            avail: a.avail,
            used: a.used,
            size,
        }
    }

    /// Gives a ring of queue pair `qp` a new kick eventfd (SET_VRING_KICK
    /// on a running ring); the old one is closed.
    pub fn replace_kick(&mut self, qp: u16, rx: bool) -> Result<(), FrontendError> {
        let index = 2 * qp as usize + usize::from(!rx);
        let kick = with_qps!(&mut self.qps, v => {
            let q = pick(v, qp);
            let fresh = if rx {
                q.rx.ring.new_kick_fd()
            } else {
                q.tx.ring.new_kick_fd()
            };
            fresh.map_err(|source| FrontendError::Io {
                what: "eventfd",
                source,
            })?
        });
        self.vu
            .set_vring_kick(index, kick)
            .map_err(|source| FrontendError::Vhost {
                request: "SET_VRING_KICK",
                source,
            })
    }

    /// Counters of queue pair `qp`.
    pub fn stats(&self, qp: u16) -> QueueStats {
        with_qps!(&self.qps, v => {
            let q = &v[qp as usize];
            let (rx_packets, rx_bytes, rx_discarded) = q.rx.counters();
            QueueStats {
                tx_packets: q.tx.packets(),
                tx_kicks: q.tx.ring.stats().kicks,
                rx_packets,
                rx_bytes,
                rx_kicks: q.rx.ring.stats().kicks,
                rx_discarded,
                bad_used: q.tx.ring.stats().bad_used + q.rx.ring.stats().bad_used,
            }
        })
    }

    /// GPA of a scratch area of [`Self::scratch_len`] bytes that no ring or buffer uses.
    pub fn scratch_gpa(&self) -> u64 {
        self.scratch_gpa
    }

    /// Size of the scratch area.
    pub fn scratch_len(&self) -> usize {
        SCRATCH_LEN
    }

    /// Size of guest memory; valid GPAs are `0..mem_size()`.
    pub fn mem_size(&self) -> usize {
        self.mem.size()
    }

    /// Writes `bytes` into guest memory at `gpa`. Panics when the range is outside memory.
    pub fn write_guest(&mut self, gpa: u64, bytes: &[u8]) {
        assert!(
            self.mem.write(gpa, bytes),
            "write_guest({gpa:#x}, {} bytes) outside guest memory",
            bytes.len()
        );
    }

    /// Reads guest memory at `gpa` into `buf`. Panics when the range is outside memory.
    pub fn read_guest(&self, gpa: u64, buf: &mut [u8]) {
        assert!(
            self.mem.read(gpa, buf),
            "read_guest({gpa:#x}, {} bytes) outside guest memory",
            buf.len()
        );
    }

    /// Orderly stop: SET_STATUS 0 (when STATUS was negotiated), then GET_VRING_BASE on every
    /// ring; drop closes the socket.
    pub fn shutdown(self) -> Result<(), FrontendError> {
        self.shutdown_with_bases().map(|_| ())
    }

    /// [`Self::shutdown`], returning the ring bases the backend reported (RX0, TX0, RX1, ...):
    /// for split rings the next avail index the device would have processed, for packed
    /// rings the next slot with the avail wrap counter in bit 15.
    pub fn shutdown_with_bases(self) -> Result<Vec<u32>, FrontendError> {
        if self
            .protocol_features
            .contains(VhostUserProtocolFeatures::STATUS)
        {
            self.set_status(0)?;
        }
        self.stop_rings()
    }

    /// GET_VRING_BASE on every ring (RX0, TX0, RX1, ...), as QEMU stops a
    /// device at the end of a live migration: returns the bases (see
    /// [`Self::shutdown_with_bases`]); the backend writes nothing into
    /// guest memory afterwards. The device stays connected.
    pub fn stop_rings(&self) -> Result<Vec<u32>, FrontendError> {
        self.vu.set_hdr_flags(VhostUserHeaderFlag::empty());
        (0..2 * self.queue_pairs() as usize)
            .map(|r| {
                self.vu
                    .get_vring_base(r)
                    .map_err(FrontendError::vhost("GET_VRING_BASE"))
            })
            .collect()
    }
}

fn validate(cfg: &FrontendConfig) -> Result<(), FrontendError> {
    let bad = |m: String| Err(FrontendError::InvalidConfig(m));
    if cfg.queue_pairs == 0 || cfg.queue_pairs > 0x4000 {
        return bad(format!("queue_pairs {} out of range", cfg.queue_pairs));
    }
    if !cfg.queue_size.is_power_of_two() || cfg.queue_size > super::split_ring::MAX_QUEUE_SIZE {
        return bad(format!(
            "queue_size {} is not a power of two <= 32768",
            cfg.queue_size
        ));
    }
    if cfg.tx_buf_len < 64 {
        return bad(format!("tx_buf_len {} is below 64", cfg.tx_buf_len));
    }
    Ok(())
}
