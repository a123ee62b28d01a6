//! snapnet's copy of group-addressed frames (broadcast, multicast) from the
//! uplink interface.
//!
//! The XDP program passes those frames to the kernel, because the host needs
//! them too and XDP cannot clone. The kernel hands every received frame to
//! packet sockets before its own protocol stack, so a packet socket with a
//! classic BPF filter that accepts only group-addressed destinations gets
//! exactly the frames the guests may need.
//!
//! The socket delivers into a `PACKET_RX_RING` mapped into our memory, so
//! looking for a frame is a memory read, not a syscall: the engine looks on
//! every poll, and an idle tap costs nothing.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use snapnet_wire::{ethernet, vlan};

/// Ring slots: room for a burst of ARP/ND while the engine is busy.
const SLOTS: u32 = 256;
/// One slot: the tpacket2 header, the link address, and a frame of up to the
/// largest uplink MTU.
const SLOT_SIZE: u32 = 4096;

/// `ETH_P_ALL` in network byte order, as packet sockets want it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A non-blocking packet socket bound to one interface, seeing only received
/// group-addressed frames.
pub struct GroupTap {
    ring: *mut u8,
    ring_len: usize,
    next: u32,
    fd: OwnedFd,
}

// SAFETY: the ring mapping is owned by the tap and moves with it; only the
// engine that owns the tap reads it.
unsafe impl Send for GroupTap {}

impl GroupTap {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2); checked before being owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0, // no protocol until the filter is in place: nothing queues before it
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Accept a frame only when the group bit of its destination is set:
        // ldb [0]; jset #1, accept, drop.
        let mut code = [
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: 1,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: u32::MAX,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        let prog = libc::sock_fprog {
            len: code.len() as u16,
            filter: code.as_mut_ptr(),
        };
        setsockopt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
        // Frames the host sends out of this interface are not for the guests.
        setsockopt(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &1i32,
        )?;
        setsockopt(
            fd.as_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &(libc::tpacket_versions::TPACKET_V2 as i32),
        )?;
        let req = libc::tpacket_req {
            tp_block_size: SLOT_SIZE,
            tp_block_nr: SLOTS,
            tp_frame_size: SLOT_SIZE,
            tp_frame_nr: SLOTS,
        };
        setsockopt(fd.as_fd(), libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let tap = Self::map(fd, 0)?;
        // SAFETY: all-zero is a valid sockaddr_ll; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL_BE;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll for the duration of the call.
        let rc = unsafe {
            libc::bind(
                tap.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(tap)
    }

    /// A tap an upgrade's old process handed over: its socket, and the slot
    /// it was to read next ([`Self::next_slot`]).
    pub fn adopt(fd: OwnedFd, next: u32) -> io::Result<Self> {
        if next >= SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("slot {next} of {SLOTS}"),
            ));
        }
        Self::map(fd, next)
    }

    /// Maps the socket's RX ring (set up in [`Self::open`]).
    fn map(fd: OwnedFd, next: u32) -> io::Result<Self> {
        let ring_len = (SLOTS * SLOT_SIZE) as usize;
        // SAFETY: maps the ring the kernel set up for this socket, of
        // exactly the size requested; checked against MAP_FAILED.
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ring: ring.cast(),
            ring_len,
            next,
            fd,
        })
    }

    /// The slot to read next: the kernel fills slots in turn, so a process
    /// that takes the socket over goes on from there.
    pub fn next_slot(&self) -> u32 {
        self.next
    }

    /// A copy of the socket's fd, for an upgrade's new process.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    fn slot(&self) -> *mut libc::tpacket2_hdr {
        // SAFETY: `next` < SLOTS, so the slot lies within the mapping.
        unsafe { self.ring.add((self.next * SLOT_SIZE) as usize).cast() }
    }

    fn status(&self) -> &AtomicU32 {
        // SAFETY: `tp_status` is the first, 4-byte aligned field of the slot
        // header, shared with the kernel, which writes it last (release) when
        // it hands the slot to us.
        unsafe { &*(self.slot() as *const AtomicU32) }
    }

    /// True when a frame waits (one memory read).
    #[inline]
    pub fn has_frame(&self) -> bool {
        self.status().load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// Copies the next frame into `buf` and gives its slot back to the kernel;
    /// returns its length, or `None` when no frame waits. A frame longer than
    /// `buf` is reported with its length and not copied (the caller drops it).
    /// A VLAN tag the kernel took out of the frame is put back in.
    #[inline]
    pub fn recv_into(&mut self, buf: &mut [u8]) -> Option<usize> {
        let status = self.status().load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        // SAFETY: the kernel handed this slot to us (status USER, acquire),
        // so it does not write it until we give it back below.
        let hdr = unsafe { self.slot().read() };
        let max = SLOT_SIZE as usize;
        let (at, len) = (usize::from(hdr.tp_mac), hdr.tp_snaplen as usize);
        let vlan = status & libc::TP_STATUS_VLAN_VALID != 0 && len >= ethernet::ETHERTYPE.start;
        let total = len + if vlan { vlan::TAG_LEN } else { 0 };
        if at + len <= max && total <= buf.len() {
            // SAFETY: `at + len` is within the slot (checked), the slot within
            // the mapping.
            let frame =
                unsafe { std::slice::from_raw_parts(self.slot().cast::<u8>().add(at), len) };
            if vlan {
                let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    hdr.tp_vlan_tpid
                } else {
                    vlan::TPID_8021Q
                };
                let copied = vlan::copy_with_tag(buf, frame, tpid, hdr.tp_vlan_tci);
                debug_assert_eq!(copied, Some(total), "bounds checked above");
            } else {
                buf[..len].copy_from_slice(frame);
            }
        }
        self.status()
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.next = (self.next + 1) % SLOTS;
        Some(total)
    }
}

impl Drop for GroupTap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `open`; the fd closes after.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
        }
    }
}

impl AsRawFd for GroupTap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for GroupTap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn setsockopt<T>(fd: BorrowedFd<'_>, level: i32, opt: i32, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live T whose exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
