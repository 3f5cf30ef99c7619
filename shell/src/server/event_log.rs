//! The event log: every emitted event on disk, so that a `resume` older than the memory
//! history is served from here (PROTOCOL.md section 2, step 5).
//!
//! **Writing.** The server's sink encodes each batch's events as records straight into a
//! byte ring ([`EventLogInlet::append`], on the emitter's thread: a copy and a CRC per
//! event); the writer thread ([`EventLog::start`]) copies them to segment files, keeps a
//! sparse index beside each, flushes every few milliseconds, fsyncs every
//! `event_log_fsync_interval_ms`, rotates past `event_log_segment_bytes_max` and deletes
//! segments older than `event_log_retain_days`.
//!
//! **Overflow.** The ring holds `event_log_ring_bytes`. A batch that does not fit whole is
//! not logged: its events are counted as dropped, and the log has a hole there, which a
//! resume that would cross it reports instead of papering over. The emitter never waits for
//! the disk.
//!
//! **Records.** `len u32 | crc32 u32 | seq u64 | t_ms u64 | price_raw i64 | volume u64 |
//! channel u8 | strength u8 | ticker_len u8 | ticker | json`, little-endian, the CRC over
//! everything after it. Segments are `events-<first seq, 20 digits>.log`, opening with
//! [`MAGIC`]; their index `.idx` holds `(seq, t_max_ms, offset)` every [`INDEX_EVERY`]
//! records. At start the newest segment is scanned: a torn or corrupt tail is truncated and
//! reported, and its index rebuilt. Events that come again after a warm restart (the
//! replayed history) are not written twice: the writer skips `seq`s it has.
//!
//! **Reading.** A [`LogCursor`] reads from a `seq` on, in slices of at most
//! `event_log_read_slice_bytes`, so that serving a resume from disk never holds the event
//! loop longer than one slice's read (mostly from the page cache: the log is recent).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tickstock_engine::{Channel, Ticker};

use crate::emitter::FrameBatch;
use crate::idle::{IdleStrategy, Idler};

/// The first bytes of every segment.
pub const MAGIC: &[u8; 8] = b"TSEVLOG1";
/// One index entry per this many records.
pub const INDEX_EVERY: u64 = 1_024;
/// Record bytes before the ticker: `len`, `crc`, and the fixed fields.
const FIXED: usize = 4 + 4 + 8 + 8 + 8 + 8 + 1 + 1 + 1;
/// How often the writer hands what it wrote to the kernel at the latest (so readers see it).
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// The event log's settings (from `[server]`).
#[derive(Clone, Debug)]
pub struct EventLogSettings {
    /// Where the segments are.
    pub dir: PathBuf,
    /// Rotation size.
    pub segment_bytes_max: u64,
    /// The sink → writer ring.
    pub ring_bytes: usize,
    /// Segments older than this many days are deleted.
    pub retain_days: u32,
    /// fsync interval.
    pub fsync_interval: Duration,
    /// Most bytes one read of a resume takes.
    pub read_slice_bytes: usize,
}

/// Counters of the log, shared by the sink, the writer and `/metrics`.
#[derive(Debug, Default)]
pub struct EventLogCounters {
    /// Events written.
    pub written: AtomicU64,
    /// Events dropped because the ring was full (holes in the log).
    pub dropped: AtomicU64,
    /// Events skipped because the log had them already (a warm restart's replay).
    pub duplicates: AtomicU64,
    /// Bytes truncated from a torn or corrupt tail at start.
    pub truncated_bytes: AtomicU64,
    /// Write or fsync failures (the writer retries with the next batch).
    pub write_errors: AtomicU64,
}

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The event's `seq`.
    pub seq: u64,
    /// Its time (`Frame::t_ms`).
    pub t_ms: u64,
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
    /// The JSON object, as it was sent.
    pub json: &'a [u8],
}

