//! The running system: the threads, the rings between them, and their start and stop.
//!
//! ```text
//!  feed thread ──rtrb ring (Input)──▶ engine thread ──mfbuf (swap-on-pull)──▶ emitter ──▶ sink
//!                                        │
//!                                        └──rtrb ring (accepted Tick)──▶ journal writer ──▶ disk
//! ```
//!
//! This module is the one place that spawns and pins threads and reads the clock for the
//! engine (STYLE habit 1). Each arrow is single-producer single-consumer: no thread ever
//! takes a lock another thread holds on the data path, and the engine never waits for the
//! emitter or the journal (their overflow policies are in [`tickstock_engine::mfbuf`] and
//! [`crate::journal`]).
//!
//! # Shutdown
//! Raising the stop flag (SIGINT/SIGTERM, or the journal under `on_failure = "shutdown"`)
//! stops the feed, which sends `End` down the ring. The engine handles everything before it,
//! closes its open bars, publishes them and drops its ring ends. The emitter drains both sets
//! of the buffer and flushes the sink; the journal writer drains its ring, then flushes and
//! fsyncs. Then [`run`] returns its [`Report`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tickstock_engine::mfbuf::{self, Lane, MfBufCounters, MfProducer};
use tickstock_engine::{hint, Engine, SymbolTable, Tick};

use crate::clock::Clock;
use crate::config::{Backpressure, JournalFailurePolicy, Settings};
use crate::emitter::{self, EmitterContext, FrameSink};
use crate::feed::{Feed, FeedEnd, FeedTx, Input, TimeSource};
use crate::idle::{Idler, Waker};
use crate::journal::{self, writer::JournalState, Recovery};
use crate::tracer::{percentiles, Counters, Histograms, LocalHistogram};

/// How the engine clock is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeMode {
    /// Live feeds: stamped with the runtime clock at ring entry.
    Live,
    /// Replays and virtual-time feeds: the feed's own `ts_recv`.
    Given,
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    /// How the feed ended.
    pub feed_end: FeedEnd,
    /// Journal recovery at start-up, when journaling.
    pub recovery: Option<Recovery>,
    /// True when the journal stopped the server (`on_failure = "shutdown"`).
    pub journal_failed: bool,
    /// The journal's last error and segment.
    pub journal_state: JournalState,
    /// Stage counters at the end.
    pub counters: Arc<Counters>,
    /// Histograms at the end.
    pub histograms: Arc<Histograms>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Something that stopped the pipeline from starting.
#[derive(Debug)]
pub enum StartError {
    /// A setting the engine refuses.
    Config(String),
    /// The journal directory could not be recovered or created.
    Journal(std::io::Error),
    /// A thread could not be spawned.
    Spawn(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(message) => write!(f, "invalid configuration: {message}"),
            StartError::Journal(error) => write!(f, "journal: {error}"),
            StartError::Spawn(error) => write!(f, "cannot start a thread: {error}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Shared by the threads.
struct Shared {
    settings: Settings,
    counters: Arc<Counters>,
    histograms: Arc<Histograms>,
    stop: Arc<AtomicBool>,
    clock: Clock,
}

/// What a running pipeline publishes, created by the caller so that others (the server's
/// `/metrics` and `/health`) can read it while the pipeline runs.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Stage counters.
    pub counters: Arc<Counters>,
    /// Latency histograms.
    pub histograms: Arc<Histograms>,
    /// The journal's last error and segment.
    pub journal_state: Arc<Mutex<JournalState>>,
}

/// For a feed that warms up (a warm restart), marks `observed` as warming, so that clients
/// are refused and live-only sinks skip the replay until it is done; returns whether it
/// does. Idempotent: a server marks it before it listens, the pipeline again at its start.
pub fn mark_warm_up(observed: &Observed, feed: &dyn Feed) -> bool {
    let warm = feed.warms_up();
    if warm {
        observed.counters.live_from_seq.store(u64::MAX, Ordering::Release);
        observed.counters.warming.store(true, Ordering::Release);
    }
    warm
}

/// Runs the pipeline from `feed` to `sink` until the feed ends or `stop` is raised.
/// `status` is called every `stats_interval_ms` from the calling thread while it runs.
pub fn run(
    settings: &Settings,
    feed: Box<dyn Feed>,
    sink: Box<dyn FrameSink>,
    time: TimeMode,
    stop: Arc<AtomicBool>,
    status: impl FnMut(&Counters, &Histograms),
) -> Result<Report, StartError> {
    run_observed(settings, feed, sink, time, stop, status, Observed::default())
}

/// [`run`], publishing into `observed`.
pub fn run_observed(
    settings: &Settings,
    feed: Box<dyn Feed>,
    sink: Box<dyn FrameSink>,
    time: TimeMode,
    stop: Arc<AtomicBool>,
    mut status: impl FnMut(&Counters, &Histograms),
    observed: Observed,
) -> Result<Report, StartError> {
    let started = Instant::now();
    let engine = Engine::new(&settings.engine).map_err(|e| StartError::Config(e.to_string()))?;
    let warm = mark_warm_up(&observed, feed.as_ref());
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        counters: Arc::clone(&observed.counters),
        histograms: Arc::clone(&observed.histograms),
        stop: Arc::clone(&stop),
        clock: Clock::new(),
    });
    let symbol_table = SymbolTable::new(settings.engine.symbols_max);
    let symbols = symbol_table.names();
    let (mf_producer, mf_consumer, mf_counters) = mfbuf::mfbuf(&settings.mfbuf);
    let (ring_tx, ring_rx) = rtrb::RingBuffer::new(settings.pipeline.ring_capacity as usize);
    let journal_failed = Arc::new(AtomicBool::new(false));
    let journal_state = Arc::clone(&observed.journal_state);
    let mut threads = Vec::new();
    let (waker_tx, waker_rx) = mpsc::channel();

