//! Cache prefetch hints. Guest buffers were last written by another core, so
//! the data path asks for a batch's lines before it copies the first packet,
//! overlapping the misses instead of paying them one after another.

/// Hints that the cache line at `p` will be read soon. Never faults, even for
/// an address that is not mapped.
#[inline(always)]
pub fn prefetch_read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint: it does not dereference in the language
    // sense and never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints that the cache line at `p` will be written soon: PREFETCHW, which
/// asks for the line in exclusive state. Never faults.
///
/// A guest's RX buffer was last touched by the guest's core (its stack read
/// the frame that was there; a DPDK guest forwarding it rewrote its header),
/// so a read prefetch brought it in shared and the copy then paid a second
/// crossing to own it. With the vCPUs far apart that is most of the RX
/// side's time: 1.27x at 64 B far, 1.04x at 1500 B near, about even at 64 B
/// near (docs/performance.md). Written out because `_MM_HINT_ET0` compiles
/// to PREFETCHT0 unless the build enables `prfchw`; every x86-64 CPU that
/// lacks PREFETCHW runs it as a NOP.
#[inline(always)]
pub fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint: it does not dereference in the language
    // sense and never faults, whatever the address.
    unsafe {
        core::arch::asm!(
            "prefetchw [{0}]",
            in(reg) p,
            options(nostack, preserves_flags, readonly)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches the first `len` bytes at `p`, at most `max_lines` cache lines.
#[inline(always)]
pub fn prefetch_span(p: *const u8, len: usize, max_lines: usize) {
    let lines = len.div_ceil(64).min(max_lines);
    for i in 0..lines {
        prefetch_read(p.wrapping_add(i * 64));
    }
}
