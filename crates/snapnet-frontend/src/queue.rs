//! The virtio-net TX and RX queues of one queue pair: buffers, packet copy, harvesting.
//!
//! Buffer ownership is tied to descriptor indices: descriptor `d` of a ring always points
//! at buffer `d` of that ring (`base + d * stride`) whenever the data path posts it. Raw test
//! chains may overwrite a descriptor while they hold it, so the data path rewrites the
//! 16-byte descriptor each time it posts one (cheap, and keeps the logic stateless).
//!
//! TX: buffers of `tx_buf_len` bytes (default 2 KiB). A packet whose header + data fits in
//! one buffer uses one descriptor (or, with `indirect`, one ring descriptor pointing to a
//! 2-entry indirect table `[header, data]`). Longer packets (up to 64 KiB and beyond) are
//! spread over a direct chain of several descriptors/buffers, also in indirect mode.
//!
//! RX: one device-writable descriptor per buffer of `rx_buf_len` bytes. With MRG_RXBUF a
//! packet may span `num_buffers` used entries; they are assembled in a scratch buffer sized
//! once (`queue_size * rx_buf_len`, the most a packet can occupy).

use std::ptr;
use std::time::{Duration, Instant};

use super::ring::{DriverRing, HeadKind};
use super::split_ring::{SplitRing, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use super::{RawDesc, VirtioNetHdr};

/// Per-queue-pair counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Packets made available on TX by `send`/`blast`.
    pub tx_packets: u64,
    /// TX kicks (eventfd writes).
    pub tx_kicks: u64,
    /// Packets harvested on RX (`recv`, `recv_count`).
    pub rx_packets: u64,
    /// Payload bytes (without virtio header) harvested on RX.
    pub rx_bytes: u64,
    /// RX kicks (after reposting buffers).
    pub rx_kicks: u64,
    /// Normal RX packets thrown away by `take_raw_used(qp, true)`.
    pub rx_discarded: u64,
    /// Malformed used entries from the device on either ring: unknown id, length larger than
    /// the buffer or smaller than the header, bad `num_buffers`, used idx jumping too far.
    pub bad_used: u64,
}

/// Driver TX queue over a split or packed ring.
#[derive(Debug)]
pub struct TxQueue<R = SplitRing> {
    pub(crate) ring: R,
    buf_gpa: u64,
    buf_host: *mut u8,
    buf_len: u32,
    /// Indirect tables (2 descriptors = 32 bytes per ring descriptor), when enabled.
    ind: Option<(u64, *mut u8)>,
    hdr_len: usize,
    /// Header + frame used by `blast`; empty until `prepare_blast`.
    blast: Vec<u8>,
    /// Buffer `d` (and its indirect table) no longer holds the blast frame.
    dirty: Vec<bool>,
    packets: u64,
}

// SAFETY: the raw pointers point into the guest memory kept alive by `ring.mem()`; nothing is
// tied to a thread.
unsafe impl<R: Send> Send for TxQueue<R> {}

impl<R: DriverRing> TxQueue<R> {
    /// Creates a TX queue whose buffers (`size * buf_len` bytes at `buf_gpa`) and optional
    /// indirect tables (`size * 32` bytes at `ind_gpa`) lie in the ring's memory.
    pub fn new(
        ring: R,
        buf_gpa: u64,
        buf_len: u32,
        ind_gpa: Option<u64>,
        hdr_len: usize,
    ) -> Option<TxQueue<R>> {
        let n = ring.size() as usize;
        if (buf_len as usize) < hdr_len || buf_len < 64 {
            return None;
        }
        let buf_host = ring.mem().host_ptr(buf_gpa, n * buf_len as usize)?;
        let ind = match ind_gpa {
            Some(g) if g % 16 == 0 => Some((g, ring.mem().host_ptr(g, n * 32)?)),
            Some(_) => return None,
            None => None,
        };
        Some(TxQueue {
            ring,
            buf_gpa,
            buf_host,
            buf_len,
            ind,
            hdr_len,
            blast: Vec::new(),
            dirty: vec![true; n],
            packets: 0,
        })
    }

