//! Upstream message parsing: Polygon-shaped `T` and `A` arrays into engine inputs, on one
//! core, as the feed thread does per WebSocket message.
//!
//! A regression here lowers how fast one ingest node can drain a vendor's firehose. Target
//! (issue 6): at least 1.5 million trades/s parsed on one core. `base` walks the same bytes
//! without parsing (the floor any parser pays to read them).

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickstock_shell::feed::upstream::parse::{parse_frame, Parsed};

/// Messages per WebSocket frame: Polygon batches a few hundred under load.
const PER_FRAME: usize = 200;

fn trade_frame() -> String {
    let items: Vec<String> = (0..PER_FRAME)
        .map(|k| {
            format!(
                r#"{{"ev":"T","sym":"{}","x":{},"i":"{}","z":3,"p":{}.{:02},"s":{},"c":[14,41],"t":1795530600{:03},"q":{}}}"#,
                ["AAPL", "MSFT", "NVDA", "TSLA", "BRK.B"][k % 5],
                k % 20,
                52_983_525_029_461u64 + k as u64,
                100 + k % 300,
                k % 100,
                100 * (1 + k % 9),
                k % 1000,
                3_681_328 + k
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn aggregate_frame() -> String {
    let items: Vec<String> = (0..PER_FRAME)
        .map(|k| {
            format!(
                r#"{{"ev":"A","sym":"S{k}","v":{},"av":8642007,"op":25.66,"vw":25.3981,"o":25.39,"c":25.41,"h":25.5,"l":25.3,"a":25.3714,"z":50,"s":1795530600000,"e":1795530601000}}"#,
                200 + k
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn count(frame: &[u8]) -> usize {
    let mut ticks = 0;
    parse_frame(frame, &mut |parsed| {
        if matches!(parsed, Parsed::Trade { .. } | Parsed::Aggregate { .. }) {
            ticks += 1;
        }
        black_box(parsed);
    });
    ticks
}

fn parse(c: &mut Criterion) {
    let trades = trade_frame();
    let aggregates = aggregate_frame();
    assert_eq!(count(trades.as_bytes()), PER_FRAME, "every trade parses");
    assert_eq!(count(aggregates.as_bytes()), PER_FRAME, "every bar parses");
    let mut group = c.benchmark_group("feed_parse");
    group.throughput(Throughput::Elements(PER_FRAME as u64));
    group.bench_function(format!("trades_{}_bytes_per_frame", trades.len()), |b| {
        b.iter(|| count(black_box(trades.as_bytes())))
    });
    group.bench_function(format!("aggregates_{}_bytes_per_frame", aggregates.len()), |b| {
        b.iter(|| count(black_box(aggregates.as_bytes())))
    });
    group.bench_function("base", |b| {
        b.iter(|| black_box(trades.as_bytes()).iter().filter(|&&byte| byte == b'{').count())
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
