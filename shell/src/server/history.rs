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

use std::collections::VecDeque;

use tickstock_engine::{Channel, Ticker};

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
}

/// The history.
#[derive(Debug)]
pub struct History {
    entries: VecDeque<Entry>,
    bytes: VecDeque<u8>,
    /// Absolute offset of `bytes[0]`.
    base: u64,
    /// `t_max_ms` of the newest evicted entry (`None`: nothing evicted yet).
    evicted_t_max_ms: Option<u64>,
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
            }
            let json = batch.json(frame);
            let offset = self.base + self.bytes.len() as u64;
            let before = self.entries.back().map(|e| e.t_max_ms).or(self.evicted_t_max_ms);
            let t_max_ms = before.unwrap_or(0).max(frame.t_ms);
            self.bytes.extend(json);
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
            });
        }
        while self.entries.len() > self.events_max || self.bytes.len() > self.bytes_max {
            let Some(oldest) = self.entries.pop_front() else { break };
            self.evicted_t_max_ms = Some(oldest.t_max_ms);
            let end = oldest.offset + u64::from(oldest.len);
            let drop = (end - self.base) as usize;
            self.bytes.drain(..drop);
            self.base = end;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
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