/// Why bytes are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decode {
    /// More bytes are needed (a torn tail, or the rest not read yet).
    Short,
    /// The checksum or a field is wrong.
    Corrupt,
}

/// The length of `frame`'s record.
pub(crate) fn record_len(batch: &FrameBatch, frame: &crate::emitter::Frame) -> usize {
    FIXED + frame.ticker.as_str().len() + batch.json(frame).len()
}

/// Appends `frame`'s record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, batch: &FrameBatch, frame: &crate::emitter::Frame) {
    let json = batch.json(frame);
    let ticker = frame.ticker.as_str().as_bytes();
    let start = out.len();
    let body_len = FIXED - 8 + ticker.len() + json.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&frame.seq.to_le_bytes());
    out.extend_from_slice(&frame.t_ms.to_le_bytes());
    out.extend_from_slice(&frame.price_raw.to_le_bytes());
    out.extend_from_slice(&frame.volume.to_le_bytes());
    out.extend_from_slice(&[frame.channel.index() as u8, frame.strength, ticker.len() as u8]);
    out.extend_from_slice(ticker);
    out.extend_from_slice(json);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The length, `seq` and time of the record at the start of `bytes`, unchecked: for the
/// writer, whose records the inlet has just encoded (their CRC is checked when read).
fn peek(bytes: &[u8]) -> Option<(usize, u64, u64)> {
    let word = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    Some((8 + len, word(8)?, word(16)?)).filter(|&(total, ..)| total <= bytes.len())
}

/// Decodes the record at the start of `bytes`; its length with it.
pub fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), Decode> {
    let word = |at: usize| -> Option<[u8; 8]> { bytes.get(at..at + 8)?.try_into().ok() };
    let len = u32::from_le_bytes(
        bytes.get(..4).ok_or(Decode::Short)?.try_into().map_err(|_| Decode::Short)?,
    ) as usize;
    if !(FIXED - 8..=64 << 20).contains(&len) {
        return Err(Decode::Corrupt);
    }
    let total = 8 + len;
    let record = bytes.get(..total).ok_or(Decode::Short)?;
    let crc = u32::from_le_bytes(record[4..8].try_into().map_err(|_| Decode::Corrupt)?);
    if crc32fast::hash(&record[8..]) != crc {
        return Err(Decode::Corrupt);
    }
    let seq = u64::from_le_bytes(word(8).ok_or(Decode::Corrupt)?);
    let t_ms = u64::from_le_bytes(word(16).ok_or(Decode::Corrupt)?);
    let price_raw = i64::from_le_bytes(word(24).ok_or(Decode::Corrupt)?);
    let volume = u64::from_le_bytes(word(32).ok_or(Decode::Corrupt)?);
    let (channel, strength, ticker_len) = (record[40], record[41], usize::from(record[42]));
    let channel = *Channel::ALL.get(usize::from(channel)).ok_or(Decode::Corrupt)?;
    let ticker_bytes = record.get(FIXED..FIXED + ticker_len).ok_or(Decode::Corrupt)?;
    let ticker_text = std::str::from_utf8(ticker_bytes).map_err(|_| Decode::Corrupt)?;
    let ticker = if ticker_text == "*" {
        Ticker::MARKET
    } else {
        Ticker::new(ticker_text).map_err(|_| Decode::Corrupt)?
    };
    let json = &record[FIXED + ticker_len..];
    Ok((Record { seq, t_ms, channel, ticker, price_raw, volume, strength, json }, total))
}

/// The sink's end: encodes batches into the ring.
#[derive(Debug)]
pub struct EventLogInlet {
    ring: rtrb::Producer<u8>,
    scratch: Vec<u8>,
    counters: Arc<EventLogCounters>,
    /// The last `seq` the log held when it was recovered at start (0: empty).
    recovered_seq: u64,
}

impl EventLogInlet {
    /// Logs `batch`, whole, or counts its events as dropped when the ring has no room.
    pub fn append(&mut self, batch: &FrameBatch) {
        if self.encode(batch) {
            self.push(batch, false);
        }
    }

