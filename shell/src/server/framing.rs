//! Framing and the outbox: events built into JSON arrays once, framed once as unmasked
//! WebSocket text messages ([`Framed`]: the bytes as they go on the wire, header included, so
//! every connection that sends them shares them), and a connection's own queue of messages
//! ([`Outbox`]) that goes out before its group's stream.
//!
//! Server frames are not masked (RFC 6455 section 5.1), so one message's bytes are the same
//! for every client: that is what lets a group frame a cycle's array once for all members.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;

use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use super::deflate::Compressor;

/// The longest unmasked frame header: 2 bytes, and 8 of extended length.
const HEADER_BYTES_MAX: usize = 10;
/// Room reserved for a new array's first events, in bytes (it grows past this as needed): a
/// watchlist's array usually holds one or two events.
const ARRAY_BYTES_INITIAL: usize = 512;
/// A builder keeps its buffer for the next array up to this size, in bytes (beyond it the
/// memory goes back: ten thousand groups must not each keep their largest burst).
const ARRAY_BYTES_KEPT: usize = 64 * 1024;

/// One whole WebSocket message, as it goes on the wire, shared by every connection that
/// sends it.
#[derive(Clone, Debug)]
pub struct Framed {
    /// The wire bytes: one allocation, shared.
    buf: Arc<[u8]>,
    /// Events in it (0 for statuses and control frames).
    pub events: u32,
    /// The first and last `seq` of its events (0 when it has none).
    pub seqs: (u64, u64),
    /// The earliest ring entry (Unix ns) of the trades in it, 0 without one: the start of
    /// its tick-to-client latency.
    pub recv_ns: u64,
    /// A snapshot's events (older than the live stream): a `resume` does not take them back,
    /// since its replay does not cover them ([`Outbox::retract_events`]).
    pub pinned: bool,
}

impl Framed {
    /// A text message holding `text`.
    pub fn text(text: &str) -> Framed {
        Framed::message(Data::Text, text.as_bytes())
    }

    /// A binary message (conformance mode's echo).
    pub fn binary(bytes: &[u8]) -> Framed {
        Framed::message(Data::Binary, bytes)
    }

    fn message(opcode: Data, payload: &[u8]) -> Framed {
        let mut buf = Vec::with_capacity(HEADER_BYTES_MAX + payload.len());
        buf.resize(HEADER_BYTES_MAX, 0);
        buf.extend_from_slice(payload);
        Framed::frame(&mut buf, opcode, 0, (0, 0), 0)
    }

    /// Bytes that are already one or more whole frames (tungstenite's control frames, the
    /// upgrade response), sent as they are.
    pub fn raw(bytes: Vec<u8>) -> Framed {
        Framed { buf: Arc::from(bytes), events: 0, seqs: (0, 0), recv_ns: 0, pinned: false }
    }

    /// Frames `buf[HEADER_BYTES_MAX..]` as one text message, copied once into its shared
    /// allocation (`buf` is the builder's, reused for the next message).
    fn finish(buf: &mut [u8], events: u32, seqs: (u64, u64), recv_ns: u64) -> Framed {
        Framed::frame(buf, Data::Text, events, seqs, recv_ns)
    }

    fn frame(buf: &mut [u8], opcode: Data, events: u32, seqs: (u64, u64), recv_ns: u64) -> Framed {
        Framed::frame_rsv1(buf, opcode, false, events, seqs, recv_ns)
    }

    /// This text message compressed (RFC 7692): the payload deflated as a message of its
    /// own, RSV1 set; the same events, `seq`s and latency start.
    pub fn deflated(&self, compressor: &mut Compressor) -> Framed {
        let payload = self.payload();
        let mut buf = Vec::with_capacity(HEADER_BYTES_MAX + payload.len() / 2 + 64);
        buf.resize(HEADER_BYTES_MAX, 0);
        compressor.deflate(payload, &mut buf);
        let framed =
            Framed::frame_rsv1(&mut buf, Data::Text, true, self.events, self.seqs, self.recv_ns);
        Framed { pinned: self.pinned, ..framed }
    }

