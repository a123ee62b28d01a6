//! End-to-end tests of [`Frontend`] against a real vhost-user backend: a small loopback
//! device built on the `vhost-user-backend` crate (what QEMU-compatible Rust backends use),
//! which copies every TX packet of queue pair k into RX buffers of queue pair k.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::features::*;
use super::*;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];

struct Loopback {
    queue_pairs: usize,
    features: u64,
    event_idx: bool,
    mrg: bool,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl Loopback {
    fn deliver(&self, rx: &VringRwLock, pkt: &[u8], mem: &GuestMemoryMmap) -> bool {
        let mut q = rx.get_mut();
        let queue = q.get_queue_mut();
        let mut chains = Vec::new();
        let mut room = 0usize;
        while room < pkt.len() {
            let Some(c) = queue.pop_descriptor_chain(mem) else {
                // Not enough buffers: give back what we took and drop the packet.
                let back = queue.next_avail().wrapping_sub(chains.len() as u16);
                queue.set_next_avail(back);
                return false;
            };
            let descs: Vec<_> = c.clone().collect();
            let len: usize = descs.iter().map(|d| d.len() as usize).sum();
            room += len;
            chains.push((c.head_index(), descs));
            if !self.mrg && room < pkt.len() {
                let back = queue.next_avail().wrapping_sub(chains.len() as u16);
                queue.set_next_avail(back);
                return false;
            }
        }
        let n = chains.len() as u16;
        let mut off = 0;
        for (k, (head, descs)) in chains.iter().enumerate() {
            let mut written = 0u32;
            for d in descs {
                assert!(d.is_write_only());
                let m = (pkt.len() - off).min(d.len() as usize);
                let mut chunk = pkt[off..off + m].to_vec();
                if k == 0 && off == 0 && self.mrg {
                    chunk[10..12].copy_from_slice(&n.to_le_bytes());
                }
                mem.write_slice(&chunk, d.addr()).unwrap();
                off += m;
                written += m as u32;
            }
            queue.add_used(mem, *head, written).unwrap();
        }
        true
    }

    fn run_pair(&self, vrings: &[VringRwLock], pair: usize) {
        let mem = self.mem.as_ref().unwrap().memory();
        let (rx, tx) = (&vrings[2 * pair], &vrings[2 * pair + 1]);
        loop {
            if self.event_idx {
                tx.disable_notification().unwrap();
            }
            loop {
                let chain = tx.get_mut().get_queue_mut().pop_descriptor_chain(&*mem);
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let mut pkt = Vec::new();
                for d in chain {
                    assert!(!d.is_write_only());
                    let mut b = vec![0u8; d.len() as usize];
                    mem.read_slice(&mut b, d.addr()).unwrap();
                    pkt.extend_from_slice(&b);
                }
                if pkt.len() >= 12 {
                    self.deliver(rx, &pkt, &mem);
                }
                tx.add_used(head, 0).unwrap();
            }
            for v in [rx, tx] {
                if v.needs_notification().unwrap() {
                    v.signal_used_queue().unwrap();
                }
            }
            if !self.event_idx || !tx.enable_notification().unwrap() {
                break;
            }
        }
    }
}

impl VhostUserBackendMut for Loopback {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2 * self.queue_pairs
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&mut self, features: u64) {
        self.mrg = features & VIRTIO_NET_F_MRG_RXBUF != 0;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cs = Vec::new();
        cs.extend_from_slice(&MAC);
        cs.extend_from_slice(&1u16.to_le_bytes()); // status: link up
        cs.extend_from_slice(&(self.queue_pairs as u16).to_le_bytes());
        cs.extend_from_slice(&1500u16.to_le_bytes());
        let (o, s) = (offset as usize, size as usize);
        cs.get(o..o + s).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some(new_event_consumer_and_notifier(EventFlag::empty()).unwrap())
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        assert_eq!(evset, EventSet::IN);
        let pair = device_event as usize / 2;
        if pair < self.queue_pairs {
            self.run_pair(vrings, pair);
        }
        Ok(())
    }
}

