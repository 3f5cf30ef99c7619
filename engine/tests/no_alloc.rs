//! The per-tick path allocates and frees nothing after construction.
//!
//! A counting global allocator wraps the system one. The test builds the engine, warms it up
//! (every symbol traded, every window full), resets the counters, then pushes thousands of
//! trades across many symbols, with clock ticks, bar closes, detector events, rejects,
//! aggregates, quotes and FMVs, and a final flush, and asserts zero allocations and frees.
//! It runs with the default limits and with `Config::test_min()`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tickstock_engine::{
    Aggregate, Config, Engine, Fmv, Price, Qty, Quote, SymbolId, Tick, Timestamp, Trade,
};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

// SAFETY: delegates every call to `System`, which upholds the `GlobalAlloc` contract; the
// counters are side effects only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            FREES.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours, passed through.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours, passed through.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MS: u64 = 1_000_000;
/// 2026-11-24 14:00 UTC.
const START_NS: u64 = 1_795_960_800_000_000_000;

/// Deterministic pseudo-random numbers (xorshift), so no allocation and no OS entropy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn drive(
    engine: &mut Engine,
    rng: &mut Rng,
    symbols: u32,
    trades: u64,
    t: &mut u64,
    prices: &mut [i64],
) -> u64 {
    let mut events = 0;
    for i in 0..trades {
        *t += rng.next() % (2 * MS);
        let sym = (rng.next() % u64::from(symbols)) as usize;
        let step = (rng.next() % 201) as i64 - 100;
        prices[sym] = (prices[sym] + prices[sym] * step / 10_000).max(10_000);
        let symbol = SymbolId(sym as u32);
        let tick = match i % 50 {
            7 => Tick::Quote(Quote {
                ts_event: Timestamp(*t),
                bid_price: Price::from_raw(prices[sym]),
                ask_price: Price::from_raw(prices[sym] + 10_000),
                symbol,
                ..Quote::default()
            }),
            13 => Tick::Fmv(Fmv {
                ts_event: Timestamp(*t),
                value: Price::from_raw(prices[sym]),
                symbol,
                ..Fmv::default()
            }),
            21 => Tick::Trade(Trade::new(symbol, Timestamp(*t), Price::ZERO, Qty(1))),
            33 => {
                let second = *t - *t % 1_000_000_000;
                let p = Price::from_raw(prices[sym]);
                Tick::Aggregate(Aggregate {
                    start: Timestamp(second),
                    end: Timestamp(second + 1_000_000_000),
                    open: p,
                    high: p,
                    low: p,
                    close: p,
                    vwap: p,
                    volume: Qty(500),
                    symbol,
                    ..Aggregate::default()
                })
            }
            _ => Tick::Trade(Trade::new(
                symbol,
                Timestamp(*t),
                Price::from_raw(prices[sym]),
                Qty(1 + rng.next() % 2_000),
            )),
        };
        let _ = engine.handle_tick(Timestamp(*t), &tick);
        events += engine.poll_events().count() as u64;
        if i % 97 == 0 {
            engine.handle_clock(Timestamp(*t)).expect("drained");
            events += engine.poll_events().count() as u64;
        }
    }
    events
}

fn check(config: &Config, symbols: u32) {
    let mut engine = Engine::new(config).expect("valid config");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut prices = vec![0i64; symbols as usize];
    for (i, price) in prices.iter_mut().enumerate() {
        *price = 1_000_000 * (1 + (i as i64 % 300));
    }
    let mut t = START_NS;
    // Warm-up: more than the longest window (600 s) of event time for every symbol.
    drive(&mut engine, &mut rng, symbols, 700_000, &mut t, &mut prices);
    ALLOCS.store(0, Ordering::Relaxed);
    FREES.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let events = drive(&mut engine, &mut rng, symbols, 20_000, &mut t, &mut prices);
    // A gap longer than every window, then more trades: the ring-reset path.
    t += 3_600_000 * MS;
    let after_gap = drive(&mut engine, &mut rng, symbols, 5_000, &mut t, &mut prices);
    engine.handle_flush().expect("drained");
    let flushed = engine.poll_events().count();
    COUNTING.store(false, Ordering::Relaxed);
    let (allocs, frees) = (ALLOCS.load(Ordering::Relaxed), FREES.load(Ordering::Relaxed));
    assert_eq!((allocs, frees), (0, 0), "allocations and frees on the per-tick path");
    let stats = engine.stats();
    assert!(
        events > 15_000 && after_gap > 0 && flushed > 0,
        "events: {events} {after_gap} {flushed}"
    );
    assert!(
        stats.high_low_events > 0 && stats.trend_events > 0 && stats.surge_events > 0,
        "{stats:?}"
    );
    assert!(stats.bars_closed_by_clock > 0 && stats.bars_closed_by_trade > 0);
}

#[test]
fn no_allocation_after_construction() {
    // Both configurations in one test: the counters are global, so the cases must not
    // run in parallel.
    check(&Config::default(), 1_000);
    let mut min = Config::test_min();
    min.jump_check_after_trades = 10;
    min.thresholds.surge_mode = tickstock_engine::SurgeMode::Any;
    check(&min, 2);
}
