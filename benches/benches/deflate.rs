//! permessage-deflate of the group streams: what compressing a group's messages costs and
//! saves. The messages are what a `T.*` group gets from the synthetic market at 20,000
//! trades/s: arrays of 1 trade (a watchlist group), of 20 (one 1 ms emitter cycle) and of
//! 100 (the 5 ms linger of a
//! loaded server), each deflated as a message of its own (`server_no_context_takeover`),
//! once for all the members of the group. Throughput is in bytes of JSON compressed; the
//! bench prints the bytes saved.
//!
//! Since a group's message is compressed once whatever its member count, the cost per
//! delivered client-event falls as 1/members; a group of one (a watchlist) pays it whole.

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickstock_engine::{Config, Engine, EventBody, SymbolId, Tick, Ticker};
use tickstock_shell::config::SyntheticSettings;
use tickstock_shell::emitter::FrameBatch;
use tickstock_shell::feed::synthetic::Market;
use tickstock_shell::server::deflate::Compressor;
use tickstock_shell::server::framing::ArrayBuilder;

/// `count`-trade arrays of the synthetic market's `T` events, as a `T.*` group frames them.
fn arrays(per_array: usize, arrays: usize) -> Vec<Vec<u8>> {
    let settings = SyntheticSettings { virtual_time: true, ..SyntheticSettings::default() };
    let mut market = Market::new(&settings);
    let tickers: Vec<Ticker> =
        market.tickers().iter().map(|t| Ticker::new(t).expect("a valid ticker")).collect();
    let mut engine = Engine::new(&Config::default()).expect("default config is valid");
    let mut batch = FrameBatch::new(64 << 20);
    while batch.len() < per_array * arrays * 3 {
        let trade = market.next_trade();
        let _ = engine.handle_tick(trade.ts_recv, &Tick::Trade(trade));
        for event in engine.poll_events() {
            if matches!(event.body, EventBody::Trade(_)) && batch.has_room() {
                let ticker = tickers.get(event.symbol.index()).copied();
                let ticker = ticker.filter(|_| event.symbol != SymbolId::MARKET);
                batch.push(&event, ticker.unwrap_or(Ticker::MARKET));
            }
        }
    }
    // Past the first second: the market's bursts and bars are under way.
    let frames = &batch.frames()[per_array * arrays..];
    frames
        .chunks(per_array)
        .take(arrays)
        .map(|chunk| {
            let mut builder = ArrayBuilder::new(1 << 20);
            for frame in chunk {
                builder.push(batch.json(frame), frame.seq);
            }
            builder.finish().expect("a non-empty array").payload().to_vec()
        })
        .collect()
}

fn deflate(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate");
    for per_array in [1, 20, 100] {
        let messages = arrays(per_array, 200);
        let raw: usize = messages.iter().map(Vec::len).sum();
        let mut compressor = Compressor::default();
        let mut out = Vec::new();
        let compressed: usize = messages
            .iter()
            .map(|m| {
                out.clear();
                compressor.deflate(m, &mut out);
                out.len() + 1 // RSV1 frames' headers are the same size: count the payloads
            })
            .sum();
        println!(
            "deflate: arrays of {per_array} trades: {raw} bytes -> {compressed} ({:.1} % saved)",
            100.0 * (1.0 - compressed as f64 / raw as f64)
        );
        group.throughput(Throughput::Bytes(raw as u64));
        group.bench_with_input(
            BenchmarkId::new("t_arrays", per_array),
            &messages,
            |b, messages| {
                b.iter(|| {
                    for message in messages {
                        out.clear();
                        compressor.deflate(message, &mut out);
                    }
                    out.len()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, deflate);
criterion_main!(benches);
