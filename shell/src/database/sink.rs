//! The database sink: the emitter's end ([`DatabaseInlet`]) and the writer thread
//! (`run`) that turns records into rows and writes them in transactions.
//!
//! # Overflow
//! The ring holds `database.ring_bytes`. A batch whose stored events do not fit whole is,
//! under `on_overflow = "drop"` (the default), not stored: its events are counted as
//! dropped and the gap is logged once with its `seq` range when it closes (so it can be
//! backfilled); under `"wait"` the emitter waits for room with the default back-off. While
//! the database is away the writer keeps its current batch and stops reading, so the ring
//! is what holds the rest.
//!
//! # Writing
//! The writer reads at most [`READ_BYTES`] at a time into rows, and writes a transaction
//! when it holds `batch_max_rows` or its oldest row is `flush_interval_ms` old. A failed
//! transaction keeps the batch; after a reconnect (back-off from `retry_ms_min` doubling to
//! `retry_ms_max`) it is written again, and `ON CONFLICT (seq) DO NOTHING` makes the part
//! that did commit harmless: no gap and no duplicate.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::Client;

use super::rows::{self, Rows};
use super::{ChannelSet, DatabaseStatus, Link};
use crate::backoff::Backoff;
use crate::config::DatabaseOverflow;
use crate::emitter::FrameBatch;
use crate::idle::{IdleStrategy, Idler};

/// The most the writer takes from the ring at once.
pub const READ_BYTES: usize = 1 << 20;

/// A gap the ring's overflow made: `seq`s not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gap {
    first_seq: u64,
    last_seq: u64,
    events: u64,
}

/// The emitter's end of the sink: each batch's stored channels, as records, into the ring.
#[derive(Debug)]
pub struct DatabaseInlet {
    ring: rtrb::Producer<u8>,
    channels: ChannelSet,
    overflow: DatabaseOverflow,
    scratch: Vec<u8>,
    status: Arc<DatabaseStatus>,
    gap: Option<Gap>,
    idler: Idler,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl DatabaseInlet {
    pub(super) fn new(
        ring: rtrb::Producer<u8>,
        channels: ChannelSet,
        overflow: DatabaseOverflow,
        status: Arc<DatabaseStatus>,
    ) -> DatabaseInlet {
        DatabaseInlet {
            ring,
            channels,
            overflow,
            scratch: Vec::new(),
            status,
            gap: None,
            // Only times its own waits.
            idler: Idler::new(IdleStrategy::default()),
        }
    }

    /// Stores `batch`'s events of the stored channels, whole, or applies the overflow
    /// policy. Fails only when the writer has stopped (the server is stopping).
    pub fn append(&mut self, batch: &FrameBatch) -> io::Result<()> {
        self.scratch.clear();
        let (mut first, mut last, mut events) = (0, 0, 0u64);
        let now_ms = unix_ms();
        for frame in batch.frames().iter().filter(|f| self.channels.has(f.channel)) {
            if events == 0 {
                first = frame.seq;
            }
            (last, events) = (frame.seq, events + 1);
            rows::encode(&mut self.scratch, frame.seq, now_ms, frame.channel, batch.json(frame));
        }
        if events == 0 {
            return Ok(());
        }
        if self.overflow == DatabaseOverflow::Wait {
            // The ring is a byte stream the writer reassembles records from: a batch larger
            // than its room goes in pieces, as room comes.
            let mut at = 0;
            while at < self.scratch.len() {
                let room = self.ring.slots().min(self.scratch.len() - at);
                if room > 0 {
                    if let Ok(chunk) = self.ring.write_chunk_uninit(room) {
                        chunk.fill_from_iter(self.scratch[at..at + room].iter().copied());
                        at += room;
                        continue;
                    }
                }
                if self.ring.is_abandoned() {
                    return Err(io::Error::other("the database sink has stopped"));
                }
                self.status.counters.ring_waits.fetch_add(1, Ordering::Relaxed);
                self.idler.idle_unsignalled();
            }
            self.idler.idle(1, || true);
            return Ok(());
        }
        // Whole or not at all, so the stream stays record by record.
        if let Ok(chunk) = self.ring.write_chunk_uninit(self.scratch.len()) {
            chunk.fill_from_iter(self.scratch.iter().copied());
            self.close_gap();
            return Ok(());
        }
        self.status.counters.dropped.fetch_add(events, Ordering::Relaxed);
        let gap = self.gap.get_or_insert(Gap { first_seq: first, last_seq: last, events: 0 });
        gap.last_seq = last;
        gap.events += events;
        Ok(())
    }

    /// Logs the open gap, if any: once per gap, with what mends it.
    fn close_gap(&mut self) {
        if let Some(gap) = self.gap.take() {
            self.status.counters.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                first_seq = gap.first_seq,
                last_seq = gap.last_seq,
                events = gap.events,
                "database ring overflowed: events seq {}..={} not stored ({} events); mend \
                 with `tickstock db backfill --journal DIR`",
                gap.first_seq,
                gap.last_seq,
                gap.events
            );
        }
    }
}

