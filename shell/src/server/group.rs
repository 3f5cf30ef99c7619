//! A group: the connections whose [`Delivery`] is the same, and the one stream of shared,
//! pre-framed messages they all read.
//!
//! Each emitter cycle the fan-out appends the group's events once into its array builder;
//! at the cycle's end the arrays are framed once and pushed onto the group's [`GroupStream`].
//! A member holds a cursor into the stream (a message index and the bytes of that message
//! already written); what a member costs per cycle is its write call. A message is freed as
//! soon as the last member that needs it has written it.
//!
//! # Overflow
//! The stream retains at most `client_lag_max_bytes`, and nothing older than
//! `client_lag_max_ms` that a member still needs. Retention that must drop a message some
//! member has not written yet overtakes that member: [`Group::overtake`] hands it to
//! its slow-consumer policy (close, conflate or shed), which counts what it lost. Memory is
//! O(stream) per group, never O(members × backlog).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use slab::Slab;
use tickstock_engine::{Channel, Ticker};

use super::deflate::Compressors;
use super::framing::{ArrayBuilder, Framed, Slices};
use super::session::Delivery;
use crate::emitter::Frame;

/// One retained message of a stream.
#[derive(Debug)]
struct Entry {
    framed: Framed,
    at: Instant,
    /// Members that have yet to write it whole.
    readers: u32,
}

/// Where a member is.
#[derive(Debug)]
pub enum Position {
    /// Reading the stream: the index of the next message, and its bytes already written.
    Streaming {
        /// Absolute message index.
        cursor: u64,
        /// Bytes of that message already written.
        offset: usize,
    },
    /// Fell behind under the `conflate` policy: keeping the latest event per channel and
    /// symbol until its socket drains.
    Conflating(Box<Conflation>),
}

/// One member of a group.
#[derive(Debug)]
pub struct Member {
    /// The connection (its key in the event loop).
    pub connection: usize,
    /// Where it is.
    pub position: Position,
}

/// A member the stream's retention overtook.
#[derive(Debug)]
pub struct Overtaken {
    /// The member (still in the group, not reading the stream any more).
    pub member: usize,
    /// Its connection.
    pub connection: usize,
    /// The message it was partway through, and the bytes of it written: the rest must be
    /// written before anything else, to keep the client's framing whole.
    pub partial: Option<(Framed, usize)>,
    /// Events in the messages it will not get.
    pub skipped_events: u64,
}

/// The group's stream of shared messages.
#[derive(Debug, Default)]
pub struct GroupStream {
    entries: VecDeque<Entry>,
    /// Absolute index of `entries[0]`.
    base: u64,
    bytes: usize,
    /// Messages with an index below this may be written (the linger holds the rest).
    released: u64,
}

