//! `ACT`: the market's activity, once per engine-clock second (DETECTORS.md, `ACT`).
//!
//! Each accepted trade costs two writes: a count in a ring of per-second trade counts, and a
//! bit (its symbol) in a ring of per-second symbol bitmaps. Once a second the engine asks for
//! the event of the next boundary: the counts of the trailing 10/30/60/300 s summed from the
//! ring (at most 300 reads) and the distinct symbols of the last 60 s as the population count
//! of 60 bitmaps OR-ed together (only the words of symbols interned so far).
//!
//! Both rings are indexed by second modulo their length and cover a fixed span around the
//! next boundary `next`: counts `[next - 300, next + 212)`, bitmaps `[next - 60, next + 68)`.
//! A trade dated [`ACTIVITY_AHEAD_S`] or more after `next` is not counted (counted as such in
//! [`Stats`]): with the default `max_future_ms` of 5 s none is. When `next` moves on, the
//! second that leaves each span is cleared, so its slot starts empty for the second that
//! enters.
//!
//! **When.** The event of boundary `B` is due when the engine clock reaches
//! `B + bar_close_grace + bar_close_spread`: after every bar of the second that ends at `B`
//! has closed on the clock (the bars' staggered closes all fall before it), and in timer
//! order with them. The first boundary is the first one after the engine clock at the first
//! accepted trade. **Catching up.** When the clock jumps over several boundaries (a replay
//! over a quiet night, a stalled feed), each is emitted in turn while its windows can still
//! hold a trade; once no counted trade is within 300 s of the next boundary, every boundary
//! up to the newest due one would be all zeros, and only that newest one is emitted (the
//! skipped ones are counted in [`Stats`]). So one clock step emits at most
//! [`ACTIVITY_PER_CALL_MAX`] events.

use crate::event::{Activity, ActivityLevel, ACTIVITY_WINDOWS_S};
use crate::limits::{ACTIVITY_AHEAD_S, ACTIVITY_COUNT_SLOTS, ACTIVITY_SEEN_SLOTS};
use crate::stats::Stats;
use crate::tick::{SymbolId, Timestamp};

#[cfg(doc)]
use crate::limits::ACTIVITY_PER_CALL_MAX;

const NANOS_PER_S: u64 = 1_000_000_000;

/// The longest window, in seconds.
const LONGEST_S: u64 = ACTIVITY_WINDOWS_S[3];

/// The window of `symbols_60s`, in seconds.
const SYMBOLS_S: u64 = 60;

const _: () = assert!(LONGEST_S + ACTIVITY_AHEAD_S < ACTIVITY_COUNT_SLOTS as u64);
const _: () = assert!(SYMBOLS_S + ACTIVITY_AHEAD_S < ACTIVITY_SEEN_SLOTS as u64);

/// The trade counts and symbol bitmaps behind `ACT`; see the module documentation.
#[derive(Debug)]
pub(crate) struct ActivityWindows {
    /// `activity_levels` as trades in 60 s.
    levels: [u64; 3],
    /// When a boundary's event is due after the boundary: the grace plus the spread.
    delay_ns: u64,
    /// The next boundary to emit, in seconds since the epoch; 0 before the first trade.
    next: u64,
    /// The newest second with a counted trade.
    newest: u64,
    /// Trades per second, second `s` at `s % ACTIVITY_COUNT_SLOTS`.
    counts: Vec<u64>,
    /// Words in one bitmap: one bit per symbol of `symbols_max`.
    words: usize,
    /// Words of each bitmap that any symbol has touched (symbol ids are dense from 0).
    words_used: usize,
    /// Symbols that traded per second, second `s` at `(s % ACTIVITY_SEEN_SLOTS) * words`.
    seen: Vec<u64>,
    /// The OR of the last minute's bitmaps, reused for every event.
    union: Vec<u64>,
}

