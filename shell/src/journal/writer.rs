//! The journal writer thread: pops accepted ticks from its ring and appends them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickstock_engine::{SymbolNames, Tick, Timestamp};

use super::codec::{self, Record};
use crate::config::{FsyncPolicy, JournalFailurePolicy, JournalSettings};
use crate::idle::{IdleStrategy, Idler, Waker};
use crate::tracer::Counters;

/// Bytes gathered before a `write` call.
const WRITE_BATCH_BYTES: usize = 1 << 20;
/// Records popped from the ring per round.
const POP_BATCH_MAX: usize = 4_096;
/// How long a failed journal waits before trying a new segment.
const RETRY_INTERVAL_MS: u64 = 1_000;

/// The state `/health` and the final report show.
#[derive(Clone, Debug, Default)]
pub struct JournalState {
    /// The last disk error, if the journal is or was down.
    pub last_error: Option<String>,
    /// The segment being written.
    pub segment: Option<PathBuf>,
}

/// The writer's side of everything it shares.
#[derive(Debug)]
pub struct WriterContext {
    /// Journal settings.
    pub settings: JournalSettings,
    /// Names for symbol records.
    pub symbols: Arc<SymbolNames>,
    /// Where it counts.
    pub counters: Arc<Counters>,
    /// Last error and current segment.
    pub state: Arc<Mutex<JournalState>>,
    /// Raised to stop the server under `on_failure = "shutdown"`.
    pub stop: Arc<AtomicBool>,
    /// Set when the journal stopped the server.
    pub failed: Arc<AtomicBool>,
    /// First segment index to write.
    pub next_index: u64,
}

struct Segment {
    file: File,
    path: PathBuf,
    bytes: u64,
    /// One bit per symbol id: its `Symbol` record is in this segment.
    named: Vec<u64>,
}

/// Runs until the engine has dropped its end of the ring and the ring is empty; then
/// flushes and fsyncs.
/// The writer's [`Waker`] goes out through `waker_out` first, for the engine thread.
pub fn run(
    mut ring: rtrb::Consumer<Tick>,
    ctx: WriterContext,
    idle: IdleStrategy,
    waker_out: &std::sync::mpsc::Sender<Waker>,
) {
    let mut idler = Idler::new(idle);
    let _ = waker_out.send(idler.waker());
    let mut writer = Writer::new(ctx);
    let mut ticks = Vec::with_capacity(POP_BATCH_MAX);
    loop {
        let available = ring.slots().min(POP_BATCH_MAX);
        if available == 0 {
            if ring.is_abandoned() && ring.is_empty() {
                break;
            }
            writer.idle_duties();
            idler.idle(0, || !ring.is_empty());
            continue;
        }
        let chunk = ring.read_chunk(available).expect("Invariant: slots() were available");
        ticks.clear();
        ticks.extend(chunk);
        writer.append(&ticks);
        writer.taken += ticks.len() as u64;
        // Release, after the write: the emitter hands on events only once their ticks are
        // written (`journal.emit_after_write`).
        writer.ctx.counters.journal_taken.store(writer.taken, std::sync::atomic::Ordering::Release);
        idler.idle(ticks.len(), || true);
    }
    writer.finish();
}

struct Writer {
    ctx: WriterContext,
    segment: Option<Segment>,
    index: u64,
    buf: Vec<u8>,
    records: u64,
    bytes: u64,
    fsyncs: u64,
    failed_records: u64,
    /// Ticks taken off the ring and written or counted failed.
    taken: u64,
    /// Ring drops already covered by a gap record.
    gaps_written: u64,
    last_fsync: Instant,
    retry_at: Option<Instant>,
}

impl Writer {
    fn new(ctx: WriterContext) -> Writer {
        let index = ctx.next_index;
        Writer {
            ctx,
            segment: None,
            index,
            buf: Vec::with_capacity(WRITE_BATCH_BYTES + codec::PAYLOAD_LEN_MAX * 4),
            records: 0,
            bytes: 0,
            fsyncs: 0,
            failed_records: 0,
            taken: 0,
            gaps_written: 0,
            last_fsync: Instant::now(),
            retry_at: None,
        }
    }

    fn append(&mut self, ticks: &[Tick]) {
        if self.segment.is_none() && !self.try_open() {
            self.fail_records(ticks.len() as u64);
            return;
        }
        self.write_gap_if_any(ticks.first().map_or(Timestamp(0), Tick::ts_recv));
        for tick in ticks {
            self.encode_tick(tick);
            if self.ctx.settings.fsync == FsyncPolicy::EveryRecord
                || self.buf.len() >= WRITE_BATCH_BYTES
            {
                self.flush(self.ctx.settings.fsync == FsyncPolicy::EveryRecord);
            }
        }
        self.flush(false);
        self.fsync_if_due();
    }

    fn encode_tick(&mut self, tick: &Tick) {
        let Some(segment) = self.segment.as_mut() else {
            self.fail_records(1);
            return;
        };
        let id = tick.symbol();
        let (word, bit) = (id.index() / 64, 1u64 << (id.index() % 64));
        if segment.named.get(word).is_some_and(|&w| w & bit == 0) {
            if let Some(ticker) = self.ctx.symbols.name(id) {
                codec::encode(&mut self.buf, &Record::Symbol { id, ticker });
                segment.named[word] |= bit;
            }
        }
        codec::encode(&mut self.buf, &Record::Tick(*tick));
        self.records += 1;
    }

