//! The upstream feed: a Polygon/Massive-compatible WebSocket client that survives the real
//! world, run on the feed thread with blocking sockets and short read timeouts.
//!
//! One session: TCP (+ TLS by rustls for `wss://`) → WebSocket handshake → wait for
//! `connected` → `{"action":"auth","params":KEY}` → `auth_success` → subscribe to the
//! configured topics → stream. Every message array is parsed in place ([`parse`]) into engine
//! inputs and pushed into the ring; between messages the feed sends clock beats, watches for
//! a stale feed and for shutdown.
//!
//! Any failure ends the session; the client backs off (exponential, jittered; at least
//! `auth_backoff_ms` after `auth_failed` or `max_connections`) and reconnects,
//! re-authenticates and re-subscribes, behind a circuit breaker ([`breaker`]) that remembers
//! why it opened. Counters in [`UpstreamStatus`] say what happened: connects, failures by
//! kind, reconnects, time disconnected, garbage by kind, and gaps in the
//! upstream's per-symbol sequence numbers (`q`).
//!
//! The key comes from the environment or a file ([`read_key`]) and is never printed: the
//! [`Secret`] type has no way to show it.

pub mod breaker;
pub mod parse;

use crate::tracer::Counter;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tickstock_engine::{SessionCalendar, SymbolId, Tick};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Connector, HandshakeError, Message, WebSocket};

use self::breaker::{Breaker, BreakerState, Failure, Jittered};
use self::parse::{parse_frame, Garbage, Parsed};
use crate::config::{StaleCheck, UpstreamSettings};
use crate::feed::{Feed, FeedEnd, FeedTx, Stopped};

/// How long one socket read waits before the loop looks at the clock, in ms.
const READ_POLL_MS: u64 = 5;
/// A session that streamed this long resets the back-off to its first step, in ms.
const STABLE_SESSION_MS: u64 = 30_000;

type Socket = WebSocket<MaybeTlsStream<TcpStream>>;

/// A secret that cannot be printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Reads the upstream key: the first line of `key_file` when set, else the environment
/// variable `key_env`. The error names where it looked, never the value.
pub fn read_key(settings: &UpstreamSettings) -> Result<Secret, String> {
    let key = match &settings.key_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read upstream.key_file {}: {error}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        None => std::env::var(&settings.key_env).unwrap_or_default().trim().to_owned(),
    };
    if key.is_empty() {
        let place = settings.key_file.as_ref().map_or_else(
            || format!("the environment variable {}", settings.key_env),
            |path| format!("{}", path.display()),
        );
        return Err(format!("no upstream key: set {place}"));
    }
    Ok(Secret(key))
}

/// Counters of the upstream client, readable from any thread (one writer: the feed thread).
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// TCP connections opened.
    pub connects: Counter,
    /// Sessions that reached `auth_success`.
    pub sessions: Counter,
    /// Sessions after the first: reconnects.
    pub reconnects: Counter,
    /// Failures by kind, in the order of [`FAILURE_LABELS`].
    pub failures: [Counter; FAILURE_LABELS.len()],
    /// Times the circuit breaker opened.
    pub breaker_opened: Counter,
    /// Time spent without a streaming session since the first one, in ns.
    pub disconnected_ns: Counter,
    /// WebSocket messages received.
    pub frames: Counter,
    /// Bytes of those messages.
    pub bytes: Counter,
    /// Ticks pushed into the engine's ring.
    pub ticks: Counter,
    /// Messages parsed but not ingested (aggregates of a level the engine does not take).
    pub ignored: Counter,
    /// `status` messages with `"status":"error"` (a refused topic, for one).
    pub status_errors: Counter,
    /// Elements skipped as garbage, by kind ([`Garbage::ALL`]).
    pub garbage: [Counter; Garbage::ALL.len()],
    /// Trades whose per-symbol `q` skipped numbers after the symbol's previous one: a
    /// possible loss upstream, counted once per gap (Polygon's `q` increases per symbol but
    /// is not promised to be gapless, so the size of a jump says nothing). Never more than
    /// the trades received.
    pub q_gaps: Counter,
}

