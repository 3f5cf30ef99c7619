//! The properties the fuzz targets check, one function per target, so that the cargo-fuzz
//! targets (`fuzz/`, nightly) and the corpus tests (`shell/tests/fuzz_corpora.rs`, stable,
//! in CI) run the same code on the same bytes. Each function panics when its property
//! fails; on any input from outside, none of the code under test may.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::{Role, WebSocketContext};

use crate::config::{ServerSettings, Settings};
use crate::server::auth::Authenticator;
use crate::server::deflate;
use crate::server::framing::Slices;
use crate::server::http;
use crate::server::session::{Session, SessionLimits};
use crate::server::subscriber::{Pipe, Standalone, Subscriber};
use crate::server::universes::Universes;

/// The universes the fuzzed sessions know (`@U`, `@V` topics parse; others are unknown).
fn fuzz_universes() -> Arc<Universes> {
    Arc::new(Universes::parse("U: AAPL,MSFT\nV: IBM\n").expect("a valid universe file"))
}

/// Journal segments: the decoder never reads past the end, and every record it accepts
/// re-encodes to exactly the bytes it was decoded from.
pub fn journal_scan(data: &[u8]) {
    use crate::journal::codec;
    let mut at = codec::HEADER_LEN;
    let (end, _) = codec::scan(data, |record| {
        let mut again = Vec::new();
        codec::encode(&mut again, &record);
        assert_eq!(&data[at..at + again.len()], &again[..], "a record round-trips");
        at += again.len();
    });
    assert!(end <= data.len());
}

/// Upstream messages: the parser hands the callback exactly the elements it reports.
pub fn feed_parse(data: &[u8]) {
    let mut seen = 0;
    let count = crate::feed::upstream::parse::parse_frame(data, &mut |_| seen += 1);
    assert_eq!(count, seen);
}

/// The HTTP request parser and router: a complete head is no longer than its input, and
/// routing, refusing and answering it never panic.
pub fn http_request(data: &[u8]) {
    match http::parse(data) {
        http::Parse::Complete(request, len) => {
            assert!(len <= data.len(), "a head of {len} bytes in {} bytes", data.len());
            let _ = http::route(&request);
            if let Some(key) = &request.websocket_key {
                let accepted = request.extensions.as_deref().and_then(deflate::negotiate);
                let response = http::upgrade_response(key, accepted);
                assert!(response.starts_with(b"HTTP/1.1 101"));
            }
        }
        http::Parse::Partial => assert!(data.len() < http::REQUEST_BYTES_MAX),
        http::Parse::Bad(_) => {}
    }
}

