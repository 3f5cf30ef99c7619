//! Scale-out over NATS JetStream (`docs/scale-out.md`): an ingest process (`serve --role
//! ingest`) publishes every emitter cycle's [`FrameBatch`] to a JetStream stream
//! ([`publisher`]); gateway processes (`--role gateway`) consume it and hand each batch to
//! their server exactly as an emitter would ([`gateway`]), so a gateway's clients get the same
//! bytes and the same `seq` as the ingest's.
//!
//! # The message
//! One NATS message per batch, on `nats.subject`, with headers `Nats-Msg-Id` (the batch's
//! first `seq`: JetStream stores a republished batch once), `Tickstock-Seq` (`first-last`) and
//! `Tickstock-Sent-Ns` (the ingest's Unix time when its emitter handed the batch over, ns:
//! where the ingest→gateway latency starts), and `Tickstock-Format` ([`FORMAT`]). The
//! payload is the event count `n` (u32, little-endian), `n` times the frame's `recv_ns`
//! (u64), `n` times its symbol index
//! (the ingest's [`SymbolId`], u32), then the batch's events as event log records
//! ([`crate::server::event_log`]: `seq`, time, channel, ticker, filter fields, the JSON, and a
//! CRC), so a gateway rebuilds the batch without parsing JSON and detects a damaged message.
//!
//! Nothing here runs on the engine, the emitter or an event loop: the NATS client runs on a
//! small runtime of its own on the publisher's and the consumer's thread.

pub mod gateway;
pub mod publisher;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tickstock_engine::SymbolId;

use crate::backoff::Backoff;
use crate::config::NatsSettings;
use crate::emitter::{Frame, FrameBatch};
use crate::server::event_log::{self, Decode};
use crate::tracer::SharedHistogram;

/// Header: the batch's `seq` range, `first-last`.
pub const SEQ_HEADER: &str = "Tickstock-Seq";
/// Header: the ingest's Unix time when its emitter handed the batch to the publisher, ns.
pub const SENT_HEADER: &str = "Tickstock-Sent-Ns";
/// Header: the payload's layout, [`FORMAT`]; a message without it is format 1.
pub const FORMAT_HEADER: &str = "Tickstock-Format";
/// The payload's layout this build writes: 2, with each event's symbol index. Format 1 (the
/// ingests before it) had none; a gateway reads both, so a stream that still retains format
/// 1 messages is served, and refuses (counted, as a bad message) any other.
pub const FORMAT: u32 = 2;
/// The symbol index of an event whose ingest id is not known (a format 1 message, an event
/// read back from the event log): above every id an engine gives, so the memory history
/// finds the event's ticker by name.
pub const UNKNOWN_SYMBOL: SymbolId = SymbolId(u32::MAX - 1);

/// What the NATS side of this process is doing, for `/health` and `/metrics`. Written by
/// the publisher's or the consumer's thread, read by the event loops.
#[derive(Debug, Default)]
pub struct NatsStatus {
    up: AtomicBool,
    last_failure: Mutex<Option<String>>,
    /// Batches published and acknowledged by JetStream (the ingest).
    pub published_batches: AtomicU64,
    /// Their events.
    pub published_events: AtomicU64,
    /// Events dropped because the publisher's ring was full (the ingest; `nats.ring_bytes`).
    pub dropped_events: AtomicU64,
    /// Of those, events read back from the event log and published after all (the ingest).
    pub refilled_events: AtomicU64,
    /// Batches published again after a failure or a reconnect (JetStream stores each once).
    pub republished_batches: AtomicU64,
    /// Times the connection was lost.
    pub disconnects: AtomicU64,
    /// Times it connected (the first time and each reconnect).
    pub connects: AtomicU64,
    /// The last `seq` acknowledged (ingest) or handed to the server (gateway).
    pub last_seq: AtomicU64,
    /// The first `seq` a gateway handed to its server (0 before it): where its memory
    /// history begins, if it has no event log (a gateway that started late).
    pub first_seq: AtomicU64,
    /// Batches consumed (the gateway).
    pub consumed_batches: AtomicU64,
    /// Their events.
    pub consumed_events: AtomicU64,
    /// Events the stream lacked: `seq`s skipped between two consumed batches (the gateway).
    pub gap_events: AtomicU64,
    /// Batches received again, wholly or in part, and not handed on (the gateway; of one
    /// that repeats the start of an earlier one, the rest is).
    pub duplicate_batches: AtomicU64,
    /// Messages that were not a batch (damaged, or not TickStock's), skipped and counted.
    pub bad_messages: AtomicU64,
    /// The last batch's ingest→gateway time, ns (the gateway): from the ingest's emitter
    /// handing it to the publisher to the gateway's hand-off to its server.
    pub transit_ns: AtomicU64,
    /// The same for every batch (`nats_transit_seconds`).
    pub transit: SharedHistogram,
}