/// Failure kinds, in counter order.
pub const FAILURE_LABELS: [&str; 7] =
    ["connect", "auth_failed", "max_connections", "timeout", "disconnected", "stale", "protocol"];

/// What `/health` shows of the upstream.
#[derive(Clone, Debug, Default)]
pub struct UpstreamHealth {
    /// A session is streaming.
    pub streaming: bool,
    /// Breaker state label.
    pub breaker: &'static str,
    /// The last failure, in words: why the breaker opened, if it did.
    pub last_failure: Option<String>,
}

/// Shared status of the upstream client.
#[derive(Debug, Default)]
pub struct UpstreamStatus {
    /// Counters.
    pub counters: UpstreamCounters,
    /// State, written on changes only.
    pub health: Mutex<UpstreamHealth>,
}

impl UpstreamStatus {
    /// A copy of the health state.
    pub fn health(&self) -> UpstreamHealth {
        self.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Which kind of input carries volume into the engine: exactly one, so nothing is counted
/// twice when several are subscribed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ingest {
    Trades,
    SecondBars,
    MinuteBars,
}

/// The upstream feed.
#[derive(Debug)]
pub struct UpstreamFeed {
    settings: UpstreamSettings,
    key: Secret,
    heartbeat_ns: u64,
    status: Arc<UpstreamStatus>,
    calendar: SessionCalendar,
    ingest: Ingest,
    /// Last `q` per symbol id.
    last_q: Vec<u64>,
}

/// How a session ended without failing.
enum End {
    Stopped,
}

enum Step {
    Failed(Failure),
    Stop,
}

impl From<Stopped> for Step {
    fn from(_: Stopped) -> Step {
        Step::Stop
    }
}

impl UpstreamFeed {
    /// A feed with its key, the engine's calendar (for "is the market open") and a status
    /// the caller keeps to report on.
    pub fn new(
        settings: UpstreamSettings,
        key: Secret,
        heartbeat_ms: u32,
        calendar: SessionCalendar,
        symbols_max: u32,
        status: Arc<UpstreamStatus>,
    ) -> UpstreamFeed {
        let has = |prefix: &str| settings.topics.iter().any(|topic| topic.starts_with(prefix));
        let ingest = if has("T.") {
            Ingest::Trades
        } else if has("A.") {
            Ingest::SecondBars
        } else {
            Ingest::MinuteBars
        };
        let heartbeat_ns = u64::from(heartbeat_ms) * 1_000_000;
        let last_q = vec![0; symbols_max as usize];
        UpstreamFeed { settings, key, heartbeat_ns, status, calendar, ingest, last_q }
    }

    fn set_health(&self, streaming: bool, breaker: &mut Breaker, now_ns: u64) {
        let mut health =
            self.status.health.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        health.streaming = streaming;
        health.breaker = breaker.state(now_ns).label();
        health.last_failure = breaker.last_failure.as_ref().map(|(_, failure)| failure.to_string());
    }

