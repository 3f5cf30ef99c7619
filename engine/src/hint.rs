//! Cache prefetch hints, the engine's only `unsafe`.
//!
//! With thousands of active symbols, a trade's symbol state and bucket rings are usually not
//! in cache; [`crate::Engine::prefetch`] lets the caller, which already holds the next ticks
//! (a chunk popped from the ring), start those loads a few ticks ahead.

/// Hints the CPU to load the cache lines of `len` bytes at `ptr` into all cache levels.
#[inline(always)]
pub(crate) fn prefetch_bytes(ptr: *const u8, len: usize) {
    let mut offset = 0;
    while offset < len {
        let line = ptr.wrapping_add(offset);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint with no memory-safety precondition: it never faults,
        // even on an invalid address, and neither reads into registers nor writes. SSE, which
        // the intrinsic is tagged with, is part of the x86_64 baseline.
        #[allow(unsafe_code, reason = "prefetch hint; see the SAFETY comment")]
        unsafe {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(line.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = line;
        offset += 64;
    }
}