impl NatsStatus {
    /// Connected and working.
    pub fn set_up(&self) {
        // Relaxed: a status flag, read for reports.
        self.up.store(true, Ordering::Relaxed);
    }

    /// Away, and why.
    pub fn set_down(&self, why: String) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(%why, "nats: away");
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// Whether it is connected and working.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why it is not up (`None` when it is).
    pub fn problem(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        let last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(format!("nats down: {}", last.unwrap_or_else(|| "not connected yet".to_owned())))
    }
}

/// The reconnect back-off of both threads: `retry_ms_min`, doubling up to `retry_ms_max`,
/// from the start again after a success.
pub(crate) fn backoff(settings: &NatsSettings) -> Backoff {
    let ms = |ms: u32| Duration::from_millis(ms.into());
    Backoff::new(ms(settings.retry_ms_min), ms(settings.retry_ms_max))
}

/// Waits the back-off's next step.
pub(crate) async fn pause(backoff: &mut Backoff) {
    tokio::time::sleep(backoff.next_wait()).await;
}

/// The last `seq` of a message, from its `Tickstock-Seq` header (`first-last`).
fn last_seq_of(headers: &async_nats::HeaderMap) -> Option<u64> {
    headers.get(SEQ_HEADER)?.as_str().split_once('-')?.1.parse().ok()
}

/// The Unix time now, ns.
pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Appends `frames` (consecutive frames of `batch`) as a message payload (see the module's
/// doc).
pub fn encode_frames(out: &mut Vec<u8>, batch: &FrameBatch, frames: &[Frame]) {
    out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    for frame in frames {
        out.extend_from_slice(&frame.recv_ns.to_le_bytes());
    }
    for frame in frames {
        out.extend_from_slice(&frame.symbol.0.to_le_bytes());
    }
    for frame in frames {
        event_log::encode(out, batch, frame);
    }
}

/// What an event takes in a payload besides its record: `recv_ns` and its symbol index.
const STAMPS_BYTES: usize = 12;

/// Splits `batch` into runs of frames whose payloads take at most `payload_max` bytes each
/// (a frame larger than that alone is a run of its own): the ranges of frame indexes.
pub fn split(batch: &FrameBatch, payload_max: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let frames = batch.frames();
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= frames.len() {
            return None;
        }
        let mut bytes = 4;
        let mut end = start;
        while end < frames.len() {
            let size = STAMPS_BYTES + event_log::record_len(batch, &frames[end]);
            if end > start && bytes + size > payload_max {
                break;
            }
            bytes += size;
            end += 1;
        }
        let run = (start, end);
        start = end;
        Some(run)
    })
}

/// Why a payload is not a batch.
#[derive(Debug, PartialEq, Eq)]
pub struct BadMessage(pub String);

