//! A `resume` from the memory history: 1,000,000 retained events of the synthetic market
//! (4,000 symbols, the engine's real event mix: mostly `T`), and a connection that
//! subscribes and resumes from the oldest of them. Measured sans-IO, from the resume's
//! bytes handed to the Subscriber to the `resumed` status handed to its socket, with the
//! replay's pace off (`resume_events_per_sec_max = 0`): the event loop's whole share of
//! the replay (finding the events, building and framing the arrays).
//!
//! - `watchlist_10`: `T`, `A` and `HL` of 10 symbols spread over the market's activity
//!   ranks (every 400th from the 100th: 0.2 % of the events), a desk's reconnect. Its
//!   cost should follow what it is sent, not the history's length.
//! - `watchlist_10_most_active`: the same of the 10 most active symbols (11.5 % of the
//!   events: looking them up one by one is then about as dear as looking at everything).
//! - `t_all`: `T.*`, nearly every retained event sent (the upper bound).
//!
//! - `history_append`: what the history costs per event: an emitter cycle's batch appended
//!   to the full history (the oldest evicted), as each event loop does every cycle;
//!   `history_append_by_ticker` the same with frames whose symbol index is not known (a
//!   gateway's from a format 1 message, or read back from the event log: the per-symbol
//!   index then finds each list by ticker).
//!
//! The replays' throughput is in retained events ("history replayed per second").

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tickstock_engine::{Config, Engine, SymbolId, Tick, Ticker};
use tickstock_shell::config::{ServerSettings, SyntheticSettings};
use tickstock_shell::emitter::{Frame, FrameBatch};
use tickstock_shell::feed::synthetic::Market;
use tickstock_shell::nats::UNKNOWN_SYMBOL;
use tickstock_shell::server::framing::Slices;
use tickstock_shell::server::subscriber::{Env, Standalone, Subscriber};
use tickstock_shell::server::universes::Universes;
use tungstenite::protocol::{Role, WebSocketContext};
use tungstenite::Message;

const EVENTS: u64 = 1_000_000;

fn benching() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// `events` of the synthetic market's output into `world`'s history, in emitter-sized
/// batches; the market's tickers and the last batch.
fn fill(world: &mut Standalone, events: u64, now: Instant) -> (Vec<Ticker>, FrameBatch) {
    let market_settings = SyntheticSettings { virtual_time: true, ..SyntheticSettings::default() };
    let mut market = Market::new(&market_settings);
    let tickers: Vec<Ticker> =
        market.tickers().iter().map(|t| Ticker::new(t).expect("a valid ticker")).collect();
    let mut engine = Engine::new(&Config::default()).expect("default config is valid");
    let mut batch = FrameBatch::new(1 << 20);
    let mut retained = 0;
    let mut last = FrameBatch::new(1 << 20);
    while retained < events {
        let trade = market.next_trade();
        let _ = engine.handle_tick(trade.ts_recv, &Tick::Trade(trade));
        for event in engine.poll_events() {
            if !batch.has_room() || retained + batch.len() as u64 >= events {
                retained += batch.len() as u64;
                world.fanout.handle_batch(now, &batch);
                last = std::mem::replace(&mut batch, FrameBatch::new(1 << 20));
            }
            let ticker = match event.symbol {
                SymbolId::MARKET => Ticker::MARKET,
                symbol => tickers[symbol.index()],
            };
            batch.push(&event, ticker);
        }
    }
    (tickers, last)
}

/// Where the client codec writes: a buffer (it never reads here).
struct Out(Vec<u8>);

