//! Real-thread stress tests of the swap buffer and the multi-frequency buffer: a producer
//! thread publishes numbered events in batches while a consumer pulls; every event arrives
//! exactly once and in `seq` order, and overflow is counted, never silent.

#![allow(
    clippy::disallowed_methods,
    reason = "a stress test needs real threads; the ban is for the engine core"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use tickstock_engine::mfbuf::{mfbuf, Lane, MfBufConfig};
use tickstock_engine::ring::swap::swap_buffer;
use tickstock_engine::{Bar, Event, EventBody, Frequency, Price, Qty, SymbolId, Timestamp, Trade};

const VALUES_COUNT: u64 = if cfg!(miri) { 2_000 } else { 2_000_000 };

#[test]
fn swap_buffer_delivers_every_value_once_in_order_under_real_threads() {
    let (mut producer, mut consumer) =
        swap_buffer(Vec::with_capacity(1 << 16), Vec::with_capacity(1 << 16));
    let writer = thread::spawn(move || {
        let mut next = 0u64;
        while next < VALUES_COUNT {
            let batch = 1 + next % 37;
            producer.write(|set: &mut Vec<u64>| {
                for _ in 0..batch.min(VALUES_COUNT - next) {
                    if set.len() == set.capacity() {
                        // Full: the next batch retries, so nothing is lost, only delayed.
                        break;
                    }
                    set.push(next);
                    next += 1;
                }
            });
        }
    });
    let mut expected = 0u64;
    while expected < VALUES_COUNT {
        if let Some(mut pulled) = consumer.pull() {
            pulled.with(|set| {
                for &value in set.iter() {
                    assert_eq!(value, expected, "Invariant: values arrive once, in order");
                    expected += 1;
                }
            });
        }
        std::hint::spin_loop();
    }
    writer.join().unwrap();
}

fn trade_event(seq: u64) -> Event {
    let trade = Trade::new(SymbolId(0), Timestamp(seq), Price::from_raw(1_000_000), Qty(1));
    Event { seq, symbol: SymbolId(0), body: EventBody::Trade(trade) }
}

fn minute_bar(seq: u64) -> Event {
    let price = Price::from_raw(1_000_000);
    let bar = Bar {
        frequency: Frequency::Minute,
        start: Timestamp(0),
        end: Timestamp(60),
        open: price,
        high: price,
        low: price,
        close: price,
        volume: Qty(1),
        vwap: price,
        day_volume: Qty(1),
        day_open: price,
        day_vwap: price,
        avg_size: Qty(1),
        trades: 1,
    };
    Event { seq, symbol: SymbolId(0), body: EventBody::Bar(bar) }
}

#[test]
fn mfbuf_merges_lanes_back_into_seq_order_under_real_threads() {
    let config = MfBufConfig::default();
    let (mut producer, mut consumer, counters) = mfbuf(&config);
    let events_count = VALUES_COUNT / 4;
    // The buffer gives the producer no view of the consumer (by design); the test paces the
    // producer with its own counter so that a descheduled consumer cannot make lanes overflow.
    let consumed = Arc::new(AtomicU64::new(0));
    let consumed_seen = Arc::clone(&consumed);
    let writer = thread::spawn(move || {
        let mut seq = 1;
        while seq <= events_count {
            let end = (seq + 50).min(events_count + 1);
            let batch = (seq..end).map(|s| if s % 7 == 0 { minute_bar(s) } else { trade_event(s) });
            assert_eq!(producer.publish(batch), 0);
            seq = end;
            // Keep the producer from outrunning a lane by more than the test can absorb.
            while seq > consumed_seen.load(Ordering::Acquire) + 30_000 {
                thread::yield_now();
            }
        }
    });
    let mut expected = 1;
    while expected <= events_count {
        if let Some(mut pulled) = consumer.pull() {
            pulled.for_each_in_seq(|event| {
                assert_eq!(event.seq, expected, "Invariant: seq order across lanes");
                expected += 1;
            });
            consumed.store(expected, Ordering::Release);
        }
        std::hint::spin_loop();
    }
    writer.join().unwrap();
    assert_eq!(counters.dropped_total(), 0);
    assert_eq!(counters.buffered(Lane::PerMinute), events_count / 7);
}

#[test]
fn mfbuf_full_lane_drops_the_newest_and_counts_it() {
    let mut config = MfBufConfig::default();
    config.per_second_capacity = 2;
    config.per_minute_capacity = 1;
    config.fmv_capacity = 1;
    let (mut producer, mut consumer, counters) = mfbuf(&config);
    // Capacity + 1 in the per-second lane, capacity + 1 in the per-minute lane.
    let dropped = producer.publish([
        trade_event(1),
        trade_event(2),
        minute_bar(3),
        trade_event(4),
        minute_bar(5),
    ]);
    assert_eq!(dropped, 2);
    assert_eq!(counters.dropped(Lane::PerSecond), 1);
    assert_eq!(counters.dropped(Lane::PerMinute), 1);
    assert_eq!(counters.buffered(Lane::PerSecond), 2);
    let mut seqs = Vec::new();
    let mut pulled = consumer.pull().expect("no batch in flight");
    pulled.for_each_in_seq(|event| seqs.push(event.seq));
    assert_eq!(seqs, [1, 2, 3]);
    drop(pulled);
    // The set was cleared: the next pull (the other set) and the one after are empty.
    for _ in 0..2 {
        let mut pulled = consumer.pull().expect("no batch in flight");
        assert!(pulled.is_empty());
    }
}
