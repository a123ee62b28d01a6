//! The virtio-net device of one vNIC as the vhost-user side sees it: features,
//! config space, memory, and handing each vring to the engine of its queue
//! pair. It reaches engines only through a [`QueueSink`], so it can be tested
//! with a mock sink and no engine at all.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use thiserror::Error;
use vhost_user_backend::VringRwLock;

use super::engine::{AttachedQueue, GuestMemory, Side, VnicEngine};
use super::features::{self, ConfigSpace, Negotiated};
use crate::engine::{MailboxError, MailboxSender};
use crate::packet::wire::MacAddr;

#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("vring {0} does not exist")]
    NoSuchVring(usize),
    #[error("vring {index}: engine did not answer: {source}")]
    Engine { index: usize, source: MailboxError },
    #[error("MTU {0} is below the minimum of 68")]
    MtuTooSmall(u16),
}

/// Where the device sends vrings: the engines (or a mock in tests).
pub trait QueueSink: Send + Sync + 'static {
    fn attach(
        &self,
        index: usize,
        vring: VringRwLock,
        mem: GuestMemory,
        features: Negotiated,
    ) -> Result<(), DeviceError>;
    fn detach(&self, index: usize) -> Result<(), DeviceError>;
    /// A guest kick arrived on `index`: wake its engine if it sleeps.
    fn wake(&self, index: usize);
    /// Enforce a new MTU on guest TX.
    fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError>;
}

/// Engine mailboxes, one per queue pair.
pub struct EngineSink {
    engines: Vec<MailboxSender<VnicEngine>>,
}

const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

impl EngineSink {
    pub fn new(engines: Vec<MailboxSender<VnicEngine>>) -> Self {
        Self { engines }
    }

    fn engine(&self, index: usize) -> Result<&MailboxSender<VnicEngine>, DeviceError> {
        self.engines
            .get(index / 2)
            .ok_or(DeviceError::NoSuchVring(index))
    }
}

impl EngineSink {
    /// Runs `f` on every queue pair's engine, through its mailbox.
    pub fn configure(
        &self,
        f: impl Fn(&mut VnicEngine) + Clone + Send + 'static,
    ) -> Result<(), DeviceError> {
        for (qp, engine) in self.engines.iter().enumerate() {
            let f = f.clone();
            engine
                .call(ENGINE_TIMEOUT, move |e: &mut VnicEngine| f(e))
                .map_err(|source| DeviceError::Engine {
                    index: qp * 2,
                    source,
                })?;
        }
        Ok(())
    }
}

impl QueueSink for EngineSink {
    fn attach(
        &self,
        index: usize,
        vring: VringRwLock,
        mem: GuestMemory,
        features: Negotiated,
    ) -> Result<(), DeviceError> {
        let side = Side::of_vring(index);
        let queue = AttachedQueue::new(vring, mem);
        self.engine(index)?
            .call(ENGINE_TIMEOUT, move |e: &mut VnicEngine| {
                e.attach(side, queue, features)
            })
            .map_err(|source| DeviceError::Engine { index, source })
    }

    fn detach(&self, index: usize) -> Result<(), DeviceError> {
        let side = Side::of_vring(index);
        self.engine(index)?
            .call(ENGINE_TIMEOUT, move |e: &mut VnicEngine| e.detach(side))
            .map_err(|source| DeviceError::Engine { index, source })
    }

    fn wake(&self, index: usize) {
        if let Ok(engine) = self.engine(index) {
            engine.ring();
        }
    }

    fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        self.configure(move |e: &mut VnicEngine| e.set_mtu(mtu))
    }
}

/// One vNIC's device state.
pub struct VnicDevice<S: QueueSink> {
    name: String,
    queue_pairs: u16,
    config: Mutex<ConfigSpace>,
    max_mtu: AtomicU16,
    acked: AtomicU64,
    mem: Mutex<Option<GuestMemory>>,
    attached: Vec<AtomicBool>,
    sink: S,
}