    /// Logs `batch`, waiting for room (a warm restart's replay, which no client waits on,
    /// refilling what the log lacks); dropped and counted only if the writer has stopped
    /// or the batch is larger than the whole ring.
    pub fn append_waiting(&mut self, batch: &FrameBatch) {
        if self.encode(batch) {
            self.push(batch, true);
        }
    }

    /// The last `seq` the log held when it was recovered at start (0: it was empty): a warm
    /// restart's replayed events after it are missing from it.
    pub fn recovered_seq(&self) -> u64 {
        self.recovered_seq
    }

    /// Encodes the batch's records into `scratch`; whether there are any.
    fn encode(&mut self, batch: &FrameBatch) -> bool {
        self.scratch.clear();
        for frame in batch.frames() {
            encode(&mut self.scratch, batch, frame);
        }
        !self.scratch.is_empty()
    }

    fn push(&mut self, batch: &FrameBatch, wait: bool) {
        // Made only when it must wait (a warm restart's replay): not on the live path.
        let mut idler: Option<Idler> = None;
        let fits = self.scratch.len() <= self.ring.buffer().capacity();
        loop {
            if let Ok(chunk) = self.ring.write_chunk_uninit(self.scratch.len()) {
                chunk.fill_from_iter(self.scratch.iter().copied());
                return;
            }
            if !(wait && fits) || self.ring.is_abandoned() {
                self.counters.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                return;
            }
            idler.get_or_insert_with(|| Idler::new(IdleStrategy::default())).idle_unsignalled();
        }
    }
}

/// A running event log: its writer thread.
#[derive(Debug)]
pub struct EventLog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Its counters.
    pub counters: Arc<EventLogCounters>,
    /// How it is read.
    pub reader: EventLogReader,
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl EventLog {
    /// Recovers the directory (a torn tail truncated, reported) and starts the writer;
    /// returns it and the inlet for the sink. `continues`: the engine carries on the `seq`s
    /// of the run that wrote the log (a warm restart). Otherwise `seq` starts again, and a
    /// log already there belongs to another numbering: it is moved aside, whole, into
    /// `previous-<unix seconds>/` in the directory, and said so.
    pub fn start(
        settings: &EventLogSettings,
        continues: bool,
    ) -> io::Result<(EventLog, EventLogInlet)> {
        fs::create_dir_all(&settings.dir)?;
        let old = segments(&settings.dir)?;
        if !continues && !old.is_empty() {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = settings.dir.join(format!("previous-{stamp}"));
            fs::create_dir_all(&aside)?;
            for (_, path) in &old {
                for file in [path.clone(), path.with_extension("idx")] {
                    if let Some(name) = file.file_name().filter(|_| file.exists()) {
                        fs::rename(&file, aside.join(name))?;
                    }
                }
            }
            tracing::warn!(moved_to = %aside.display(), segments = old.len(),
                "event log: a start without a warm restart numbers events from seq_start again; \
                 the previous run's log is kept aside, not served");
        }
        let counters = Arc::new(EventLogCounters::default());
        let mut writer = Writer::recover(settings, Arc::clone(&counters))?;
        let recovered_seq = writer.last_seq;
        let (producer, mut consumer) = rtrb::RingBuffer::new(settings.ring_bytes);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new().name("tickstock-event-log".to_owned()).spawn(
            move || {
                let mut last_flush = Instant::now();
                loop {
                    let stopped = stopping.load(Ordering::Acquire);
                    let available = consumer.slots();
                    if available > 0 {
                        if let Ok(chunk) = consumer.read_chunk(available) {
                            let (a, b) = chunk.as_slices();
                            let bytes = [a, b].concat();
                            chunk.commit_all();
                            writer.write_records(&bytes);
                        }
                    } else if stopped {
                        writer.flush(true);
                        return;
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if last_flush.elapsed() >= FLUSH_INTERVAL {
                        writer.flush(false);
                        last_flush = Instant::now();
                    }
                }
            },
        )?;
        let reader = EventLogReader {
            dir: settings.dir.clone(),
            read_slice_bytes: settings.read_slice_bytes,
        };
        let inlet = EventLogInlet {
            ring: producer,
            scratch: Vec::new(),
            counters: Arc::clone(&counters),
            recovered_seq,
        };
        Ok((EventLog { stop, thread: Some(thread), counters, reader }, inlet))
    }
}

/// The writer thread's state.
struct Writer {
    settings: EventLogSettings,
    counters: Arc<EventLogCounters>,
    /// The open segment and its index, with the segment's size and records.
    segment: Option<(BufWriter<File>, BufWriter<File>, u64, u64)>,
    /// The newest `seq` written (0: none).
    last_seq: u64,
    /// The running maximum of event time.
    t_max_ms: u64,
    last_fsync: Instant,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("events-{first_seq:020}.log"))
}

