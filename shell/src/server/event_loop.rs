//! The event loop: the only code that touches mio (STYLE habits 12 and 13). Each of the
//! `server.threads` loops owns a shard of the connections, its own [`Fanout`] (groups, topic
//! index, history) and a ring of the emitter's batches; the first loop also owns the listener
//! and spreads accepted sockets over all loops, round-robin.
//!
//! A connection is first HTTP (reading its request head), then either a response being
//! written or a WebSocket [`Subscriber`]; it changes phase in place, under the same slab key.
//! Readiness is edge-triggered: every socket is read until `WouldBlock`, or, when its read
//! budget runs out first, put on the ready list and read again next iteration (before the
//! loop sleeps), so no socket is forgotten and no socket starves the others. Writes go
//! until `WouldBlock`; then the connection waits for its writable edge.

use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use tungstenite::protocol::WebSocketConfig;

use super::auth::{Authenticator, Credentials};
use super::dashboard;
use super::deflate;
use super::event_log::{EventLogCounters, EventLogReader};
use super::fanout::Fanout;
use super::framing::Slices;
use super::history::History;
use super::http;
use super::linger::Linger;
use super::metrics::{self, ServerCounters, ServerStats};
use super::service::Reporting;
use super::subscriber::{Env, Subscriber, Users};
use super::transport::Transport;
use super::universes::{UniverseFile, Universes};
use crate::clock::Clock;
use crate::config::{CompressionMode, ServerSettings};
use crate::database::aggs::{self, AggsError};
use crate::database::pool::{Answer, Job, QueryPool};
use crate::database::DatabaseStatus;
use crate::emitter::FrameBatch;
use crate::tracer::LocalHistogram;

/// The listener's token (first loop only).
pub const LISTENER: Token = Token(0);
/// The waker's token.
pub const WAKER: Token = Token(1);
/// Slab key `k` is token `k + FIRST_CONNECTION`.
const FIRST_CONNECTION: usize = 2;
/// mio events per poll.
const EVENTS_CAPACITY: usize = 1_024;
/// Connections accepted per iteration, at most; the rest wait for the next iteration.
const ACCEPT_BUDGET: usize = 256;
/// Socket reads per connection per iteration, at most; the rest wait on the ready list.
const READ_BUDGET_CHUNKS: usize = 4;
/// Time per iteration for reading the ready list (requests, handshakes, client messages)
/// before the fan-out and writes; the rest waits for the next iteration, which polls without
/// sleeping. A burst of 10,000 connects then holds a stream back by about this, not by the
/// burst's whole handshake work.
const READ_SLICE: Duration = Duration::from_micros(500);
/// Time per iteration for the background writes (turns past `client_write_turn_bytes`,
/// sockets writable again, paced replays and holds that are due) after the fan-out and the
/// live writes. Both slices give way after each connection to a batch from the emitter, so
/// a live stream waits behind at most one connection's read or write of them, and a storm
/// of resumes is spread over the iterations rather than sent in one.
const WRITE_SLICE: Duration = Duration::from_micros(500);
/// Bytes per socket read.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Batches fanned out per iteration, at most.
const FANOUT_BUDGET_BATCHES: usize = 16;
/// Timers (auth, ping, close and expiry deadlines, retention by age) are swept this often,
/// in ms: their precision. Each sweep visits every connection, so it is not more often (the
/// ends of subscribe holds and paced replays' next slices, which want a finer clock, have a
/// list of their own: `wakes`).
const SWEEP_INTERVAL_MS: u64 = 50;
/// The loop wakes at least this often, in ms.
const POLL_TIMEOUT_MS: u64 = 10;
/// HTTP connections beyond `connections_max` that may be mid-request, at most.
const HTTP_CONNECTIONS_EXTRA: usize = 256;
/// The engine counts as stalled when its clock is this far behind, in ns.
const STALL_NS: u64 = 5_000_000_000;

const _: () = assert!(FANOUT_BUDGET_BATCHES <= super::sink::BATCH_RING_CAPACITY);

/// What every loop shares.
#[derive(Debug)]
pub struct Shared {
    /// Token checks, swapped on reload.
    pub credentials: Arc<Credentials>,
    /// The universes, swapped on reload.
    pub universes: Arc<UniverseFile>,
    /// The event log's reader and counters, when there is one.
    pub event_log: Option<(EventLogReader, Arc<EventLogCounters>)>,
    /// The database sink's state and the aggregates endpoint's threads, when there is one.
    pub database: Option<(Arc<DatabaseStatus>, Arc<QueryPool>)>,
    /// The settings.
    pub settings: ServerSettings,
    /// What `/health` and `/metrics` report on.
    pub reporting: Reporting,
    /// Every loop's counters.
    pub stats: ServerStats,
    /// Connections per user.
    pub users: Users,
    /// WebSocket connections over all loops (for `connections_max`).
    pub ws_count: AtomicUsize,
    /// When the server started.
    pub started: Instant,
    /// Stops every loop.
    pub stop: AtomicBool,
}

/// Where the first loop hands a socket to another.
#[derive(Debug)]
pub struct Handoff {
    /// Sockets for that loop.
    pub sockets: mpsc::Sender<std::net::TcpStream>,
    /// Wakes it.
    pub waker: Arc<Waker>,
}

