//! The swap buffer: two pre-allocated sets, one filled by the producer while the consumer
//! reads the other; each [`Consumer::pull`] trades them (swap-on-pull).
//!
//! This is what the old system lacked: its collector and emitter shared one buffer under two
//! locks and deadlocked, or copied it out and lost what arrived between copy and clear. Here
//! there is no lock and no copy:
//! - The producer brackets every batch of writes with two read-modify-writes of one atomic
//!   word ([`Producer::write`]); it never waits and never retries, whatever the consumer does.
//! - The consumer flips the word's `ACTIVE` bit, so the producer's next batch goes to the
//!   other set, and takes the old one once the batch in flight (if any) has ended. It never
//!   blocks either: if a batch is in flight, `pull` returns `None` and the next call finishes
//!   the hand-over.
//! - An event written by the producer is in exactly one set, and a set is read only after the
//!   producer has left it and before it is handed back, so nothing is lost between pull and
//!   clear: the set is cleared by the consumer before the flip that returns it.
//!
//! # Overflow
//! The swap buffer itself never overflows: capacity is the business of the set type `T`
//! (for the engine, [`crate::mfbuf`] lanes with a fixed capacity and a drop counter).

use crossbeam_utils::CachePadded;

use crate::sync::{Arc, AtomicU64, Ordering, UnsafeCell};

/// Bit 0 of the state word: the index of the set the producer writes into.
const ACTIVE: u64 = 1;
/// Bit 1: the producer is inside a batch. Adding `BUSY` to a word that has it set clears it
/// and carries into bits 2.., which count finished batches.
const BUSY: u64 = 2;

/// What the swap buffer asks of a set: the consumer empties it before handing it back.
pub trait Set {
    /// Empties the set without freeing its storage.
    fn clear(&mut self);
}

impl<T> Set for Vec<T> {
    fn clear(&mut self) {
        Vec::clear(self);
    }
}

#[derive(Debug)]
struct Shared<T> {
    sets: [UnsafeCell<T>; 2],
    /// `ACTIVE | BUSY | finished batches << 2`; the only word both sides write.
    state: CachePadded<AtomicU64>,
}

// SAFETY: a set is only ever accessed by one side at a time (the protocol in the module
// docs, checked by `tests/loom_swap.rs`), and values of `T` move between threads, so `T: Send`
// is what sharing `Shared<T>` needs.
#[allow(unsafe_code, reason = "the swap buffer's ownership protocol, see SAFETY")]
unsafe impl<T: Send> Sync for Shared<T> {}

/// Creates a swap buffer over two sets, which should be equal and empty.
pub fn swap_buffer<T: Set>(first: T, second: T) -> (Producer<T>, Consumer<T>) {
    let shared = Arc::new(Shared {
        sets: [UnsafeCell::new(first), UnsafeCell::new(second)],
        state: CachePadded::new(AtomicU64::new(0)),
    });
    (Producer { shared: Arc::clone(&shared) }, Consumer { shared, pending: None })
}

/// The writing side; one thread owns it.
#[derive(Debug)]
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Producer<T> {
    /// Runs `f` on the set currently being filled: one batch. Never waits.
    #[allow(unsafe_code, reason = "the swap buffer's ownership protocol, see SAFETY")]
    pub fn write<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        // Acquire pairs with the consumer's AcqRel flip: a set flipped back to us was cleared
        // before the flip, and that clearing must be visible before we write.
        let state = self.shared.state.fetch_or(BUSY, Ordering::Acquire);
        debug_assert!(state & BUSY == 0, "Invariant: producer batches do not nest");
        let index = (state & ACTIVE) as usize;
        let result = self.shared.sets[index].with_mut(|set| {
            // SAFETY: set `index` was active when BUSY was raised, so the consumer either has
            // not flipped it away or, if it has, waits for the batch count to move before it
            // touches the set; `&mut self` makes this the only producer access.
            f(unsafe { &mut *set })
        });
        // Release pairs with the consumer's Acquire in `pull`: once it sees the count move,
        // every write of this batch is visible to it.
        self.shared.state.fetch_add(BUSY, Ordering::Release);
        result
    }
}

/// A flipped set whose batch was still in flight at the flip.
#[derive(Clone, Copy, Debug)]
struct Pending {
    index: usize,
    /// `state >> 1` at the flip: odd (BUSY) with the finished-batch count.
    mark: u64,
}

/// The reading side; one thread owns it.
#[derive(Debug)]
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    pending: Option<Pending>,
}

impl<T: Set> Consumer<T> {
    /// Takes the set the producer has been filling and gives it the other one. Returns
    /// `None` when the producer is in the middle of a batch on the taken set; call again
    /// (the hand-over completes once that batch ends). Never waits.
    pub fn pull(&mut self) -> Option<Pulled<'_, T>> {
        let index = match self.pending.take() {
            Some(pending) => {
                // Acquire pairs with the producer's Release at the end of a batch.
                let state = self.shared.state.load(Ordering::Acquire);
                if state >> 1 == pending.mark {
                    self.pending = Some(pending);
                    return None;
                }
                pending.index
            }
            None => {
                // Release publishes the clearing of the set we hand back; Acquire pairs with
                // the producer's Release of the batches written into the set we take.
                let state = self.shared.state.fetch_xor(ACTIVE, Ordering::AcqRel);
                let index = (state & ACTIVE) as usize;
                if state & BUSY != 0 {
                    self.pending = Some(Pending { index, mark: state >> 1 });
                    return None;
                }
                index
            }
        };
        Some(Pulled { shared: &self.shared, index })
    }
}

/// A set taken by [`Consumer::pull`]: read it through [`Pulled::with`]; dropping it clears
/// the set for reuse.
#[derive(Debug)]
pub struct Pulled<'a, T: Set> {
    shared: &'a Shared<T>,
    index: usize,
}

impl<T: Set> Pulled<'_, T> {
    /// Runs `f` on the taken set.
    #[allow(unsafe_code, reason = "the swap buffer's ownership protocol, see SAFETY")]
    pub fn with<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        self.shared.sets[self.index].with_mut(|set| {
            // SAFETY: the producer left this set (flip seen, batch count moved) and will not
            // be handed it again until the next flip, which needs `&mut Consumer` back.
            f(unsafe { &mut *set })
        })
    }
}

impl<T: Set> Drop for Pulled<'_, T> {
    fn drop(&mut self) {
        self.with(Set::clear);
    }
}