/// The segments of `dir`, by first `seq`.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let first = name.strip_prefix("events-").and_then(|n| n.strip_suffix(".log"));
        if let Some(first) = first.and_then(|f| f.parse::<u64>().ok()) {
            found.push((first, path));
        }
    }
    found.sort();
    Ok(found)
}

impl Writer {
    /// Opens the directory: the newest segment scanned, a bad tail truncated, its index
    /// rebuilt; old segments past retention deleted.
    fn recover(settings: &EventLogSettings, counters: Arc<EventLogCounters>) -> io::Result<Writer> {
        let mut writer = Writer {
            settings: settings.clone(),
            counters,
            segment: None,
            last_seq: 0,
            t_max_ms: 0,
            last_fsync: Instant::now(),
        };
        writer.retire_old()?;
        let Some((first, path)) = segments(&settings.dir)?.pop() else { return Ok(writer) };
        let bytes = fs::read(&path)?;
        let mut at = MAGIC.len().min(bytes.len());
        let mut index = Vec::new();
        let mut records = 0u64;
        if bytes.get(..MAGIC.len()) != Some(&MAGIC[..]) {
            at = 0;
        }
        while at < bytes.len() {
            match decode(&bytes[at..]) {
                Ok((record, len)) => {
                    writer.t_max_ms = writer.t_max_ms.max(record.t_ms);
                    if records.is_multiple_of(INDEX_EVERY) {
                        index.push((record.seq, writer.t_max_ms, at as u64));
                    }
                    writer.last_seq = record.seq;
                    records += 1;
                    at += len;
                }
                Err(_) => break,
            }
        }
        let good = if at == 0 { 0 } else { at as u64 };
        if good < bytes.len() as u64 {
            let cut = bytes.len() as u64 - good;
            counters_add(&writer.counters.truncated_bytes, cut);
            tracing::warn!(segment = %path.display(), bytes = cut, last_seq = writer.last_seq,
                "event log: a torn or corrupt tail truncated");
        }
        if good == 0 {
            // Nothing usable: kept aside for a look, not deleted.
            let aside = path.with_extension("damaged");
            fs::rename(&path, &aside)?;
            let _ = fs::remove_file(path.with_extension("idx"));
            tracing::warn!(segment = %aside.display(), "event log: a segment with no valid record set aside");
            return Ok(writer);
        }
        let file = OpenOptions::new().write(true).open(&path)?;
        file.set_len(good)?;
        let mut file = BufWriter::new(file);
        file.seek(SeekFrom::Start(good))?;
        let mut idx = BufWriter::new(File::create(path.with_extension("idx"))?);
        for (seq, t_max, offset) in index {
            write_index(&mut idx, seq, t_max, offset)?;
        }
        writer.segment = Some((file, idx, good, records));
        tracing::info!(
            first_seq = first,
            last_seq = writer.last_seq,
            records,
            "event log recovered"
        );
        Ok(writer)
    }