impl GroupStream {
    /// The index the next message will get.
    pub fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    /// Bytes retained.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages retained.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn push(&mut self, framed: Framed, at: Instant, readers: u32) {
        if readers == 0 {
            // No member reads it: the index still advances, so cursors stay comparable.
            self.base += 1;
            self.released = self.released.max(self.base);
            return;
        }
        self.bytes += framed.len();
        self.entries.push_back(Entry { framed, at, readers });
    }

    /// Lets members write everything pushed so far.
    pub fn release(&mut self) {
        self.released = self.end();
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        let at = index.checked_sub(self.base)?;
        self.entries.get(usize::try_from(at).ok()?)
    }

    /// Adds the released messages from `cursor` (`offset` bytes of it written) to `slices`.
    pub fn slices<'a>(&'a self, cursor: u64, offset: usize, slices: &mut Slices<'a>) {
        let mut index = cursor;
        while index < self.released {
            let Some(entry) = self.entry(index) else { return };
            let bytes = entry.framed.bytes();
            let bytes = if index == cursor { &bytes[offset.min(bytes.len())..] } else { bytes };
            if !slices.push(bytes) {
                return;
            }
            index += 1;
        }
    }

    /// True when a member at `cursor` has something released to write.
    pub fn has_released(&self, cursor: u64) -> bool {
        cursor < self.released
    }

    /// `n` bytes of a member at (`cursor`, `offset`) were written: moves it on, calling `done`
    /// per message written whole; returns what is left of `n`.
    fn advance(
        &mut self,
        cursor: &mut u64,
        offset: &mut usize,
        mut n: usize,
        mut done: impl FnMut(&Framed),
    ) -> usize {
        while n > 0 {
            let Some(at) = cursor.checked_sub(self.base) else { break };
            let Some(entry) = self.entries.get_mut(at as usize) else { break };
            let left = entry.framed.len() - *offset;
            if n < left {
                *offset += n;
                return 0;
            }
            n -= left;
            *offset = 0;
            *cursor += 1;
            entry.readers -= 1;
            done(&entry.framed);
        }
        self.pop_written();
        n
    }

    /// A member at `cursor` stops reading: it needs none of the rest.
    fn forget(&mut self, cursor: u64) {
        let start = cursor.saturating_sub(self.base) as usize;
        for entry in self.entries.iter_mut().skip(start) {
            entry.readers -= 1;
        }
        self.pop_written();
    }

    /// Events from `cursor` to the end (what a member there has not been sent).
    fn events_from(&self, cursor: u64) -> u64 {
        let start = cursor.saturating_sub(self.base) as usize;
        self.entries.iter().skip(start).map(|e| u64::from(e.framed.events)).sum()
    }

    /// The messages from `cursor` to the end (`offset` bytes of the first written), to be
    /// sent by a member that leaves the stream but must still send them, in order.
    fn take_from(&mut self, cursor: u64, offset: usize) -> Vec<(Framed, usize)> {
        let start = cursor.saturating_sub(self.base) as usize;
        let taken = self
            .entries
            .iter()
            .skip(start)
            .enumerate()
            .map(|(i, e)| (e.framed.clone(), if i == 0 { offset } else { 0 }))
            .collect();
        self.forget(cursor);
        taken
    }

    fn pop_written(&mut self) {
        while self.entries.front().is_some_and(|e| e.readers == 0) {
            let entry = self.entries.pop_front().expect("Invariant: front exists");
            self.bytes -= entry.framed.len();
            self.base += 1;
        }
        self.released = self.released.max(self.base);
    }

    /// How many of the oldest messages retention must drop: while more than `bytes_max` is
    /// retained, or the oldest is older than `age_max`.
    fn excess(&self, now: Instant, bytes_max: usize, age_max: Duration) -> u64 {
        let mut bytes = self.bytes;
        let mut drop = 0;
        for entry in &self.entries {
            if bytes <= bytes_max && now.saturating_duration_since(entry.at) <= age_max {
                break;
            }
            bytes -= entry.framed.len();
            drop += 1;
        }
        drop
    }
}

/// A slow client's latest event per channel and symbol (the `conflate` policy).
#[derive(Debug, Default)]
pub struct Conflation {
    latest: HashMap<(Channel, Ticker), (u64, Vec<u8>)>,
    /// Events lost in all, told to the client when it catches up.
    pub dropped: u64,
    /// Of those, the ones replaced in `latest` (the rest were skipped at the start).
    pub replaced: u64,
}

impl Conflation {
    /// Keeps `json` as the latest of its channel and symbol.
    fn keep(&mut self, frame: &Frame, json: &[u8]) {
        let replaced =
            self.latest.insert((frame.channel, frame.ticker), (frame.seq, json.to_vec()));
        let replaced = u64::from(replaced.is_some());
        self.dropped += replaced;
        self.replaced += replaced;
    }

    /// The kept events in `seq` order, as arrays.
    pub fn release(self, frame_bytes_max: usize) -> Vec<Framed> {
        let mut latest: Vec<(u64, Vec<u8>)> = self.latest.into_values().collect();
        latest.sort_unstable_by_key(|(seq, _)| *seq);
        let mut builder = ArrayBuilder::new(frame_bytes_max);
        let mut out: Vec<Framed> = Vec::new();
        for (seq, json) in &latest {
            out.extend(builder.push(json, *seq));
        }
        out.extend(builder.finish());
        out
    }
}

/// The connections of one delivery, and their stream.
#[derive(Debug)]
pub struct Group {
    /// What every member receives.
    pub delivery: Delivery,
    builder: ArrayBuilder,
    /// The shared messages.
    pub stream: GroupStream,
    /// The members, by member id.
    pub members: Slab<Member>,
    streaming: u32,
    conflating: u32,
    /// When the oldest message not yet released was pushed, and the bytes held.
    held: Option<(Instant, usize)>,
    /// Whether this cycle appended anything (the fan-out's list of touched groups).
    pub(super) touched: bool,
    /// Whether it is on the fan-out's list of groups holding messages.
    pub(super) listed: bool,
    /// Whether it is on the fan-out's list of groups that got messages.
    pub(super) grown: bool,
}

impl Group {
    /// An empty group for `delivery`.
    pub fn new(delivery: Delivery, frame_bytes_max: usize) -> Group {
        Group {
            delivery,
            builder: ArrayBuilder::new(frame_bytes_max),
            stream: GroupStream::default(),
            members: Slab::new(),
            streaming: 0,
            conflating: 0,
            held: None,
            touched: false,
            listed: false,
            grown: false,
        }
    }

