//! Named edge cases from DETECTORS.md: band and cooldown boundaries, session rollover, the
//! 2026 DST days in New York, late and reordered trades, limits, aggregates, FMV, `seq`.

mod model;

use model::utc_ns;
use tickstock_engine::{
    Aggregate, Bar, Channel, Config, Engine, Event, EventBody, Extreme, Fmv, Frequency, Price, Qty,
    Quote, RejectReason, SymbolId, Tick, TickError, Timestamp, Trade,
};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// An engine plus the events it produced so far.
struct Harness {
    engine: Engine,
    events: Vec<Event>,
}

impl Harness {
    fn new(config: &Config) -> Harness {
        Harness { engine: Engine::new(config).expect("valid config"), events: Vec::new() }
    }

    fn default() -> Harness {
        Harness::new(&Config::default())
    }

    /// A trade of symbol 0 at `t` (the clock set to `t` as in a replay).
    fn trade(&mut self, t: u64, price: &str, size: u64) -> Result<Vec<Event>, RejectReason> {
        self.trade_of(0, t, t, price, size)
    }

    fn trade_of(
        &mut self,
        sym: u32,
        now: u64,
        t: u64,
        price: &str,
        size: u64,
    ) -> Result<Vec<Event>, RejectReason> {
        let price = Price::from_raw(parse(price));
        let trade = Trade::new(SymbolId(sym), Timestamp(t), price, Qty(size));
        self.tick(now, Tick::Trade(trade))
    }

    fn tick(&mut self, now: u64, tick: Tick) -> Result<Vec<Event>, RejectReason> {
        let outcome = self.engine.handle_tick(Timestamp(now), &tick);
        let new: Vec<Event> = self.engine.poll_events().collect();
        self.events.extend(new.iter().copied());
        match outcome {
            Ok(()) => Ok(new),
            Err(TickError::Rejected(reason)) => Err(reason),
            Err(other) => panic!("unexpected: {other}"),
        }
    }

    fn clock(&mut self, now: u64) -> Vec<Event> {
        self.engine.handle_clock(Timestamp(now)).expect("drained");
        let new: Vec<Event> = self.engine.poll_events().collect();
        self.events.extend(new.iter().copied());
        new
    }
}

/// "12.34" to raw price units, exactly.
fn parse(text: &str) -> i64 {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let frac = format!("{frac:0<6}");
    whole.parse::<i64>().expect("whole") * 1_000_000 + frac.parse::<i64>().expect("frac")
}

fn high_lows(events: &[Event]) -> Vec<(Extreme, u32)> {
    events
        .iter()
        .filter_map(|e| match e.body {
            EventBody::HighLow(hl) => Some((hl.kind, hl.count)),
            _ => None,
        })
        .collect()
}

fn bars(events: &[Event], frequency: Frequency) -> Vec<Bar> {
    events
        .iter()
        .filter_map(|e| match e.body {
            EventBody::Bar(bar) if bar.frequency == frequency => Some(bar),
            _ => None,
        })
        .collect()
}

/// 2026-11-24 15:00 UTC, 10:00 EST: midday, a plain Tuesday.
fn t0() -> u64 {
    utc_ns(2026, 11, 24, 15, 0, 0)
}

/// Open at `open`, then one trade at `next` two seconds later: does it fire `HL`?
fn fires(open: &str, steps: &[&str]) -> bool {
    let mut h = Harness::default();
    h.trade(t0(), open, 100).expect("accepted");
    let mut fired = false;
    for (i, price) in steps.iter().enumerate() {
        let events = h.trade(t0() + (i as u64 + 1) * 2 * SEC, price, 100).expect("accepted");
        fired = !high_lows(&events).is_empty();
    }
    fired
}

#[test]
fn hl_band_boundaries_percent_gate() {
    // Each band's minimum percent, exactly, fires; one price unit less does not (the dollar
    // gate stays shut because the move from the previous price is small).
    assert!(fires("0.5", &["0.501"])); // < 1: 0.20 %
    assert!(!fires("0.5", &["0.500999"]));
    assert!(fires("2", &["2.003"])); // < 5: 0.15 %
    assert!(!fires("2", &["2.002999"]));
    assert!(fires("20", &["20.01", "20.02"])); // < 25: 0.10 %
    assert!(!fires("20", &["20.01", "20.019999"]));
    assert!(fires("50", &["50.02", "50.04"])); // < 100: 0.08 %
    assert!(!fires("50", &["50.02", "50.039999"]));
    assert!(fires("200", &["200.05", "200.1"])); // >= 100: 0.05 %
    assert!(!fires("200", &["200.05", "200.099999"]));
    // Lows are symmetric.
    assert!(fires("20", &["19.99", "19.98"]));
    assert!(!fires("20", &["19.99", "19.980001"]));
}

