//! The `VhostUserBackend` implementation: it only dispatches to [`VnicDevice`]
//! and converts errors to `io::Error` at this boundary.

use std::fs::File;
use std::io;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::device::{QueueSink, VnicDevice};
use super::engine::GuestMemory;
use super::features;
use snapnet_wire::MacAddr;

/// Largest virtqueue snapnet accepts: the split-ring maximum. QEMU offers at
/// most 1024 entries; DPDK and other frontends may use more.
const MAX_QUEUE_SIZE: usize = 32768;

impl<S: QueueSink> VhostUserBackend for VnicDevice<S> {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.num_vrings()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VnicDevice::features(self)
    }

    fn acked_features(&self, features: u64) {
        self.set_acked_features(features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        features::protocol_features()
    }

    fn reset_device(&self) {
        self.reset();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // Read from the acked features when a vring is attached.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.read_config(offset, size)
    }

    fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        self.set_memory(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread for the vNIC; it watches no kick fd (see
        // `owns_kicks`), only its exit event.
        vec![(1u64 << self.num_vrings()) - 1]
    }

    fn owns_kicks(&self) -> bool {
        // The engines sleep on the kick eventfds themselves: a kick wakes
        // the thread that does the work, not a vhost-user thread that would
        // then wake it (two wake-ups of ~20 µs each on a VM).
        true
    }

    fn vring_kick_changed(&self, index: u16, vring: &VringRwLock, started: bool) -> io::Result<()> {
        VnicDevice::vring_kick_changed(self, usize::from(index), vring, started)
            .map_err(io::Error::other)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        VnicDevice::set_mtu(self, mtu).map_err(io::Error::other)
    }

    fn owns_log(&self) -> bool {
        // The engines write guest memory through their own pointers, which
        // the crate's vm-memory bitmap never sees.
        true
    }

    fn set_log_base(&self, mmap_size: u64, mmap_offset: u64, file: File) -> io::Result<()> {
        VnicDevice::set_log_base(self, &file, mmap_size, mmap_offset).map_err(io::Error::other)
    }

    fn send_rarp(&self, mac: [u8; 6]) -> io::Result<()> {
        // Not an error for the connection if the engine is busy: the guest
        // also announces itself (GUEST_ANNOUNCE).
        if let Err(e) = self.announce(MacAddr(mac)) {
            log::warn!("{}: SEND_RARP: {e}", self.name());
        }
        Ok(())
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        VnicDevice::stop_vring(self, queue_index as usize).map_err(io::Error::other)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        _vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Kicks go to the engines and no other fd is registered: nothing
        // should arrive here. Not an error worth ending the connection for.
        log::debug!(
            "{}: unexpected vhost-user event {device_event} ({evset:?})",
            self.name()
        );
        Ok(())
    }
}
