//! After start-up the running pipeline allocates nothing: a counting global allocator sees no
//! allocation and no free in any thread while 200,000 trades go through feed, ring, engine,
//! multi-frequency buffer, emitter (encoding every event) and sink, bars and detectors firing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickstock_shell::emitter::{FrameBatch, FrameSink};
use tickstock_shell::feed::synthetic::Market;
use tickstock_shell::feed::{Feed, FeedEnd, FeedTx};
use tickstock_shell::pipeline::{self, TimeMode};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        FREES.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP_TRADES: u64 = 300_000;
const MEASURED_TRADES: u64 = 200_000;
/// Time for every thread to finish the warm-up and go idle.
const SETTLE: Duration = Duration::from_millis(500);

/// Counts frames without keeping them.
struct CountingSink(Arc<AtomicU64>);

impl FrameSink for CountingSink {
    fn emit(&mut self, batch: &FrameBatch) -> std::io::Result<()> {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The synthetic market, with a pause after the warm-up in which counts are taken.
struct MeasuredFeed {
    market: Market,
    counts: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl Feed for MeasuredFeed {
    fn name(&self) -> &'static str {
        "measured synthetic"
    }

    fn run(&mut self, tx: &mut FeedTx) -> FeedEnd {
        let ids: Vec<_> = self.market.tickers().iter().map(|t| tx.intern(t).unwrap()).collect();
        self.market.set_ids(&ids);
        let snapshot = || (ALLOCATIONS.load(Ordering::SeqCst), FREES.load(Ordering::SeqCst));
        for phase in [WARMUP_TRADES, MEASURED_TRADES] {
            for _ in 0..phase {
                let trade = self.market.next_trade();
                tx.send_tick(tickstock_engine::Tick::Trade(trade)).unwrap();
            }
            std::thread::sleep(SETTLE);
            let now = snapshot();
            self.counts.lock().unwrap().push(now);
        }
        FeedEnd::Exhausted
    }
}

#[test]
fn the_running_pipeline_allocates_nothing() {
    let mut settings = tickstock_shell::config::Settings::default();
    settings.synthetic.virtual_time = true;
    settings.synthetic.symbols = 1_000;
    settings.synthetic.trades_per_sec = 500;
    let counts = Arc::new(Mutex::new(Vec::with_capacity(4)));
    let feed = Box::new(MeasuredFeed {
        market: Market::new(&settings.synthetic),
        counts: Arc::clone(&counts),
    });
    let emitted = Arc::new(AtomicU64::new(0));
    let sink = Box::new(CountingSink(Arc::clone(&emitted)));
    let stop = Arc::new(AtomicBool::new(false));
    let report = pipeline::run(&settings, feed, sink, TimeMode::Given, stop, |_, _| {}).unwrap();
    let counts = counts.lock().unwrap().clone();
    let (allocs, frees) = (counts[1].0 - counts[0].0, counts[1].1 - counts[0].1);
    assert_eq!((allocs, frees), (0, 0), "allocations and frees while {MEASURED_TRADES} trades ran");
    let c = &report.counters;
    assert_eq!(c.accepted.get(), WARMUP_TRADES + MEASURED_TRADES);
    assert!(
        c.detected.get() > (WARMUP_TRADES + MEASURED_TRADES) * 11 / 10,
        "bars and detector events fired"
    );
    assert_eq!(emitted.load(Ordering::Relaxed), c.detected.get(), "every event reached the sink");
}
