//! An AF_XDP socket bound to one queue of one interface, with the frame pool
//! registered as its UMEM.
//!
//! Every socket registers the whole pool region as a UMEM of its own rather
//! than sharing one UMEM between sockets: the kernel pins the pages once per
//! registration (root is exempt from the memlock limit), and each queue's
//! engine then owns all four rings of its socket outright, with no shared
//! fill ring to coordinate.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::ring::{ConsumerRing, ProducerRing, RingOffsets};

/// How the kernel moves frames between the NIC and the UMEM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// Zero-copy when the driver supports it, copy mode otherwise.
    Auto,
    /// The NIC's DMA lands in the UMEM (ice, mlx5, i40e...).
    Zerocopy,
    /// The kernel copies between its buffers and the UMEM (veth, any driver).
    Copy,
}

#[derive(Debug, Error)]
pub enum XskError {
    #[error("AF_XDP {step}: {source}")]
    Sys {
        step: &'static str,
        source: io::Error,
    },
    #[error("AF_XDP bind to queue {queue}: still busy after {waited:?} (another socket holds it)")]
    Busy { queue: u32, waited: Duration },
}

fn sys(step: &'static str) -> impl FnOnce(io::Error) -> XskError {
    move |source| XskError::Sys { step, source }
}

/// Ring sizes (entries, powers of two).
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

impl Default for RingSizes {
    fn default() -> Self {
        Self {
            fill: 1024,
            completion: 1024,
            rx: 1024,
            tx: 1024,
        }
    }
}

/// The UMEM a socket registers.
#[derive(Clone, Copy, Debug)]
pub struct UmemArea {
    pub base: *mut u8,
    pub len: usize,
    pub chunk_size: u32,
}

/// Kernel-side counters of a socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskKernelStats {
    /// Dropped for reasons other than a full ring or empty fill ring.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Dropped because our RX ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty: u64,
    pub tx_ring_empty: u64,
}

impl XskKernelStats {
    /// Adds another socket's counters (for per-uplink totals).
    pub fn accumulate(&mut self, o: &XskKernelStats) {
        self.rx_dropped += o.rx_dropped;
        self.rx_invalid_descs += o.rx_invalid_descs;
        self.tx_invalid_descs += o.tx_invalid_descs;
        self.rx_ring_full += o.rx_ring_full;
        self.rx_fill_ring_empty += o.rx_fill_ring_empty;
        self.tx_ring_empty += o.tx_ring_empty;
    }
}

/// A bound AF_XDP socket. Field order matters: the rings are unmapped before
/// the socket is closed.
pub struct XskSocket {
    pub fill: ProducerRing<u64>,
    pub completion: ConsumerRing<u64>,
    pub rx: ConsumerRing<libc::xdp_desc>,
    pub tx: ProducerRing<libc::xdp_desc>,
    zerocopy: bool,
    fd: OwnedFd,
}

/// How long a bind retries while the queue is still held by a socket that
/// was just closed (the kernel releases it asynchronously).
const BUSY_WAIT: Duration = Duration::from_secs(2);

impl XskSocket {
    /// Opens a socket on `ifindex`/`queue` over `umem`. With [`BindMode::Auto`]
    /// zero-copy is tried first and copy mode is used when the driver refuses.
    pub fn open(
        ifindex: u32,
        queue: u32,
        umem: UmemArea,
        sizes: RingSizes,
        mode: BindMode,
    ) -> Result<Self, XskError> {
        match mode {
            BindMode::Auto => match Self::open_as(ifindex, queue, umem, sizes, true) {
                Ok(s) => Ok(s),
                Err(XskError::Sys { step: "bind", .. }) => {
                    Self::open_as(ifindex, queue, umem, sizes, false)
                }
                Err(e) => Err(e),
            },
            BindMode::Zerocopy => Self::open_as(ifindex, queue, umem, sizes, true),
            BindMode::Copy => Self::open_as(ifindex, queue, umem, sizes, false),
        }
    }

    fn open_as(
        ifindex: u32,
        queue: u32,
        umem: UmemArea,
        sizes: RingSizes,
        zerocopy: bool,
    ) -> Result<Self, XskError> {
        // SAFETY: plain socket(2) call; the result is checked before being owned.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(sys("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let reg = libc::xdp_umem_reg {
            addr: umem.base as u64,
            len: umem.len as u64,
            chunk_size: umem.chunk_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(fd.as_fd(), libc::XDP_UMEM_REG, &reg).map_err(sys("UMEM registration"))?;
        setsockopt(fd.as_fd(), libc::XDP_UMEM_FILL_RING, &sizes.fill).map_err(sys("fill ring"))?;
        setsockopt(
            fd.as_fd(),
            libc::XDP_UMEM_COMPLETION_RING,
            &sizes.completion,
        )
        .map_err(sys("completion ring"))?;
        setsockopt(fd.as_fd(), libc::XDP_RX_RING, &sizes.rx).map_err(sys("RX ring"))?;
        setsockopt(fd.as_fd(), libc::XDP_TX_RING, &sizes.tx).map_err(sys("TX ring"))?;
        let rings = Rings::map(fd.as_fd(), sizes)?;
        let flags = libc::XDP_USE_NEED_WAKEUP
            | if zerocopy {
                libc::XDP_ZEROCOPY
            } else {
                libc::XDP_COPY
            };
        bind(fd.as_fd(), ifindex, queue, flags)?;
        Self::with_rings(fd, rings)
    }