    let emitter_ctx = EmitterContext {
        consumer: mf_consumer,
        symbols: Arc::clone(&symbols),
        counters: Arc::clone(&shared.counters),
        histograms: Arc::clone(&shared.histograms),
        clock: shared.clock,
        cycle: Duration::from_micros(settings.pipeline.emitter_cycle_us.into()),
        batch_bytes: settings.pipeline.emitter_batch_bytes as usize,
        publish_interval: Duration::from_millis(crate::tracer::HISTOGRAM_PUBLISH_MS),
        measure_latency: time == TimeMode::Live,
        after_journal: settings.journal.enabled && settings.journal.emit_after_write,
    };
    let idle = settings.pipeline.emitter_idle;
    let tx = waker_tx.clone();
    threads.push(spawn("tickstock-emit", move || emitter::run(emitter_ctx, sink, idle, tx))?);
    let emitter_waker = waker_rx.recv().expect("Invariant: the emitter sends its waker first");

    let (recovery, journal_ring, journal_waker) = if settings.journal.enabled {
        let recovery = journal::recover(&settings.journal.dir).map_err(StartError::Journal)?;
        let (jtx, jrx) = rtrb::RingBuffer::new(settings.journal.ring_capacity as usize);
        let ctx = journal::writer::WriterContext {
            settings: settings.journal.clone(),
            symbols: Arc::clone(&symbols),
            counters: Arc::clone(&shared.counters),
            state: Arc::clone(&journal_state),
            stop: Arc::clone(&stop),
            failed: Arc::clone(&journal_failed),
            next_index: recovery.next_index,
        };
        let idle = settings.pipeline.journal_idle;
        let tx = waker_tx.clone();
        threads
            .push(spawn("tickstock-journal", move || journal::writer::run(jrx, ctx, idle, &tx))?);
        let waker = waker_rx.recv().expect("Invariant: the journal sends its waker first");
        (Some(recovery), Some(jtx), Some(waker))
    } else {
        (None, None, None)
    };

    let continuous = settings.pipeline.emitter_cycle_us == 0;
    let engine_shared = Arc::clone(&shared);
    let tx = waker_tx.clone();
    let stop_on_drop = settings.journal.on_failure == JournalFailurePolicy::Shutdown;
    let wait_for_emitter = match settings.pipeline.emitter_backpressure {
        Backpressure::Auto => time == TimeMode::Given,
        Backpressure::Drop => false,
        Backpressure::Wait => true,
    };
    // Half the smallest of the busy lanes: the other half is headroom for one chunk's events
    // plus a second's bars closing at once (`per_minute_capacity >= symbols_max` covers the
    // minute lane).
    let backlog_max = wait_for_emitter.then_some(u64::from(settings.mfbuf.per_second_capacity / 2));
    let outputs = EngineOutputs {
        mf: mf_producer,
        mf_counters,
        backlog_max,
        emitter: continuous.then_some(emitter_waker),
        journal: JournalOut {
            ring: journal_ring,
            waker: journal_waker,
            pushed: 0,
            dropped: 0,
            stop_on_drop,
            warming: warm,
        },
        warm_backlog_max: u64::from(settings.mfbuf.per_second_capacity / 2),
    };
    threads.push(spawn("tickstock-engine", move || {
        engine_thread(engine, ring_rx, outputs, &engine_shared, &tx);
    })?);
    let engine_waker = waker_rx.recv().expect("Invariant: the engine sends its waker first");