    /// Waits `duration` in heartbeat steps; stops early on shutdown.
    fn pause(&self, tx: &mut FeedTx, duration: Duration) -> Result<(), Stopped> {
        let until = Instant::now() + duration;
        loop {
            tx.heartbeat(self.heartbeat_ns)?;
            if tx.stopping() {
                return Err(Stopped);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep(
                (until - now).min(Duration::from_nanos(self.heartbeat_ns.max(1_000_000))),
            );
        }
    }

    fn connect(&self) -> Result<Socket, Failure> {
        let url = self.settings.url.as_str();
        let request =
            url.into_client_request().map_err(|error| Failure::Connect(error.to_string()))?;
        let uri = request.uri();
        let secure = uri.scheme_str() == Some("wss");
        let host = uri
            .host()
            .ok_or_else(|| Failure::Connect("no host in upstream.url".to_owned()))?
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms.into());
        let addrs = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|error| Failure::Connect(format!("{host}: {error}")))?;
        let mut last_error = format!("{host}: no address");
        let stream = addrs
            .into_iter()
            .find_map(|addr| match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => Some(stream),
                Err(error) => {
                    last_error = format!("{addr}: {error}");
                    None
                }
            })
            .ok_or(Failure::Connect(last_error))?;
        let io = |error: std::io::Error| Failure::Connect(error.to_string());
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(Duration::from_millis(READ_POLL_MS))).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let connector = if secure {
            Connector::Rustls(Arc::new(tls_config(&self.settings)?))
        } else {
            Connector::Plain
        };
        let bytes_max = self.settings.message_bytes_max as usize;
        let config = WebSocketConfig::default()
            .max_message_size(Some(bytes_max))
            .max_frame_size(Some(bytes_max));
        let deadline = Instant::now() + timeout;
        let mut attempt =
            tungstenite::client_tls_with_config(request, stream, Some(config), Some(connector));
        loop {
            match attempt {
                Ok((socket, _response)) => return Ok(socket),
                Err(HandshakeError::Interrupted(mid)) if Instant::now() < deadline => {
                    attempt = mid.handshake()
                }
                Err(HandshakeError::Interrupted(_)) => {
                    return Err(Failure::Timeout("the WebSocket handshake"))
                }
                Err(HandshakeError::Failure(error)) => {
                    return Err(Failure::Connect(error.to_string()))
                }
            }
        }
    }

    /// Reads until a `status` among `wanted` arrives (others are ignored), within the auth
    /// deadline. `auth_failed` and `max_connections` end the session whatever was wanted.
    fn await_status(
        &mut self,
        socket: &mut Socket,
        tx: &mut FeedTx,
        wanted: &[&str],
        what: &'static str,
    ) -> Result<(), Step> {
        let deadline = Instant::now() + Duration::from_millis(self.settings.auth_timeout_ms.into());
        loop {
            tx.heartbeat(self.heartbeat_ns)?;
            if tx.stopping() {
                return Err(Step::Stop);
            }
            if Instant::now() >= deadline {
                return Err(Step::Failed(Failure::Timeout(what)));
            }
            let Some(bytes) = read_message(socket)? else { continue };
            self.count_frame(bytes.len());
            let mut found: Option<Result<(), Failure>> = None;
            parse_frame(&bytes, &mut |parsed| {
                if let (None, Parsed::Status { status }) = (&found, parsed) {
                    found = match status {
                        "auth_failed" => Some(Err(Failure::AuthFailed)),
                        "max_connections" => Some(Err(Failure::MaxConnections)),
                        s if wanted.contains(&s) => Some(Ok(())),
                        _ => None,
                    };
                }
            });
            match found {
                Some(Ok(())) => return Ok(()),
                Some(Err(failure)) => return Err(Step::Failed(failure)),
                None => {}
            }
        }
    }

    fn count_frame(&self, bytes: usize) {
        let c = &self.status.counters;
        c.frames.add(1);
        c.bytes.add(bytes as u64);
    }

    /// One session, from connect to failure (or shutdown).
    fn session(
        &mut self,
        tx: &mut FeedTx,
        breaker: &mut Breaker,
        started: &mut Option<Instant>,
    ) -> Result<End, Step> {
        tracing::info!(url = %self.settings.url, "upstream: connecting");
        let mut socket = self.connect().map_err(Step::Failed)?;
        self.status.counters.connects.add(1);
        self.await_status(&mut socket, tx, &["connected"], "connected")?;
        let auth = format!(r#"{{"action":"auth","params":{}}}"#, json_string(self.key.expose()));
        send(&mut socket, auth)?;
        self.await_status(&mut socket, tx, &["auth_success"], "the auth answer")?;
        let subscribe = format!(
            r#"{{"action":"subscribe","params":{}}}"#,
            json_string(&self.settings.topics.join(","))
        );
        send(&mut socket, subscribe)?;
        tracing::info!(url = %self.settings.url, topics = %self.settings.topics.join(","), "upstream: streaming");
        breaker.on_success();
        *started = Some(Instant::now());
        self.set_health(true, breaker, tx.now().map_or(0, |now| now.0));
        self.stream(&mut socket, tx)
    }

    fn stream(&mut self, socket: &mut Socket, tx: &mut FeedTx) -> Result<End, Step> {
        let stale = Duration::from_millis(self.settings.stale_ms.into());
        let mut last_message = Instant::now();
        loop {
            tx.heartbeat(self.heartbeat_ns)?;
            if tx.stopping() {
                let _ = socket.close(None);
                let _ = socket.flush();
                return Ok(End::Stopped);
            }
            let Some(bytes) = read_message(socket)? else {
                if last_message.elapsed() >= stale && self.stale_applies(tx) {
                    return Err(Step::Failed(Failure::Stale));
                }
                continue;
            };
            last_message = Instant::now();
            self.count_frame(bytes.len());
            let mut outcome = Ok(());
            parse_frame(&bytes, &mut |parsed| {
                if outcome.is_ok() {
                    outcome = self.ingest(tx, parsed);
                }
            });
            outcome?;
        }
    }

    fn ingest(&mut self, tx: &mut FeedTx, parsed: Parsed<'_>) -> Result<(), Step> {
        let c = &self.status.counters;
        let (sym, mut tick) = match parsed {
            Parsed::Trade { sym, trade } if self.ingest == Ingest::Trades => {
                (sym, Tick::Trade(trade))
            }
            Parsed::Aggregate { sym, aggregate, minute: false }
                if self.ingest == Ingest::SecondBars =>
            {
                (sym, Tick::Aggregate(aggregate))
            }
            Parsed::Aggregate { sym, aggregate, minute: true }
                if self.ingest == Ingest::MinuteBars =>
            {
                (sym, Tick::Aggregate(aggregate))
            }
            Parsed::Quote { sym, quote } => (sym, Tick::Quote(quote)),
            Parsed::Fmv { sym, fmv } => (sym, Tick::Fmv(fmv)),
            Parsed::Trade { .. } | Parsed::Aggregate { .. } => {
                c.ignored.add(1);
                return Ok(());
            }
            Parsed::Status { status: "auth_failed" } => {
                return Err(Step::Failed(Failure::AuthFailed))
            }
            Parsed::Status { status: "max_connections" } => {
                return Err(Step::Failed(Failure::MaxConnections))
            }
            Parsed::Status { status: "error" } => {
                c.status_errors.add(1);
                return Ok(());
            }
            Parsed::Status { .. } => return Ok(()),
            Parsed::Garbage(kind) => {
                c.garbage[kind.index()].add(1);
                return Ok(());
            }
        };
        let id = match tx.intern(sym) {
            Ok(id) => id,
            Err(reason) => {
                let recv = tx.now().unwrap_or_default();
                return tx.send_rejected(reason, recv).map_err(Step::from);
            }
        };
        tick.set_symbol(id);
        if let Tick::Trade(trade) = &tick {
            self.account_q(id, trade.upstream_seq);
        }
        tx.send_tick(tick)?;
        self.status.counters.ticks.add(1);
        Ok(())
    }

    fn stale_applies(&mut self, tx: &FeedTx) -> bool {
        match self.settings.stale_check {
            StaleCheck::Always => true,
            StaleCheck::Never => false,
            StaleCheck::MarketHours => self.calendar.market_open(tx.now().map_or(0, |now| now.0)),
        }
    }

    fn account_q(&mut self, id: SymbolId, q: u64) {
        let Some(last) = self.last_q.get_mut(id.index()) else { return };
        if q == 0 {
            return;
        }
        if *last != 0 && q > *last + 1 {
            self.status.counters.q_gaps.add(1);
        }
        *last = (*last).max(q);
    }
}