    /// Deletes segments (and their index) not modified for `retain_days`, but never the
    /// newest.
    fn retire_old(&self) -> io::Result<()> {
        let all = segments(&self.settings.dir)?;
        let keep = Duration::from_secs(u64::from(self.settings.retain_days) * 86_400);
        for (_, path) in all.iter().take(all.len().saturating_sub(1)) {
            let old = fs::metadata(path)?.modified()?.elapsed().is_ok_and(|age| age > keep);
            if old {
                fs::remove_file(path)?;
                let _ = fs::remove_file(path.with_extension("idx"));
                tracing::info!(segment = %path.display(), "event log: segment past retention deleted");
            }
        }
        Ok(())
    }

    /// Writes whole records (as the inlet encoded them), skipping `seq`s already written.
    fn write_records(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let Some((len, seq, t_ms)) = peek(bytes) else {
                // The inlet writes whole records: anything else is a bug here.
                debug_assert!(false, "Invariant: the ring holds whole records");
                return;
            };
            let raw = &bytes[..len];
            bytes = &bytes[len..];
            if seq <= self.last_seq {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.last_seq > 0 && seq != self.last_seq + 1 {
                tracing::warn!(
                    from = self.last_seq + 1,
                    to = seq - 1,
                    "event log: a hole (events dropped or not logged)"
                );
            }
            if let Err(error) = self.write_one(seq, t_ms, raw) {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, seq, "event log: write failed");
                self.segment = None; // a fresh segment next time
                continue;
            }
            self.last_seq = seq;
            self.counters.written.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn write_one(&mut self, seq: u64, t_ms: u64, raw: &[u8]) -> io::Result<()> {
        let full = self.segment.as_ref().is_some_and(|s| s.2 >= self.settings.segment_bytes_max);
        if full || self.segment.is_none() {
            self.flush(true);
            let path = segment_path(&self.settings.dir, seq);
            let mut file = BufWriter::new(File::create(&path)?);
            file.write_all(MAGIC)?;
            let idx = BufWriter::new(File::create(path.with_extension("idx"))?);
            self.segment = Some((file, idx, MAGIC.len() as u64, 0));
            if full {
                self.retire_old()?;
            }
        }
        self.t_max_ms = self.t_max_ms.max(t_ms);
        let (file, idx, size, records) = self.segment.as_mut().expect("Invariant: opened above");
        if records.is_multiple_of(INDEX_EVERY) {
            write_index(idx, seq, self.t_max_ms, *size)?;
        }
        file.write_all(raw)?;
        *size += raw.len() as u64;
        *records += 1;
        Ok(())
    }

    /// Hands what was written to the kernel; fsyncs when `sync` or the interval has passed.
    fn flush(&mut self, sync: bool) {
        let Some((file, idx, ..)) = self.segment.as_mut() else { return };
        let mut result = file.flush().and_then(|()| idx.flush());
        if sync || self.last_fsync.elapsed() >= self.settings.fsync_interval {
            result = result.and_then(|()| file.get_ref().sync_data());
            self.last_fsync = Instant::now();
        }
        if let Err(error) = result {
            self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "event log: flush failed");
        }
    }
}

fn counters_add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn write_index(idx: &mut impl Write, seq: u64, t_max_ms: u64, offset: u64) -> io::Result<()> {
    idx.write_all(&seq.to_le_bytes())?;
    idx.write_all(&t_max_ms.to_le_bytes())?;
    idx.write_all(&offset.to_le_bytes())
}

/// Reads an index file's entries (a short tail ignored).
fn read_index(path: &Path) -> Vec<(u64, u64, u64)> {
    let Ok(bytes) = fs::read(path) else { return Vec::new() };
    bytes
        .chunks_exact(24)
        .map(|e| {
            let word = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().unwrap_or([0; 8]));
            (word(0), word(8), word(16))
        })
        .collect()
}

