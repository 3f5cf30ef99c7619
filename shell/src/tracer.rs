//! Tracer counters and latency histograms: what each stage of the pipeline did, readable from
//! any thread while it runs (for `/metrics`, the status line and the final report).
//!
//! Each counter has exactly one writing thread, which keeps the running value itself and
//! publishes it with a plain `Relaxed` store: no read-modify-write, no lock on any hot path.
//! Histograms are recorded thread-locally and merged into the shared copy every
//! `stats_interval_ms` with `try_lock`, which never waits: if a reader holds the lock, the
//! merge is retried at the next interval and nothing is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use tickstock_engine::{RejectReason, Stats};

/// Pipeline stages, in the order a trade passes them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Inputs the feed pushed into the ring (ticks, not clock beats).
    pub received: Counter,
    /// Times the feed found the ring full and waited (back-pressure).
    pub feed_ring_full_waits: Counter,
    /// Ticks the engine accepted.
    pub accepted: Counter,
    /// Ticks rejected (by the engine or the feed), in all.
    pub rejected: Counter,
    /// Rejected ticks by reason, indexed by [`RejectReason::index`].
    pub rejected_by: [Counter; RejectReason::COUNT],
    /// Events the engine produced.
    pub detected: Counter,
    /// Events accepted into the multi-frequency buffer.
    pub buffered: Counter,
    /// Events a full lane of the multi-frequency buffer refused.
    pub buffer_dropped: Counter,
    /// Events the emitter pulled out of the buffer.
    pub pulled: Counter,
    /// Events encoded (once each).
    pub encoded: Counter,
    /// Frames handed to the sink.
    pub emitted: Counter,
    /// Batches handed to the sink.
    pub emitted_batches: Counter,
    /// Frames the sink failed to take (a closed stdout, a full disk).
    pub sink_failed: Counter,
    /// Records written to the journal.
    pub journal_records: Counter,
    /// Bytes written to the journal.
    pub journal_bytes: Counter,
    /// Records dropped because the journal ring was full.
    pub journal_ring_dropped: Counter,
    /// Records dropped because the disk failed.
    pub journal_failed: Counter,
    /// `fsync` calls made by the journal.
    pub journal_fsyncs: Counter,
    /// True while the journal cannot write.
    pub journal_down: AtomicBool,
    /// True once the engine has flushed and stopped.
    pub engine_done: AtomicBool,
    /// Engine clock (the largest `now` handled), Unix ns: a stall shows as it falling behind.
    pub engine_now_ns: Counter,
    /// True during a warm restart's replay of the journal: `/health` says `warming` and the
    /// server refuses clients.
    pub warming: AtomicBool,
    /// The first `seq` of live events (0 without a warm restart, or when its replay produced
    /// no event; `u64::MAX` until its replay ends): sinks that do not keep history skip the
    /// replay's events, and the server takes clients once its history holds them.
    pub live_from_seq: std::sync::atomic::AtomicU64,
    /// Ticks the engine has pushed into the journal ring (stored with Release by the engine,
    /// before the events of the tick are published).
    pub journal_pushed: AtomicU64,
    /// Ticks the journal writer has taken off its ring and written, or counted failed
    /// (stored with Release after the `write`): with `journal.emit_after_write`, the emitter
    /// hands on a pulled batch only once this reaches `journal_pushed` as read after the pull.
    pub journal_taken: AtomicU64,
}

