//! Cache prefetch and huge-page hints: with `ring/`, the engine's only `unsafe`.
//!
//! With thousands of active symbols, a trade's symbol state and bucket rings are usually not
//! in cache; [`crate::Engine::prefetch`] lets the caller, which already holds the next ticks
//! (a chunk popped from the ring), start those loads a few ticks ahead.
//!
//! They are not in the TLB either: the bucket rings are tens of megabytes of 4 KiB pages, so
//! nearly every bucket a trade reads needs a page walk, and a prefetch that misses the TLB
//! may be dropped. `huge_pages` asks the kernel to back the engine's large arrays with
//! 2 MiB pages (transparent huge pages, in `madvise` mode on most distributions).

/// A transparent huge page on x86_64 Linux.
const HUGE_PAGE: usize = 2 << 20;

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

/// Asks the kernel to back the not-yet-touched memory of `vec`'s whole capacity with
/// transparent huge pages, and returns `vec`. A hint: it changes no contents, and where the
/// kernel says no (no THP, another OS) nothing changes but speed. Call it before the memory
/// is first written, so that the first faults already get huge pages.
pub(crate) fn huge_pages<T>(mut vec: Vec<T>) -> Vec<T> {
    #[cfg(target_os = "linux")]
    {
        let start = vec.as_mut_ptr() as usize;
        let end = start + vec.capacity() * size_of::<T>();
        // Only whole 2 MiB pages inside the allocation can be huge; advising exactly those
        // also keeps the address page-aligned, as madvise requires.
        let first = start.next_multiple_of(HUGE_PAGE);
        let last = end / HUGE_PAGE * HUGE_PAGE;
        if last > first {
            // SAFETY: the range lies inside `vec`'s allocation, which we own and which stays
            // alive for the call; MADV_HUGEPAGE only changes how the kernel backs the pages
            // (their contents are unchanged), so no memory is invalidated.
            #[allow(unsafe_code, reason = "madvise hint; see the SAFETY comment")]
            let _ = unsafe { libc::madvise(first as *mut _, last - first, libc::MADV_HUGEPAGE) };
        }
    }
    vec
}

/// `len` zeroed values on [`huge_pages`], faulted in now (see [`prefault`]).
pub(crate) fn huge_zeroed_vec<T: bytemuck::Zeroable>(len: usize) -> Vec<T> {
    let mut vec = huge_pages(bytemuck::zeroed_vec(len));
    prefault(&mut vec);
    vec
}

/// Zeroes one element per 2 MiB of `memory` (already zero), so that where the kernel backs it
/// with huge pages it does so now, at construction, and not at a first touch on the trade
/// path: a huge-page fault zeroes 2 MiB and may compact memory first, which stalled the
/// engine for 9 ms and the whole process (its memory map locked) for up to 55 ms in the first
/// seconds of a run. Without huge pages it faults in one 4 KiB page per 2 MiB, no more.
fn prefault<T: bytemuck::Zeroable>(memory: &mut [T]) {
    let step = (HUGE_PAGE / size_of::<T>().max(1)).max(1);
    for element in memory.iter_mut().step_by(step) {
        *element = T::zeroed();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint changes nothing a program can see: length, capacity, address and contents
    /// stay, and the memory stays writable, for allocations with and without a whole huge
    /// page inside them.
    #[test]
    fn huge_pages_keeps_the_vector_as_it_was() {
        for len in [0, 1, 1_000, 6 << 20] {
            let mut before: Vec<u64> = bytemuck::zeroed_vec(len);
            before.iter_mut().step_by(512).for_each(|x| *x = 7);
            let (address, capacity) = (before.as_ptr(), before.capacity());
            let mut after = huge_pages(before);
            assert_eq!((after.as_ptr(), after.capacity(), after.len()), (address, capacity, len));
            assert!(after.iter().enumerate().all(|(i, &x)| x == if i % 512 == 0 { 7 } else { 0 }));
            after.iter_mut().for_each(|x| *x += 1);
            assert!(after.iter().enumerate().all(|(i, &x)| x == if i % 512 == 0 { 8 } else { 1 }));
        }
        let mut spare = huge_pages(Vec::<u8>::with_capacity(5 << 20));
        spare.resize(5 << 20, 3);
        assert!(spare.iter().all(|&x| x == 3));
    }
}
