//! Scenario `one_feed_to_n_clients_tick_to_client`:
//!
//! ```text
//!  synthetic market ──▶ engine ──▶ emitter ──▶ server ──▶ N WebSocket clients (loopback)
//!  (R trades/s, live)                          (1 ms      (2 reader threads, every channel)
//!                                                cycle)
//! ```
//!
//! Each client subscribes to everything. For every `T` event received, latency is the
//! receive time minus the trade's `t`. `t` is the ring-entry time truncated to the
//! millisecond, so each sample overstates the true latency by up to 1 ms: the figures are
//! upper bounds. Server and readers share the machine; the scenario warns when there are
//! fewer than 4 cores.
//!
//! Run: `cargo run --release -p tickstock-perf --bin tick_to_client -- --clients 100 --rate 20000 --seconds 20`

#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use tickstock_shell::config::Settings;
use tickstock_shell::feed::synthetic::SyntheticFeed;
use tickstock_shell::pipeline::{Observed, TimeMode};
use tickstock_shell::server::auth::Authenticator;
use tickstock_shell::server::{Reporting, Service};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

#[derive(Debug, Parser)]
struct Args {
    /// WebSocket clients, each subscribed to every channel.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Synthetic trades per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// Measured seconds (after 2 s of warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Topics each client subscribes to.
    #[arg(long, default_value = "T.*,A.*,AM.*,HL.*,TR.*,SV.*,FMV.*")]
    topics: String,
    /// Emitter cycle in µs (`pipeline.emitter_cycle_us`): longer cycles mean fewer, larger
    /// writes per client.
    #[arg(long, default_value_t = 1_000)]
    cycle_us: u32,
}

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

const READERS: usize = 2;
const WARMUP: Duration = Duration::from_secs(2);

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn connect(addr: SocketAddr, topics: &str) -> Client {
    let (mut client, _) = tungstenite::connect(format!("ws://{addr}/stocks")).expect("connects");
    client.send(Message::text(r#"{"action":"auth","params":"perf"}"#)).expect("sends");
    let subscribe = format!(r#"{{"action":"subscribe","params":"{topics}"}}"#);
    client.send(Message::text(subscribe)).expect("sends");
    for _ in 0..3 {
        let _ = client.read();
    }
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_nonblocking(true).expect("non-blocking");
    }
    client
}

/// Every `T` event's `t` (ms) in a message, by scanning (no JSON tree per event).
fn trade_times(text: &str, mut f: impl FnMut(u64)) -> usize {
    let mut events = 0;
    for object in text.split("{\"ev\":").skip(1) {
        events += 1;
        if !object.starts_with("\"T\"") {
            continue;
        }
        if let Some(at) = object.find(",\"t\":") {
            let digits = object[at + 5..].bytes().take_while(u8::is_ascii_digit);
            f(digits.fold(0u64, |t, d| t * 10 + u64::from(d - b'0')));
        }
    }
    events
}

fn read_all(
    mut clients: Vec<Client>,
    histogram: &Mutex<Histogram<u64>>,
    events: &AtomicU64,
    measuring: &AtomicBool,
    stop: &AtomicBool,
) {
    let mut local = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds");
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for client in &mut clients {
            while let Ok(message) = client.read() {
                let Message::Text(text) = message else { continue };
                idle = false;
                let received = now_ns();
                let on = measuring.load(Ordering::Relaxed);
                let count = trade_times(text.as_str(), |t_ms| {
                    if on {
                        let latency =
                            received.saturating_sub(t_ms * 1_000_000).clamp(1_000, 60_000_000_000);
                        let _ = local.record(latency);
                    }
                });
                if on {
                    events.fetch_add(count as u64, Ordering::Relaxed);
                }
            }
        }
        if idle {
            thread::yield_now();
        }
    }
    histogram.lock().expect("not poisoned").add(&local).expect("same bounds");
}

fn main() {
    let args = Args::parse();
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 4 {
        eprintln!("warning: {cores} cores; the server, pipeline and {READERS} reader threads share them, so latency includes contention");
    }
    let mut settings = Settings::default();
    settings.synthetic.trades_per_sec = args.rate;
    settings.pipeline.emitter_cycle_us = args.cycle_us;
    settings.server.listen = "127.0.0.1:0".to_owned();
    settings.server.connections_per_user_max = u32::MAX / 2;
    let auth = Authenticator::load(&settings.server).expect("open auth on loopback");
    let reporting = Reporting { observed: Observed::default(), upstream: None };
    let feed = Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1));
    let stop_pipeline = Arc::new(AtomicBool::new(false));
    let service = Service::start(
        &settings,
        auth,
        feed,
        TimeMode::Live,
        Arc::clone(&stop_pipeline),
        reporting,
        |_, _| {},
    )
    .expect("the server starts");
    let (addr, counters) = (service.local_addr, Arc::clone(&service.counters));
    let mut all: Vec<Client> = (0..args.clients).map(|_| connect(addr, &args.topics)).collect();
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds"),
    ));
    let (events, measuring, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut readers = Vec::new();
    for part in 0..READERS {
        let mine: Vec<Client> = all.drain(..all.len() / (READERS - part)).collect();
        let (histogram, events, measuring, stop) = (
            Arc::clone(&histogram),
            Arc::clone(&events),
            Arc::clone(&measuring),
            Arc::clone(&stop),
        );
        readers.push(thread::spawn(move || read_all(mine, &histogram, &events, &measuring, &stop)));
    }
    thread::sleep(WARMUP);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    thread::sleep(Duration::from_secs(args.seconds));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().expect("reader");
    }
    stop_pipeline.store(true, Ordering::Relaxed);
    let report = service.wait().expect("the pipeline ran");
    let h = histogram.lock().expect("not poisoned");
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
    println!("scenario: one_feed_to_n_clients_tick_to_client, {} clients on {}, {} trades/s, emitter cycle {} µs, {} s measured, {cores} cores", args.clients, args.topics, args.rate, args.cycle_us, args.seconds);
    println!("client-events delivered: {:.0}/s", events.load(Ordering::Relaxed) as f64 / elapsed);
    println!(
        "tick-to-client (upper bounds, ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} trades sampled)",
        ms(0.5), ms(0.9), ms(0.99), ms(0.999), h.max() as f64 / 1e6, h.len()
    );
    println!(
        "slow-consumer closes: {}, mfbuf drops: {}, engine accepted {}",
        counters.slow_consumer_closes.load(Ordering::Relaxed),
        report.counters.buffer_dropped.get(),
        report.counters.accepted.get()
    );
}