    fn frame_rsv1(
        buf: &mut [u8],
        opcode: Data,
        rsv1: bool,
        events: u32,
        seqs: (u64, u64),
        recv_ns: u64,
    ) -> Framed {
        let payload = (buf.len() - HEADER_BYTES_MAX) as u64;
        let header = FrameHeader { opcode: OpCode::Data(opcode), rsv1, ..FrameHeader::default() };
        let header_len = header.len(payload);
        let start = HEADER_BYTES_MAX - header_len;
        let mut slot = &mut buf[start..HEADER_BYTES_MAX];
        header.format(payload, &mut slot).expect("Invariant: the header fits its reserved room");
        Framed { buf: Arc::from(&buf[start..]), events, seqs, recv_ns, pinned: false }
    }

    /// The same message, marked as a snapshot's ([`Framed::pinned`]).
    pub fn into_pinned(mut self) -> Framed {
        self.pinned = true;
        self
    }

    /// The wire bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Length on the wire.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True for a message of no bytes (never built; for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The payload (the JSON text), for tests and diagnostics.
    pub fn payload(&self) -> &[u8] {
        let bytes = self.bytes();
        match bytes.get(1).map(|b| b & 0x7f) {
            Some(126) => &bytes[4..],
            Some(127) => &bytes[10..],
            Some(_) => &bytes[2..],
            None => bytes,
        }
    }
}

/// Events appended into JSON arrays, split above `frame_bytes_max`: no message's payload is
/// larger unless it holds one event that is (PROTOCOL.md section 5).
#[derive(Debug)]
pub struct ArrayBuilder {
    buf: Vec<u8>,
    events: u32,
    seqs: (u64, u64),
    /// The earliest trade ring entry noted for the array being built (0: none).
    recv_ns: u64,
    frame_bytes_max: usize,
}

impl ArrayBuilder {
    /// An empty builder.
    pub fn new(frame_bytes_max: usize) -> ArrayBuilder {
        ArrayBuilder { buf: Vec::new(), events: 0, seqs: (0, 0), recv_ns: 0, frame_bytes_max }
    }

    /// True when no event waits.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Appends one event's JSON object; when it would not fit, the array so far is framed and
    /// returned first.
    pub fn push(&mut self, json: &[u8], seq: u64) -> Option<Framed> {
        let payload = self.buf.len().saturating_sub(HEADER_BYTES_MAX);
        let done = if self.events > 0 && payload + json.len() + 2 > self.frame_bytes_max {
            self.finish()
        } else {
            None
        };
        if self.events == 0 {
            // The buffer of the last array, kept by `finish`: no allocation per array.
            self.buf.clear();
            self.buf.reserve(
                HEADER_BYTES_MAX
                    + ARRAY_BYTES_INITIAL.max(json.len() + 2).min(self.frame_bytes_max),
            );
            self.buf.resize(HEADER_BYTES_MAX, 0);
            self.buf.push(b'[');
            self.seqs = (seq, seq);
        } else {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(json);
        self.events += 1;
        self.seqs.1 = seq;
        done
    }

    /// The event just pushed is a trade that entered the ring at `recv_ns` (live events
    /// only: a replay's would measure how old the replay is).
    pub fn note_recv(&mut self, recv_ns: u64) {
        if recv_ns > 0 && (self.recv_ns == 0 || recv_ns < self.recv_ns) {
            self.recv_ns = recv_ns;
        }
    }

    /// Frames what waits, if anything.
    pub fn finish(&mut self) -> Option<Framed> {
        if self.events == 0 {
            return None;
        }
        self.buf.push(b']');
        let framed = Framed::finish(&mut self.buf, self.events, self.seqs, self.recv_ns);
        self.recv_ns = 0;
        if self.buf.capacity() > ARRAY_BYTES_KEPT {
            // A burst's large array: give the memory back rather than keep it per group.
            self.buf = Vec::new();
        }
        self.events = 0;
        Some(framed)
    }
}

/// A connection's own messages (statuses, control frames, a replay, its share of a group's
/// stream moved here when order requires), written before anything of its group's stream.
///
/// # Overflow
/// Bounded by its Subscriber: a replay is pumped only while this holds less than half of
/// `client_lag_max_bytes`, statuses answer rate-limited client messages, and when what the
/// client's own messages provoke (pongs to a ping flood, echoes) passes twice
/// `client_lag_max_bytes`, the connection is closed as a slow consumer (4008). A slow
/// consumer's outbox is discarded ([`Outbox::discard`]), counted by the caller.
#[derive(Debug, Default)]
pub struct Outbox {
    items: VecDeque<Framed>,
    /// Bytes of the first item already written.
    offset: usize,
    bytes: usize,
}

impl Outbox {
    /// Queues a message.
    pub fn push(&mut self, framed: Framed) {
        self.bytes += framed.len();
        self.items.push_back(framed);
    }