    /// Largest header + packet that fits a single descriptor.
    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// Packets published so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    #[inline]
    fn buf(&self, d: u16) -> (u64, *mut u8) {
        let off = d as usize * self.buf_len as usize;
        // SAFETY: `d < size` and the buffer area holds `size * buf_len` bytes (checked in new).
        (self.buf_gpa + off as u64, unsafe { self.buf_host.add(off) })
    }

    /// Writes the 2-entry indirect table of descriptor `d`: header, then data.
    #[inline]
    fn write_indirect(&mut self, d: u16, data_len: u32) {
        let Some((ind_gpa, ind_host)) = self.ind else {
            return;
        };
        let (gpa, _) = self.buf(d);
        let hl = self.hdr_len as u64;
        let [w0, w1] = R::indirect_entry(gpa, hl as u32, VRING_DESC_F_NEXT, 1);
        let [w2, w3] = R::indirect_entry(gpa + hl, data_len, 0, 0);
        let w = [w0.to_le(), w1.to_le(), w2.to_le(), w3.to_le()];
        // SAFETY: table `d` (32 bytes, 16-aligned) is inside the indirect area checked in new;
        // the ring descriptor `d` is driver-owned, so the device is not reading its table.
        unsafe {
            let t = ind_host.add(32 * d as usize).cast::<u64>();
            for (i, v) in w.iter().enumerate() {
                ptr::write_volatile(t.add(i), *v);
            }
        }
        self.ring
            .write_desc(d, ind_gpa + 32 * d as u64, 32, VRING_DESC_F_INDIRECT, 0);
    }

    /// Returns completed TX chains to the free list (raw chains are recorded). Returns the
    /// number of used entries consumed.
    #[inline]
    pub fn reclaim(&mut self) -> usize {
        let n = self.ring.used_pending();
        let start = self.ring.last_used();
        for k in 0..n {
            let (id, len) = self.ring.used_elem(start.wrapping_add(k));
            if self.ring.release(id) == Some(true) {
                self.ring.push_raw_used(id, len);
            }
        }
        self.ring.advance_used(n);
        n as usize
    }

    /// Copies each packet behind `hdr` into TX buffers and publishes them (one avail idx
    /// update, at most one kick). Returns how many were queued.
    pub fn send(&mut self, pkts: &[&[u8]], hdr: &VirtioNetHdr) -> usize {
        self.reclaim();
        let hdr_bytes = hdr.to_bytes();
        let hdr_bytes = &hdr_bytes[..self.hdr_len];
        let bl = self.buf_len as usize;
        let mut queued = 0;
        for pkt in pkts {
            let total = self.hdr_len + pkt.len();
            if self.ind.is_some() && total <= bl {
                let Some(d) = self.ring.alloc_chain(1) else {
                    break;
                };
                let (_, host) = self.buf(d);
                // SAFETY: buffer `d` is driver-owned (just allocated) and `total <= buf_len`.
                unsafe {
                    ptr::copy_nonoverlapping(hdr_bytes.as_ptr(), host, self.hdr_len);
                    ptr::copy_nonoverlapping(pkt.as_ptr(), host.add(self.hdr_len), pkt.len());
                }
                self.write_indirect(d, pkt.len() as u32);
                self.dirty[d as usize] = true;
                self.ring.push_avail(d);
            } else {
                let n = total.div_ceil(bl).max(1);
                assert!(
                    n <= self.ring.size() as usize,
                    "packet of {} bytes cannot fit a TX ring of {} x {} byte buffers",
                    pkt.len(),
                    self.ring.size(),
                    bl
                );
                let Some(head) = self.ring.alloc_chain(n as u16) else {
                    break;
                };
                let mut d = head;
                let mut src = 0usize; // offset into header ++ packet
                for k in 0..n {
                    let (gpa, host) = self.buf(d);
                    let chunk = (total - src).min(bl);
                    let mut off = 0;
                    if src < self.hdr_len {
                        let h = self.hdr_len - src;
                        // SAFETY: buffer `d` is driver-owned; `h <= hdr_len <= buf_len`.
                        unsafe {
                            ptr::copy_nonoverlapping(hdr_bytes[src..].as_ptr(), host, h);
                        }
                        off = h;
                    }
                    let p = src + off - self.hdr_len;
                    let m = chunk - off;
                    // SAFETY: buffer `d` is driver-owned; `off + m = chunk <= buf_len`, and
                    // `p + m <= pkt.len()` because `src + chunk <= total`.
                    unsafe {
                        ptr::copy_nonoverlapping(pkt[p..].as_ptr(), host.add(off), m);
                    }
                    src += chunk;
                    let last = k + 1 == n;
                    let next = self.ring.next_of(d);
                    let (flags, nx) = if last {
                        (0, 0)
                    } else {
                        (VRING_DESC_F_NEXT, next)
                    };
                    self.ring.write_desc(d, gpa, chunk as u32, flags, nx);
                    self.dirty[d as usize] = true;
                    d = next;
                }
                self.ring.push_avail(head);
            }
            queued += 1;
        }
        if queued > 0 {
            self.ring.publish_and_kick();
            self.packets += queued as u64;
        }
        queued
    }