    fn write_gap_if_any(&mut self, recv: Timestamp) {
        let lost = self.ctx.counters.journal_ring_dropped.get() + self.failed_records;
        if lost > self.gaps_written {
            codec::encode(
                &mut self.buf,
                &Record::Gap { records_lost: lost - self.gaps_written, recv },
            );
            self.gaps_written = lost;
        }
    }

    /// Writes the buffer; rolls the segment when it is full.
    fn flush(&mut self, fsync: bool) {
        if self.buf.is_empty() {
            return;
        }
        let Some(segment) = self.segment.as_mut() else { return };
        let path = segment.path.clone();
        let result = segment.file.write_all(&self.buf).and_then(|()| {
            if fsync {
                segment.file.sync_data()?;
            }
            Ok(())
        });
        let written = self.buf.len() as u64;
        match result {
            Ok(()) => {
                segment.bytes += written;
                let full = segment.bytes >= self.ctx.settings.segment_bytes_max;
                self.bytes += written;
                if fsync {
                    self.fsyncs += 1;
                    self.last_fsync = Instant::now();
                }
                self.buf.clear();
                self.publish();
                if full {
                    self.close_segment();
                }
            }
            Err(error) => self.disk_failed("cannot write", &path, &error),
        }
    }

    fn fsync_if_due(&mut self) {
        let interval = Duration::from_millis(self.ctx.settings.fsync_interval_ms.into());
        if self.ctx.settings.fsync == FsyncPolicy::Interval && self.last_fsync.elapsed() >= interval
        {
            self.sync();
        }
    }

    fn sync(&mut self) {
        let Some(segment) = self.segment.as_mut() else { return };
        match segment.file.sync_data() {
            Ok(()) => {
                self.fsyncs += 1;
                self.last_fsync = Instant::now();
                self.publish();
            }
            Err(error) => {
                let path = segment.path.clone();
                self.disk_failed("cannot fsync", &path, &error);
            }
        }
    }

    /// Periodic work while the ring is empty: interval fsyncs, retries after a failure.
    fn idle_duties(&mut self) {
        self.fsync_if_due();
        if self.segment.is_none() && self.retry_at.is_some_and(|at| Instant::now() >= at) {
            self.try_open();
        }
    }

    fn try_open(&mut self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let path = super::segment_path(&self.ctx.settings.dir, self.index);
        let opened =
            OpenOptions::new().create_new(true).append(true).open(&path).and_then(|mut file| {
                file.write_all(&codec::header())?;
                Ok(file)
            });
        match opened {
            Ok(file) => {
                let words = self.ctx.symbols.capacity().div_ceil(64);
                let header = codec::HEADER_LEN as u64;
                let named = vec![0; words];
                self.segment = Some(Segment { file, path: path.clone(), bytes: header, named });
                self.index += 1;
                if self.retry_at.take().is_some() {
                    tracing::info!(path = %path.display(), "journal: writing again");
                }
                // Relaxed: a status flag for readers; it orders nothing.
                self.ctx.counters.journal_down.store(false, Ordering::Relaxed);
                self.state().segment = Some(path);
                true
            }
            Err(error) => {
                self.index += 1;
                self.disk_failed("cannot create", &path, &error);
                false
            }
        }
    }

    fn close_segment(&mut self) {
        if let Some(segment) = self.segment.take() {
            if let Err(error) = segment.file.sync_all() {
                self.disk_failed("cannot fsync", &segment.path, &error);
            } else {
                self.fsyncs += 1;
            }
        }
    }

    /// A write, fsync or create failed: the buffered records are counted lost, a gap is
    /// journaled when writing resumes, and the open is retried every `RETRY_INTERVAL_MS`.
    fn disk_failed(&mut self, what: &str, path: &Path, error: &io::Error) {
        let message = format!("{what} {}: {error}", path.display());
        // Logged when the journal goes down, not on every retry.
        if self.retry_at.is_none() {
            tracing::error!(path = %path.display(), %error, "journal: {what} the segment; retrying every {RETRY_INTERVAL_MS} ms");
        } else {
            tracing::debug!("journal: {message}");
        }
        let lost = self.records_in_buf();
        self.buf.clear();
        self.segment = None;
        self.fail_records(lost);
        self.retry_at = Some(Instant::now() + Duration::from_millis(RETRY_INTERVAL_MS));
        // Relaxed: a status flag for readers.
        self.ctx.counters.journal_down.store(true, Ordering::Relaxed);
        self.state().last_error = Some(message);
        if self.ctx.settings.on_failure == JournalFailurePolicy::Shutdown {
            // Relaxed: the flag is polled; the threads that see it need nothing else from us.
            self.ctx.failed.store(true, Ordering::Relaxed);
            self.ctx.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Tick records still in the unwritten buffer (their symbol and gap records aside).
    fn records_in_buf(&self) -> u64 {
        let mut count = 0;
        let mut at = 0;
        while let Ok((record, len)) = codec::decode(&self.buf[at..]) {
            count += u64::from(matches!(record, Record::Tick(_)));
            at += len;
        }
        count
    }

    fn fail_records(&mut self, count: u64) {
        self.failed_records += count;
        self.records = self.records.saturating_sub(count);
        self.ctx.counters.journal_failed.set(self.failed_records);
        self.publish();
    }

    fn publish(&self) {
        let counters = &self.ctx.counters;
        counters.journal_records.set(self.records);
        counters.journal_bytes.set(self.bytes);
        counters.journal_fsyncs.set(self.fsyncs);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, JournalState> {
        self.ctx.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn finish(&mut self) {
        if self.segment.is_some() {
            self.write_gap_if_any(Timestamp(0));
        }
        self.flush(false);
        self.close_segment();
        self.publish();
    }
}