    /// Adds a member at the stream's end; returns its id.
    pub fn join(&mut self, connection: usize) -> usize {
        self.streaming += 1;
        let cursor = self.stream.end();
        self.members
            .insert(Member { connection, position: Position::Streaming { cursor, offset: 0 } })
    }

    /// Removes a member; returns the messages it had not written yet (the first partly
    /// written, with its offset): a member that changes group writes them before anything of
    /// its new group, so nothing is lost and order holds.
    pub fn leave(&mut self, member: usize) -> Vec<(Framed, usize)> {
        let Some(removed) = self.members.try_remove(member) else { return Vec::new() };
        match removed.position {
            Position::Streaming { cursor, offset } => {
                self.streaming -= 1;
                self.stream.take_from(cursor, offset)
            }
            Position::Conflating(_) => {
                self.conflating -= 1;
                Vec::new()
            }
        }
    }

    /// Moves a member that stays to the stream's end; returns what it had not written yet
    /// (as [`Group::leave`] does), which it must now send before anything later.
    pub fn take_pending(&mut self, member: usize) -> Vec<(Framed, usize)> {
        let end = self.stream.end();
        let Some(Member { position: Position::Streaming { cursor, offset }, .. }) =
            self.members.get_mut(member)
        else {
            return Vec::new();
        };
        if *cursor >= end {
            return Vec::new();
        }
        let (from, written) = (*cursor, *offset);
        *cursor = end;
        *offset = 0;
        self.stream.take_from(from, written)
    }

    /// True when no connection is left.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether a frame routed here by its topic passes the entitlement and the filter.
    pub fn accepts(&self, frame: &Frame) -> bool {
        let entitled = !self.delivery.topics[frame.channel.index()].all
            || self.delivery.entitled_to(&frame.ticker);
        entitled
            && self.delivery.filter.passes(
                frame.channel,
                frame.price_raw,
                frame.volume,
                frame.strength,
            )
    }

    /// Appends one event for this cycle (a compressed group's messages are deflated by
    /// `compressors`, once for every member).
    pub fn append(
        &mut self,
        frame: &Frame,
        json: &[u8],
        now: Instant,
        compressors: &mut Compressors,
    ) {
        if self.conflating > 0 {
            for (_, member) in &mut self.members {
                if let Position::Conflating(conflation) = &mut member.position {
                    conflation.keep(frame, json);
                }
            }
        }
        if self.streaming == 0 {
            return;
        }
        let full = self.builder.push(json, frame.seq);
        self.builder.note_recv(frame.recv_ns);
        if let Some(full) = full {
            self.push(full, now, compressors);
        }
    }

    /// Frames what this cycle appended and pushes it onto the stream.
    pub fn close_cycle(&mut self, now: Instant, compressors: &mut Compressors) {
        if let Some(framed) = self.builder.finish() {
            self.push(framed, now, compressors);
        }
    }

    fn push(&mut self, framed: Framed, now: Instant, compressors: &mut Compressors) {
        let bits = self.delivery.deflate;
        let compress = bits > 0 && compressors.wants(framed.payload().len());
        let framed = if compress { framed.deflated(compressors.get(bits)) } else { framed };
        let len = framed.len();
        self.stream.push(framed, now, self.streaming);
        let (since, bytes) = self.held.unwrap_or((now, 0));
        self.held = Some((since, bytes + len));
    }

    /// When held messages are due: `linger` after the oldest, or at once past `coalesce`
    /// bytes. `None` when nothing is held.
    pub fn release_due(&self, linger: Duration, coalesce_bytes: usize) -> Option<Instant> {
        let (since, bytes) = self.held?;
        Some(if bytes >= coalesce_bytes { since } else { since + linger })
    }

    /// Releases what is held.
    pub fn release(&mut self) {
        self.held = None;
        self.stream.release();
    }