impl<S: QueueSink> VnicDevice<S> {
    pub fn new(name: &str, mac: MacAddr, mtu: u16, queue_pairs: u16, sink: S) -> Self {
        Self {
            name: name.to_string(),
            queue_pairs,
            config: Mutex::new(ConfigSpace {
                mac,
                link_up: true,
                max_queue_pairs: queue_pairs,
                mtu,
            }),
            max_mtu: AtomicU16::new(mtu),
            acked: AtomicU64::new(0),
            mem: Mutex::new(None),
            attached: (0..usize::from(queue_pairs) * 2)
                .map(|_| AtomicBool::new(false))
                .collect(),
            sink,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn num_vrings(&self) -> usize {
        usize::from(self.queue_pairs) * 2
    }

    pub fn features(&self) -> u64 {
        features::offered(self.queue_pairs)
    }

    pub fn set_acked_features(&self, acked: u64) {
        self.acked.store(acked, Ordering::Relaxed);
        let rings = if Negotiated::from_bits(acked).packed {
            "packed"
        } else {
            "split"
        };
        log::info!(
            "{}: features {acked:#x} acked, {rings} virtqueues",
            self.name
        );
    }

    pub fn negotiated(&self) -> Negotiated {
        Negotiated::from_bits(self.acked.load(Ordering::Relaxed))
    }

    pub fn set_memory(&self, mem: GuestMemory) {
        *lock(&self.mem) = Some(mem);
    }

    pub fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        lock(&self.config).read(offset, size)
    }

    /// How many of the vNIC's vrings an engine is serving right now.
    pub fn attached_rings(&self) -> usize {
        self.attached
            .iter()
            .filter(|a| a.load(Ordering::Relaxed))
            .count()
    }

    /// NET_SET_MTU from the frontend (QEMU's `host_mtu`). The vNIC's
    /// configured MTU stays the limit: a larger value is accepted (refusing
    /// it would make QEMU drop and retry the connection forever) but guest
    /// frames above the configured MTU are still dropped and counted.
    /// The sink the device hands its rings to.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    pub fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        if mtu < 68 {
            return Err(DeviceError::MtuTooSmall(mtu));
        }
        let max = self.max_mtu.load(Ordering::Relaxed);
        let applied = if mtu > max {
            log::warn!(
                "{}: frontend MTU {mtu} is above the vNIC's MTU {max}; larger frames will be dropped",
                self.name
            );
            max
        } else {
            mtu
        };
        self.sink.set_mtu(applied)?;
        lock(&self.config).mtu = applied;
        Ok(())
    }

    /// The control plane changes the vNIC's MTU: the new limit for guest TX
    /// and for what a frontend may set with NET_SET_MTU.
    pub fn reconfigure_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
        self.sink.set_mtu(mtu)?;
        lock(&self.config).mtu = mtu;
        self.max_mtu.store(mtu, Ordering::Relaxed);
        Ok(())
    }

    /// A vring became ready, or the guest kicked it: make sure its engine
    /// has it, then wake the engine.
    pub fn queue_event(&self, index: usize, vring: &VringRwLock) -> Result<(), DeviceError> {
        let flag = self
            .attached
            .get(index)
            .ok_or(DeviceError::NoSuchVring(index))?;
        if !flag.load(Ordering::Acquire) {
            let Some(mem) = lock(&self.mem).clone() else {
                // Kicked before SET_MEM_TABLE: nothing to serve yet.
                return Ok(());
            };
            self.sink
                .attach(index, vring.clone(), mem, self.negotiated())?;
            flag.store(true, Ordering::Release);
            log::debug!("{}: vring {index} attached", self.name);
        }
        self.sink.wake(index);
        Ok(())
    }

    /// GET_VRING_BASE: the engine must let go before the state is read.
    pub fn stop_vring(&self, index: usize) -> Result<(), DeviceError> {
        let flag = self
            .attached
            .get(index)
            .ok_or(DeviceError::NoSuchVring(index))?;
        if flag.load(Ordering::Acquire) {
            // Only a detach the engine carried out clears the flag: after a
            // failed one the engine still holds the vring and a later reset
            // must try again.
            self.sink.detach(index)?;
            flag.store(false, Ordering::Release);
            log::debug!("{}: vring {index} detached", self.name);
        }
        Ok(())
    }

    /// Device reset or frontend gone: every engine lets go of its vrings.
    pub fn reset(&self) {
        for index in 0..self.num_vrings() {
            if let Err(e) = self.stop_vring(index) {
                log::warn!("{}: reset: {e}", self.name);
            }
        }
        self.acked.store(0, Ordering::Relaxed);
    }

    /// The frontend disconnected: reset and forget its memory.
    pub fn disconnected(&self) {
        self.reset();
        *lock(&self.mem) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vhost_user_backend::VringT;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// Records what the device asked of its engines.
    #[derive(Default)]
    pub struct MockSink {
        pub calls: Mutex<Vec<String>>,
    }

    impl QueueSink for MockSink {
        fn attach(
            &self,
            index: usize,
            _: VringRwLock,
            _: GuestMemory,
            f: Negotiated,
        ) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("attach {index} mrg={}", f.mrg_rxbuf));
            Ok(())
        }
        fn detach(&self, index: usize) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("detach {index}"));
            Ok(())
        }
        fn wake(&self, index: usize) {
            lock(&self.calls).push(format!("wake {index}"));
        }
        fn set_mtu(&self, mtu: u16) -> Result<(), DeviceError> {
            lock(&self.calls).push(format!("mtu {mtu}"));
            Ok(())
        }
    }

    fn memory() -> GuestMemory {
        GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap())
    }
    use vm_memory::GuestMemoryAtomic;

    #[test]
    fn attaches_once_detaches_on_stop_and_reset() {
        let dev = VnicDevice::new(
            "t",
            MacAddr([2, 0, 0, 0, 0, 1]),
            1500,
            2,
            MockSink::default(),
        );
        let mem = memory();
        let vring = VringRwLock::new(mem.clone(), 256).unwrap();
        // A kick before the memory table is ignored.
        dev.queue_event(1, &vring).unwrap();
        assert!(lock(&dev.sink.calls).is_empty());
        dev.set_memory(mem);
        dev.set_acked_features(features::offered(2));
        dev.queue_event(1, &vring).unwrap();
        dev.queue_event(1, &vring).unwrap();
        dev.stop_vring(1).unwrap();
        dev.stop_vring(1).unwrap();
        dev.queue_event(2, &vring).unwrap();
        dev.reset();
        assert!(dev.queue_event(4, &vring).is_err());
        assert_eq!(
            *lock(&dev.sink.calls),
            [
                "attach 1 mrg=true",
                "wake 1",
                "wake 1",
                "detach 1",
                "attach 2 mrg=true",
                "wake 2",
                "detach 2"
            ]
        );
        assert_eq!(dev.negotiated(), Negotiated::default());
    }

    #[test]
    fn config_space_reports_mac_and_mtu() {
        let dev = VnicDevice::new(
            "t",
            MacAddr([2, 0, 0, 0, 0, 7]),
            9000,
            1,
            MockSink::default(),
        );
        assert_eq!(dev.read_config(0, 6), vec![2, 0, 0, 0, 0, 7]);
        assert_eq!(dev.read_config(10, 2), 9000u16.to_le_bytes().to_vec());
    }
}