struct Server {
    path: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(queue_pairs: usize, features: u64) -> Server {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "snapnet-fe-{}-{}.sock",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let backend = Arc::new(RwLock::new(Loopback {
            queue_pairs,
            features,
            event_idx: false,
            mrg: false,
            mem: None,
        }));
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("loopback".into(), backend, mem).unwrap();
        let p = path.clone();
        let thread = std::thread::spawn(move || {
            daemon.serve(&p).unwrap();
        });
        Server {
            path,
            thread: Some(thread),
        }
    }

    fn connect(&self, cfg: &FrontendConfig) -> Frontend {
        Frontend::connect(&self.path, cfg, Duration::from_secs(10)).unwrap()
    }

    fn join(mut self) {
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const ALL: u64 = VIRTIO_F_VERSION_1
    | VHOST_USER_F_PROTOCOL_FEATURES
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_MTU
    | VIRTIO_NET_F_STATUS
    | VIRTIO_NET_F_MQ
    | VIRTIO_NET_F_CTRL_VQ
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_TSO4;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// Collects packets from `qp` until `n` arrived (waiting with interrupts), or panics.
fn collect(fe: &mut Frontend, qp: u16, n: usize) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "got {} of {n}",
            got.len()
        );
        fe.wait_rx(qp, Duration::from_millis(200));
        fe.recv(qp, |h, p| got.push((*h, p.to_vec())));
    }
    got
}

#[test]
fn negotiates_and_loops_packets_back() {
    let srv = Server::start(1, ALL);
    let mut fe = srv.connect(&FrontendConfig::default());
    let f = fe.acked_features();
    assert_eq!(f & VIRTIO_NET_F_CTRL_VQ, 0, "CTRL_VQ is never negotiated");
    assert_eq!(f & VIRTIO_NET_F_MQ, 0, "MQ only with several queue pairs");
    assert_eq!(f & VIRTIO_RING_F_INDIRECT_DESC, 0);
    for b in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_CSUM,
    ] {
        assert_ne!(f & b, 0, "{b:#x}");
    }
    let pf = fe.acked_protocol_features();
    assert_ne!(pf & VhostUserProtocolFeatures::REPLY_ACK.bits(), 0);
    assert_eq!(fe.mac(), MAC);
    assert_eq!(fe.mtu(), 1500);
    assert_eq!(fe.hdr_len(), 12);
    assert_eq!(fe.rx_buf_len(), 2048);

    // Small, exactly one buffer, and 64 KiB (TX chain of 33, RX merged over 33 buffers).
    let sizes = [60usize, 2036, 5000, 65535];
    let pkts: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(n, i as u8))
        .collect();
    let refs: Vec<&[u8]> = pkts.iter().map(|p| &p[..]).collect();
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    assert_eq!(fe.send(0, &refs, &hdr), 4);
    let got = collect(&mut fe, 0, 4);
    for (i, (h, p)) in got.iter().enumerate() {
        assert_eq!(p.len(), sizes[i]);
        assert_eq!(p, &pkts[i], "packet {i}");
        assert_eq!(h.csum_start, 34);
        assert_eq!(h.num_buffers as usize, (sizes[i] + 12).div_ceil(2048));
    }
    assert!(!fe.wait_rx(0, Duration::from_millis(50)), "nothing more");
    assert_eq!(fe.stats(0).bad_used, 0);
    let bases = fe.shutdown_with_bases().unwrap();
    assert_eq!(bases.len(), 2);
    srv.join();
}