    /// True while pushed messages wait for their release (the linger).
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Slices of what member `member` may write now.
    pub fn slices<'a>(&'a self, member: usize, slices: &mut Slices<'a>) {
        if let Some(Member { position: Position::Streaming { cursor, offset }, .. }) =
            self.members.get(member)
        {
            self.stream.slices(*cursor, *offset, slices);
        }
    }

    /// Whether member `member` has released messages to write.
    pub fn has_released(&self, member: usize) -> bool {
        matches!(
            self.members.get(member),
            Some(Member { position: Position::Streaming { cursor, .. }, .. })
                if self.stream.has_released(*cursor)
        )
    }

    /// True when member `member` has written everything pushed (or is conflating).
    pub fn caught_up(&self, member: usize) -> bool {
        match self.members.get(member) {
            Some(Member { position: Position::Streaming { cursor, .. }, .. }) => {
                *cursor >= self.stream.end()
            }
            _ => true,
        }
    }

    /// `n` bytes of member `member`'s stream were written; `done` is called per message
    /// written whole. Returns what is left of `n`.
    pub fn advance(&mut self, member: usize, n: usize, done: impl FnMut(&Framed)) -> usize {
        let Some(Member { position: Position::Streaming { cursor, offset }, .. }) =
            self.members.get_mut(member)
        else {
            return n;
        };
        self.stream.advance(cursor, offset, n, done)
    }

    /// Applies retention; returns the members it overtook (no longer reading the stream:
    /// their policy decides what becomes of them).
    pub fn overtake(
        &mut self,
        now: Instant,
        bytes_max: usize,
        age_max: Duration,
    ) -> Vec<Overtaken> {
        let drop = self.stream.excess(now, bytes_max, age_max);
        if drop == 0 {
            return Vec::new();
        }
        let new_base = self.stream.base + drop;
        let mut overtaken = Vec::new();
        for (id, member) in &mut self.members {
            let Position::Streaming { cursor, offset } = member.position else { continue };
            if cursor >= new_base {
                continue;
            }
            let partial = (offset > 0)
                .then(|| self.stream.entry(cursor).map(|e| (e.framed.clone(), offset)))
                .flatten();
            let from = cursor + u64::from(partial.is_some());
            let skipped_events = self.stream.events_from(from);
            overtaken.push(Overtaken {
                member: id,
                connection: member.connection,
                partial,
                skipped_events,
            });
            self.stream.forget(cursor);
            // Parked: not reading, not conflating; its policy moves it on.
            member.position = Position::Conflating(Box::default());
            self.streaming -= 1;
            self.conflating += 1;
        }
        overtaken
    }

    /// Member `member` conflates from now on, having lost `dropped` events already.
    pub fn conflate(&mut self, member: usize, dropped: u64) {
        if let Some(Member { position: Position::Conflating(conflation), .. }) =
            self.members.get_mut(member)
        {
            conflation.dropped += dropped;
        }
    }

    /// Member `member` stops conflating and reads the stream from its end; returns what it
    /// kept.
    pub fn resume_streaming(&mut self, member: usize) -> Option<Conflation> {
        let end = self.stream.end();
        let entry = self.members.get_mut(member)?;
        let Position::Conflating(_) = entry.position else { return None };
        let old =
            std::mem::replace(&mut entry.position, Position::Streaming { cursor: end, offset: 0 });
        self.conflating -= 1;
        self.streaming += 1;
        match old {
            Position::Conflating(conflation) => Some(*conflation),
            Position::Streaming { .. } => None,
        }
    }

    /// True when member `member` is conflating (or parked after being overtaken).
    pub fn is_conflating(&self, member: usize) -> bool {
        matches!(self.members.get(member), Some(Member { position: Position::Conflating(_), .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(events: u32, size: usize) -> Framed {
        let mut builder = ArrayBuilder::new(1 << 20);
        let json = vec![b'1'; size];
        for seq in 0..u64::from(events) {
            builder.push(&json, seq);
        }
        builder.finish().unwrap()
    }

    #[test]
    fn a_compressed_group_deflates_its_messages_once_and_leaves_small_ones_alone() {
        let now = Instant::now();
        let delivery = Delivery { deflate: 15, ..Delivery::default() };
        let mut group = Group::new(delivery, 1 << 20);
        let member = group.join(10);
        let mut compressor = Compressors::default();
        let (big, small) = (framed(20, 80), framed(1, 80));
        let (big_len, small_len) = (big.len(), small.len());
        group.push(big, now, &mut compressor);
        group.push(small, now, &mut compressor);
        group.release();
        let mut slices = Slices::new();
        group.stream.slices(0, 0, &mut slices);
        let wire: Vec<u8> = slices.as_slices().iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(wire[0], 0xc1, "FIN, RSV1 and text: compressed");
        let compressed_len = wire.len() - small_len;
        assert!(compressed_len < big_len / 4, "{compressed_len} of {big_len} bytes");
        assert_eq!(wire[compressed_len], 0x81, "the small one as it was");
        let payload = &wire[2..compressed_len];
        let mut inflate = flate2::Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 16);
        let tail = [payload, &[0, 0, 0xff, 0xff]].concat();
        inflate.decompress_vec(&tail, &mut out, flate2::FlushDecompress::Sync).unwrap();
        assert_eq!(out, framed(20, 80).payload(), "inflates to the array");
        assert_eq!(group.advance(member, wire.len(), |_| {}), 0);
    }

    #[test]
    fn a_message_is_freed_when_its_last_reader_has_written_it() {
        let now = Instant::now();
        let mut group = Group::new(Delivery::default(), 1 << 20);
        let (a, b) = (group.join(10), group.join(11));
        let message = framed(3, 100);
        let len = message.len();
        group.push(message, now, &mut Compressors::default());
        group.release();
        assert_eq!(group.stream.len(), 1);
        let mut done = 0;
        assert_eq!(group.advance(a, len, |_| done += 1), 0);
        assert_eq!(group.stream.len(), 1, "b still needs it");
        assert_eq!(group.advance(b, 10, |_| done += 1), 0);
        assert_eq!(
            group.advance(b, len - 10 + 7, |_| done += 1),
            7,
            "the rest of n is handed back"
        );
        assert!(group.stream.is_empty());
        assert_eq!(done, 2);
        assert!(group.caught_up(a) && group.caught_up(b));
    }

    #[test]
    fn a_member_that_joins_later_does_not_hold_older_messages() {
        let now = Instant::now();
        let mut group = Group::new(Delivery::default(), 1 << 20);
        let a = group.join(1);
        group.push(framed(1, 10), now, &mut Compressors::default());
        let b = group.join(2);
        group.push(framed(1, 10), now, &mut Compressors::default());
        group.release();
        let first = group.stream.entries[0].framed.len();
        group.advance(a, first, |_| {});
        assert_eq!(group.stream.len(), 1, "only a needed the first");
        assert!(group.has_released(b));
        let left = group.leave(b);
        assert_eq!(left.len(), 1, "b leaves with what it has not written");
        assert_eq!(group.stream.len(), 1, "a still needs the second");
    }

    #[test]
    fn retention_overtakes_the_lagging_member_only() {
        let now = Instant::now();
        let mut group = Group::new(Delivery::default(), 1 << 20);
        let (fast, slow) = (group.join(1), group.join(2));
        for _ in 0..10 {
            group.push(framed(2, 100), now, &mut Compressors::default());
        }
        group.release();
        let one = group.stream.entries[0].framed.len();
        // The slow member wrote half of the first message; the fast one all of them.
        group.advance(slow, one / 2, |_| {});
        group.advance(fast, one * 10, |_| {});
        let bytes_max = one * 5;
        let overtaken = group.overtake(now, bytes_max, Duration::from_secs(60));
        assert_eq!(overtaken.len(), 1);
        let o = &overtaken[0];
        assert_eq!((o.member, o.connection), (slow, 2));
        let (partial, offset) = o.partial.as_ref().unwrap();
        assert_eq!((partial.len(), *offset), (one, one / 2));
        assert_eq!(o.skipped_events, 18, "the nine messages after the partial one");
        assert!(group.stream.is_empty(), "nothing is retained for a parked member");
        assert!(group.is_conflating(slow) && !group.is_conflating(fast));
    }

    #[test]
    fn retention_by_age_overtakes_too() {
        let now = Instant::now();
        let mut group = Group::new(Delivery::default(), 1 << 20);
        let member = group.join(1);
        group.push(framed(1, 10), now, &mut Compressors::default());
        group.release();
        assert!(group
            .overtake(now + Duration::from_millis(10), 1 << 20, Duration::from_secs(1))
            .is_empty());
        let overtaken =
            group.overtake(now + Duration::from_secs(2), 1 << 20, Duration::from_secs(1));
        assert_eq!(overtaken.len(), 1);
        assert_eq!(overtaken[0].member, member);
        assert!(overtaken[0].partial.is_none());
        assert_eq!(overtaken[0].skipped_events, 1);
    }

    #[test]
    fn the_linger_holds_messages_until_due_or_coalesced() {
        let now = Instant::now();
        let mut group = Group::new(Delivery::default(), 1 << 20);
        let member = group.join(1);
        group.push(framed(1, 10), now, &mut Compressors::default());
        let linger = Duration::from_millis(5);
        assert_eq!(group.release_due(linger, 1 << 20), Some(now + linger));
        assert!(!group.has_released(member), "held");
        assert_eq!(group.release_due(linger, 10), Some(now), "past the coalescing size");
        group.release();
        assert!(group.has_released(member));
        assert_eq!(group.release_due(linger, 10), None);
    }
}