impl ActivityWindows {
    /// Windows for `symbols_max` symbols, levels as trades in 60 s, events due `delay_ns`
    /// after their boundary.
    pub(crate) fn new(symbols_max: u32, levels: [u64; 3], delay_ns: u64) -> ActivityWindows {
        let words = (symbols_max as usize).div_ceil(64);
        ActivityWindows {
            levels,
            delay_ns,
            next: 0,
            newest: 0,
            counts: vec![0; ACTIVITY_COUNT_SLOTS],
            words,
            words_used: 0,
            // Zeroed and never written for symbols that never trade: untouched pages.
            seen: bytemuck::zeroed_vec(words * ACTIVITY_SEEN_SLOTS),
            union: vec![0; words],
        }
    }

    /// Counts an accepted trade of `symbol` dated `t_ns`, at engine clock `now_ns`.
    pub(crate) fn record(&mut self, stats: &mut Stats, now_ns: u64, t_ns: u64, symbol: SymbolId) {
        if self.next == 0 {
            self.next = now_ns / NANOS_PER_S + 1;
        }
        let second = t_ns / NANOS_PER_S;
        if second >= self.next + ACTIVITY_AHEAD_S {
            stats.activity_uncounted += 1;
            return;
        }
        self.newest = self.newest.max(second);
        if second + LONGEST_S < self.next {
            return; // in no window still to come
        }
        self.counts[second as usize % ACTIVITY_COUNT_SLOTS] += 1;
        if second + SYMBOLS_S >= self.next {
            let word = symbol.index() / 64;
            let slot = second as usize % ACTIVITY_SEEN_SLOTS;
            self.seen[slot * self.words + word] |= 1 << (symbol.index() % 64);
            self.words_used = self.words_used.max(word + 1);
        }
    }

    /// When the next event is due on the engine clock, once a trade has been accepted.
    pub(crate) fn due_ns(&self) -> Option<u64> {
        (self.next > 0).then(|| self.next * NANOS_PER_S + self.delay_ns)
    }

