//! The upstream client against a scripted fake upstream on loopback: a normal session, auth
//! failure, `max_connections`, a drop mid-stream, a stale feed, garbage, a flood faster than
//! the engine, and TLS. The engine keeps running through all of them and the counters say
//! what happened.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tickstock_shell::config::{Settings, StaleCheck};
use tickstock_shell::emitter::CaptureSink;
use tickstock_shell::feed::upstream::{Secret, UpstreamFeed, UpstreamStatus, FAILURE_LABELS};
use tickstock_shell::pipeline::{self, Report, TimeMode};
use tungstenite::{Message, WebSocket};

const KEY: &str = "test-key-never-logged";

/// What the fake upstream saw.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    /// Client text messages, with the connection index.
    messages: Mutex<Vec<(usize, String)>>,
}

type Script = dyn Fn(usize, &mut dyn Peer) + Send + Sync;

/// A server-side WebSocket, plain or TLS.
trait Peer {
    fn send_text(&mut self, text: &str) -> bool;
    fn send_binary(&mut self, bytes: Vec<u8>) -> bool;
    /// The next text message from the client, `None` when it is gone.
    fn next_text(&mut self) -> Option<String>;
}

impl<S: std::io::Read + std::io::Write> Peer for WebSocket<S> {
    fn send_text(&mut self, text: &str) -> bool {
        self.send(Message::text(text)).is_ok()
    }
    fn send_binary(&mut self, bytes: Vec<u8>) -> bool {
        self.send(Message::binary(bytes)).is_ok()
    }
    fn next_text(&mut self) -> Option<String> {
        loop {
            match self.read() {
                Ok(Message::Text(text)) => return Some(text.to_string()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

struct Fake {
    port: u16,
    seen: Arc<Seen>,
}

fn fake(script: Arc<Script>, tls: Option<Arc<rustls::ServerConfig>>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let seen_server = Arc::clone(&seen);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let index = seen_server.connections.fetch_add(1, Ordering::SeqCst);
            let (script, seen, tls) = (Arc::clone(&script), Arc::clone(&seen_server), tls.clone());
            thread::spawn(move || serve(stream, index, &*script, &seen, tls));
        }
    });
    Fake { port, seen }
}

/// Records what the client sends, then runs the script.
struct Recording<'a> {
    peer: &'a mut dyn Peer,
    index: usize,
    seen: &'a Seen,
}

impl Peer for Recording<'_> {
    fn send_text(&mut self, text: &str) -> bool {
        self.peer.send_text(text)
    }
    fn send_binary(&mut self, bytes: Vec<u8>) -> bool {
        self.peer.send_binary(bytes)
    }
    fn next_text(&mut self) -> Option<String> {
        let text = self.peer.next_text()?;
        self.seen.messages.lock().unwrap().push((self.index, text.clone()));
        Some(text)
    }
}

fn serve(
    stream: TcpStream,
    index: usize,
    script: &Script,
    seen: &Seen,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    match tls {
        None => {
            let Ok(mut ws) = tungstenite::accept(stream) else { return };
            script(index, &mut Recording { peer: &mut ws, index, seen });
        }
        Some(config) => {
            let connection = rustls::ServerConnection::new(config).unwrap();
            let Ok(mut ws) = tungstenite::accept(rustls::StreamOwned::new(connection, stream))
            else {
                return;
            };
            script(index, &mut Recording { peer: &mut ws, index, seen });
        }
    }
}

