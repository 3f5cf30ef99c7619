//! Scale-out over NATS JetStream against a real `nats-server` (a private one per test,
//! `common/nats.rs`) and the real binary as separate processes: one ingest, gateways, and
//! clients on them (issue 17's failure behaviour).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

mod common;
use common::nats::Nats;
use common::process::{finish, http, listening, serving, signal, tickstock, timed_out, Log};

type Ws = tungstenite::WebSocket<std::net::TcpStream>;
type Events = BTreeMap<u64, serde_json::Value>;

/// Every channel: a client on all of them receives every `seq`.
const EVERY_CHANNEL: &str = "T.*,A.*,AM.*,HL.*,TR.*,SV.*,FMV.*,ACT.*";

/// A configuration file in `dir` for one process on `nats`.
fn config(dir: &Path, name: &str, nats: &Nats) -> PathBuf {
    config_with(dir, name, nats, "", "")
}

/// As [`config`], with more lines in `[nats]` and, when not empty, a `[server]` table.
fn config_with(dir: &Path, name: &str, nats: &Nats, nats_lines: &str, server: &str) -> PathBuf {
    let lines = format!("ack_timeout_ms = 500\nretry_ms_max = 500\n{nats_lines}");
    config_at(dir, name, &nats.url(), &lines, server)
}

/// A configuration file in `dir` for one process that reaches NATS at `url` (a relay, say),
/// with `nats_lines` in `[nats]` and, when not empty, a `[server]` table.
fn config_at(dir: &Path, name: &str, url: &str, nats_lines: &str, server: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let mut body =
        format!("[synthetic]\ntrades_per_sec = 2000\n\n[nats]\nurl = \"{url}\"\n{nats_lines}");
    if !server.is_empty() {
        body.push_str(&format!("\n[server]\n{server}"));
    }
    fs::write(&path, body).unwrap();
    path
}

/// A process of `role`: the child, its address, its log.
fn start(config: &Path, role: &str) -> (Child, String, Log) {
    serving(config, &["--role", role])
}

/// Connects to `addr`, authenticates and subscribes to every channel, then sends `then`.
fn client(addr: &str, then: Option<String>) -> Ws {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/stocks"), stream).unwrap();
    ws.get_ref().set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    ws.send(r#"{"action":"auth","params":"any"}"#.into()).unwrap();
    let subscribe = format!(r#"{{"action":"subscribe","params":"{EVERY_CHANNEL}"}}"#);
    ws.send(subscribe.into()).unwrap();
    if let Some(message) = then {
        ws.send(message.into()).unwrap();
    }
    ws
}

/// Reads `ws` for `secs` on a thread of its own: every event by `seq` (a repeated `seq` is a
/// failure), and the statuses.
fn read_for(
    mut ws: Ws,
    secs: f64,
) -> std::thread::JoinHandle<(Events, Vec<serde_json::Value>, Ws)> {
    std::thread::spawn(move || {
        let (mut events, mut statuses) = (Events::new(), Vec::new());
        let until = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < until {
            match ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
                    for item in items {
                        if item["ev"] == "status" {
                            statuses.push(item);
                        } else {
                            let seq = item["seq"].as_u64().unwrap();
                            assert!(events.insert(seq, item).is_none(), "seq {seq} came twice");
                        }
                    }
                }
                Ok(_) => {}
                Err(error) if timed_out(&error) => {}
                Err(error) => panic!("the connection failed: {error} (statuses {statuses:?})"),
            }
        }
        (events, statuses, ws)
    })
}

/// Stops `children` (SIGTERM), each of which must exit 0.
fn stop_all<const N: usize>(children: [Child; N]) {
    for child in children {
        signal(&child, "TERM");
        assert!(finish(child).status.success());
    }
}

/// Every `seq` from the first to the last is there.
fn assert_no_gap(events: &Events, what: &str) {
    let (first, last) = (*events.keys().next().unwrap(), *events.keys().last().unwrap());
    assert_eq!(events.len() as u64, last - first + 1, "{what}: seqs {first}..={last} have a gap");
}

