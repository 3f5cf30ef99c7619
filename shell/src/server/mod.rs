//! The WebSocket server of PROTOCOL.md: one mio event loop thread, the only code that touches
//! mio (STYLE habits 12 and 13). One port serves the stream (`/stocks`, `/v1/stream`),
//! `/health` and `/metrics`.
//!
//! The emitter hands each cycle's [`FrameBatch`] to [`ServerSink`], which copies it into a
//! pooled, shared batch and passes it over an SPSC ring; the loop then builds, for each
//! subscribed connection, one JSON array of the frames it wants (split above
//! `frame_bytes_max`), so every event is encoded once and every client gets one message per
//! cycle. Writes are drained to `WouldBlock`.
//!
//! # Overflow
//! Each connection has an outbox of messages not yet taken by the socket. Past
//! `client_queue_max_bytes` the client is a slow consumer: its outbox is discarded, it gets a
//! close 4008 `slow consumer` if the socket takes it, and the TCP connection is dropped after
//! `close_timeout_ms` either way; counted in `slow_consumer_closes`. A client that never reads
//! thus holds at most its outbox limit plus the WebSocket write buffer, and delays no one.
//! The emitter → server ring holds [`BATCH_RING_CAPACITY`] batches; when it is full the
//! emitter waits (the loop drains it every iteration, whatever the clients do).

pub mod auth;
pub mod history;
pub mod http;
pub mod metrics;
pub mod session;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use self::auth::Authenticator;
use self::history::History;
use self::metrics::ServerCounters;
use self::session::{channel_index, Action, Phase, Session, AUTH_FAILED, CLOSE_POLICY, CONNECTED};
use crate::clock::Clock;
use crate::config::{ServerSettings, Settings, SlowConsumerPolicy};
use crate::emitter::{FrameBatch, FrameSink};
use crate::feed::upstream::UpstreamStatus;
use crate::feed::Feed;
use crate::idle::{IdleStrategy, Idler};
use crate::pipeline::{self, Observed, Report, StartError, TimeMode};
use crate::tracer::{Counters, Histograms};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Slab key `k` is token `k + FIRST_CONNECTION`.
const FIRST_CONNECTION: usize = 2;
/// mio events per poll.
const EVENTS_CAPACITY: usize = 1_024;
/// Connections accepted per iteration, at most.
const ACCEPT_BUDGET: usize = 256;
/// Messages read from one connection per readiness event, at most.
const READ_BUDGET_MESSAGES: usize = 64;
/// Batches fanned out per iteration, at most.
const FANOUT_BUDGET_BATCHES: usize = 16;
/// Emitter → server ring, in batches.
pub const BATCH_RING_CAPACITY: usize = 16;
/// Pooled shared batches: in the ring, in the loop's hands, and one being filled.
const BATCH_POOL_MAX: usize = BATCH_RING_CAPACITY + 4;
/// Timers (auth, ping, close deadlines) are swept this often, in ms.
const SWEEP_INTERVAL_MS: u64 = 10;
/// The loop wakes at least this often, in ms.
const POLL_TIMEOUT_MS: u64 = 10;
/// HTTP connections beyond `connections_max` that may be mid-request, at most.
const HTTP_CONNECTIONS_EXTRA: usize = 256;
/// tungstenite's own write buffer per connection; past it, messages wait in the outbox. At
/// least `frame_bytes_max + FRAME_SLACK_BYTES`, so that the largest message always fits an
/// empty buffer (a frame that never fits would never be sent).
const WRITE_BUFFER_BYTES_MAX: usize = 1 << 20;
/// How far a message may exceed `frame_bytes_max`: the event that crosses it (a replay
/// message stops after it), the closing bracket and the frame header.
const FRAME_SLACK_BYTES: usize = 4_096;

const _: () = assert!(tickstock_engine::limits::EVENT_JSON_BYTES_MAX + 16 < FRAME_SLACK_BYTES);
/// The engine counts as stalled when its clock is this far behind, in ns.
const STALL_NS: u64 = 5_000_000_000;
/// Close code: the connection limit is reached, try later.
const CLOSE_TRY_LATER: u16 = 1013;
/// Close code: slow consumer (PROTOCOL.md section 5).
const CLOSE_SLOW_CONSUMER: u16 = 4008;

const _: () = assert!(FANOUT_BUDGET_BATCHES <= BATCH_RING_CAPACITY);

/// The emitter's sink into the server.
///
/// When the fan-out is behind (every pooled batch still held, or the batch ring full) the
/// emitter waits with the default back-off (spin, yield, then sleeps doubling up to 1 ms)
/// rather than spinning on a core the fan-out needs, and counts the wait in `sink_waits`.
/// Its own lanes then fill, and their policy applies (`docs/pipeline.md`).
pub struct ServerSink {
    ring: rtrb::Producer<Arc<FrameBatch>>,
    pool: Vec<Arc<FrameBatch>>,
    waker: Arc<Waker>,
    batch_bytes: usize,
    idler: Idler,
    /// Whether the batch being handed over has waited (counted) already.
    waited: bool,
    counters: Arc<ServerCounters>,
}

impl std::fmt::Debug for ServerSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSink").field("pool", &self.pool.len()).finish()
    }
}

