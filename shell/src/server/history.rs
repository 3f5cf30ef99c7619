//! The retained event history that `resume` replays from (PROTOCOL.md section 2, step 5):
//! the newest `history_max_events` events (and at most `history_max_bytes` of their JSON),
//! in `seq` order, each with what routing and filters need.
//!
//! # Overflow
//! Appending past either limit evicts the oldest events; a `resume` from before the oldest
//! retained `seq` gets `resume_failed` with `oldest_seq`, and a replay that the eviction
//! overtakes ends its client as a slow consumer (4008): no gap is ever papered over.
//!
//! It holds one unbroken run of `seq`s: an event that does not follow the newest (a
//! gateway whose stream lost events, `docs/scale-out.md`) evicts everything before it, so a
//! `resume` from before the hole gets `resume_failed` too.
//!
//! # The per-symbol index
//! Beside the entries it keeps, per symbol, the `seq`s of that symbol's entries (8 bytes an
//! event), so a replay for a watchlist looks at its symbols' events only
//! ([`History::replay_from`]), not at every retained event: a desk reconnecting on 10 of
//! 4,000 symbols costs what it is sent, however long the history.
//!
//! The lists are by ticker, each in a slot of a vector that its entries name, so evicting
//! an entry pops its list with no lookup. Appending finds the list through the frame's
//! `SymbolId` (a hint, checked against the slot's ticker: ids are the engine's, and a
//! gateway's frames, which carry none, fall back to the map by ticker), so where the
//! engine runs it costs no hashing.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};

use tickstock_engine::limits::SYMBOLS_MAX;
use tickstock_engine::{Channel, SymbolId, Ticker};

use crate::emitter::FrameBatch;

/// One retained event.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The event's `seq`.
    pub seq: u64,
    /// Its channel.
    pub channel: Channel,
    /// Its ticker.
    pub ticker: Ticker,
    /// Filter fields (see `Frame`).
    pub price_raw: i64,
    /// Filter fields (see `Frame`).
    pub volume: u64,
    /// Filter fields (see `Frame`).
    pub strength: u8,
    /// The largest event time (`Frame::t_ms`) up to this entry: non-decreasing along the
    /// history, so the first entry at or after a time is found by binary search.
    t_max_ms: u64,
    /// Absolute offset of its JSON in the byte log.
    offset: u64,
    len: u32,
    /// Its ticker's slot in the per-symbol index.
    slot: u32,
}

// The slot fits in what would be padding: an entry is one cache line.
const _: () = assert!(std::mem::size_of::<Entry>() == 64);

/// The history.
#[derive(Debug)]
pub struct History {
    entries: VecDeque<Entry>,
    bytes: VecDeque<u8>,
    /// Absolute offset of `bytes[0]`.
    base: u64,
    /// `t_max_ms` of the newest evicted entry (`None`: nothing evicted yet).
    evicted_t_max_ms: Option<u64>,
    /// The per-symbol index (see the module's docs): a slot per ticker seen.
    slots: Vec<Slot>,
    /// Each ticker's slot.
    slot_of_ticker: HashMap<Ticker, u32, foldhash::fast::RandomState>,
    /// By [`hint_of`] a `SymbolId`: the slot its last entry went to (`u32::MAX`: none).
    hints: Vec<u32>,
    events_max: usize,
    bytes_max: usize,
}

impl History {
    /// An empty history with its limits.
    pub fn new(events_max: usize, bytes_max: usize) -> History {
        History {
            entries: VecDeque::new(),
            bytes: VecDeque::new(),
            base: 0,
            evicted_t_max_ms: None,
            slots: Vec::new(),
            slot_of_ticker: HashMap::default(),
            hints: Vec::new(),
            events_max,
            bytes_max,
        }
    }