/// Waits until `/health` of `addr` answers 200 with the NATS side up.
fn wait_up(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = http(addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if health.starts_with("HTTP/1.1 200") && health.contains(r#""state":"up""#) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} did not come up: {health}");
        sleep(Duration::from_millis(50));
    }
}

fn metric(addr: &str, name: &str) -> u64 {
    let body = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics of {addr}"))
}

#[test]
fn two_gateways_send_the_ingests_events_and_a_killed_gateways_client_resumes_on_the_other() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, ingest_addr, _ingest_log) = start(&config(dir.path(), "ingest", &nats), "ingest");
    wait_up(&ingest_addr);
    let (gateway_a, a, _a_log) = start(&config(dir.path(), "a", &nats), "gateway");
    let (gateway_b, b, _b_log) = start(&config(dir.path(), "b", &nats), "gateway");
    wait_up(&a);
    wait_up(&b);

    // The same events, with the same seq and the same bytes, on the ingest and both gateways.
    let on_ingest = read_for(client(&ingest_addr, None), 3.0);
    let on_a = read_for(client(&a, None), 3.0);
    let on_b = read_for(client(&b, None), 6.0);
    let (ingest_events, _, _) = on_ingest.join().unwrap();
    let (a_events, _, ws_a) = on_a.join().unwrap();
    assert!(a_events.len() > 1_000, "the gateway streamed ({} events)", a_events.len());
    assert_no_gap(&a_events, "gateway a");
    let mut same = 0;
    for (seq, event) in &a_events {
        if let Some(there) = ingest_events.get(seq) {
            assert_eq!(there, event, "seq {seq} differs between the ingest and a gateway");
            same += 1;
        }
    }
    assert!(same > 1_000, "the ingest's and the gateway's streams overlap ({same} events)");
    // Every live batch's hop is in the gateway's histogram, and the last one in the gauge.
    let batches = metric(&b, "tickstock_nats_transit_seconds_count");
    assert!(batches > 100, "the hop of {batches} batches measured");
    assert!(metric(&b, "tickstock_nats_transit_seconds_bucket{le=\"1\"}") > batches / 2);

    // kill -9 gateway a: its client goes to b and resumes after the last seq it had.
    drop(ws_a);
    signal(&gateway_a, "KILL");
    let _ = finish(gateway_a);
    let last = *a_events.keys().last().unwrap();
    let resume = format!(r#"{{"action":"resume","params":{{"from_seq":{}}}}}"#, last + 1);
    let (resumed, statuses, _) = read_for(client(&b, Some(resume)), 2.0).join().unwrap();
    let (b_events, _, _) = on_b.join().unwrap();
    assert!(
        statuses.iter().any(|s| s["status"] == "resumed" && s["from_seq"] == last + 1),
        "the resume was honoured: {statuses:?}"
    );
    assert_eq!(*resumed.keys().next().unwrap(), last + 1, "it goes on right after {last}");
    assert_no_gap(&resumed, "the resumed client");
    assert_no_gap(&b_events, "gateway b");
    for (seq, event) in &resumed {
        if let Some(there) = b_events.get(seq).or_else(|| a_events.get(seq)) {
            assert_eq!(there, event, "seq {seq} differs between the gateways");
        }
    }
    for (seq, event) in &a_events {
        if let Some(there) = b_events.get(seq) {
            assert_eq!(there, event, "seq {seq} differs between the gateways");
        }
    }
    stop_all([ingest, gateway_b]);
}

