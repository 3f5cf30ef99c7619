//! The event log: a resume of 1,000,000 events read back from disk, as the event loop's
//! resume does (`LogCursor::read_slice` in slices of the default 256 KiB, each record
//! checked and built into arrays of `frame_bytes_max`). The log is written first by the
//! real writer thread from the sink's inlet (the synthetic market's event mix: mostly `T`),
//! and is in the page cache, as a recent log is. Throughput is in events.
//!
//! Target (issue 16): a resume of 1 M events from the event log at 1 M events/s or more to
//! one client; this is the server's share of it (the socket and the client come on top).

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickstock_engine::{Config, Engine, SymbolId, Tick, Ticker};
use tickstock_shell::config::SyntheticSettings;
use tickstock_shell::emitter::FrameBatch;
use tickstock_shell::feed::synthetic::Market;
use tickstock_shell::server::event_log::{EventLog, EventLogReader, EventLogSettings};
use tickstock_shell::server::framing::ArrayBuilder;

const EVENTS: u64 = 1_000_000;

fn benching() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// Writes `events` of the synthetic market's output into a log in `dir`.
fn write_log(settings: &EventLogSettings, events: u64) -> EventLogReader {
    let market_settings = SyntheticSettings { virtual_time: true, ..SyntheticSettings::default() };
    let mut market = Market::new(&market_settings);
    let tickers: Vec<Ticker> =
        market.tickers().iter().map(|t| Ticker::new(t).expect("a valid ticker")).collect();
    let mut engine = Engine::new(&Config::default()).expect("default config is valid");
    let (log, mut inlet) = EventLog::start(settings, false).expect("the log starts");
    let mut batch = FrameBatch::new(1 << 20);
    let mut written = 0;
    while written < events {
        let trade = market.next_trade();
        let _ = engine.handle_tick(trade.ts_recv, &Tick::Trade(trade));
        for event in engine.poll_events() {
            if !batch.has_room() || written + batch.len() as u64 >= events {
                written += batch.len() as u64;
                inlet.append(&batch);
                batch = FrameBatch::new(1 << 20);
                std::thread::sleep(Duration::from_micros(50)); // let the writer keep up
            }
            let ticker = match event.symbol {
                SymbolId::MARKET => Ticker::MARKET,
                symbol => tickers[symbol.index()],
            };
            batch.push(&event, ticker);
        }
    }
    let reader = log.reader.clone();
    drop(log); // drains and syncs
    reader
}

fn resume_from_disk(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let events = if benching() { EVENTS } else { 20_000 };
    let settings = EventLogSettings {
        dir: dir.path().to_owned(),
        segment_bytes_max: 256 << 20,
        ring_bytes: 64 << 20,
        retain_days: 1,
        fsync_interval: Duration::from_secs(1),
        read_slice_bytes: 256 << 10,
    };
    let reader = write_log(&settings, events);
    let mut group = c.benchmark_group("event_log");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("resume_1m_events", |b| {
        b.iter(|| {
            let mut cursor = reader.open_at(1).expect("the log has seq 1");
            let mut builder = ArrayBuilder::new(1 << 20);
            let (mut records, mut bytes) = (0u64, 0usize);
            while cursor
                .read_slice(|record| {
                    if let Some(full) = builder.push(record.json, record.seq) {
                        bytes += full.len();
                    }
                    records += 1;
                    true
                })
                .expect("the log reads")
                > 0
            {}
            bytes += builder.finish().map_or(0, |f| f.len());
            assert!(records >= events - 1, "read {records} of {events}");
            bytes
        });
    });
    group.finish();
}

criterion_group!(benches, resume_from_disk);
criterion_main!(benches);
