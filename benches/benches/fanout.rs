//! Fan-out: one stream of frame batches, as the emitter hands them over, delivered by the
//! server to 1, 100 and 1,000 WebSocket clients on loopback, each subscribed to everything.
//! Measures client-events delivered per second (an event sent to 1,000 clients counts 1,000
//! times), and prints the server's CPU per delivered client-event (its event-loop threads'
//! CPU time, from `/proc`).
//!
//! Two reader threads own the clients. So that on a 2-core machine the clients cost as
//! little as they can beside the server, they do not copy what they read: `recv` with
//! `MSG_TRUNC` has the kernel discard a TCP socket's bytes and say how many there were.
//! Delivery is checked by bytes. Once per set-up, one batch is read with copies, counting
//! its events by their `{"ev":` prefix and its bytes (one client's share of that batch,
//! framing included). A round of B batches is then done when every client has B times those
//! bytes. Each batch goes out as its own messages, in the per-client-outbox server as in the
//! group streams, so the count is exact for both.
//!
//! A regression here lowers how many clients one server feeds. Target (issue 13): at least
//! 4× the client-events/s of the per-client-outbox server at 1,000 clients. `base` is one
//! batch to one client: the round trip through the server's ring, loop and socket.

#![forbid(unsafe_code)]
#![allow(missing_docs, reason = "criterion_group! generates undocumented items")]

use std::io::Read;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickstock_benches::TradeStream;
use tickstock_engine::{Config, Engine, Event, Tick, Ticker};
use tickstock_shell::config::ServerSettings;
use tickstock_shell::emitter::{FrameBatch, FrameSink};
use tickstock_shell::pipeline::Observed;
use tickstock_shell::server::auth::Credentials;
use tickstock_shell::server::{self, Reporting, ServerSink};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

/// Events per batch: about one emitter cycle at 200,000 events/s.
const BATCH_EVENTS: usize = 200;
/// Batches per measured iteration.
const BATCHES: usize = 20;
/// Threads reading the clients.
const READERS: usize = 2;

fn benching() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// One batch of the engine's real output mix, encoded.
fn batch() -> FrameBatch {
    let mut engine = Engine::new(&Config::default()).expect("default config is valid");
    let mut stream = TradeStream::new(100, 2_000, 11);
    let mut events: Vec<Event> = Vec::new();
    while events.len() < BATCH_EVENTS {
        let trade = stream.next_trade();
        let _ = engine.handle_tick(trade.ts_event, &Tick::Trade(trade));
        events.extend(engine.poll_events());
    }
    let mut batch = FrameBatch::new(1 << 20);
    let ticker = Ticker::new("MSFT").expect("a valid ticker");
    for event in &events[..BATCH_EVENTS] {
        batch.push(event, ticker);
    }
    batch
}

/// What the readers have read, over all clients.
#[derive(Default)]
struct Received {
    /// Events counted (only while the readers copy).
    events: AtomicU64,
    /// Bytes read.
    bytes: AtomicU64,
    /// The readers discard instead of copying.
    discard: AtomicBool,
}

struct Fanout {
    sink: ServerSink,
    received: Arc<Received>,
    /// One client's bytes of one batch.
    batch_bytes: u64,
    stop: Arc<AtomicBool>,
    readers: Vec<thread::JoinHandle<()>>,
    server: Option<server::ServerHandle>,
}