#[test]
fn hl_band_boundaries_dollar_gate() {
    // At 1000 the percent gate needs 0.5 dollars, the dollar gate 0.10 from the previous price.
    assert!(fires("1000", &["1000.1"]));
    assert!(!fires("1000", &["1000.099999"]));
    // The band is picked by the trade's price: from an open of 0.9985, 1.0 is in the < 5
    // band and fires at 0.1502 %; 0.999999 is in the < 1 band, needs 0.20 %, and does not.
    assert!(fires("0.9985", &["1"]));
    assert!(!fires("0.9985", &["0.999999"]));
}

#[test]
fn hl_cooldown_edges() {
    let mut h = Harness::default();
    h.trade(t0(), "20", 100).expect("accepted");
    let first = h.trade(t0() + SEC, "20.1", 100).expect("accepted");
    assert_eq!(high_lows(&first), vec![(Extreme::High, 1)]);
    // 999 ms later: inside the cooldown, the high moves but nothing fires.
    let inside = h.trade(t0() + SEC + 999 * MS, "20.2", 100).expect("accepted");
    assert!(high_lows(&inside).is_empty());
    // Exactly 1000 ms after the last HL event: fires, and counts 2.
    let edge = h.trade(t0() + 2 * SEC, "20.3", 100).expect("accepted");
    assert_eq!(high_lows(&edge), vec![(Extreme::High, 2)]);
    let EventBody::HighLow(hl) =
        edge.iter().find(|e| e.body.channel() == tickstock_engine::Channel::Hl).expect("HL").body
    else {
        unreachable!()
    };
    assert_eq!(hl.session_high, Price::from_raw(parse("20.3")));
    assert_eq!(hl.session_low, Price::from_raw(parse("20")));
    assert!((hl.pct - 1.5).abs() < 1e-9);
}

#[test]
fn session_rollover_at_new_york_midnight() {
    let mut h = Harness::default();
    let before = utc_ns(2026, 11, 25, 4, 59, 58); // 23:59:58 EST
    h.trade(before, "20", 100).expect("accepted");
    h.trade(before + SEC, "21", 100).expect("accepted"); // HL high, count 1
    assert_eq!(high_lows(&h.events), vec![(Extreme::High, 1)]);
    // 00:00:00.5 EST: a new trading day. Its first trade fires nothing, even above the old
    // high, and the day's volume restarts.
    let after = utc_ns(2026, 11, 25, 5, 0, 0) + 500 * MS;
    let events = h.trade(after, "22", 300).expect("accepted");
    assert!(high_lows(&events).is_empty());
    let closed = bars(&events, Frequency::Second);
    assert_eq!(closed.len(), 1, "the 23:59:59 bar closes");
    assert_eq!(closed[0].day_volume, Qty(200), "closed with the old day's volume");
    assert_eq!(closed[0].day_open, Price::from_raw(parse("20")));
    let events = h.trade(after + 2 * SEC, "22.5", 100).expect("accepted");
    assert_eq!(high_lows(&events), vec![(Extreme::High, 1)], "counts restart");
    let bar = bars(&events, Frequency::Second)[0];
    assert_eq!(bar.day_volume, Qty(300));
    assert_eq!(bar.day_open, Price::from_raw(parse("22")));
}

/// The first `A` bar after `second_ns`'s bar closes reports the day volume of one session.
fn day_volume_across(first_ns: u64, second_ns: u64) -> Qty {
    let mut h = Harness::default();
    h.trade(first_ns, "10", 100).expect("accepted");
    h.trade(second_ns, "10", 7).expect("accepted");
    let events = h.trade(second_ns + SEC, "10", 1).expect("accepted");
    bars(&events, Frequency::Second)[0].day_volume
}