impl std::io::Read for Out {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

impl std::io::Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Client messages, masked, as a client's codec writes them, back to back.
fn client_frames(texts: &[&str]) -> Vec<u8> {
    let mut client = WebSocketContext::new(Role::Client, None);
    let mut out = Out(Vec::new());
    for text in texts {
        client.write(&mut out, Message::text(*text)).expect("the client writes");
    }
    client.flush(&mut out).expect("the client flushes");
    out.0
}

/// A fresh connection subscribes to `topics` and resumes from `from_seq`; everything it is
/// given for its socket is taken until the replay has ended. The bytes written.
fn resume(world: &mut Standalone, topics: &str, from_seq: u64, now: Instant) -> usize {
    let config = tungstenite::protocol::WebSocketConfig::default();
    let peer = ([127, 0, 0, 1], 40_000).into();
    let settings = world.settings.clone();
    let mut subscriber = Subscriber::new(now, 0, peer, &settings, config, Vec::new(), Vec::new());
    subscriber.start(now, None, &mut world.env());
    let subscribe = format!(r#"{{"action":"subscribe","params":"{topics}"}}"#);
    let resume = format!(r#"{{"action":"resume","params":{{"from_seq":{from_seq}}}}}"#);
    let messages =
        client_frames(&[r#"{"action":"auth","params":"token"}"#, subscribe.as_str(), &resume]);
    subscriber.handle_read(now, &messages, &mut world.env());
    let mut total = 0;
    let mut idle = 0;
    while idle < 2 {
        let written = drain(&mut subscriber, &mut world.env(), now);
        idle = if written == 0 { idle + 1 } else { 0 };
        total += written;
        subscriber.poll(now, &mut world.env());
    }
    subscriber.leave(&mut world.env());
    total
}

/// Everything the Subscriber has for the socket, handed to it; the bytes written.
fn drain(subscriber: &mut Subscriber, env: &mut Env<'_>, now: Instant) -> usize {
    let mut total = 0;
    loop {
        subscriber.handle_drained(now);
        let mut slices = Slices::new();
        subscriber.poll_transmit(env.fanout, &mut slices);
        let written = slices.bytes;
        if written == 0 {
            return total;
        }
        subscriber.handle_written(written, env);
        total += written;
    }
}

fn replay(c: &mut Criterion) {
    let events = if benching() { EVENTS } else { 20_000 };
    let settings = ServerSettings {
        client_messages_per_sec: 1_000_000_000,
        resume_events_per_sec_max: 0,
        ..ServerSettings::default()
    };
    let mut world =
        Standalone::new(settings, Arc::new(Universes::default())).expect("the open default");
    let now = Instant::now();
    let (tickers, last) = fill(&mut world, events, now);
    let oldest = world.fanout.history.oldest_seq().expect("a filled history");
    // The synthetic market's activity falls with rank (weight 1 / (rank + 10)).
    let watchlist = |ranks: &mut dyn Iterator<Item = usize>| {
        let topics: Vec<String> = ranks
            .flat_map(|rank| ["T", "A", "HL"].map(|c| format!("{c}.{}", tickers[rank].as_str())))
            .collect();
        topics.join(",")
    };
    let spread = watchlist(&mut (100..4_000).step_by(400));
    let top = watchlist(&mut (0..10));
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("watchlist_10", |b| {
        b.iter(|| {
            let written = resume(&mut world, &spread, oldest, now);
            assert!(written > 1_000, "the watchlist's events went out: {written} bytes");
            written
        });
    });
    group.bench_function("watchlist_10_most_active", |b| {
        b.iter(|| {
            let written = resume(&mut world, &top, oldest, now);
            assert!(written > 1_000, "the watchlist's events went out: {written} bytes");
            written
        });
    });
    group.bench_function("t_all", |b| {
        b.iter(|| {
            let written = resume(&mut world, "T.*", oldest, now);
            assert!(written as u64 > events * 50, "every trade went out: {written} bytes");
            written
        });
    });
    // What every event costs the history (and so each event loop): appending an emitter
    // cycle's batch to a full history, the oldest evicted.
    let mut next_seq = world.fanout.history.newest_seq().expect("a filled history") + 1;
    group.throughput(Throughput::Elements(last.len() as u64));
    group.sample_size(30);
    // The second time, the frames' symbol index is not known.
    for (name, by_ticker) in [("history_append", false), ("history_append_by_ticker", true)] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut batch = FrameBatch::new(1 << 20);
                    for frame in last.frames() {
                        let symbol = if by_ticker { UNKNOWN_SYMBOL } else { frame.symbol };
                        batch.push_raw(Frame { seq: next_seq, symbol, ..*frame }, last.json(frame));
                        next_seq += 1;
                    }
                    batch
                },
                |batch| world.fanout.history.append(&batch),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
