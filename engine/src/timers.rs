//! Bar-close timers: a hashed timing wheel in front of a small heap.
//!
//! Each bar builder (one per symbol and frequency) has at most one timer, and timers fire in
//! `(due, symbol, frequency)` order, exactly as a single binary heap of all of them would.
//! A binary heap of every timer costs a walk down about fifteen levels per pop at 10,000
//! symbols (20,000 timers, 320 KB), and at 20,000 trades/s the engine pops almost one timer
//! every two trades. The wheel makes arming O(1) and keeps the heap to the timers of the
//! slots the clock has reached:
//!
//! - **Wheel.** Slots of `2^TIMER_SLOT_NS_LOG2` ns of due time. A slot is a list of
//!   [`Chunk`]s, each one cache line holding up to seven timers, so arming appends to a line
//!   that is usually in cache, and draining a slot reads one line per seven timers instead of
//!   chasing one pointer per timer. Chunks come from a pool allocated up front.
//! - **Near heap.** When the clock reaches a slot, its timers move into `near`, a binary heap
//!   ordered like the old one; pops come from there while their due time has passed. Every
//!   timer in `near` is due before every timer still in the wheel, because slots are
//!   drained in order.
//! - **Overflow.** A timer due beyond the wheel's horizon (possible only with an unusual
//!   configuration or an input far in the future) waits in an overflow list, which is
//!   rescanned once per revolution of the wheel, before the wheel can reach its slot.
//!
//! The caller gets each timer as its slot is drained ([`Timers::pop_due`]'s `on_reached`),
//! so it can prefetch the state the timer will touch a few trades before it fires.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::event::Frequency;
use crate::limits::{TIMER_SLOT_NS_LOG2, TIMER_WHEEL_SLOTS_MAX, TIMER_WHEEL_SLOTS_MIN};

/// End of a list.
const NIL: u32 = u32::MAX;

/// Timers in one [`Chunk`].
const CHUNK_TIMERS: usize = 7;

/// A bar of `symbol` due to close on the clock at `due_ns`. Ordered by due time, symbol,
/// then frequency, which is the order bars closed by the clock are emitted in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timer {
    pub(crate) due_ns: u64,
    pub(crate) symbol: u32,
    pub(crate) frequency: Frequency,
}

const _: () = assert!(size_of::<Timer>() == 16, "a timer is 16 bytes");

/// A timer inside a slot: its builder and its due time's offset in the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Zeroable)]
struct Entry {
    builder: u32,
    offset_ns: u32,
}

/// Up to [`CHUNK_TIMERS`] timers of one slot, and the next chunk of the slot.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, bytemuck::Zeroable)]
struct Chunk {
    next: u32,
    len: u32,
    entries: [Entry; CHUNK_TIMERS],
}

const _: () = assert!(size_of::<Chunk>() == 64, "a chunk is one cache line");
const _: () = assert!(TIMER_SLOT_NS_LOG2 <= 32, "a due time's offset in its slot is a u32");

/// Every armed bar-close timer; see the module documentation.
#[derive(Debug)]
pub(crate) struct Timers {
    /// First chunk of each slot's list; the length is a power of two.
    slots: Vec<u32>,
    /// The chunk pool. Only `chunks[..chunks_used]` has ever been handed out.
    chunks: Vec<Chunk>,
    chunks_used: u32,
    /// Chunks handed back, linked through `Chunk::next`.
    free: u32,
    /// Absolute index of the first slot not yet drained into `near`.
    cursor: u64,
    /// Timers of drained slots (and timers armed already due), soonest first.
    near: BinaryHeap<Reverse<Timer>>,
    /// Timers due at or past `cursor + slots.len()` when armed.
    overflow: Vec<Timer>,
    /// Armed timers in all three places.
    len: usize,
    /// One timer per builder: the most that can be armed at once.
    capacity: usize,
}

