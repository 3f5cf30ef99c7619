//! The WebSocket server over loopback with a real client (tungstenite): the rows of
//! PROTOCOL.md this server implements, each error answer and close code, and a slow consumer
//! that is closed with 4008 while another client keeps receiving.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tickstock_engine::{Price, Qty, Tick, Timestamp, Trade};
use tickstock_shell::config::Settings;
use tickstock_shell::feed::synthetic::{Market, SyntheticFeed};
use tickstock_shell::feed::{Feed, FeedEnd, FeedTx};
use tickstock_shell::pipeline::{Observed, TimeMode};
use tickstock_shell::server::auth::Credentials;
use tickstock_shell::server::metrics::ServerStats;
use tickstock_shell::server::universes::UniverseFile;
use tickstock_shell::server::{Reporting, Service};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

struct TestServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    service: Option<Service>,
    counters: ServerStats,
    /// The synthetic market's tickers, most active first.
    tickers: Vec<String>,
    /// The directory of `keys.txt`, the API key file.
    keys: tempfile::TempDir,
    credentials: Arc<Credentials>,
    universes: Arc<UniverseFile>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(service) = self.service.take() {
            service.wait().unwrap();
        }
    }
}

const JWT_SECRET: &str = "test-secret-for-hs256";

fn start(configure: impl FnOnce(&mut Settings)) -> TestServer {
    start_with(configure, |settings| Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1)))
}

fn start_with(
    configure: impl FnOnce(&mut Settings),
    feed: impl FnOnce(&Settings) -> Box<dyn Feed>,
) -> TestServer {
    let mut settings = Settings::default();
    settings.synthetic.symbols = 20;
    let tickers = Market::new(&settings.synthetic).tickers().to_vec();
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("keys.txt");
    let limited = format!(
        "# test keys\nk-all user=alice\nk-limited user=bob symbols={},{}\n",
        tickers[0], tickers[1]
    );
    std::fs::write(&key_file, limited).unwrap();
    settings.synthetic.trades_per_sec = 2_000;
    settings.server.listen = "127.0.0.1:0".to_owned();
    settings.server.api_keys_file = Some(key_file);
    settings.server.jwt_algorithm = Some("HS256".to_owned());
    settings.server.jwt_secret_env = "TICKSTOCK_TEST_JWT_SECRET".to_owned();
    settings.server.jwt_leeway_s = 0;
    settings.pipeline.emitter_cycle_us = 1_000;
    configure(&mut settings);
    // SAFETY-free: tests in this file all set the same value.
    unsafe_env();
    let credentials = Arc::new(Credentials::load(&settings.server).unwrap());
    let reporting =
        Reporting { observed: Observed::default(), upstream: None, feed: "synthetic", nats: None };
    let feed = feed(&settings);
    let stop = Arc::new(AtomicBool::new(false));
    let service = Service::start(
        &settings,
        Arc::clone(&credentials),
        feed,
        TimeMode::Live,
        Arc::clone(&stop),
        reporting,
        |_, _| {},
    )
    .unwrap();
    let (addr, counters) = (service.local_addr, service.counters.clone());
    let universes = Arc::clone(&service.universes);
    TestServer {
        addr,
        stop,
        service: Some(service),
        counters,
        tickers,
        keys,
        credentials,
        universes,
    }
}

fn unsafe_env() {
    // Rust 2021: set_var is safe; every test sets the same value, so races are benign.
    std::env::set_var("TICKSTOCK_TEST_JWT_SECRET", JWT_SECRET);
}