    /// Queues a message of which `offset` bytes were written already (taken over from a
    /// group's stream); only into an empty outbox, where it is the next to write.
    pub fn push_partial(&mut self, framed: Framed, offset: usize) {
        if offset == 0 {
            return self.push(framed);
        }
        assert!(self.items.is_empty(), "Invariant: a partly written message goes first");
        self.offset = offset;
        self.push(framed);
    }

    /// The first message, if partly written: its events and seqs must count as sent.
    pub fn begun(&self) -> Option<&Framed> {
        self.items.front().filter(|_| self.offset > 0)
    }

    /// Bytes not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes - self.offset
    }

    /// True when everything is written.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds the unwritten bytes to `slices`, up to their capacity; true when all fitted.
    pub fn slices<'a>(&'a self, slices: &mut Slices<'a>) -> bool {
        for (i, item) in self.items.iter().enumerate() {
            let bytes = if i == 0 { &item.bytes()[self.offset..] } else { item.bytes() };
            if !slices.push(bytes) {
                return false;
            }
        }
        true
    }

    /// `n` bytes were written; returns what was left of `n` past this outbox, and calls
    /// `done` for each message that went out whole.
    pub fn advance(&mut self, mut n: usize, mut done: impl FnMut(&Framed)) -> usize {
        while let Some(front) = self.items.front() {
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return 0;
            }
            n -= left;
            self.offset = 0;
            self.bytes -= front.len();
            let front = self.items.pop_front().expect("Invariant: front exists");
            done(&front);
        }
        n
    }

    /// Drops every message not yet begun (a message partly written stays, so the client's
    /// framing stays whole); returns the events dropped.
    pub fn discard(&mut self) -> u64 {
        self.retain_begun(|_| false)
    }

    /// Drops the live data messages not yet begun (keeps statuses, control frames and
    /// snapshots, which are [`Framed::pinned`]); returns the events dropped.
    pub fn retract_events(&mut self) -> u64 {
        self.retain_begun(|item| item.events == 0 || item.pinned)
    }

    fn retain_begun(&mut self, keep: impl Fn(&Framed) -> bool) -> u64 {
        let begun = usize::from(self.offset > 0);
        let mut dropped = 0;
        let mut index = 0;
        self.items.retain(|item| {
            let retained = index < begun || keep(item);
            index += 1;
            if !retained {
                dropped += u64::from(item.events);
            }
            retained
        });
        self.bytes = self.items.iter().map(Framed::len).sum();
        dropped
    }
}

/// Slices for one vectored write, at most [`Slices::CAPACITY`], on the stack (a write is
/// the per-member cost of the fan-out: it allocates nothing).
#[derive(Debug)]
pub struct Slices<'a> {
    slices: [IoSlice<'a>; Slices::CAPACITY],
    len: usize,
    /// Bytes in them.
    pub bytes: usize,
}

impl<'a> Slices<'a> {
    /// Slices handed to one `writev` at most (well under Linux's `IOV_MAX` of 1,024).
    pub const CAPACITY: usize = 64;
    /// Bytes gathered for one write at most (what a socket buffer takes at once, about).
    pub const BYTES_MAX: usize = 1 << 20;

