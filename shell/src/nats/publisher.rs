//! The ingest's publisher: the emitter's [`NatsInlet`] encodes each batch into a byte ring;
//! the publisher's thread takes them out in order and publishes each to JetStream, keeping
//! at most `nats.in_flight_max` unacknowledged.
//!
//! # Overflow
//! The ring holds `nats.ring_bytes`. A batch that does not fit is dropped whole, its events
//! counted in `dropped_events`; the emitter never waits for NATS. When the ring has room
//! again the inlet writes a **hole** in its place (the dropped `seq` range), and the
//! publisher, reaching it, reads those events back from the event log
//! (`server.event_log_dir`) and publishes them, in order, before what follows
//! (`refilled_events`). Without an event log the hole stays, logged, and a gateway counts it
//! as a `seq` gap. While NATS is away the ring keeps
//! what fits, and what was published but not acknowledged is kept too and published again,
//! in order, when NATS answers (JetStream stores a batch once: `Nats-Msg-Id` is its first
//! `seq`, within `nats.duplicate_window_secs`).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use tokio::sync::Notify;

use super::{
    backoff, connect, encode_frames, pause, split, stream_config, stream_tail, unix_ns, NatsStatus,
    FORMAT, FORMAT_HEADER, SENT_HEADER, SEQ_HEADER, UNKNOWN_SYMBOL,
};
use crate::backoff::Backoff;
use crate::config::NatsSettings;
use crate::emitter::FrameBatch;
use crate::server::event_log::EventLogReader;

/// A published batch's acknowledgement, awaited across turns of the loop, and when it is
/// due (`nats.ack_timeout_ms` after its publish).
struct Ack {
    future: <PublishAckFuture as std::future::IntoFuture>::IntoFuture,
    due: tokio::time::Instant,
}

/// How an awaited acknowledgement ended, or the wait for it.
enum AckOutcome {
    Acked(Result<PublishAck, PublishError>),
    Late,
    /// New batches are in the ring: publish them, then wait again.
    More,
}

/// A batch's `Tickstock-Sent-Ns`: when the emitter handed it over, so that the hop's time
/// includes its wait in the ring and for the publisher (now, for one read back from the
/// event log: how late it is shows as the gateway's `seq` gap, not as transit).
fn sent_ns(batch: &Pending) -> u64 {
    if batch.handed_ns == 0 {
        unix_ns()
    } else {
        batch.handed_ns
    }
}

/// How long a hole waits for the event log to have its events before they count as lost.
const HOLE_WAIT_MAX: Duration = Duration::from_secs(5);

/// Ring header of one batch: payload length (u32), first and last `seq` (u64), events (u32),
/// and when the emitter handed it over (Unix ns, u64: where the ingest→gateway hop starts).
const HEADER: usize = 32;

/// The emitter's end: batches into the publisher's ring.
#[derive(Debug)]
pub struct NatsInlet {
    ring: rtrb::Producer<u8>,
    notify: Arc<Notify>,
    status: Arc<NatsStatus>,
    scratch: Vec<u8>,
    /// A message's payload at most (`nats.message_bytes_max`).
    message_bytes_max: usize,
    /// The last `seq` the stream held when the ingest started (none when NATS did not
    /// answer then): the events up to it are not published again.
    stream_held: Option<u64>,
    /// How long `append_waiting` waits for room (`nats.ack_timeout_ms`).
    wait_max: Duration,
    /// The first `seq` of a run of dropped batches, while one lasts.
    gap_from: Option<u64>,
}

impl NatsInlet {
    /// The last `seq` the stream held when the ingest started: a warm restart's replayed
    /// events after it are the ones to [`record`](crate::emitter::FrameSink::record) for it.
    /// `u64::MAX` when NATS did not answer then: no replayed event is recorded; live ones
    /// (the resume history's refill among them) are published, and the publisher leaves out
    /// what the stream turns out to hold once it reaches NATS.
    pub fn published_through(&self) -> u64 {
        self.stream_held.unwrap_or(u64::MAX)
    }

    /// Publishes `batch` (its events after [`NatsInlet::published_through`]), in messages of
    /// at most `nats.message_bytes_max`, or drops a message (counted) when the ring has no
    /// room for it.
    pub fn append(&mut self, batch: &FrameBatch) {
        self.append_within(batch, None);
    }

    /// As [`NatsInlet::append`], waiting up to `nats.ack_timeout_ms` a message for room: a
    /// warm restart's replayed events, which no client waits for, that the stream lacks.
    pub fn append_waiting(&mut self, batch: &FrameBatch) {
        self.append_within(batch, Some(self.wait_max));
    }