/// A connection in one of its phases.
enum Connection {
    /// Reading the HTTP request head.
    Http { stream: Transport, buf: Vec<u8>, deadline: Instant },
    /// Writing an HTTP response, then closing.
    Respond { stream: Transport, out: Vec<u8>, written: usize, deadline: Instant },
    /// Waiting for the answer of the query threads (`/v2/aggs`); `serial` tells its answer
    /// from one meant for an earlier connection in the same slot.
    Querying { stream: Transport, serial: u64, deadline: Instant },
    /// A WebSocket session: `blocked` until the socket is writable again; `queued` while it
    /// is on the loop's `write_again` list; `wake`, the instant it is listed for in `wakes`.
    Ws {
        stream: Transport,
        subscriber: Box<Subscriber>,
        blocked: bool,
        queued: bool,
        wake: Option<Instant>,
    },
    /// Between phases (never seen outside one method).
    Gone,
}

/// A query thread's answer for a connection: its key, its serial, the answer.
type QueryAnswer = (usize, u64, Answer);

/// One event loop.
pub struct EventLoop {
    index: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    listener_ready: bool,
    /// The other loops (first loop only).
    handoff: Vec<Handoff>,
    next_loop: usize,
    incoming: mpsc::Receiver<std::net::TcpStream>,
    connections: Slab<Connection>,
    /// Connections to read: those with events, and those whose read budget ran out before
    /// `WouldBlock`; read in order, `READ_SLICE` per iteration (a connection may be listed
    /// twice: the second read finds `WouldBlock`).
    ready: VecDeque<usize>,
    /// Connections to write after the live writes, in `WRITE_SLICE`: those whose write
    /// stopped at `client_write_turn_bytes` with more to send (not at `WouldBlock`, so no
    /// readiness event will come), and those whose socket is writable again. Each is listed
    /// once (`Connection::Ws::queued`).
    write_again: VecDeque<usize>,
    batches: rtrb::Consumer<Arc<FrameBatch>>,
    fanout: Fanout,
    shared: Arc<Shared>,
    ws_config: WebSocketConfig,
    subscriptions: u64,
    ws_here: u64,
    linger: Linger,
    /// Connections that want the loop back at an instant (`Subscriber::wake_at`): the end
    /// of a hold on live delivery (`resume_window_us`), a paced replay's next slice. In time
    /// order; an entry counts only while it is its connection's `wake` (a removed
    /// connection's, or one superseded by an earlier instant, is passed over).
    wakes: BTreeSet<(Instant, usize)>,
    read_buf: Box<[u8]>,
    clock: Clock,
    /// Reused list of group ids.
    scratch: Vec<usize>,
    /// Wall-clock Unix seconds, read once per iteration (token expiry).
    now_s: u64,
    /// The credentials this loop checks tokens with; compared with the current ones each
    /// sweep.
    auth: Arc<Authenticator>,
    /// The TLS configuration new connections get (`None`: plain); refreshed each sweep.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// The universes this loop's subscriptions expand; compared with the current ones each
    /// sweep.
    universes: Arc<Universes>,
    /// Tick-to-client latency of this loop's writes, merged into the shared histogram.
    tick_to_client: LocalHistogram,
    next_publish: Instant,
    /// This loop's waker (the query threads wake it with their answers).
    waker: Arc<Waker>,
    /// Answers of the query threads: the connection, its serial, the answer.
    answers: (mpsc::Sender<QueryAnswer>, mpsc::Receiver<QueryAnswer>),
    next_serial: u64,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("index", &self.index)
            .field("connections", &self.connections.len())
            .finish()
    }
}

fn unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

/// The environment a Subscriber works in, from the loop's fields.
macro_rules! env {
    ($self:ident) => {
        Env {
            fanout: &mut $self.fanout,
            auth: &$self.auth,
            settings: &$self.shared.settings,
            counters: $self.shared.stats.of_loop($self.index),
            users: &$self.shared.users,
            subscriptions: &mut $self.subscriptions,
            now_s: $self.now_s,
            universes: &$self.universes,
            event_log: $self.shared.event_log.as_ref().map(|(reader, _)| reader),
        }
    };
}

/// The pieces of a new loop.
#[derive(Debug)]
pub struct Parts {
    /// Its index among the loops.
    pub index: usize,
    /// Its poll (the waker is registered on it already).
    pub poll: Poll,
    /// The listener, for the first loop.
    pub listener: Option<TcpListener>,
    /// The other loops, for the first loop.
    pub handoff: Vec<Handoff>,
    /// Sockets handed to it.
    pub incoming: mpsc::Receiver<std::net::TcpStream>,
    /// The emitter's batches.
    pub batches: rtrb::Consumer<Arc<FrameBatch>>,
    /// Its waker.
    pub waker: Arc<Waker>,
}