/// The client action parser: each line of `data` is a client message, given to a session
/// waiting for its token and to an authenticated one. Nothing panics, and the session stays
/// within its limits (topics, errors).
pub fn client_actions(data: &[u8]) {
    let settings = ServerSettings::default();
    let auth = Authenticator::load(&settings).expect("the open loopback default loads");
    let now = Instant::now();
    let limits = SessionLimits {
        errors_max: 1_000_000,
        messages_per_sec: 1_000_000,
        subscriptions_max: 100,
    };
    let mut waiting = Session::new(now, now + Duration::from_secs(5), limits);
    let mut active = Session::new(now, now + Duration::from_secs(5), limits);
    active.set_universes(&fuzz_universes());
    let _ = active.on_text(r#"{"action":"auth","params":"token"}"#, &auth, 1_700_000_000);
    for line in String::from_utf8_lossy(data).lines() {
        let _ = waiting.on_text(line, &auth, 1_700_000_000);
        let _ = active.on_text(line, &auth, 1_700_000_000);
        assert!(active.subscription_count() <= 100, "subscriptions_max holds");
        let _ = active.delivery(0);
    }
}

/// Client bytes through the whole protocol layer, on an in-memory stream: a Subscriber past
/// its upgrade reads `data` in pieces (the first byte of each piece says its length),
/// answers, times out; what it writes is always well-formed WebSocket for a client.
pub fn ws_frames(data: &[u8]) {
    let settings =
        ServerSettings { client_messages_per_sec: 1_000_000, ..ServerSettings::default() };
    let mut world = Standalone::new(settings.clone(), fuzz_universes())
        .expect("the open loopback default loads");
    macro_rules! env {
        () => {
            world.env()
        };
    }
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(settings.client_message_bytes_max as usize))
        .max_frame_size(Some(settings.client_message_bytes_max as usize));
    let mut now = Instant::now();
    let peer = ([127, 0, 0, 1], 40_000).into();
    let mut subscriber = Subscriber::new(now, 0, peer, &settings, config, Vec::new(), Vec::new());
    subscriber.start(now, None, &mut env!());
    let mut client = WebSocketContext::new(Role::Client, None);
    let mut rest = data;
    let mut client_open = true;
    while let Some((&len, tail)) = rest.split_first() {
        if subscriber.is_dead() {
            break;
        }
        let (piece, after) = tail.split_at(usize::from(len).min(tail.len()));
        rest = after;
        subscriber.handle_read(now, piece, &mut env!());
        now += Duration::from_millis(7);
        subscriber.handle_timeout(now, &mut env!());
        // Its input so far is all read, as a socket at `WouldBlock`.
        subscriber.handle_drained(now);
        // Write everything it has; the client codec must read it without a protocol error.
        loop {
            subscriber.poll(now, &mut env!());
            let mut slices = Slices::new();
            subscriber.poll_transmit(&world.fanout, &mut slices);
            let bytes: Vec<u8> =
                slices.as_slices().iter().flat_map(|s| s.iter().copied()).collect();
            if bytes.is_empty() {
                break;
            }
            let _ = subscriber.handle_written(bytes.len(), &mut env!());
            if client_open {
                client_open = read_all(&mut client, &bytes);
            }
        }
    }
    subscriber.leave(&mut env!());
}

/// Feeds server bytes to a client codec; false once the server's close frame was read.
fn read_all(client: &mut WebSocketContext, bytes: &[u8]) -> bool {
    let mut written = Vec::new();
    let mut pipe = Pipe { input: bytes, output: &mut written };
    loop {
        match client.read(&mut pipe) {
            Ok(tungstenite::Message::Close(_)) => return false,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return false
            }
            Err(error) => panic!("the server wrote what a client cannot read: {error}"),
        }
    }
}

/// The CSV importer: a file is imported whole or not at all, and what it reports imported
/// is what the journal holds.
pub fn csv_import(data: &[u8]) {
    let Ok(dir) = tempfile_dir() else { return };
    let options = crate::csv_import::ImportOptions {
        journal_dir: dir.clone(),
        ts_unit: crate::csv_import::TsUnit::Auto,
        skip_bad: data.first().is_some_and(|b| b & 1 == 1),
        symbols_max: 64,
        segment_bytes_max: 1 << 20,
        columns: None,
        append: false,
        round: data.first().is_some_and(|b| b & 2 == 2),
    };
    let result = crate::csv_import::import(data, &options);
    let mut ticks = 0u64;
    let read = crate::journal::reader::for_each(&dir, |_, record| {
        ticks += u64::from(matches!(record, crate::journal::codec::Record::Tick(_)));
        true
    });
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        // An empty import writes no segment: the directory reads back as empty.
        Ok(report) if report.imported == 0 => assert_eq!(ticks, 0),
        Ok(report) => {
            read.expect("an import reads back");
            assert_eq!(ticks, report.imported, "the journal holds what was imported");
        }
        Err(_) => assert_eq!(ticks, 0, "a failed import leaves nothing"),
    }
}

fn tempfile_dir() -> io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tickstock-fuzz-csv-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The settings file: parsing and checking never panic, and settings that parse print back
/// (`tickstock config`) to text that parses to the same settings.
pub fn settings_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(settings) = Settings::parse(text) else { return };
    let printed = settings.commented_toml();
    let again = Settings::parse(&printed).expect("printed settings parse");
    assert_eq!(again, settings, "settings survive a print and a parse");
    let _ = settings.validated();
}

