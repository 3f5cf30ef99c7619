//! Cache prefetch hints, the engine's only `unsafe`.
//!
//! With thousands of active symbols, a trade's symbol state and bucket rings are usually not
//! in cache; [`crate::Engine::prefetch`] lets the caller, which already holds the next ticks
//! (a chunk popped from the ring), start those loads a few ticks ahead.

/// How many ticks ahead of [`crate::Engine::handle_tick`] a caller walking a buffer of
/// inputs calls [`crate::Engine::prefetch`].
///
/// Measured with `benches/benches/detectors.rs` at 10,000 symbols (`docs/performance.md`).
pub const PREFETCH_DISTANCE: usize = 4;

/// How many ticks ahead it calls [`prefetch`] on the input itself, so that reading the tick
/// for [`crate::Engine::prefetch`] does not wait on memory.
pub const PREFETCH_INPUT_DISTANCE: usize = 16;

/// Hints the CPU to load `value` into the cache, without reading it.
///
/// For a caller walking a buffer of inputs (a chunk popped from a ring, a bench's array of
/// trades): prefetching the input a few entries further ahead than it calls
/// [`crate::Engine::prefetch`] means that reading the tick whose state is to be prefetched
/// does not itself wait on memory. Never changes anything but timing.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    prefetch_bytes((value as *const T).cast(), size_of::<T>());
}

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