    /// A bound socket an upgrade's old process handed over, with rings of
    /// `sizes`: its four rings mapped again, their indices where the old
    /// process left them (it published them all at its last batch's end).
    pub fn adopt(fd: OwnedFd, sizes: RingSizes) -> Result<Self, XskError> {
        let rings = Rings::map(fd.as_fd(), sizes)?;
        Self::with_rings(fd, rings)
    }

    fn with_rings(fd: OwnedFd, rings: Rings) -> Result<Self, XskError> {
        let opts: libc::xdp_options =
            getsockopt(fd.as_fd(), libc::XDP_OPTIONS).map_err(sys("options"))?;
        let Rings {
            fill,
            completion,
            rx,
            tx,
        } = rings;
        Ok(Self {
            fill,
            completion,
            rx,
            tx,
            zerocopy: opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0,
            fd,
        })
    }

    /// A copy of the socket's fd, for an upgrade's new process.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// True when the kernel bound in zero-copy mode.
    pub fn is_zerocopy(&self) -> bool {
        self.zerocopy
    }

    /// Asks the kernel to process the TX ring (copy mode always needs this;
    /// each call moves a bounded batch, so call again while TX is not empty).
    #[inline]
    pub fn kick_tx(&self) {
        // SAFETY: a zero-length sendto on our own socket: no buffer is read.
        let _ = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
    }

    /// Asks the kernel to look at the fill ring again.
    #[inline]
    pub fn kick_fill(&self) {
        // SAFETY: a zero-length recvfrom on our own socket: nothing is written.
        let _ = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }

    /// The kernel's counters of this socket.
    pub fn kernel_stats(&self) -> io::Result<XskKernelStats> {
        let s: libc::xdp_statistics = getsockopt(self.fd.as_fd(), libc::XDP_STATISTICS)?;
        Ok(XskKernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
            tx_ring_empty: s.tx_ring_empty_descs,
        })
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A socket's four rings, mapped.
struct Rings {
    fill: ProducerRing<u64>,
    completion: ConsumerRing<u64>,
    rx: ConsumerRing<libc::xdp_desc>,
    tx: ProducerRing<libc::xdp_desc>,
}

impl Rings {
    /// Maps the rings the socket was set up with (`sizes` entries each).
    fn map(fd: BorrowedFd<'_>, sizes: RingSizes) -> Result<Self, XskError> {
        let off: libc::xdp_mmap_offsets =
            getsockopt(fd, libc::XDP_MMAP_OFFSETS).map_err(sys("ring offsets"))?;
        let fill = ProducerRing::map(
            fd,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            off.fr.into(),
            sizes.fill,
        )
        .map_err(sys("fill ring mmap"))?;
        let completion = ConsumerRing::map(
            fd,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            off.cr.into(),
            sizes.completion,
        )
        .map_err(sys("completion ring mmap"))?;
        let rx = ConsumerRing::map(
            fd,
            libc::XDP_PGOFF_RX_RING as u64,
            RingOffsets::from(off.rx),
            sizes.rx,
        )
        .map_err(sys("RX ring mmap"))?;
        let tx = ProducerRing::map(
            fd,
            libc::XDP_PGOFF_TX_RING as u64,
            RingOffsets::from(off.tx),
            sizes.tx,
        )
        .map_err(sys("TX ring mmap"))?;
        Ok(Self {
            fill,
            completion,
            rx,
            tx,
        })
    }
}

fn bind(fd: BorrowedFd<'_>, ifindex: u32, queue: u32, flags: u16) -> Result<(), XskError> {
    let addr = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: ifindex,
        sxdp_queue_id: queue,
        sxdp_shared_umem_fd: 0,
    };
    let started = Instant::now();
    loop {
        // SAFETY: `addr` is a valid sockaddr_xdp that outlives the call, and
        // its size is passed with it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(sys("bind")(err));
        }
        if started.elapsed() > BUSY_WAIT {
            return Err(XskError::Busy {
                queue,
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn setsockopt<T>(fd: BorrowedFd<'_>, opt: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T whose exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, which has
    // room for a T; the value is zero-initialised, so a shorter answer (an
    // older struct layout) leaves the remaining fields zero.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and then (partly) written by the kernel; every
    // T used here is a plain C struct for which all-zero bytes are valid.
    Ok(unsafe { value.assume_init() })
}