impl Timers {
    /// Room for one timer per builder of `symbols_max` symbols, with a wheel long enough for
    /// timers up to `horizon_ns` ahead of the clock (within the wheel's limits).
    pub(crate) fn new(symbols_max: u32, horizon_ns: u64) -> Timers {
        let capacity = 2 * symbols_max as usize;
        let wanted = (horizon_ns >> TIMER_SLOT_NS_LOG2).saturating_add(2);
        let slots = wanted.clamp(TIMER_WHEEL_SLOTS_MIN, TIMER_WHEEL_SLOTS_MAX).next_power_of_two();
        Timers {
            slots: vec![NIL; slots as usize],
            // Every chunk in use holds a timer, so the pool never needs more chunks than
            // timers. Zeroed (a chunk is initialised when handed out), so that the pages of
            // chunks never used are never touched.
            chunks: bytemuck::zeroed_vec(capacity),
            chunks_used: 0,
            free: NIL,
            cursor: 0,
            near: BinaryHeap::with_capacity(capacity),
            overflow: Vec::with_capacity(capacity),
            len: 0,
            capacity,
        }
    }

    /// Arms `timer`; its builder must have no timer armed.
    pub(crate) fn arm(&mut self, timer: Timer) {
        debug_assert!(self.len < self.capacity, "Invariant: one timer per bar builder");
        self.len += 1;
        self.place(timer);
    }

    /// The next timer due at or before `now_ns`, removed, in `(due, symbol, frequency)`
    /// order. `on_reached` sees each timer as the clock reaches its slot, before it is due.
    pub(crate) fn pop_due(&mut self, now_ns: u64, on_reached: impl FnMut(Timer)) -> Option<Timer> {
        self.drain_through(now_ns >> TIMER_SLOT_NS_LOG2, on_reached);
        match self.near.peek() {
            Some(Reverse(timer)) if timer.due_ns <= now_ns => {
                self.len -= 1;
                self.near.pop().map(|Reverse(timer)| timer)
            }
            _ => None,
        }
    }

    /// The earliest due time of any armed timer. Scans the wheel when no slot the clock has
    /// reached holds a timer, so it is meant for tests and idle callers, not the trade path.
    pub(crate) fn earliest_due(&self) -> Option<u64> {
        if let Some(Reverse(timer)) = self.near.peek() {
            return Some(timer.due_ns);
        }
        let in_wheel = (0..self.slots.len() as u64)
            .map(|offset| self.cursor + offset)
            .find(|&slot| self.slots[slot as usize & self.mask()] != NIL);
        let wheel = in_wheel.into_iter().flat_map(|slot| self.slot_timers(slot));
        // The overflow may hold timers the wheel's range has caught up with since.
        wheel.chain(self.overflow.iter().copied()).map(|timer| timer.due_ns).min()
    }

    /// Removes every armed timer, in no particular order, into the near heap's own storage
    /// (so nothing allocates); hand the vector back with [`Timers::restore`].
    pub(crate) fn take_all(&mut self) -> Vec<Reverse<Timer>> {
        for slot in self.cursor..self.cursor + self.slots.len() as u64 {
            self.drain_slot(slot, |_| {});
        }
        self.near.extend(self.overflow.drain(..).map(Reverse));
        self.len = 0;
        std::mem::take(&mut self.near).into_vec()
    }