/// `connected`, then the auth exchange with `answer`; true when authenticated.
fn greet(peer: &mut dyn Peer, answer: &str) -> bool {
    peer.send_text(r#"[{"ev":"status","status":"connected","message":"Connected Successfully"}]"#);
    let Some(auth) = peer.next_text() else { return false };
    let value: serde_json::Value = serde_json::from_str(&auth).unwrap();
    assert_eq!(value["action"], "auth");
    assert_eq!(value["params"], KEY);
    peer.send_text(&format!(r#"[{{"ev":"status","status":"{answer}","message":"-"}}]"#));
    answer == "auth_success"
}

/// Greets, authenticates and takes the subscription.
fn open_session(peer: &mut dyn Peer) -> bool {
    if !greet(peer, "auth_success") {
        return false;
    }
    let Some(subscribe) = peer.next_text() else { return false };
    assert!(subscribe.contains(r#""action":"subscribe""#), "{subscribe}");
    true
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// `count` Polygon-shaped trades of `symbols` symbols, `q` counting up from `q0` per symbol.
fn trades(count: usize, symbols: usize, q0: u64) -> String {
    let t = now_ms();
    let items: Vec<String> = (0..count)
        .map(|k| {
            let sym = format!("S{}", k % symbols);
            let q = q0 + (k / symbols) as u64;
            format!(
                r#"{{"ev":"T","sym":"{sym}","x":4,"i":"{k}","p":{}.25,"s":100,"t":{t},"q":{q}}}"#,
                10 + k % 7
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn settings(port: u16, scheme: &str) -> Settings {
    let mut settings = Settings::default();
    let u = &mut settings.upstream;
    u.url = format!("{scheme}://localhost:{port}/stocks");
    u.connect_timeout_ms = 1_000;
    u.auth_timeout_ms = 1_000;
    u.backoff_ms_min = 10;
    u.backoff_ms_max = 100;
    u.auth_backoff_ms = 400;
    u.breaker_failures = 3;
    u.breaker_open_ms = 300;
    u.stale_ms = 400;
    u.stale_check = StaleCheck::Always;
    u.message_bytes_max = 64 * 1024;
    settings.pipeline.stats_interval_ms = 100;
    settings
}

struct Run {
    report: Report,
    frames: Vec<(u64, String)>,
    status: Arc<UpstreamStatus>,
}

/// Runs the pipeline on the upstream feed until `done` says so (or 20 s pass).
fn run_until(settings: &Settings, done: impl Fn(&UpstreamStatus, usize) -> bool) -> Run {
    run_gated(settings, None, done)
}

/// A sink that holds every batch until the test opens its gate: the emitter waits in it, so
/// the engine (with `Backpressure::Wait`) and then the feed wait behind it, on any machine.
struct GatedSink {
    inner: CaptureSink,
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl tickstock_shell::emitter::FrameSink for GatedSink {
    fn emit(&mut self, batch: &tickstock_shell::emitter::FrameBatch) -> std::io::Result<()> {
        let (lock, opened) = &*self.open;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = opened.wait(open).unwrap();
        }
        drop(open);
        self.inner.emit(batch)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.inner.finish()
    }
}

/// [`run_until`], with the sink closed until `gate` says so: `gate` is polled with the
/// pipeline's counters and opens the sink (for good) the first time it returns true.
fn run_gated(
    settings: &Settings,
    gate: Option<fn(&tickstock_shell::tracer::Counters) -> bool>,
    done: impl Fn(&UpstreamStatus, usize) -> bool,
) -> Run {
    let status = Arc::new(UpstreamStatus::default());
    let calendar = settings.engine.validate().unwrap().calendar();
    let feed = UpstreamFeed::new(
        settings.upstream.clone(),
        Secret::new(KEY.to_owned()),
        settings.pipeline.heartbeat_ms,
        calendar,
        settings.engine.symbols_max,
        Arc::clone(&status),
    );
    let capture = CaptureSink::default();
    let frames = Arc::clone(&capture.frames);
    let open = Arc::new((Mutex::new(gate.is_none()), std::sync::Condvar::new()));
    let sink = GatedSink { inner: capture, open: Arc::clone(&open) };
    let stop = Arc::new(AtomicBool::new(false));
    let observed = pipeline::Observed::default();
    let counters = Arc::clone(&observed.counters);
    let (settings_run, stop_run) = (settings.clone(), Arc::clone(&stop));
    let runner = thread::spawn(move || {
        pipeline::run_observed(
            &settings_run,
            Box::new(feed),
            Box::new(sink),
            TimeMode::Live,
            stop_run,
            |_, _| {},
            observed,
        )
        .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if gate.is_some_and(|gate| gate(&counters)) {
            *open.0.lock().unwrap() = true;
            open.1.notify_all();
        }
        let trades = frames
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, json)| json.starts_with(r#"{"ev":"T""#))
            .count();
        if done(&status, trades) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    let report = runner.join().unwrap();
    let frames = std::mem::take(&mut *frames.lock().unwrap());
    Run { report, frames, status }
}

fn failures(status: &UpstreamStatus, label: &str) -> u64 {
    let index = FAILURE_LABELS.iter().position(|&l| l == label).unwrap();
    status.counters.failures[index].get()
}

fn t_frames(frames: &[(u64, String)]) -> Vec<&String> {
    frames.iter().map(|(_, json)| json).filter(|json| json.starts_with(r#"{"ev":"T""#)).collect()
}

#[test]
fn a_normal_session_streams_trades_into_the_engine() {
    let script: Arc<Script> = Arc::new(|_, peer| {
        if !open_session(peer) {
            return;
        }
        peer.send_text(&trades(100, 5, 1));
        // A TickStock server's T frame (with its own seq) feeds just the same.
        peer.send_text(&format!(
            r#"[{{"ev":"T","sym":"BRK.B","seq":991,"p":412.5,"s":10,"t":{},"x":0,"i":"7"}}]"#,
            now_ms()
        ));
        // q jumps from 20 to 22 on S0: one trade lost upstream.
        peer.send_text(&trades(100, 5, 22));
        while peer.next_text().is_some() {}
    });
    let server = fake(script, None);
    let run = run_until(&settings(server.port, "ws"), |_, trades| trades >= 201);
    let trades = t_frames(&run.frames);
    assert_eq!(trades.len(), 201);
    assert!(
        trades[0].contains(r#""sym":"S0""#) && trades[0].contains(r#""p":10.25"#),
        "{}",
        trades[0]
    );
    assert!(trades.iter().any(|t| t.contains(r#""sym":"BRK.B""#) && t.contains(r#""p":412.5"#)));
    let c = &run.status.counters;
    assert_eq!(c.sessions.get(), 1);
    assert_eq!(c.ticks.get(), 201);
    assert_eq!(c.q_gaps.get(), 5, "each of 5 symbols skipped one q");
    assert_eq!(run.report.counters.rejected.get(), 0);
    let health = run.status.health();
    assert!(
        health.streaming && health.breaker == "closed" && health.last_failure.is_none(),
        "{health:?}"
    );
    let messages = server.seen.messages.lock().unwrap();
    assert!(
        messages.iter().any(|(_, m)| m == r#"{"action":"subscribe","params":"T.*"}"#),
        "{messages:?}"
    );
}

#[test]
fn auth_failure_backs_off_and_the_breaker_says_why() {
    let script: Arc<Script> = Arc::new(|_, peer| {
        greet(peer, "auth_failed");
    });
    let server = fake(script, None);
    let started = Instant::now();
    let run =
        run_until(&settings(server.port, "ws"), |status, _| failures(status, "auth_failed") >= 3);
    let elapsed = started.elapsed();
    assert!(failures(&run.status, "auth_failed") >= 3);
    // At least auth_backoff_ms (400) between attempts: no hammering.
    let connections = server.seen.connections.load(Ordering::SeqCst) as u128;
    assert!(
        elapsed.as_millis() >= 400 * (connections - 1),
        "{connections} connections in {elapsed:?}"
    );
    let health = run.status.health();
    assert!(health.last_failure.as_deref().unwrap_or("").contains("auth_failed"), "{health:?}");
    assert!(run.status.counters.breaker_opened.get() >= 1);
    assert!(
        run.report.counters.engine_done.load(Ordering::SeqCst),
        "the engine ran and stopped cleanly"
    );
}

#[test]
fn max_connections_is_its_own_case_and_backs_off() {
    let script: Arc<Script> = Arc::new(|_, peer| {
        greet(peer, "max_connections");
    });
    let server = fake(script, None);
    let run = run_until(&settings(server.port, "ws"), |status, _| {
        failures(status, "max_connections") >= 2
    });
    assert!(failures(&run.status, "max_connections") >= 2);
    assert_eq!(failures(&run.status, "auth_failed"), 0);
    let health = run.status.health();
    assert!(health.last_failure.unwrap().contains("max_connections"));
    assert!(server.seen.connections.load(Ordering::SeqCst) <= 3);
}

#[test]
fn a_drop_mid_stream_reconnects_and_resubscribes() {
    let script: Arc<Script> = Arc::new(|index, peer| {
        if !open_session(peer) {
            return;
        }
        peer.send_text(&trades(50, 5, 1 + index as u64 * 10));
        if index == 0 {
            return; // Drops the TCP connection without a close frame.
        }
        while peer.next_text().is_some() {}
    });
    let server = fake(script, None);
    let run = run_until(&settings(server.port, "ws"), |_, trades| trades >= 100);
    assert_eq!(t_frames(&run.frames).len(), 100);
    let c = &run.status.counters;
    assert_eq!(c.reconnects.get(), 1);
    assert!(c.disconnected_ns.get() > 0);
    assert_eq!(failures(&run.status, "disconnected"), 1);
    let subscribes = server
        .seen
        .messages
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, m)| m.contains("subscribe"))
        .count();
    assert_eq!(subscribes, 2, "re-subscribed after the reconnect");
}

#[test]
fn a_stale_feed_is_dropped_and_reconnected() {
    let script: Arc<Script> = Arc::new(|index, peer| {
        if !open_session(peer) {
            return;
        }
        if index == 0 {
            // Silent but open: only stale detection gets the client out.
            while peer.next_text().is_some() {}
            return;
        }
        peer.send_text(&trades(10, 2, 1));
        while peer.next_text().is_some() {}
    });
    let server = fake(script, None);
    let run = run_until(&settings(server.port, "ws"), |_, trades| trades >= 10);
    assert_eq!(t_frames(&run.frames).len(), 10);
    assert_eq!(failures(&run.status, "stale"), 1);
}

#[test]
fn garbage_is_counted_and_skipped_and_the_feed_goes_on() {
    let script: Arc<Script> = Arc::new(|index, peer| {
        if !open_session(peer) {
            return;
        }
        if index == 0 {
            peer.send_text("this is not json");
            peer.send_text(r#"[{"ev":"T","sym":"BAD","p":"1.0","s":1,"t":1}]"#);
            peer.send_text(r#"[{"ev":"NEWS","sym":"X"}]"#);
            peer.send_binary(vec![0xff, 0xfe, 0x00]);
            peer.send_text(&trades(5, 1, 1));
            // Bigger than message_bytes_max: the connection cannot continue.
            peer.send_text(&"x".repeat(100 * 1024));
            while peer.next_text().is_some() {}
            return;
        }
        peer.send_text(&trades(5, 1, 10));
        while peer.next_text().is_some() {}
    });
    let server = fake(script, None);
    let run = run_until(&settings(server.port, "ws"), |_, trades| trades >= 10);
    assert_eq!(t_frames(&run.frames).len(), 10);
    let garbage = |label: &str| {
        let index = tickstock_shell::feed::upstream::parse::Garbage::ALL
            .iter()
            .position(|g| g.label() == label)
            .unwrap();
        run.status.counters.garbage[index].get()
    };
    assert_eq!(garbage("invalid_json"), 2, "the text and the binary junk");
    assert_eq!(garbage("wrong_type"), 1);
    assert_eq!(garbage("unknown_ev"), 1);
    assert_eq!(failures(&run.status, "protocol"), 1, "the huge frame");
    assert_eq!(run.status.counters.reconnects.get(), 1);
}

#[test]
fn a_flood_faster_than_the_engine_is_absorbed_by_back_pressure() {
    const FLOOD: usize = 200_000;
    let script: Arc<Script> = Arc::new(|_, peer| {
        if !open_session(peer) {
            return;
        }
        for chunk in 0..FLOOD / 500 {
            peer.send_text(&trades(500, 50, 1 + chunk as u64 * 10));
        }
        while peer.next_text().is_some() {}
    });
    let server = fake(script, None);
    let mut settings = settings(server.port, "ws");
    settings.pipeline.ring_capacity = 1_024;
    settings.upstream.message_bytes_max = 1 << 20;
    // The back-pressure is the test's, not the machine's: the sink holds the emitter until
    // the feed has waited on a full ring (the engine waits on a full lane behind the stuck
    // emitter), then lets everything through; nothing may be lost on the way.
    settings.pipeline.emitter_backpressure = tickstock_shell::config::Backpressure::Wait;
    settings.mfbuf.per_second_capacity = 8_192;
    let ring_full = |c: &tickstock_shell::tracer::Counters| c.feed_ring_full_waits.get() > 0;
    let run = run_gated(&settings, Some(ring_full), |status, _| {
        status.counters.ticks.get() >= FLOOD as u64
    });
    let c = &run.report.counters;
    assert_eq!(c.accepted.get(), FLOOD as u64);
    assert!(c.feed_ring_full_waits.get() > 0, "the ring filled and the feed waited");
    assert_eq!(c.buffer_dropped.get(), 0);
    assert_eq!(run.status.counters.q_gaps.get(), 0);
}

#[test]
fn wss_with_a_private_ca_works() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let script: Arc<Script> = Arc::new(|_, peer| {
        if !open_session(peer) {
            return;
        }
        peer.send_text(&trades(20, 2, 1));
        while peer.next_text().is_some() {}
    });
    let server = fake(script, Some(Arc::new(config)));
    let mut settings = settings(server.port, "wss");
    settings.upstream.ca_file = Some(ca_file);
    let run = run_until(&settings, |_, trades| trades >= 20);
    assert_eq!(t_frames(&run.frames).len(), 20);
    // Without the CA the certificate is refused, and the failure says so.
    let mut untrusting = settings.clone();
    untrusting.upstream.ca_file = None;
    let run = run_until(&untrusting, |status, _| failures(status, "connect") >= 1);
    let failure = run.status.health().last_failure.unwrap();
    assert!(
        failure.contains("connect failed") && failure.to_lowercase().contains("certificate"),
        "{failure}"
    );
}

#[test]
fn health_and_metrics_show_the_breaker_and_why_it_opened() {
    use tickstock_shell::pipeline::Observed;
    use tickstock_shell::server::metrics;
    let script: Arc<Script> = Arc::new(|_, peer| {
        greet(peer, "auth_failed");
    });
    let server = fake(script, None);
    let run =
        run_until(&settings(server.port, "ws"), |status, _| failures(status, "auth_failed") >= 3);
    let observed = Observed { counters: Arc::clone(&run.report.counters), ..Observed::default() };
    let problem =
        metrics::unhealthy(&observed, Some(&run.status), 0, u64::MAX).expect("the feed is down");
    assert!(problem.contains("feed down") && problem.contains("auth_failed"), "{problem}");
    let counters = metrics::ServerStats::new(1);
    let reporting = tickstock_shell::server::Reporting {
        observed: observed.clone(),
        upstream: Some(Arc::clone(&run.status)),
        feed: "upstream",
        nats: None,
    };
    let health = metrics::health(&reporting, &counters, 1, Some(&problem), None);
    let value: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(value["status"], "unhealthy");
    assert_eq!(value["feed"]["breaker"], "open");
    assert!(value["feed"]["last_failure"].as_str().unwrap().contains("auth_failed"));
    let text = metrics::prometheus(&observed, &counters, Some(&run.status), None, None, None);
    assert!(text.contains("tickstock_upstream_breaker{state=\"open\"} 1"), "{text}");
    assert!(text.contains("tickstock_upstream_failures_total{kind=\"auth_failed\"}"));
}
