//! The emitter's sink into the server: each cycle's [`FrameBatch`] is copied once into a
//! pooled, shared batch, and the same `Arc` is handed to every event loop over its own SPSC
//! ring. The engine never waits for any of this: the emitter does, on its own thread.
//!
//! # Overflow
//! Each ring holds [`BATCH_RING_CAPACITY`] batches, and the pool [`BATCH_POOL_MAX`]. When
//! every pooled batch is still held or a ring is full, the emitter waits with the default
//! back-off (spin, yield, then sleeps doubling up to 1 ms) rather than spinning on a core the
//! loops need, and counts the wait once per batch in `sink_waits`. Its own lanes then fill,
//! and their policy applies (`docs/pipeline.md`). Nothing is dropped here.

use std::io;
use std::sync::Arc;

use mio::Waker;

use super::event_log::EventLogInlet;
use super::metrics::ServerStats;
use crate::database::DatabaseInlet;
use crate::emitter::{FrameBatch, FrameSink};
use crate::idle::{IdleStrategy, Idler};
use crate::nats::publisher::NatsInlet;

/// Emitter → event loop ring, in batches.
pub const BATCH_RING_CAPACITY: usize = 16;
/// Pooled shared batches: in the rings, in the loops' hands, and one being filled.
pub const BATCH_POOL_MAX: usize = BATCH_RING_CAPACITY + 4;

/// One event loop's end of the hand-over.
#[derive(Debug)]
pub struct LoopInlet {
    /// Batches into the loop.
    pub ring: rtrb::Producer<Arc<FrameBatch>>,
    /// Wakes the loop.
    pub waker: Arc<Waker>,
}

/// The emitter's sink into the server.
#[derive(Debug)]
pub struct ServerSink {
    loops: Vec<LoopInlet>,
    pool: Vec<Arc<FrameBatch>>,
    batch_bytes: usize,
    idler: Idler,
    /// Whether the batch being handed over has waited (counted) already.
    waited: bool,
    stats: ServerStats,
    /// Each loop's resume history holds this many events (`history_max_events`).
    history_events: usize,
    /// The event log's inlet, when there is one: every batch is logged first.
    event_log: Option<EventLogInlet>,
    /// The database sink's inlet, when there is one: every batch's stored channels.
    database: Option<DatabaseInlet>,
    /// An ingest's NATS publisher's inlet: every batch.
    nats: Option<NatsInlet>,
}

impl ServerSink {
    /// A sink into `loops`, with batches of `batch_bytes`, whose histories hold
    /// `history_events` events.
    pub fn new(
        loops: Vec<LoopInlet>,
        batch_bytes: usize,
        stats: ServerStats,
        history_events: usize,
    ) -> ServerSink {
        ServerSink {
            loops,
            pool: Vec::with_capacity(BATCH_POOL_MAX),
            batch_bytes,
            // Only times its own waits: nothing wakes it, so its thread handle is never used.
            idler: Idler::new(IdleStrategy::default()),
            waited: false,
            stats,
            history_events,
            event_log: None,
            database: None,
            nats: None,
        }
    }

    /// Logs every batch into the event log (`server.event_log_dir`).
    pub fn set_event_log(&mut self, inlet: Option<EventLogInlet>) {
        self.event_log = inlet;
    }

    /// Stores every batch's stored channels in the database (`[database]`).
    pub fn set_database(&mut self, inlet: Option<DatabaseInlet>) {
        self.database = inlet;
    }

    /// Publishes every batch to NATS JetStream (`nats.role = "ingest"`).
    pub fn set_nats(&mut self, inlet: Option<NatsInlet>) {
        self.nats = inlet;
    }

    /// A batch no one else holds, taken out of the pool (allocated while the pool is small).
    fn free_batch(&mut self) -> io::Result<Arc<FrameBatch>> {
        loop {
            if let Some(index) = self.pool.iter().position(|batch| Arc::strong_count(batch) == 1) {
                return Ok(self.pool.swap_remove(index));
            }
            if self.pool.len() < BATCH_POOL_MAX {
                return Ok(Arc::new(FrameBatch::new(self.batch_bytes)));
            }
            self.wait(0)?;
        }
    }

    /// One round of waiting for loop `index`, counted once per batch.
    fn wait(&mut self, index: usize) -> io::Result<()> {
        if self.loops[index].ring.is_abandoned() {
            return Err(io::Error::other("the server has stopped"));
        }
        if !self.waited {
            self.waited = true;
            // The sink is the only writer of this counter.
            self.stats.of_loop(0).sink_waits.add(1);
        }
        self.idler.idle_unsignalled();
        Ok(())
    }
}

impl FrameSink for ServerSink {
    fn emit(&mut self, batch: &FrameBatch) -> io::Result<()> {
        self.waited = false;
        if let Some(log) = self.event_log.as_mut() {
            log.append(batch);
        }
        if let Some(database) = self.database.as_mut() {
            database.append(batch)?;
        }
        if let Some(nats) = self.nats.as_mut() {
            nats.append(batch);
        }
        let mut shared = self.free_batch()?;
        Arc::get_mut(&mut shared).expect("Invariant: a free batch has one owner").copy_from(batch);
        self.pool.push(Arc::clone(&shared));
        for index in 0..self.loops.len() {
            let mut item = Arc::clone(&shared);
            loop {
                match self.loops[index].ring.push(item) {
                    Ok(()) => break,
                    Err(rtrb::PushError::Full(back)) => {
                        item = back;
                        self.wait(index)?;
                    }
                }
            }
            self.loops[index].waker.wake()?;
        }
        // Work done: the next wait starts its back-off from the beginning.
        self.idler.idle(1, || true);
        Ok(())
    }

    fn history_events(&self) -> usize {
        self.history_events
    }

    fn record_after(&self) -> u64 {
        let log = self.event_log.as_ref().map_or(u64::MAX, EventLogInlet::recovered_seq);
        let nats = self.nats.as_ref().map_or(u64::MAX, NatsInlet::published_through);
        log.min(nats)
    }

    fn record(&mut self, batch: &FrameBatch) -> io::Result<()> {
        // Each keeps what it lacks: the log's writer skips the `seq`s it has, the publisher
        // those the stream had at start.
        if let Some(log) = self.event_log.as_mut() {
            log.append_waiting(batch);
        }
        if let Some(nats) = self.nats.as_mut() {
            nats.append_waiting(batch);
        }
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}
