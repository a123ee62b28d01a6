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

/// Hints that the `len` bytes at `p` will be written soon: PREFETCHW for
/// each line, which asks for it in exclusive state, where the CPU has the
/// instruction (else read prefetches). Never faults.
///
/// A guest's RX buffer was last touched by the guest's core (its stack read
/// the frame that was there; a DPDK guest forwarding it rewrote its header),
/// so a read prefetch brought it in shared and the copy then paid a second
/// crossing to own it. With the vCPUs far apart that is most of the RX
/// side's time: 1.27x at 64 B far, 1.04x at 1500 B near, about even at 64 B
/// near on Intel VMs; on an AMD EPYC VM read prefetches instead ran 0.48x
/// at 64 B (docs/performance.md). Written out because `_MM_HINT_ET0` compiles
/// to PREFETCHT0 unless the build enables `prfchw`; whether the CPU has it
/// is asked once, of CPUID, as the kernel's own `prefetchw` does, and
/// looked up once per span, not per line.
#[inline(always)]
pub fn prefetch_write_span(p: *const u8, len: usize) {
    let lines = len.div_ceil(64);
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        for i in 0..lines {
            // SAFETY: PREFETCHW is a hint: it reads nothing in the
            // language's sense, writes nothing and never faults, whatever
            // the address; the CPU has the instruction (checked above).
            unsafe {
                core::arch::asm!(
                    "prefetchw [{0}]",
                    in(reg) p.wrapping_add(i * 64),
                    options(nostack, preserves_flags, readonly)
                );
            }
        }
        return;
    }
    prefetch_span(p, len, lines);
}

/// Whether the CPU has PREFETCHW (CPUID 0x8000_0001, ECX bit 8: AMD's
/// 3DNowPrefetch, Intel's PRFCHW; std's feature detection does not name it).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_prefetchw() -> bool {
    static HAS: std::sync::LazyLock<bool> = std::sync::LazyLock::new(cpu_has_prefetchw);
    *HAS
}

#[cfg(target_arch = "x86_64")]
#[cold]
fn cpu_has_prefetchw() -> bool {
    use core::arch::x86_64::__cpuid;
    const EXTENDED_FEATURES: u32 = 0x8000_0001;
    const ECX_PREFETCHW: u32 = 1 << 8;
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU, and the extended leaf is
    // read only when leaf 0x8000_0000 says it exists.
    unsafe {
        __cpuid(0x8000_0000).eax >= EXTENDED_FEATURES
            && __cpuid(EXTENDED_FEATURES).ecx & ECX_PREFETCHW != 0
    }
}

/// Prefetches the first `len` bytes at `p`, at most `max_lines` cache lines.
#[inline(always)]
pub fn prefetch_span(p: *const u8, len: usize, max_lines: usize) {
    let lines = len.div_ceil(64).min(max_lines);
    for i in 0..lines {
        prefetch_read(p.wrapping_add(i * 64));
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn prefetchw_is_found_where_the_kernel_finds_it() {
        let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let kernel_says = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .is_some_and(|l| l.split_whitespace().any(|f| f == "3dnowprefetch"));
        assert_eq!(super::has_prefetchw(), kernel_says);
        // Asked twice: the cached answer is the same.
        assert_eq!(super::has_prefetchw(), kernel_says);
        let lines = [0u8; 256];
        super::prefetch_write_span(lines.as_ptr(), lines.len());
    }
}