#[test]
fn dst_start_2026_03_08_rolls_over_at_local_midnight() {
    // Midnight EDT at the end of the 23-hour day is 04:00 UTC on 03-09.
    let midnight = utc_ns(2026, 3, 9, 4, 0, 0);
    assert_eq!(day_volume_across(midnight - 2 * SEC, midnight - SEC), Qty(107));
    assert_eq!(day_volume_across(midnight - 2 * SEC, midnight), Qty(7));
    // The day itself started at 05:00 UTC (midnight EST).
    let start = utc_ns(2026, 3, 8, 5, 0, 0);
    assert_eq!(day_volume_across(start - SEC, start), Qty(7));
    assert_eq!(day_volume_across(start, start + 22 * 3_600 * SEC), Qty(107));
}

#[test]
fn dst_end_2026_11_01_rolls_over_at_local_midnight() {
    // The 25-hour day: 04:00 UTC on 11-01 to 05:00 UTC on 11-02.
    let start = utc_ns(2026, 11, 1, 4, 0, 0);
    let end = utc_ns(2026, 11, 2, 5, 0, 0);
    assert_eq!(day_volume_across(start - SEC, start), Qty(7));
    assert_eq!(day_volume_across(start, end - SEC), Qty(107));
    assert_eq!(day_volume_across(end - SEC, end), Qty(7));
}

#[test]
fn late_and_out_of_order_trades() {
    let mut h = Harness::default();
    let s = t0();
    h.trade(s + 500 * MS, "10", 100).expect("accepted");
    // 11.2 s closes the [10, 11) second bar.
    let events = h.trade(s + 1_200 * MS, "10.01", 100).expect("accepted");
    assert_eq!(bars(&events, Frequency::Second).len(), 1);
    // 0.8 s: 400 ms older than the newest trade (allowed), but its second is closed: late.
    let events = h.trade_of(0, s + 1_200 * MS, s + 800 * MS, "10.02", 50).expect("accepted");
    assert_eq!(events.len(), 1, "goes out on T and nothing else: {events:?}");
    assert_eq!(h.engine.stats().late(Frequency::Second), 1);
    assert_eq!(h.engine.stats().late(Frequency::Minute), 0, "its minute is still open");
    // 1.1 s older than the newest: rejected.
    let rejected = h.trade_of(0, s + 1_200 * MS, s + 100 * MS, "10.02", 50);
    assert_eq!(rejected, Err(RejectReason::OutOfOrder));
    // The late trade counts in the day volume and the minute bar.
    h.clock(s + 61 * SEC);
    let minute = bars(&h.events, Frequency::Minute);
    assert_eq!(minute[0].volume, Qty(250));
    assert_eq!(minute[0].day_volume, Qty(250));
    let second = bars(&h.events, Frequency::Second);
    assert_eq!(second.iter().map(|b| b.volume.0).sum::<u64>(), 200);
}