/// A TCP relay in front of a NATS server: it passes what its clients send at once, holds
/// what the server sends back for a delay (a NATS whose replies, acknowledgements among them,
/// come late, as across a slow network), and can cut every connection at once (a network
/// that drops, taking what was in flight with it).
struct Relay {
    addr: String,
    live: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start(to: &str, delay: Duration) -> Relay {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let live = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
        let (to, sockets) = (to.to_owned(), std::sync::Arc::clone(&live));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(&to)) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let mut held = sockets.lock().unwrap();
                held.extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                drop(held);
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_server);
                    let _ = to_server.shutdown(Shutdown::Both);
                });
                let (hold, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                let mut from_server = server;
                std::thread::spawn(move || {
                    let mut buffer = vec![0; 1 << 16];
                    while let Ok(n @ 1..) = from_server.read(&mut buffer) {
                        if hold.send((Instant::now() + delay, buffer[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                let mut to_client = client;
                std::thread::spawn(move || {
                    for (at, bytes) in due {
                        sleep(at.saturating_duration_since(Instant::now()));
                        if to_client.write_all(&bytes).is_err() {
                            break;
                        }
                    }
                    let _ = to_client.shutdown(Shutdown::Both);
                });
            }
        });
        Relay { addr, live }
    }

    /// Its URL for a `[nats]` table.
    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Cuts every connection through it (the clients reconnect through it).
    fn cut(&self) {
        for socket in self.live.lock().unwrap().drain(..) {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn a_batch_is_published_without_waiting_for_the_acknowledgement_of_the_one_before() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    // The ingest's NATS answers 100 ms late (an emitter cycle is 1 ms); the gateway's at once.
    let relay = Relay::start(nats.url().trim_start_matches("nats://"), Duration::from_millis(100));
    let ingest_config =
        config_at(dir.path(), "ingest", &relay.url(), "ack_timeout_ms = 2000\n", "");
    let (ingest, ingest_addr, _ingest_log) = start(&ingest_config, "ingest");
    wait_up(&ingest_addr);
    let (gateway, addr, _log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    sleep(Duration::from_secs(3));
    // The hop runs from the ingest's emitter to the gateway: a batch held for an earlier
    // one's acknowledgement takes up to 100 ms, about 50 on average, and 1 in 10 or fewer
    // cross within 10 ms (96 of 2,677 when the publisher waited so, 2026-12-07).
    let batches = metric(&addr, "tickstock_nats_transit_seconds_count");
    let within_10_ms = metric(&addr, r#"tickstock_nats_transit_seconds_bucket{le="0.01"}"#);
    assert!(batches > 500, "{batches} batches in 3 s");
    assert!(
        within_10_ms * 2 >= batches,
        "{within_10_ms} of {batches} batches crossed within 10 ms"
    );
    assert_eq!(metric(&addr, "tickstock_nats_gap_events_total"), 0);
    stop_all([ingest, gateway]);
    drop(nats);
}

#[test]
fn connections_to_nats_cut_under_load_lose_nothing_and_store_nothing_out_of_order() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    // Replies 5 ms late, so batches are in flight when a cut takes what was on the wire.
    let relay = Relay::start(nats.url().trim_start_matches("nats://"), Duration::from_millis(5));
    let lines = "ack_timeout_ms = 300\nretry_ms_min = 20\nretry_ms_max = 100\n";
    let (ingest, ingest_addr, _ingest_log) =
        start(&config_at(dir.path(), "ingest", &relay.url(), lines, ""), "ingest");
    wait_up(&ingest_addr);
    let (gateway, addr, _log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    let reading = read_for(client(&addr, None), 8.0);
    sleep(Duration::from_millis(500));
    for _ in 0..8 {
        relay.cut();
        sleep(Duration::from_millis(400));
    }
    let (events, statuses, _) = reading.join().unwrap();
    assert!(events.len() > 5_000, "it streamed ({} events), {statuses:?}", events.len());
    assert_no_gap(&events, "across the cuts");
    assert_eq!(metric(&addr, "tickstock_nats_gap_events_total"), 0);
    assert_eq!(metric(&addr, "tickstock_nats_duplicate_batches_total"), 0, "stored in order");
    assert!(metric(&ingest_addr, "tickstock_nats_disconnects_total") >= 2, "the cuts were seen");
    assert_eq!(metric(&ingest_addr, "tickstock_feed_ring_full_waits_total"), 0, "engine stalled");
    stop_all([ingest, gateway]);
    drop(nats);
}

/// A message's payload (format 2) of `T` events of `tickers` from `first`, each ticker's
/// symbol index its place in the list.
fn payload_of(first: u64, tickers: &[&str]) -> Vec<u8> {
    use tickstock_engine::{Channel, SymbolId, Ticker};
    use tickstock_shell::emitter::{Frame, FrameBatch};
    let mut batch = FrameBatch::new(1 << 16);
    for (i, ticker) in tickers.iter().enumerate() {
        let seq = first + i as u64;
        let json =
            format!(r#"{{"ev":"T","sym":"{ticker}","p":10.5,"s":100,"t":{seq}000,"seq":{seq}}}"#);
        let frame = Frame {
            seq,
            symbol: SymbolId(i as u32),
            ticker: Ticker::new(ticker).unwrap(),
            channel: Channel::T,
            price_raw: 10_500_000,
            volume: 100,
            strength: 0,
            recv_ns: 1,
            t_ms: seq * 1_000,
            start: 0,
            end: 0,
        };
        batch.push_raw(frame, json.as_bytes());
    }
    let mut payload = Vec::new();
    tickstock_shell::nats::encode_frames(&mut payload, &batch, batch.frames());
    payload
}

#[test]
fn a_gateway_reads_format_1_and_2_messages_and_skips_others_with_one_log_line() {
    use async_nats::jetstream::{self, stream};
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let context = runtime.block_on(async {
        let context = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let config = stream::Config {
            name: "TICKSTOCK".to_owned(),
            subjects: vec!["tickstock.events".to_owned()],
            ..Default::default()
        };
        context.create_stream(config).await.unwrap();
        context
    });
    let (gateway, addr, log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    let mut ws = client(&addr, None);
    sleep(Duration::from_millis(300));
    // Format 1 (no Tickstock-Format header, no symbol indexes): seqs 1 and 2.
    let two = payload_of(1, &["AAPL", "MSFT"]);
    let format_1 = [&two[..4 + 2 * 8], &two[4 + 2 * 12..]].concat();
    let publish = |payload: Vec<u8>, format: Option<&str>, first: u64, last: u64| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Tickstock-Seq", format!("{first}-{last}").as_str());
        headers.insert("Tickstock-Sent-Ns", "1");
        if let Some(format) = format {
            headers.insert("Tickstock-Format", format);
        }
        runtime.block_on(async {
            let ack = context
                .publish_with_headers("tickstock.events", headers, payload.into())
                .await
                .unwrap();
            ack.await.unwrap();
        });
    };
    publish(format_1, None, 1, 2);
    publish(b"not a batch".to_vec(), Some("2"), 3, 3);
    publish(payload_of(3, &["AAPL"]), Some("3"), 3, 3); // a newer ingest's
    publish(payload_of(3, &["IBM", "AAPL"]), Some("2"), 3, 4);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 4 && Instant::now() < deadline {
        match ws.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let items: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
                for item in items.into_iter().filter(|item| item["ev"] == "T") {
                    seen.push((
                        item["seq"].as_u64().unwrap(),
                        item["sym"].as_str().unwrap().to_owned(),
                    ));
                }
            }
            Ok(_) => {}
            Err(error) if timed_out(&error) => {}
            Err(error) => panic!("the connection failed: {error}"),
        }
    }
    let expected: Vec<(u64, String)> =
        [(1, "AAPL"), (2, "MSFT"), (3, "IBM"), (4, "AAPL")].map(|(s, t)| (s, t.to_owned())).into();
    assert_eq!(seen, expected, "both formats are served, in order");
    assert_eq!(metric(&addr, "tickstock_nats_bad_messages_total"), 2);
    assert_eq!(metric(&addr, "tickstock_nats_gap_events_total"), 0);
    stop_all([gateway]);
    let skipped: Vec<String> = log.filter(|line| line.contains("skipped a message")).collect();
    assert_eq!(skipped.len(), 1, "two bad messages in a row are one line: {skipped:?}");
    assert!(skipped[0].contains("not a batch") || skipped[0].contains("count"), "{skipped:?}");
    drop(nats);
}

#[test]
fn a_stream_in_memory_is_made_so_and_carries_the_events() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let memory = config_with(dir.path(), "ingest", &nats, "storage = \"memory\"\n", "");
    let (ingest, ingest_addr, _ingest_log) = start(&memory, "ingest");
    wait_up(&ingest_addr);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let storage = runtime.block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let mut stream = context.get_stream("TICKSTOCK").await.unwrap();
        stream.info().await.unwrap().config.storage
    });
    assert_eq!(storage, async_nats::jetstream::stream::StorageType::Memory);
    let (gateway, addr, _log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    let (events, statuses, _) = read_for(client(&addr, None), 2.0).join().unwrap();
    assert!(events.len() > 1_000, "it streamed ({} events), {statuses:?}", events.len());
    assert_no_gap(&events, "from a stream in memory");
    stop_all([ingest, gateway]);
    drop(nats);
}

#[test]
fn a_nats_restart_under_load_loses_nothing_and_never_stalls_the_engine() {
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, ingest_addr, _ingest_log) = start(&config(dir.path(), "ingest", &nats), "ingest");
    wait_up(&ingest_addr);
    let (gateway, addr, _log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    let reading = read_for(client(&addr, None), 7.0);
    sleep(Duration::from_millis(1_500));
    nats.restart();
    // The gateway says so while NATS is away (or is up again already).
    let health = http(&addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        health.starts_with("HTTP/1.1 503") && health.contains("nats down")
            || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    let (events, statuses, _) = reading.join().unwrap();
    assert!(events.len() > 5_000, "it streamed ({} events), {statuses:?}", events.len());
    assert_no_gap(&events, "across the restart");
    wait_up(&addr);
    assert_eq!(metric(&ingest_addr, "tickstock_nats_dropped_events_total"), 0);
    assert_eq!(metric(&ingest_addr, "tickstock_feed_ring_full_waits_total"), 0, "engine stalled");
    assert_eq!(metric(&addr, "tickstock_nats_gap_events_total"), 0);
    assert!(metric(&addr, "tickstock_nats_disconnects_total") >= 1, "the restart was seen");
    stop_all([ingest, gateway]);
    drop(nats);
}

#[test]
fn an_ingest_and_a_gateway_started_while_nats_is_away_stream_once_it_comes() {
    let mut nats = Nats::start();
    nats.stop();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, ingest_addr, _ingest_log) = start(&config(dir.path(), "ingest", &nats), "ingest");
    let (gateway, addr, _log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    let health = http(&addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 503") && health.contains("nats down"), "{health}");
    nats.restart();
    wait_up(&ingest_addr);
    wait_up(&addr);
    let (events, statuses, _) = read_for(client(&addr, None), 3.0).join().unwrap();
    assert!(events.len() > 2_000, "it streamed ({} events), {statuses:?}", events.len());
    assert_no_gap(&events, "after NATS came");
    assert!(metric(&ingest_addr, r#"tickstock_nats_events_total{outcome="published"}"#) > 2_000);
    stop_all([ingest, gateway]);
}

#[test]
fn a_killed_ingest_restarts_warm_and_the_stream_goes_on_with_no_seq_gap() {
    kill_and_restart_the_ingest(false);
}

#[test]
fn a_killed_ingest_restarted_while_nats_is_away_goes_on_with_no_gap_and_no_duplicate() {
    kill_and_restart_the_ingest(true);
}

/// An ingest with a journal streaming to a gateway's client is killed (-9) and restarted,
/// with NATS away across the restart when `nats_away`: the client sees every `seq` once.
fn kill_and_restart_the_ingest(nats_away: bool) {
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let ingest_config = config(dir.path(), "ingest", &nats);
    let journal = dir.path().join("journal");
    let journal = journal.to_str().unwrap();
    let ingest_args = ["--role", "ingest", "--journal", journal];
    let (ingest, ingest_addr, _log) = serving(&ingest_config, &ingest_args);
    wait_up(&ingest_addr);
    let (gateway, addr, _gateway_log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    // NATS away, the restart waits `connect_timeout_ms` for it before it listens.
    let reading = read_for(client(&addr, None), if nats_away { 14.0 } else { 8.0 });
    sleep(Duration::from_millis(2_000));
    let published = metric(&ingest_addr, "tickstock_nats_last_seq");
    signal(&ingest, "KILL");
    let _ = finish(ingest);
    if nats_away {
        nats.stop();
    }
    // The restart replays the journal (the engine's state and seq go on) and goes live.
    // NATS up, it asks the stream what it holds and publishes what the stream lacks of the
    // replay. NATS away, it cannot ask: its resume history's refill (replayed events the
    // stream has, and those it lacks) goes out live, the publisher leaves out what the
    // stream holds once NATS is back, and the gateway hands on each `seq` once.
    let (ingest, ingest_addr, log) = serving(&ingest_config, &ingest_args);
    if nats_away {
        nats.restart();
    }
    let (events, statuses, _) = reading.join().unwrap();
    let last = *events.keys().last().unwrap();
    let after = if nats_away { 4_000 } else { 2_000 };
    assert!(last > published + after, "the restarted ingest streamed: {last}, {statuses:?}");
    assert_no_gap(&events, "across the ingest's restart");
    assert_eq!(metric(&addr, "tickstock_nats_gap_events_total"), 0);
    if !nats_away {
        assert_eq!(metric(&ingest_addr, "tickstock_nats_dropped_events_total"), 0);
    }
    stop_all([ingest, gateway]);
    let log: Vec<String> = log.collect();
    assert!(log.iter().any(|l| l.contains("warm restart: journal replayed")), "{log:?}");
    let asked = if nats_away {
        "cannot ask the stream what it holds"
    } else {
        "the stream holds events up to here"
    };
    assert!(log.iter().any(|l| l.contains(asked)), "{log:?}");
}

#[test]
fn a_late_gateway_fills_its_event_log_from_the_stream_and_a_client_resumes_on_it_from_the_start() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, ingest_addr, _log) = start(&config(dir.path(), "ingest", &nats), "ingest");
    wait_up(&ingest_addr);
    sleep(Duration::from_millis(3_000));
    // A gateway that starts 3 s late, with an event log and a small memory history.
    let server = format!(
        "event_log_dir = \"{}\"\nhistory_max_events = 1000\n",
        dir.path().join("events").display()
    );
    let gateway_config = config_with(dir.path(), "gateway", &nats, "", &server);
    let (gateway, addr, log) = start(&gateway_config, "gateway");
    wait_up(&addr);
    let resume = r#"{"action":"resume","params":{"from_seq":1}}"#.to_owned();
    let (events, statuses, _) = read_for(client(&addr, Some(resume)), 3.0).join().unwrap();
    let resumed: Vec<_> = statuses.iter().filter(|s| s["status"] == "resumed").collect();
    assert_eq!(resumed.len(), 1, "{statuses:?}");
    assert_eq!(resumed[0]["from_seq"], 1);
    assert_eq!(*events.keys().next().unwrap(), 1, "from the ingest's first event");
    assert!(resumed[0]["to_seq"].as_u64().unwrap() > 5_000, "{resumed:?}: from the log");
    assert_no_gap(&events, "the resume from the log, then live");
    stop_all([ingest, gateway]);
    let log: Vec<String> = log.collect();
    assert!(log.iter().any(|l| l.contains("filling the event log from the stream")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("the event log has what the stream held")), "{log:?}");
}

#[test]
fn a_gateway_without_a_log_that_started_late_refuses_an_older_resume_with_its_oldest_seq() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, ingest_addr, _log) = start(&config(dir.path(), "ingest", &nats), "ingest");
    wait_up(&ingest_addr);
    sleep(Duration::from_millis(1_500));
    let (gateway, addr, _gateway_log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    sleep(Duration::from_millis(500));
    let health = http(&addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let body: serde_json::Value =
        serde_json::from_str(health.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let first = body["nats"]["first_seq"].as_u64().expect("/health says where it began");
    assert!(first > 1_000, "it began at the newest, not at 1: {body}");
    let resume = r#"{"action":"resume","params":{"from_seq":1}}"#.to_owned();
    let (_, statuses, _) = read_for(client(&addr, Some(resume)), 1.0).join().unwrap();
    let failed: Vec<_> = statuses.iter().filter(|s| s["status"] == "resume_failed").collect();
    assert_eq!(failed.len(), 1, "{statuses:?}");
    assert_eq!(failed[0]["oldest_seq"].as_u64(), Some(first), "{failed:?}");
    stop_all([ingest, gateway]);
}

#[test]
fn a_gateway_that_lags_past_the_streams_retention_says_so_and_refuses_a_resume_across_it() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    // The stream keeps 200 messages: a fifth of a second of 1 ms cycles.
    let ingest_config = config_with(dir.path(), "ingest", &nats, "retain_messages = 200\n", "");
    let (ingest, ingest_addr, _log) = start(&ingest_config, "ingest");
    wait_up(&ingest_addr);
    let (gateway, addr, _gateway_log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    sleep(Duration::from_millis(500));
    let before = metric(&addr, "tickstock_nats_last_seq");
    // The gateway stops reading for 3 s (SIGSTOP): the stream drops what it had not read.
    signal(&gateway, "STOP");
    sleep(Duration::from_millis(3_000));
    signal(&gateway, "CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let health = http(&addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if health.contains("the stream lacked") || Instant::now() > deadline {
            break health;
        }
        sleep(Duration::from_millis(100));
    };
    assert!(
        health.starts_with("HTTP/1.1 200") && health.contains(r#""status":"degraded""#),
        "{health}"
    );
    let lost = metric(&addr, "tickstock_nats_gap_events_total");
    assert!(lost > 1_000, "the hole is counted: {lost} events");
    // A resume from before the hole is refused, with the first seq after it.
    let resume = format!(r#"{{"action":"resume","params":{{"from_seq":{before}}}}}"#);
    let (_, statuses, _) = read_for(client(&addr, Some(resume)), 1.0).join().unwrap();
    let failed: Vec<_> = statuses.iter().filter(|s| s["status"] == "resume_failed").collect();
    assert_eq!(failed.len(), 1, "{statuses:?}");
    assert!(failed[0]["oldest_seq"].as_u64().unwrap() > before, "{failed:?}");
    stop_all([ingest, gateway]);
}

#[test]
fn nats_away_longer_than_the_ring_holds_is_refilled_from_the_event_log_with_no_gap() {
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    // A ring of 64 KiB: a fraction of a second of the market; an event log to refill from.
    let server = format!("event_log_dir = \"{}\"\n", dir.path().join("events").display());
    let nats_lines = "ring_bytes = 65536\nin_flight_max = 16\n";
    let ingest_config = config_with(dir.path(), "ingest", &nats, nats_lines, &server);
    let (ingest, ingest_addr, _log) = start(&ingest_config, "ingest");
    wait_up(&ingest_addr);
    let (gateway, addr, _gateway_log) = start(&config(dir.path(), "gateway", &nats), "gateway");
    wait_up(&addr);
    let reading = read_for(client(&addr, None), 9.0);
    sleep(Duration::from_millis(1_000));
    nats.restart_after(Duration::from_millis(2_500));
    let (events, statuses, _) = reading.join().unwrap();
    let dropped = metric(&ingest_addr, "tickstock_nats_dropped_events_total");
    let refilled = metric(&ingest_addr, "tickstock_nats_refilled_events_total");
    assert!(dropped > 1_000, "the ring overflowed while NATS was away ({dropped} dropped)");
    assert_eq!(refilled, dropped, "every dropped event was published from the event log");
    assert!(events.len() > 10_000, "it streamed ({} events), {statuses:?}", events.len());
    assert_no_gap(&events, "across the outage");
    assert_eq!(metric(&addr, "tickstock_nats_gap_events_total"), 0);
    stop_all([ingest, gateway]);
}

#[test]
fn tls_and_a_user_from_the_environment_reach_a_nats_that_requires_both_and_a_bad_password_is_said()
{
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    fs::write(&cert_pem, cert.cert.pem()).unwrap();
    fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let (cert_arg, key_arg) = (cert_pem.to_str().unwrap(), key_pem.to_str().unwrap());
    let nats = Nats::start_with(&[
        "--tls",
        "--tlscert",
        cert_arg,
        "--tlskey",
        key_arg,
        "--user",
        "desk",
        "--pass",
        "s3cret",
    ]);
    let with_ca = |name: &str| {
        let ca = format!("tls_ca_file = \"{}\"\n", cert_pem.display());
        config_with(dir.path(), name, &nats, &ca, "")
    };
    let env = [("NATS_USER", "desk"), ("NATS_PASSWORD", "s3cret")];
    let mut ingest = tickstock();
    ingest.envs(env).arg("--config").arg(with_ca("ingest"));
    ingest.args(["--listen", "127.0.0.1:0", "serve", "--role", "ingest"]);
    let (ingest, ingest_addr, _log) = listening(&mut ingest);
    wait_up(&ingest_addr);
    let mut gateway = tickstock();
    gateway.envs(env).arg("--config").arg(with_ca("gateway"));
    gateway.args(["--listen", "127.0.0.1:0", "serve", "--role", "gateway"]);
    let (gateway, addr, _gateway_log) = listening(&mut gateway);
    wait_up(&addr);
    let (events, _, _) = read_for(client(&addr, None), 1.5).join().unwrap();
    assert!(events.len() > 1_000, "streamed over TLS ({} events)", events.len());
    assert_no_gap(&events, "over TLS");
    // A wrong password: the gateway says why it has no stream, and never prints the password.
    let mut wrong = tickstock();
    wrong.envs([("NATS_USER", "desk"), ("NATS_PASSWORD", "wrong-one")]);
    wrong.arg("--config").arg(with_ca("wrong"));
    wrong.args(["--listen", "127.0.0.1:0", "serve", "--role", "gateway"]);
    let (wrong, wrong_addr, wrong_log) = listening(&mut wrong);
    sleep(Duration::from_millis(1_500));
    let health = http(&wrong_addr, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 503") && health.contains("nats down"), "{health}");
    stop_all([ingest, gateway, wrong]);
    let log: Vec<String> = wrong_log.collect();
    assert!(!log.iter().any(|l| l.contains("wrong-one")), "the password was logged: {log:?}");
    assert!(
        log.iter().any(|l| l.to_lowercase().contains("authorization")),
        "the log says the credentials were refused: {log:?}"
    );
}