    /// Appends a batch.
    pub fn append(&mut self, batch: &FrameBatch) {
        for frame in batch.frames() {
            if self.newest_seq().is_some_and(|newest| frame.seq != newest + 1) {
                self.evicted_t_max_ms = self.entries.back().map(|e| e.t_max_ms);
                self.base += self.bytes.len() as u64;
                self.bytes.clear();
                self.entries.clear();
                self.slots.clear();
                self.slot_of_ticker.clear();
                self.hints.clear();
            }
            let json = batch.json(frame);
            let offset = self.base + self.bytes.len() as u64;
            let before = self.entries.back().map(|e| e.t_max_ms).or(self.evicted_t_max_ms);
            let t_max_ms = before.unwrap_or(0).max(frame.t_ms);
            self.bytes.extend(json);
            let slot = self.index(frame.symbol, frame.ticker, frame.seq);
            self.entries.push_back(Entry {
                seq: frame.seq,
                channel: frame.channel,
                ticker: frame.ticker,
                price_raw: frame.price_raw,
                volume: frame.volume,
                strength: frame.strength,
                t_max_ms,
                offset,
                len: json.len() as u32,
                slot,
            });
        }
        while self.entries.len() > self.events_max || self.bytes.len() > self.bytes_max {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.evicted_t_max_ms = Some(oldest.t_max_ms);
            // The oldest entry is the oldest of its ticker's too.
            self.slots[oldest.slot as usize].seqs.pop_front();
            let end = oldest.offset + u64::from(oldest.len);
            let drop = (end - self.base) as usize;
            self.bytes.drain(..drop);
            self.base = end;
        }
    }

    /// Puts `seq` in the list of `ticker` (of `symbol`); the list's slot.
    fn index(&mut self, symbol: SymbolId, ticker: Ticker, seq: u64) -> u32 {
        let hint = hint_of(symbol);
        let hinted = hint.and_then(|at| self.hints.get(at)).copied();
        let slot = match hinted {
            Some(slot) if self.slots.get(slot as usize).is_some_and(|s| s.ticker == ticker) => slot,
            _ => {
                let slots = &mut self.slots;
                let slot = *self.slot_of_ticker.entry(ticker).or_insert_with(|| {
                    slots.push(Slot { ticker, seqs: VecDeque::new() });
                    (slots.len() - 1) as u32
                });
                if let Some(at) = hint {
                    if at >= self.hints.len() {
                        self.hints.resize(at + 1, u32::MAX);
                    }
                    self.hints[at] = slot;
                }
                slot
            }
        };
        self.slots[slot as usize].seqs.push_back(seq);
        slot
    }

    /// The oldest retained `seq`.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// The newest retained `seq`.
    pub fn newest_seq(&self) -> Option<u64> {
        self.entries.back().map(|e| e.seq)
    }

    /// Where a `resume` from time `t_ms` starts: the `seq` of the first retained event whose
    /// time is at or after it (one past the newest when none is; 0 when the history is
    /// empty), or `Err(oldest_seq)` when an evicted event may have been at or after it.
    pub fn seq_at_time(&self, t_ms: u64) -> Result<u64, u64> {
        let Some(newest) = self.newest_seq() else { return Ok(0) };
        let index = self.entries.partition_point(|e| e.t_max_ms < t_ms);
        if index == 0 && self.evicted_t_max_ms.is_some_and(|evicted| evicted >= t_ms) {
            return Err(self.entries[0].seq);
        }
        Ok(self.entries.get(index).map_or(newest + 1, |e| e.seq))
    }

    /// Entries with `seq >= from`, in order.
    pub fn from_seq(&self, from: u64) -> impl Iterator<Item = &Entry> {
        let start = self.entries.partition_point(|e| e.seq < from);
        self.entries.range(start..)
    }

