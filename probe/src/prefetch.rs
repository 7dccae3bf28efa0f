//! A software prefetch hint, for the capture replay's walk over a mapped file
//! ([`crate::replay`]): it touches each record's header and the first bytes of its packet,
//! at strides the hardware prefetcher does not follow, and would otherwise wait on memory
//! once or twice per packet.

/// Asks the CPU to bring the cache line holding `*r` into its caches. A hint: it never
/// faults and changes nothing the program can observe but time.
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86_64 baseline, and PREFETCHT0 is a hint that never faults
    // (Intel SDM vol. 2, PREFETCHh); the address is a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (r as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