    /// No slices yet.
    pub fn new() -> Slices<'a> {
        Slices { slices: [IoSlice::new(&[]); Slices::CAPACITY], len: 0, bytes: 0 }
    }

    /// Adds one; false when full (it was not added).
    pub fn push(&mut self, bytes: &'a [u8]) -> bool {
        if self.len >= Slices::CAPACITY || self.bytes >= Slices::BYTES_MAX {
            return false;
        }
        if !bytes.is_empty() {
            self.slices[self.len] = IoSlice::new(bytes);
            self.len += 1;
            self.bytes += bytes.len();
        }
        true
    }

    /// The slices.
    pub fn as_slices(&self) -> &[IoSlice<'a>] {
        &self.slices[..self.len]
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Default for Slices<'_> {
    fn default() -> Self {
        Slices::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(framed: &Framed) -> (u64, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(framed.bytes());
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        assert!(header.is_final && header.mask.is_none());
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        let start = cursor.position() as usize;
        (len, framed.bytes()[start..].to_vec())
    }

    #[test]
    fn messages_are_framed_with_the_shortest_header() {
        for size in [0, 125, 126, 65_535, 65_536, 200_000] {
            let text = "x".repeat(size);
            let framed = Framed::text(&text);
            let (len, payload) = parse(&framed);
            assert_eq!(len as usize, size);
            assert_eq!(payload, text.as_bytes());
            assert_eq!(framed.payload(), text.as_bytes());
        }
    }

    #[test]
    fn arrays_split_above_the_frame_limit_and_never_exceed_it() {
        let mut builder = ArrayBuilder::new(100);
        let event = br#"{"ev":"T","seq":1,"pad":"0123456789012345"}"#;
        let mut messages = Vec::new();
        for seq in 1..=10 {
            messages.extend(builder.push(event, seq));
        }
        messages.extend(builder.finish());
        assert!(builder.finish().is_none());
        let events: u32 = messages.iter().map(|m| m.events).sum();
        assert_eq!(events, 10);
        for message in &messages {
            assert!(message.payload().len() <= 100, "{}", message.payload().len());
            let value: serde_json::Value = serde_json::from_slice(message.payload()).unwrap();
            assert_eq!(value.as_array().unwrap().len() as u32, message.events);
        }
        assert_eq!(messages[0].seqs.0, 1);
        assert_eq!(messages.last().unwrap().seqs.1, 10);
        // One event above the limit still goes, alone.
        let mut builder = ArrayBuilder::new(10);
        assert!(builder.push(event, 1).is_none());
        assert_eq!(builder.push(event, 2).unwrap().events, 1);
    }

    #[test]
    fn a_builder_reuses_its_buffer_from_array_to_array_up_to_the_kept_size() {
        let mut builder = ArrayBuilder::new(1 << 20);
        let event = br#"{"ev":"T","seq":1}"#;
        assert!(builder.push(event, 1).is_none());
        let first = builder.finish().unwrap();
        let kept = builder.buf.as_ptr();
        for seq in 2..=100 {
            assert!(builder.push(event, seq).is_none());
            assert_eq!(builder.buf.as_ptr(), kept, "a new allocation for array {seq}");
            let framed = builder.finish().unwrap();
            assert_eq!((framed.bytes(), framed.seqs), (first.bytes(), (seq, seq)));
        }
        // A burst's array larger than the kept size gives its memory back.
        let big = vec![b'x'; ARRAY_BYTES_KEPT];
        assert!(builder.push(&big, 101).is_none());
        assert!(builder.finish().is_some());
        assert_eq!(builder.buf.capacity(), 0);
    }

    #[test]
    fn the_outbox_writes_in_order_keeps_a_begun_message_and_retracts_events() {
        let mut outbox = Outbox::default();
        let mut data = ArrayBuilder::new(1 << 20);
        data.push(b"{}", 7);
        outbox.push(data.finish().unwrap());
        outbox.push(Framed::text("status"));
        let mut data = ArrayBuilder::new(1 << 20);
        data.push(b"{}", 8);
        outbox.push(data.finish().unwrap());
        let total = outbox.bytes();
        let mut slices = Slices::new();
        outbox.slices(&mut slices);
        assert_eq!(slices.bytes, total);
        assert_eq!(slices.as_slices().len(), 3);
        let mut done = 0;
        assert_eq!(outbox.advance(3, |_| done += 1), 0);
        assert_eq!(outbox.bytes(), total - 3);
        // The begun first message stays; the status stays; the unbegun events go.
        assert_eq!(outbox.retract_events(), 1);
        assert_eq!(outbox.items.len(), 2);
        assert_eq!(outbox.discard(), 0, "only the begun message is left, and the status");
        assert_eq!(outbox.items.len(), 1);
        let rest = outbox.bytes();
        assert_eq!(outbox.advance(rest + 5, |_| done += 1), 5);
        assert!(outbox.is_empty());
        assert_eq!(done, 1);
    }
}