/// A counter with one writer: the one counter type of every stage, the server and the
/// upstream client.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// The value.
    pub fn get(&self) -> u64 {
        // Relaxed: a statistic; nothing is ordered by it.
        self.0.load(Ordering::Relaxed)
    }

    /// Publishes the writer's running value.
    pub fn set(&self, value: u64) {
        // Relaxed: as `get`; only the owning thread writes.
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds to the value. Only the one writing thread calls this, so a plain load and store
    /// (no read-modify-write) cannot lose an update.
    pub fn add(&self, delta: u64) {
        // Relaxed: as `get`; only the owning thread writes.
        self.0.store(self.0.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
    }
}

impl Counters {
    /// Publishes the engine's own statistics (called by the engine thread).
    pub fn publish_engine(&self, stats: &Stats) {
        self.accepted.set(
            stats.trades_accepted
                + stats.aggregates_accepted
                + stats.quotes_accepted
                + stats.fmv_accepted,
        );
        self.rejected.set(stats.rejected_total());
        for reason in RejectReason::ALL {
            self.rejected_by[reason.index()].set(stats.rejected(reason));
        }
        self.detected.set(stats.events);
    }
}

/// Latency histograms, in nanoseconds, shared for reading.
#[derive(Debug)]
pub struct Histograms {
    /// Engine time per tick (a chunk's time divided among its ticks).
    pub engine_tick_ns: Mutex<Histogram<u64>>,
    /// Emitter cycle: pull, encode and hand-over.
    pub emitter_cycle_ns: Mutex<Histogram<u64>>,
    /// From a trade's ring entry (its `ts_recv`) to its `T` frame being encoded.
    pub ring_to_frame_ns: Mutex<Histogram<u64>>,
    /// From a trade's ring entry to the socket write that delivered it to a client, per
    /// message written: its oldest trade's latency, counted once for each of its events (an
    /// upper bound), live deliveries only (a replay is as old as it is).
    pub tick_to_client_ns: Mutex<Histogram<u64>>,
}

/// How often threads merge their local histograms into the shared ones, in ms: what a
/// scrape sees is at most this old.
pub const HISTOGRAM_PUBLISH_MS: u64 = 200;

/// Highest value a histogram tracks: one minute in ns; larger values are clamped to it.
pub const HISTOGRAM_NS_MAX: u64 = 60_000_000_000;

/// A histogram with the project's bounds: 1 ns to a minute, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_NS_MAX, 3)
        .expect("Invariant: constant bounds are valid")
}

impl Default for Histograms {
    fn default() -> Histograms {
        Histograms {
            engine_tick_ns: Mutex::new(histogram()),
            emitter_cycle_ns: Mutex::new(histogram()),
            ring_to_frame_ns: Mutex::new(histogram()),
            tick_to_client_ns: Mutex::new(histogram()),
        }
    }
}

/// A histogram one thread records into now and then (a few to a thousand samples a
/// second, so its lock is uncontended) and `/metrics` reads, with [`histogram`]'s bounds.
#[derive(Debug)]
pub struct SharedHistogram(pub Mutex<Histogram<u64>>);

impl Default for SharedHistogram {
    fn default() -> SharedHistogram {
        SharedHistogram(Mutex::new(histogram()))
    }
}

impl SharedHistogram {
    /// Records one sample, ns (at least 1, at most [`HISTOGRAM_NS_MAX`]).
    pub fn record(&self, value_ns: u64) {
        let mut histogram = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        histogram.saturating_record(value_ns.clamp(1, HISTOGRAM_NS_MAX));
    }
}

/// A thread's local histogram and the shared one it is merged into.
#[derive(Debug)]
pub struct LocalHistogram {
    local: Histogram<u64>,
}

impl Default for LocalHistogram {
    fn default() -> LocalHistogram {
        LocalHistogram { local: histogram() }
    }
}

impl LocalHistogram {
    /// Records `count` values of `value_ns` (clamped into range).
    pub fn record_n(&mut self, value_ns: u64, count: u64) {
        let value = value_ns.clamp(1, HISTOGRAM_NS_MAX);
        self.local.record_n(value, count).expect("Invariant: the value was clamped into range");
    }

    /// Merges into `shared` if its lock is free, then starts afresh; never waits.
    pub fn publish(&mut self, shared: &Mutex<Histogram<u64>>) {
        if self.local.is_empty() {
            return;
        }
        if let Ok(mut shared) = shared.try_lock() {
            shared.add(&self.local).expect("Invariant: histograms share their bounds");
            self.local.reset();
        }
    }

    /// Merges into `shared`, waiting for the lock: for the end of a run.
    pub fn publish_final(&mut self, shared: &Mutex<Histogram<u64>>) {
        let mut shared = shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        shared.add(&self.local).expect("Invariant: histograms share their bounds");
        self.local.reset();
    }
}

/// p50, p99, p99.9 and max of a histogram, in ns; `None` when it holds nothing (an empty
/// histogram's percentiles are not zero, they are meaningless).
pub fn percentiles(histogram: &Mutex<Histogram<u64>>) -> Option<[u64; 4]> {
    let h = histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let at = |q| h.value_at_quantile(q);
    (!h.is_empty()).then(|| [at(0.5), at(0.99), at(0.999), h.max()])
}
