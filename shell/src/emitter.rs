//! The emitter: pulls the engine's events out of the multi-frequency buffer (swap-on-pull),
//! encodes each one once, and hands a batch of frames to the sink every cycle.
//!
//! A [`Frame`] is one event's JSON object inside the batch's byte buffer, with what the
//! fan-out needs to route it without decoding (`seq`, symbol, channel). The batch is the unit
//! the fan-out shares among connections: the server's sink (`crate::server::ServerSink`), or
//! JSON lines ([`JsonLinesSink`]); tests capture batches ([`CaptureSink`]).
//!
//! Every pulled event is encoded and handed on; a sink that fails is counted per frame
//! (`sink_failed`), so the emitter never loses an event silently.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickstock_engine::encode::encode_event;
use tickstock_engine::limits::EVENT_JSON_BYTES_MAX;
use tickstock_engine::mfbuf::MfConsumer;
use tickstock_engine::{Channel, Event, EventBody, SymbolId, SymbolNames, Ticker};

use crate::clock::Clock;
use crate::idle::{IdleStrategy, Idler, Waker};
use crate::tracer::{Counters, Histograms, LocalHistogram};

/// One encoded event in a [`FrameBatch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The event's `seq`.
    pub seq: u64,
    /// Its symbol.
    pub symbol: SymbolId,
    /// Its symbol's ticker, for routing by name without a lookup.
    pub ticker: Ticker,
    /// Its channel (`ev`).
    pub channel: Channel,
    /// What a client filter's price bounds test, raw fixed point: `p` of `T` and `HL`, `c` of
    /// bars, `fmv` of `FMV`; 0 for `TR` and `SV`, which price filters pass.
    pub price_raw: i64,
    /// What `min_volume` tests: `s` of `T`, `v` of bars and `HL`; `u64::MAX` for the others,
    /// which pass it.
    pub volume: u64,
    /// `TR` and `SV` strength, 1 weak to 3 strong; 0 for the others, which pass it.
    pub strength: u8,
    /// When its trade entered the ring (`ts_recv`, Unix ns) for a `T` event, else 0: where
    /// the server's tick-to-client latency starts.
    pub recv_ns: u64,
    /// The event's own time, Unix ms (`EventBody::time`): what `resume` by time seeks.
    pub t_ms: u64,
    /// Byte range of its JSON object in the batch (read it with [`FrameBatch::json`]).
    pub start: u32,
    /// End of that range (exclusive).
    pub end: u32,
}

/// The frames of one emitter cycle, in `seq` order.
///
/// # Overflow
/// Fixed capacity (`emitter_batch_bytes`); when the next event might not fit, the batch is
/// handed on early and a new one begins, so nothing is dropped and nothing reallocates.
#[derive(Debug)]
pub struct FrameBatch {
    bytes: Vec<u8>,
    frames: Vec<Frame>,
}

impl FrameBatch {
    /// A batch of `bytes_max` bytes.
    pub fn new(bytes_max: usize) -> FrameBatch {
        let frames_max = bytes_max / 64;
        FrameBatch { bytes: Vec::with_capacity(bytes_max), frames: Vec::with_capacity(frames_max) }
    }

    /// True when another event certainly fits.
    pub fn has_room(&self) -> bool {
        self.bytes.capacity() - self.bytes.len() >= EVENT_JSON_BYTES_MAX
            && self.frames.len() < self.frames.capacity()
    }

    /// Encodes `event` into the batch; the caller checked [`FrameBatch::has_room`].
    pub fn push(&mut self, event: &Event, ticker: Ticker) {
        debug_assert!(self.has_room(), "Invariant: the caller checks for room");
        let start = self.bytes.len() as u32;
        encode_event(&mut self.bytes, event, ticker.as_str());
        let end = self.bytes.len() as u32;
        let channel = event.body.channel();
        let (seq, symbol) = (event.seq, event.symbol);
        let (price_raw, volume, strength) = filter_fields(&event.body);
        let recv_ns = match &event.body {
            EventBody::Trade(trade) => trade.ts_recv.0,
            _ => 0,
        };
        self.frames.push(Frame {
            seq,
            symbol,
            ticker,
            channel,
            price_raw,
            volume,
            strength,
            recv_ns,
            t_ms: event.body.time().as_millis(),
            start,
            end,
        });
    }

