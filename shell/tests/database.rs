//! The PostgreSQL sink and the aggregates endpoint against a real PostgreSQL (a private
//! cluster per test, `common/postgres.rs`) and the real binary: what is stored, what comes
//! back through the official `massive` REST client, and every fault of issue 18: the
//! database down at start, restarted mid-run, the ring overflowing, a bad URL or password,
//! a full query queue and a slow query.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::postgres::Postgres;
use common::process::{finish, http, python_with, run_script, serving, signal, text, tickstock};

/// A bar as the endpoint answers it: `t o h l c v vw n`.
type Bar = (i64, f64, f64, f64, f64, i64, f64, i64);
/// Minutes summed into a bucket: `o h l c v Σvw·v n`.
type Summed = (f64, f64, f64, f64, i64, f64, i64);

/// A settings file: a small synthetic market (20 symbols, 2,000 trades/s, so every symbol
/// has a bar every second) and the database of `pg`, plus `more`.
fn config(dir: &Path, pg: &Postgres, more: &str) -> std::path::PathBuf {
    let path = dir.join("tickstock.toml");
    let text = format!(
        "[synthetic]\nsymbols = 20\ntrades_per_sec = 2000\n\n[pipeline]\nstats_interval_ms = 500\n\n\
         [database]\nurl = \"{}\"\npassword_file = \"{}\"\nchannels = [\"A\", \"AM\", \"HL\", \"TR\", \"SV\"]\n\
         flush_interval_ms = 200\nretry_ms_min = 50\nretry_ms_max = 500\n{more}\n",
        pg.url(),
        pg.password_file().display()
    );
    fs::write(&path, text).unwrap();
    path
}

/// Runs `tickstock --config FILE ARGS...` to its end; its exit code and log.
fn run(config: &Path, args: &[&str]) -> (i32, String) {
    let out =
        tickstock().arg("--config").arg(config).args(args).stdout(Stdio::null()).output().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stderr))
}

/// Every stored row as `seq → (table, symbol, the fields that matter)`.
fn rows(pg: &Postgres) -> BTreeMap<i64, String> {
    let mut client = pg.client();
    let mut out = BTreeMap::new();
    for row in client
        .query(
            "SELECT seq, symbol, frequency, (extract(epoch FROM start) * 1000)::bigint, o, h, l, c, v, vw, n \
             FROM bars",
            &[],
        )
        .unwrap()
    {
        let (o, h, l, c, vw): (f64, f64, f64, f64, f64) = (row.get(4), row.get(5), row.get(6), row.get(7), row.get(9));
        let v: i64 = row.get(8);
        let n: i64 = row.get(10);
        let fields = format!(
            "bar {} {} {} {o} {h} {l} {c} {v} {vw} {n}",
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, i64>(3)
        );
        out.insert(row.get(0), fields);
    }
    for row in client.query("SELECT seq, kind, symbol, body::text FROM events", &[]).unwrap() {
        let body: serde_json::Value = serde_json::from_str(&row.get::<_, String>(3)).unwrap();
        let fields = format!("{} {} {body}", row.get::<_, String>(1), row.get::<_, String>(2));
        out.insert(row.get(0), fields);
    }
    out
}

