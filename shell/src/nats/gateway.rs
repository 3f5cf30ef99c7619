//! A gateway's consumer: the stream read from JetStream with an ordered consumer (it
//! recreates itself after a reconnect and goes on from the last message it delivered), each
//! message rebuilt into a [`FrameBatch`] and handed to the server's sink exactly as the
//! emitter of `--role all` hands its batches, so the gateway's clients get the same bytes and
//! the same `seq`.
//!
//! Without an event log it starts at the stream's newest message: a `resume` older than its
//! memory history gets `resume_failed` with the oldest `seq` it has. With one
//! (`server.event_log_dir`) it first fills the log from the stream, from where the log ends
//! (or the stream's first message), refusing clients meanwhile (`/health`: `warming`), then
//! serves: a client may resume on it from anything the stream or its log holds.
//!
//! A message whose first `seq` is not the one after the last handed on is a gap (counted in
//! `gap_events`, logged with its range) or, when its events were handed on already, a
//! duplicate (skipped, counted). A message that is not a batch is skipped and counted.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures_util::StreamExt;

use super::{
    backoff, connect, decode_batch, pause, unix_ns, NatsStatus, FORMAT_HEADER, SENT_HEADER,
};
use crate::config::NatsSettings;
use crate::emitter::{FrameBatch, FrameSink};
use crate::tracer::Counters;

/// The consumer's thread.
#[derive(Debug)]
pub struct Gateway {
    thread: Option<JoinHandle<io::Result<()>>>,
    /// What it is doing.
    pub status: Arc<NatsStatus>,
}

impl Gateway {
    /// Starts the thread, feeding `sink` until `stop` is raised (checked at least every
    /// 100 ms) and reporting into `status`. NATS need not be up: it connects, and
    /// reconnects, on its own.
    pub fn start(
        settings: &NatsSettings,
        batch_bytes: usize,
        sink: Box<dyn FrameSink>,
        stop: Arc<AtomicBool>,
        status: Arc<NatsStatus>,
        counters: Arc<Counters>,
    ) -> io::Result<Gateway> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let run = Run {
            settings: settings.clone(),
            status: Arc::clone(&status),
            sink,
            batch: FrameBatch::new(batch_bytes),
            next_seq: None,
            stream_seq: None,
            backfilling: false,
            counters,
            stop,
            bad_logged: None,
        };
        let thread = std::thread::Builder::new()
            .name("tickstock-nats".to_owned())
            .spawn(move || runtime.block_on(run.run()))?;
        Ok(Gateway { thread: Some(thread), status })
    }

    /// Waits for the thread (after `stop`): why it ended, if it failed.
    pub fn wait(mut self) -> io::Result<()> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the NATS consumer's thread panicked")),
            None => Ok(()),
        }
    }
}

struct Run {
    settings: NatsSettings,
    status: Arc<NatsStatus>,
    sink: Box<dyn FrameSink>,
    batch: FrameBatch,
    /// The `seq` the next batch should start at (none before the first).
    next_seq: Option<u64>,
    /// The stream's sequence of the last message taken (none before the first).
    stream_seq: Option<u64>,
    /// Filling the event log from the stream: messages go to the log only, until the
    /// newest; `counters.warming` is raised meanwhile.
    backfilling: bool,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    /// When a bad message was last logged, and how many were skipped since without a line:
    /// a stream of them (a newer ingest's format) is one line per [`BAD_LOG_EVERY`].
    bad_logged: Option<(Instant, u64)>,
}

/// A stream of bad messages is logged at most once in this time (each is counted).
const BAD_LOG_EVERY: Duration = Duration::from_secs(10);

impl Run {
    fn stopped(&self) -> bool {
        // Relaxed: a polled flag.
        self.stop.load(Ordering::Relaxed)
    }