    /// Appends a frame whose JSON is already encoded (a gateway's batch from NATS, and tests
    /// and benches that make their own frames); `frame.start` and `frame.end` are set here.
    /// The caller checked [`FrameBatch::has_room_for`] where it must not reallocate.
    pub fn push_raw(&mut self, mut frame: Frame, json: &[u8]) {
        frame.start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(json);
        frame.end = self.bytes.len() as u32;
        self.frames.push(frame);
    }

    /// Copies `other` into this batch (which must be as large), replacing its contents.
    pub fn copy_from(&mut self, other: &FrameBatch) {
        self.clear();
        self.bytes.extend_from_slice(&other.bytes);
        self.frames.extend_from_slice(&other.frames);
    }

    /// The frames.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The JSON object of `frame`.
    pub fn json(&self, frame: &Frame) -> &[u8] {
        &self.bytes[frame.start as usize..frame.end as usize]
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when the batch holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// True when a frame of `json_bytes` fits without reallocating.
    pub fn has_room_for(&self, json_bytes: usize) -> bool {
        self.bytes.capacity() - self.bytes.len() >= json_bytes
            && self.frames.len() < self.frames.capacity()
    }

    /// Empties the batch, keeping its capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.frames.clear();
    }
}

/// The fields client filters test (PROTOCOL.md section 4).
fn filter_fields(body: &EventBody) -> (i64, u64, u8) {
    let strength = |s: tickstock_engine::Strength| s as u8 + 1;
    match body {
        EventBody::Trade(trade) => (trade.price.raw(), trade.size.0, 0),
        EventBody::Bar(bar) => (bar.close.raw(), bar.volume.0, 0),
        EventBody::HighLow(event) => (event.price.raw(), event.size.0, 0),
        EventBody::Trend(event) => (0, u64::MAX, strength(event.strength)),
        EventBody::Surge(event) => (0, u64::MAX, strength(event.strength)),
        EventBody::Fmv(event) => (event.value.raw(), u64::MAX, 0),
        EventBody::Activity(_) => (0, u64::MAX, 0),
    }
}

/// Where batches go: the fan-out, stdout, a test's capture.
pub trait FrameSink: Send {
    /// Takes one batch. An error counts the batch's frames as failed.
    fn emit(&mut self, batch: &FrameBatch) -> io::Result<()>;
    /// The pipeline has stopped: flush.
    fn finish(&mut self) -> io::Result<()>;

    /// How many of a warm restart's replayed events it takes: the newest this many (the
    /// server: its resume history's `history_max_events`, which they refill). 0, for other
    /// sinks: they emitted them before the restart and get only live events.
    fn history_events(&self) -> usize {
        0
    }

    /// The `seq` after which a warm restart's replayed events are missing from what this
    /// sink keeps on disk (the server's event log: what it held at start), so they are
    /// handed to [`record`](FrameSink::record) as the replay passes; `u64::MAX` (other
    /// sinks): none.
    fn record_after(&self) -> u64 {
        u64::MAX
    }

    /// Takes replayed events past [`record_after`](FrameSink::record_after) to keep, not to
    /// send (no client sees them live: they are history).
    fn record(&mut self, _batch: &FrameBatch) -> io::Result<()> {
        Ok(())
    }
}

/// Writes each frame as a JSON line.
#[derive(Debug)]
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonLinesSink<W> {
    /// A sink over `out` (buffer it: the sink writes small pieces).
    pub fn new(out: W) -> JsonLinesSink<W> {
        JsonLinesSink { out }
    }
}

