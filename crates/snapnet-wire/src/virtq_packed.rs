//! Layout of a virtio 1.1+ packed virtqueue (virtio spec 2.8), shared by the
//! device side (`vnic::packed_ring`) and the driver side (`frontend::packed_ring`).
//!
//! Descriptor ring: `size` x 16 bytes `{addr: u64, len: u32, id: u16, flags: u16}`,
//! little-endian. Event suppression areas (one written by the driver, one by the
//! device): `{off_wrap: u16, flags: u16}`. Indirect tables hold descriptors of the
//! same layout, used in order (only the WRITE flag counts there).

/// Bytes per descriptor (ring entry or indirect table entry).
pub const DESC_SIZE: usize = 16;
/// Offset of `addr` (u64) in a descriptor.
pub const DESC_ADDR: usize = 0;
/// Offset of `len` (u32) in a descriptor.
pub const DESC_LEN: usize = 8;
/// Offset of the buffer `id` (u16) in a descriptor.
pub const DESC_ID: usize = 12;
/// Offset of `flags` (u16) in a descriptor.
pub const DESC_FLAGS: usize = 14;

/// The buffer continues in the next ring slot.
pub const DESC_F_NEXT: u16 = 1;
/// The buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// The descriptor points to an indirect table.
pub const DESC_F_INDIRECT: u16 = 4;
/// Set by the driver equal to its wrap counter when making a descriptor available.
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// Set by the device equal to its wrap counter when marking a descriptor used.
pub const DESC_F_USED: u16 = 1 << 15;

/// Bytes of one event suppression area.
pub const EVENT_SIZE: usize = 4;
/// Offset of `off_wrap` (u16: descriptor offset, wrap counter in bit 15).
pub const EVENT_OFF_WRAP: usize = 0;
/// Offset of `flags` (u16: one of the `EVENT_F_*` values).
pub const EVENT_FLAGS: usize = 2;
/// Notifications wanted.
pub const EVENT_F_ENABLE: u16 = 0;
/// No notifications.
pub const EVENT_F_DISABLE: u16 = 1;
/// A notification when the ring reaches `off_wrap` (needs VIRTIO_RING_F_EVENT_IDX).
pub const EVENT_F_DESC: u16 = 2;
/// Bit of `off_wrap` (and of a vhost-user vring base) that holds a wrap counter.
pub const WRAP_BIT: u16 = 1 << 15;

/// The flags' AVAIL/USED bits a driver with wrap counter `wrap` sets to make a
/// descriptor available.
#[inline]
pub const fn avail_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL
    } else {
        DESC_F_USED
    }
}

/// The AVAIL/USED bits a device with used wrap counter `wrap` sets to mark a
/// descriptor used (both equal to the counter).
#[inline]
pub const fn used_bits(wrap: bool) -> u16 {
    if wrap {
        DESC_F_AVAIL | DESC_F_USED
    } else {
        0
    }
}

/// Whether `flags` mark a descriptor available to a device whose avail wrap
/// counter is `wrap`.
#[inline]
pub const fn is_avail(flags: u16, wrap: bool) -> bool {
    flags & (DESC_F_AVAIL | DESC_F_USED) == avail_bits(wrap)
}

/// Whether `flags` mark a descriptor used for a driver whose used wrap counter
/// is `wrap`.
#[inline]
pub const fn is_used(flags: u16, wrap: bool) -> bool {
    flags & (DESC_F_AVAIL | DESC_F_USED) == used_bits(wrap)
}

/// `off_wrap` value naming ring position `pos` in lap `wrap`.
#[inline]
pub const fn off_wrap(pos: u16, wrap: bool) -> u16 {
    pos | if wrap { WRAP_BIT } else { 0 }
}

/// Whether moving a ring position from `old` to `new` (`new` in lap `wrap`,
/// at most one ring behind) crossed the event `off_wrap` of a ring of `size`
/// entries: the packed form of `vring_need_event` (virtio spec 2.8.10,
/// as Linux and DPDK compute it).
#[inline]
pub fn need_event(off_wrap: u16, old: u16, new: u16, wrap: bool, size: u16) -> bool {
    let mut event = off_wrap & !WRAP_BIT;
    if (off_wrap & WRAP_BIT != 0) != wrap {
        event = event.wrapping_sub(size);
    }
    let old = if new <= old {
        old.wrapping_sub(size)
    } else {
        old
    };
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avail_and_used_bits() {
        for wrap in [false, true] {
            assert!(is_avail(avail_bits(wrap), wrap));
            assert!(!is_avail(avail_bits(!wrap), wrap));
            assert!(!is_avail(used_bits(wrap), wrap));
            assert!(is_used(used_bits(wrap), wrap));
            assert!(!is_used(avail_bits(wrap), wrap));
            assert!(!is_used(used_bits(!wrap), wrap));
        }
        // Other flag bits do not matter.
        assert!(is_avail(
            avail_bits(true) | DESC_F_NEXT | DESC_F_WRITE,
            true
        ));
    }

    #[test]
    fn need_event_same_and_other_lap() {
        let size = 8;
        // Moved 2 -> 5 in lap 1: events at 2, 3, 4 fire; 5 and 1 do not.
        for (ev, want) in [(2, true), (3, true), (4, true), (5, false), (1, false)] {
            assert_eq!(
                need_event(off_wrap(ev, true), 2, 5, true, size),
                want,
                "{ev}"
            );
        }
        // Moved 6 -> 1 across the wrap (new lap 0): events 6, 7 of lap 1 and 0 of lap 0.
        assert!(need_event(off_wrap(6, true), 6, 1, false, size));
        assert!(need_event(off_wrap(7, true), 6, 1, false, size));
        assert!(need_event(off_wrap(0, false), 6, 1, false, size));
        assert!(!need_event(off_wrap(1, false), 6, 1, false, size));
        assert!(!need_event(off_wrap(5, true), 6, 1, false, size));
    }
}