    /// Takes back the storage [`Timers::take_all`] handed out, emptied.
    pub(crate) fn restore(&mut self, mut storage: Vec<Reverse<Timer>>) {
        storage.clear();
        self.near = BinaryHeap::from(storage);
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Puts a counted timer where it belongs: `near`, a wheel slot or the overflow.
    fn place(&mut self, timer: Timer) {
        let slot = timer.due_ns >> TIMER_SLOT_NS_LOG2;
        if slot < self.cursor {
            self.near.push(Reverse(timer));
        } else if slot - self.cursor < self.slots.len() as u64 {
            self.push_to_slot(slot, timer);
        } else {
            self.overflow.push(timer);
        }
    }

    fn push_to_slot(&mut self, slot: u64, timer: Timer) {
        let mask = self.mask();
        let head = &mut self.slots[slot as usize & mask];
        let room = *head != NIL && (self.chunks[*head as usize].len as usize) < CHUNK_TIMERS;
        if !room {
            let chunk = if self.free != NIL {
                let chunk = self.free;
                self.free = self.chunks[chunk as usize].next;
                chunk
            } else {
                self.chunks_used += 1;
                self.chunks_used - 1
            };
            self.chunks[chunk as usize].next = *head;
            self.chunks[chunk as usize].len = 0;
            *head = chunk;
        }
        let chunk = &mut self.chunks[*head as usize];
        let builder = timer.symbol * 2 + timer.frequency.index() as u32;
        let offset_ns = (timer.due_ns & ((1 << TIMER_SLOT_NS_LOG2) - 1)) as u32;
        chunk.entries[chunk.len as usize] = Entry { builder, offset_ns };
        chunk.len += 1;
    }

    /// Moves every slot up to and including `target` into `near`.
    fn drain_through(&mut self, target: u64, mut on_reached: impl FnMut(Timer)) {
        if target < self.cursor {
            return;
        }
        if target - self.cursor >= self.slots.len() as u64 {
            // The clock jumped past the whole wheel: every timer in it is due.
            for slot in self.cursor..self.cursor + self.slots.len() as u64 {
                self.drain_slot(slot, &mut on_reached);
            }
            self.cursor = target + 1;
            self.rescan_overflow(&mut on_reached);
            return;
        }
        while self.cursor <= target {
            if self.cursor as usize & self.mask() == 0 {
                // Once per revolution, before the wheel can reach a slot that was out of
                // range when its timer was armed.
                self.rescan_overflow(&mut on_reached);
            }
            self.drain_slot(self.cursor, &mut on_reached);
            self.cursor += 1;
        }
    }

    /// Moves the overflow timers the wheel now covers into it (or into `near`).
    fn rescan_overflow(&mut self, on_reached: &mut impl FnMut(Timer)) {
        let mut kept = 0;
        for index in 0..self.overflow.len() {
            let timer = self.overflow[index];
            let slot = timer.due_ns >> TIMER_SLOT_NS_LOG2;
            if slot < self.cursor {
                on_reached(timer);
                self.near.push(Reverse(timer));
            } else if slot - self.cursor < self.slots.len() as u64 {
                self.push_to_slot(slot, timer);
            } else {
                self.overflow[kept] = timer;
                kept += 1;
            }
        }
        self.overflow.truncate(kept);
    }

    /// Moves the timers of absolute slot `slot` into `near` and frees its chunks.
    fn drain_slot(&mut self, slot: u64, mut on_reached: impl FnMut(Timer)) {
        let index = slot as usize & self.mask();
        let mut chunk = std::mem::replace(&mut self.slots[index], NIL);
        let base_ns = slot << TIMER_SLOT_NS_LOG2;
        while chunk != NIL {
            let Chunk { next, len, entries } = self.chunks[chunk as usize];
            for entry in &entries[..len as usize] {
                let timer = timer_of(entry, base_ns);
                on_reached(timer);
                self.near.push(Reverse(timer));
            }
            self.chunks[chunk as usize].next = self.free;
            self.free = chunk;
            chunk = next;
        }
    }

    /// The timers in absolute slot `slot`, which must be in the wheel's range.
    fn slot_timers(&self, slot: u64) -> impl Iterator<Item = Timer> + '_ {
        let mut chunk = self.slots[slot as usize & self.mask()];
        let base_ns = slot << TIMER_SLOT_NS_LOG2;
        core::iter::from_fn(move || {
            let found = self.chunks.get(chunk as usize)?;
            chunk = found.next;
            Some(found.entries[..found.len as usize].iter().map(move |e| timer_of(e, base_ns)))
        })
        .flatten()
    }
}