impl EventLoop {
    /// A loop over `parts`.
    pub fn new(parts: Parts, shared: Arc<Shared>) -> EventLoop {
        let settings = &shared.settings;
        let bytes_max = settings.client_message_bytes_max as usize;
        // Small read buffers: an idle connection holds little (tungstenite grows them for a
        // large client message and keeps them; client messages are at most 64 KiB).
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4_096)
            .write_buffer_size(0)
            .max_message_size(Some(bytes_max))
            .max_frame_size(Some(bytes_max));
        let history =
            History::new(settings.history_max_events as usize, settings.history_max_bytes as usize);
        let now = Instant::now();
        EventLoop {
            index: parts.index,
            poll: parts.poll,
            listener: parts.listener,
            listener_ready: false,
            handoff: parts.handoff,
            next_loop: 0,
            incoming: parts.incoming,
            connections: Slab::new(),
            ready: VecDeque::new(),
            write_again: VecDeque::new(),
            batches: parts.batches,
            fanout: Fanout::new(settings.frame_bytes_max as usize, history)
                .with_compression_min_bytes(settings.compression_min_bytes as usize),
            linger: Linger::new(now, settings.client_linger_us, settings.client_writes_per_sec_max),
            ws_config,
            subscriptions: 0,
            ws_here: 0,
            wakes: BTreeSet::new(),
            read_buf: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            clock: Clock::new(),
            scratch: Vec::new(),
            now_s: unix_s(),
            auth: shared.credentials.current(),
            tls: shared.credentials.tls(),
            universes: shared.universes.current(),
            tick_to_client: LocalHistogram::default(),
            next_publish: now,
            waker: parts.waker,
            answers: mpsc::channel(),
            next_serial: 0,
            shared,
        }
    }

    fn counters(&self) -> &ServerCounters {
        self.shared.stats.of_loop(self.index)
    }

    /// Runs until the stop flag is raised; then closes every connection (1001).
    pub fn run(&mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut next_sweep = Instant::now();
        let mut released = Vec::new();
        loop {
            // Relaxed: a polled flag; the waker that follows its store makes the loop look.
            if self.shared.stop.load(Ordering::Relaxed) {
                self.close_all(Instant::now());
                return;
            }
            let timeout = self.poll_timeout(next_sweep);
            if let Err(error) = self.poll.poll(&mut events, Some(timeout)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(%error, "server poll failed");
                    return;
                }
            }
            // The clocks are read once per iteration.
            let now = Instant::now();
            self.now_s = unix_s();
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.listener_ready = true,
                    WAKER => woken = true,
                    Token(token) => {
                        // A hang-up or an error is found by the read.
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.ready_event(token - FIRST_CONNECTION, readable);
                    }
                }
            }
            while let Ok(stream) = self.incoming.try_recv() {
                self.register(TcpStream::from_std(stream), now);
            }
            // A query thread wakes the loop after each answer it sends.
            while let Some(Ok((key, serial, answer))) = woken.then(|| self.answers.1.try_recv()) {
                self.answered(key, serial, answer, now);
            }
            if self.listener_ready {
                self.accept(now);
            }
            // Reads (requests, handshakes, client messages) get a slice of the iteration, the
            // fan-out and the writes below run in every one: a burst of connects delays the
            // streams by a slice, not by the burst. What is left waits on the ready list.
            let slice_end = Instant::now() + READ_SLICE;
            for turn in 0..self.ready.len() {
                if turn > 0 && self.gives_way(slice_end) {
                    break;
                }
                let Some(key) = self.ready.pop_front() else { break };
                self.read_ready(key, now);
            }
            let mut fanned = false;
            for _ in 0..FANOUT_BUDGET_BATCHES {
                let Ok(batch) = self.batches.pop() else { break };
                self.counters().batches.add(1);
                self.fanout.handle_batch(now, &batch);
                fanned = true;
            }
            if fanned {
                self.counters().group_events.set(self.fanout.group_events);
                let mut grown = std::mem::take(&mut self.scratch);
                self.fanout.take_grown(&mut grown);
                self.retain(now, &grown);
                grown.clear();
                self.scratch = grown;
            }
            let (linger, coalesce) = (self.linger.current(), self.coalesce_bytes());
            self.fanout.release_due(now, linger, coalesce, &mut released);
            for group in released.drain(..) {
                self.write_group(group, now);
            }
            let slice_end = Instant::now() + WRITE_SLICE;
            for turn in 0..self.write_again.len() {
                if turn > 0 && self.gives_way(slice_end) {
                    break;
                }
                let Some(key) = self.write_again.pop_front() else { break };
                if let Some(Connection::Ws { queued, .. }) = self.connections.get_mut(key) {
                    if std::mem::take(queued) {
                        self.transmit(key, now);
                    }
                }
            }
            self.end_wakes(now, slice_end);
            if now >= next_sweep {
                // Retention by age: every group with messages, once a sweep.
                let ids: Vec<usize> = self.fanout.group_ids().collect();
                self.retain(now, &ids);
                self.sweep(now);
                next_sweep = now + Duration::from_millis(SWEEP_INTERVAL_MS);
                self.linger.handle_writes(now, self.counters().writes.get());
                self.counters().linger_us.set(self.linger.current_us().into());
            }
        }
    }

    /// Whether a slice of background work stops here: it is spent, or a batch waits (the
    /// live streams go first).
    fn gives_way(&self, slice_end: Instant) -> bool {
        !self.batches.is_empty() || Instant::now() >= slice_end
    }

    fn coalesce_bytes(&self) -> usize {
        self.shared.settings.client_coalesce_bytes as usize
    }

    /// How long the next poll may sleep: not at all with work left, else until the next
    /// release, hold end or sweep.
    fn poll_timeout(&self, next_sweep: Instant) -> Duration {
        if !self.ready.is_empty()
            || !self.write_again.is_empty()
            || self.listener_ready
            || !self.batches.is_empty()
        {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut wake = next_sweep.min(now + Duration::from_millis(POLL_TIMEOUT_MS));
        if let Some(due) = self.fanout.next_release(self.linger.current(), self.coalesce_bytes()) {
            wake = wake.min(due);
        }
        if let Some(&(until, _)) = self.wakes.first() {
            wake = wake.min(until);
        }
        wake.saturating_duration_since(now)
    }

    fn accept(&mut self, now: Instant) {
        let Some(listener) = self.listener.take() else { return };
        self.accept_from(&listener, now);
        self.listener = Some(listener);
    }

    fn accept_from(&mut self, listener: &TcpListener, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if would_block(&error) => {
                    self.listener_ready = false;
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.listener_ready = false;
                    return;
                }
            };
            self.counters().accepted.add(1);
            let target = self.next_loop;
            self.next_loop = (self.next_loop + 1) % (self.handoff.len() + 1);
            if target == 0 {
                self.register(stream, now);
                continue;
            }
            let handoff = &self.handoff[target - 1];
            // A socket that cannot be handed over (that loop has stopped) is dropped: closed.
            if handoff.sockets.send(std::net::TcpStream::from(stream)).is_ok() {
                let _ = handoff.waker.wake();
            }
        }
        // Budget spent with the listener maybe still ready: `listener_ready` stays set, so
        // the next iteration accepts more before it sleeps.
    }

    fn register(&mut self, mut stream: TcpStream, now: Instant) {
        let limit = self.shared.settings.connections_max as usize + HTTP_CONNECTIONS_EXTRA;
        if self.connections.len() >= limit {
            self.counters().refused_max_connections.add(1);
            return; // Dropped: closes the socket.
        }
        let _ = stream.set_nodelay(true);
        let send_bytes = self.shared.settings.client_socket_send_bytes as usize;
        if send_bytes > 0 {
            // Best effort: a kernel that refuses keeps its default.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(send_bytes);
        }
        let entry = self.connections.vacant_entry();
        let token = Token(entry.key() + FIRST_CONNECTION);
        let interest = Interest::READABLE | Interest::WRITABLE;
        if self.poll.registry().register(&mut stream, token, interest).is_err() {
            return;
        }
        let stream = match Transport::new(stream, self.tls.as_ref()) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot start a TLS session; connection dropped");
                return;
            }
        };
        let deadline =
            now + Duration::from_millis(self.shared.settings.handshake_timeout_ms.into());
        entry.insert(Connection::Http { stream, buf: Vec::with_capacity(1_024), deadline });
    }

    fn ready_event(&mut self, key: usize, readable: bool) {
        // Events for connections already removed are ignored (mio may still report them).
        match self.connections.get_mut(key) {
            // Read in its turn on the ready list, within the iteration's read slice.
            Some(Connection::Http { .. }) => self.ready.push_back(key),
            Some(Connection::Respond { stream, out, written, .. }) => {
                if !write_out(stream, out, written) {
                    self.remove(key);
                }
            }
            Some(Connection::Ws { blocked, .. }) => {
                // Writable again at once (this iteration's fan-out writes to it too). With
                // something to read, it is read (then written) in its turn on the ready list;
                // only writable, it writes what waits after the live writes, without a read
                // that would find nothing (at 1,000 streaming clients, a read call each per
                // cycle).
                *blocked = false;
                if readable {
                    self.ready.push_back(key);
                } else {
                    self.write_later(key);
                }
            }
            // Its answer comes from the query threads; a hang-up is found when it is written.
            Some(Connection::Querying { .. } | Connection::Gone) | None => {}
        }
    }

    /// Reads a connection from the ready list: the request of an HTTP one, the messages of a
    /// WebSocket one.
    fn read_ready(&mut self, key: usize, now: Instant) {
        match self.connections.get(key) {
            Some(Connection::Http { .. }) => self.read_request(key, now),
            Some(Connection::Ws { .. }) => self.read_ws(key, now),
            _ => {}
        }
    }

    /// Reads the request head; routes it when complete.
    fn read_request(&mut self, key: usize, now: Instant) {
        let Some(Connection::Http { stream, buf, .. }) = self.connections.get_mut(key) else {
            return;
        };
        // TLS handshake records the socket did not take last time.
        if stream.flush_pending().is_err() {
            return self.remove(key);
        }
        let mut chunk = [0u8; 2_048];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => return self.remove(key),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::REQUEST_BYTES_MAX {
                        break;
                    }
                }
                Err(error) if would_block(&error) => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.remove(key),
            }
        }
        match http::parse(buf) {
            http::Parse::Partial => {}
            http::Parse::Bad(why) => {
                self.counters().bad_requests.add(1);
                self.respond(key, http::response("400 Bad Request", "text/plain", "", why), now);
            }
            http::Parse::Complete(request, len) => self.route(key, request, len, now),
        }
    }

    fn route(&mut self, key: usize, request: http::Request, len: usize, now: Instant) {
        match http::route(&request) {
            http::Route::Health => {
                let r = &self.shared.reporting;
                let problem = metrics::unhealthy(
                    &r.observed,
                    r.upstream.as_deref(),
                    self.clock.now().0,
                    STALL_NS,
                );
                let problem = metrics::gateway_problem(r).or(problem);
                let body = metrics::health(
                    r,
                    &self.shared.stats,
                    self.shared.started.elapsed().as_secs(),
                    problem.as_deref(),
                    self.shared.database.as_ref().map(|(status, _)| status.as_ref()),
                );
                let status = if problem.is_none() { "200 OK" } else { "503 Service Unavailable" };
                self.respond(key, http::response(status, "application/json", "", &body), now);
            }
            http::Route::Metrics => {
                let body = metrics::prometheus(
                    &self.shared.reporting.observed,
                    &self.shared.stats,
                    self.shared.reporting.upstream.as_deref(),
                    self.shared.event_log.as_ref().map(|(_, counters)| counters.as_ref()),
                    self.shared
                        .database
                        .as_ref()
                        .map(|(status, pool)| (status.as_ref(), pool.counters.as_ref())),
                    self.shared.reporting.nats.as_ref().map(|(_, status)| status.as_ref()),
                );
                self.respond(
                    key,
                    http::response("200 OK", "text/plain; version=0.0.4", "", &body),
                    now,
                );
            }
            http::Route::Universes => {
                let body = self.universes.to_json();
                self.respond(key, http::response("200 OK", "application/json", "", &body), now);
            }
            http::Route::Echo if self.shared.settings.conformance_echo => {
                self.upgrade(key, &request, len, now, true);
            }
            http::Route::Dashboard(asset) if self.shared.settings.dashboard => {
                let out =
                    http::response("200 OK", asset.content_type, dashboard::HEADERS, asset.body);
                self.respond(key, out, now);
            }
            http::Route::NotFound | http::Route::Echo | http::Route::Dashboard(_) => {
                self.respond(
                    key,
                    http::response("404 Not Found", "text/plain", "", "not found"),
                    now,
                );
            }
            http::Route::BadRequest(why) => {
                self.counters().bad_requests.add(1);
                self.respond(key, http::response("400 Bad Request", "text/plain", "", why), now);
            }
            http::Route::Stream if self.warming() => {
                let why = "warming up: catching up on the day (a restart's journal replay, or a \
                           gateway filling its event log); retry shortly";
                self.respond(
                    key,
                    http::response("503 Service Unavailable", "text/plain", "", why),
                    now,
                );
            }
            http::Route::Stream => self.upgrade(key, &request, len, now, false),
            http::Route::Aggs => self.aggs(key, &request, now),
        }
    }

    /// `/v2/aggs/...`: checked and authenticated here, queried on the pool's threads; the
    /// connection waits (`Querying`) for the answer.
    fn aggs(&mut self, key: usize, request: &http::Request, now: Instant) {
        let request_id = format!("{:016x}", self.now_s ^ (self.next_serial << 20) ^ key as u64);
        let refuse = |this: &mut EventLoop, error: AggsError| {
            let body = error.body(&request_id);
            this.respond(key, http::response(error.status, "application/json", "", &body), now);
        };
        let Some((_, pool)) = self.shared.database.clone() else {
            let message = "no database is configured (database.url): no aggregates here";
            return refuse(self, AggsError { status: "404 Not Found", message: message.into() });
        };
        let Some(token) = request.bearer.as_deref() else {
            let message = "an Authorization: Bearer header with an API key or JWT is required";
            return refuse(self, AggsError { status: "401 Unauthorized", message: message.into() });
        };
        let identity = match self.auth.verify(token, self.now_s) {
            Ok(identity) if self.auth.admits(&identity) => identity,
            _ => {
                self.counters().auth_failures.add(1);
                let message = "unknown, invalid or expired token".to_owned();
                return refuse(self, AggsError { status: "401 Unauthorized", message });
            }
        };
        let parsed =
            aggs::parse(&request.path, request.query.as_deref(), pool.timezone, pool.limit_max);
        let parsed = match parsed {
            Ok(parsed) if !identity.entitled(&parsed.symbol) => {
                let message = format!("not entitled to {}", parsed.symbol);
                return refuse(self, AggsError { status: "403 Forbidden", message });
            }
            Ok(parsed) => parsed,
            Err(error) => {
                self.counters().bad_requests.add(1);
                return refuse(self, error);
            }
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let host = request.host.clone().unwrap_or_else(|| self.shared.settings.listen.clone());
        self.next_serial += 1;
        let serial = self.next_serial;
        let (answers, waker) = (self.answers.0.clone(), Arc::clone(&self.waker));
        let job = Job {
            request: parsed,
            base: format!("{scheme}://{host}"),
            request_id: request_id.clone(),
            reply: Box::new(move |answer| {
                if answers.send((key, serial, answer)).is_ok() {
                    let _ = waker.wake();
                }
            }),
        };
        if pool.submit(job).is_err() {
            let message = "too many aggregates requests waiting; retry shortly".to_owned();
            return refuse(self, AggsError { status: "429 Too Many Requests", message });
        }
        let settings = &self.shared.settings;
        let wait = u64::from(settings.close_timeout_ms) + pool.wait_ms();
        let Some(slot @ Connection::Http { .. }) = self.connections.get_mut(key) else { return };
        let Connection::Http { stream, .. } = std::mem::replace(slot, Connection::Gone) else {
            return;
        };
        *slot =
            Connection::Querying { stream, serial, deadline: now + Duration::from_millis(wait) };
    }

    /// The query threads' answer for `key`, if that connection still waits for it.
    fn answered(&mut self, key: usize, serial: u64, answer: Answer, now: Instant) {
        let Some(slot @ Connection::Querying { .. }) = self.connections.get_mut(key) else {
            return;
        };
        if !matches!(slot, Connection::Querying { serial: s, .. } if *s == serial) {
            return;
        }
        let out = http::response(answer.status, "application/json", "", &answer.body);
        self.respond(key, out, now);
    }

    /// Whether clients must wait: a warm restart's replay is not over, or its events have not
    /// all reached this loop's history yet (the emitter hands the newest of them on once the
    /// engine's replay has ended), so a `resume` would not find them. Acquire: pairs with the
    /// engine's Release stores when the replay ends.
    fn warming(&self) -> bool {
        let counters = &self.shared.reporting.observed.counters;
        if counters.warming.load(Ordering::Acquire) {
            return true;
        }
        let live_from = counters.live_from_seq.load(Ordering::Acquire);
        live_from > 0
            && self.fanout.history.newest_seq().is_none_or(|newest| newest + 1 < live_from)
    }

    /// Turns the connection (a request, or one waiting for its query) into a response being
    /// written, in place.
    fn respond(&mut self, key: usize, out: Vec<u8>, now: Instant) {
        self.counters().http_requests.add(1);
        let deadline = now + Duration::from_millis(self.shared.settings.close_timeout_ms.into());
        let Some(slot @ (Connection::Http { .. } | Connection::Querying { .. })) =
            self.connections.get_mut(key)
        else {
            return;
        };
        let (Connection::Http { stream, .. } | Connection::Querying { stream, .. }) =
            std::mem::replace(slot, Connection::Gone)
        else {
            return;
        };
        let (mut stream, mut out, mut written) = (stream, out, 0);
        let more = write_out(&mut stream, &mut out, &mut written);
        *slot = Connection::Respond { stream, out, written, deadline };
        if !more {
            self.remove(key);
        }
    }

    /// Turns the connection into a WebSocket Subscriber, in place.
    fn upgrade(
        &mut self,
        key: usize,
        request: &http::Request,
        len: usize,
        now: Instant,
        echo: bool,
    ) {
        let Some(slot @ Connection::Http { .. }) = self.connections.get_mut(key) else { return };
        let Connection::Http { stream, buf, .. } = std::mem::replace(slot, Connection::Gone) else {
            return;
        };
        let accept_key = request.websocket_key.as_deref().unwrap_or_default();
        let leftover = buf[len..].to_vec();
        let settings = &self.shared.settings;
        let accepted = request
            .extensions
            .as_deref()
            .filter(|_| settings.compression == CompressionMode::Deflate)
            .and_then(deflate::negotiate);
        let deflate = accepted.is_some();
        let upgrade = http::upgrade_response(accept_key, accepted);
        let peer = stream.tcp().peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        // With deflate, even the bytes that came with the head go through the inflater.
        let handed = if deflate { Vec::new() } else { leftover.clone() };
        let mut subscriber =
            Subscriber::new(now, key, peer, settings, self.ws_config, handed, upgrade);
        if let Some(accepted) = accepted {
            let limit = settings.client_message_bytes_max as usize;
            subscriber.enable_deflate(limit, accepted.window_bits);
        }
        let early: &[u8] = if deflate { &leftover } else { &[] };
        *slot = Connection::Ws {
            stream,
            subscriber: Box::new(subscriber),
            blocked: false,
            queued: false,
            wake: None,
        };
        self.ws_here += 1;
        self.counters().upgrades.add(1);
        let open = self.shared.ws_count.fetch_add(1, Ordering::Relaxed) + 1;
        // Relaxed: a count compared against a limit; nothing is ordered by it.
        let over = open > self.shared.settings.connections_max as usize;
        self.counters().connections.set(self.ws_here);
        let mut env = env!(self);
        let Some(Connection::Ws { subscriber, .. }) = self.connections.get_mut(key) else { return };
        if over {
            subscriber.refuse(now, &mut env);
        } else if echo {
            subscriber.echo();
            if !leftover.is_empty() {
                subscriber.handle_read(now, early, &mut env);
            }
        } else {
            subscriber.start(now, request.bearer.as_deref(), &mut env);
            if !leftover.is_empty() {
                // Bytes that came with the request head: the first client frames.
                subscriber.handle_read(now, early, &mut env);
            }
        }
        self.after_handle(key, now);
    }

    /// Reads a WebSocket connection until `WouldBlock` or its budget, then writes.
    fn read_ws(&mut self, key: usize, now: Instant) {
        for chunk in 0..=READ_BUDGET_CHUNKS {
            let mut env = env!(self);
            let Some(Connection::Ws { stream, subscriber, .. }) = self.connections.get_mut(key)
            else {
                return;
            };
            if subscriber.is_dead() {
                break;
            }
            if chunk == READ_BUDGET_CHUNKS {
                // Budget spent before `WouldBlock`: read again next iteration.
                self.ready.push_back(key);
                break;
            }
            match stream.read(&mut self.read_buf) {
                Ok(0) => {
                    subscriber.handle_eof();
                    break;
                }
                Ok(n) => subscriber.handle_read(now, &self.read_buf[..n], &mut env),
                Err(error) if would_block(&error) => {
                    subscriber.handle_drained(now);
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    subscriber.handle_eof();
                    break;
                }
            }
        }
        self.after_handle(key, now);
    }

    /// After a Subscriber handled something: publish the groups (it may have joined or left
    /// one), write, drop it if dead.
    fn after_handle(&mut self, key: usize, now: Instant) {
        self.counters().groups.set(self.fanout.group_count() as u64);
        self.note_wake(key, now);
        self.transmit(key, now);
    }

    /// Notes when connection `key` wants the loop back unasked (`Subscriber::wake_at`).
    fn note_wake(&mut self, key: usize, now: Instant) {
        let Some(Connection::Ws { subscriber, wake, .. }) = self.connections.get_mut(key) else {
            return;
        };
        let Some(at) = subscriber.wake_at().filter(|&at| at > now) else { return };
        if wake.is_some_and(|listed| listed <= at) {
            return;
        }
        *wake = Some(at);
        self.wakes.insert((at, key));
    }

    /// Lists connection `key` for a write after the live writes (`write_again`), once.
    fn write_later(&mut self, key: usize) {
        if let Some(Connection::Ws { queued, .. }) = self.connections.get_mut(key) {
            if !std::mem::replace(queued, true) {
                self.write_again.push_back(key);
            }
        }
    }

    /// Writes what the Subscriber has, until it has nothing or the socket would block, or
    /// `client_write_turn_bytes` are written (then again next iteration: `write_again`).
    fn transmit(&mut self, key: usize, now: Instant) {
        let turn_bytes = self.shared.settings.client_write_turn_bytes as usize;
        let mut written = 0usize;
        loop {
            if written >= turn_bytes {
                self.write_later(key);
                return;
            }
            let mut env = env!(self);
            let Some(Connection::Ws { stream, subscriber, blocked, .. }) =
                self.connections.get_mut(key)
            else {
                return;
            };
            if subscriber.is_dead() {
                break;
            }
            if *blocked {
                return;
            }
            match stream.flush_pending() {
                Ok(true) => {}
                Ok(false) => {
                    *blocked = true;
                    return;
                }
                Err(_) => {
                    subscriber.handle_eof();
                    break;
                }
            }
            subscriber.poll(now, &mut env);
            let mut slices = Slices::new();
            subscriber.poll_transmit(&self.fanout, &mut slices);
            if slices.is_empty() {
                self.note_wake(key, now);
                return;
            }
            let result = stream.write_vectored(slices.as_slices());
            let mut env = env!(self);
            let Some(Connection::Ws { subscriber, blocked, .. }) = self.connections.get_mut(key)
            else {
                return;
            };
            match result {
                Ok(0) => subscriber.handle_eof(),
                Ok(n) => {
                    written += n;
                    let delivered = subscriber.handle_written(n, &mut env);
                    if delivered.events > 0 {
                        let latency = self.clock.now().0.saturating_sub(delivered.recv_ns);
                        self.tick_to_client.record_n(latency, delivered.events);
                    }
                }
                Err(error) if would_block(&error) => {
                    *blocked = true;
                    return;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => subscriber.handle_eof(),
            }
        }
        self.remove(key);
    }

    /// Writes to every member of a group that has just released messages.
    fn write_group(&mut self, group: usize, now: Instant) {
        let Some(group) = self.fanout.group(group) else { return };
        let mut members = std::mem::take(&mut self.scratch);
        members.extend(group.members.iter().map(|(_, m)| m.connection));
        for &key in &members {
            self.transmit(key, now);
        }
        members.clear();
        self.scratch = members;
    }

    /// Applies the retention of groups `ids`; overtaken members meet their policy.
    fn retain(&mut self, now: Instant, ids: &[usize]) {
        let settings = &self.shared.settings;
        let bytes_max = settings.client_lag_max_bytes as usize;
        let age_max = Duration::from_millis(settings.client_lag_max_ms.into());
        for &id in ids {
            let Some(group) = self.fanout.group_mut(id) else { continue };
            let overtaken = group.overtake(now, bytes_max, age_max);
            for o in overtaken {
                let key = o.connection;
                let mut env = env!(self);
                if let Some(Connection::Ws { subscriber, .. }) = self.connections.get_mut(key) {
                    subscriber.handle_overtaken(now, o, &mut env);
                }
                self.transmit(key, now);
            }
        }
    }

    /// Connections whose wake is due by `now` (a hold ended: they get their live events; a
    /// paced replay may send more), earliest first, within the write slice that ends at
    /// `slice_end`; the rest stay listed for the next iteration.
    fn end_wakes(&mut self, now: Instant, slice_end: Instant) {
        let mut first = true;
        while let Some(&(at, key)) = self.wakes.first() {
            if at > now || (!first && self.gives_way(slice_end)) {
                return;
            }
            self.wakes.pop_first();
            let Some(Connection::Ws { wake, .. }) = self.connections.get_mut(key) else {
                continue;
            };
            if *wake != Some(at) {
                continue; // superseded, or another connection's since
            }
            *wake = None;
            first = false;
            // Read before the hold ends: a `resume` sent right behind its `subscribe` is in
            // the socket and comes first (`Subscriber::handle_drained`).
            self.read_ws(key, now);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.follow_reload(now);
        if now >= self.next_publish {
            let histograms = &self.shared.reporting.observed.histograms;
            self.tick_to_client.publish(&histograms.tick_to_client_ns);
            self.next_publish = now + Duration::from_millis(crate::tracer::HISTOGRAM_PUBLISH_MS);
        }
        let mut due = Vec::new();
        let mut dropped = Vec::new();
        for (key, connection) in &self.connections {
            match connection {
                Connection::Http { deadline, .. } if now >= *deadline => {
                    self.counters().handshake_timeouts.add(1);
                    dropped.push(key);
                }
                Connection::Respond { deadline, .. } | Connection::Querying { deadline, .. }
                    if now >= *deadline =>
                {
                    dropped.push(key);
                }
                Connection::Ws { subscriber, .. }
                    if now >= subscriber.poll_timeout() || subscriber.shed_level() > 0 =>
                {
                    due.push(key);
                }
                _ => {}
            }
        }
        for key in dropped {
            self.remove(key);
        }
        for key in due {
            let mut env = env!(self);
            if let Some(Connection::Ws { subscriber, .. }) = self.connections.get_mut(key) {
                subscriber.handle_timeout(now, &mut env);
            }
            self.transmit(key, now);
        }
    }

    /// Takes up credentials a reload swapped in, and closes the connections they no longer
    /// admit (1008 `key revoked`).
    fn follow_reload(&mut self, now: Instant) {
        self.follow_universes(now);
        self.tls = self.shared.credentials.tls();
        let current = self.shared.credentials.current();
        if Arc::ptr_eq(&current, &self.auth) {
            return;
        }
        self.auth = current;
        let revoked: Vec<usize> = self
            .connections
            .iter()
            .filter_map(|(key, connection)| match connection {
                Connection::Ws { subscriber, .. } => subscriber
                    .identity()
                    .is_some_and(|identity| !self.auth.admits(identity))
                    .then_some(key),
                _ => None,
            })
            .collect();
        self.apply_to(revoked, now, |subscriber, env| subscriber.revoke(now, env));
    }

    /// Takes up universes a reload swapped in: every connection with a universe topic
    /// follows its new list.
    fn follow_universes(&mut self, now: Instant) {
        let current = self.shared.universes.current();
        if Arc::ptr_eq(&current, &self.universes) {
            return;
        }
        self.universes = current;
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        self.apply_to(keys, now, |subscriber, env| subscriber.handle_universes(now, env));
    }

    /// Calls `apply` on the Subscriber of each of `keys` (those that are WebSocket
    /// connections), and writes what it queued.
    fn apply_to(
        &mut self,
        keys: Vec<usize>,
        now: Instant,
        mut apply: impl FnMut(&mut Subscriber, &mut Env<'_>),
    ) {
        for key in keys {
            let mut env = env!(self);
            if let Some(Connection::Ws { subscriber, .. }) = self.connections.get_mut(key) {
                apply(subscriber, &mut env);
            }
            self.transmit(key, now);
        }
    }

    fn remove(&mut self, key: usize) {
        let Some(connection) = self.connections.try_remove(key) else { return };
        match connection {
            Connection::Http { mut stream, .. }
            | Connection::Respond { mut stream, .. }
            | Connection::Querying { mut stream, .. } => {
                let _ = self.poll.registry().deregister(stream.tcp_mut());
            }
            Connection::Ws { mut stream, mut subscriber, .. } => {
                let _ = self.poll.registry().deregister(stream.tcp_mut());
                let mut env = env!(self);
                subscriber.leave(&mut env);
                // Relaxed: as in `upgrade`.
                self.shared.ws_count.fetch_sub(1, Ordering::Relaxed);
                self.ws_here -= 1;
                self.counters().connections.set(self.ws_here);
                self.counters().groups.set(self.fanout.group_count() as u64);
            }
            Connection::Gone => {}
        }
    }

    fn close_all(&mut self, now: Instant) {
        let histograms = &self.shared.reporting.observed.histograms;
        self.tick_to_client.publish_final(&histograms.tick_to_client_ns);
        let keys: Vec<usize> = self.connections.iter().map(|(key, _)| key).collect();
        self.apply_to(keys.clone(), now, |subscriber, env| subscriber.shut_down(now, env));
        for key in keys {
            self.remove(key);
        }
    }
}

/// Writes an HTTP response; returns false once it is all written (or failed): drop then.
fn write_out(stream: &mut Transport, out: &mut [u8], written: &mut usize) -> bool {
    while *written < out.len() {
        match stream.write(&out[*written..]) {
            Ok(0) => return false,
            Ok(n) => *written += n,
            Err(error) if would_block(&error) => return true,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    match stream.flush_pending() {
        Ok(true) => {}
        Ok(false) => return true,
        Err(_) => return false,
    }
    stream.shutdown_write();
    false
}

/// Starts `threads` loops on `listener`; returns their parts for [`EventLoop::new`] and the
/// wakers, first loop first.
pub fn parts(
    threads: usize,
    mut listener: TcpListener,
    batches: Vec<rtrb::Consumer<Arc<FrameBatch>>>,
) -> io::Result<(Vec<Parts>, Vec<Arc<Waker>>)> {
    let mut polls = Vec::new();
    let mut wakers = Vec::new();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..threads {
        let poll = Poll::new()?;
        wakers.push(Arc::new(Waker::new(poll.registry(), WAKER)?));
        polls.push(poll);
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        receivers.push(rx);
    }
    polls[0].registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let handoff: Vec<Handoff> = senders
        .into_iter()
        .zip(&wakers)
        .skip(1)
        .map(|(sockets, waker)| Handoff { sockets, waker: Arc::clone(waker) })
        .collect();
    let mut listener = Some(listener);
    let mut handoff = Some(handoff);
    let parts = polls
        .into_iter()
        .zip(receivers)
        .zip(batches)
        .enumerate()
        .map(|(index, ((poll, incoming), batches))| Parts {
            index,
            poll,
            listener: listener.take(),
            handoff: handoff.take().unwrap_or_default(),
            incoming,
            batches,
            waker: Arc::clone(&wakers[index]),
        })
        .collect();
    Ok((parts, wakers))
}