/// A JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).expect("Invariant: a str serializes")
}

fn send(socket: &mut Socket, text: String) -> Result<(), Step> {
    socket
        .send(Message::text(text))
        .map_err(|error| Step::Failed(Failure::Disconnected(error.to_string())))
}

/// One data message, `None` when the read timed out (or a control frame arrived).
fn read_message(socket: &mut Socket) -> Result<Option<tungstenite::Bytes>, Step> {
    match socket.read() {
        Ok(Message::Text(text)) => Ok(Some(text.into())),
        Ok(Message::Binary(bytes)) => Ok(Some(bytes)),
        Ok(Message::Close(frame)) => {
            let why = frame.map_or_else(
                || "closed by the upstream".to_owned(),
                |f| format!("closed by the upstream: {} {}", f.code, f.reason),
            );
            Err(Step::Failed(Failure::Disconnected(why)))
        }
        Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Ok(None),
        Err(tungstenite::Error::Io(error))
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            // Pongs queued by tungstenite go out here.
            let _ = socket.flush();
            Ok(None)
        }
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        )) => Err(Step::Failed(Failure::Disconnected(
            "connection dropped without a close frame".to_owned(),
        ))),
        Err(tungstenite::Error::Capacity(error)) => {
            Err(Step::Failed(Failure::Protocol(error.to_string())))
        }
        Err(tungstenite::Error::Protocol(error)) => {
            Err(Step::Failed(Failure::Protocol(error.to_string())))
        }
        Err(error) => Err(Step::Failed(Failure::Disconnected(error.to_string()))),
    }
}

