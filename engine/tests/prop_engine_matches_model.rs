//! Property tests: the engine and the naive model (tests/model) produce identical events.
//!
//! Random trade sequences over a few symbols: random walks at several price levels, with
//! reordered, late, future-dated and invalid trades, price jumps, clock ticks and long gaps,
//! started at interesting instants (around New York midnight on both 2026 DST days, the
//! regular open). Every event (`seq` included) and every rejection must match.

mod model;

use model::{utc_ns, Model};
use proptest::prelude::*;
use tickstock_engine::{
    Config, Engine, Event, Price, Qty, RejectReason, SymbolId, Tick, TickError, Timestamp, Trade,
};

const MS: u64 = 1_000_000;

#[derive(Clone, Debug)]
enum Op {
    Trade { symbol: u32, advance_ms: u64, offset_ms: i64, step_bp: i64, size: u64, special: u8 },
    Clock { advance_ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let trade = (0u32..4, 0u64..700, -1_500i64..100, -120i64..121, 1u64..3_000, 0u8..100).prop_map(
        |(symbol, advance_ms, offset_ms, step_bp, size, special)| Op::Trade {
            // Symbol 3 is past `symbols_max` (unknown) half the time it is drawn.
            symbol: if symbol == 3 && special >= 50 { 2 } else { symbol },
            advance_ms,
            offset_ms,
            step_bp,
            size,
            special,
        },
    );
    prop_oneof![
        20 => trade,
        2 => (0u64..3_000).prop_map(|advance_ms| Op::Clock { advance_ms }),
        1 => (0u64..900_000).prop_map(|advance_ms| Op::Clock { advance_ms }),
    ]
}

/// Small windows and cooldowns so that every detector fires within a few hundred trades.
fn fast_config() -> Config {
    let mut config = Config::default();
    config.symbols_max = 3;
    config.trend.bucket_ms = 1_000;
    config.trend.windows_ms = [3_000, 6_000, 10_000];
    config.surge.bucket_ms = 1_000;
    config.surge.interval_ms = 2_000;
    config.surge.baseline_intervals = 3;
    config.thresholds.hl_cooldown_ms = 500;
    config.thresholds.trend_min_interval_ms = 2_000;
    config.thresholds.surge_cooldown_ms = 3_000;
    config.thresholds.surge_price_pct = 0.3;
    config.thresholds.trend_direction_score = 0.2;
    // A few trades a second: every `ACT` level is reached.
    config.activity_levels = [0.5, 1.5, 3.0];
    config
}

fn starts() -> [u64; 4] {
    [
        utc_ns(2026, 3, 8, 4, 59, 0), // 23:59 EST on 03-07; DST starts the next night
        utc_ns(2026, 3, 9, 3, 59, 0), // 23:59 EDT on 03-08, the 23-hour day
        utc_ns(2026, 11, 2, 4, 58, 30), // 23:58:30 EST on 11-01, the 25-hour day
        utc_ns(2026, 6, 15, 13, 29, 0), // 09:29 EDT, the regular open
    ]
}

fn run(config: &Config, start_ns: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut engine = Engine::new(config).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model = Model::new(config);
    let mut events: Vec<Event> = Vec::new();
    let mut rejects: Vec<RejectReason> = Vec::new();
    let levels = [450_000i64, 3_200_000, 24_990_000, 99_950_000, 250_000_000];
    let mut prices = [levels[0], levels[1], levels[2]];
    if (start_ns / 60_000_000_000).is_multiple_of(2) {
        prices = [levels[3], levels[4], levels[2]];
    }
    let mut now = start_ns;
    for op in ops {
        match *op {
            Op::Trade { symbol, advance_ms, offset_ms, step_bp, size, special } => {
                now += advance_ms * MS;
                let slot = (symbol as usize).min(2);
                let walked = prices[slot] + prices[slot] * step_bp / 10_000;
                prices[slot] = walked.max(1);
                let (price, ts) = match special {
                    0 => (0, now),
                    1 => (-5_000_000, now),
                    2 => (2_000_000_000_000, now),
                    3 | 4 => (prices[slot] * 9 / 5, now),
                    5 | 6 => (prices[slot], now + 6_000 * MS),
                    7 => (prices[slot], now.saturating_sub(90_000_000 * MS)),
                    _ => (prices[slot], now.saturating_add_signed(offset_ms * MS as i64)),
                };
                let size = if special == 8 { 0 } else { size };
                let trade =
                    Trade::new(SymbolId(symbol), Timestamp(ts), Price::from_raw(price), Qty(size));
                // Prefetching is a hint and must never change the output.
                engine.prefetch(&Tick::Trade(trade));
                match engine.handle_tick(Timestamp(now), &Tick::Trade(trade)) {
                    Ok(()) => {}
                    Err(TickError::Rejected(reason)) => rejects.push(reason),
                    Err(other) => return Err(TestCaseError::fail(other.to_string())),
                }
                model.trade(now, &trade);
            }
            Op::Clock { advance_ms } => {
                now += advance_ms * MS;
                engine
                    .handle_clock(Timestamp(now))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.clock(now);
            }
        }
        events.extend(engine.poll_events());
        prop_assert_eq!(events.len(), model.events.len(), "after {:?}", op);
    }
    engine.handle_flush().map_err(|e| TestCaseError::fail(e.to_string()))?;
    events.extend(engine.poll_events());
    model.flush();
    prop_assert_eq!(&rejects, &model.rejects);
    for (got, want) in events.iter().zip(&model.events) {
        prop_assert_eq!(got, want);
    }
    prop_assert_eq!(events.len(), model.events.len());
    let seqs_contiguous = events.windows(2).all(|w| w[1].seq == w[0].seq + 1);
    prop_assert!(seqs_contiguous, "seq must increase by one per event");
    let stats = engine.stats();
    prop_assert_eq!(stats.rejected_total(), rejects.len() as u64);
    prop_assert_eq!(stats.events, events.len() as u64);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn prop_engine_matches_model_fast_windows(start in 0usize..4, ops in prop::collection::vec(op(), 1..400)) {
        run(&fast_config(), starts()[start], &ops)?;
    }

    #[test]
    fn prop_engine_matches_model_default_config(start in 0usize..4, ops in prop::collection::vec(op(), 1..600)) {
        let mut config = Config::default();
        config.symbols_max = 3;
        run(&config, starts()[start], &ops)?;
    }

    #[test]
    fn prop_engine_matches_model_test_min(start in 0usize..4, ops in prop::collection::vec(op(), 1..300)) {
        run(&Config::test_min(), starts()[start], &ops)?;
    }
}

/// Detectors actually fire under the generator: a property test whose events never include
/// `HL`, `TR` or `SV` would prove nothing about them.
#[test]
fn generator_exercises_every_detector() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let ops = prop::collection::vec(op(), 300..400).new_tree(&mut runner).map(|t| t.current());
        let ops = ops.unwrap_or_default();
        let config = fast_config();
        let mut model = Model::new(&config);
        let mut now = starts()[3];
        let mut price = 20_000_000i64;
        for op in &ops {
            if let Op::Trade { advance_ms, step_bp, size, .. } = *op {
                now += advance_ms * MS;
                price += price * step_bp / 10_000;
                let trade =
                    Trade::new(SymbolId(0), Timestamp(now), Price::from_raw(price), Qty(size));
                model.trade(now, &trade);
            }
        }
        model.flush();
        seen.extend(model.events.iter().map(|e| e.body.channel().label()));
    }
    for channel in ["T", "A", "AM", "HL", "TR", "SV", "ACT"] {
        assert!(seen.contains(channel), "no {channel} event in the generated runs: {seen:?}");
    }
}