/// Where resumes read the log.
#[derive(Clone, Debug)]
pub struct EventLogReader {
    dir: PathBuf,
    read_slice_bytes: usize,
}

/// Why a read of the log cannot go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The log starts after the `seq` asked for: its oldest.
    TooOld(u64),
    /// A record that does not check out, or a hole, at this `seq`.
    Damaged(u64),
    /// The disk failed.
    Io,
}

impl EventLogReader {
    /// The `seq` of the first logged event whose time is at or after `t_ms` (by the running
    /// maximum of event time, as the memory history does); one past the newest when none is.
    /// `TooOld` when the log's oldest event is already at or after it (what came before the
    /// log began is unknown).
    pub fn seq_at_time(&self, t_ms: u64) -> Result<u64, ReadError> {
        let all = segments(&self.dir).map_err(|_| ReadError::Io)?;
        let Some(&(oldest, _)) = all.first() else { return Err(ReadError::TooOld(u64::MAX)) };
        // The last index entry before the first one at or after `t_ms`, over all segments.
        let mut start: Option<(u64, u64)> = None; // (seq, t_max)
        'segments: for (_, path) in &all {
            for (seq, t_max, _) in read_index(&path.with_extension("idx")) {
                if t_max >= t_ms {
                    break 'segments;
                }
                start = Some((seq, t_max));
            }
        }
        let Some((seq, mut t_max)) = start else { return Err(ReadError::TooOld(oldest)) };
        let mut cursor = self.open_at(seq)?;
        let mut found = None;
        let mut last = seq;
        loop {
            let taken = cursor.read_slice(|record| {
                t_max = t_max.max(record.t_ms);
                last = record.seq;
                if t_max >= t_ms {
                    found = Some(record.seq);
                    return false;
                }
                true
            })?;
            if let Some(seq) = found {
                return Ok(seq);
            }
            if taken == 0 {
                return Ok(last + 1);
            }
        }
    }

    /// A cursor at the first logged event with `seq >= from_seq`.
    pub fn open_at(&self, from_seq: u64) -> Result<LogCursor, ReadError> {
        let all = segments(&self.dir).map_err(|_| ReadError::Io)?;
        let Some(&(oldest, _)) = all.first() else { return Err(ReadError::TooOld(u64::MAX)) };
        if from_seq < oldest {
            return Err(ReadError::TooOld(oldest));
        }
        let at = all.iter().rposition(|(first, _)| *first <= from_seq).unwrap_or(0);
        let (first, path) = &all[at];
        let offset = read_index(&path.with_extension("idx"))
            .iter()
            .take_while(|(seq, ..)| *seq <= from_seq)
            .last()
            .map_or(MAGIC.len() as u64, |&(.., offset)| offset);
        let mut cursor = LogCursor {
            segments: all[at..].iter().map(|(_, p)| p.clone()).collect(),
            file: None,
            buf: Vec::new(),
            used: 0,
            next_seq: *first,
            slice: self.read_slice_bytes,
        };
        cursor.open(0, offset).map_err(|_| ReadError::Io)?;
        // Skip to `from_seq`.
        cursor.next_seq = 0;
        loop {
            let mut found = false;
            let mut last = None;
            cursor.read_slice(|record| {
                last = Some(record.seq);
                found = record.seq >= from_seq;
                !found
            })?;
            if found {
                cursor.next_seq = from_seq;
                return Ok(cursor);
            }
            if last.is_none() {
                // The end of the log: nothing at or after `from_seq` yet.
                cursor.next_seq = from_seq;
                return Ok(cursor);
            }
        }
    }
}

/// A position in the log, read forward in slices.
#[derive(Debug)]
pub struct LogCursor {
    /// The segments from the current one on.
    segments: Vec<PathBuf>,
    file: Option<File>,
    /// Bytes read and not yet consumed: `buf[used..]`.
    buf: Vec<u8>,
    used: usize,
    /// The `seq` the next record must have (0: any).
    next_seq: u64,
    slice: usize,
}

