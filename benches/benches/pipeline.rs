//! The pipeline's pieces and the whole: encoding one event, the multi-frequency buffer's
//! publish and pull, and trades end to end through feed -> ring -> engine -> mfbuf ->
//! emitter (encoded, then discarded) on their threads.
//!
//! A regression in `encode` or `mfbuf` lowers the emitter's ceiling; in `end_to_end` it
//! lowers how many trades/s one server ingests with every detector on (issue 4's target: at
//! least 1,000,000 trades/s). `end_to_end/base` is a run with no trades: thread start-up, the
//! engine's allocation and shutdown, to subtract from the others.

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tickstock_benches::TradeStream;
use tickstock_engine::encode::encode_event;
use tickstock_engine::limits::EVENT_JSON_BYTES_MAX;
use tickstock_engine::mfbuf::{mfbuf, MfBufConfig};
use tickstock_engine::{Config, Engine, Event, Tick};
use tickstock_shell::config::Settings;
use tickstock_shell::emitter::NullSink;
use tickstock_shell::feed::synthetic::SyntheticFeed;
use tickstock_shell::feed::FeedEnd;
use tickstock_shell::pipeline::{self, TimeMode};

/// Trades per end-to-end run under `cargo bench`; enough that start-up is a few percent.
const RUN_TRADES: u64 = 2_000_000;
/// Trades per run under `cargo test --benches`.
const TEST_MODE_RUN_TRADES: u64 = 20_000;

fn benching() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// A realistic mix of events: what the engine produces from a synthetic stream.
fn sample_events(count: usize) -> Vec<Event> {
    let mut engine = Engine::new(&Config::default()).expect("default config is valid");
    let mut stream = TradeStream::new(100, 2_000, 7);
    let mut events = Vec::with_capacity(count);
    while events.len() < count {
        let trade = stream.next_trade();
        let _ = engine.handle_tick(trade.ts_event, &Tick::Trade(trade));
        events.extend(engine.poll_events());
    }
    events.truncate(count);
    assert!(
        events.iter().any(|e| e.body.channel() == tickstock_engine::Channel::A),
        "the sample has bars"
    );
    events
}

fn encode(c: &mut Criterion) {
    let events = sample_events(4_096);
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("mixed_events", |b| {
        let mut out = Vec::with_capacity(events.len() * EVENT_JSON_BYTES_MAX);
        b.iter(|| {
            out.clear();
            for event in &events {
                encode_event(&mut out, event, "MSFT");
            }
            black_box(out.len())
        });
    });
    group.bench_function("base", |b| {
        b.iter(|| black_box(events.iter().map(|e| e.seq).sum::<u64>()))
    });
    group.finish();
}

fn mfbuf_publish_pull(c: &mut Criterion) {
    let events = sample_events(4_096);
    let (mut producer, mut consumer, counters) = mfbuf(&MfBufConfig::default());
    let mut group = c.benchmark_group("mfbuf");
    group.throughput(Throughput::Elements(events.len() as u64));
    for batch in [1usize, 16, 256] {
        group.bench_function(format!("publish_batch_{batch}_then_pull"), |b| {
            b.iter(|| {
                for chunk in events.chunks(batch) {
                    producer.publish(chunk.iter().copied());
                }
                let mut pulled = consumer.pull().expect("single-threaded: no batch in flight");
                let mut seq_sum = 0;
                pulled.for_each_in_seq(|event| seq_sum += event.seq);
                black_box(seq_sum)
            });
        });
    }
    assert_eq!(counters.dropped_total(), 0);
    group.finish();
}

fn run_pipeline(trades: u64) -> u64 {
    let mut settings = Settings::default();
    settings.synthetic.virtual_time = true;
    settings.synthetic.trades_max = Some(trades);
    let feed = Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1));
    let stop = Arc::new(AtomicBool::new(false));
    let report =
        pipeline::run(&settings, feed, Box::new(NullSink), TimeMode::Given, stop, |_, _| {})
            .expect("the pipeline starts");
    assert!(matches!(report.feed_end, FeedEnd::Exhausted));
    let c = &report.counters;
    assert_eq!(c.accepted.get(), trades, "every trade accepted");
    assert_eq!(c.emitted.get(), c.detected.get(), "every event emitted, none dropped");
    c.emitted.get()
}

fn end_to_end(c: &mut Criterion) {
    let trades = if benching() { RUN_TRADES } else { TEST_MODE_RUN_TRADES };
    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(trades));
    group.bench_function("synthetic_4000_symbols_all_detectors", |b| {
        b.iter_batched(|| (), |()| run_pipeline(trades), BatchSize::PerIteration);
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("base", |b| {
        b.iter_batched(|| (), |()| run_pipeline(0), BatchSize::PerIteration)
    });
    group.finish();
}

criterion_group!(benches, encode, mfbuf_publish_pull, end_to_end);
criterion_main!(benches);