    /// Fills every TX buffer with a zero header + `frame` for [`TxQueue::blast`]. Buffers the
    /// device holds right now are refilled when they come back.
    pub fn prepare_blast(&mut self, frame: &[u8]) {
        self.prepare_blast_with_hdr(frame, &VirtioNetHdr::default());
    }

    /// Like [`Self::prepare_blast`] with a given virtio-net header (for
    /// offload frames, e.g. TSO super-frames).
    pub fn prepare_blast_with_hdr(&mut self, frame: &[u8], hdr: &VirtioNetHdr) {
        let total = self.hdr_len + frame.len();
        assert!(
            total <= self.buf_len as usize,
            "blast frame of {} bytes does not fit a {} byte TX buffer",
            frame.len(),
            self.buf_len
        );
        self.reclaim();
        self.blast.clear();
        self.blast
            .extend_from_slice(&hdr.to_bytes()[..self.hdr_len]);
        self.blast.extend_from_slice(frame);
        self.dirty.fill(true);
        let free: Vec<u16> = self.ring.free_list().to_vec();
        for d in free {
            self.fill_blast(d);
        }
    }

    #[inline]
    fn fill_blast(&mut self, d: u16) {
        let (_, host) = self.buf(d);
        // SAFETY: descriptor `d` is free (driver-owned) and the frame fits (checked in
        // prepare_blast).
        unsafe { ptr::copy_nonoverlapping(self.blast.as_ptr(), host, self.blast.len()) };
        if self.ind.is_some() {
            self.write_indirect(d, (self.blast.len() - self.hdr_len) as u32);
        }
        self.dirty[d as usize] = false;
    }

    /// Publishes up to `n` pre-filled blast frames; returns how many.
    #[inline]
    pub fn blast(&mut self, n: usize) -> usize {
        assert!(!self.blast.is_empty(), "call prepare_blast before blast");
        self.reclaim();
        let len = self.blast.len() as u32;
        let mut queued = 0;
        while queued < n {
            let Some(d) = self.ring.alloc_chain(1) else {
                break;
            };
            if self.dirty[d as usize] {
                self.fill_blast(d);
            }
            match self.ind {
                Some((ind_gpa, _)) => {
                    self.ring
                        .write_desc(d, ind_gpa + 32 * d as u64, 32, VRING_DESC_F_INDIRECT, 0)
                }
                None => {
                    let (gpa, _) = self.buf(d);
                    self.ring.write_desc(d, gpa, len, 0, 0);
                }
            }
            self.ring.push_avail(d);
            queued += 1;
        }
        if queued > 0 {
            self.ring.publish_and_kick();
            self.packets += queued as u64;
        }
        queued
    }

    /// Publishes a raw chain (see [`DriverRing::post_raw_chain`]) and kicks if needed.
    pub fn raw_chain(&mut self, descs: &[RawDesc]) -> Option<u16> {
        self.reclaim();
        let head = self.ring.post_raw_chain(descs)?;
        self.ring.publish_and_kick();
        Some(head)
    }
}

/// Driver RX queue over a split or packed ring.
#[derive(Debug)]
pub struct RxQueue<R = SplitRing> {
    pub(crate) ring: R,
    buf_gpa: u64,
    buf_host: *mut u8,
    buf_len: u32,
    stride: usize,
    hdr_len: usize,
    mrg: bool,
    /// Descriptors kept free for raw chains.
    reserve: u16,
    scratch: Vec<u8>,
    packets: u64,
    bytes: u64,
    discarded: u64,
}