impl ServerSink {
    /// A batch no one else holds, taken out of the pool (allocated while the pool is small).
    fn free_batch(&mut self) -> io::Result<Arc<FrameBatch>> {
        loop {
            if let Some(index) = self.pool.iter().position(|batch| Arc::strong_count(batch) == 1) {
                return Ok(self.pool.swap_remove(index));
            }
            if self.pool.len() < BATCH_POOL_MAX {
                return Ok(Arc::new(FrameBatch::new(self.batch_bytes)));
            }
            self.wait()?;
        }
    }

    /// One round of waiting for the fan-out, counted once per batch.
    fn wait(&mut self) -> io::Result<()> {
        if self.ring.is_abandoned() {
            return Err(io::Error::other("the server has stopped"));
        }
        if !self.waited {
            self.waited = true;
            ServerCounters::add(&self.counters.sink_waits, 1);
        }
        self.idler.idle(0, || false);
        Ok(())
    }
}

impl FrameSink for ServerSink {
    fn emit(&mut self, batch: &FrameBatch) -> io::Result<()> {
        self.waited = false;
        let mut shared = self.free_batch()?;
        Arc::get_mut(&mut shared).expect("Invariant: a free batch has one owner").copy_from(batch);
        self.pool.push(Arc::clone(&shared));
        let mut item = shared;
        loop {
            match self.ring.push(item) {
                Ok(()) => break,
                Err(rtrb::PushError::Full(back)) => {
                    item = back;
                    self.wait()?;
                }
            }
        }
        // Work done: the next wait starts its back-off from the beginning.
        self.idler.idle(1, || true);
        self.waker.wake()
    }

    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    /// The server's counters.
    pub counters: Arc<ServerCounters>,
    /// The address it listens on.
    pub local_addr: SocketAddr,
}