/// The permessage-deflate inflater in front of tungstenite: client bytes in pieces (the first
/// byte of each says its length). Nothing panics; every error is one of the two close
/// reasons; each inflated message it hands on is within the limit; and tungstenite, reading
/// what it hands on, never sees a frame with RSV1 set that it would not have seen anyway.
pub fn inflate(data: &[u8]) {
    const LIMIT: usize = 64 * 1024;
    let mut inflater = deflate::Inflater::new(LIMIT);
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (piece, after) = tail.split_at(usize::from(len).min(tail.len()));
        rest = after;
        let before = out.len();
        match inflater.handle_read(piece, &mut out) {
            Ok(()) => assert!(out.len() - before <= piece.len() + LIMIT + 14, "bounded output"),
            Err(deflate::InflateError::TooBig | deflate::InflateError::Protocol) => return,
        }
    }
    let mut server = WebSocketContext::new(Role::Server, None);
    let mut written = Vec::new();
    let mut pipe = Pipe { input: &out, output: &mut written };
    while server.read(&mut pipe).is_ok() {}
}

/// A NATS message's payload as a gateway reads it (the first byte picks the format its
/// header would say: 0 to 3). Nothing panics; a batch it accepts has consecutive `seq`s,
/// one frame each, and (format 2) encodes back to exactly its payload; cutting the events
/// up to any of its `seq`s leaves a payload that reads as the rest.
pub fn nats_batch(data: &[u8]) {
    use crate::emitter::FrameBatch;
    use crate::nats::{decode_batch, encode_frames, payload_after, FORMAT};
    let Some((&format, payload)) = data.split_first() else { return };
    let format = u32::from(format % 4);
    let mut batch = FrameBatch::new(1 << 20);
    let Ok((first, last)) = decode_batch(payload, format, &mut batch) else {
        let _ = payload_after(payload, format, 0);
        return;
    };
    assert!(first <= last);
    assert_eq!(batch.len() as u64, last - first + 1, "one frame a seq");
    assert!(batch.frames().iter().zip(first..).all(|(frame, seq)| frame.seq == seq));
    if format == FORMAT {
        let mut again = Vec::new();
        encode_frames(&mut again, &batch, batch.frames());
        assert_eq!(again, payload, "a batch round-trips");
    }
    for seq in [first - 1, first, first + (last - first) / 2, last] {
        let rest = payload_after(payload, format, seq).expect("a batch's events can be cut");
        let Some((rest, from, count)) = rest else {
            assert_eq!(seq, last, "only the last seq leaves nothing");
            continue;
        };
        assert_eq!((from, count as u64), (seq + 1, last - seq));
        let mut back = FrameBatch::new(1 << 20);
        assert_eq!(decode_batch(&rest, format, &mut back), Ok((seq + 1, last)));
    }
}

/// Event log records (`server/event_log.rs`) one after another, as a resume reads them
/// from disk: the decoder never reads past the end, and every record it accepts encodes
/// back to exactly the bytes it was decoded from.
pub fn event_log_records(data: &[u8]) {
    use crate::emitter::FrameBatch;
    use crate::server::event_log;
    let mut rest = data;
    while let Ok((record, len)) = event_log::decode(rest) {
        assert!(len > 0 && len <= rest.len(), "a record of {len} bytes in {}", rest.len());
        let mut batch = FrameBatch::new(1 << 20);
        let frame = crate::nats::frame_of(&record, crate::nats::UNKNOWN_SYMBOL, 0);
        batch.push_raw(frame, record.json);
        let mut again = Vec::new();
        event_log::encode(&mut again, &batch, &batch.frames()[0]);
        assert_eq!(again, &rest[..len], "a record round-trips");
        rest = &rest[len..];
    }
}