/// Rebuilds the batch of a payload of `format` (its `Tickstock-Format` header: 1 when it has
/// none) into `into` (cleared first, as large as the ingest's: `pipeline.emitter_batch_bytes`);
/// its first and last `seq`.
pub fn decode_batch(
    payload: &[u8],
    format: u32,
    into: &mut FrameBatch,
) -> Result<(u64, u64), BadMessage> {
    let bad = |why: &str| BadMessage(why.to_owned());
    let (count, stamps_end) = layout(payload, format)?;
    let (stamps, symbols) = payload[4..stamps_end].split_at(count * 8);
    let symbol = |i: usize| {
        let id = symbols.get(i * 4..i * 4 + 4).and_then(|id| id.try_into().ok());
        id.map_or(UNKNOWN_SYMBOL, |id| SymbolId(u32::from_le_bytes(id)))
    };
    let mut records = &payload[stamps_end..];
    into.clear();
    let (mut first, mut last) = (0, 0);
    for (i, stamp) in stamps.chunks_exact(8).enumerate() {
        let recv_ns = u64::from_le_bytes(stamp.try_into().map_err(|_| bad("stamp"))?);
        let (record, len) = decode_record(records)?;
        if record.seq == 0 || record.seq == u64::MAX {
            return Err(bad("a seq out of range"));
        }
        if i > 0 && record.seq != last + 1 {
            return Err(bad("its seqs are not consecutive"));
        }
        if !into.has_room_for(record.json.len()) {
            return Err(bad("larger than pipeline.emitter_batch_bytes"));
        }
        into.push_raw(frame_of(&record, symbol(i), recv_ns), record.json);
        if i == 0 {
            first = record.seq;
        }
        last = record.seq;
        records = &records[len..];
    }
    if !records.is_empty() {
        return Err(bad("more events than its count"));
    }
    if count == 0 {
        return Err(bad("no events"));
    }
    Ok((first, last))
}

/// A payload's event count and where its records begin, from its `format` (1: a `recv_ns`
/// per event; 2: and a symbol index).
fn layout(payload: &[u8], format: u32) -> Result<(usize, usize), BadMessage> {
    let bad = |why: &str| BadMessage(why.to_owned());
    let per_event = match format {
        1 => 8,
        2 => STAMPS_BYTES,
        _ => return Err(BadMessage(format!("format {format} is unknown here (a newer ingest?)"))),
    };
    let count = payload.get(..4).ok_or_else(|| bad("shorter than its count"))?;
    let count = u32::from_le_bytes(count.try_into().map_err(|_| bad("count"))?) as usize;
    let stamps_end = 4usize
        .checked_add(count.checked_mul(per_event).ok_or_else(|| bad("count too large"))?)
        .ok_or_else(|| bad("count too large"))?;
    if payload.len() < stamps_end {
        return Err(bad("shorter than its count"));
    }
    Ok((count, stamps_end))
}

/// The event record at the start of `records`, and its length.
fn decode_record(records: &[u8]) -> Result<(event_log::Record<'_>, usize), BadMessage> {
    event_log::decode(records).map_err(|error| match error {
        Decode::Short => BadMessage("fewer events than its count".to_owned()),
        Decode::Corrupt => BadMessage("a damaged event".to_owned()),
    })
}

/// The payload (of `format`) of the events of `payload` after `seq`, in the same format,
/// with its first `seq` and its event count; `None` when none is after `seq`. For a batch
/// the stream holds the start of already: the publisher trims it before publishing, a
/// gateway before handing it on.
pub fn payload_after(
    payload: &[u8],
    format: u32,
    seq: u64,
) -> Result<Option<(Vec<u8>, u64, usize)>, BadMessage> {
    let (count, stamps_end) = layout(payload, format)?;
    let mut at = stamps_end;
    for skipped in 0..count {
        let (record, len) = decode_record(&payload[at..])?;
        if record.seq > seq {
            let rest = count - skipped;
            let mut out = Vec::with_capacity(payload.len() - (at - stamps_end));
            out.extend_from_slice(&(rest as u32).to_le_bytes());
            out.extend_from_slice(&payload[4 + skipped * 8..4 + count * 8]);
            if format == 2 {
                out.extend_from_slice(&payload[4 + count * 8 + skipped * 4..stamps_end]);
            }
            out.extend_from_slice(&payload[at..]);
            return Ok(Some((out, record.seq, rest)));
        }
        at += len;
    }
    Ok(None)
}