    async fn run(mut self) -> io::Result<()> {
        let settings = self.settings.clone();
        let mut backoff = backoff(&settings);
        let client = loop {
            if self.stopped() {
                return self.sink.finish();
            }
            match connect(&settings, "tickstock-gateway", &self.status).await {
                Ok(client) => break client,
                Err(why) => {
                    self.status.set_down(why);
                    pause(&mut backoff).await;
                }
            }
        };
        let context = async_nats::jetstream::new(client);
        let log_through = self.sink.record_after();
        if log_through != u64::MAX {
            // An event log: it gets what the stream holds after what it has, first.
            loop {
                if self.stopped() {
                    return self.sink.finish();
                }
                match backfill_start(&context, &settings, log_through).await {
                    Ok((start, last)) => {
                        self.stream_seq = start.checked_sub(1);
                        self.backfilling = start <= last;
                        tracing::info!(
                            log_through,
                            stream_from = start,
                            stream_last = last,
                            "gateway: filling the event log from the stream"
                        );
                        break;
                    }
                    Err(why) => {
                        self.status.set_down(why);
                        pause(&mut backoff).await;
                    }
                }
            }
            if !self.backfilling {
                self.caught_up();
            }
        }
        while !self.stopped() {
            // (Re)opens the consumer: after a failure it goes on after the last `seq` handed
            // on (by the stream's sequence of that message), else at the newest.
            let stream = match context.get_stream(&settings.stream).await {
                Ok(stream) => stream,
                Err(error) => {
                    self.status.set_down(format!("stream {}: {error}", settings.stream));
                    pause(&mut backoff).await;
                    continue;
                }
            };
            let deliver_policy = match self.stream_seq {
                Some(seq) => DeliverPolicy::ByStartSequence { start_sequence: seq + 1 },
                None => DeliverPolicy::New,
            };
            let config = OrderedConfig {
                filter_subject: settings.subject.clone(),
                deliver_policy,
                ..Default::default()
            };
            let messages = match stream.create_consumer(config).await {
                Ok(consumer) => consumer.messages().await,
                Err(error) => {
                    self.status.set_down(format!("consumer: {error}"));
                    pause(&mut backoff).await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(messages) => messages,
                Err(error) => {
                    self.status.set_down(format!("consumer: {error}"));
                    pause(&mut backoff).await;
                    continue;
                }
            };
            self.status.set_up();
            backoff.reset();
            // A reconnect (a NATS server restarted, say) may leave the consumer behind on
            // the server: it is opened again at once, not after its missed heartbeats.
            // (At least the first connect: its event may come after the consumer opened.)
            let connects = self.status.connects.load(Ordering::Relaxed).max(1);
            loop {
                let next = tokio::select! {
                    next = messages.next() => next,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if self.stopped() {
                            return self.sink.finish();
                        }
                        if self.status.connects.load(Ordering::Relaxed) != connects {
                            break;
                        }
                        continue;
                    }
                };
                match next {
                    Some(Ok(message)) => {
                        if !self.status.is_up() {
                            self.status.set_up();
                        }
                        self.handle(&message)?;
                    }
                    Some(Err(error)) => {
                        // The ordered consumer resets itself on most errors; this one it
                        // gave up on.
                        self.status.set_down(format!("consumer: {error}"));
                        break;
                    }
                    None => {
                        self.status.set_down("consumer: the stream of messages ended".to_owned());
                        break;
                    }
                }
            }
            pause(&mut backoff).await;
        }
        self.sink.finish()
    }

    /// Rebuilds the batch of `payload` into `self.batch`, without the events handed on
    /// already (a message that repeats the start of one before it: counted as a
    /// duplicate); its first and last `seq`.
    fn decode(&mut self, payload: &[u8], format: u32) -> Result<(u64, u64), super::BadMessage> {
        let (first, last) = decode_batch(payload, format, &mut self.batch)?;
        match self.next_seq {
            Some(next) if first < next && next <= last => {
                self.status.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                let rest = super::payload_after(payload, format, next - 1)?;
                let (rest, ..) = rest.ok_or_else(|| super::BadMessage("no events".to_owned()))?;
                decode_batch(&rest, format, &mut self.batch)
            }
            _ => Ok((first, last)),
        }
    }