fn timer_of(entry: &Entry, base_ns: u64) -> Timer {
    let frequency = Frequency::ALL[entry.builder as usize % 2];
    Timer { due_ns: base_ns + u64::from(entry.offset_ns), symbol: entry.builder / 2, frequency }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOT: u64 = 1 << TIMER_SLOT_NS_LOG2;

    fn timer(due_ns: u64, symbol: u32, minute: bool) -> Timer {
        let frequency = if minute { Frequency::Minute } else { Frequency::Second };
        Timer { due_ns, symbol, frequency }
    }

    /// Every timer comes out once, in (due, symbol, frequency) order, at the first clock
    /// value at or past its due time, whatever the clock's steps: the order a single heap
    /// of all timers gives.
    #[test]
    fn pops_in_heap_order_across_slots_jumps_and_overflow() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..40 {
            let symbols = 64;
            // A short wheel so that overflow and whole-wheel jumps both happen.
            let mut timers = Timers::new(symbols, 0);
            let wheel_ns = timers.slots.len() as u64 * SLOT;
            let mut reference: BinaryHeap<Reverse<Timer>> = BinaryHeap::new();
            let mut armed = vec![false; 2 * symbols as usize];
            let mut now = 1_000 * SLOT + next() % SLOT;
            let mut reached = Vec::new();
            for _ in 0..2_000 {
                // Arm a few timers: some already due, most ahead, some past the horizon.
                for _ in 0..(next() % 4) {
                    let symbol = (next() % u64::from(symbols)) as u32;
                    let minute = next() % 2 == 0;
                    let index = symbol as usize * 2 + usize::from(minute);
                    if armed[index] {
                        continue;
                    }
                    let ahead = match next() % 10 {
                        0 => 0,
                        1 => 3 * wheel_ns + next() % wheel_ns,
                        // Clustered in a few slots, so that slots fill several chunks.
                        2..=5 => 20 * SLOT + next() % (3 * SLOT),
                        _ => next() % (wheel_ns / 2),
                    };
                    let due = (now + ahead).saturating_sub(next() % (2 * SLOT));
                    let t = timer(due, symbol, minute);
                    armed[index] = true;
                    if due >> TIMER_SLOT_NS_LOG2 < timers.cursor {
                        // Armed already reached: the caller has its state in hand.
                        reached.push(t);
                    }
                    timers.arm(t);
                    reference.push(Reverse(t));
                }
                now += match next() % 50 {
                    0 => 2 * wheel_ns,
                    1..=5 => 0,
                    _ => next() % (SLOT * 3),
                };
                loop {
                    let expected = match reference.peek() {
                        Some(Reverse(t)) if t.due_ns <= now => reference.pop().map(|r| r.0),
                        _ => None,
                    };
                    let got = timers.pop_due(now, |t| reached.push(t));
                    assert_eq!(got, expected, "round {round}, now {now}");
                    let Some(t) = got else { break };
                    assert!(reached.contains(&t), "{t:?} was reached before it was due");
                    armed[t.symbol as usize * 2 + t.frequency.index()] = false;
                }
                reached.retain(|t| reference.iter().any(|r| r.0 == *t));
                assert_eq!(timers.len, reference.len());
                let earliest = reference.peek().map(|r| r.0.due_ns);
                assert_eq!(timers.earliest_due(), earliest, "round {round}");
            }
            assert!(timers.chunks_used as usize <= timers.capacity);
            let mut all: Vec<Timer> = timers.take_all().into_iter().map(|r| r.0).collect();
            let mut expected: Vec<Timer> = reference.into_iter().map(|r| r.0).collect();
            all.sort_unstable();
            expected.sort_unstable();
            assert_eq!(all, expected);
        }
    }

    #[test]
    fn the_wheel_covers_the_horizon_within_its_limits() {
        let default = Timers::new(16, 66_000_000_000);
        assert!(default.slots.len() as u64 * SLOT >= 66_000_000_000);
        assert!(default.slots.len().is_power_of_two());
        let huge = Timers::new(16, u64::MAX);
        assert_eq!(huge.slots.len() as u64, TIMER_WHEEL_SLOTS_MAX);
        let tiny = Timers::new(16, 0);
        assert_eq!(tiny.slots.len() as u64, TIMER_WHEEL_SLOTS_MIN);
    }
}
