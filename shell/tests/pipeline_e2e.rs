//! End to end: the threaded pipeline's output equals the engine core run directly on the same
//! trades (nothing lost, nothing reordered, `seq` contiguous), and a journal replays to the
//! very same frames, at any pace.

mod common;

use std::time::Instant;

use tickstock_engine::encode::encode_event;
use tickstock_engine::limits::EVENT_JSON_BYTES_MAX;
use tickstock_engine::{Engine, SymbolId, Tick};
use tickstock_shell::feed::journal::{JournalFeed, Pace};
use tickstock_shell::feed::synthetic::{Market, SyntheticFeed};
use tickstock_shell::feed::FeedEnd;
use tickstock_shell::pipeline::TimeMode;

/// The engine core alone over the synthetic market's trades, encoded like the emitter does.
fn direct(settings: &tickstock_shell::config::Settings) -> Vec<(u64, String)> {
    let mut market = Market::new(&settings.synthetic);
    let tickers = market.tickers().to_vec();
    let mut engine = Engine::new(&settings.engine).unwrap();
    let mut out = Vec::new();
    let encode = |engine: &mut Engine, out: &mut Vec<(u64, String)>| {
        for event in engine.poll_events() {
            let mut bytes = Vec::with_capacity(EVENT_JSON_BYTES_MAX);
            let ticker = match event.symbol {
                SymbolId::MARKET => "*",
                symbol => &tickers[symbol.index()],
            };
            encode_event(&mut bytes, &event, ticker);
            out.push((event.seq, String::from_utf8(bytes).unwrap()));
        }
    };
    for _ in 0..settings.synthetic.trades_max.unwrap() {
        let trade = market.next_trade();
        let _ = engine.handle_tick(trade.ts_recv, &Tick::Trade(trade));
        encode(&mut engine, &mut out);
    }
    engine.handle_flush().unwrap();
    encode(&mut engine, &mut out);
    out
}

#[test]
fn pipeline_output_equals_the_engine_core_run_directly() {
    let mut settings = common::virtual_market(200_000, 11);
    // 200,000 trades over 500 s of event time: long enough for the trend windows.
    settings.synthetic.trades_per_sec = 400;
    let feed = Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1));
    let (report, frames) = common::run(&settings, feed, TimeMode::Given);
    assert!(matches!(report.feed_end, FeedEnd::Exhausted), "{:?}", report.feed_end);
    let expected = direct(&settings);
    assert!(expected.len() > 200_000, "the market produces bars and detector events too");
    for channel in [
        "\"ev\":\"A\"",
        "\"ev\":\"AM\"",
        "\"ev\":\"HL\"",
        "\"ev\":\"TR\"",
        "\"ev\":\"SV\"",
        "\"ev\":\"ACT\"",
    ] {
        assert!(expected.iter().any(|(_, json)| json.contains(channel)), "no {channel} event");
    }
    assert_eq!(frames.len(), expected.len());
    assert!(frames == expected, "the pipeline's frames differ from the direct run");
    common::assert_contiguous(&frames);
    let c = &report.counters;
    assert_eq!(c.received.get(), 200_000);
    assert_eq!(c.buffer_dropped.get(), 0);
    assert_eq!(c.emitted.get(), frames.len() as u64);
}

#[test]
fn a_live_run_and_its_journal_replay_give_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::virtual_market(60_000, 5);
    settings.synthetic.virtual_time = false;
    settings.synthetic.trades_per_sec = 40_000;
    settings.journal.enabled = true;
    settings.journal.dir = dir.path().to_owned();
    let feed = Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1));
    let (live_report, live) = common::run(&settings, feed, TimeMode::Live);
    assert!(matches!(live_report.feed_end, FeedEnd::Exhausted));
    assert_eq!(live_report.counters.journal_records.get(), 60_000);
    common::assert_contiguous(&live);

    settings.journal.enabled = false;
    let feed = Box::new(JournalFeed::new(dir.path().to_owned(), Pace::Max));
    let (replay_report, replayed) = common::run(&settings, feed, TimeMode::Given);
    assert!(matches!(replay_report.feed_end, FeedEnd::Exhausted), "{:?}", replay_report.feed_end);
    assert_eq!(replayed.len(), live.len());
    assert!(replayed == live, "the replay differs from the live run");
}

#[test]
fn paced_replay_follows_the_recorded_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::virtual_market(20_000, 8);
    settings.journal.enabled = true;
    settings.journal.dir = dir.path().to_owned();
    let feed = Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1));
    let (_, recorded) = common::run(&settings, feed, TimeMode::Given);
    // 20,000 trades at 20,000/s span about one second of event time.
    settings.journal.enabled = false;
    for (speed, low, high) in [(4.0, 0.2, 1.5), (1.0, 0.9, 3.0)] {
        let started = Instant::now();
        let feed = Box::new(JournalFeed::new(dir.path().to_owned(), Pace::Speed(speed)));
        let (_, replayed) = common::run(&settings, feed, TimeMode::Given);
        let secs = started.elapsed().as_secs_f64();
        assert!((low..high).contains(&secs), "speed {speed}: took {secs} s");
        assert!(replayed == recorded, "speed {speed}: a paced replay gives the same frames");
    }
}

#[test]
fn a_flood_faster_than_the_emitter_is_dropped_and_counted_when_live() {
    let mut settings = common::virtual_market(300_000, 2);
    settings.mfbuf.per_second_capacity = 1_024;
    settings.pipeline.emitter_cycle_us = 20_000;
    settings.pipeline.emitter_backpressure = tickstock_shell::config::Backpressure::Drop;
    let feed = Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1));
    let (report, frames) = common::run(&settings, feed, TimeMode::Given);
    let c = &report.counters;
    assert!(c.buffer_dropped.get() > 0, "a 1,024-event lane under a 20 ms cycle overflows");
    assert_eq!(
        c.buffered.get() + c.buffer_dropped.get(),
        c.detected.get(),
        "every event is either buffered or counted as dropped"
    );
    assert_eq!(frames.len() as u64, c.buffered.get(), "everything buffered is emitted");
    assert!(
        frames.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "seq order holds across the holes"
    );
}
