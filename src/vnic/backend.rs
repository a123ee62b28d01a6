//! The `VhostUserBackend` implementation: it only dispatches to [`VnicDevice`]
//! and converts errors to `io::Error` at this boundary.

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
        // One thread watches every kick fd of this vNIC; kicks only wake
        // engines, the data path runs on the engines' threads.
        vec![(1u64 << self.num_vrings()) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn set_mtu(&self, mtu: u16) -> io::Result<()> {
        VnicDevice::set_mtu(self, mtu).map_err(io::Error::other)
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        VnicDevice::stop_vring(self, queue_index as usize).map_err(io::Error::other)
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "unexpected epoll event {evset:?}"
            )));
        }
        let index = usize::from(device_event);
        let vring = vrings
            .get(index)
            .ok_or_else(|| io::Error::other(format!("event for unknown vring {index}")))?;
        self.queue_event(index, vring).map_err(io::Error::other)
    }
}