impl ServerHandle {
    /// Closes every connection (1001 going away) and stops the loop.
    pub fn stop(self) {
        // Relaxed: the loop polls the flag after the wake-up below.
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

/// The server fed by a pipeline that runs on a thread of its own: `tickstock serve`, the
/// tests and the perf scenarios start it the same way.
#[derive(Debug)]
pub struct Service {
    /// The address the server listens on.
    pub local_addr: SocketAddr,
    /// The server's counters.
    pub counters: Arc<ServerCounters>,
    runner: JoinHandle<Result<Report, StartError>>,
}

impl Service {
    /// Starts the server, then the pipeline from `feed` into it. The pipeline stops when the
    /// feed ends or `stop` is raised; then the server closes its connections and stops.
    /// `status` is called every `stats_interval_ms` from the pipeline's thread.
    pub fn start(
        settings: &Settings,
        auth: Authenticator,
        feed: Box<dyn Feed>,
        time: TimeMode,
        stop: Arc<AtomicBool>,
        reporting: Reporting,
        status: impl FnMut(&Counters, &Histograms) + Send + 'static,
    ) -> io::Result<Service> {
        let batch_bytes = settings.pipeline.emitter_batch_bytes as usize;
        let (sink, handle) = start(&settings.server, auth, reporting.clone(), batch_bytes)?;
        let (local_addr, counters) = (handle.local_addr, Arc::clone(&handle.counters));
        let settings = settings.clone();
        let runner =
            std::thread::Builder::new().name("tickstock-main".to_owned()).spawn(move || {
                let sink = Box::new(sink);
                let observed = reporting.observed;
                let report =
                    pipeline::run_observed(&settings, feed, sink, time, stop, status, observed);
                handle.stop();
                report
            })?;
        Ok(Service { local_addr, counters, runner })
    }

    /// Waits until the pipeline has ended and the server has stopped.
    pub fn wait(self) -> Result<Report, StartError> {
        self.runner.join().unwrap_or_else(|_| {
            Err(StartError::Spawn(io::Error::other("the pipeline thread panicked")))
        })
    }
}

/// What the server reports on.
#[derive(Clone, Debug)]
pub struct Reporting {
    /// The pipeline's counters and histograms.
    pub observed: Observed,
    /// The upstream client's status, when the feed is upstream.
    pub upstream: Option<Arc<UpstreamStatus>>,
}

/// Binds the listener and starts the loop thread.
pub fn start(
    settings: &ServerSettings,
    auth: Authenticator,
    reporting: Reporting,
    batch_bytes: usize,
) -> io::Result<(ServerSink, ServerHandle)> {
    let address: SocketAddr =
        settings.listen.parse().map_err(|_| io::Error::other("bad server.listen"))?;
    let mut listener = TcpListener::bind(address)?;
    let local_addr = listener.local_addr()?;
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (ring_tx, ring_rx) = rtrb::RingBuffer::new(BATCH_RING_CAPACITY);
    let counters = Arc::new(ServerCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let bytes_max = settings.client_message_bytes_max as usize;
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(bytes_max))
        .max_frame_size(Some(bytes_max))
        .max_write_buffer_size(
            WRITE_BUFFER_BYTES_MAX.max(settings.frame_bytes_max as usize + FRAME_SLACK_BYTES),
        );
    let mut event_loop = Loop {
        poll,
        listener,
        connections: Slab::new(),
        batches: ring_rx,
        auth,
        settings: settings.clone(),
        counters: Arc::clone(&counters),
        reporting,
        started: Instant::now(),
        clock: Clock::new(),
        stop: Arc::clone(&stop),
        ws_config,
        ws_count: 0,
        subscriptions: 0,
        per_user: std::collections::HashMap::new(),
        history: History::new(
            settings.history_max_events as usize,
            settings.history_max_bytes as usize,
        ),
        channels: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("tickstock-server".to_owned())
        .spawn(move || event_loop.run())?;
    let sink = ServerSink {
        ring: ring_tx,
        pool: Vec::with_capacity(BATCH_POOL_MAX),
        waker: Arc::clone(&waker),
        batch_bytes,
        // Only times its own waits: nothing wakes it, so its thread handle is never used.
        idler: Idler::new(IdleStrategy::default()),
        waited: false,
        counters: Arc::clone(&counters),
    };
    Ok((sink, ServerHandle { thread, stop, waker, counters, local_addr }))
}

/// A connection in one of its phases.
enum Connection {
    /// Reading the HTTP request head.
    Http { stream: TcpStream, buf: Vec<u8>, deadline: Instant },
    /// Writing an HTTP response, then closing.
    Respond { stream: TcpStream, out: Vec<u8>, written: usize, deadline: Instant },
    /// A WebSocket session.
    Ws(Box<WsConnection>),
}

struct WsConnection {
    ws: WebSocket<TcpStream>,
    session: Session,
    /// Messages not yet taken by the socket, with the events each carries.
    outbox: VecDeque<(Message, u32)>,
    outbox_bytes: usize,
    /// Under the conflation policy, while the client is behind: the latest event per channel
    /// and symbol, and how many were dropped.
    conflation: Option<Conflation>,
    next_ping: Instant,
    ping_sent: Option<Instant>,
    subscriptions: usize,
    /// The user this connection counts against in `per_user`, once authenticated.
    counted_user: Option<String>,
    /// The first `seq` sent live, and the last.
    live: Option<(u64, u64)>,
    /// A resume in progress: live delivery waits until it has caught up.
    replay: Option<Replay>,
}

/// A resume being sent.
#[derive(Clone, Copy, Debug)]
struct Replay {
    from_seq: u64,
    /// The next `seq` to look at.
    next_seq: u64,
    /// Already sent live before the resume began: not sent again.
    skip: Option<(u64, u64)>,
    last_sent: Option<u64>,
}

struct Loop {
    poll: Poll,
    listener: TcpListener,
    connections: Slab<Connection>,
    batches: rtrb::Consumer<Arc<FrameBatch>>,
    auth: Authenticator,
    settings: ServerSettings,
    counters: Arc<ServerCounters>,
    reporting: Reporting,
    started: Instant,
    clock: Clock,
    stop: Arc<AtomicBool>,
    ws_config: WebSocketConfig,
    ws_count: usize,
    subscriptions: u64,
    /// Authenticated connections per user.
    per_user: std::collections::HashMap<String, u32>,
    /// What `resume` replays from.
    history: History,
    /// Channel index per frame of the batch being fanned out (reused).
    channels: Vec<usize>,
}

fn unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

impl Loop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut next_sweep = Instant::now();
        loop {
            // Relaxed: a polled flag.
            if self.stop.load(Ordering::Relaxed) {
                self.close_all();
                return;
            }
            if let Err(error) =
                self.poll.poll(&mut events, Some(Duration::from_millis(POLL_TIMEOUT_MS)))
            {
                if error.kind() != io::ErrorKind::Interrupted {
                    eprintln!("tickstock: server poll failed: {error}");
                    return;
                }
            }
            // The clock is read once per iteration.
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    Token(token) => self.ready(token - FIRST_CONNECTION, now),
                }
            }
            for _ in 0..FANOUT_BUDGET_BATCHES {
                let Ok(batch) = self.batches.pop() else { break };
                ServerCounters::add(&self.counters.batches, 1);
                self.fan_out(&batch, now);
            }
            if now >= next_sweep {
                self.sweep(now);
                next_sweep = now + Duration::from_millis(SWEEP_INTERVAL_MS);
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let (mut stream, _) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if would_block(&error) => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            ServerCounters::add(&self.counters.accepted, 1);
            if self.connections.len()
                >= self.settings.connections_max as usize + HTTP_CONNECTIONS_EXTRA
            {
                ServerCounters::add(&self.counters.refused_max_connections, 1);
                continue; // Dropped: closes the socket.
            }
            let _ = stream.set_nodelay(true);
            let entry = self.connections.vacant_entry();
            let token = Token(entry.key() + FIRST_CONNECTION);
            if self
                .poll
                .registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            let deadline = now + Duration::from_millis(self.settings.handshake_timeout_ms.into());
            entry.insert(Connection::Http { stream, buf: Vec::with_capacity(1_024), deadline });
        }
    }

    fn ready(&mut self, key: usize, now: Instant) {
        // Events for connections already removed are ignored (mio may still report them).
        let Some(connection) = self.connections.get_mut(key) else { return };
        let keep = match connection {
            Connection::Http { .. } => self.read_request(key, now),
            Connection::Respond { stream, out, written, .. } => write_out(stream, out, written),
            Connection::Ws(_) => self.ws_ready(key, now),
        };
        if !keep {
            self.remove(key);
        } else if let Some(Connection::Ws(c)) = self.connections.get(key) {
            if c.replay.is_some() {
                // The socket drained: send more of the replay.
                self.pump_replay(key, now);
            }
        }
    }