    /// The event log has what the stream held: clients are admitted.
    fn caught_up(&mut self) {
        self.backfilling = false;
        // Release: pairs with the event loops' Acquire loads.
        self.counters.warming.store(false, Ordering::Release);
        tracing::info!(
            events = self.status.consumed_events.load(Ordering::Relaxed),
            "gateway: the event log has what the stream held; serving"
        );
    }

    /// One message: rebuilt and handed to the sink, or counted as a gap's end, a duplicate
    /// or a bad message.
    fn handle(&mut self, message: &async_nats::jetstream::Message) -> io::Result<()> {
        if let Ok(info) = message.info() {
            self.stream_seq = Some(info.stream_sequence);
        }
        let status = Arc::clone(&self.status);
        // No header: an ingest before format 2.
        let format = match message.headers.as_ref().and_then(|h| h.get(FORMAT_HEADER)) {
            None => Ok(1),
            Some(value) => value.as_str().parse::<u32>(),
        };
        let decoded = match format {
            Ok(format) => self.decode(&message.payload, format),
            Err(_) => Err(super::BadMessage(format!("a {FORMAT_HEADER} header that is no number"))),
        };
        let (first, last) = match decoded {
            Ok(range) => range,
            Err(bad) => {
                status.bad_messages.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                match &mut self.bad_logged {
                    Some((at, unlogged)) if now.duration_since(*at) < BAD_LOG_EVERY => {
                        *unlogged += 1;
                    }
                    logged => {
                        let before = logged.map_or(0, |(_, unlogged)| unlogged);
                        tracing::warn!(subject = %message.subject, why = bad.0, more_since_the_last_line = before, "nats: skipped a message that is not a batch");
                        *logged = Some((now, 0));
                    }
                }
                return Ok(());
            }
        };
        let sent = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SENT_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        if let Some(next) = self.next_seq {
            if last < next {
                status.duplicate_batches.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            debug_assert!(first >= next, "Invariant: `decode` leaves out what was handed on");
            if first > next {
                status.gap_events.fetch_add(first - next, Ordering::Relaxed);
                tracing::warn!(from = next, to = first - 1, "nats: the stream lacks these events");
            }
        }
        self.next_seq = Some(last + 1);
        let pending = message.info().map_or(0, |info| info.pending);
        if self.backfilling && pending > 0 {
            self.sink.record(&self.batch)?;
        } else {
            if self.backfilling {
                self.caught_up();
            }
            self.sink.emit(&self.batch)?;
            // Live batches only: a backfilled one is as old as the stream.
            if let Some(sent) = sent {
                let transit = unix_ns().saturating_sub(sent);
                status.transit_ns.store(transit, Ordering::Relaxed);
                status.transit.record(transit);
            }
        }
        status.consumed_batches.fetch_add(1, Ordering::Relaxed);
        status.consumed_events.fetch_add(self.batch.len() as u64, Ordering::Relaxed);
        status.last_seq.store(last, Ordering::Relaxed);
        if status.first_seq.load(Ordering::Relaxed) == 0 {
            status.first_seq.store(first, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Where to fill an event log that holds up to `log_through` from: the stream's sequence of
/// the first message with a later `seq` (the stream's first when the log is empty), and the
/// stream's last sequence. A log that ends before the stream begins keeps a hole (its reader
/// refuses a resume across it).
async fn backfill_start(
    context: &async_nats::jetstream::Context,
    settings: &NatsSettings,
    log_through: u64,
) -> Result<(u64, u64), String> {
    let mut stream = context
        .get_stream(&settings.stream)
        .await
        .map_err(|error| format!("stream {}: {error}", settings.stream))?;
    let state = stream.info().await.map_err(|error| format!("stream info: {error}"))?.state.clone();
    if state.messages == 0 || log_through == 0 {
        return Ok((state.first_sequence.max(1), state.last_sequence));
    }
    let (mut lo, mut hi) = (state.first_sequence, state.last_sequence + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let last = match stream.get_raw_message(mid).await {
            Ok(message) => super::last_seq_of(&message.headers),
            Err(_) => None, // gone since (retention): as if older
        };
        if last.is_some_and(|last| last > log_through) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok((lo, state.last_sequence))
}