    let live_time = match time {
        TimeMode::Live => TimeSource::Live(shared.clock),
        TimeMode::Given => TimeSource::Given,
    };
    let feed_shared = Arc::clone(&shared);
    let (end_tx, end_rx) = mpsc::channel();
    let feed_thread = spawn("tickstock-feed", move || {
        let idler = Idler::new(feed_shared.settings.pipeline.feed_idle);
        let counters = Arc::clone(&feed_shared.counters);
        let stop = Arc::clone(&feed_shared.stop);
        let mut tx = FeedTx::new(
            ring_tx,
            symbol_table,
            engine_waker,
            idler,
            counters,
            stop,
            live_time,
            warm,
        );
        let mut feed = feed;
        let end = feed.run(&mut tx);
        tx.end();
        let _ = end_tx.send(end);
    })?;

    let interval = Duration::from_millis(settings.pipeline.stats_interval_ms.into());
    let mut next_status = Instant::now() + interval;
    while !threads.iter().all(thread::JoinHandle::is_finished) || !feed_thread.is_finished() {
        thread::sleep(Duration::from_millis(20));
        if Instant::now() >= next_status {
            status(&shared.counters, &shared.histograms);
            next_status += interval;
        }
    }
    let feed_end = match (feed_thread.join(), end_rx.try_recv()) {
        (Ok(()), Ok(end)) => end,
        _ => FeedEnd::Failed("the feed thread panicked".to_owned()),
    };
    for handle in threads {
        if handle.join().is_err() {
            return Err(StartError::Spawn(std::io::Error::other("a pipeline thread panicked")));
        }
    }
    let journal_state =
        journal_state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    Ok(Report {
        feed_end,
        recovery,
        journal_failed: journal_failed.load(Ordering::Relaxed),
        journal_state,
        counters: Arc::clone(&shared.counters),
        histograms: Arc::clone(&shared.histograms),
        elapsed: started.elapsed(),
    })
}

fn spawn(
    name: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<thread::JoinHandle<()>, StartError> {
    thread::Builder::new().name(name.to_owned()).spawn(f).map_err(StartError::Spawn)
}

/// Where the engine thread's output goes.
struct EngineOutputs {
    mf: MfProducer,
    mf_counters: Arc<MfBufCounters>,
    /// With back-pressure: the most events buffered but not yet pulled before the engine
    /// waits for the emitter.
    backlog_max: Option<u64>,
    /// Woken after each batch when the emitter pulls continuously.
    emitter: Option<Waker>,
    journal: JournalOut,
    /// The backlog bound while a warm restart replays (at full speed, it waits for the
    /// emitter whatever `emitter_backpressure` says, so the history loses nothing).
    warm_backlog_max: u64,
}

/// The engine's end of the journal ring.
struct JournalOut {
    ring: Option<rtrb::Producer<Tick>>,
    waker: Option<Waker>,
    /// Ticks pushed into the ring.
    pushed: u64,
    dropped: u64,
    stop_on_drop: bool,
    /// A warm restart's replay: its ticks are in the journal already.
    warming: bool,
}

/// The engine thread: pops chunks of inputs, runs the engine, publishes events, journals
/// accepted ticks. Never waits on anything but its own ring.
fn engine_thread(
    mut engine: Engine,
    mut ring: rtrb::Consumer<Input>,
    mut out: EngineOutputs,
    shared: &Shared,
    waker_out: &mpsc::Sender<Waker>,
) {
    let pipeline = &shared.settings.pipeline;
    if let Some(core) = pipeline.engine_core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!(core, "could not pin the engine thread to its core; running unpinned");
        }
    }
    let mut idler = Idler::new(pipeline.engine_idle);
    let _ = waker_out.send(idler.waker());
    let chunk_max = pipeline.engine_chunk_max as usize;
    let publish_interval = Duration::from_millis(crate::tracer::HISTOGRAM_PUBLISH_MS);
    let mut next_publish = Instant::now() + publish_interval;
    let mut tick_ns = LocalHistogram::default();
    loop {
        let warm_bound = out.journal.warming.then_some(out.warm_backlog_max);
        if let Some(backlog_max) = out.backlog_max.or(warm_bound) {
            let buffered: u64 = Lane::ALL.iter().map(|&lane| out.mf_counters.buffered(lane)).sum();
            if buffered.saturating_sub(shared.counters.pulled.get()) > backlog_max {
                idler.idle_unsignalled();
                continue;
            }
        }
        let available = ring.slots().min(chunk_max);
        if available == 0 {
            if ring.is_abandoned() && ring.is_empty() {
                break;
            }
            if Instant::now() >= next_publish {
                tick_ns.publish(&shared.histograms.engine_tick_ns);
                next_publish = Instant::now() + publish_interval;
            }
            idler.idle(0, || !ring.is_empty());
            continue;
        }
        let chunk = ring.read_chunk(available).expect("Invariant: slots() were available");
        let (first, second) = chunk.as_slices();
        let began = shared.clock.now();
        let ended = out.mf.publish_with(|lanes| {
            let mut ended = false;
            for index in 0..first.len() + second.len() {
                if let Some(ahead) = at(first, second, index + hint::PREFETCH_INPUT_DISTANCE) {
                    hint::prefetch(ahead);
                }
                if let Some(Input::Tick(ahead)) = at(first, second, index + hint::PREFETCH_DISTANCE)
                {
                    engine.prefetch(ahead);
                }
                let input = at(first, second, index).expect("Invariant: index < chunk length");
                ended |= step(&mut engine, input, &mut out.journal, shared);
                for event in engine.poll_events() {
                    lanes.push(event);
                }
            }
            ended
        });
        let count = chunk.len() as u64;
        chunk.commit_all();
        let spent = shared.clock.now().0.saturating_sub(began.0);
        tick_ns.record_n(spent / count, count);
        shared.counters.publish_engine(engine.stats());
        let buffered = Lane::ALL.iter().map(|&lane| out.mf_counters.buffered(lane)).sum();
        shared.counters.buffered.set(buffered);
        shared.counters.buffer_dropped.set(out.mf_counters.dropped_total());
        shared.counters.engine_now_ns.set(engine.now().0);
        if let Some(waker) = &out.emitter {
            waker.wake();
        }
        if ended {
            break;
        }
        idler.idle(count as usize, || true);
    }
    tick_ns.publish_final(&shared.histograms.engine_tick_ns);
    drop(out.journal.ring.take());
    if let Some(waker) = &out.journal.waker {
        waker.wake();
    }
    // Release pairs with the emitter's Acquire load: every batch published above is in the
    // buffer before the emitter learns the engine is done.
    shared.counters.engine_done.store(true, Ordering::Release);
    if let Some(waker) = &out.emitter {
        waker.wake();
    }
}