impl Drop for Fanout {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let (mut client, _) = tungstenite::connect(format!("ws://{addr}/stocks")).expect("connects");
    client.send(Message::text(r#"{"action":"auth","params":"bench"}"#)).unwrap();
    client
        .send(Message::text(
            r#"{"action":"subscribe","params":"T.*,A.*,AM.*,HL.*,TR.*,SV.*,FMV.*"}"#,
        ))
        .unwrap();
    // connected, auth_success, the subscription statuses.
    for _ in 0..3 {
        let _ = client.read().unwrap();
    }
    let MaybeTlsStream::Plain(stream) = client.into_inner() else { panic!("plain TCP") };
    stream.set_nonblocking(true).unwrap();
    stream
}

fn setup(clients: usize, batch: &FrameBatch) -> Fanout {
    // One user holds every bench connection, so the per-user limit is lifted.
    let settings = ServerSettings {
        listen: "127.0.0.1:0".to_owned(),
        client_lag_max_bytes: 64 << 20,
        connections_per_user_max: 100_000,
        ..ServerSettings::default()
    };
    let auth = Arc::new(Credentials::load(&settings).expect("open auth on loopback"));
    let reporting =
        Reporting { observed: Observed::default(), upstream: None, feed: "synthetic", nats: None };
    let (sink, handle) =
        server::start(&settings, auth, reporting, 4 << 20, None).expect("the server starts");
    let addr = handle.local_addr;
    let received = Arc::new(Received::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut all: Vec<_> = (0..clients).map(|_| connect(addr)).collect();
    let mut readers = Vec::new();
    for part in 0..READERS {
        let mine: Vec<_> = all.drain(..all.len() / (READERS - part)).collect();
        let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
        readers.push(thread::spawn(move || read_all(mine, &received, &stop)));
    }
    let mut fanout = Fanout { sink, received, batch_bytes: 0, stop, readers, server: Some(handle) };
    fanout.batch_bytes = calibrate(&mut fanout, batch, clients);
    fanout
}

/// One batch read with copies: waits for its every event at every client, then for the
/// bytes to settle (an array's closing bytes follow its last event); returns one client's
/// bytes of it and has the readers discard from then on.
fn calibrate(fanout: &mut Fanout, batch: &FrameBatch, clients: usize) -> u64 {
    let received = &fanout.received;
    fanout.sink.emit(batch).expect("the server takes the batch");
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.events.load(Ordering::SeqCst) < (batch.len() * clients) as u64 {
        assert!(Instant::now() < deadline, "the calibration batch did not arrive");
        thread::yield_now();
    }
    let mut bytes = received.bytes.load(Ordering::SeqCst);
    loop {
        thread::sleep(Duration::from_millis(100));
        let now = received.bytes.load(Ordering::SeqCst);
        if now == bytes {
            break;
        }
        bytes = now;
    }
    assert_eq!(received.events.load(Ordering::SeqCst), (batch.len() * clients) as u64);
    assert_eq!(bytes % clients as u64, 0, "every client has the same bytes");
    received.discard.store(true, Ordering::SeqCst);
    bytes / clients as u64
}

/// The prefix of every event object; a frame header cannot hold it (it is 6 bytes, a
/// header's length bytes are followed by the payload's `[`).
const EVENT_PREFIX: &[u8] = br#"{"ev":"#;

/// Reads every client until it would block, round-robin: with copies, counting events by
/// their prefix (a prefix split across two reads is counted once: the last bytes are carried
/// over) and bytes; once told to discard, bytes only, with `MSG_TRUNC` (nothing is copied).
fn read_all(mut clients: Vec<TcpStream>, received: &Received, stop: &AtomicBool) {
    let finder = memchr::memmem::Finder::new(EVENT_PREFIX);
    let carry = EVENT_PREFIX.len() - 1;
    let mut tails: Vec<Vec<u8>> = vec![Vec::new(); clients.len()];
    let mut buf = vec![0u8; 256 * 1024];
    // Never written: with MSG_TRUNC the kernel only counts what it drops.
    let mut dropped = vec![MaybeUninit::<u8>::uninit(); 1 << 20];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        let discard = received.discard.load(Ordering::Relaxed);
        for (client, tail) in clients.iter_mut().zip(&mut tails) {
            loop {
                if discard {
                    let socket = socket2::SockRef::from(&*client);
                    match socket.recv_with_flags(&mut dropped, libc::MSG_TRUNC) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            idle = false;
                            received.bytes.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    continue;
                }
                let kept = tail.len();
                buf[..kept].copy_from_slice(tail);
                let n = match client.read(&mut buf[kept..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                idle = false;
                let data = &buf[..kept + n];
                received.events.fetch_add(finder.find_iter(data).count() as u64, Ordering::Relaxed);
                received.bytes.fetch_add(n as u64, Ordering::Relaxed);
                tail.clear();
                tail.extend_from_slice(&data[data.len().saturating_sub(carry)..]);
            }
        }
        if idle {
            thread::yield_now();
        }
    }
}

/// CPU time of this process's server event-loop threads, in ns (Linux `/proc`; 0 elsewhere).
fn server_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let tick_ns = 10_000_000; // USER_HZ is 100 on Linux.
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("tickstock-serve"))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .map(|stat| {
            let after = stat.rsplit(')').next().unwrap_or("");
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            (ticks(11) + ticks(12)) * tick_ns
        })
        .sum()
}

/// Emits `batches` batches and waits until every client has every byte of them; returns
/// the time.
fn deliver(fanout: &mut Fanout, batch: &FrameBatch, batches: usize, clients: usize) -> Duration {
    let bytes = &fanout.received.bytes;
    let expected =
        bytes.load(Ordering::SeqCst) + batches as u64 * fanout.batch_bytes * clients as u64;
    let started = Instant::now();
    for _ in 0..batches {
        fanout.sink.emit(batch).expect("the server takes the batch");
    }
    let deadline = started + Duration::from_secs(120);
    while bytes.load(Ordering::SeqCst) < expected {
        assert!(Instant::now() < deadline, "delivery stalled");
        thread::yield_now();
    }
    started.elapsed()
}

fn fanout(c: &mut Criterion) {
    let batch = batch();
    assert_eq!(batch.len(), BATCH_EVENTS);
    let sizes: &[usize] = if benching() { &[1, 100, 1_000] } else { &[1, 10] };
    let batches = if benching() { BATCHES } else { 2 };
    let mut group = c.benchmark_group("fanout");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for &clients in sizes {
        let mut fanout = setup(clients, &batch);
        group.throughput(Throughput::Elements((batches * BATCH_EVENTS * clients) as u64));
        let (cpu_before, bytes_before) =
            (server_cpu_ns(), fanout.received.bytes.load(Ordering::SeqCst));
        group.bench_with_input(
            BenchmarkId::new("client_events", clients),
            &clients,
            |b, &clients| {
                b.iter_custom(|iters| {
                    (0..iters).map(|_| deliver(&mut fanout, &batch, batches, clients)).sum()
                });
            },
        );
        let bytes = fanout.received.bytes.load(Ordering::SeqCst) - bytes_before;
        let events = bytes / fanout.batch_bytes * batch.len() as u64;
        let cpu = server_cpu_ns() - cpu_before;
        if events > 0 && benching() {
            println!(
                "fanout/client_events/{clients}: server event-loop CPU {:.1} ns per client-event ({events} client-events)",
                cpu as f64 / events as f64
            );
        }
    }
    let mut fanout = setup(1, &batch);
    group.throughput(Throughput::Elements(BATCH_EVENTS as u64));
    group.bench_function("base", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| deliver(&mut fanout, &batch, 1, 1)).sum())
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
