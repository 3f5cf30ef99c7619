//! Snapshot on subscribe: a connection asks for `AM.*` with `"snapshot":true` over a
//! snapshot table holding the minute bar of each of 4,000 symbols (the synthetic market's
//! default). Measured sans-IO, from the subscribe's bytes handed to the Subscriber to the
//! last byte of the snapshot handed to its socket: the event loop's whole share of the
//! answer (the table look-ups, the sort by `seq`, the arrays and their framing). The socket
//! and the client's read are not in it: on loopback they are the kernel's copy of ~1 MB.
//!
//! Target (issue 16): `AM.*` for 4,000 symbols answered in at most 50 ms.

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tickstock_engine::encode::encode_event;
use tickstock_engine::limits::EVENT_JSON_BYTES_MAX;
use tickstock_engine::{Bar, Channel, Event, EventBody, Frequency, Price, Qty, SymbolId};
use tickstock_engine::{Ticker, Timestamp};
use tickstock_shell::config::ServerSettings;
use tickstock_shell::emitter::{Frame, FrameBatch};
use tickstock_shell::server::framing::Slices;
use tickstock_shell::server::subscriber::{Env, Standalone, Subscriber};
use tickstock_shell::server::universes::Universes;
use tungstenite::protocol::{Role, WebSocketContext};
use tungstenite::Message;

const SYMBOLS: usize = 4_000;

/// One minute bar per symbol, encoded as the emitter does.
fn bars() -> FrameBatch {
    let mut batch = FrameBatch::new(8 << 20);
    for index in 0..SYMBOLS {
        let ticker = Ticker::new(&format!("S{index}")).expect("a valid ticker");
        let price = Price::from_raw(20_000_000 + index as i64 * 1_000);
        let bar = Bar {
            frequency: Frequency::Minute,
            start: Timestamp(1_796_187_060_000_000_000),
            end: Timestamp(1_796_187_120_000_000_000),
            open: price,
            high: price,
            low: price,
            close: price,
            volume: Qty(5_833_585),
            vwap: price,
            day_volume: Qty(25_833_585),
            day_open: price,
            day_vwap: price,
            avg_size: Qty(1_023),
            trades: 7,
        };
        let seq = 1_000 + index as u64;
        let event = Event { seq, symbol: SymbolId(index as u32), body: EventBody::Bar(bar) };
        let mut json = Vec::with_capacity(EVENT_JSON_BYTES_MAX);
        encode_event(&mut json, &event, ticker.as_str());
        let frame = Frame {
            seq,
            symbol: event.symbol,
            ticker,
            channel: Channel::Am,
            price_raw: price.raw(),
            volume: 5_833_585,
            strength: 0,
            recv_ns: 0,
            t_ms: 1_796_187_060_000,
            start: 0,
            end: 0,
        };
        batch.push_raw(frame, &json);
    }
    batch
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

/// A client message, masked, as a client's codec writes it.
fn client_frame(client: &mut WebSocketContext, text: &str) -> Vec<u8> {
    let mut out = Out(Vec::new());
    client.write(&mut out, Message::text(text)).expect("the client writes");
    client.flush(&mut out).expect("the client flushes");
    out.0
}

fn snapshot(c: &mut Criterion) {
    let settings =
        ServerSettings { client_messages_per_sec: 1_000_000_000, ..ServerSettings::default() };
    let mut world = Standalone::new(settings.clone(), Arc::new(Universes::default()))
        .expect("the open default");
    let now = Instant::now();
    world.fanout.handle_batch(now, &bars());
    macro_rules! env {
        () => {
            world.env()
        };
    }
    let config = tungstenite::protocol::WebSocketConfig::default();
    let peer = ([127, 0, 0, 1], 40_000).into();
    let mut subscriber = Subscriber::new(now, 0, peer, &settings, config, Vec::new(), Vec::new());
    subscriber.start(now, None, &mut env!());
    let mut client = WebSocketContext::new(Role::Client, None);
    let auth_message = client_frame(&mut client, r#"{"action":"auth","params":"token"}"#);
    subscriber.handle_read(now, &auth_message, &mut env!());
    let subscribe = r#"{"action":"subscribe","params":"AM.*","snapshot":true}"#;
    let unsubscribe = r#"{"action":"unsubscribe","params":"AM.*"}"#;
    // Everything the Subscriber has for the socket, handed to it; the bytes written.
    let drain = |subscriber: &mut Subscriber, env: &mut Env<'_>| {
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
    };
    drain(&mut subscriber, &mut env!());
    let mut group = c.benchmark_group("snapshot");
    group.throughput(Throughput::Elements(SYMBOLS as u64));
    group.bench_function("am_4000_symbols", |b| {
        b.iter(|| {
            let message = client_frame(&mut client, subscribe);
            subscriber.handle_read(now, &message, &mut env!());
            let written = drain(&mut subscriber, &mut env!());
            assert!(written > SYMBOLS * 150, "the whole snapshot went out: {written} bytes");
            let message = client_frame(&mut client, unsubscribe);
            subscriber.handle_read(now, &message, &mut env!());
            drain(&mut subscriber, &mut env!());
        });
    });
    group.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