fn at<'a>(first: &'a [Input], second: &'a [Input], index: usize) -> Option<&'a Input> {
    first.get(index).or_else(|| second.get(index.checked_sub(first.len())?))
}

/// Handles one input; returns true at `End`.
fn step(engine: &mut Engine, input: &Input, journal: &mut JournalOut, shared: &Shared) -> bool {
    let drained = "Invariant: the engine's events are drained after every call";
    match *input {
        Input::Tick(tick) => {
            if engine.handle_tick(tick.ts_recv(), &tick).is_ok() && !journal.warming {
                journal_tick(tick, journal, shared);
            }
        }
        Input::Warmed => {
            journal.warming = false;
            // Release: pairs with the emitter's Acquire load after a pull; every event it
            // pulls from here on has a `seq` at or above this. 0 when the replay produced
            // no event: nothing to skip, nothing for a history to wait for.
            let live_from = if engine.stats().events > 0 { engine.seq_next() } else { 0 };
            shared.counters.live_from_seq.store(live_from, Ordering::Release);
            shared.counters.warming.store(false, Ordering::Release);
        }
        Input::Clock(now) => engine.handle_clock(now).expect(drained),
        Input::Rejected { recv, reason } => {
            engine.handle_clock(recv).expect(drained);
            engine.handle_rejected(reason);
        }
        Input::End => {
            engine.handle_flush().expect(drained);
            return true;
        }
    }
    false
}

fn journal_tick(tick: Tick, journal: &mut JournalOut, shared: &Shared) {
    let Some(ring) = journal.ring.as_mut() else { return };
    if ring.push(tick).is_ok() {
        journal.pushed += 1;
        // Release, before the tick's events are published: an emitter that pulls them reads
        // at least this count (see `journal_taken`).
        shared.counters.journal_pushed.store(journal.pushed, Ordering::Release);
        if let Some(waker) = &journal.waker {
            waker.wake();
        }
        return;
    }
    journal.dropped += 1;
    shared.counters.journal_ring_dropped.set(journal.dropped);
    if journal.stop_on_drop {
        // Relaxed: a polled flag.
        shared.stop.store(true, Ordering::Relaxed);
    }
}

/// `p50/p99/p99.9/max` of the three histograms, for status lines and reports.
pub fn latency_summary(histograms: &Histograms) -> String {
    let us = |ns: u64| ns as f64 / 1_000.0;
    let line = |name: &str, p: Option<[u64; 4]>| match p {
        Some(p) => format!(
            "{name} p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
            us(p[0]),
            us(p[1]),
            us(p[2]),
            us(p[3])
        ),
        None => format!("{name} none measured"),
    };
    [
        line("engine per tick:", percentiles(&histograms.engine_tick_ns)),
        line("ring entry to frame:", percentiles(&histograms.ring_to_frame_ns)),
        line("emitter cycle:", percentiles(&histograms.emitter_cycle_ns)),
    ]
    .join("\n")
}
