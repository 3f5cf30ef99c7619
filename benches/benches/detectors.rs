//! Cost per trade through the engine core: validation, `A`/`AM` bars, `HL`, `TR` and `SV`,
//! with 1, 100 and 10,000 active symbols, on a warmed-up engine (every window full).
//!
//! A regression here means every trade costs more on the pinned engine core, which lowers
//! the ingest ceiling of the whole server. Target (issue 3): median <= 200 ns per trade at
//! 10,000 symbols. `base` measures the harness alone (reading the precomputed trades).

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickstock_benches::TradeStream;
use tickstock_engine::{hint, Config, Engine, Tick, Timestamp, Trade};

/// Event-time rate of the stream: the synthetic market's default, 20,000 trades/s.
const RATE_PER_SEC: u64 = 20_000;
/// Trades precomputed for the timed loop; replayed with time shifted on each pass.
const CHUNK_TRADES: usize = 1 << 20;

/// Under `cargo test --benches` (no `--bench` argument) each bench runs once to check its
/// asserts; a slower stream keeps the warm-up short there.
const TEST_MODE_RATE_PER_SEC: u64 = 200;
/// Chunk size under `cargo test --benches`.
const TEST_MODE_CHUNK_TRADES: usize = 4_096;

/// The event rate and chunk size: full size under `cargo bench`, small under `cargo test`.
fn sizes() -> (u64, usize) {
    if std::env::args().any(|arg| arg == "--bench") {
        (RATE_PER_SEC, CHUNK_TRADES)
    } else {
        (TEST_MODE_RATE_PER_SEC, TEST_MODE_CHUNK_TRADES)
    }
}
/// Event time of warm-up before timing: longer than the longest trend window (600 s).
const WARMUP_SECS: u64 = 700;

/// An engine warmed up on `symbols` symbols and the chunk of trades that continues it.
fn setup(symbols: u32) -> (Engine, Vec<Trade>) {
    let mut config = Config::default();
    config.symbols_max = symbols.max(16_384);
    let mut engine = Engine::new(&config).expect("default config is valid");
    let (rate, chunk_trades) = sizes();
    let mut stream = TradeStream::new(symbols, rate, 0x5EED);
    for _ in 0..WARMUP_SECS * rate {
        let trade = stream.next_trade();
        let _ = engine.handle_tick(trade.ts_event, &Tick::Trade(trade));
        engine.poll_events().for_each(drop);
    }
    let stats = *engine.stats();
    assert!(stats.trend_events > 0, "warm-up reached the trend detector: {stats:?}");
    assert_eq!(stats.rejected_total(), 0, "the generated stream is valid");
    let chunk = stream.take_trades(chunk_trades);
    (engine, chunk)
}

/// Feeds `iters` trades from `chunk`, shifting time by the chunk's span on every pass.
fn run(
    engine: &mut Engine,
    chunk: &[Trade],
    cursor: &mut usize,
    shift_ns: &mut u64,
    iters: u64,
) -> Duration {
    let span_ns = chunk[chunk.len() - 1].ts_event.0 - chunk[0].ts_event.0 + 1_000_000_000;
    let start = Instant::now();
    for _ in 0..iters {
        // Both prefetches, as the pipeline's engine thread runs them over each chunk it pops
        // from the ring.
        let at = |distance: usize| &chunk[(*cursor + distance) % chunk.len()];
        hint::prefetch(at(hint::PREFETCH_INPUT_DISTANCE));
        engine.prefetch(&Tick::Trade(*at(hint::PREFETCH_DISTANCE)));
        let mut trade = chunk[*cursor];
        trade.ts_event = Timestamp(trade.ts_event.0 + *shift_ns);
        let _ = engine.handle_tick(trade.ts_event, black_box(&Tick::Trade(trade)));
        for event in engine.poll_events() {
            black_box(event);
        }
        *cursor += 1;
        if *cursor == chunk.len() {
            *cursor = 0;
            *shift_ns += span_ns;
        }
    }
    start.elapsed()
}

fn per_trade(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_per_trade");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    for symbols in [1u32, 100, 10_000] {
        // Built on first use, so that a filtered run does not pay for the other warm-ups.
        let mut state: Option<(Engine, Vec<Trade>, usize, u64)> = None;
        group.bench_function(BenchmarkId::new("all_detectors", symbols), |b| {
            let (engine, chunk, cursor, shift_ns) = state.get_or_insert_with(|| {
                let (engine, chunk) = setup(symbols);
                (engine, chunk, 0, 0)
            });
            b.iter_custom(|iters| run(engine, chunk, cursor, shift_ns, iters));
        });
        if let Some((engine, ..)) = &state {
            let accepted = engine.stats().trades_accepted;
            assert_eq!(engine.stats().rejected_total(), 0, "no trade was rejected while timing");
            assert!(accepted > WARMUP_SECS * sizes().0, "the timed loop ran");
        }
    }
    let chunk = TradeStream::new(10_000, sizes().0, 1).take_trades(sizes().1);
    let mut cursor = 0;
    group.bench_function("base", |b| {
        b.iter(|| {
            let trade = chunk[cursor];
            cursor = (cursor + 1) % chunk.len();
            black_box(Tick::Trade(trade))
        });
    });
    group.finish();
}

criterion_group!(benches, per_trade);
criterion_main!(benches);