fn connect(addr: SocketAddr, bearer: Option<&str>) -> Client {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/stocks").into_client_request().unwrap();
    if let Some(token) = bearer {
        request.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (client, _) = tungstenite::connect(request).unwrap();
    if let MaybeTlsStream::Plain(stream) = client.get_ref() {
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    client
}

/// The next text message as JSON (skipping pings).
fn next_json(client: &mut Client) -> serde_json::Value {
    loop {
        match client.read().expect("a message") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the server closes; returns the close code.
fn close_code(client: &mut Client) -> Option<u16> {
    loop {
        match client.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

fn status_of(value: &serde_json::Value) -> &str {
    value[0]["status"].as_str().unwrap_or("")
}

fn authed(addr: SocketAddr, key: &str) -> Client {
    let mut client = connect(addr, None);
    assert_eq!(status_of(&next_json(&mut client)), "connected");
    client.send(Message::text(format!(r#"{{"action":"auth","params":"{key}"}}"#))).unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "auth_success");
    client
}

fn http_get(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

fn jwt(sub: &str, exp: u64, symbols: Option<&[&str]>) -> String {
    let mut claims = serde_json::json!({ "sub": sub, "exp": exp });
    if let Some(symbols) = symbols {
        claims["symbols"] = serde_json::json!(symbols);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The value of an unlabelled sample, or of one with exactly these labels.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
}

/// `promtool`, from `PROMTOOL` or the path: `tools/test.sh` installs it (Debian's
/// `prometheus` package).
fn promtool() -> std::path::PathBuf {
    let path = std::env::var_os("PROMTOOL").map_or_else(|| "promtool".into(), Into::into);
    match std::process::Command::new(&path).arg("--version").output() {
        Ok(output) if output.status.success() => path,
        _ => panic!(
            "promtool not found (PROMTOOL or PATH): run tools/test.sh, which installs Debian's prometheus package"
        ),
    }
}

#[test]
fn metrics_are_histograms_live_from_the_first_scrape_and_promtool_clean() {
    let server = start(|_| {});
    // Within the histograms' publish interval, well before the 5 s status line.
    thread::sleep(Duration::from_millis(600));
    let body = |addr| {
        let response = http_get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response.split_once("\r\n\r\n").unwrap().1.to_owned()
    };
    let metrics = body(server.addr);
    assert!(sample(&metrics, "tickstock_engine_tick_seconds_count") > 0.0, "live at once");
    assert!(sample(&metrics, "tickstock_ring_to_frame_seconds_count") > 0.0);
    assert!(metrics.contains("tickstock_ring_to_frame_seconds_bucket{le=\"0.001\"}"));
    assert!(sample(&metrics, "process_resident_memory_bytes") > 1e6);
    assert!(sample(&metrics, "process_open_fds") > 0.0);
    assert!(sample(&metrics, "process_start_time_seconds") > 1.7e9);
    assert!(metrics.contains("tickstock_build_info{version=\""), "{metrics}");
    // A client's deliveries: tick-to-client latency; its upgrade, counted apart from HTTP.
    let upgrades = sample(&metrics, "tickstock_websocket_upgrades_total");
    let accepted = sample(&metrics, "tickstock_connections_accepted_total");
    let mut client = authed(server.addr, "k-all");
    client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    for _ in 0..20 {
        next_json(&mut client);
    }
    thread::sleep(Duration::from_millis(400));
    let metrics = body(server.addr);
    assert!(sample(&metrics, "tickstock_tick_to_client_seconds_count") > 0.0, "{metrics}");
    let slow = sample(&metrics, "tickstock_tick_to_client_seconds_bucket{le=\"10\"}");
    assert_eq!(slow, sample(&metrics, "tickstock_tick_to_client_seconds_count"));
    assert_eq!(sample(&metrics, "tickstock_websocket_upgrades_total"), upgrades + 1.0);
    // The two scrapes and the client: three TCP connections, one upgrade.
    assert_eq!(sample(&metrics, "tickstock_connections_accepted_total"), accepted + 2.0);
    let mut check = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn health_metrics_not_found_and_refused_requests_on_the_one_port() {
    let server = start(|_| {});
    // Until the first ticks are in (a busy machine can take a while to start the threads).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let health = http_get(server.addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let body: serde_json::Value =
            serde_json::from_str(health.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        if body["ticks_in"].as_u64().unwrap() > 0 || std::time::Instant::now() > deadline {
            break body;
        }
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(body["status"], "ok");
    assert!(body["ticks_in"].as_u64().unwrap() > 0, "{body}");
    let metrics = http_get(server.addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(
        metrics.starts_with("HTTP/1.1 200") && metrics.contains("tickstock_ticks_received_total "),
        "{metrics}"
    );
    assert!(metrics.contains("tickstock_sink_waits_total "), "{metrics}");
    let page = http_get(server.addr, "GET / HTTP/1.1\r\n\r\n");
    assert!(
        page.starts_with("HTTP/1.1 200")
            && page.contains("Content-Security-Policy: default-src 'none'"),
        "{page}"
    );
    assert!(http_get(server.addr, "GET /nothing HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let refused =
        http_get(server.addr, &format!("GET /stocks?apiKey=k-all HTTP/1.1\r\n{upgrade}\r\n"));
    assert!(refused.starts_with("HTTP/1.1 400") && refused.contains("query"), "{refused}");
    assert!(http_get(server.addr, "\x16\x03\x01garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
}

#[test]
fn auth_subscribe_and_receive_batched_arrays_in_seq_order() {
    let server = start(|_| {});
    let mut client = authed(server.addr, "k-all");
    let first = &server.tickers[0];
    client
        .send(Message::text(format!(
            r#"{{"action":"subscribe","params":"T.*,A.{first},XX.Y,HL"}}"#
        )))
        .unwrap();
    let statuses = next_json(&mut client);
    let messages: Vec<&str> =
        statuses.as_array().unwrap().iter().map(|s| s["message"].as_str().unwrap()).collect();
    assert_eq!(messages[0], "subscribed to: T.*");
    assert_eq!(messages[1], format!("subscribed to: A.{first}"));
    assert!(
        messages[2].contains("unknown channel") && messages[3].contains("CHANNEL.SYMBOL"),
        "{messages:?}"
    );
    let mut last_seq = 0;
    let mut events = 0;
    let started = Instant::now();
    while events < 500 && started.elapsed() < Duration::from_secs(10) {
        let array = next_json(&mut client);
        for event in array.as_array().unwrap() {
            let ev = event["ev"].as_str().unwrap();
            assert!(ev == "T" || (ev == "A" && event["sym"] == first.as_str()), "{event}");
            let seq = event["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "seq order on the connection");
            last_seq = seq;
            events += 1;
        }
    }
    assert!(events >= 500);
    client.send(Message::text(r#"{"action":"unsubscribe","params":"T.*"}"#)).unwrap();
    let mut unsubscribed = false;
    for _ in 0..100 {
        let value = next_json(&mut client);
        if value[0]["ev"] == "status" {
            assert_eq!(value[0]["message"], "unsubscribed from: T.*");
            unsubscribed = true;
            break;
        }
    }
    assert!(unsubscribed);
    assert!(server.counters.total(|c| &c.events_out) >= 500);
}

#[test]
fn act_arrives_once_a_second_on_the_market_symbol_even_for_a_limited_user() {
    let server = start(|_| {});
    let mut client = authed(server.addr, "k-limited");
    client.send(Message::text(r#"{"action":"subscribe","params":"ACT.*,ACT.IBM"}"#)).unwrap();
    let statuses = next_json(&mut client);
    assert_eq!(statuses[0]["message"], "subscribed to: ACT.*", "{statuses}");
    assert!(statuses[1]["message"].as_str().unwrap().contains("market-wide"), "{statuses}");
    let mut acts = Vec::new();
    let started = Instant::now();
    while acts.len() < 3 && started.elapsed() < Duration::from_secs(15) {
        for event in next_json(&mut client).as_array().unwrap().clone() {
            assert_eq!(event["ev"], "ACT", "{event}");
            acts.push(event);
        }
    }
    assert!(acts.len() >= 3, "three ACT within 15 s: {acts:?}");
    for pair in acts.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert_eq!(b["t"].as_u64().unwrap(), a["t"].as_u64().unwrap() + 1_000, "{a} {b}");
        assert!(b["seq"].as_u64().unwrap() > a["seq"].as_u64().unwrap(), "{a} {b}");
    }
    let last = acts.last().unwrap();
    assert_eq!(last["sym"], "*");
    assert_eq!(last["t"].as_u64().unwrap() % 1_000, 0, "on a UTC second boundary");
    // The synthetic feed sends 2,000 trades/s over 20 symbols.
    let per_10s = last["trades_10s"].as_u64().unwrap();
    assert!((500..=30_000).contains(&per_10s), "{last}");
    assert!(last["trades_30s"].as_u64().unwrap() >= per_10s, "{last}");
    assert_eq!(last["symbols_60s"], 20, "{last}");
    let per_sec = last["trades_60s"].as_u64().unwrap() as f64 / 60.0;
    let level = match per_sec {
        x if x >= 10_000.0 => "extreme",
        x if x >= 1_000.0 => "busy",
        x if x >= 100.0 => "normal",
        _ => "quiet",
    };
    assert_eq!(last["level"], level, "the default activity_levels: {last}");
}

#[test]
fn a_snapshot_on_subscribe_sends_each_symbols_latest_bar_then_live_after_to_seq() {
    let server = start(|_| {});
    // Let a few seconds of bars pass, so that every symbol has one.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut client = authed(server.addr, "k-limited");
    let subscribe = r#"{"action":"subscribe","params":"A.*","snapshot":true}"#;
    client.send(Message::text(subscribe)).unwrap();
    assert_eq!(next_json(&mut client)[0]["message"], "subscribed to: A.*");
    let mut snapshot = Vec::new();
    let status = loop {
        let array = next_json(&mut client);
        let objects = array.as_array().unwrap();
        snapshot.extend(objects.iter().filter(|o| o["ev"] == "A").cloned());
        if let Some(status) = objects.iter().find(|o| o["ev"] == "status") {
            break status.clone();
        }
    };
    assert_eq!(status["status"], "snapshot", "{status}");
    let syms: Vec<&str> = snapshot.iter().map(|e| e["sym"].as_str().unwrap()).collect();
    let mut wanted = vec![server.tickers[0].as_str(), server.tickers[1].as_str()];
    wanted.sort_unstable();
    let mut sorted = syms.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, wanted, "one bar per entitled symbol, none of the others");
    assert_eq!(status["count"].as_u64(), Some(snapshot.len() as u64));
    let seqs: Vec<u64> = snapshot.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq order: {seqs:?}");
    let to_seq = status["to_seq"].as_u64().unwrap();
    assert!(seqs.iter().all(|&seq| seq <= to_seq));
    // Live from there: each symbol's next bar, after to_seq, its `s` one second on at most.
    let mut next_start = std::collections::HashMap::new();
    for event in &snapshot {
        next_start.insert(event["sym"].as_str().unwrap().to_owned(), event["e"].as_u64().unwrap());
    }
    let mut live = 0;
    while live < 4 {
        for event in next_json(&mut client).as_array().unwrap() {
            assert!(event["seq"].as_u64().unwrap() > to_seq, "{event}");
            let sym = event["sym"].as_str().unwrap();
            let start = event["s"].as_u64().unwrap();
            // No second is missed between the snapshot's bar and the first live one (the
            // synthetic market trades every symbol every second).
            if let Some(expected) = next_start.remove(sym) {
                assert_eq!(start, expected, "{sym}: the bar after the snapshot's");
            }
            live += 1;
        }
    }
}

#[test]
fn universes_are_listed_subscribed_and_followed_across_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("universes.txt");
    let server = start(|settings| {
        let tickers = Market::new(&settings.synthetic).tickers().to_vec();
        let text = format!("# test\nPAIR: {}, {}\nONE: {}\n", tickers[0], tickers[1], tickers[2]);
        std::fs::write(&file, text).unwrap();
        settings.server.universes_file = Some(file.clone());
    });
    let (a, b, c) = (&server.tickers[0], &server.tickers[1], &server.tickers[2]);
    let listed = http_get(server.addr, "GET /v1/universes HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(listed.starts_with("HTTP/1.1 200") && listed.contains("application/json"), "{listed}");
    let body: serde_json::Value =
        serde_json::from_str(listed.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["universes"][1]["name"], "PAIR", "{body}");
    let mut pair: Vec<&str> = body["universes"][1]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    pair.sort_unstable();
    let mut wanted = vec![a.as_str(), b.as_str()];
    wanted.sort_unstable();
    assert_eq!(pair, wanted);

    let mut client = authed(server.addr, "k-all");
    client.send(Message::text(r#"{"action":"subscribe","params":"T.@PAIR,T.@NOPE"}"#)).unwrap();
    let statuses = next_json(&mut client);
    assert_eq!(statuses[0]["message"], "subscribed to: T.@PAIR", "{statuses}");
    assert!(statuses[1]["message"].as_str().unwrap().contains("unknown universe"), "{statuses}");
    let symbols_of = |client: &mut Client, count: usize| {
        let mut seen = std::collections::BTreeSet::new();
        let mut events = 0;
        while events < count {
            for event in next_json(client).as_array().unwrap() {
                if event["ev"] == "T" {
                    seen.insert(event["sym"].as_str().unwrap().to_owned());
                    events += 1;
                }
            }
        }
        seen
    };
    let seen = symbols_of(&mut client, 300);
    assert_eq!(seen, [a.clone(), b.clone()].into_iter().collect(), "only the universe's");

    // The operator moves PAIR to the third symbol; the live subscription follows.
    std::fs::write(&file, format!("PAIR: {c}\nONE: {c}\n")).unwrap();
    assert_eq!(server.universes.reload(), Ok(2));
    // What was written before the swap drains first; then only the new list.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = symbols_of(&mut client, 20);
        if seen == [c.clone()].into_iter().collect() {
            break;
        }
        assert!(Instant::now() < deadline, "still {seen:?} after the reload");
    }
    // A file that cannot be used changes nothing.
    std::fs::write(&file, "PAIR AAPL\n").unwrap();
    assert!(server.universes.reload().unwrap_err().contains("line 1"));
    assert_eq!(symbols_of(&mut client, 50), [c.clone()].into_iter().collect());
}

#[test]
fn a_resume_older_than_the_history_crosses_from_the_event_log_to_memory_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("events");
    let server = start(|settings| {
        settings.server.event_log_dir = Some(log_dir.clone());
        // A small memory history: within a second the resume must come from disk.
        settings.server.history_max_events = 2_000;
    });
    // The `T` seqs of whole messages, until one holds an event `until` stops at.
    let trades = |client: &mut Client, until: &mut dyn FnMut(&serde_json::Value) -> bool| {
        let mut seqs = Vec::new();
        loop {
            let mut stop = false;
            for event in next_json(client).as_array().unwrap() {
                if event["ev"] == "T" {
                    seqs.push(event["seq"].as_u64().unwrap());
                }
                stop |= until(event);
            }
            if stop {
                return seqs;
            }
        }
    };
    // A bystander on `T.*` all along: the truth.
    let mut all = authed(server.addr, "k-all");
    all.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    let mut away = authed(server.addr, "k-all");
    away.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    let (mut count, mut t_of_last_seen) = (0, 0);
    let before = trades(&mut away, &mut |e| {
        if e["ev"] == "T" {
            t_of_last_seen = e["t"].as_u64().unwrap();
        }
        count += usize::from(e["ev"] == "T");
        count >= 500
    });
    let last_seen = *before.last().unwrap();
    drop(away);
    std::thread::sleep(Duration::from_secs(3));
    let mut back = authed(server.addr, "k-all");
    back.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    let resume = format!(r#"{{"action":"resume","params":{{"from_seq":{}}}}}"#, last_seen + 1);
    back.send(Message::text(resume)).unwrap();
    let mut resumed = None;
    let replayed = trades(&mut back, &mut |e| {
        if e["status"] == "resumed" || e["status"] == "resume_failed" {
            resumed = Some(e.clone());
        }
        resumed.is_some()
    });
    let resumed = resumed.unwrap();
    assert_eq!(resumed["status"], "resumed", "{resumed}");
    let mut live_count = 0;
    let live = trades(&mut back, &mut |e| {
        live_count += usize::from(e["ev"] == "T");
        live_count >= 300
    });
    let got: Vec<u64> = replayed.iter().chain(&live).copied().collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "strict seq order, no duplicate");
    assert!(got[0] > last_seen);
    // The bystander saw every trade: the resumed client has exactly those after last_seen.
    let end = *got.last().unwrap();
    let mut truth = Vec::new();
    while truth.last().is_none_or(|&s| s < end) {
        truth.extend(trades(&mut all, &mut |_| true));
    }
    let truth: Vec<u64> = truth.into_iter().filter(|&s| s > last_seen && s <= end).collect();
    assert_eq!(got, truth, "no gap across disk, memory and live");
    assert!(replayed.len() > 4_000, "most of it came from disk: {} replayed", replayed.len());
    // Older than the log itself: refused with the oldest it has.
    let mut old = authed(server.addr, "k-all");
    old.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    old.send(Message::text(r#"{"action":"resume","params":{"from_seq":0}}"#)).unwrap();
    let mut failed = None;
    trades(&mut old, &mut |e| {
        if e["status"] == "resume_failed" {
            failed = Some(e["oldest_seq"].as_u64());
        }
        failed.is_some()
    });
    assert_eq!(failed, Some(Some(1)));
    // By time, older than memory: the log's index finds it (`test` dates are the market's).
    let mut by_time = authed(server.addr, "k-all");
    by_time.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    let early = format!(r#"{{"action":"resume","params":{{"from_t":{}}}}}"#, t_of_last_seen);
    by_time.send(Message::text(early)).unwrap();
    let mut answer = None;
    let replayed_by_time = trades(&mut by_time, &mut |e| {
        if e["status"] == "resumed" || e["status"] == "resume_failed" {
            answer = Some(e.clone());
        }
        answer.is_some()
    });
    let answer = answer.unwrap();
    assert_eq!(answer["status"], "resumed", "{answer}");
    let from = answer["from_seq"].as_u64().unwrap();
    assert!(from <= last_seen && from + 2_000 > last_seen, "{answer} against {last_seen}");
    assert!(replayed_by_time.len() > 4_000, "from disk: {}", replayed_by_time.len());
    let metrics = http_get(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(sample(&metrics, "tickstock_event_log_events_total{outcome=\"written\"}") > 5_000.0);
}

#[test]
fn bad_tokens_missing_auth_and_early_actions_close_with_1008() {
    let server = start(|s| s.server.auth_timeout_ms = 300);
    let mut client = connect(server.addr, None);
    next_json(&mut client);
    client.send(Message::text(r#"{"action":"auth","params":"wrong"}"#)).unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "auth_failed");
    assert_eq!(close_code(&mut client), Some(1008));

    let mut client = connect(server.addr, Some("wrong"));
    assert_eq!(status_of(&next_json(&mut client)), "connected");
    assert_eq!(status_of(&next_json(&mut client)), "auth_failed");
    assert_eq!(close_code(&mut client), Some(1008));

    let mut client = connect(server.addr, Some("k-all"));
    assert_eq!(status_of(&next_json(&mut client)), "connected");
    assert_eq!(status_of(&next_json(&mut client)), "auth_success");

    let mut client = connect(server.addr, None);
    next_json(&mut client);
    client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "error");
    assert_eq!(close_code(&mut client), Some(1008));

    let mut client = connect(server.addr, None);
    next_json(&mut client);
    assert_eq!(status_of(&next_json(&mut client)), "auth_failed", "no auth within auth_timeout_ms");
    assert_eq!(close_code(&mut client), Some(1008));
    assert!(server.counters.total(|c| &c.auth_failures) >= 2);
    assert_eq!(server.counters.total(|c| &c.auth_timeouts), 1);
}

#[test]
fn jwt_entitlements_expiry_and_key_file_symbols() {
    let server = start(|_| {});
    // A JWT entitled to one symbol: `*` delivers only it, a subscription to another is refused.
    let (entitled, other) = (server.tickers[0].as_str(), server.tickers[1].as_str());
    let token = jwt("carol", now_s() + 600, Some(&[entitled]));
    let mut client = authed(server.addr, &token);
    client
        .send(Message::text(format!(r#"{{"action":"subscribe","params":"T.*,T.{other}"}}"#)))
        .unwrap();
    let statuses = next_json(&mut client);
    assert_eq!(statuses[0]["status"], "success");
    assert_eq!(statuses[1]["status"], "error");
    for _ in 0..5 {
        for event in next_json(&mut client).as_array().unwrap() {
            assert_eq!(event["sym"], entitled);
        }
    }
    // An expired JWT is refused like any bad token.
    let mut client = connect(server.addr, Some(&jwt("dave", now_s() - 60, None)));
    next_json(&mut client);
    assert_eq!(status_of(&next_json(&mut client)), "auth_failed");
    // A JWT that expires mid-session: token_expired, then 1008.
    let mut client = authed(server.addr, &jwt("erin", now_s() + 1, None));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut expired = false;
    while Instant::now() < deadline {
        match client.read() {
            Ok(Message::Text(text)) if text.as_str().contains("token_expired") => expired = true,
            Ok(Message::Close(frame)) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(expired);
    // A key with symbols= is entitled like a JWT.
    let mut client = authed(server.addr, "k-limited");
    let third = &server.tickers[2];
    client
        .send(Message::text(format!(r#"{{"action":"subscribe","params":"T.{third}"}}"#)))
        .unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "error");
}

#[test]
fn limits_max_connections_oversized_and_bad_messages() {
    let server = start(|s| {
        s.server.connections_max = 2;
        s.server.client_errors_max = 3;
        s.server.close_timeout_ms = 100;
    });
    let _a = authed(server.addr, "k-all");
    let mut b = authed(server.addr, "k-all");
    let mut c = connect(server.addr, None);
    assert_eq!(status_of(&next_json(&mut c)), "max_connections");
    assert_eq!(close_code(&mut c), Some(1013));
    assert_eq!(server.counters.total(|c| &c.refused_max_connections), 1);
    // Invalid JSON: an error status, the connection stays open...
    b.send(Message::text("{not json")).unwrap();
    assert_eq!(status_of(&next_json(&mut b)), "error");
    b.send(Message::text(r#"{"action":"dance"}"#)).unwrap();
    assert_eq!(status_of(&next_json(&mut b)), "error");
    // ...until client_errors_max.
    b.send(Message::text("[]")).unwrap();
    assert_eq!(status_of(&next_json(&mut b)), "error");
    assert_eq!(close_code(&mut b), Some(1008));
    // A message over client_message_bytes_max closes with 1009 (b and c are gone now).
    drop((b, c));
    thread::sleep(Duration::from_millis(300));
    let mut d = authed(server.addr, "k-all");
    d.send(Message::text("x".repeat(70 * 1024))).unwrap();
    assert_eq!(close_code(&mut d), Some(1009));
}

#[test]
fn a_client_that_never_reads_is_closed_with_4008_and_others_keep_receiving() {
    let server = start(|s| {
        s.server.client_lag_max_bytes = 64 * 1024;
        s.synthetic.trades_per_sec = 20_000;
    });
    // The stalled client: subscribes to everything, then never reads again.
    let mut stalled = authed(server.addr, "k-all");
    stalled
        .send(Message::text(r#"{"action":"subscribe","params":"T.*,A.*,AM.*,HL.*,TR.*,SV.*"}"#))
        .unwrap();
    if let MaybeTlsStream::Plain(stream) = stalled.get_ref() {
        // A small receive buffer so the server's writes back up quickly.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    }
    let mut healthy = authed(server.addr, "k-all");
    healthy.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = 0;
    while server.counters.total(|c| &c.slow_consumer_closes) == 0 && Instant::now() < deadline {
        let value = next_json(&mut healthy);
        received += value.as_array().map_or(0, Vec::len);
    }
    assert_eq!(
        server.counters.total(|c| &c.slow_consumer_closes),
        1,
        "the stalled client was closed"
    );
    // The healthy client goes on receiving after the close.
    let started = Instant::now();
    let mut after = 0;
    while after < 200 && started.elapsed() < Duration::from_secs(5) {
        after += next_json(&mut healthy).as_array().map_or(0, Vec::len);
    }
    assert!(received > 0 && after >= 200, "received {received} before and {after} after");
    // The stalled client finds the close (4008) once it reads: it was queued right after the
    // discarded backlog and written as soon as the socket took it.
    let code = close_code(&mut stalled);
    assert_eq!(code, Some(4008));
    let _ = CloseCode::Away;
}

/// A client whose socket has a small receive buffer (so the server's writes back up at once),
/// authenticated and subscribed to `topics`, that reads nothing until told.
fn stalled_client(addr: SocketAddr, topics: &str) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4_096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut client, _) =
        tungstenite::client(format!("ws://{addr}/stocks"), MaybeTlsStream::Plain(stream)).unwrap();
    next_json(&mut client);
    client.send(Message::text(r#"{"action":"auth","params":"k-all"}"#)).unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "auth_success");
    client.send(Message::text(format!(r#"{{"action":"subscribe","params":"{topics}"}}"#))).unwrap();
    next_json(&mut client);
    client
}

#[test]
fn a_stalled_reader_with_a_small_receive_buffer_gets_its_4008_close_frame() {
    // The defect: the close frame queued behind everything the server had buffered (its
    // write buffer of 1 MiB and more), so a client reading at a modest pace met the close
    // deadline first and got a bare EOF. Now only the kernel's bounded send buffer and the
    // rest of a begun message are ahead of the 4008.
    let server = start(|s| {
        s.server.client_lag_max_bytes = 32 * 1024;
        s.server.close_timeout_ms = 2_000;
        s.synthetic.trades_per_sec = 5_000;
    });
    let mut stalled = stalled_client(server.addr, "T.*,A.*");
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.counters.total(|c| &c.slow_consumer_closes) == 0 {
        assert!(Instant::now() < deadline, "the stalled client was never closed");
        thread::sleep(Duration::from_millis(20));
    }
    // It reads again, at about 800 KB/s: the rest of what was begun, then 4008 (not a bare
    // EOF at the close deadline).
    let (mut bytes, mut paced) = (0, 0);
    let code = loop {
        match stalled.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(message) => bytes += message.len(),
            Err(_) => break None,
        }
        if bytes - paced >= 8_192 {
            paced = bytes;
            thread::sleep(Duration::from_millis(10));
        }
    };
    assert_eq!(code, Some(4008), "after {bytes} bytes");
    assert!(server.counters.total(|c| &c.slow_consumer_dropped_events) > 0);
}

#[test]
fn subscribe_and_resume_back_to_back_keep_strict_seq_order() {
    let server = start(|s| {
        s.server.history_max_events = 100_000;
        s.synthetic.trades_per_sec = 5_000;
        // The window is what "back to back" tolerates of the client: beside a CPU hog this
        // test's own 300 µs pause took longer than the default 2 ms (the flaky hunt).
        s.server.resume_window_us = 200_000;
    });
    let mut witness = authed(server.addr, "k-all");
    witness.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    next_json(&mut witness);
    let start_seq = seqs(&mut witness, 50)[0];
    for round in 0..8 {
        let mut client = authed(server.addr, "k-all");
        client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
        // Two separate writes, the second after a short pause on odd rounds.
        if round % 2 == 1 {
            thread::sleep(Duration::from_micros(300));
        }
        let resume = format!(r#"{{"action":"resume","params":{{"from_seq":{start_seq}}}}}"#);
        client.send(Message::text(resume)).unwrap();
        let mut got = Vec::new();
        let mut resumed = false;
        while !resumed || got.len() < 200 {
            for event in next_json(&mut client).as_array().unwrap() {
                match event["seq"].as_u64() {
                    Some(seq) => got.push(seq),
                    None => resumed |= event["status"] == "resumed",
                }
            }
        }
        assert!(got.windows(2).all(|w| w[0] < w[1]), "round {round}: out of order");
        assert_eq!(got[0], start_seq, "round {round}: the replay comes first");
    }
}

#[test]
fn a_thousand_connections_in_one_group_get_the_same_bytes_framed_once() {
    const CLIENTS: usize = 1_000;
    let server = start(|s| {
        s.synthetic.trades_per_sec = 200;
        s.server.connections_per_user_max = 10_000;
        // The clients are read one after another; on a busy machine that takes over a
        // minute, and a client not read answers no ping: no pings, so none is closed for it
        // (the flaky hunt found the group gone, every member closed at the pong timeout).
        s.server.ping_interval_ms = 3_600_000;
        s.server.pong_timeout_ms = 3_600_000;
    });
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut client = authed(server.addr, "k-all");
            client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
            client
        })
        .collect();
    // Everyone has joined: from here on, every message is one of the group's.
    thread::sleep(Duration::from_millis(200));
    let (events_before, group_before) =
        (server.counters.total(|c| &c.events_out), server.counters.total(|c| &c.group_events));
    let mut witness = authed(server.addr, "k-all");
    witness.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    next_json(&mut witness);
    let window = seqs(&mut witness, 100);
    let (low, high) = (window[10], window[90]);
    let wanted: Vec<u64> = window[10..=90].to_vec();
    // Each client's messages covering [low, high], as raw text: identical across clients.
    let mut reference: Option<Vec<String>> = None;
    for (i, client) in clients.iter_mut().enumerate() {
        let mut texts = Vec::new();
        let mut got = Vec::new();
        while got.last().is_none_or(|&last| last < high) {
            let Message::Text(text) = client.read().unwrap() else { continue };
            let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
            let seqs: Vec<u64> =
                value.as_array().unwrap().iter().filter_map(|e| e["seq"].as_u64()).collect();
            if seqs.iter().any(|&s| (low..=high).contains(&s)) {
                texts.push(text.as_str().to_owned());
            }
            got.extend(seqs.into_iter().filter(|s| (low..=high).contains(s)));
        }
        assert_eq!(got, wanted, "client {i} got every event in order");
        match &reference {
            None => reference = Some(texts),
            Some(reference) => assert_eq!(&texts, reference, "client {i}: other bytes"),
        }
    }
    assert_eq!(server.counters.total(|c| &c.groups), 1, "one group for 1,001 connections");
    // Appended once per group, delivered once per member.
    let appended = server.counters.total(|c| &c.group_events) - group_before;
    let delivered = server.counters.total(|c| &c.events_out) - events_before;
    assert!(
        appended > 0 && delivered >= appended * CLIENTS as u64 * 9 / 10,
        "{appended} appended, {delivered} delivered"
    );
}

#[test]
fn several_event_loops_share_the_connections() {
    let server = start(|s| s.server.threads = 3);
    let mut clients: Vec<Client> = (0..9)
        .map(|_| {
            let mut client = authed(server.addr, "k-all");
            client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
            next_json(&mut client);
            client
        })
        .collect();
    let mut firsts = Vec::new();
    for client in &mut clients {
        let got = seqs(client, 20);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        firsts.push(got[0]);
    }
    assert_eq!(server.counters.total(|c| &c.connections), 9);
    // Three loops, three connections each: each loop has its own group of them.
    assert_eq!(server.counters.total(|c| &c.groups), 3);
    let metrics = http_get(server.addr, "GET /metrics HTTP/1.1\r\n\r\n");
    assert!(metrics.contains("tickstock_connections 9"), "{metrics}");
}

#[test]
fn a_reload_closes_the_connections_of_removed_keys_only_and_a_bad_file_changes_nothing() {
    let server = start(|_| {});
    let mut alice = authed(server.addr, "k-all");
    let mut bob = authed(server.addr, "k-limited");
    let mut jwt_client = authed(server.addr, &jwt("carol", now_s() + 3_600, None));
    let key_file = server.keys.path().join("keys.txt");
    // A file that cannot be used: refused, the old keys stay, nobody is closed.
    std::fs::write(&key_file, "k-all user=alice role=admin\n").unwrap();
    assert!(server.credentials.reload().unwrap_err().contains("line 1"));
    // bob's key goes, a new one comes.
    std::fs::write(&key_file, "k-all user=alice\nk-new user=dave\n").unwrap();
    let reloaded = server.credentials.reload().unwrap();
    assert_eq!((reloaded.keys, reloaded.added, reloaded.removed), (2, 1, 1));
    let revoked = loop {
        match next_json_or_close(&mut bob) {
            Err(code) => break code,
            Ok(value) if value[0]["message"] == "key revoked" => {}
            Ok(_) => {}
        }
    };
    assert_eq!(revoked, Some(1008));
    for client in [&mut alice, &mut jwt_client] {
        client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
        assert_eq!(status_of(&next_json(client)), "success", "still connected");
    }
    drop(authed(server.addr, "k-new"));
    let mut gone = connect(server.addr, None);
    next_json(&mut gone);
    gone.send(Message::text(r#"{"action":"auth","params":"k-limited"}"#)).unwrap();
    assert_eq!(status_of(&next_json(&mut gone)), "auth_failed");
    assert_eq!(server.counters.total(|c| &c.keys_revoked), 1);
}

/// The next text message as JSON, or the close code once the server closes.
fn next_json_or_close(client: &mut Client) -> Result<serde_json::Value, Option<u16>> {
    loop {
        match client.read() {
            Ok(Message::Text(text)) => return Ok(serde_json::from_str(text.as_str()).unwrap()),
            Ok(Message::Close(frame)) => return Err(frame.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(_) => return Err(None),
        }
    }
}

#[test]
fn per_user_limit_rate_limit_and_refresh() {
    let server = start(|s| {
        s.server.connections_per_user_max = 1;
        s.server.client_messages_per_sec = 5;
        s.server.client_errors_max = 100;
    });
    // One connection per user: the second of alice's gets max_connections and 1013.
    let mut first = authed(server.addr, "k-all");
    let mut second = connect(server.addr, None);
    next_json(&mut second);
    second.send(Message::text(r#"{"action":"auth","params":"k-all"}"#)).unwrap();
    assert_eq!(status_of(&next_json(&mut second)), "auth_success");
    assert_eq!(status_of(&next_json(&mut second)), "max_connections");
    assert_eq!(close_code(&mut second), Some(1013));
    // 5 messages a second: the auth message took one token, so a burst of 10 gets 4 or 5
    // answers (depending on how much refilled meanwhile) and the rest rate-limit errors.
    for _ in 0..10 {
        first.send(Message::text(r#"{"action":"unsubscribe","params":"T.*"}"#)).unwrap();
    }
    let mut limited = 0;
    for _ in 0..10 {
        let value = next_json(&mut first);
        limited += usize::from(value[0]["message"].as_str().unwrap_or("").contains("rate limit"));
    }
    assert!((5..=6).contains(&limited), "{limited} limited");
    // refresh: a JWT about to expire is replaced; no token_expired follows.
    drop(first);
    thread::sleep(Duration::from_millis(200));
    let mut client = authed(server.addr, &jwt("frank", now_s() + 2, None));
    thread::sleep(Duration::from_millis(300));
    client
        .send(Message::text(format!(
            r#"{{"action":"refresh","params":"{}"}}"#,
            jwt("frank", now_s() + 600, None)
        )))
        .unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "auth_success");
    client.send(Message::text(r#"{"action":"refresh","params":"garbage"}"#)).unwrap();
    assert!(next_json(&mut client)[0]["message"].as_str().unwrap().contains("refresh refused"));
    client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let value = next_json(&mut client);
        assert_ne!(value[0]["status"], "token_expired", "the refreshed token is in force");
    }
}

#[test]
fn a_filter_narrows_what_the_subscriptions_deliver() {
    let server = start(|_| {});
    let mut client = authed(server.addr, "k-all");
    let filter = r#"{"action":"filter","params":{"min_volume":500,"kinds":["T"]}}"#;
    client.send(Message::text(filter)).unwrap();
    assert_eq!(next_json(&mut client)[0]["message"], "filter set");
    client.send(Message::text(r#"{"action":"subscribe","params":"T.*,A.*"}"#)).unwrap();
    next_json(&mut client);
    let mut seen = 0;
    while seen < 50 {
        for event in next_json(&mut client).as_array().unwrap() {
            assert_eq!(event["ev"], "T", "kinds lets only T through");
            assert!(event["s"].as_u64().unwrap() >= 500, "{event}");
            seen += 1;
        }
    }
    client.send(Message::text(r#"{"action":"filter","params":{"min_volume":"lots"}}"#)).unwrap();
    let mut refused = false;
    for _ in 0..50 {
        let value = next_json(&mut client);
        if value[0]["ev"] == "status" {
            assert_eq!(value[0]["status"], "error");
            refused = true;
            break;
        }
    }
    assert!(refused);
}

/// Reads events until `count` arrived; returns their `seq`s (statuses are skipped).
fn seqs(client: &mut Client, count: usize) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < count {
        for event in next_json(client).as_array().unwrap() {
            if event["ev"] != "status" {
                out.push(event["seq"].as_u64().unwrap());
            }
        }
    }
    out
}

#[test]
fn resume_across_a_reconnect_has_no_gap_and_no_duplicate() {
    let server = start(|s| s.server.history_max_events = 50_000);
    // A witness that never disconnects sees every event of the same topics.
    let mut witness = authed(server.addr, "k-all");
    witness.send(Message::text(r#"{"action":"subscribe","params":"T.*,A.*"}"#)).unwrap();
    next_json(&mut witness);
    // First connection: every trade, then it drops.
    let mut first = authed(server.addr, "k-all");
    first.send(Message::text(r#"{"action":"subscribe","params":"T.*,A.*"}"#)).unwrap();
    next_json(&mut first);
    let before = seqs(&mut first, 300);
    let last_seen = *before.last().unwrap();
    drop(first);
    thread::sleep(Duration::from_millis(500));
    // Second connection: subscribe and resume back to back from the next seq.
    let mut second = authed(server.addr, "k-all");
    second.send(Message::text(r#"{"action":"subscribe","params":"T.*,A.*"}"#)).unwrap();
    second
        .send(Message::text(format!(
            r#"{{"action":"resume","params":{{"from_seq":{}}}}}"#,
            last_seen + 1
        )))
        .unwrap();
    let mut replayed = Vec::new();
    let mut resumed = None;
    let give_up = Instant::now() + Duration::from_secs(10);
    while resumed.is_none() {
        assert!(
            Instant::now() < give_up,
            "no resumed status; replayed {} events: {:?}",
            replayed.len(),
            &replayed[replayed.len().saturating_sub(5)..]
        );
        for event in next_json(&mut second).as_array().unwrap() {
            match event["status"].as_str() {
                Some("resumed") => {
                    resumed = Some((
                        event["from_seq"].as_u64().unwrap(),
                        event["to_seq"].as_u64().unwrap(),
                    ))
                }
                Some(_) => {}
                None => replayed.push(event["seq"].as_u64().unwrap()),
            }
        }
    }
    let (from_seq, to_seq) = resumed.unwrap();
    assert_eq!(from_seq, last_seen + 1);
    assert!(!replayed.is_empty(), "the half second of trades while disconnected was replayed");
    assert_eq!(*replayed.last().unwrap(), to_seq);
    let live = seqs(&mut second, 200);
    // The seam: strictly increasing across replay and live, nothing twice.
    let all: Vec<u64> = before.iter().chain(&replayed).chain(&live).copied().collect();
    assert!(all.windows(2).all(|pair| pair[0] < pair[1]), "no duplicate, in order");
    // No gap: exactly what the witness saw over the same span, before, replayed and live.
    let (low, high) = (before[0], *live.last().unwrap());
    let mut seen = Vec::new();
    while seen.last().is_none_or(|&last| last < high) {
        seen.extend(seqs(&mut witness, 1).into_iter().filter(|&seq| seq >= low));
    }
    seen.retain(|&seq| seq <= high);
    assert_eq!(all, seen, "the reconnecting client got exactly the witness's events");

    // Too old: resume_failed with the oldest retained seq.
    second.send(Message::text(r#"{"action":"resume","params":{"from_seq":0}}"#)).unwrap();
    let mut failed = false;
    for _ in 0..200 {
        let value = next_json(&mut second);
        if value[0]["status"] == "resume_failed" {
            assert!(value[0]["oldest_seq"].as_u64().unwrap() >= 1);
            failed = true;
            break;
        }
    }
    assert!(failed);
}

#[test]
fn under_the_conflation_policy_a_slow_client_gets_the_latest_and_a_count() {
    let server = start(|s| {
        s.server.client_lag_max_bytes = 64 * 1024;
        s.server.slow_consumer_policy = tickstock_shell::config::SlowConsumerPolicy::Conflate;
        s.synthetic.trades_per_sec = 20_000;
    });
    let mut slow = authed(server.addr, "k-all");
    slow.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    next_json(&mut slow);
    // Stop reading until the server conflates for this client (again, after `seen`).
    let fall_behind = |seen: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.counters.total(|c| &c.conflated_events) <= seen {
            assert!(Instant::now() < deadline, "the client never fell behind");
            thread::sleep(Duration::from_millis(50));
        }
    };
    fall_behind(0);
    // Now read: the backlog drains, then a conflated status with the count, directly followed
    // by the latest trade per symbol (one per symbol, in seq order); the connection stays open.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after_status = false;
    let mut checked = false;
    while !checked {
        assert!(Instant::now() < deadline, "no conflated status followed by the latest events");
        let value = next_json(&mut slow);
        let events = value.as_array().unwrap();
        if let Some(status) = events.iter().find(|e| e["status"] == "conflated") {
            assert!(status["dropped"].as_u64().unwrap() > 0);
            after_status = true;
            continue;
        }
        if after_status && events.iter().all(|e| e["sym"].is_string()) {
            let mut symbols: Vec<&str> =
                events.iter().map(|e| e["sym"].as_str().unwrap()).collect();
            let count = symbols.len();
            symbols.sort_unstable();
            symbols.dedup();
            if symbols.len() != count {
                // On a busy machine an episode can end before it kept anything (its backlog
                // skipped, no new trade yet): the status is then followed by live trades.
                // Stop reading again until the next episode (a client that reads this fast
                // may never lag again by itself), then read on to its status.
                after_status = false;
                fall_behind(server.counters.total(|c| &c.conflated_events));
                continue;
            }
            let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
            assert!(seqs.windows(2).all(|p| p[0] < p[1]), "in seq order");
            checked = true;
        }
        after_status = false;
    }
    assert_eq!(server.counters.total(|c| &c.slow_consumer_closes), 0, "no close under conflation");
    let metrics = http_get(server.addr, "GET /metrics HTTP/1.1\r\n\r\n");
    let conflated = metrics
        .lines()
        .find_map(|line| line.strip_prefix("tickstock_conflated_events_total "))
        .and_then(|value| value.parse::<u64>().ok());
    assert!(conflated.is_some_and(|n| n > 0), "conflations on /metrics: {conflated:?}");
    next_json(&mut slow);
}

/// A burst of trades of one symbol at start-up, then silence (heartbeats only) until stopped.
struct BurstThenQuiet {
    trades: u64,
}

impl Feed for BurstThenQuiet {
    fn name(&self) -> &'static str {
        "burst then quiet"
    }

    fn run(&mut self, tx: &mut FeedTx) -> FeedEnd {
        let Ok(symbol) = tx.intern("BURST") else { return FeedEnd::Failed("intern".to_owned()) };
        for id in 1..=self.trades {
            let now = tx.now().unwrap_or(Timestamp(0));
            let mut trade = Trade::new(symbol, now, Price::from_dollars(10), Qty(1));
            trade.trade_id = id;
            if tx.send_tick(Tick::Trade(trade)).is_err() {
                return FeedEnd::Stopped;
            }
        }
        while !tx.stopping() {
            if tx.heartbeat(1_000_000).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        FeedEnd::Stopped
    }
}

#[test]
fn a_backlog_drains_when_no_new_events_arrive() {
    // A client that fell far behind (under its outbox limit) must get its whole backlog once it
    // reads, even when the market has gone quiet and no batch comes to trigger a flush: the
    // server keeps writing on socket readiness until the outbox is empty or the socket blocks.
    backlog_drains(None);
}

#[test]
fn messages_larger_than_the_default_write_buffer_are_sent() {
    // With 4 MiB arrays, each message is larger than the default 1 MiB write buffer of a
    // connection. The buffer is sized above the largest message, so each goes out (a message
    // that could never fit once spun the event loop forever, with `frame_bytes_max` at the
    // default, when an array reached it: the frame header made it a few bytes too long).
    backlog_drains(Some(4 << 20));
}

fn backlog_drains(frame_bytes_max: Option<u32>) {
    const TRADES: u64 = 150_000;
    let server = start_with(
        |s| {
            s.server.client_lag_max_bytes = 256 << 20;
            s.server.client_lag_max_ms = 600_000;
            if let Some(bytes) = frame_bytes_max {
                s.server.frame_bytes_max = bytes;
            }
        },
        |_| Box::new(BurstThenQuiet { trades: TRADES }),
    );
    let mut client = authed(server.addr, "k-all");
    client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    next_json(&mut client);
    // Wait for the fan-out to finish: the count of events queued in the client's group stops
    // moving (a live burst may lose some to a full buffer lane; what was queued must all
    // arrive). The bar of the burst's second closes within a second; after that nothing is
    // emitted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut queued = 0;
    loop {
        thread::sleep(Duration::from_millis(2_000));
        let now = server.counters.total(|c| &c.group_events);
        if now == queued && now > TRADES / 2 {
            break;
        }
        queued = now;
        assert!(Instant::now() < deadline, "the burst never reached the fan-out: {now} queued");
    }
    let mut received = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while received < queued {
        assert!(Instant::now() < deadline, "the backlog stalled at {received} of {queued} trades");
        let value = next_json(&mut client);
        received += value
            .as_array()
            .map_or(0, |events| events.iter().filter(|e| e["ev"] == "T").count() as u64);
    }
    assert_eq!(received, queued);
}

/// A self-signed certificate for `localhost`, written as PEM files in `dir`; returns the
/// certificate's DER (to trust it).
fn write_certificate(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    cert.cert.der().clone()
}

fn tls_client_config(
    trusted: &rustls::pki_types::CertificateDer<'static>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn tls_server() -> (TestServer, tempfile::TempDir, rustls::pki_types::CertificateDer<'static>) {
    let dir = tempfile::tempdir().unwrap();
    let trusted = write_certificate(dir.path());
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let server = start(move |settings| {
        settings.server.tls_cert_file = Some(cert);
        settings.server.tls_key_file = Some(key);
    });
    (server, dir, trusted)
}

#[test]
fn tls_serves_wss_and_https_on_one_port_and_a_bad_handshake_disturbs_no_one() {
    let (server, _dir, trusted) = tls_server();
    let config = tls_client_config(&trusted);
    // wss://: auth, subscribe, events.
    let tcp = std::net::TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let url = format!("wss://localhost:{}/stocks", server.addr.port());
    let connector = tungstenite::Connector::Rustls(Arc::clone(&config));
    let (mut client, _) =
        tungstenite::client_tls_with_config(url, tcp, None, Some(connector)).unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "connected");
    client.send(Message::text(r#"{"action":"auth","params":"k-all"}"#)).unwrap();
    assert_eq!(status_of(&next_json(&mut client)), "auth_success");
    client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    // A bad handshake and a plain-text request on the TLS port, meanwhile.
    for garbage in ["GET /health HTTP/1.1\r\n\r\n", "\x16\x03\x01\x00\x05hello"] {
        let mut raw = std::net::TcpStream::connect(server.addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(garbage.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = raw.read_to_end(&mut answer);
        assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "plain HTTP on TLS");
    }
    let mut trades = 0;
    while trades < 20 {
        let value = next_json(&mut client);
        trades += value.as_array().unwrap().iter().filter(|e| e["ev"] == "T").count();
    }
    // https:// on the same port.
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(config, name).unwrap();
    let tcp = std::net::TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut https = rustls::StreamOwned::new(session, tcp);
    https.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let _ = https.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200") && response.contains("\"status\""), "{response}");
    // The subscribed client kept streaming through all of that.
    let value = next_json(&mut client);
    assert!(value.as_array().unwrap().iter().any(|e| e["ev"] == "T"), "{value}");
}

/// A Python with the `websockets` package: `TICKSTOCK_TEST_PYTHON`, which `tools/test.sh`
/// sets to the virtualenv it makes.
fn python_with_websockets() -> String {
    let python = std::env::var("TICKSTOCK_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let found = std::process::Command::new(&python)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "{python} has no `websockets` package: run tools/test.sh, which installs it in a virtualenv (or set TICKSTOCK_TEST_PYTHON)"
    );
    python
}

#[test]
fn a_python_websockets_client_streams_over_wss() {
    let python = python_with_websockets();
    let (server, dir, _) = tls_server();
    let script = r#"
import asyncio, json, ssl, sys
import websockets

async def main(port, ca):
    context = ssl.create_default_context(cafile=ca)
    async with websockets.connect(f"wss://localhost:{port}/stocks", ssl=context) as ws:
        assert json.loads(await ws.recv())[0]["status"] == "connected"
        await ws.send(json.dumps({"action": "auth", "params": "k-all"}))
        assert json.loads(await ws.recv())[0]["status"] == "auth_success"
        await ws.send(json.dumps({"action": "subscribe", "params": "T.*"}))
        trades = 0
        while trades < 20:
            trades += sum(1 for e in json.loads(await ws.recv()) if e.get("ev") == "T")
        print("trades", trades)

asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), sys.argv[2]), 20))
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script, &server.addr.port().to_string()])
        .arg(dir.path().join("cert.pem"))
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.contains("trades"), "{stdout}{stderr}");
}

#[test]
fn permessage_deflate_with_a_real_client_and_a_deflate_bomb_gets_1009() {
    let python = python_with_websockets();
    let server = start(|_| {});
    // `websockets` offers permessage-deflate by default and compresses what it sends.
    let script = r#"
import asyncio, json, sys
import websockets

async def main(port):
    async with websockets.connect(f"ws://127.0.0.1:{port}/stocks") as ws:
        names = [type(e).__name__ for e in ws.protocol.extensions]
        assert any("Deflate" in n for n in names), names
        assert json.loads(await ws.recv())[0]["status"] == "connected"
        await ws.send(json.dumps({"action": "auth", "params": "k-all"}))
        assert json.loads(await ws.recv())[0]["status"] == "auth_success"
        await ws.send(json.dumps({"action": "subscribe", "params": "T.*"}))
        trades = 0
        while trades < 200:
            trades += sum(1 for e in json.loads(await ws.recv()) if e.get("ev") == "T")
        print("trades", trades, "extensions", names)
        # 10 MB of one character: about 10 KB compressed, far over the 64 KiB limit inflated.
        await ws.send(json.dumps({"action": "subscribe", "params": "T" * 10_000_000}))
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            print("closed", closed.rcvd.code if closed.rcvd else None)

asyncio.run(asyncio.wait_for(main(int(sys.argv[1])), 30))
"#;
    let output = std::process::Command::new(python)
        .args(["-c", script, &server.addr.port().to_string()])
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("trades"), "compressed stream read: {stdout}{stderr}");
    assert!(stdout.contains("closed 1009"), "the bomb: {stdout}{stderr}");
    // The server is fine: another client streams.
    let mut client = authed(server.addr, "k-all");
    client.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    assert_eq!(next_json(&mut client)[0]["status"], "success");
}

#[test]
fn conformance_mode_echoes_on_echo_and_is_off_by_default() {
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let plain = start(|_| {});
    let refused = http_get(plain.addr, &format!("GET /echo HTTP/1.1\r\n{upgrade}\r\n"));
    assert!(refused.starts_with("HTTP/1.1 404"), "{refused}");
    let server = start(|settings| settings.server.conformance_echo = true);
    let (mut client, _) = tungstenite::connect(format!("ws://{}/echo", server.addr)).unwrap();
    client.send(Message::text("héllo")).unwrap();
    assert_eq!(client.read().unwrap(), Message::text("héllo"), "no connected status, no auth");
    client.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(client.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    // The protocol is unchanged on /stocks.
    let mut stream = connect(server.addr, None);
    assert_eq!(status_of(&next_json(&mut stream)), "connected");
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_is_closed_and_others_stream_on() {
    // Only the bound on its own queue can close it: the time bound is far away, and the
    // rate limit (which pings count against, and which would close it 1008 first: the
    // Subscriber's unit tests) is out of the way.
    let server = start(|settings| {
        settings.server.client_lag_max_bytes = 64 * 1024;
        settings.server.client_lag_max_ms = 600_000;
        settings.server.client_messages_per_sec = 1_000_000;
    });
    // A bystander that reads all along.
    let mut bystander = authed(server.addr, "k-all");
    bystander.send(Message::text(r#"{"action":"subscribe","params":"T.*"}"#)).unwrap();
    let reading = Arc::new(AtomicBool::new(true));
    let keep = Arc::clone(&reading);
    let reader = thread::spawn(move || {
        let mut trades = 0usize;
        while keep.load(Ordering::Relaxed) {
            let value = next_json(&mut bystander);
            trades += value.as_array().unwrap().iter().filter(|e| e["ev"] == "T").count();
        }
        trades
    });
    // Up to 20,000 pings of 125 bytes: 2.6 MB of pongs to a client that never reads them.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4_096).unwrap();
    socket.connect(&server.addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut flood, _) =
        tungstenite::client(format!("ws://{}/stocks", server.addr), stream).unwrap();
    flood.send(Message::text(r#"{"action":"auth","params":"k-all"}"#)).unwrap();
    for _ in 0..20_000 {
        if flood.write(Message::Ping(vec![7u8; 125].into())).is_err() || flood.flush().is_err() {
            break;
        }
    }
    let code = loop {
        match flood.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    assert_eq!(code, Some(4008), "the flood is closed as a slow consumer");
    assert_eq!(server.counters.total(|c| &c.slow_consumer_closes), 1, "and only the flood");
    thread::sleep(Duration::from_millis(300));
    reading.store(false, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 20, "the bystander streamed on");
}