    /// Entries with `seq >= from` whose ticker is one of `tickers` (each named once), in
    /// `seq` order: what [`History::from_seq`] gives, less what those tickers are not
    /// (each ticker's `seq`s merged by a heap).
    fn among<'t>(&self, from: u64, tickers: impl IntoIterator<Item = &'t Ticker>) -> Among<'_> {
        let mut heads = BinaryHeap::new();
        let mut remaining = 0;
        for ticker in tickers {
            let Some(&slot) = self.slot_of_ticker.get(ticker) else { continue };
            let seqs = &self.slots[slot as usize].seqs;
            let start = seqs.partition_point(|&seq| seq < from);
            remaining += seqs.len() - start;
            if let Some(&seq) = seqs.get(start) {
                heads.push(Reverse((seq, start, seqs)));
            }
        }
        Among { history: self, heads, remaining }
    }

    /// What a replay from `from` looks at, in `seq` order: the entries of `symbols` only
    /// (through the per-symbol index) when given (a delivery with no `*` topic), at most
    /// [`INDEX_SYMBOLS_MAX`] of them and their entries at most an eighth of what is left;
    /// else every entry from `from` on.
    ///
    /// The eighth is where the two cost the same: the `replay` bench's ten most active
    /// symbols, 11.5 % of the entries, took 35 ms either way over 1,000,000 entries (each
    /// entry looked up is a cache miss; a scan reads them in order), and ten middling ones
    /// 0.32 ms against 18 ms.
    pub fn replay_from(&self, from: u64, symbols: Option<&BTreeSet<Ticker>>) -> Replayed<'_> {
        let start = self.entries.partition_point(|e| e.seq < from);
        let left = self.entries.len() - start;
        match symbols.filter(|s| s.len() <= INDEX_SYMBOLS_MAX).map(|s| self.among(from, s)) {
            Some(among) if among.remaining() * 8 <= left => Replayed::Among(among),
            _ => Replayed::All(self.entries.range(start..)),
        }
    }

    /// The entry of `seq`, if retained (the entries are one unbroken run of `seq`s).
    fn get(&self, seq: u64) -> Option<&Entry> {
        let oldest = self.oldest_seq()?;
        self.entries.get(usize::try_from(seq.checked_sub(oldest)?).ok()?)
    }

    /// An entry's JSON, from the byte log's one or two contiguous parts (copied into
    /// `scratch` only when it straddles them).
    pub fn json<'a>(&'a self, entry: &Entry, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        let start = (entry.offset - self.base) as usize;
        let end = start + entry.len as usize;
        let (front, back) = self.bytes.as_slices();
        if end <= front.len() {
            return &front[start..end];
        }
        if start >= front.len() {
            return &back[start - front.len()..end - front.len()];
        }
        scratch.clear();
        scratch.extend_from_slice(&front[start..]);
        scratch.extend_from_slice(&back[..end - front.len()]);
        scratch
    }
}

/// One ticker's list in the per-symbol index.
#[derive(Debug)]
struct Slot {
    /// The ticker.
    ticker: Ticker,
    /// The `seq`s of its retained entries, oldest first.
    seqs: VecDeque<u64>,
}

/// Where `symbol`'s hint is in [`History`]'s hints: the market's first, then each symbol by
/// its id; `None` for an id no engine gives.
fn hint_of(symbol: SymbolId) -> Option<usize> {
    match symbol {
        SymbolId::MARKET => Some(0),
        SymbolId(id) if id < SYMBOLS_MAX => Some(id as usize + 1),
        _ => None,
    }
}

/// [`History::replay_from`] looks at the entries of at most this many symbols through the
/// per-symbol index; above it, merging that many lists costs more than looking at every
/// entry.
pub const INDEX_SYMBOLS_MAX: usize = 256;

/// [`History::replay_from`]'s entries.
#[derive(Debug)]
pub enum Replayed<'a> {
    /// Every entry from a `seq` on.
    All(std::collections::vec_deque::Iter<'a, Entry>),
    /// Some symbols' entries.
    Among(Among<'a>),
}

impl<'a> Iterator for Replayed<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        match self {
            Replayed::All(all) => all.next(),
            Replayed::Among(among) => among.next(),
        }
    }
}