impl<W: Write + Send> FrameSink for JsonLinesSink<W> {
    fn emit(&mut self, batch: &FrameBatch) -> io::Result<()> {
        for frame in batch.frames() {
            self.out.write_all(batch.json(frame))?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Discards batches (benchmarks, `record`).
#[derive(Debug, Default)]
pub struct NullSink;

impl FrameSink for NullSink {
    fn emit(&mut self, _batch: &FrameBatch) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Keeps every frame's JSON, in order (tests).
#[derive(Clone, Debug, Default)]
pub struct CaptureSink {
    /// The frames' JSON objects, with their `seq`.
    pub frames: Arc<Mutex<Vec<(u64, String)>>>,
}

impl FrameSink for CaptureSink {
    fn emit(&mut self, batch: &FrameBatch) -> io::Result<()> {
        let mut frames = self.frames.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for frame in batch.frames() {
            frames.push((frame.seq, String::from_utf8_lossy(batch.json(frame)).into_owned()));
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the emitter thread needs.
#[derive(Debug)]
pub struct EmitterContext {
    /// The buffer's consumer side.
    pub consumer: MfConsumer,
    /// Names for `sym`.
    pub symbols: Arc<SymbolNames>,
    /// Stage counters.
    pub counters: Arc<Counters>,
    /// Shared histograms.
    pub histograms: Arc<Histograms>,
    /// The runtime clock.
    pub clock: Clock,
    /// Cycle length; zero pulls continuously.
    pub cycle: Duration,
    /// Batch capacity in bytes.
    pub batch_bytes: usize,
    /// How often histograms are published.
    pub publish_interval: Duration,
    /// Record ring-entry-to-frame latency (live clocks only: a replay's `ts_recv` is history).
    pub measure_latency: bool,
    /// Hand a pulled batch on only once the journal has written every tick pushed before the
    /// pull (`journal.emit_after_write` with a journal).
    pub after_journal: bool,
}

struct Emitter {
    ctx: EmitterContext,
    /// During a warm restart's replay, for a sink that keeps history: the newest replayed
    /// events, raw, at most `history_events` of them. Older ones would only be encoded to be
    /// evicted from the history, so they are never encoded; these are, when the replay ends.
    deferred: VecDeque<Event>,
    /// Replayed events dropped from `deferred` unencoded.
    deferred_dropped: u64,
    /// Replayed events handed to the sink's `record` (missing from its event log).
    recorded: u64,
    batch: FrameBatch,
    sink: Box<dyn FrameSink>,
    counts: [u64; 5],
    cycle_ns: LocalHistogram,
    latency_ns: LocalHistogram,
    sink_ok: bool,
}

/// Spins on the journal writer's progress before parking (see `await_journal`).
const JOURNAL_SPINS: u32 = 256;
/// Each park while the journal writer catches up.
const JOURNAL_PARK: Duration = Duration::from_micros(20);

const PULLED: usize = 0;
const ENCODED: usize = 1;
const EMITTED: usize = 2;
const BATCHES: usize = 3;
const FAILED: usize = 4;

/// Runs the emitter until the engine is done and the buffer is empty. The emitter's
/// [`Waker`] goes out through `waker_out` first, for the engine thread.
pub fn run(
    ctx: EmitterContext,
    sink: Box<dyn FrameSink>,
    idle: IdleStrategy,
    waker_out: std::sync::mpsc::Sender<Waker>,
) {
    let mut idler = Idler::new(idle);
    let _ = waker_out.send(idler.waker());
    let batch = FrameBatch::new(ctx.batch_bytes);
    let mut emitter = Emitter {
        ctx,
        deferred: VecDeque::new(),
        deferred_dropped: 0,
        recorded: 0,
        batch,
        sink,
        counts: [0; 5],
        cycle_ns: LocalHistogram::default(),
        latency_ns: LocalHistogram::default(),
        sink_ok: true,
    };
    let mut next_cycle = Instant::now();
    let mut next_publish = Instant::now() + emitter.ctx.publish_interval;
    let mut empty_after_done = 0;
    loop {
        let cycle = emitter.ctx.cycle;
        if !cycle.is_zero() {
            while Instant::now() < next_cycle {
                idler.idle_at_most(next_cycle - Instant::now(), || false);
            }
            next_cycle = (next_cycle + cycle).max(Instant::now());
        }
        // Acquire pairs with the engine's Release store: everything it published before
        // saying it is done is in the buffer for the pulls below.
        let done = emitter.ctx.counters.engine_done.load(Ordering::Acquire);
        let pulled = emitter.cycle();
        if Instant::now() >= next_publish {
            emitter.publish_histograms(false);
            next_publish = Instant::now() + emitter.ctx.publish_interval;
        }
        if done && pulled == 0 {
            // Two empty pulls after `done`: both sets are drained (a pull may be pending).
            empty_after_done += 1;
            if empty_after_done >= 3 {
                break;
            }
        }
        if cycle.is_zero() {
            idler.idle(pulled, || false);
        }
    }
    emitter.publish_histograms(true);
    if let Err(error) = emitter.sink.finish() {
        tracing::error!(%error, "output failed at shutdown");
    }
}

impl Emitter {
    /// One cycle: pull, encode, hand on. Returns the events pulled.
    fn cycle(&mut self) -> usize {
        let started = self.ctx.clock.now();
        let mut pulled = loop {
            match self.ctx.consumer.pull() {
                Some(pulled) => break pulled,
                // The engine is mid-batch on the set just taken; its batches are short (one
                // chunk), so wait for it here rather than a whole cycle.
                None => std::thread::yield_now(),
            }
        };
        if self.ctx.after_journal {
            await_journal(&self.ctx.counters);
        }
        // Acquire, after the pull: pairs with the engine's Release stores when a warm
        // restart's replay ends; an event pulled after them has a `seq` at or above
        // `live_from_seq`, and one pulled while `warming` still reads true is a replayed one.
        let live_seq = self.ctx.counters.live_from_seq.load(Ordering::Acquire);
        let history = self.sink.history_events();
        if history > 0 && self.ctx.counters.warming.load(Ordering::Acquire) {
            // Replayed events past what the sink's event log held at start are missing from
            // it (its writer had not written them before the kill, or the log is new): they
            // are encoded and logged as the replay passes, whatever the history keeps. (A
            // sink with no history has no log: `record_after` is only the server's.)
            let record_after = self.sink.record_after();
            let (deferred, dropped) = (&mut self.deferred, &mut self.deferred_dropped);
            let (batch, sink, recorded) = (&mut self.batch, &mut self.sink, &mut self.recorded);
            let symbols = &self.ctx.symbols;
            let mut count = 0;
            pulled.for_each_in_seq(|event| {
                count += 1;
                if event.seq > record_after {
                    record(batch, sink.as_mut(), symbols, event, recorded);
                }
                if deferred.len() == history {
                    deferred.pop_front();
                    *dropped += 1;
                }
                deferred.push_back(*event);
            });
            drop(pulled);
            if !batch.is_empty() {
                let _ = sink.record(batch);
                batch.clear();
            }
            self.counts[PULLED] += count as u64;
            self.ctx.counters.pulled.set(self.counts[PULLED]);
            return count;
        }
        if self.recorded > 0 {
            tracing::info!(
                after_seq = self.sink.record_after(),
                events = self.recorded,
                "warm restart: the replayed events the event log lacked are logged"
            );
            self.recorded = 0;
        }
        if !self.deferred.is_empty() {
            tracing::info!(
                kept = self.deferred.len(),
                not_encoded = self.deferred_dropped,
                "warm restart: the newest replayed events refill the resume history; older ones are beyond it"
            );
            let deferred = std::mem::take(&mut self.deferred);
            for event in &deferred {
                if !self.batch.has_room() {
                    hand_on(
                        &mut self.batch,
                        self.sink.as_mut(),
                        &mut self.counts,
                        &mut self.sink_ok,
                    );
                }
                let ticker = self.ctx.symbols.ticker(event.symbol).unwrap_or_default();
                self.batch.push(event, ticker);
            }
            self.counts[ENCODED] += deferred.len() as u64;
        }
        let live_from = if history > 0 { 0 } else { live_seq };
        let mut count = 0;
        let mut skipped = 0u64;
        let (batch, sink, counts) = (&mut self.batch, &mut self.sink, &mut self.counts);
        let (symbols, latency, sink_ok) =
            (&self.ctx.symbols, &mut self.latency_ns, &mut self.sink_ok);
        let (clock, measure) = (self.ctx.clock, self.ctx.measure_latency);
        pulled.for_each_in_seq(|event| {
            count += 1;
            if event.seq < live_from {
                // A warm restart's replay of what this sink had before the restart.
                skipped += 1;
                return;
            }
            if !batch.has_room() {
                hand_on(batch, sink.as_mut(), counts, sink_ok);
            }
            let ticker = symbols.ticker(event.symbol).unwrap_or_default();
            batch.push(event, ticker);
            // A replayed trade's `ts_recv` is history, not latency.
            if let (true, EventBody::Trade(trade)) = (measure && event.seq >= live_seq, &event.body)
            {
                // Ring entry to encoded frame: one clock read per trade (about 20 ns).
                latency.record_n(clock.now().0.saturating_sub(trade.ts_recv.0), 1);
            }
        });
        drop(pulled);
        counts[PULLED] += count as u64;
        counts[ENCODED] += count as u64 - skipped;
        if !batch.is_empty() {
            hand_on(batch, sink.as_mut(), counts, sink_ok);
        }
        let ended = self.ctx.clock.now();
        if count > 0 {
            self.cycle_ns.record_n(ended.0.saturating_sub(started.0), 1);
        }
        let c = &self.ctx.counters;
        c.pulled.set(counts[PULLED]);
        c.encoded.set(counts[ENCODED]);
        c.emitted.set(counts[EMITTED]);
        c.emitted_batches.set(counts[BATCHES]);
        c.sink_failed.set(counts[FAILED]);
        count
    }

    fn publish_histograms(&mut self, last: bool) {
        let h = &self.ctx.histograms;
        if last {
            self.cycle_ns.publish_final(&h.emitter_cycle_ns);
            self.latency_ns.publish_final(&h.ring_to_frame_ns);
        } else {
            self.cycle_ns.publish(&h.emitter_cycle_ns);
            self.latency_ns.publish(&h.ring_to_frame_ns);
        }
    }
}

/// Waits until the journal writer has written every tick the engine pushed before the
/// events just pulled were published. Acquire pairs with the engine's Release store of
/// `journal_pushed` (made before it published the tick's events, which the pull
/// acquired) and with the writer's of `journal_taken` (after its `write`). The writer is
/// woken at each push and writes at once, so this is microseconds; a writer that cannot
/// write counts the records failed and moves on, and it stops only once its ring is
/// empty, so the wait ends.
fn await_journal(counters: &Counters) {
    let pushed = counters.journal_pushed.load(Ordering::Acquire);
    let mut rounds = 0u32;
    while counters.journal_taken.load(Ordering::Acquire) < pushed {
        rounds += 1;
        if rounds < JOURNAL_SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(JOURNAL_PARK);
        }
    }
}

/// Adds a replayed event to `batch` for the sink's `record`, handing a full batch over first.
fn record(
    batch: &mut FrameBatch,
    sink: &mut dyn FrameSink,
    symbols: &SymbolNames,
    event: &Event,
    recorded: &mut u64,
) {
    if !batch.has_room() {
        // The sink's log counts what it could not keep; nothing here to add.
        let _ = sink.record(batch);
        batch.clear();
    }
    batch.push(event, symbols.ticker(event.symbol).unwrap_or_default());
    *recorded += 1;
}

fn hand_on(
    batch: &mut FrameBatch,
    sink: &mut dyn FrameSink,
    counts: &mut [u64; 5],
    sink_ok: &mut bool,
) {
    let frames = batch.len() as u64;
    match sink.emit(batch) {
        Ok(()) => {
            counts[EMITTED] += frames;
            counts[BATCHES] += 1;
        }
        Err(error) => {
            if *sink_ok {
                tracing::error!(%error, "output failed; frames are counted as sink_failed from now");
                *sink_ok = false;
            }
            counts[FAILED] += frames;
        }
    }
    batch.clear();
}