impl Drop for DatabaseInlet {
    fn drop(&mut self) {
        self.close_gap();
    }
}

/// The writer's settings.
#[derive(Clone, Debug)]
pub(super) struct WriterSettings {
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// At a stop with the database away, how long to keep trying before giving up.
    pub stop_grace: Duration,
    /// Create or check the schema at each connection (the database may have been empty).
    pub init_schema: bool,
}

/// The writer thread: until `stop` is raised and everything read is written (or the
/// database stayed away for `stop_grace` after it), reads the ring into rows and writes
/// them.
pub(super) fn run(
    mut ring: rtrb::Consumer<u8>,
    link: Link,
    mut client: Option<Client>,
    settings: WriterSettings,
    status: Arc<DatabaseStatus>,
    stop: Arc<AtomicBool>,
) {
    let mut bytes: Vec<u8> = Vec::with_capacity(READ_BYTES);
    let mut rows = Rows::default();
    let mut since = Instant::now();
    let mut backoff = Backoff::new(settings.retry_min, settings.retry_max);
    // No connection is tried before this.
    let mut retry_at = Instant::now();
    let mut stopping_since: Option<Instant> = None;
    let mut idler = Idler::new(IdleStrategy::default());
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if stopping && stopping_since.is_none() {
            stopping_since = Some(Instant::now());
        }
        // Read while the batch has room.
        let mut took = false;
        if rows.len() < settings.batch_max_rows {
            let available = ring.slots().min(READ_BYTES.saturating_sub(bytes.len()));
            if available > 0 {
                if let Ok(chunk) = ring.read_chunk(available) {
                    let (a, b) = chunk.as_slices();
                    bytes.extend_from_slice(a);
                    bytes.extend_from_slice(b);
                    chunk.commit_all();
                    took = true;
                }
            }
            let mut at = 0;
            while rows.len() < settings.batch_max_rows {
                let Some((record, len)) = rows::decode(&bytes[at..]) else { break };
                if rows.is_empty() {
                    since = Instant::now();
                }
                if let Err(defect) = rows.push(&record) {
                    status.counters.unparsed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("database sink: {defect}; the event is not stored");
                }
                at += len;
            }
            bytes.drain(..at);
        }
        let now = Instant::now();
        let due = !rows.is_empty()
            && (rows.len() >= settings.batch_max_rows
                || now.duration_since(since) >= settings.flush_interval
                || stopping);
        if due && client.is_none() && now >= retry_at {
            match super::first_connection(&link, settings.init_schema) {
                Ok(mut connected) => {
                    let stored = super::stored_seq(&mut connected).unwrap_or_default();
                    tracing::info!(
                        "database {}: connected; it holds events up to seq {stored}, this \
                         sink resumes from seq {}",
                        link.target,
                        rows.first_seq
                    );
                    client = Some(connected);
                    backoff.reset();
                    status.set_up();
                }
                Err(reason) => {
                    retry_at = now + backoff.next_wait();
                    status.set_down(&link.target, &reason.to_string());
                }
            }
        }
        if due {
            if let Some(connected) = client.as_mut() {
                match write(connected, &rows) {
                    Ok(inserted) => {
                        status.committed(&rows, inserted, unix_ms());
                        rows.clear();
                    }
                    Err(error) => {
                        status.counters.failures.fetch_add(1, Ordering::Relaxed);
                        let reason = super::reason(&error);
                        status.set_down(&link.target, &reason);
                        if connected.is_closed() || error.as_db_error().is_none() {
                            client = None;
                        }
                        retry_at = now + backoff.next_wait();
                    }
                }
            }
        }
        let drained = rows.is_empty() && bytes.is_empty() && ring.is_empty();
        if stopping && drained {
            return;
        }
        if let Some(at) = stopping_since {
            if now.duration_since(at) >= settings.stop_grace && client.is_none() {
                let held = rows.len() as u64 + ring.slots() as u64 / 200;
                tracing::error!(
                    "database {}: still away at the stop; about {held} events from seq {} on \
                     are not stored (mend with `tickstock db backfill --journal DIR`)",
                    link.target,
                    rows.first_seq
                );
                return;
            }
        }
        if !took && !due {
            idler.idle_unsignalled();
        } else {
            idler.idle(1, || true);
        }
    }
}

/// One transaction: the batch copied in, moved over, committed.
fn write(client: &mut Client, rows: &Rows) -> Result<u64, postgres::Error> {
    let mut tx = client.transaction()?;
    let inserted = rows.write(&mut tx)?;
    tx.commit()?;
    Ok(inserted)
}