fn tls_config(settings: &UpstreamSettings) -> Result<rustls::ClientConfig, Failure> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = &settings.ca_file {
        let tls =
            |why: String| Failure::Connect(format!("upstream.ca_file {}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|error| tls(error.to_string()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|error| tls(error.to_string()))?;
            roots.add(cert).map_err(|error| tls(error.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| Failure::Connect(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

impl Feed for UpstreamFeed {
    fn name(&self) -> &'static str {
        "upstream"
    }

    fn run(&mut self, tx: &mut FeedTx) -> FeedEnd {
        let u = &self.settings;
        let ms = |v: u32| u64::from(v) * 1_000_000;
        let mut breaker = Breaker::new(u.breaker_failures, ms(u.breaker_open_ms));
        let seed = tx.now().map_or(1, |now| now.0);
        let mut backoff =
            Jittered::new(ms(u.backoff_ms_min), ms(u.backoff_ms_max), ms(u.auth_backoff_ms), seed);
        let mut down_since: Option<Instant> = None;
        loop {
            let now_ns = tx.now().map_or(0, |now| now.0);
            if let BreakerState::Open { until_ns } = breaker.state(now_ns) {
                self.set_health(false, &mut breaker, now_ns);
                if self.pause(tx, Duration::from_nanos(until_ns.saturating_sub(now_ns))).is_err() {
                    return FeedEnd::Stopped;
                }
                continue;
            }
            let mut started = None;
            let result = self.session(tx, &mut breaker, &mut started);
            let c = &self.status.counters;
            if let Some(started_at) = started {
                c.sessions.add(1);
                if c.sessions.get() > 1 {
                    c.reconnects.add(1);
                }
                if let Some(since) = down_since.take() {
                    let down = started_at.saturating_duration_since(since);
                    c.disconnected_ns.add(down.as_nanos() as u64);
                }
                if started_at.elapsed() >= Duration::from_millis(STABLE_SESSION_MS) {
                    backoff.reset();
                }
            }
            let failure = match result {
                Ok(End::Stopped) | Err(Step::Stop) => return FeedEnd::Stopped,
                Err(Step::Failed(failure)) => failure,
            };
            if down_since.is_none() && c.sessions.get() > 0 {
                down_since = Some(Instant::now());
            }
            let index = FAILURE_LABELS
                .iter()
                .position(|&l| l == failure.label())
                .expect("Invariant: every failure has a label");
            c.failures[index].add(1);
            let delay = backoff.next(&failure);
            let opened_before = breaker.opened_count;
            let now_ns = tx.now().map_or(0, |now| now.0);
            tracing::warn!(
                url = %self.settings.url,
                failure = %failure,
                retry_in_ms = delay / 1_000_000,
                "upstream: session failed"
            );
            breaker.on_failure(now_ns, failure);
            if breaker.opened_count > opened_before {
                c.breaker_opened.add(1);
                tracing::error!(
                    url = %self.settings.url,
                    failures = self.settings.breaker_failures,
                    open_ms = self.settings.breaker_open_ms,
                    "upstream: circuit breaker open"
                );
            }
            self.set_health(false, &mut breaker, now_ns);
            if self.pause(tx, Duration::from_nanos(delay)).is_err() {
                return FeedEnd::Stopped;
            }
        }
    }
}