/// The frame of an event log record of `symbol` (its JSON goes with it in `push_raw`).
/// Routing is by ticker; the symbol index is the memory history's hint
/// ([`UNKNOWN_SYMBOL`] when there is none).
pub(crate) fn frame_of(record: &event_log::Record<'_>, symbol: SymbolId, recv_ns: u64) -> Frame {
    Frame {
        seq: record.seq,
        symbol,
        ticker: record.ticker,
        channel: record.channel,
        price_raw: record.price_raw,
        volume: record.volume,
        strength: record.strength,
        recv_ns,
        t_ms: record.t_ms,
        start: 0,
        end: 0,
    }
}

/// Connect options from the settings: name, timeouts, credentials (a file, or
/// `NATS_USER`/`NATS_PASSWORD`, or `NATS_TOKEN`), TLS when the URL is `tls://`.
async fn connect(
    settings: &NatsSettings,
    name: &str,
    status: &Arc<NatsStatus>,
) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms.into()))
        .retry_on_initial_connect()
        .require_tls(settings.url.starts_with("tls://"));
    if let Some(path) = &settings.tls_ca_file {
        options = options.add_root_certificates(path.clone());
    }
    if let Some(path) = &settings.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|error| format!("nats.credentials_file {}: {error}", path.display()))?;
    } else if let (Ok(user), Ok(password)) =
        (std::env::var("NATS_USER"), std::env::var("NATS_PASSWORD"))
    {
        options = options.user_and_password(user, password);
    } else if let Ok(token) = std::env::var("NATS_TOKEN") {
        options = options.token(token);
    }
    let events = Arc::clone(status);
    options = options.event_callback(move |event| {
        let status = Arc::clone(&events);
        async move {
            match event {
                async_nats::Event::Connected => {
                    status.connects.fetch_add(1, Ordering::Relaxed);
                    status.set_up();
                }
                async_nats::Event::Disconnected => status.set_down("disconnected".to_owned()),
                other => tracing::info!(event = %other, "nats"),
            }
        }
    });
    options
        .connect(settings.url.as_str())
        .await
        .map_err(|error| format!("{}: {error}", settings.url))
}

/// Where the stream ends: its last stream sequence and the last `seq` it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StreamTail {
    /// The stream's last sequence (0: none yet), what `Nats-Expected-Last-Sequence` checks.
    pub stream_seq: u64,
    /// The last `seq` it holds (0: it holds none, or does not exist yet), from the
    /// `Tickstock-Seq` header of its last message.
    pub last_seq: u64,
}

/// Where the stream ends ([`StreamTail`]; all 0 when it does not exist yet).
pub(crate) async fn stream_tail(
    context: &async_nats::jetstream::Context,
    settings: &NatsSettings,
) -> Result<StreamTail, String> {
    use async_nats::jetstream::context::GetStreamErrorKind;
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    use async_nats::jetstream::ErrorCode;
    let stream = match context.get_stream(&settings.stream).await {
        Ok(stream) => stream,
        Err(error) => {
            return match error.kind() {
                GetStreamErrorKind::JetStream(e)
                    if e.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(StreamTail::default())
                }
                _ => Err(format!("stream {}: {error}", settings.stream)),
            }
        }
    };
    let stream_seq = stream.cached_info().state.last_sequence;
    let last_seq = match stream.get_last_raw_message_by_subject(&settings.subject).await {
        Ok(message) => last_seq_of(&message.headers)
            .ok_or_else(|| format!("the stream's last message has no {SEQ_HEADER} header"))?,
        Err(error) => match error.kind() {
            LastRawMessageErrorKind::NoMessageFound => 0,
            _ => return Err(format!("stream {}: {error}", settings.stream)),
        },
    };
    Ok(StreamTail { stream_seq, last_seq })
}