// SAFETY: as for TxQueue: pointers into memory kept alive by the ring's Arc.
unsafe impl<R: Send> Send for RxQueue<R> {}

impl<R: DriverRing> RxQueue<R> {
    /// Creates an RX queue with `size` buffers of `buf_len` bytes every `stride` bytes from
    /// `buf_gpa`. Buffers are posted by [`RxQueue::fill`].
    pub fn new(
        ring: R,
        buf_gpa: u64,
        buf_len: u32,
        stride: usize,
        hdr_len: usize,
        mrg: bool,
        reserve: u16,
    ) -> Option<RxQueue<R>> {
        let n = ring.size() as usize;
        if (buf_len as usize) < hdr_len || stride < buf_len as usize {
            return None;
        }
        let buf_host = ring
            .mem()
            .host_ptr(buf_gpa, (n - 1) * stride + buf_len as usize)?;
        let scratch = if mrg {
            vec![0u8; n * buf_len as usize]
        } else {
            Vec::new()
        };
        Some(RxQueue {
            reserve: reserve.min(ring.size()),
            ring,
            buf_gpa,
            buf_host,
            buf_len,
            stride,
            hdr_len,
            mrg,
            scratch,
            packets: 0,
            bytes: 0,
            discarded: 0,
        })
    }

    /// Size of each posted buffer.
    pub fn buf_len(&self) -> u32 {
        self.buf_len
    }