    /// Reads the request head; routes it when complete. Returns false to drop.
    fn read_request(&mut self, key: usize, now: Instant) -> bool {
        let Some(Connection::Http { stream, buf, .. }) = self.connections.get_mut(key) else {
            return false;
        };
        let mut chunk = [0u8; 2_048];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::REQUEST_BYTES_MAX {
                        break;
                    }
                }
                Err(error) if would_block(&error) => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        match http::parse(buf) {
            http::Parse::Partial => true,
            http::Parse::Bad(why) => {
                ServerCounters::add(&self.counters.bad_requests, 1);
                self.respond(key, "400 Bad Request", "text/plain", why, now)
            }
            http::Parse::Complete(request, len) => self.route(key, request, len, now),
        }
    }

    fn route(&mut self, key: usize, request: http::Request, len: usize, now: Instant) -> bool {
        match http::route(&request) {
            http::Route::Health => {
                let r = &self.reporting;
                let problem = metrics::unhealthy(
                    &r.observed,
                    r.upstream.as_deref(),
                    self.clock.now().0,
                    STALL_NS,
                );
                let body = metrics::health(
                    &r.observed,
                    &self.counters,
                    r.upstream.as_deref(),
                    self.started.elapsed().as_secs(),
                    problem.as_deref(),
                );
                let status = if problem.is_none() { "200 OK" } else { "503 Service Unavailable" };
                self.respond(key, status, "application/json", &body, now)
            }
            http::Route::Metrics => {
                let body = metrics::prometheus(
                    &self.reporting.observed,
                    &self.counters,
                    self.reporting.upstream.as_deref(),
                );
                self.respond(key, "200 OK", "text/plain; version=0.0.4", &body, now)
            }
            http::Route::NotFound => {
                self.respond(key, "404 Not Found", "text/plain", "not found", now)
            }
            http::Route::BadRequest(why) => {
                ServerCounters::add(&self.counters.bad_requests, 1);
                self.respond(key, "400 Bad Request", "text/plain", why, now)
            }
            http::Route::Stream => self.upgrade(key, &request, len, now),
        }
    }

    fn respond(
        &mut self,
        key: usize,
        status: &str,
        content_type: &str,
        body: &str,
        now: Instant,
    ) -> bool {
        ServerCounters::add(&self.counters.http_requests, 1);
        let Some(Connection::Http { .. }) = self.connections.get(key) else { return false };
        let Connection::Http { stream, .. } = self.connections.remove(key) else { return false };
        let mut out = http::response(status, content_type, body);
        let mut written = 0;
        let mut stream = stream;
        let done = !write_out(&mut stream, &mut out, &mut written);
        if done {
            let _ = self.poll.registry().deregister(&mut stream);
            return true; // Removed already.
        }
        let deadline = now + Duration::from_millis(self.settings.close_timeout_ms.into());
        let entry = self.connections.vacant_entry();
        debug_assert_eq!(entry.key(), key, "Invariant: the slot just freed is reused");
        entry.insert(Connection::Respond { stream, out, written, deadline });
        true
    }

    fn upgrade(&mut self, key: usize, request: &http::Request, len: usize, now: Instant) -> bool {
        let Connection::Http { mut stream, buf, .. } = self.connections.remove(key) else {
            return false;
        };
        let accept_key = request.websocket_key.as_deref().unwrap_or_default();
        if stream.write_all(&http::upgrade_response(accept_key)).is_err() {
            let _ = self.poll.registry().deregister(&mut stream);
            return true;
        }
        let leftover = buf[len..].to_vec();
        let ws =
            WebSocket::from_partially_read(stream, leftover, Role::Server, Some(self.ws_config));
        let auth_deadline = now + Duration::from_millis(self.settings.auth_timeout_ms.into());
        let next_ping = now + Duration::from_millis(self.settings.ping_interval_ms.into());
        let session = Session::new(
            auth_deadline,
            self.settings.client_errors_max,
            self.settings.client_messages_per_sec,
        );
        let connection = WsConnection {
            ws,
            session,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            conflation: None,
            next_ping,
            ping_sent: None,
            subscriptions: 0,
            counted_user: None,
            live: None,
            replay: None,
        };
        let entry = self.connections.vacant_entry();
        debug_assert_eq!(entry.key(), key, "Invariant: the slot just freed is reused");
        entry.insert(Connection::Ws(Box::new(connection)));
        self.ws_count += 1;
        if self.ws_count > self.settings.connections_max as usize {
            ServerCounters::add(&self.counters.refused_max_connections, 1);
            let status =
                r#"[{"ev":"status","status":"max_connections","message":"too many connections"}]"#;
            self.apply(
                key,
                vec![
                    Action::Send(status.to_owned()),
                    Action::Close(CLOSE_TRY_LATER, "try again later"),
                ],
                now,
            );
            return true;
        }
        self.publish_connections();
        let mut actions = vec![Action::Send(CONNECTED.to_owned())];
        if let Some(token) = &request.bearer {
            actions.extend(
                self.with_session(key, |session, auth| session.authenticate(token, auth, unix_s())),
            );
        }
        self.apply(key, actions, now);
        self.check_user_limit(key, now);
        true
    }

    /// Counts a newly authenticated connection against its user; past
    /// `connections_per_user_max` it gets `max_connections` and close 1013.
    fn check_user_limit(&mut self, key: usize, now: Instant) {
        let Some(Connection::Ws(c)) = self.connections.get_mut(key) else { return };
        let Some(identity) = &c.session.identity else { return };
        if c.counted_user.is_some() || c.session.phase != Phase::Active {
            return;
        }
        let user = identity.user.clone();
        let count = self.per_user.entry(user.clone()).or_insert(0);
        *count += 1;
        c.counted_user = Some(user);
        if *count > self.settings.connections_per_user_max {
            ServerCounters::add(&self.counters.refused_max_connections, 1);
            let status = r#"[{"ev":"status","status":"max_connections","message":"too many connections for this user"}]"#;
            let close = Action::Close(CLOSE_TRY_LATER, "try again later");
            self.apply(key, vec![Action::Send(status.to_owned()), close], now);
        }
    }

    /// Runs `f` on a connection's session and counts what changed.
    fn with_session(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut Session, &Authenticator) -> Vec<Action>,
    ) -> Vec<Action> {
        let Some(Connection::Ws(c)) = self.connections.get_mut(key) else { return Vec::new() };
        let was_waiting = matches!(c.session.phase, Phase::AwaitingAuth { .. });
        let errors_before = c.session.errors();
        let actions = f(&mut c.session, &self.auth);
        let counters = &self.counters;
        if was_waiting && c.session.phase == Phase::Active {
            ServerCounters::add(&counters.auth_successes, 1);
        }
        if actions.contains(&Action::Close(CLOSE_POLICY, "authentication failed")) {
            ServerCounters::add(&counters.auth_failures, 1);
        }
        ServerCounters::add(&counters.client_errors, u64::from(c.session.errors() - errors_before));
        let count = c.session.subscription_count();
        self.subscriptions = self.subscriptions + count as u64 - c.subscriptions as u64;
        c.subscriptions = count;
        ServerCounters::set(&counters.subscriptions, self.subscriptions);
        actions
    }

    /// Queues sends and closes, then flushes.
    fn apply(&mut self, key: usize, actions: Vec<Action>, now: Instant) {
        let close_timeout = Duration::from_millis(self.settings.close_timeout_ms.into());
        let oldest = self.history.oldest_seq();
        let newest = self.history.newest_seq();
        let Some(Connection::Ws(c)) = self.connections.get_mut(key) else { return };
        let mut keep = true;
        let mut resumed = false;
        for action in actions {
            match action {
                Action::Resume(from_seq) => {
                    if oldest.is_some_and(|oldest| from_seq < oldest) {
                        let failed = format!(
                            r#"[{{"ev":"status","status":"resume_failed","oldest_seq":{}}}]"#,
                            oldest.unwrap_or(0)
                        );
                        c.outbox_bytes += failed.len();
                        c.outbox.push_back((Message::text(failed), 0));
                    } else {
                        let skip = c.live.map(|(first, _)| (first, newest.unwrap_or(0)));
                        c.replay =
                            Some(Replay { from_seq, next_seq: from_seq, skip, last_sent: None });
                        resumed = true;
                    }
                }
                Action::Send(text) => {
                    c.outbox_bytes += text.len();
                    c.outbox.push_back((Message::text(text), 0));
                }
                Action::Close(code, reason) => {
                    keep &= flush(c, &self.counters);
                    let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = c.ws.close(Some(frame));
                    c.session.phase = Phase::Closing { deadline: now + close_timeout };
                    break;
                }
            }
        }
        keep &= flush(c, &self.counters);
        if !keep {
            self.remove(key);
        } else if resumed {
            self.pump_replay(key, now);
        }
    }

    /// Sends more of a connection's replay while its outbox has room; finishes it with
    /// `resumed` once it has caught up with the history's newest event.
    fn pump_replay(&mut self, key: usize, now: Instant) {
        let queue_max = self.settings.client_queue_max_bytes as usize;
        let frame_bytes_max = self.settings.frame_bytes_max as usize;
        let Some(Connection::Ws(c)) = self.connections.get_mut(key) else { return };
        let Some(mut replay) = c.replay else { return };
        if self.history.oldest_seq().is_some_and(|oldest| replay.next_seq < oldest) {
            // The history moved past the replay: it cannot finish without a gap.
            c.replay = None;
            self.slow_consumer(key, now);
            return;
        }
        while c.outbox_bytes < queue_max / 2 {
            let mut message = String::new();
            let mut examined = None;
            for entry in self.history.from_seq(replay.next_seq) {
                examined = Some(entry.seq);
                let skipped =
                    replay.skip.is_some_and(|(first, last)| (first..=last).contains(&entry.seq));
                let wanted = !skipped
                    && c.session.wants(entry.channel, entry.ticker.as_str())
                    && c.session.filter.passes(
                        entry.channel,
                        entry.price_raw,
                        entry.volume,
                        entry.strength,
                    );
                if wanted {
                    message.push(if message.is_empty() { '[' } else { ',' });
                    self.history.push_json(entry, &mut message);
                    replay.last_sent = Some(entry.seq);
                }
                if message.len() >= frame_bytes_max {
                    break;
                }
            }
            if !message.is_empty() {
                message.push(']');
                c.outbox_bytes += message.len();
                c.outbox.push_back((Message::text(message), 0));
            }
            match examined {
                Some(seq) if Some(seq) != self.history.newest_seq() => replay.next_seq = seq + 1,
                _ => {
                    let to_seq = replay.last_sent.unwrap_or(replay.from_seq.saturating_sub(1));
                    let done = format!(
                        r#"[{{"ev":"status","status":"resumed","from_seq":{},"to_seq":{to_seq}}}]"#,
                        replay.from_seq
                    );
                    c.outbox_bytes += done.len();
                    c.outbox.push_back((Message::text(done), 0));
                    if let Some(newest) = self.history.newest_seq() {
                        // Live again from the next batch on: everything up to here was replayed.
                        c.live = Some((c.live.map_or(newest + 1, |(first, _)| first), newest));
                    }
                    c.replay = None;
                    let _ = flush(c, &self.counters);
                    return;
                }
            }
        }
        c.replay = Some(replay);
        let _ = flush(c, &self.counters);
    }

    fn slow_consumer(&mut self, key: usize, now: Instant) {
        let close_timeout = Duration::from_millis(self.settings.close_timeout_ms.into());
        let conflate = self.settings.slow_consumer_policy == SlowConsumerPolicy::Conflate;
        let Some(Connection::Ws(c)) = self.connections.get_mut(key) else { return };
        ServerCounters::add(&self.counters.slow_consumer_dropped_bytes, c.outbox_bytes as u64);
        let discarded: u64 = c.outbox.drain(..).map(|(_, events)| u64::from(events)).sum();
        c.outbox_bytes = 0;
        if conflate && c.replay.is_none() {
            // Keep the connection; from now on only the latest event per channel and symbol
            // is kept until the socket drains.
            let conflation = c.conflation.get_or_insert_with(Conflation::default);
            conflation.dropped += discarded;
            ServerCounters::add(&self.counters.conflated_events, discarded);
            return;
        }
        ServerCounters::add(&self.counters.slow_consumer_closes, 1);
        let frame = CloseFrame {
            code: CloseCode::from(CLOSE_SLOW_CONSUMER),
            reason: "slow consumer".into(),
        };
        let _ = c.ws.close(Some(frame));
        c.session.phase = Phase::Closing { deadline: now + close_timeout };
        let _ = c.ws.flush();
    }

    fn ws_ready(&mut self, key: usize, now: Instant) -> bool {
        for _ in 0..READ_BUDGET_MESSAGES {
            let Some(Connection::Ws(c)) = self.connections.get_mut(key) else { return false };
            let message = match c.ws.read() {
                Ok(message) => message,
                Err(tungstenite::Error::Io(error)) if would_block(&error) => break,
                Err(error) => return self.read_failed(key, error, now),
            };
            match message {
                Message::Text(text) => {
                    let now_s = unix_s();
                    let actions =
                        self.with_session(key, |session, auth| match session.admit(now) {
                            Ok(()) => session.on_text(text.as_str(), auth, now_s),
                            Err(refused) => refused,
                        });
                    self.apply(key, actions, now);
                    self.check_user_limit(key, now);
                }
                Message::Binary(_) => {
                    let actions =
                        self.with_session(key, |session, auth| session.on_text("binary", auth, 0));
                    self.apply(key, actions, now);
                }
                Message::Pong(_) => c.ping_sent = None,
                Message::Close(_) => {
                    // tungstenite has queued the echo; the flush below sends it.
                    c.session.phase = Phase::Closing {
                        deadline: now
                            + Duration::from_millis(self.settings.close_timeout_ms.into()),
                    };
                }
                Message::Ping(_) | Message::Frame(_) => {}
            }
        }
        match self.connections.get_mut(key) {
            Some(Connection::Ws(c)) => flush(c, &self.counters),
            _ => false,
        }
    }

    /// A read error: a protocol violation gets its close code; anything else drops.
    fn read_failed(&mut self, key: usize, error: tungstenite::Error, now: Instant) -> bool {
        use tungstenite::error::ProtocolError;
        let code = match error {
            tungstenite::Error::Capacity(_) => 1009,
            tungstenite::Error::Utf8(_) => 1007,
            tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient) => 1002,
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                return false
            }
            tungstenite::Error::Protocol(_) => 1002,
            _ => return false,
        };
        ServerCounters::add(&self.counters.protocol_closes, 1);
        let reason = match code {
            1009 => "message too big",
            1007 => "invalid UTF-8",
            _ => "protocol error",
        };
        self.apply(key, vec![Action::Close(code, reason)], now);
        self.connections.contains(key)
    }

    fn fan_out(&mut self, batch: &FrameBatch, now: Instant) {
        self.channels.clear();
        self.channels.extend(
            batch.frames().iter().map(|frame| channel_index(frame.channel).unwrap_or(usize::MAX)),
        );
        // History first: a resume that starts after this batch finds it there.
        self.history.append(batch, &self.channels);
        let frame_bytes_max = self.settings.frame_bytes_max as usize;
        let queue_max = self.settings.client_queue_max_bytes as usize;
        let mut dropped = Vec::new();
        let mut slow = Vec::new();
        let mut replaying = Vec::new();
        for (key, connection) in &mut self.connections {
            let Connection::Ws(c) = connection else { continue };
            if c.replay.is_some() {
                // Live delivery waits; the replay reads this batch from the history.
                replaying.push(key);
                continue;
            }
            if !c.session.subscribed() {
                continue;
            }
            let mut arrays = Arrays::new(frame_bytes_max);
            let mut seqs = None;
            for (frame, &channel) in batch.frames().iter().zip(&self.channels) {
                let session = &c.session;
                if !session.wants(channel, frame.ticker.as_str())
                    || !session.filter.passes(
                        channel,
                        frame.price_raw,
                        frame.volume,
                        frame.strength,
                    )
                {
                    continue;
                }
                let json = std::str::from_utf8(batch.json(frame)).unwrap_or("{}");
                seqs = Some((seqs.map_or(frame.seq, |(first, _)| first), frame.seq));
                if let Some(conflation) = &mut c.conflation {
                    conflation.keep(channel, frame.ticker, frame.seq, json);
                    continue;
                }
                arrays.push(json, &mut c.outbox, &mut c.outbox_bytes);
            }
            if let Some((first, last)) = seqs {
                c.live = Some((c.live.map_or(first, |(earliest, _)| earliest), last));
            }
            let events = arrays.finish(&mut c.outbox, &mut c.outbox_bytes);
            ServerCounters::add(&self.counters.events_out, events);
            if c.outbox_bytes > queue_max {
                slow.push(key);
            } else if !flush(c, &self.counters) {
                dropped.push(key);
            } else if c.conflation.is_some() && c.outbox_bytes < queue_max / 4 {
                release_conflation(c, frame_bytes_max, &self.counters);
            }
        }
        for key in slow {
            self.slow_consumer(key, now);
        }
        for key in dropped {
            self.remove(key);
        }
        for key in replaying {
            self.pump_replay(key, now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        let now_s = unix_s();
        let mut due: Vec<(usize, Vec<Action>)> = Vec::new();
        let mut dropped = Vec::new();
        let pong_timeout = Duration::from_millis(self.settings.pong_timeout_ms.into());
        let ping_interval = Duration::from_millis(self.settings.ping_interval_ms.into());
        for (key, connection) in &mut self.connections {
            match connection {
                Connection::Http { deadline, .. } if now >= *deadline => {
                    ServerCounters::add(&self.counters.handshake_timeouts, 1);
                    dropped.push(key);
                }
                Connection::Respond { deadline, .. } if now >= *deadline => dropped.push(key),
                Connection::Ws(c) => match c.session.phase {
                    Phase::AwaitingAuth { deadline } if now >= deadline => {
                        ServerCounters::add(&self.counters.auth_timeouts, 1);
                        due.push((
                            key,
                            vec![
                                Action::Send(AUTH_FAILED.to_owned()),
                                Action::Close(CLOSE_POLICY, "authentication timeout"),
                            ],
                        ));
                    }
                    Phase::Closing { deadline } if now >= deadline => dropped.push(key),
                    Phase::Active
                        if c.session
                            .identity
                            .as_ref()
                            .and_then(|i| i.expires_at_s)
                            .is_some_and(|exp| exp < now_s) =>
                    {
                        let expired = r#"[{"ev":"status","status":"token_expired","message":"token expired"}]"#;
                        due.push((
                            key,
                            vec![
                                Action::Send(expired.to_owned()),
                                Action::Close(CLOSE_POLICY, "token expired"),
                            ],
                        ));
                    }
                    Phase::Active | Phase::AwaitingAuth { .. } => {
                        if c.ping_sent.is_some_and(|sent| now.duration_since(sent) >= pong_timeout)
                        {
                            ServerCounters::add(&self.counters.pong_timeouts, 1);
                            dropped.push(key);
                        } else if now >= c.next_ping {
                            let _ = c.ws.write(Message::Ping(Default::default()));
                            c.ping_sent.get_or_insert(now);
                            c.next_ping = now + ping_interval;
                            if !flush(c, &self.counters) {
                                dropped.push(key);
                            }
                        }
                    }
                    Phase::Closing { .. } => {}
                },
                _ => {}
            }
        }
        for (key, actions) in due {
            self.apply(key, actions, now);
        }
        for key in dropped {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: usize) {
        if !self.connections.contains(key) {
            return;
        }
        match self.connections.remove(key) {
            Connection::Http { mut stream, .. } | Connection::Respond { mut stream, .. } => {
                let _ = self.poll.registry().deregister(&mut stream);
            }
            Connection::Ws(mut c) => {
                let _ = self.poll.registry().deregister(c.ws.get_mut());
                if let Some(user) = c.counted_user.take() {
                    if let Some(count) = self.per_user.get_mut(&user) {
                        *count -= 1;
                        if *count == 0 {
                            self.per_user.remove(&user);
                        }
                    }
                }
                self.ws_count -= 1;
                self.subscriptions -= c.subscriptions as u64;
                ServerCounters::set(&self.counters.subscriptions, self.subscriptions);
                self.publish_connections();
            }
        }
    }

    fn publish_connections(&self) {
        let open = self.ws_count.min(self.settings.connections_max as usize);
        ServerCounters::set(&self.counters.connections, open as u64);
    }

    fn close_all(&mut self) {
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        for key in keys {
            if let Some(Connection::Ws(c)) = self.connections.get_mut(key) {
                let frame =
                    CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                let _ = c.ws.close(Some(frame));
                let _ = c.ws.flush();
            }
            self.remove(key);
        }
    }
}

/// A slow client's latest event per channel and symbol (the conflation policy).
#[derive(Debug, Default)]
struct Conflation {
    latest: std::collections::HashMap<(usize, tickstock_engine::Ticker), (u64, String)>,
    /// Events lost in all, told to the client when it catches up.
    dropped: u64,
    /// Of those, the ones replaced in `latest` and not yet on `conflated_events`.
    replaced: u64,
}

impl Conflation {
    fn keep(&mut self, channel: usize, ticker: tickstock_engine::Ticker, seq: u64, json: &str) {
        let replaced =
            u64::from(self.latest.insert((channel, ticker), (seq, json.to_owned())).is_some());
        self.dropped += replaced;
        self.replaced += replaced;
    }
}

/// The client caught up: a `conflated` status with the count lost, then the latest events in
/// `seq` order.
fn release_conflation(c: &mut WsConnection, frame_bytes_max: usize, counters: &ServerCounters) {
    let Some(conflation) = c.conflation.take() else { return };
    ServerCounters::add(&counters.conflated_events, conflation.replaced);
    let status =
        format!(r#"[{{"ev":"status","status":"conflated","dropped":{}}}]"#, conflation.dropped);
    c.outbox_bytes += status.len();
    c.outbox.push_back((Message::text(status), 0));
    let mut latest: Vec<(u64, String)> = conflation.latest.into_values().collect();
    latest.sort_unstable_by_key(|(seq, _)| *seq);
    let mut arrays = Arrays::new(frame_bytes_max);
    for (_, json) in latest {
        arrays.push(&json, &mut c.outbox, &mut c.outbox_bytes);
    }
    arrays.finish(&mut c.outbox, &mut c.outbox_bytes);
    let _ = flush(c, counters);
}

/// One client's JSON arrays for a cycle, split above `frame_bytes_max`, into its outbox.
struct Arrays {
    message: String,
    in_message: u32,
    events: u64,
    frame_bytes_max: usize,
}

impl Arrays {
    fn new(frame_bytes_max: usize) -> Arrays {
        Arrays { message: String::new(), in_message: 0, events: 0, frame_bytes_max }
    }

    /// Appends one event's object, sending the array first if the event would not fit.
    fn push(&mut self, json: &str, outbox: &mut VecDeque<(Message, u32)>, bytes: &mut usize) {
        if !self.message.is_empty() && self.message.len() + json.len() + 2 > self.frame_bytes_max {
            self.close(outbox, bytes);
        }
        self.message.push(if self.message.is_empty() { '[' } else { ',' });
        self.message.push_str(json);
        self.in_message += 1;
        self.events += 1;
    }

    fn close(&mut self, outbox: &mut VecDeque<(Message, u32)>, bytes: &mut usize) {
        self.message.push(']');
        *bytes += self.message.len();
        outbox.push_back((Message::text(std::mem::take(&mut self.message)), self.in_message));
        self.in_message = 0;
    }

    /// Sends what is left; returns the events in all.
    fn finish(mut self, outbox: &mut VecDeque<(Message, u32)>, bytes: &mut usize) -> u64 {
        if !self.message.is_empty() {
            self.close(outbox, bytes);
        }
        self.events
    }
}

/// Writes an HTTP response; returns false once it is all written (or failed): drop then.
fn write_out(stream: &mut TcpStream, out: &mut [u8], written: &mut usize) -> bool {
    while *written < out.len() {
        match stream.write(&out[*written..]) {
            Ok(0) => return false,
            Ok(n) => *written += n,
            Err(error) if would_block(&error) => return true,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    false
}

/// Moves the outbox into the socket until the outbox is empty or the socket would block.
/// False when the connection is dead.
///
/// Readiness is edge-triggered: the loop hears of this socket again only after a write has
/// hit `WouldBlock`. So when tungstenite's write buffer fills, is written out whole, and the
/// outbox still holds messages, this goes round again rather than waiting for an edge that
/// will not come (which would leave a backlog stuck until the next batch).
///
/// A message that does not fit tungstenite's buffer right after the buffer went out whole can
/// never fit (the buffer is sized above the largest message, so this is a defect, not a
/// client's doing): the connection is given up rather than retried forever.
fn flush(c: &mut WsConnection, counters: &ServerCounters) -> bool {
    let mut buffer_emptied = false;
    loop {
        let mut buffer_full = false;
        while let Some((message, events)) = c.outbox.pop_front() {
            let len = message.len();
            match c.ws.write(message) {
                Ok(()) => {}
                Err(tungstenite::Error::WriteBufferFull(_)) if buffer_emptied => return false,
                Err(tungstenite::Error::WriteBufferFull(back)) => {
                    // tungstenite hands back the message as a frame, header included: account
                    // for what is queued now, so the count matches what later leaves.
                    c.outbox_bytes = c.outbox_bytes - len + back.len();
                    c.outbox.push_front((*back, events));
                    buffer_full = true;
                    break;
                }
                // Buffered in tungstenite; it goes out on a later flush.
                Err(tungstenite::Error::Io(error)) if would_block(&error) => {}
                Err(_) => return false,
            }
            // In tungstenite's buffer now, so the buffer is no longer known to be empty.
            buffer_emptied = false;
            c.outbox_bytes -= len;
            ServerCounters::add(&counters.messages_out, 1);
            ServerCounters::add(&counters.bytes_out, len as u64);
        }
        match c.ws.flush() {
            // All of tungstenite's buffer went out without blocking: more may follow.
            Ok(()) if buffer_full => buffer_emptied = true,
            Ok(()) => return true,
            Err(tungstenite::Error::Io(error)) if would_block(&error) => return true,
            Err(_) => return false,
        }
    }
}