impl LogCursor {
    fn open(&mut self, index: usize, offset: u64) -> io::Result<()> {
        let mut file = File::open(&self.segments[index])?;
        file.seek(SeekFrom::Start(offset))?;
        self.segments.drain(..index);
        self.file = Some(file);
        self.buf.clear();
        self.used = 0;
        Ok(())
    }

    /// Reads at most one slice and hands `each` the whole records in it, in order, while it
    /// returns true (a record it refuses is read again next time). Returns how many it took;
    /// 0 at the end of what is logged so far.
    pub fn read_slice(
        &mut self,
        mut each: impl FnMut(&Record<'_>) -> bool,
    ) -> Result<usize, ReadError> {
        self.read_slice_with(&mut each)
    }

    fn read_slice_with(
        &mut self,
        each: &mut impl FnMut(&Record<'_>) -> bool,
    ) -> Result<usize, ReadError> {
        if self.used >= self.buf.len() / 2 {
            self.buf.drain(..self.used);
            self.used = 0;
        }
        let before = self.buf.len();
        // A reader that stopped early (`each` said no) has a slice in hand already: no more.
        let at_end = if before - self.used >= self.slice {
            false
        } else {
            self.buf.resize(before + self.slice, 0);
            let read = match self.file.as_mut() {
                Some(file) => file.read(&mut self.buf[before..]).map_err(|_| ReadError::Io)?,
                None => 0,
            };
            self.buf.truncate(before + read);
            read == 0
        };
        let mut taken = 0;
        loop {
            match decode(&self.buf[self.used..]) {
                Ok((record, len)) => {
                    if self.next_seq != 0 && record.seq != self.next_seq {
                        if record.seq < self.next_seq {
                            self.used += len; // before where the cursor starts
                            continue;
                        }
                        return Err(ReadError::Damaged(self.next_seq));
                    }
                    if !each(&record) {
                        return Ok(taken);
                    }
                    self.next_seq = record.seq + 1;
                    self.used += len;
                    taken += 1;
                }
                Err(Decode::Short)
                    if at_end && self.used == self.buf.len() && self.segments.len() > 1 =>
                {
                    // This segment is done: on to the next one.
                    self.open(1, MAGIC.len() as u64).map_err(|_| ReadError::Io)?;
                    return Ok(taken + self.read_slice_with(each)?);
                }
                Err(Decode::Short) => return Ok(taken),
                Err(Decode::Corrupt) => return Err(ReadError::Damaged(self.next_seq)),
            }
        }
    }

    /// The `seq` of the next record it will hand out.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::fanout::test_batch;

    fn settings(dir: &Path, segment_bytes_max: u64) -> EventLogSettings {
        EventLogSettings {
            dir: dir.to_owned(),
            segment_bytes_max,
            ring_bytes: 1 << 20,
            retain_days: 1,
            fsync_interval: Duration::from_millis(100),
            read_slice_bytes: 4_096,
        }
    }

    /// Logs events `first..first + count` (T of AAPL), in batches of 10, and stops the writer.
    fn log(settings: &EventLogSettings, first: u64, count: u64) -> Arc<EventLogCounters> {
        let (log, mut inlet) = EventLog::start(settings, true).unwrap();
        for start in (first..first + count).step_by(10) {
            let n = (first + count - start).min(10) as usize;
            inlet.append(&test_batch(start, &vec![(Channel::T, "AAPL", 1_000_000); n]));
        }
        let counters = Arc::clone(&log.counters);
        drop(log);
        counters
    }

    fn read_all(reader: &EventLogReader, from: u64) -> Result<Vec<u64>, ReadError> {
        let mut cursor = reader.open_at(from)?;
        let mut seqs = Vec::new();
        while cursor.read_slice(|r| {
            assert!(std::str::from_utf8(r.json).unwrap().contains(&format!("\"seq\":{}", r.seq)));
            seqs.push(r.seq);
            true
        })? > 0
        {}
        Ok(seqs)
    }

    fn reader(settings: &EventLogSettings) -> EventLogReader {
        EventLogReader { dir: settings.dir.clone(), read_slice_bytes: settings.read_slice_bytes }
    }

    #[test]
    fn events_are_read_back_from_any_seq_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), 20_000);
        let counters = log(&settings, 1, 1_000);
        assert_eq!(counters.written.load(Ordering::Relaxed), 1_000);
        assert!(segments(dir.path()).unwrap().len() > 3, "rotated");
        let reader = reader(&settings);
        assert_eq!(read_all(&reader, 1).unwrap(), (1..=1_000).collect::<Vec<_>>());
        assert_eq!(read_all(&reader, 777).unwrap(), (777..=1_000).collect::<Vec<_>>());
        assert_eq!(read_all(&reader, 1_001).unwrap(), Vec::<u64>::new(), "nothing after the end");
        // A restart: the replayed events come again; none is written twice.
        let counters = log(&settings, 990, 30);
        assert_eq!(counters.duplicates.load(Ordering::Relaxed), 11);
        assert_eq!(read_all(&reader, 995).unwrap(), (995..=1_019).collect::<Vec<_>>());
    }

    #[test]
    fn a_cold_start_moves_the_previous_numbering_aside() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), 20_000);
        log(&settings, 1, 100);
        let (log, mut inlet) = EventLog::start(&settings, false).unwrap();
        inlet.append(&test_batch(1, &[(Channel::T, "MSFT", 1_000_000); 5]));
        drop(log);
        let read = read_all(&reader(&settings), 1).unwrap();
        assert_eq!(read, [1, 2, 3, 4, 5], "the new run's events, not skipped as duplicates");
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("previous-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(segments(&aside[0].path()).unwrap().len() == 1, "the old log, whole");
    }

    #[test]
    fn a_time_is_found_through_the_index_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), 20_000);
        log(&settings, 1, 3_000); // `test_batch` dates seq N at N seconds
        let reader = reader(&settings);
        assert_eq!(reader.seq_at_time(1_500_500), Ok(1_501));
        assert_eq!(reader.seq_at_time(2_999_000), Ok(2_999));
        assert_eq!(reader.seq_at_time(9_000_000), Ok(3_001), "after the end: live from the next");
        assert_eq!(reader.seq_at_time(500), Err(ReadError::TooOld(1)), "before the log began");
    }

    #[test]
    fn a_torn_tail_is_truncated_at_start_and_a_flipped_bit_is_reported_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path(), 20_000);
        log(&settings, 1, 500);
        let all = segments(dir.path()).unwrap();
        let (_, newest) = all.last().unwrap();
        let len = fs::metadata(newest).unwrap().len();
        OpenOptions::new().write(true).open(newest).unwrap().set_len(len - 5).unwrap();
        let counters = log(&settings, 500, 10); // 500 was torn: written again, then 501..
        assert!(counters.truncated_bytes.load(Ordering::Relaxed) > 0);
        let reader = reader(&settings);
        assert_eq!(read_all(&reader, 400).unwrap(), (400..=509).collect::<Vec<_>>());
        // One bit flipped in the first segment's tenth record.
        let (_, oldest) = &all[0];
        let mut bytes = fs::read(oldest).unwrap();
        let (_, len) = decode(&bytes[MAGIC.len()..]).unwrap();
        bytes[MAGIC.len() + 9 * len + 30] ^= 0x10;
        fs::write(oldest, bytes).unwrap();
        assert_eq!(read_all(&reader, 1), Err(ReadError::Damaged(10)));
        assert_eq!(read_all(&reader, 11), Err(ReadError::Damaged(10)), "reading past it too");
        assert_eq!(read_all(&reader, 400).unwrap().first(), Some(&400), "other segments, fine");
        assert_eq!(read_all(&reader, 0).unwrap_err(), ReadError::TooOld(1));
    }
}