    /// Totals (packets, payload bytes, discarded).
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.packets, self.bytes, self.discarded)
    }

    #[inline]
    fn buf_host(&self, d: u32) -> *mut u8 {
        // SAFETY: callers pass a validated id `d < size`; the area was bounds-checked in new.
        unsafe { self.buf_host.add(d as usize * self.stride) }
    }

    /// Posts free descriptors (beyond the raw reserve) as receive buffers, unpublished.
    #[inline]
    fn refill(&mut self) -> usize {
        let mut n = 0;
        while self.ring.free_count() > self.reserve as usize {
            let Some(d) = self.ring.alloc_chain(1) else {
                break;
            };
            let gpa = self.buf_gpa + d as u64 * self.stride as u64;
            self.ring
                .write_desc(d, gpa, self.buf_len, VRING_DESC_F_WRITE, 0);
            self.ring.push_avail(d);
            n += 1;
        }
        n
    }

    /// Posts all buffers and publishes them without kicking (used during setup).
    pub fn fill(&mut self) -> usize {
        let n = self.refill();
        self.ring.publish();
        n
    }

    /// Harvests complete packets. With `DELIVER`, calls `f(hdr, payload)` for each; otherwise
    /// only counts (no payload access; with MRG_RXBUF the header is read for num_buffers).
    /// Reposts the buffers, publishes once and kicks if the device wants it.
    #[inline]
    pub fn harvest<const DELIVER: bool, F: FnMut(&VirtioNetHdr, &[u8])>(
        &mut self,
        mut f: F,
    ) -> (usize, usize) {
        let pending = self.ring.used_pending();
        if pending == 0 {
            return (0, 0);
        }
        let start = self.ring.last_used();
        let hl = self.hdr_len;
        let bl = self.buf_len as usize;
        let (mut pkts, mut bytes) = (0usize, 0usize);
        let mut i: u16 = 0;
        while i < pending {
            let (id, len) = self.ring.used_elem(start.wrapping_add(i));
            match self.ring.head_kind(id) {
                HeadKind::Normal => {}
                HeadKind::Raw => {
                    self.ring.release(id);
                    self.ring.push_raw_used(id, len);
                    i += 1;
                    continue;
                }
                HeadKind::Invalid => {
                    self.ring.release(id); // counts bad_used
                    i += 1;
                    continue;
                }
            }
            let len = len as usize;
            if len < hl || len > bl {
                self.ring.count_bad_used();
                self.ring.release(id);
                i += 1;
                continue;
            }
            let host = self.buf_host(id);
            let nb = if self.mrg {
                // SAFETY: `len >= hdr_len = 12` bytes were written by the device, which has
                // returned the buffer; bytes 10..12 are num_buffers (little-endian).
                u16::from_le(unsafe { ptr::read_unaligned(host.add(10).cast::<u16>()) })
            } else {
                1
            };
            if nb <= 1 {
                if nb == 0 {
                    self.ring.count_bad_used();
                }
                if DELIVER {
                    // SAFETY: the device returned buffer `id` and wrote `len <= buf_len` bytes;
                    // the driver owns it until it is reposted after `f` returns.
                    let b = unsafe { std::slice::from_raw_parts(host, len) };
                    let hdr = VirtioNetHdr::from_bytes(&b[..hl]);
                    f(&hdr, &b[hl..]);
                }
                pkts += 1;
                bytes += len - hl;
                self.ring.release(id);
                i += 1;
                continue;
            }
            if nb > self.ring.size() {
                self.ring.count_bad_used();
                self.ring.release(id);
                i += 1;
                continue;
            }
            if nb > pending - i {
                // The rest of the packet is not published yet; take it next time.
                break;
            }
            let mut total = len - hl;
            let mut ok = true;
            for k in 1..nb {
                let (id2, len2) = self.ring.used_elem(start.wrapping_add(i + k));
                if self.ring.head_kind(id2) != HeadKind::Normal || len2 as usize > bl {
                    ok = false;
                }
                total += len2 as usize;
            }
            if !ok {
                self.ring.count_bad_used();
                for k in 0..nb {
                    let (id2, len2) = self.ring.used_elem(start.wrapping_add(i + k));
                    if self.ring.release(id2) == Some(true) {
                        self.ring.push_raw_used(id2, len2);
                    }
                }
                i += nb;
                continue;
            }
            if DELIVER {
                // SAFETY: header bytes validated above (len >= hdr_len), buffer device-returned.
                let hdr = VirtioNetHdr::from_bytes(unsafe { std::slice::from_raw_parts(host, hl) });
                let mut off = 0;
                for k in 0..nb {
                    let (id2, len2) = self.ring.used_elem(start.wrapping_add(i + k));
                    let (src, n) = if k == 0 {
                        // SAFETY: `hl <= len`, inside buffer `id`.
                        (unsafe { host.add(hl) }, len - hl)
                    } else {
                        (self.buf_host(id2), len2 as usize)
                    };
                    // SAFETY: each source lies in a device-returned buffer (`n <= buf_len`);
                    // `scratch` holds `size * buf_len >= total` bytes because `nb <= size`.
                    unsafe { ptr::copy_nonoverlapping(src, self.scratch.as_mut_ptr().add(off), n) };
                    off += n;
                }
                f(&hdr, &self.scratch[..total]);
            }
            for k in 0..nb {
                let (id2, _) = self.ring.used_elem(start.wrapping_add(i + k));
                self.ring.release(id2);
            }
            pkts += 1;
            bytes += total;
            i += nb;
        }
        self.ring.advance_used(i);
        if self.refill() > 0 {
            self.ring.publish_and_kick();
        }
        self.packets += pkts as u64;
        self.bytes += bytes as u64;
        (pkts, bytes)
    }

    /// Harvests and drops normal packets, then returns the raw completions.
    pub fn take_raw_used(&mut self) -> Vec<(u32, u32)> {
        let (n, _) = self.harvest::<false, _>(|_, _| {});
        self.discarded += n as u64;
        self.ring.take_raw_used()
    }

    /// Publishes a raw chain and kicks if needed.
    pub fn raw_chain(&mut self, descs: &[RawDesc]) -> Option<u16> {
        let head = self.ring.post_raw_chain(descs)?;
        self.ring.publish_and_kick();
        Some(head)
    }

    /// Waits until used entries are pending or `timeout` passes, with interrupts enabled for
    /// the wait only (arm, re-check, poll the call eventfd).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        if self.ring.used_pending() > 0 {
            return true;
        }
        let deadline = Instant::now() + timeout;
        self.ring.drain_call();
        self.ring.enable_interrupts();
        let ready = loop {
            if self.ring.used_pending() > 0 {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(self.ring.call_fd()),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call, count is 1.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            self.ring.drain_call();
        };
        self.ring.disable_interrupts();
        ready
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