/// Polls `/health` until `ready` accepts it.
fn health_until(
    addr: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = http(addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        if let Some((_, body)) = response.split_once("\r\n\r\n") {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(body) {
                if ready(&json) {
                    return json;
                }
                assert!(Instant::now() < deadline, "/health never showed {what}: {json}");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A GET of `path` with `bearer`; the status code and the JSON body.
fn get(addr: &str, path: &str, bearer: Option<&str>) -> (u16, serde_json::Value) {
    let auth = bearer.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let response = http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n"));
    let code = response.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn a_backfilled_journal_comes_back_through_the_official_rest_client_paged_and_aggregated() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg, "");
    let journal = dir.path().join("journal");
    // Five minutes of market in virtual time (from 2026-11-24 14:30 UTC).
    let (code, log) = run(
        &cfg,
        &[
            "--quiet",
            "record",
            "--virtual-time",
            "--trades",
            "600000",
            "--journal",
            journal.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{log}");
    let (code, log) = run(&cfg, &["db", "backfill", "--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{log}");
    let stored = rows(&pg);
    assert!(
        log.contains(&format!("backfill: {} rows written, 0 already there", stored.len())),
        "{log}"
    );
    // Again: every row is there already (same seq), none is written twice.
    let (code, log) = run(&cfg, &["db", "backfill", "--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains(&format!("backfill: 0 rows written, {} already there", stored.len())),
        "{log}"
    );
    assert_eq!(rows(&pg), stored);

    let keys = dir.path().join("keys");
    fs::write(&keys, "key-all user=all\nkey-msft user=msft symbols=MSFT\n").unwrap();
    let (server, addr, _log) = serving(&cfg, &["--api-keys", keys.to_str().unwrap()]);
    let mut client = pg.client();
    let minutes: Vec<Bar> = client
        .query(
            "SELECT (extract(epoch FROM start) * 1000)::bigint, o, h, l, c, v, vw, n FROM bars \
             WHERE symbol = 'AAPL' AND frequency = 'minute' ORDER BY start",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)))
        .collect();
    assert!(minutes.len() >= 4, "{minutes:?}");

    // The official client, unchanged, paging two bars at a time through next_url.
    let python = python_with("massive");
    let base = format!("http://{addr}");
    let args = [
        "--base",
        base.as_str(),
        "--key",
        "key-all",
        "--symbol",
        "AAPL",
        "--from",
        "2026-11-24",
        "--to",
        "2026-11-24",
    ];
    let out = run_script(
        &python,
        "examples/python_rest.py",
        &[&args[..], &["--limit", "2"]].concat(),
        60,
    );
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let bars = answer["bars"].as_array().unwrap();
    assert_eq!(bars.len(), minutes.len(), "{answer}");
    assert_eq!(
        answer["pages"],
        minutes.len().div_ceil(2) as u64 + u64::from(minutes.len().is_multiple_of(2)),
        "{answer}"
    );
    assert_eq!(answer["first_page"], 2);
    for (bar, row) in bars.iter().zip(&minutes) {
        let got = (
            bar["t"].as_i64().unwrap(),
            bar["o"].as_f64().unwrap(),
            bar["h"].as_f64().unwrap(),
            bar["l"].as_f64().unwrap(),
            bar["c"].as_f64().unwrap(),
            bar["v"].as_i64().unwrap(),
            bar["vw"].as_f64().unwrap(),
            bar["n"].as_i64().unwrap(),
        );
        assert_eq!(&got, row);
    }

    // Two-minute bars, aggregated from the stored minutes.
    let out = run_script(
        &python,
        "examples/python_rest.py",
        &[&args[..], &["--multiplier", "2"]].concat(),
        60,
    );
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let mut expected: BTreeMap<i64, Summed> = BTreeMap::new();
    for &(t, o, h, l, c, v, vw, n) in &minutes {
        let e = expected.entry(t - t % 120_000).or_insert((o, h, l, c, 0, 0.0, 0));
        (e.1, e.2, e.3) = (e.1.max(h), e.2.min(l), c);
        (e.4, e.5, e.6) = (e.4 + v, e.5 + vw * v as f64, e.6 + n);
    }
    let got: Vec<(i64, f64, f64, f64, f64, i64, i64)> = answer["bars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["t"].as_i64().unwrap(),
                b["o"].as_f64().unwrap(),
                b["h"].as_f64().unwrap(),
                b["l"].as_f64().unwrap(),
                b["c"].as_f64().unwrap(),
                b["v"].as_i64().unwrap(),
                b["n"].as_i64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(i64, f64, f64, f64, f64, i64, i64)> =
        expected.iter().map(|(t, e)| (*t, e.0, e.1, e.2, e.3, e.4, e.6)).collect();
    assert_eq!(got, want);
    for (bar, (_, e)) in answer["bars"].as_array().unwrap().iter().zip(&expected) {
        assert!((bar["vw"].as_f64().unwrap() - e.5 / e.4 as f64).abs() < 1e-9, "{bar}");
    }

    // Descending, Unix-ms bounds, second bars.
    let (first, last) = (minutes[0].0, minutes[minutes.len() - 1].0);
    let (code, body) = get(
        &addr,
        &format!("/v2/aggs/ticker/AAPL/range/1/minute/{first}/{last}?sort=desc&limit=1"),
        Some("key-all"),
    );
    assert_eq!((code, body["results"][0]["t"].as_i64()), (200, Some(last)), "{body}");
    assert!(
        body["next_url"].as_str().unwrap().starts_with(&format!(
            "http://{addr}/v2/aggs/ticker/AAPL/range/1/minute/{first}/{}",
            last - 1
        )),
        "{body}"
    );
    let (code, body) = get(
        &addr,
        &format!("/v2/aggs/ticker/AAPL/range/1/second/{first}/{}", first + 59_999),
        Some("key-all"),
    );
    assert_eq!(code, 200, "{body}");
    let seconds = body["results"].as_array().unwrap();
    let volume: i64 = seconds.iter().map(|b| b["v"].as_i64().unwrap()).sum();
    assert_eq!(volume, minutes[0].5, "the minute's volume is its seconds' volume");

    // Refusals, each a JSON error.
    let path = "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-24/2026-11-24";
    assert_eq!(get(&addr, path, None).0, 401);
    assert_eq!(get(&addr, path, Some("wrong")).0, 401);
    let (code, body) = get(&addr, path, Some("key-msft"));
    assert_eq!((code, body["status"].as_str()), (403, Some("NOT_AUTHORIZED")), "{body}");
    assert_eq!(
        get(&addr, "/v2/aggs/ticker/MSFT/range/1/minute/2026-11-24/2026-11-24", Some("key-msft")).0,
        200
    );
    let (code, body) =
        get(&addr, "/v2/aggs/ticker/AAPL/range/1/hour/2026-11-24/2026-11-24", Some("key-all"));
    assert_eq!((code, body["status"].as_str()), (400, Some("ERROR")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("hour"), "{body}");
    let refused = http(&addr, &format!("GET {path}?apiKey=key-all HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");

    signal(&server, "TERM");
    assert!(finish(server).status.success());
}

#[test]
fn a_full_query_queue_is_answered_429_and_a_slow_query_504() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &pg,
        "query_threads = 1\nquery_queue_max = 1\nquery_timeout_ms = 1000\n",
    );
    let (server, addr, _log) = serving(&cfg, &[]);
    health_until(&addr, "the database up", |h| h["database"]["state"] == "up");
    // Hold the table: every query waits behind the lock until its statement_timeout.
    let mut locker = pg.client();
    let mut tx = locker.transaction().unwrap();
    tx.batch_execute("LOCK TABLE bars IN ACCESS EXCLUSIVE MODE").unwrap();
    let path = "/v2/aggs/ticker/AAPL/range/1/minute/0/9999999999999";
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || get(&addr, path, Some("any")).0)
        })
        .collect();
    let mut codes: Vec<u16> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    codes.sort_unstable();
    tx.rollback().unwrap();
    assert!(codes.contains(&429), "{codes:?}");
    assert!(codes.contains(&504), "{codes:?}");
    assert!(codes.iter().all(|c| [429, 504].contains(c)), "{codes:?}");
    // With the lock gone, it answers again.
    assert_eq!(get(&addr, path, Some("any")).0, 200);
    let metrics = http(&addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics.contains("aggs_requests_total{outcome=\"rejected\"}"), "{metrics}");
    signal(&server, "TERM");
    assert!(finish(server).status.success());
}

#[test]
fn down_at_start_then_restarted_mid_run_the_sink_stores_every_event_once() {
    let mut pg = Postgres::start();
    pg.stop();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg, "on_overflow = \"drop\"\n");
    let journal = dir.path().join("journal");
    let (server, addr, _log) = serving(&cfg, &["--journal", journal.to_str().unwrap()]);
    // Down: the server serves, degraded, with the reason.
    let health = health_until(&addr, "degraded", |h| h["status"] == "degraded");
    assert!(health["problem"].as_str().unwrap().contains("tickstock@127.0.0.1"), "{health}");
    assert_eq!(health["database"]["state"], "down", "{health}");
    std::thread::sleep(Duration::from_secs(2));
    pg.restart();
    health_until(&addr, "the database up", |h| {
        h["status"] == "ok" && h["database"]["committed_seq"].as_u64() > Some(0)
    });
    std::thread::sleep(Duration::from_secs(2));
    // Restarted under the sink.
    pg.restart();
    std::thread::sleep(Duration::from_secs(3));
    let health = health_until(&addr, "the database up again", |h| h["status"] == "ok");
    signal(&server, "TERM");
    let out = finish(server);
    assert!(out.status.success());
    let metrics_dropped = health["database"]["dropped"].as_u64().unwrap();
    assert_eq!(metrics_dropped, 0, "the ring held the outage: {health}");
    let live = rows(&pg);

    // The same journal backfilled into an empty database: the engine is deterministic, so
    // the live sink must hold exactly those rows, up to where the live run stopped.
    let mut client = pg.client();
    client.batch_execute("CREATE DATABASE replayed").unwrap();
    let replay_cfg = dir.path().join("replay.toml");
    fs::write(
        &replay_cfg,
        fs::read_to_string(&cfg).unwrap().replace("/tickstock\"", "/replayed\""),
    )
    .unwrap();
    let (code, log) = run(&replay_cfg, &["db", "backfill", "--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{log}");
    let mut replay = postgres::Config::new();
    replay
        .host("127.0.0.1")
        .port(pg.port)
        .user("tickstock")
        .password(common::postgres::PASSWORD)
        .dbname("replayed");
    let mut replayed = BTreeMap::new();
    let mut replay_client = replay.connect(postgres::NoTls).unwrap();
    let last_live = *live.keys().last().unwrap();
    for row in
        replay_client.query("SELECT seq FROM bars UNION ALL SELECT seq FROM events", &[]).unwrap()
    {
        let seq: i64 = row.get(0);
        if seq <= last_live {
            replayed.insert(seq, ());
        }
    }
    let live_seqs: Vec<i64> = live.keys().copied().collect();
    let replayed_seqs: Vec<i64> = replayed.keys().copied().collect();
    assert!(live_seqs.len() > 100, "{}", live_seqs.len());
    assert_eq!(
        live_seqs, replayed_seqs,
        "no gap and no duplicate across the outage and the restart"
    );
}

#[test]
fn an_overflowing_ring_logs_its_gap_and_a_backfill_mends_it() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    // The smallest ring and batch, 400 symbols, the database away: the ring overflows
    // within a second.
    let cfg = config(dir.path(), &pg, "ring_bytes = 65536\nbatch_max_rows = 50\n");
    fs::write(&cfg, fs::read_to_string(&cfg).unwrap().replace("symbols = 20\n", "symbols = 400\n"))
        .unwrap();
    pg.stop();
    let journal = dir.path().join("journal");
    let (server, addr, log) = serving(&cfg, &["--journal", journal.to_str().unwrap()]);
    health_until(&addr, "dropped events", |h| h["database"]["dropped"].as_u64() > Some(0));
    pg.restart();
    health_until(&addr, "the database up", |h| h["status"] == "ok");
    std::thread::sleep(Duration::from_secs(1));
    signal(&server, "TERM");
    let out = finish(server);
    assert!(out.status.success());
    let log: Vec<String> = log.collect();
    let gap = log
        .iter()
        .find(|l| l.contains("database ring overflowed"))
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(gap.contains("tickstock db backfill"), "{gap}");
    let stored = rows(&pg).len();
    let (code, backfill) = run(&cfg, &["db", "backfill", "--journal", journal.to_str().unwrap()]);
    assert_eq!(code, 0, "{backfill}");
    let mended = rows(&pg).len();
    assert!(mended > stored, "{stored} → {mended}: {backfill}");
    assert!(backfill.contains(&format!("{} rows written", mended - stored)), "{backfill}");
}

#[test]
fn a_bad_url_or_password_is_a_clear_error_at_start() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    fs::write(&wrong, "not-the-password\n").unwrap();
    let cfg = config(dir.path(), &pg, "");
    let bad_password = dir.path().join("bad-password.toml");
    fs::write(
        &bad_password,
        fs::read_to_string(&cfg)
            .unwrap()
            .replace(pg.password_file().to_str().unwrap(), wrong.to_str().unwrap()),
    )
    .unwrap();
    let (code, log) =
        run(&bad_password, &["--listen", "127.0.0.1:0", "serve", "--duration-s", "5"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("password authentication failed for user \"tickstock\""), "{log}");
    assert!(
        !log.contains("not-the-password") && !log.contains(common::postgres::PASSWORD),
        "no password in the log: {log}"
    );
    let (code, log) = run(&bad_password, &["db", "init"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("password authentication failed"), "{log}");

    let with_password = dir.path().join("with-password.toml");
    fs::write(
        &with_password,
        fs::read_to_string(&cfg).unwrap().replace("tickstock@", "tickstock:pw@"),
    )
    .unwrap();
    let (code, log) = run(&with_password, &["db", "init"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("database.url holds a password"), "{log}");
    let bad_url = dir.path().join("bad-url.toml");
    fs::write(
        &bad_url,
        fs::read_to_string(&cfg)
            .unwrap()
            .replace(&pg.url(), "postgresql://127.0.0.1:notaport/tickstock"),
    )
    .unwrap();
    let (code, log) = run(&bad_url, &["db", "init"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("database.url is not a PostgreSQL URL"), "{log}");
    let unknown_db = dir.path().join("unknown-db.toml");
    fs::write(&unknown_db, fs::read_to_string(&cfg).unwrap().replace("/tickstock\"", "/nosuch\""))
        .unwrap();
    let (code, log) = run(&unknown_db, &["db", "init"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("database \"nosuch\" does not exist"), "{log}");
    // And the good one creates the schema, then finds it current.
    let (code, log) = run(&cfg, &["db", "init"]);
    assert_eq!((code, log.contains("schema version 1 created")), (0, true), "{log}");
    let (code, log) = run(&cfg, &["db", "init"]);
    assert_eq!((code, log.contains("schema version 1 is current")), (0, true), "{log}");
}

#[test]
fn a_schema_newer_than_this_build_is_refused_at_start_with_both_versions() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg, "");
    let (code, log) = run(&cfg, &["db", "init"]);
    assert_eq!(code, 0, "{log}");
    pg.client().batch_execute("INSERT INTO tickstock_schema (version) VALUES (99)").unwrap();
    let (code, log) = run(&cfg, &["--listen", "127.0.0.1:0", "serve", "--duration-s", "5"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("schema version 99, newer than this build's 1"), "{log}");
    let (code, log) = run(&cfg, &["db", "init"]);
    assert_eq!(code, 2, "{log}");
    assert!(log.contains("schema version 99"), "{log}");
}

#[test]
fn with_the_database_away_a_query_is_503_and_a_stop_says_what_is_not_stored() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &pg, "");
    let (server, addr, log) = serving(&cfg, &[]);
    health_until(&addr, "the database up", |h| {
        h["database"]["state"] == "up" && h["database"]["committed_seq"].as_u64() > Some(0)
    });
    pg.stop();
    health_until(&addr, "the database down", |h| h["database"]["state"] == "down");
    let path = "/v2/aggs/ticker/AAPL/range/1/minute/0/9999999999999";
    let (code, body) = get(&addr, path, Some("any"));
    assert_eq!((code, body["status"].as_str()), (503, Some("ERROR")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("the database is unavailable"), "{body}");
    std::thread::sleep(Duration::from_millis(1_500));
    // At the stop the sink keeps trying for max(retry_ms_max, 5 s), then says what it lost.
    let stopping = Instant::now();
    signal(&server, "TERM");
    let out = finish(server);
    let waited = stopping.elapsed();
    assert!(out.status.success());
    assert!(waited >= Duration::from_secs(5), "it tried for 5 s: {waited:?}");
    assert!(waited < Duration::from_secs(20), "then stopped: {waited:?}");
    let log: Vec<String> = log.collect();
    let line = log
        .iter()
        .find(|l| l.contains("still away at the stop"))
        .unwrap_or_else(|| panic!("{log:?}"));
    assert!(line.contains("events from seq") && line.contains("db backfill"), "{line}");
}

#[test]
fn without_a_database_the_aggregates_endpoint_is_404_json() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("empty.toml");
    fs::write(&cfg, "").unwrap();
    let (server, addr, _log) = serving(&cfg, &[]);
    let (code, body) =
        get(&addr, "/v2/aggs/ticker/AAPL/range/1/minute/2026-11-24/2026-11-24", Some("x"));
    assert_eq!((code, body["status"].as_str()), (404, Some("ERROR")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("database.url"), "{body}");
    signal(&server, "TERM");
    assert!(finish(server).status.success());
}
