//! The retained event history that `resume` replays from (PROTOCOL.md section 2, step 5):
//! the newest `history_max_events` events (and at most `history_max_bytes` of their JSON),
//! in `seq` order, each with what routing and filters need.
//!
//! # Overflow
//! Appending past either limit evicts the oldest events; a `resume` from before the oldest
//! retained `seq` gets `resume_failed` with `oldest_seq`, and a replay that the eviction
//! overtakes ends its client as a slow consumer (4008): no gap is ever papered over.

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
    events_max: usize,
    bytes_max: usize,
}

impl History {
    /// An empty history with its limits.
    pub fn new(events_max: usize, bytes_max: usize) -> History {
        History { entries: VecDeque::new(), bytes: VecDeque::new(), base: 0, events_max, bytes_max }
    }

    /// Appends a batch.
    pub fn append(&mut self, batch: &FrameBatch) {
        for frame in batch.frames() {
            let json = batch.json(frame);
            let offset = self.base + self.bytes.len() as u64;
            self.bytes.extend(json);
            self.entries.push_back(Entry {
                seq: frame.seq,
                channel: frame.channel,
                ticker: frame.ticker,
                price_raw: frame.price_raw,
                volume: frame.volume,
                strength: frame.strength,
                offset,
                len: json.len() as u32,
            });
        }
        while self.entries.len() > self.events_max || self.bytes.len() > self.bytes_max {
            let Some(oldest) = self.entries.pop_front() else { break };
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