    fn append_within(&mut self, batch: &FrameBatch, wait: Option<Duration>) {
        let mut published = false;
        let held = self.stream_held.unwrap_or(0);
        let skip = batch.frames().partition_point(|frame| frame.seq <= held);
        let handed_ns = unix_ns();
        for (start, end) in split(batch, self.message_bytes_max) {
            let (start, end) = (start.max(skip), end);
            if start >= end {
                continue;
            }
            let frames = &batch.frames()[start..end];
            let (first, last) = (frames[0].seq, frames[frames.len() - 1].seq);
            self.scratch.clear();
            self.scratch.extend_from_slice(&[0; HEADER]);
            encode_frames(&mut self.scratch, batch, frames);
            let payload = (self.scratch.len() - HEADER) as u32;
            self.scratch[..4].copy_from_slice(&payload.to_le_bytes());
            self.scratch[4..12].copy_from_slice(&first.to_le_bytes());
            self.scratch[12..20].copy_from_slice(&last.to_le_bytes());
            self.scratch[20..24].copy_from_slice(&(frames.len() as u32).to_le_bytes());
            self.scratch[24..32].copy_from_slice(&handed_ns.to_le_bytes());
            let hole = self.gap_from.map(|from| (from, first - 1));
            let needed = self.scratch.len() + if hole.is_some() { HEADER } else { 0 };
            if let Some(wait) = wait {
                let deadline = std::time::Instant::now() + wait;
                while self.ring.slots() < needed && std::time::Instant::now() < deadline {
                    self.notify.notify_one();
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            match self.ring.write_chunk_uninit(needed) {
                Ok(chunk) => {
                    let mut marker = [0u8; HEADER];
                    if let Some((from, to)) = hole {
                        // A hole: no payload, no events, the dropped range.
                        marker[4..12].copy_from_slice(&from.to_le_bytes());
                        marker[12..20].copy_from_slice(&to.to_le_bytes());
                        self.gap_from = None;
                        tracing::warn!(from, to, "nats: the publisher's ring was full (nats.ring_bytes); these events are published from the event log, if there is one");
                    }
                    let marker = &marker[..if hole.is_some() { HEADER } else { 0 }];
                    chunk.fill_from_iter(marker.iter().chain(&self.scratch).copied());
                    published = true;
                }
                Err(_) => {
                    self.gap_from.get_or_insert(first);
                    self.status.dropped_events.fetch_add(frames.len() as u64, Ordering::Relaxed);
                }
            }
        }
        if published {
            self.notify.notify_one();
        }
    }
}

/// The publisher's thread.
#[derive(Debug)]
pub struct Publisher {
    thread: Option<JoinHandle<()>>,
    /// What it is doing.
    pub status: Arc<NatsStatus>,
}

impl Publisher {
    /// Starts the thread, reporting into `status`; NATS need not be up (it connects, and
    /// reconnects, on its own). With `event_log`, what the ring could not hold is read back
    /// from it.
    pub fn start(
        settings: &NatsSettings,
        status: Arc<NatsStatus>,
        event_log: Option<EventLogReader>,
    ) -> io::Result<(Publisher, NatsInlet)> {
        let (producer, consumer) = rtrb::RingBuffer::new(settings.ring_bytes as usize);
        let notify = Arc::new(Notify::new());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        // What the stream has already (a restart): those events are not published again.
        let wait = Duration::from_millis(settings.connect_timeout_ms.into());
        let asked = runtime.block_on(async {
            let client = connect(settings, "tickstock-ingest-start", &Arc::default()).await?;
            let context = async_nats::jetstream::new(client);
            tokio::time::timeout(wait, stream_tail(&context, settings))
                .await
                .map(|tail| tail.map(|tail| tail.last_seq))
                .unwrap_or_else(|_| Err(format!("no answer in {} ms", settings.connect_timeout_ms)))
        });
        let stream_held = match asked {
            Ok(seq) => {
                tracing::info!(stream = %settings.stream, last_seq = seq, "nats: the stream holds events up to here");
                Some(seq)
            }
            Err(why) => {
                tracing::warn!(%why, "nats: cannot ask the stream what it holds; a warm restart's replayed events beyond the resume history are not published (gateways will count any gap)");
                None
            }
        };
        let run = Run {
            settings: settings.clone(),
            ring: consumer,
            notify: Arc::clone(&notify),
            status: Arc::clone(&status),
            pending: VecDeque::new(),
            event_log,
            hole_waiting: None,
            stream_last: 0,
        };
        let thread = std::thread::Builder::new()
            .name("tickstock-nats".to_owned())
            .spawn(move || runtime.block_on(run.run()))?;
        let inlet = NatsInlet {
            ring: producer,
            notify,
            status: Arc::clone(&status),
            scratch: Vec::new(),
            message_bytes_max: settings.message_bytes_max as usize,
            stream_held,
            wait_max: Duration::from_millis(settings.ack_timeout_ms.into()),
            gap_from: None,
        };
        Ok((Publisher { thread: Some(thread), status }, inlet))
    }
}

impl Drop for Publisher {
    /// Waits for the thread: it publishes what its ring holds once the inlet is gone (or
    /// gives up on it, logged, if NATS does not answer).
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A batch taken out of the ring, until JetStream acknowledged it; or a hole (`events` 0,
/// no payload): `first..=last` were dropped and are to be read from the event log.
struct Pending {
    first: u64,
    last: u64,
    events: u64,
    payload: Bytes,
    /// When the emitter handed it over (Unix ns; 0 for one read back from the event log,
    /// which counts from its publish): its `Tickstock-Sent-Ns`.
    handed_ns: u64,
}

impl Pending {
    /// What of it comes after `seq`, the last the stream holds: all of it, its end, or
    /// nothing. Only an ingest that started before it could ask the stream publishes events
    /// the stream has (its resume history's refill after a warm restart).
    fn after(mut self, seq: u64) -> Option<Pending> {
        if self.first > seq {
            return Some(self);
        }
        if self.last <= seq {
            return None;
        }
        if self.events > 0 {
            match super::payload_after(&self.payload, FORMAT, seq) {
                Ok(Some((payload, first, events))) => {
                    self.payload = payload.into();
                    self.first = first;
                    self.events = events as u64;
                }
                // Neither happens to a payload this process encoded.
                Ok(None) | Err(_) => return None,
            }
        } else {
            self.first = seq + 1; // a hole: the rest of its range
        }
        Some(self)
    }
}

struct Run {
    settings: NatsSettings,
    ring: rtrb::Consumer<u8>,
    notify: Arc<Notify>,
    status: Arc<NatsStatus>,
    pending: VecDeque<Pending>,
    event_log: Option<EventLogReader>,
    /// Since when a hole has waited for the event log to write its events.
    hole_waiting: Option<std::time::Instant>,
    /// The last `seq` the stream held when last asked: what is taken from the ring up to it
    /// is not published (an ingest that started before it could ask: its history's refill).
    stream_last: u64,
}

impl Run {
    /// Replaces the hole at `index` of `pending` by batches read from the event log, as
    /// many as `in_flight_max` allows after it (the rest of the hole stays, for later).
    /// Without the log, or when it lacks them, the hole's events are lost: said, counted.
    /// False when the log has not written them yet: try again shortly.
    fn refill(&mut self, index: usize) -> bool {
        let hole = &self.pending[index];
        let (from, to) = (hole.first, hole.last);
        let room = (self.settings.in_flight_max as usize).saturating_sub(index).max(1);
        let message_max = self.settings.message_bytes_max as usize;
        let mut batches = Vec::new();
        let mut next = from;
        let mut later = false;
        if let Some(log) = &self.event_log {
            match log.open_at(from) {
                Ok(mut cursor) => {
                    let mut batch = FrameBatch::new(message_max / 2);
                    'read: while next <= to && batches.len() < room {
                        let read = cursor.read_slice(|record| {
                            if record.seq > to || !batch.has_room_for(record.json.len()) {
                                return false;
                            }
                            batch.push_raw(super::frame_of(record, UNKNOWN_SYMBOL, 0), record.json);
                            true
                        });
                        if !batch.is_empty() {
                            let mut payload = Vec::new();
                            encode_frames(&mut payload, &batch, batch.frames());
                            let (first, last) = (batch.frames()[0].seq, cursor.next_seq() - 1);
                            batches.push(Pending {
                                first,
                                last,
                                events: batch.len() as u64,
                                payload: payload.into(),
                                handed_ns: 0,
                            });
                            next = last + 1;
                            batch.clear();
                        }
                        match read {
                            Ok(0) if next <= to => {
                                later = true; // the writer has not written them yet
                                break 'read;
                            }
                            Ok(_) => {}
                            Err(error) => {
                                tracing::warn!(
                                    ?error,
                                    at = next,
                                    "nats: the event log cannot give a hole's events"
                                );
                                break 'read;
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(?error, from, "nats: the event log cannot give a hole's events")
                }
            }
        }
        let refilled: u64 = batches.iter().map(|b| b.events).sum();
        self.status.refilled_events.fetch_add(refilled, Ordering::Relaxed);
        let done = next > to;
        if refilled == 0 && !done {
            let since = *self.hole_waiting.get_or_insert_with(std::time::Instant::now);
            if later && since.elapsed() < HOLE_WAIT_MAX {
                return false;
            }
            // Nothing to be had: the hole stays a gap for the gateways.
            tracing::error!(from = next, to, "nats: these events cannot be published (no event log has them); gateways will count the gap");
            self.hole_waiting = None;
            self.pending.remove(index);
            return true;
        }
        self.hole_waiting = None;
        if done {
            self.pending.remove(index);
        } else {
            self.pending[index].first = next;
        }
        for (offset, batch) in batches.into_iter().enumerate() {
            self.pending.insert(index + offset, batch);
        }
        true
    }

    /// Drops the pending batches the stream holds already (up to `seq` `last_seq`, as its
    /// last message says): stored before a failure whose acknowledgement was lost.
    fn forget_stored(&mut self, last_seq: u64) {
        self.stream_last = last_seq;
        while self.pending.front().is_some_and(|front| front.events > 0 && front.last <= last_seq) {
            self.pop_published();
        }
        // What is left may still be held in part, by the ingest before this one (see
        // `Pending::after`).
        let pending = std::mem::take(&mut self.pending);
        self.pending = pending.into_iter().filter_map(|batch| batch.after(last_seq)).collect();
    }

    /// Takes the oldest pending batch off, the stream holding it: counted as published.
    fn pop_published(&mut self) {
        let batch = self.pending.pop_front().expect("Invariant: a batch is pending");
        let s = &self.status;
        s.published_batches.fetch_add(1, Ordering::Relaxed);
        s.published_events.fetch_add(batch.events, Ordering::Relaxed);
        s.last_seq.store(batch.last, Ordering::Relaxed);
    }

    /// Takes the next whole batch out of the ring (the inlet writes each whole, at once).
    fn take(&mut self) -> Option<Pending> {
        let mut header = [0u8; HEADER];
        {
            let chunk = self.ring.read_chunk(HEADER).ok()?;
            let (a, b) = chunk.as_slices();
            header[..a.len()].copy_from_slice(a);
            header[a.len()..].copy_from_slice(b);
        } // not committed: read again whole below
        let word =
            |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or_default());
        let half =
            |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().unwrap_or_default());
        let len = half(0) as usize;
        let chunk = self.ring.read_chunk(HEADER + len).ok()?;
        let (a, b) = chunk.as_slices();
        let mut payload = Vec::with_capacity(HEADER + len);
        payload.extend_from_slice(a);
        payload.extend_from_slice(b);
        chunk.commit_all();
        payload.drain(..HEADER);
        Some(Pending {
            first: word(4),
            last: word(12),
            events: half(20).into(),
            payload: payload.into(),
            handed_ns: word(24),
        })
    }

    /// NATS failed for `why`: said, then a back-off step; false when the inlet is gone and
    /// NATS has failed `failures` times in a row (3): what is left is given up.
    async fn retry(&mut self, why: String, failures: u32, backoff: &mut Backoff) -> bool {
        self.status.set_down(why);
        if self.ring.is_abandoned() && failures >= 3 {
            self.give_up();
            return false;
        }
        pause(backoff).await;
        true
    }

    async fn run(mut self) {
        let settings = self.settings.clone();
        let mut backoff = backoff(&settings);
        // Failures in a row since the last success (the inlet gone: give up at 3).
        let mut failures = 0u32;
        let client = loop {
            match connect(&settings, "tickstock-ingest", &self.status).await {
                Ok(client) => break client,
                Err(why) => {
                    failures += 1;
                    if !self.retry(why, failures, &mut backoff).await {
                        return;
                    }
                }
            }
        };
        let context = async_nats::jetstream::new(client);
        let ack_timeout = Duration::from_millis(settings.ack_timeout_ms.into());
        let in_flight_max = settings.in_flight_max as usize;
        let mut stream_ready = false;
        let mut acks: VecDeque<Ack> = VecDeque::new();
        // The stream's sequence of the last message known stored. Each publish expects the
        // stream to end where the messages before it will have left it
        // (`Nats-Expected-Last-Sequence`), so JetStream stores this ingest's messages in
        // order or not at all: a message lost with a dropping connection makes those
        // published after it fail, instead of being stored before it, and all go again.
        let mut stored_through = 0u64;
        loop {
            if !stream_ready {
                let ready = match ensure_stream(&context, &settings).await {
                    Ok(()) => stream_tail(&context, &settings).await,
                    Err(why) => Err(why),
                };
                match ready {
                    Ok(tail) => {
                        // What the stream holds already is not published again.
                        self.forget_stored(tail.last_seq);
                        stored_through = tail.stream_seq;
                        stream_ready = true;
                        self.status.set_up();
                        backoff.reset();
                    }
                    Err(why) => {
                        failures += 1;
                        if !self.retry(why, failures, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            while self.pending.len() < in_flight_max {
                let Some(batch) = self.take() else { break };
                if let Some(batch) = batch.after(self.stream_last) {
                    self.pending.push_back(batch);
                }
            }
            let mut failed = None;
            while acks.len() < self.pending.len() {
                if self.pending[acks.len()].events == 0 {
                    if self.refill(acks.len()) {
                        continue;
                    }
                    break; // its events are not in the log yet: after a pause
                }
                let batch = &self.pending[acks.len()];
                let expected = stored_through + acks.len() as u64;
                let message = PublishMessage::build()
                    .payload(batch.payload.clone())
                    .message_id(batch.first.to_string())
                    .expected_last_sequence(expected)
                    .header(SEQ_HEADER, format!("{}-{}", batch.first, batch.last).as_str())
                    .header(SENT_HEADER, sent_ns(batch).to_string().as_str())
                    .header(FORMAT_HEADER, FORMAT.to_string().as_str());
                match context.send_publish(settings.subject.clone(), message).await {
                    Ok(ack) => acks.push_back(Ack {
                        future: std::future::IntoFuture::into_future(ack),
                        due: tokio::time::Instant::now() + ack_timeout,
                    }),
                    Err(error) => {
                        failed = Some((format!("publish: {error}"), acks.len()));
                        break;
                    }
                }
            }
            if failed.is_none() {
                if let Some(ack) = acks.front_mut() {
                    // The oldest's acknowledgement, or new batches to publish meanwhile (up
                    // to `in_flight_max` in flight): a batch never waits for an earlier one's
                    // round trip to NATS.
                    let room = self.pending.len() < in_flight_max;
                    let outcome = tokio::select! {
                        biased;
                        result = tokio::time::timeout_at(ack.due, &mut ack.future) => {
                            result.map_or(AckOutcome::Late, AckOutcome::Acked)
                        }
                        () = self.notify.notified(), if room => AckOutcome::More,
                    };
                    match outcome {
                        AckOutcome::More => continue,
                        AckOutcome::Acked(Ok(ack)) => {
                            acks.pop_front();
                            stored_through = ack.sequence;
                            self.pop_published(); // an ack per pending batch
                            if !self.status.is_up() {
                                self.status.set_up();
                            }
                            failures = 0;
                            backoff.reset();
                            continue;
                        }
                        // Published, not acknowledged (refused, as those after a lost one
                        // are): it and those after it go again, once the stream's end is
                        // read again.
                        AckOutcome::Acked(Err(error)) => {
                            failed =
                                Some((format!("publish not acknowledged: {error}"), acks.len()));
                        }
                        AckOutcome::Late => {
                            failed = Some((
                                format!("no acknowledgement in {} ms", settings.ack_timeout_ms),
                                acks.len(),
                            ));
                        }
                    }
                }
            }
            if let Some((why, published)) = failed {
                // Everything not acknowledged goes again, in order, once NATS answers.
                self.status.republished_batches.fetch_add(published as u64, Ordering::Relaxed);
                acks.clear();
                failures += 1;
                if !self.retry(why, failures, &mut backoff).await {
                    return;
                }
                // The stream may be new (a server restarted without its store).
                stream_ready = false;
                continue;
            }
            if self.pending.is_empty() && self.ring.is_abandoned() && self.ring.is_empty() {
                return; // everything published
            }
            tokio::select! {
                () = self.notify.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// The inlet is gone and NATS does not answer: what is left is lost, and said.
    fn give_up(&mut self) {
        let mut events: u64 = self.pending.iter().map(|p| p.events).sum();
        let from = self.pending.front().map(|p| p.first);
        while let Some(batch) = self.take() {
            events += batch.events;
        }
        if events > 0 {
            tracing::error!(
                events,
                from,
                "nats: stopping with events not published (NATS does not answer)"
            );
        }
    }
}

/// Creates the stream, or brings its limits to the settings'.
async fn ensure_stream(
    context: &async_nats::jetstream::Context,
    settings: &NatsSettings,
) -> Result<(), String> {
    let config = stream_config(settings);
    match context.update_stream(&config).await {
        Ok(_) => Ok(()),
        Err(update) => match context.create_stream(config).await {
            Ok(_) => Ok(()),
            Err(create) => Err(format!("stream {}: {create} (update: {update})", settings.stream)),
        },
    }
}