/// The entries of a replay through the per-symbol index ([`Replayed::Among`]): a merge of
/// per-ticker `seq` lists.
#[derive(Debug)]
pub struct Among<'a> {
    history: &'a History,
    /// Per ticker with entries left: its next `seq`, where that is in its list, and the list.
    heads: BinaryHeap<Reverse<(u64, usize, &'a VecDeque<u64>)>>,
    remaining: usize,
}

impl Among<'_> {
    /// How many entries are left to give.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl<'a> Iterator for Among<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        let Reverse((seq, at, seqs)) = self.heads.pop()?;
        if let Some(&next) = seqs.get(at + 1) {
            self.heads.push(Reverse((next, at + 1, seqs)));
        }
        self.remaining -= 1;
        self.history.get(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emitter::Frame;
    use crate::server::fanout::test_batch;

    #[test]
    fn a_time_finds_the_first_event_at_or_after_it_and_knows_what_eviction_lost() {
        let mut history = History::new(4, 1 << 20);
        // `test_batch` dates event `seq` at `seq` seconds.
        history.append(&test_batch(1, &[(Channel::T, "A", 1); 3]));
        assert_eq!(history.seq_at_time(0), Ok(1), "before everything: from the oldest");
        assert_eq!(history.seq_at_time(2_000), Ok(2));
        assert_eq!(history.seq_at_time(2_001), Ok(3));
        assert_eq!(history.seq_at_time(9_000), Ok(4), "after everything: live from the next");
        history.append(&test_batch(4, &[(Channel::T, "A", 1); 3]));
        assert_eq!(history.oldest_seq(), Some(3), "1 and 2 evicted");
        assert_eq!(history.seq_at_time(1_500), Err(3), "2 was at 2 s and is gone");
        assert_eq!(history.seq_at_time(2_001), Ok(3), "nothing evicted was at or after it");
        assert_eq!(History::new(4, 1 << 20).seq_at_time(5), Ok(0));
    }

    fn among(history: &History, from: u64, tickers: &[&str]) -> Vec<(u64, String)> {
        let tickers: Vec<Ticker> = tickers.iter().map(|t| Ticker::new(t).unwrap()).collect();
        let among = history.among(from, &tickers);
        let remaining = among.remaining();
        let found: Vec<(u64, String)> =
            among.map(|e| (e.seq, e.ticker.as_str().to_owned())).collect();
        assert_eq!(found.len(), remaining, "remaining counts what is left");
        found
    }

    #[test]
    fn among_gives_its_tickers_entries_in_seq_order_and_follows_eviction() {
        let mut history = History::new(6, 1 << 20);
        let frames = [(Channel::T, "A", 1), (Channel::T, "B", 1), (Channel::A, "C", 1)];
        history.append(&test_batch(1, &[frames[0], frames[1], frames[2], frames[0]]));
        let a_and_c = [(1, "A".to_owned()), (3, "C".to_owned()), (4, "A".to_owned())];
        assert_eq!(among(&history, 0, &["C", "A", "IBM"]), a_and_c);
        assert_eq!(among(&history, 2, &["A", "C"]), a_and_c[1..]);
        assert_eq!(among(&history, 5, &["A"]), []);
        // 1 to 4 and 5 to 8: 1 and 2 evicted.
        history.append(&test_batch(5, &[frames[1], frames[1], frames[0], frames[2]]));
        assert_eq!(history.oldest_seq(), Some(3));
        let all = ["A", "B", "C"];
        let everything: Vec<(u64, String)> =
            history.from_seq(0).map(|e| (e.seq, e.ticker.as_str().to_owned())).collect();
        assert_eq!(among(&history, 0, &all), everything, "all of its tickers: all of it");
        assert_eq!(among(&history, 0, &["A"]), [(4, "A".to_owned()), (7, "A".to_owned())]);
        // A hole clears the index with the entries.
        history.append(&test_batch(20, &[frames[2]]));
        assert_eq!(among(&history, 0, &all), [(20, "C".to_owned())]);
        assert_eq!(history.slot_of_ticker.len(), 1, "the index starts over at a hole");
    }

    #[test]
    fn a_symbol_id_is_only_a_hint_so_shared_renamed_or_foreign_ids_index_right() {
        let frames = [(Channel::T, "A", 1), (Channel::T, "B", 1), (Channel::T, "C", 1)];
        let source = test_batch(1, &[frames[0], frames[1], frames[2], frames[0], frames[2]]);
        // A and B share id 0 (as a gateway's frames do), then A takes C's id 7, and D has
        // an id no engine gives.
        let ids = [0, 0, 7, 7, 7];
        let mut batch = FrameBatch::new(1 << 20);
        for (frame, &id) in source.frames().iter().zip(&ids) {
            batch.push_raw(Frame { symbol: SymbolId(id), ..*frame }, source.json(frame));
        }
        let foreign = test_batch(6, &[(Channel::T, "D", 1)]);
        let frame = foreign.frames()[0];
        batch.push_raw(Frame { symbol: SymbolId(u32::MAX - 1), ..frame }, foreign.json(&frame));
        let mut history = History::new(100, 1 << 20);
        history.append(&batch);
        let seqs = |tickers: &[&str]| -> Vec<u64> {
            among(&history, 0, tickers).into_iter().map(|(seq, _)| seq).collect()
        };
        assert_eq!(seqs(&["A"]), [1, 4]);
        assert_eq!(seqs(&["B"]), [2]);
        assert_eq!(seqs(&["C"]), [3, 5]);
        assert_eq!(seqs(&["D"]), [6]);
    }

    #[test]
    fn a_replay_uses_the_index_when_its_symbols_are_at_most_an_eighth_of_what_is_left() {
        let mut history = History::new(1_000, 1 << 20);
        history.append(&test_batch(1, &[(Channel::T, "B", 1); 93]));
        history.append(&test_batch(94, &[(Channel::T, "A", 1); 7]));
        let symbols = |tickers: &[&str]| tickers.iter().map(|t| Ticker::new(t).unwrap()).collect();
        let a: BTreeSet<Ticker> = symbols(&["A"]);
        let among = |replayed| matches!(replayed, Replayed::Among(_));
        assert!(among(history.replay_from(0, Some(&a))), "7 of 100");
        assert!(!among(history.replay_from(50, Some(&a))), "7 of the last 51");
        let seqs: Vec<u64> = history.replay_from(0, Some(&a)).map(|e| e.seq).collect();
        assert_eq!(seqs, (94..=100).collect::<Vec<_>>());
        let ab: BTreeSet<Ticker> = symbols(&["A", "B"]);
        assert!(!among(history.replay_from(0, Some(&ab))), "all of it");
        assert!(!among(history.replay_from(0, None)), "a `*` topic");
        let many: BTreeSet<Ticker> =
            (0..=INDEX_SYMBOLS_MAX).map(|i| Ticker::new(&format!("S{i}")).unwrap()).collect();
        assert!(!among(history.replay_from(0, Some(&many))), "too many lists to merge");
    }

    #[test]
    fn a_hole_in_the_seqs_evicts_what_came_before_it() {
        let mut history = History::new(100, 1 << 20);
        history.append(&test_batch(1, &[(Channel::T, "A", 1); 3]));
        history.append(&test_batch(10, &[(Channel::T, "A", 1); 2]));
        assert_eq!((history.oldest_seq(), history.newest_seq()), (Some(10), Some(11)));
        assert_eq!(history.seq_at_time(2_000), Err(10), "what was before the hole is gone");
        let seqs: Vec<u64> = history.from_seq(0).map(|e| e.seq).collect();
        assert_eq!(seqs, [10, 11]);
        let mut scratch = Vec::new();
        let json = history.json(history.from_seq(11).next().unwrap(), &mut scratch);
        assert!(std::str::from_utf8(json).unwrap().contains(r#""seq":11"#));
    }
}