/// Bars of trades far ahead of the clock (allowed by a large `max_future_ms`) are due beyond
/// the timer wheel's reach; they still close exactly on time, in symbol order, and a quiet
/// symbol's bars close in between as usual.
#[test]
fn bars_due_far_ahead_of_the_clock_close_on_time() {
    let mut config = Config::default();
    config.max_future_ms = 3_600_000;
    config.bar_close_spread_ms = 0;
    config.activity = false; // the deadlines here are the bars' alone
    let mut h = Harness::new(&config);
    let s = t0();
    let ahead = s + 1_800 * SEC;
    h.trade_of(1, s, ahead + 100 * MS, "20", 5).expect("accepted");
    h.trade_of(0, s, ahead + 200 * MS, "10", 7).expect("accepted");
    h.trade_of(2, s, s + 100 * MS, "30", 9).expect("accepted");
    assert_eq!(h.engine.poll_deadline(), Some(Timestamp(s + 1_250 * MS)));
    let closed = |events: Vec<Event>| -> Vec<(u32, Frequency, u64)> {
        events
            .iter()
            .filter_map(|e| match e.body {
                EventBody::Bar(bar) => Some((e.symbol.0, bar.frequency, bar.end.0)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(closed(h.clock(s + 2 * SEC)), [(2, Frequency::Second, s + SEC)]);
    assert_eq!(closed(h.clock(s + 61 * SEC)), [(2, Frequency::Minute, s + 60 * SEC)]);
    assert_eq!(h.engine.poll_deadline(), Some(Timestamp(ahead + 1_250 * MS)));
    // The clock walks there in steps shorter than the wheel, as a live clock does.
    for now in (s + 71 * SEC..ahead + 1_249 * MS).step_by(10 * SEC as usize) {
        assert!(closed(h.clock(now)).is_empty(), "nothing is due at {now}");
    }
    assert!(closed(h.clock(ahead + 1_249 * MS)).is_empty());
    assert_eq!(
        closed(h.clock(ahead + 1_250 * MS)),
        [(0, Frequency::Second, ahead + SEC), (1, Frequency::Second, ahead + SEC)]
    );
    assert_eq!(
        closed(h.clock(ahead + 70 * SEC)),
        [(0, Frequency::Minute, ahead + 60 * SEC), (1, Frequency::Minute, ahead + 60 * SEC)]
    );
    assert_eq!(h.engine.poll_deadline(), None);
    assert_eq!(h.engine.stats().bars_closed_by_clock, 6);
}

#[test]
fn bars_close_on_clock_after_grace() {
    let mut h = Harness::default();
    let s = t0();
    h.trade(s + 100 * MS, "10", 1).expect("accepted");
    h.trade(s + 900 * MS, "12", 3).expect("accepted");
    assert!(h.clock(s + 1_249 * MS).is_empty());
    assert_eq!(h.engine.poll_deadline(), Some(Timestamp(s + 1_250 * MS)));
    let closed = h.clock(s + 1_250 * MS);
    let bar = bars(&closed, Frequency::Second)[0];
    assert_eq!((bar.start, bar.end), (Timestamp(s), Timestamp(s + SEC)));
    assert_eq!(
        (bar.open, bar.high, bar.low, bar.close),
        (
            Price::from_dollars(10),
            Price::from_dollars(12),
            Price::from_dollars(10),
            Price::from_dollars(12)
        )
    );
    assert_eq!(bar.volume, Qty(4));
    assert_eq!(bar.vwap, Price::from_raw(11_500_000));
    assert_eq!(bar.avg_size, Qty(2));
    // No bar for an empty second; the minute closes at its end plus the grace.
    let quiet = h.clock(s + 59 * SEC);
    assert!(quiet.iter().all(|e| e.body.channel() == Channel::Act), "only ACT: {quiet:?}");
    assert_eq!(bars(&h.clock(s + 60_250 * MS), Frequency::Minute).len(), 1);
    assert_eq!(h.engine.stats().bars_closed_by_clock, 2);
}

#[test]
fn prices_and_sizes_at_the_limits() {
    let mut h = Harness::default();
    let t = t0();
    assert!(h.trade_of(0, t, t, "1000000", 1).is_ok());
    assert_eq!(h.trade_of(1, t, t, "1000000.000001", 1), Err(RejectReason::PriceTooHigh));
    assert!(h.trade_of(2, t, t, "0.000001", 10_000_000).is_ok());
    assert_eq!(h.trade_of(3, t, t, "0", 1), Err(RejectReason::PriceNotPositive));
    assert_eq!(h.trade_of(3, t, t, "1", 10_000_001), Err(RejectReason::SizeTooLarge));
    assert_eq!(h.trade_of(3, t, t, "1", 0), Err(RejectReason::SizeTooSmall));
    assert_eq!(h.trade_of(16_384, t, t, "1", 1), Err(RejectReason::UnknownSymbol));
    assert!(h.trade_of(16_383, t, t, "1", 1).is_ok(), "the last id of a full table");
    // Time: exactly max_future ahead is fine, one nanosecond more is not.
    assert!(h.trade_of(4, t, t + 5 * SEC, "1", 1).is_ok());
    assert_eq!(h.trade_of(5, t, t + 5 * SEC + 1, "1", 1), Err(RejectReason::TooFarInFuture));
    assert_eq!(h.trade_of(5, t, t - 86_400 * SEC - 1, "1", 1), Err(RejectReason::TooOld));
    let stats = h.engine.stats();
    assert_eq!(stats.rejected(RejectReason::PriceTooHigh), 1);
    assert_eq!(stats.rejected_total(), 7);
    assert_eq!(stats.trades_accepted, 4);
}

#[test]
fn jump_check_starts_after_ten_trades() {
    let mut h = Harness::default();
    let t = t0();
    // Before ten accepted trades, any move is accepted.
    h.trade(t, "10", 1).expect("accepted");
    h.trade(t + MS, "30", 1).expect("no jump check yet");
    for i in 2..10 {
        h.trade(t + i * MS, "20", 1).expect("accepted");
    }
    assert_eq!(h.trade(t + 11 * MS, "30.000001", 1), Err(RejectReason::PriceJump));
    h.trade(t + 12 * MS, "30", 1).expect("exactly 50 % is allowed");
    assert_eq!(h.trade(t + 13 * MS, "14.999999", 1), Err(RejectReason::PriceJump));
}

#[test]
fn aggregates_drive_bars_and_detectors() {
    let mut h = Harness::default();
    let s = t0();
    let agg = |i: u64, close: &str, volume: u64| Aggregate {
        start: Timestamp(s + i * SEC),
        end: Timestamp(s + (i + 1) * SEC),
        open: Price::from_raw(parse("20")),
        high: Price::from_raw(parse("21")),
        low: Price::from_raw(parse("19")),
        close: Price::from_raw(parse(close)),
        vwap: Price::from_raw(parse("20")),
        volume: Qty(volume),
        avg_size: Qty(10),
        official_open: Price::from_raw(parse("19.5")),
        symbol: SymbolId(7),
        ..Aggregate::default()
    };
    let events = h.tick(s, Tick::Aggregate(agg(0, "20", 100))).expect("accepted");
    assert_eq!(events.len(), 1);
    let EventBody::Bar(bar) = events[0].body else { panic!("an A bar") };
    assert_eq!(bar.frequency, Frequency::Second);
    assert_eq!(bar.day_open, Price::from_raw(parse("19.5")), "the official open wins");
    assert_eq!(bar.day_volume, Qty(100));
    // A second aggregate, a new high from the open of 19.5: HL fires.
    let events = h.tick(s + 2 * SEC, Tick::Aggregate(agg(2, "20.5", 300))).expect("accepted");
    assert_eq!(high_lows(&events), vec![(Extreme::High, 1)]);
    // The minute bar is built from both.
    let closed = h.clock(s + 61 * SEC);
    let minute = bars(&closed, Frequency::Minute)[0];
    assert_eq!(minute.volume, Qty(400));
    assert_eq!(minute.close, Price::from_raw(parse("20.5")));
    assert_eq!(minute.avg_size, Qty(10));
    // Inconsistent aggregates are rejected.
    let mut bad = agg(3, "22", 1);
    bad.high = Price::from_raw(parse("21"));
    assert_eq!(h.tick(s + 3 * SEC, Tick::Aggregate(bad)), Err(RejectReason::BadAggregate));
}

#[test]
fn fmv_reports_its_distance_from_the_last_trade() {
    let mut h = Harness::default();
    let t = t0();
    let fmv = |value: &str| {
        Tick::Fmv(Fmv {
            ts_event: Timestamp(t),
            value: Price::from_raw(parse(value)),
            ..Fmv::default()
        })
    };
    let before = h.tick(t, fmv("10")).expect("accepted");
    let EventBody::Fmv(value) = before[0].body else { panic!("FMV") };
    assert_eq!(value.vs_market_pct, None);
    h.trade(t, "8", 1).expect("accepted");
    let after = h.tick(t, fmv("10")).expect("accepted");
    let EventBody::Fmv(value) = after[0].body else { panic!("FMV") };
    assert_eq!(value.vs_market_pct, Some(25.0));
}

#[test]
fn crossed_quotes_are_rejected() {
    let mut h = Harness::default();
    let t = t0();
    let quote = |bid: &str, ask: &str| {
        Tick::Quote(Quote {
            ts_event: Timestamp(t),
            bid_price: Price::from_raw(parse(bid)),
            ask_price: Price::from_raw(parse(ask)),
            bid_size: Qty(1),
            ask_size: Qty(1),
            ..Quote::default()
        })
    };
    assert_eq!(h.tick(t, quote("10.01", "10")), Err(RejectReason::CrossedQuote));
    assert!(h.tick(t, quote("10", "10")).is_ok());
    assert_eq!(h.engine.stats().quotes_accepted, 1);
}

#[test]
fn seq_is_contiguous_from_a_start_near_the_top_of_the_range() {
    let mut config = Config::default();
    config.seq_start = u64::MAX / 2;
    let mut h = Harness::new(&config);
    for i in 0..50 {
        h.trade(t0() + i * 700 * MS, "10", 1).expect("accepted");
    }
    h.engine.handle_flush().expect("drained");
    h.events.extend(h.engine.poll_events());
    assert_eq!(h.events[0].seq, u64::MAX / 2);
    assert!(h.events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    config.seq_start = u64::MAX;
    assert!(Engine::new(&config).is_err(), "a start that could wrap is refused");
}

#[test]
fn undrained_output_refuses_the_next_call_and_loses_nothing() {
    let mut engine = Engine::new(&Config::default()).expect("valid");
    let trade = Trade::new(SymbolId(0), Timestamp(t0()), Price::from_dollars(10), Qty(1));
    engine.handle_tick(Timestamp(t0()), &Tick::Trade(trade)).expect("accepted");
    let again = engine.handle_tick(Timestamp(t0()), &Tick::Trade(trade));
    assert_eq!(again, Err(TickError::OutputNotDrained { pending_count: 1 }));
    assert_eq!(engine.poll_events().count(), 1);
    assert!(engine.handle_tick(Timestamp(t0()), &Tick::Trade(trade)).is_ok());
    assert_eq!(engine.stats().trades_accepted, 2);
}

#[test]
fn flush_closes_every_open_bar_in_end_symbol_frequency_order() {
    let mut h = Harness::default();
    let t = t0();
    h.trade_of(2, t, t + 1_500 * MS, "5", 1).expect("accepted");
    h.trade_of(1, t, t + 200 * MS, "5", 1).expect("accepted");
    h.engine.handle_flush().expect("drained");
    let closed: Vec<(u32, &str)> =
        h.engine.poll_events().map(|e| (e.symbol.0, e.body.channel().label())).collect();
    assert_eq!(closed, vec![(1, "A"), (2, "A"), (1, "AM"), (2, "AM")]);
}

#[test]
fn clock_closes_are_staggered_by_symbol_within_the_spread() {
    let s = t0();
    let close_times = |spread_ms: u64| {
        let mut config = Config::default();
        config.bar_close_spread_ms = spread_ms;
        let mut h = Harness::new(&config);
        for sym in 0..200 {
            h.trade_of(sym, s + 100 * MS, s + 100 * MS, "10", 1).expect("accepted");
        }
        let mut closed = Vec::new();
        for ms in 1_000..2_100 {
            for event in h.clock(s + ms * MS) {
                if matches!(event.body, EventBody::Bar(bar) if bar.frequency == Frequency::Second) {
                    closed.push((event.symbol.0, ms));
                }
            }
        }
        closed
    };
    // No spread: DETECTORS.md's rule, every bar at exactly end + grace, in one call.
    let all_at_once = close_times(0);
    assert_eq!(all_at_once.len(), 200);
    assert!(all_at_once.iter().all(|&(_, ms)| ms == 1_250));
    // The default spread: each symbol at end + grace + its offset, all before the next
    // second's bars would close, and no 10 ms carries more than a few.
    let spread = close_times(Config::default().bar_close_spread_ms);
    assert_eq!(spread.len(), 200);
    assert!(spread.iter().all(|&(_, ms)| (1_250..2_000).contains(&ms)), "{spread:?}");
    assert_eq!(spread.iter().find(|c| c.0 == 0).map(|c| c.1), Some(1_250), "symbol 0 has offset 0");
    let mut per_window = [0u32; 75];
    for &(_, ms) in &spread {
        per_window[((ms - 1_250) / 10) as usize] += 1;
    }
    assert!(per_window.iter().all(|&n| n <= 6), "bursty: {per_window:?}");
}

#[test]
fn a_symbols_stagger_extends_its_grace_for_late_trades() {
    let config = Config::default();
    let mut h = Harness::new(&config);
    let s = t0();
    // Symbol 1's offset is 0.618 of the 750 ms spread: its second closes at 1.25 + 0.46 s.
    h.trade_of(1, s + 100 * MS, s + 100 * MS, "10", 1).expect("accepted");
    assert!(h.clock(s + 1_600 * MS).is_empty());
    // A trade of the closed second arriving then still joins the open bar, as within a grace.
    h.trade_of(1, s + 1_600 * MS, s + 900 * MS, "10", 2).expect("accepted");
    assert_eq!(h.engine.stats().late(Frequency::Second), 0);
    let closed = h.clock(s + 1_800 * MS);
    assert_eq!(bars(&closed, Frequency::Second)[0].volume, Qty(3));
}