#[test]
fn blast_wraps_indices_without_errors() {
    for (event_idx, indirect) in [(true, false), (false, true)] {
        let srv = Server::start(1, ALL);
        let cfg = FrontendConfig {
            queue_size: 64,
            event_idx,
            indirect,
            ..Default::default()
        };
        let mut fe = srv.connect(&cfg);
        assert_eq!(
            fe.acked_features() & VIRTIO_RING_F_EVENT_IDX != 0,
            event_idx
        );
        let frame = pattern(64, 9);
        fe.prepare_blast(0, &frame);
        let (mut sent, mut recvd, mut bytes) = (0usize, 0usize, 0usize);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while recvd < 70_000 {
            assert!(std::time::Instant::now() < deadline, "stuck at {recvd}");
            if sent - recvd < 48 {
                sent += fe.blast(0, 16);
            }
            let (n, b) = fe.recv_count(0);
            recvd += n;
            bytes += b;
            if n == 0 {
                fe.wait_rx(0, Duration::from_millis(10));
            }
        }
        assert_eq!(bytes, recvd * 64);
        // Let everything in flight arrive, then check the content of a few more.
        while recvd < sent {
            assert!(
                std::time::Instant::now() < deadline,
                "lost {}",
                sent - recvd
            );
            fe.wait_rx(0, Duration::from_millis(100));
            recvd += fe.recv_count(0).0;
        }
        let n = fe.blast(0, 5);
        assert_eq!(n, 5);
        for (_, p) in collect(&mut fe, 0, 5) {
            assert_eq!(p, frame);
        }
        let s = fe.stats(0);
        assert_eq!(s.bad_used, 0);
        assert!(s.tx_packets >= 70_000);
        fe.shutdown().unwrap();
        srv.join();
    }
}

#[test]
fn no_mrg_no_event_idx_multiqueue() {
    let srv = Server::start(2, ALL & !VIRTIO_NET_F_MRG_RXBUF);
    let cfg = FrontendConfig {
        queue_pairs: 2,
        event_idx: false,
        offloads: false,
        ..Default::default()
    };
    let mut fe = srv.connect(&cfg);
    let f = fe.acked_features();
    assert_eq!(f & (VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX), 0);
    assert_ne!(f & VIRTIO_NET_F_MQ, 0);
    // No guest GSO: RX buffers of MTU size are enough.
    assert_eq!(fe.rx_buf_len(), 1530);
    for qp in 0..2u16 {
        let p = pattern(1514, qp as u8);
        assert_eq!(fe.send(qp, &[&p], &VirtioNetHdr::default()), 1);
        let got = collect(&mut fe, qp, 1);
        assert_eq!(got[0].1, p);
        assert_eq!(got[0].0.num_buffers, 0, "device leaves num_buffers alone");
    }
    fe.shutdown().unwrap();
    srv.join();
}

#[test]
fn raw_chains_and_scratch_memory() {
    let srv = Server::start(1, ALL);
    let mut fe = srv.connect(&FrontendConfig {
        raw_reserve: 4,
        ..Default::default()
    });
    let g = fe.scratch_gpa();
    let mut pkt = VirtioNetHdr::default().to_bytes().to_vec();
    pkt.extend_from_slice(&pattern(100, 3));
    fe.write_guest(g, &pkt[..12]);
    fe.write_guest(g + 4096, &pkt[12..]);
    let mut back = vec![0u8; 100];
    fe.read_guest(g + 4096, &mut back);
    assert_eq!(back, pkt[12..]);
    let head = fe.tx_raw_chain(
        0,
        &[
            RawDesc {
                addr: g,
                len: 12,
                flags: VRING_DESC_F_NEXT,
                next: 1,
            },
            RawDesc {
                addr: g + 4096,
                len: 100,
                flags: 0,
                next: 0,
            },
        ],
    );
    let got = collect(&mut fe, 0, 1);
    assert_eq!(got[0].1, pkt[12..]);
    let used = fe.take_raw_used(0, false);
    assert_eq!(used, vec![(head as u32, 0)]);
    assert_eq!(fe.free_descs(0, false), 256);
    assert_eq!(fe.free_descs(0, true), 4);
    let info = fe.ring_info(0, true);
    assert_eq!(info.size, 256);
    assert!(info.desc < info.avail && info.avail < info.used);
    fe.shutdown().unwrap();
    srv.join();
}

#[test]
fn frontend_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Frontend>();
}

#[test]
fn connect_times_out_without_backend() {
    let path = std::env::temp_dir().join(format!("snapnet-fe-none-{}.sock", std::process::id()));
    let t = std::time::Instant::now();
    let r = Frontend::connect(
        &path,
        &FrontendConfig::default(),
        Duration::from_millis(100),
    );
    assert!(matches!(r, Err(FrontendError::Timeout(..))));
    assert!(t.elapsed() < Duration::from_secs(2));
}