    /// The event of the next boundary, which is due at `now_ns` (the caller checked
    /// [`ActivityWindows::due_ns`]); skips all-zero boundaries first (module documentation).
    pub(crate) fn take(&mut self, stats: &mut Stats, now_ns: u64) -> Activity {
        debug_assert!(self.due_ns().is_some_and(|due| due <= now_ns), "Invariant: due");
        let last = (now_ns - self.delay_ns) / NANOS_PER_S;
        if self.next < last && self.newest + LONGEST_S < self.next {
            // Every slot is empty already: each counted second was cleared as it left.
            stats.activity_skipped += last - self.next;
            self.next = last;
        }
        let boundary = self.next;
        let mut trades = [0; 4];
        for (sum, window) in trades.iter_mut().zip(ACTIVITY_WINDOWS_S) {
            *sum = (boundary.saturating_sub(window)..boundary)
                .map(|second| self.counts[second as usize % ACTIVITY_COUNT_SLOTS])
                .sum();
        }
        self.union[..self.words_used].fill(0);
        for second in boundary.saturating_sub(SYMBOLS_S)..boundary {
            let start = (second as usize % ACTIVITY_SEEN_SLOTS) * self.words;
            let bitmap = &self.seen[start..start + self.words_used];
            for (into, word) in self.union.iter_mut().zip(bitmap) {
                *into |= word;
            }
        }
        let symbols_60s = self.union[..self.words_used].iter().map(|w| w.count_ones()).sum();
        let level = match self.levels.iter().filter(|&&level| trades[2] >= level).count() {
            0 => ActivityLevel::Quiet,
            1 => ActivityLevel::Normal,
            2 => ActivityLevel::Busy,
            _ => ActivityLevel::Extreme,
        };
        // The seconds that leave the spans: their slots start empty for those that enter.
        if let Some(leaving) = boundary.checked_sub(LONGEST_S) {
            self.counts[leaving as usize % ACTIVITY_COUNT_SLOTS] = 0;
        }
        if let Some(leaving) = boundary.checked_sub(SYMBOLS_S) {
            let start = (leaving as usize % ACTIVITY_SEEN_SLOTS) * self.words;
            self.seen[start..start + self.words_used].fill(0);
        }
        self.next = boundary + 1;
        stats.activity_events += 1;
        Activity { ts: Timestamp(boundary * NANOS_PER_S), trades, symbols_60s, level }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NANOS_PER_S;

    #[test]
    fn windows_count_trades_and_distinct_symbols_and_the_levels_follow() {
        let mut stats = Stats::default();
        let mut act = ActivityWindows::new(100, [60, 600, 6_000], 0);
        let start = 1_000 * S;
        assert_eq!(act.due_ns(), None, "nothing before the first trade");
        act.record(&mut stats, start, start, SymbolId(3));
        assert_eq!(act.due_ns(), Some(1_001 * S));
        act.record(&mut stats, start, start + S / 2, SymbolId(3));
        act.record(&mut stats, start, start - 20 * S, SymbolId(70));
        let event = act.take(&mut stats, 1_001 * S);
        assert_eq!(event.ts, Timestamp(1_001 * S));
        assert_eq!(event.trades, [2, 3, 3, 3]);
        assert_eq!(event.symbols_60s, 2);
        assert_eq!(event.level, ActivityLevel::Quiet);
        for i in 0..600 {
            act.record(&mut stats, 1_001 * S, 1_001 * S + i, SymbolId(5));
        }
        let event = act.take(&mut stats, 1_002 * S);
        assert_eq!((event.trades[2], event.symbols_60s), (603, 3));
        assert_eq!(event.level, ActivityLevel::Busy);
    }

    #[test]
    fn a_jump_emits_while_a_window_holds_a_trade_then_only_the_newest_boundary() {
        let mut stats = Stats::default();
        let mut act = ActivityWindows::new(10, [1, 2, 3], 0);
        act.record(&mut stats, 10 * S, 10 * S, SymbolId(1));
        let now = 2_000 * S;
        let mut events = Vec::new();
        while act.due_ns().is_some_and(|due| due <= now) {
            events.push(act.take(&mut stats, now));
        }
        // Boundaries 11..=310 hold the trade in their 300 s window; 311 is empty, and with
        // it everything up to 2,000, of which only 2,000 goes out.
        assert_eq!(events.len(), 301);
        assert_eq!(events[299].trades[3], 1);
        assert_eq!(events[300].ts, Timestamp(2_000 * S));
        assert_eq!(events[300].trades, [0; 4]);
        assert_eq!(stats.activity_skipped, 2_000 - 311);
        // The rings are clean after the jump.
        act.record(&mut stats, now, now + S / 2, SymbolId(9));
        let event = act.take(&mut stats, 2_001 * S);
        assert_eq!((event.trades, event.symbols_60s), ([1; 4], 1));
    }

    #[test]
    fn trades_too_far_ahead_are_not_counted() {
        let mut stats = Stats::default();
        let mut act = ActivityWindows::new(10, [1, 2, 3], 0);
        act.record(&mut stats, 10 * S, 10 * S, SymbolId(1));
        act.record(&mut stats, 10 * S, (11 + ACTIVITY_AHEAD_S) * S, SymbolId(1));
        assert_eq!(stats.activity_uncounted, 1);
        act.record(&mut stats, 10 * S, (10 + ACTIVITY_AHEAD_S) * S, SymbolId(2));
        let mut later = Vec::new();
        let now = (12 + ACTIVITY_AHEAD_S) * S;
        while act.due_ns().is_some_and(|due| due <= now) {
            later.push(act.take(&mut stats, now));
        }
        assert_eq!(later.last().unwrap().trades[0], 1, "the one 64 s ahead, counted");
    }
}