/// The stream's configuration from the settings.
fn stream_config(settings: &NatsSettings) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: settings.stream.clone(),
        subjects: vec![settings.subject.clone()],
        max_messages: settings.retain_messages.min(i64::MAX as u64) as i64,
        max_bytes: settings.retain_bytes.min(i64::MAX as u64) as i64,
        max_age: Duration::from_secs(settings.retain_secs),
        duplicate_window: Duration::from_secs(settings.duplicate_window_secs),
        storage: match settings.storage {
            crate::config::Storage::File => async_nats::jetstream::stream::StorageType::File,
            crate::config::Storage::Memory => async_nats::jetstream::stream::StorageType::Memory,
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fanout::test_batch;
    use tickstock_engine::Channel;

    #[test]
    fn a_batch_is_split_into_messages_no_larger_than_asked() {
        let trades = vec![(Channel::T, "AAPL", 1_000_000); 100];
        let batch = test_batch(1, &trades);
        let size = |i: usize| STAMPS_BYTES + event_log::record_len(&batch, &batch.frames()[i]);
        let one = (0..100).map(size).max().unwrap();
        let runs: Vec<_> = split(&batch, 4 + one * 30).collect();
        assert!((4..=5).contains(&runs.len()), "{runs:?}");
        for pair in runs.windows(2) {
            assert_eq!(pair[0].1, pair[1].0, "runs follow on");
            let (start, end) = pair[0];
            let bytes: usize = 4 + (start..=end).map(size).sum::<usize>();
            assert!(bytes > 4 + one * 30, "a run takes all that fits: {pair:?}");
        }
        assert_eq!((runs[0].0, runs.last().unwrap().1), (0, 100));
        assert_eq!(split(&batch, 10).count(), 100, "one frame a message at the least");
        let mut seqs = Vec::new();
        for (start, end) in runs {
            let mut payload = Vec::new();
            encode_frames(&mut payload, &batch, &batch.frames()[start..end]);
            assert!(payload.len() <= 4 + one * 30);
            let mut back = FrameBatch::new(1 << 16);
            let (first, last) = decode_batch(&payload, FORMAT, &mut back).unwrap();
            seqs.extend(first..=last);
        }
        assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    }

    #[test]
    fn a_batch_comes_back_as_it_was_sent_and_damage_is_caught() {
        let sent = test_batch(41, &[(Channel::T, "AAPL", 1_000_000), (Channel::A, "MSFT", 2)]);
        // The ingest's symbol indexes travel with the events.
        let mut batch = FrameBatch::new(1 << 16);
        for (frame, id) in sent.frames().iter().zip([7, SymbolId::MARKET.0]) {
            batch.push_raw(Frame { symbol: SymbolId(id), ..*frame }, sent.json(frame));
        }
        let mut payload = Vec::new();
        encode_frames(&mut payload, &batch, batch.frames());
        let mut back = FrameBatch::new(1 << 16);
        assert_eq!(decode_batch(&payload, FORMAT, &mut back), Ok((41, 42)));
        assert_eq!(back.len(), 2);
        for (a, b) in batch.frames().iter().zip(back.frames()) {
            assert_eq!(batch.json(a), back.json(b));
            assert_eq!(
                (a.seq, a.symbol, a.ticker, a.channel, a.recv_ns, a.t_ms),
                (b.seq, b.symbol, b.ticker, b.channel, b.recv_ns, b.t_ms)
            );
            assert_eq!((a.price_raw, a.volume, a.strength), (b.price_raw, b.volume, b.strength));
        }
        for cut in [0, 3, 11, payload.len() - 1] {
            assert!(decode_batch(&payload[..cut], FORMAT, &mut back).is_err(), "cut at {cut}");
        }
        let mut flipped = payload.clone();
        let at = flipped.len() - 5;
        flipped[at] ^= 1;
        assert_eq!(
            decode_batch(&flipped, FORMAT, &mut back),
            Err(BadMessage("a damaged event".into()))
        );
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode_batch(&longer, FORMAT, &mut back).is_err());
        assert!(decode_batch(&u32::MAX.to_le_bytes(), FORMAT, &mut back).is_err());
        assert_eq!(
            decode_batch(&payload, 3, &mut back),
            Err(BadMessage("format 3 is unknown here (a newer ingest?)".into()))
        );
    }

    #[test]
    fn the_events_after_a_seq_are_cut_out_of_a_payload_with_their_stamps_and_indexes() {
        let trades: Vec<_> = (0..5).map(|i| (Channel::T, ["AAPL", "MSFT"][i % 2], 1_000)).collect();
        let sent = test_batch(20, &trades);
        let mut batch = FrameBatch::new(1 << 16);
        for (i, frame) in sent.frames().iter().enumerate() {
            let frame =
                Frame { symbol: SymbolId(100 + i as u32), recv_ns: 1_000 + i as u64, ..*frame };
            batch.push_raw(frame, sent.json(&sent.frames()[i]));
        }
        let mut payload = Vec::new();
        encode_frames(&mut payload, &batch, batch.frames());
        let mut expected = Vec::new();
        encode_frames(&mut expected, &batch, &batch.frames()[2..]);
        assert_eq!(payload_after(&payload, FORMAT, 21), Ok(Some((expected, 22, 3))));
        assert_eq!(payload_after(&payload, FORMAT, 0).unwrap().unwrap().0, payload, "all of it");
        assert_eq!(payload_after(&payload, FORMAT, 24), Ok(None), "none of it");
        let (rest, _, _) = payload_after(&payload, FORMAT, 23).unwrap().unwrap();
        let mut back = FrameBatch::new(1 << 16);
        assert_eq!(decode_batch(&rest, FORMAT, &mut back), Ok((24, 24)));
        assert_eq!((back.frames()[0].symbol, back.frames()[0].recv_ns), (SymbolId(104), 1_004));
        // Format 1 stays format 1; damage is said.
        let mut old = (5u32).to_le_bytes().to_vec();
        old.extend_from_slice(&payload[4..4 + 40]);
        old.extend_from_slice(&payload[4 + 60..]);
        let (rest, first, count) = payload_after(&old, 1, 22).unwrap().unwrap();
        assert_eq!((first, count), (23, 2));
        assert_eq!(decode_batch(&rest, 1, &mut back), Ok((23, 24)));
        assert!(payload_after(&payload[..payload.len() - 1], FORMAT, 23).is_err());
        assert!(payload_after(&payload, 3, 21).is_err());
    }

    #[test]
    fn a_format_1_message_is_read_with_no_symbol_index() {
        let batch = test_batch(9, &[(Channel::T, "AAPL", 1_000_000), (Channel::T, "MSFT", 2)]);
        // Format 1: the count, the stamps, the records (an ingest before format 2).
        let mut payload = (batch.len() as u32).to_le_bytes().to_vec();
        for frame in batch.frames() {
            payload.extend_from_slice(&frame.recv_ns.to_le_bytes());
        }
        for frame in batch.frames() {
            event_log::encode(&mut payload, &batch, frame);
        }
        let mut back = FrameBatch::new(1 << 16);
        assert_eq!(decode_batch(&payload, 1, &mut back), Ok((9, 10)));
        let tickers: Vec<_> = back.frames().iter().map(|f| f.ticker.as_str().to_owned()).collect();
        assert_eq!(tickers, ["AAPL", "MSFT"]);
        assert!(back.frames().iter().all(|f| f.symbol == UNKNOWN_SYMBOL));
        assert!(decode_batch(&payload, FORMAT, &mut back).is_err(), "read as format 2 it is not");
    }
}
