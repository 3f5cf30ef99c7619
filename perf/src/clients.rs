//! The client side: N WebSocket connections to the server under test, read by a few reader
//! threads that wait in epoll (mio) and check every event they get.
//!
//! Per connection and step a reader keeps: the step's trades received, their checksum (id,
//! price, size), events of every kind, `seq` order, trades from outside the step, malformed
//! messages, conflation losses and how the connection ended. Per connection and run it keeps
//! a checksum of every event per block of `seq` numbers, so the load generator can check
//! that all clients saw the same bars and detector events. Latency is recorded for each
//! trade of the step: receive time minus the trade's intended send time.
//!
//! So that the clients cost less than the server they measure: a reader reads every
//! connection into one buffer of its own (`wire::FrameReader`, no copy per message), and
//! checks each distinct message once. What a message says (its events, trades, checksums,
//! `seq` range) is a `Digest`, a pure function of its bytes and the step; a reader keeps the
//! digests of the messages it has read by their XXH3-128, so the other members of a group,
//! which receive the same bytes, cost a hash each. Order, latency and the per-client totals
//! are still applied per connection.

use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

use crate::upstream::{Clock, Schedule};
use crate::wire::{
    self, event_mix, for_each_event, trade_mix, Drained, Event, FrameReader, Incoming,
};

/// `seq` numbers per block of the cross-client event checksum (`seq >> BLOCK_SHIFT`).
pub const BLOCK_SHIFT: u32 = 12;
/// Deadline for the handshake, auth and subscribe of one connection.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
const WAKER: Token = Token(usize::MAX);
/// Connections handed to a reader at a time while a pool grows.
const ADD_BATCH: usize = 32;

/// Where and how clients connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// The servers' addresses (several gateways of one ingest, `docs/scale-out.md`):
    /// client `id` connects to `addrs[id % addrs.len()]`.
    pub addrs: Vec<SocketAddr>,
    /// WebSocket path (`/stocks`).
    pub path: String,
    /// The `auth` token.
    pub token: String,
    /// The `subscribe` params (`T.*,A.*,...`), unless `watchlist` is set.
    pub topics: String,
    /// Each client on its own few symbols instead of `topics`.
    pub watchlist: Option<Watchlist>,
    /// Slow-consumer policies (`close`, `conflate`, `shed`) the clients choose with
    /// `options`, in turn by client id; empty leaves the server's default.
    pub policies: Vec<String>,
    /// Each client socket's receive buffer (`SO_RCVBUF`), 0 for the kernel's autotuning.
    pub receive_buffer_bytes: usize,
    /// Offer permessage-deflate ([`wire::DEFLATE_OFFER`]); a server that does not take it
    /// fails the connection.
    pub deflate: bool,
}

/// Per-client watchlists: `symbols` symbols drawn for each client (the same for the same
/// client id on every run), each on every channel of `channels`.
#[derive(Clone, Debug)]
pub struct Watchlist {
    /// Symbols per client.
    pub symbols: usize,
    /// Channels per symbol (`T`, `A`, `HL`...).
    pub channels: Vec<String>,
    /// The played source's tickers, by symbol index.
    pub tickers: Arc<Vec<String>>,
}

/// splitmix64: a well-mixed hash of `x`, for drawing watchlists reproducibly.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Target {
    /// Which address client `id` connects to, and its index in `addrs`.
    pub fn addr_for(&self, id: u32) -> (usize, SocketAddr) {
        let index = id as usize % self.addrs.len().max(1);
        (index, self.addrs[index])
    }

    /// Client `id`'s watchlist, as symbol indices (sorted), or `None` when it takes `topics`.
    pub fn symbols_for(&self, id: u32) -> Option<Vec<usize>> {
        let watchlist = self.watchlist.as_ref()?;
        let count = watchlist.tickers.len();
        let wanted = watchlist.symbols.min(count);
        let mut symbols = Vec::with_capacity(wanted);
        let mut draw = u64::from(id) << 32;
        while symbols.len() < wanted {
            let symbol = (mix(draw) % count as u64) as usize;
            draw += 1;
            if !symbols.contains(&symbol) {
                symbols.push(symbol);
            }
        }
        symbols.sort_unstable();
        Some(symbols)
    }

    /// Client `id`'s `subscribe` params.
    pub fn topics_for(&self, id: u32) -> String {
        let (Some(watchlist), Some(symbols)) = (&self.watchlist, self.symbols_for(id)) else {
            return self.topics.clone();
        };
        let mut topics = Vec::new();
        for symbol in symbols {
            for channel in &watchlist.channels {
                topics.push(format!("{channel}.{}", watchlist.tickers[symbol]));
            }
        }
        topics.join(",")
    }

    /// Client `id`'s slow-consumer policy, if it chooses one.
    pub fn policy_for(&self, id: u32) -> Option<&str> {
        (!self.policies.is_empty())
            .then(|| self.policies[id as usize % self.policies.len()].as_str())
    }
}

/// One open client connection, between connect and a reader.
#[derive(Debug)]
pub struct Conn {
    id: u32,
    /// Which of the target's addresses it connected to.
    target: usize,
    socket: TcpStream,
    frames: FrameReader,
    /// Its local port (to find its receive queue in `/proc/net/tcp`).
    port: u16,
}

impl Conn {
    /// Connects, authenticates, sets its policy and subscribes, blocking, then switches to
    /// non-blocking. tungstenite does the handshake and the auth; then the connection is
    /// read by a `FrameReader` (the server says nothing between `auth_success` and the
    /// client's next message, so nothing tungstenite read is left behind).
    pub fn open(target: &Target, id: u32) -> Result<Conn, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("client {id}: {what}: {e}");
        let (index, addr) = target.addr_for(id);
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .map_err(|e| fail("socket", &e))?;
        if target.receive_buffer_bytes > 0 {
            // Before connecting, so the window is set from the start (and autotuning is off).
            socket
                .set_recv_buffer_size(target.receive_buffer_bytes)
                .map_err(|e| fail("SO_RCVBUF", &e))?;
        }
        socket.connect_timeout(&addr.into(), CONNECT_DEADLINE).map_err(|e| fail("connect", &e))?;
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).map_err(|e| fail("socket", &e))?;
        stream.set_read_timeout(Some(CONNECT_DEADLINE)).map_err(|e| fail("socket", &e))?;
        let url = format!("ws://{addr}{}", target.path);
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(url)
            .map_err(|e| fail("request", &e))?;
        if target.deflate {
            request.headers_mut().insert(
                "Sec-WebSocket-Extensions",
                tungstenite::http::HeaderValue::from_static(wire::DEFLATE_OFFER),
            );
        }
        let (mut socket, response) =
            tungstenite::client(request, stream).map_err(|e| fail("handshake", &e))?;
        let deflate = response
            .headers()
            .get("Sec-WebSocket-Extensions")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("permessage-deflate"));
        if target.deflate && !deflate {
            return Err(fail("handshake", &"the server did not take permessage-deflate"));
        }
        let token = serde_json::to_string(&target.token).unwrap_or_default();
        socket
            .send(Message::text(format!(r#"{{"action":"auth","params":{token}}}"#)))
            .map_err(|e| fail("send auth", &e))?;
        await_auth(&mut socket).map_err(|e| fail("auth", &e))?;
        let mut conn = Conn {
            id,
            target: index,
            socket: socket.into_inner(),
            frames: FrameReader::new(),
            port: 0,
        };
        conn.frames.deflate = deflate;
        let mut scratch = Vec::new();
        if let Some(policy) = target.policy_for(id) {
            let options = format!(
                r#"{{"action":"options","params":{{"slow_consumer":{}}}}}"#,
                serde_json::to_string(policy).unwrap_or_default()
            );
            conn.ask(options, &mut scratch).map_err(|e| fail("options", &e))?;
        }
        let topics = serde_json::to_string(&target.topics_for(id)).unwrap_or_default();
        conn.ask(format!(r#"{{"action":"subscribe","params":{topics}}}"#), &mut scratch)
            .map_err(|e| fail("subscribe", &e))?;
        conn.socket.set_nonblocking(true).map_err(|e| fail("socket", &e))?;
        conn.port = conn.socket.local_addr().map_or(0, |a| a.port());
        Ok(conn)
    }

    /// Sends one action and reads (blocking) until its `success` status; an error status
    /// fails. Whatever follows the status stays for the reader.
    fn ask(&mut self, action: String, scratch: &mut Vec<u8>) -> Result<(), String> {
        wire::send(&mut self.socket, wire::text(action)).map_err(|e| format!("send: {e}"))?;
        let mut answer = None;
        let mut inflater = wire::Inflater::default();
        while answer.is_none() {
            let drained = self
                .frames
                .read(&mut self.socket, scratch, |incoming| {
                    answer = match incoming {
                        Incoming::Message(text) => status_in(text, |s| s == "success"),
                        Incoming::Compressed(bytes) => match inflater.inflate(bytes) {
                            Ok(text) => status_in(text, |s| s == "success"),
                            Err(e) => Some(Err(e.to_string())),
                        },
                        Incoming::Close(code, reason) => {
                            Some(Err(format!("closed: {code} {reason}")))
                        }
                    };
                    if answer.is_some() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .map_err(|e| e.to_string())?;
            match drained {
                Drained::WouldBlock if answer.is_none() => {
                    return Err(format!("no answer within {CONNECT_DEADLINE:?}"))
                }
                Drained::Eof => return Err("the server closed the connection".into()),
                _ => {}
            }
        }
        answer.unwrap_or(Ok(()))
    }
}

/// Reads (through tungstenite) until `auth_success`; an error status fails.
pub(crate) fn await_auth(socket: &mut WebSocket<TcpStream>) -> Result<(), String> {
    loop {
        match socket.read().map_err(|e| e.to_string())? {
            Message::Text(text) => {
                if let Some(answer) = status_in(text.as_bytes(), |s| s == "auth_success") {
                    return answer;
                }
            }
            Message::Close(frame) => return Err(format!("closed: {frame:?}")),
            _ => {}
        }
    }
}

/// `Some(Ok)` if a message holds a status for which `wanted` holds, `Some(Err)` if it holds
/// an error-like status, `None` otherwise.
fn status_in(text: &[u8], wanted: impl Fn(&str) -> bool) -> Option<Result<(), String>> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(text) else {
        return None;
    };
    for item in items {
        let status = item["status"].as_str().unwrap_or_default();
        if wanted(status) {
            return Some(Ok(()));
        }
        if matches!(status, "auth_failed" | "error" | "max_connections") {
            let message = item["message"].as_str().unwrap_or_default();
            return Some(Err(format!("{status}: {message}")));
        }
    }
    None
}

/// One connection's figures for one step.
#[derive(Clone, Debug, Default)]
pub struct ConnReport {
    /// Connection id.
    pub id: u32,
    /// Trades of the step received.
    pub trades: u64,
    /// Sum of their checksums.
    pub checksum: u64,
    /// The lowest and highest trade id of the step received, for diagnosis.
    pub k_range: Option<(u64, u64)>,
    /// Events of every kind received in the step.
    pub events: u64,
    /// Trades received whose id is not in the step (late from an earlier step).
    pub stray: u64,
    /// Events whose `seq` was not above the previous one.
    pub order_violations: u64,
    /// Events the server said it dropped by conflation.
    pub conflated: u64,
    /// `shed` steps the server announced, and the events it said they dropped.
    pub shed: (u64, u64),
    /// The first unreadable message, if any.
    pub malformed: Option<String>,
    /// How it ended, if it did in this step (a close code and reason, or an error).
    pub closed: Option<String>,
    /// Whether the server closed it with 4008 (slow consumer).
    pub slow_consumer: bool,
    /// Blocks completed in this step: (block, events, checksum).
    pub blocks: Vec<(u64, u64, u64)>,
    /// Blocks this connection covered whole: the open block at the previous report and now.
    pub covered: (u64, u64),
}

/// One reader's figures for one step.
#[derive(Debug)]
pub struct ReaderReport {
    /// Tick-to-client latency of the step's trades (ns), by the target address the
    /// connections are on (`Target::addrs`).
    pub latency: Vec<Histogram<u64>>,
    /// Time the reader spent reading and checking (not waiting in epoll), ns: near the
    /// step's length, the reader, not the server, was the limit.
    pub busy_ns: u64,
    /// Per connection.
    pub conns: Vec<ConnReport>,
    /// Bytes its connections read from their sockets (WebSocket frames as sent).
    pub wire_bytes: u64,
}

enum Command {
    Add(Vec<Conn>),
    Close(Vec<u32>),
    End(Sender<ReaderReport>),
    Stop,
}

/// The reader threads and their connections.
#[derive(Debug)]
pub struct Pool {
    readers: Vec<Reader>,
    /// Trades of the current step received, over all connections.
    pub received: Arc<AtomicU64>,
    /// Connection ids held by each reader, and where the next goes.
    held: Vec<Vec<u32>>,
    next_id: u32,
    /// The step being measured, numbered, shared with the readers.
    current: Arc<RwLock<Step>>,
    /// The clients' local ports.
    pub ports: std::collections::HashSet<u16>,
}

/// A step as the readers see it: its number and schedule. A reader rolls a connection's
/// figures over to a new step at its first message after the step changed, so no trade can
/// slip between a reset and the first send, however busy the reader is.
#[derive(Clone, Copy, Debug, Default)]
struct Step {
    number: u64,
    schedule: Option<Schedule>,
}

#[derive(Debug)]
struct Reader {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl Reader {
    fn send(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Add(_) => "Add",
            Command::Close(_) => "Close",
            Command::End(_) => "End",
            Command::Stop => "Stop",
        })
    }
}

impl Pool {
    /// Starts `threads` reader threads with no connections.
    pub fn start(threads: usize, clock: Clock) -> std::io::Result<Pool> {
        let received = Arc::new(AtomicU64::new(0));
        let current = Arc::new(RwLock::new(Step::default()));
        let mut readers = Vec::new();
        for index in 0..threads.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (commands, inbox) = mpsc::channel();
            let (received, current) = (Arc::clone(&received), Arc::clone(&current));
            let thread = thread::Builder::new()
                .name(format!("loadgen-reader-{index}"))
                .spawn(move || ReaderLoop::new(poll, inbox, clock, received, current).run())?;
            readers.push(Reader { commands, waker, thread });
        }
        let held = vec![Vec::new(); readers.len()];
        Ok(Pool { readers, received, held, next_id: 0, current, ports: Default::default() })
    }

    /// Connections held (open as far as the pool knows).
    pub fn len(&self) -> usize {
        self.held.iter().map(Vec::len).sum()
    }

    /// The ids of the connections held.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.held.iter().flatten().copied()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Opens connections until there are `count`, or closes the newest down to `count`.
    /// `progress` is told each new connection.
    pub fn resize(
        &mut self,
        target: &Target,
        count: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<(), String> {
        while self.len() > count {
            let reader = (0..self.held.len()).max_by_key(|&r| self.held[r].len()).unwrap_or(0);
            let ids: Vec<u32> = self.held[reader].pop().into_iter().collect();
            self.readers[reader].send(Command::Close(ids));
        }
        // Handed to the readers in small batches as they connect, so the first clients'
        // streams are read while the rest connect, not left to pile up.
        while self.len() < count {
            let reader = (0..self.held.len()).min_by_key(|&r| self.held[r].len()).unwrap_or(0);
            let mut batch = Vec::new();
            while batch.len() < ADD_BATCH && self.len() + batch.len() < count {
                batch.push(Conn::open(target, self.next_id)?);
                self.next_id += 1;
            }
            self.held[reader].extend(batch.iter().map(|c| c.id));
            self.ports.extend(batch.iter().map(|c| c.port));
            self.readers[reader].send(Command::Add(batch));
            progress(self.len());
        }
        Ok(())
    }

    /// Starts a step: from now on the readers count its trades, each connection from a clean
    /// slate. Call before the first trade is sent.
    pub fn begin(&self, schedule: Schedule) {
        self.received.store(0, Ordering::Relaxed);
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Step { number: current.number + 1, schedule: Some(schedule) };
    }

    /// Ends a step: the readers' figures. Connections that ended are forgotten.
    pub fn end(&mut self) -> Vec<ReaderReport> {
        let mut reports = Vec::new();
        for (index, reader) in self.readers.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            reader.send(Command::End(tx));
            if let Ok(report) = rx.recv_timeout(Duration::from_secs(30)) {
                let ended: Vec<u32> =
                    report.conns.iter().filter(|c| c.closed.is_some()).map(|c| c.id).collect();
                self.held[index].retain(|id| !ended.contains(id));
                reports.push(report);
            }
        }
        reports
    }

    /// Stops the readers and closes every connection.
    pub fn stop(self) {
        for reader in &self.readers {
            reader.send(Command::Stop);
        }
        for reader in self.readers {
            let _ = reader.thread.join();
        }
    }
}

struct Held {
    conn: Conn,
    tally: Tally,
}

/// What a reader keeps of one connection's stream.
struct Tally {
    report: ConnReport,
    last_seq: u64,
    /// The block being filled: (block, events, checksum); `None` before the first event.
    open: Option<(u64, u64, u64)>,
    /// The first block seen, which is partial and never compared.
    first_block: Option<u64>,
    /// The open block when the step began.
    begin_open: Option<u64>,
    /// The step `report` is for.
    step: u64,
}

struct ReaderLoop {
    poll: Poll,
    inbox: Receiver<Command>,
    clock: Clock,
    received: Arc<AtomicU64>,
    conns: Vec<Option<Held>>,
    current: Arc<RwLock<Step>>,
    /// By target address.
    latency: Vec<Histogram<u64>>,
    /// The step `latency` is for.
    latency_step: u64,
    /// Time spent working since the last report, ns.
    busy_ns: u64,
    /// Bytes read from the sockets since the last report.
    wire_bytes: u64,
    digests: Digests,
    inflater: wire::Inflater,
    /// The buffer every connection of this reader is read into.
    scratch: Vec<u8>,
}

/// A latency histogram (ns, 1 µs to 120 s, 3 significant digits), as every reader keeps.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 120_000_000_000, 3).expect("static bounds")
}

impl ReaderLoop {
    fn new(
        poll: Poll,
        inbox: Receiver<Command>,
        clock: Clock,
        received: Arc<AtomicU64>,
        current: Arc<RwLock<Step>>,
    ) -> ReaderLoop {
        ReaderLoop {
            poll,
            inbox,
            clock,
            received,
            conns: Vec::new(),
            current,
            latency: Vec::new(),
            latency_step: 0,
            busy_ns: 0,
            wire_bytes: 0,
            digests: Digests::new(),
            inflater: wire::Inflater::default(),
            scratch: Vec::new(),
        }
    }

    fn step(&self) -> Step {
        *self.current.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(error) = self.poll.poll(&mut events, Some(Duration::from_millis(20))) {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return;
                }
            }
            let working = std::time::Instant::now();
            for event in &events {
                if event.token() != WAKER {
                    self.read(event.token().0);
                }
            }
            self.busy_ns += working.elapsed().as_nanos() as u64;
            while let Ok(command) = self.inbox.try_recv() {
                match command {
                    Command::Add(conns) => self.add(conns),
                    Command::Close(ids) => self.close(&ids),
                    Command::End(reply) => {
                        let _ = reply.send(self.end());
                    }
                    Command::Stop => {
                        let ids: Vec<u32> =
                            self.conns.iter().flatten().map(|h| h.conn.id).collect();
                        self.close(&ids);
                        return;
                    }
                }
            }
        }
    }

    fn add(&mut self, conns: Vec<Conn>) {
        for conn in conns {
            let slot = self.conns.iter().position(Option::is_none).unwrap_or(self.conns.len());
            let fd = conn.socket.as_raw_fd();
            let mut held = Held {
                tally: Tally {
                    report: ConnReport { id: conn.id, ..Default::default() },
                    last_seq: 0,
                    open: None,
                    first_block: None,
                    begin_open: None,
                    step: 0,
                },
                conn,
            };
            if let Err(error) =
                self.poll.registry().register(&mut SourceFd(&fd), Token(slot), Interest::READABLE)
            {
                held.tally.report.closed = Some(format!("epoll: {error}"));
            }
            if slot == self.conns.len() {
                self.conns.push(Some(held));
            } else {
                self.conns[slot] = Some(held);
            }
            // Data may have arrived before registration; edge-triggered epoll would not say.
            self.read(slot);
        }
    }

    fn close(&mut self, ids: &[u32]) {
        for slot in &mut self.conns {
            if slot.as_ref().is_some_and(|h| ids.contains(&h.conn.id)) {
                if let Some(mut held) = slot.take() {
                    let fd = held.conn.socket.as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    // Best effort: a full socket is closed without the frame.
                    let _ = wire::send(&mut held.conn.socket, Frame::close(None));
                }
            }
        }
    }

    fn end(&mut self) -> ReaderReport {
        let step = self.step().number;
        let mut conns = Vec::new();
        for slot in &mut self.conns {
            let Some(Held { tally, .. }) = slot.as_mut() else { continue };
            roll(tally, step);
            // Whole blocks seen in this step: from the one open at `begin` (or after the
            // first, partial one) up to, not including, the one open now.
            let start = match tally.first_block {
                Some(first) => tally.begin_open.unwrap_or(0).max(first + 1),
                None => u64::MAX,
            };
            tally.report.covered = (start, tally.open.map_or(0, |o| o.0));
            let id = tally.report.id;
            let report =
                std::mem::replace(&mut tally.report, ConnReport { id, ..Default::default() });
            tally.begin_open = tally.open.map(|o| o.0);
            if report.closed.is_some() {
                *slot = None;
            }
            conns.push(report);
        }
        let latency =
            if self.latency_step == step { std::mem::take(&mut self.latency) } else { Vec::new() };
        ReaderReport {
            latency,
            conns,
            busy_ns: std::mem::take(&mut self.busy_ns),
            wire_bytes: std::mem::take(&mut self.wire_bytes),
        }
    }

    fn read(&mut self, slot: usize) {
        let Some(Some(Held { conn, tally })) = self.conns.get_mut(slot) else { return };
        if tally.report.closed.is_some() {
            return;
        }
        let (clock, current, received) = (&self.clock, &self.current, &self.received);
        let (latency, latency_step, digests, inflater) =
            (&mut self.latency, &mut self.latency_step, &mut self.digests, &mut self.inflater);
        let bytes_before = conn.frames.bytes;
        let drained = conn.frames.read(&mut conn.socket, &mut self.scratch, |incoming| {
            match incoming {
                Incoming::Message(_) | Incoming::Compressed(_) => {
                    let now = clock.now().0;
                    let step = *current.read().unwrap_or_else(PoisonError::into_inner);
                    roll(tally, step.number);
                    if *latency_step != step.number {
                        (*latency, *latency_step) = (Vec::new(), step.number);
                    }
                    if latency.len() <= conn.target {
                        latency.resize_with(conn.target + 1, new_histogram);
                    }
                    let digest = match incoming {
                        Incoming::Compressed(bytes) => {
                            digests.get_compressed(bytes, &step, inflater)
                        }
                        Incoming::Message(text) => Ok(digests.get(text, &step)),
                        Incoming::Close(..) => unreachable!("matched above"),
                    };
                    match digest {
                        Ok(digest) => {
                            let trades = digest.apply(tally, now, &mut latency[conn.target]);
                            received.fetch_add(trades, Ordering::Relaxed);
                        }
                        Err(error) => {
                            tally.report.malformed.get_or_insert(error);
                        }
                    }
                }
                Incoming::Close(code, reason) => {
                    tally.report.slow_consumer = code == 4008;
                    tally.report.closed = Some(format!("closed by the server: {code} {reason}"));
                }
            }
            ControlFlow::Continue(())
        });
        self.wire_bytes += conn.frames.bytes - bytes_before;
        let report = &mut tally.report;
        match drained {
            Ok(Drained::WouldBlock | Drained::Stopped) => {}
            Ok(Drained::Eof) => {
                report.closed.get_or_insert_with(|| "connection lost: EOF".into());
            }
            Err(error) => {
                report.closed.get_or_insert_with(|| format!("connection lost: {error}"));
            }
        }
        if report.closed.is_some() {
            let fd = conn.socket.as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
    }
}

/// Moves a connection's figures to step `number` if they are for an earlier one. Trades
/// that arrived after the earlier step was reported are counted as strays of the new one.
fn roll(tally: &mut Tally, number: u64) {
    if tally.step == number {
        return;
    }
    let report = &mut tally.report;
    let (id, late) = (report.id, report.trades + report.stray);
    let (closed, slow_consumer) = (report.closed.take(), report.slow_consumer);
    tally.report = ConnReport { id, stray: late, closed, slow_consumer, ..Default::default() };
    tally.begin_open = tally.open.map(|o| o.0);
    tally.step = number;
}

/// Digests kept per reader (a power of two).
const DIGEST_SLOTS: usize = 4096;

/// What one message says, whoever received it and whenever: a pure function of its bytes and
/// the step's schedule. A reader computes it once per distinct message and applies it to
/// every connection that received the same bytes (the members of a group get identical
/// messages), so checking a client costs a hash of what it read, not a parse.
#[derive(Debug, Default)]
struct Digest {
    /// `seq` of the first and the last data event; `None` without one.
    seqs: Option<(u64, u64)>,
    /// Events whose `seq` was not above the one before them in the message.
    order_violations: u64,
    /// Data events.
    events: u64,
    /// The data events in runs of one block: (block, events, checksum).
    blocks: Vec<(u64, u64, u64)>,
    /// Trades of the step: count, checksum, lowest and highest id.
    trades: u64,
    checksum: u64,
    k_range: Option<(u64, u64)>,
    /// Each trade of the step's intended send time, ns.
    intended_ns: Vec<u64>,
    /// Trades from outside the step.
    stray: u64,
    /// Events the server said it dropped by conflation.
    conflated: u64,
    /// `shed` statuses and the events they said were dropped.
    shed: (u64, u64),
    /// Why the message could not be read.
    malformed: Option<String>,
}

impl Digest {
    /// Refills `self` (keeping its buffers) with what `text` says under `schedule`.
    fn fill(&mut self, text: &[u8], schedule: Option<&Schedule>) {
        self.seqs = None;
        self.blocks.clear();
        self.intended_ns.clear();
        (self.order_violations, self.events, self.trades, self.checksum, self.stray) =
            (0, 0, 0, 0, 0);
        (self.k_range, self.conflated, self.shed, self.malformed) = (None, 0, (0, 0), None);
        let note = |d: &mut Digest, seq: u64, ev: &[u8]| {
            d.events += 1;
            d.seqs = Some(match d.seqs {
                Some((first, last)) => {
                    if seq <= last {
                        d.order_violations += 1;
                    }
                    (first, seq)
                }
                None => (seq, seq),
            });
            let block = seq >> BLOCK_SHIFT;
            match d.blocks.last_mut() {
                Some((b, count, sum)) if *b == block => {
                    *count += 1;
                    *sum = sum.wrapping_add(event_mix(seq, ev));
                }
                _ => d.blocks.push((block, 1, event_mix(seq, ev))),
            }
        };
        let mut d = std::mem::take(self);
        let scanned = for_each_event(text, |event| match event {
            Event::Trade { seq, k, price, size } => {
                note(&mut d, seq, b"T");
                match schedule {
                    Some(s) if s.contains(k) => {
                        d.trades += 1;
                        d.k_range =
                            Some(d.k_range.map_or((k, k), |(lo, hi)| (lo.min(k), hi.max(k))));
                        d.checksum = d.checksum.wrapping_add(trade_mix(k, price, size));
                        d.intended_ns.push(s.intended_ns(k));
                    }
                    _ => d.stray += 1,
                }
            }
            Event::Other { ev, seq } => note(&mut d, seq, ev),
            Event::Status { status, dropped } => {
                if status == b"conflated" {
                    d.conflated += dropped;
                } else if status == b"shed" {
                    d.shed.0 += 1;
                    d.shed.1 += dropped;
                }
            }
        });
        if let Err(error) = scanned {
            d.malformed = Some(error.0);
        }
        *self = d;
    }

    /// Takes the message into a connection's figures, received at `now`; returns the step
    /// trades in it.
    fn apply(&self, tally: &mut Tally, now: u64, latency: &mut Histogram<u64>) -> u64 {
        let report = &mut tally.report;
        report.events += self.events;
        report.order_violations += self.order_violations;
        if let Some((first, last)) = self.seqs {
            if first <= tally.last_seq {
                report.order_violations += 1;
            }
            tally.last_seq = last;
        }
        for &(block, count, sum) in &self.blocks {
            match &mut tally.open {
                Some((b, events, checksum)) if *b == block => {
                    *events += count;
                    *checksum = checksum.wrapping_add(sum);
                }
                open => {
                    if let Some(done) = open.take() {
                        if tally.first_block != Some(done.0) {
                            report.blocks.push(done);
                        }
                    }
                    tally.first_block.get_or_insert(block);
                    *open = Some((block, count, sum));
                }
            }
        }
        report.trades += self.trades;
        report.checksum = report.checksum.wrapping_add(self.checksum);
        if let Some((lo, hi)) = self.k_range {
            report.k_range = Some(report.k_range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
        report.stray += self.stray;
        report.conflated += self.conflated;
        report.shed.0 += self.shed.0;
        report.shed.1 += self.shed.1;
        if let Some(error) = &self.malformed {
            report.malformed.get_or_insert_with(|| error.clone());
        }
        for &intended in &self.intended_ns {
            let _ = latency.record(now.saturating_sub(intended).max(1_000));
        }
        self.trades
    }
}

/// A reader's digests of the messages it has checked, by the XXH3-128 of their bytes, for
/// one step (a digest depends on the step's schedule). Direct-mapped: a slot holds the last
/// message that hashed to it, so a repeat is found while its group's members read it.
struct Digests {
    step: u64,
    slots: Vec<(u128, Digest)>,
    /// Messages digested and messages found already digested, for the report.
    parsed: u64,
    reused: u64,
}

impl Digests {
    fn new() -> Digests {
        Digests {
            step: u64::MAX,
            slots: (0..DIGEST_SLOTS).map(|_| (0, Digest::default())).collect(),
            parsed: 0,
            reused: 0,
        }
    }

    /// The digest of `text` under `step`, computed unless this reader has it.
    fn get(&mut self, text: &[u8], step: &Step) -> &Digest {
        let key = xxhash_rust::xxh3::xxh3_128(text);
        let filled = self.lookup(key, step, |digest, schedule| {
            digest.fill(text, schedule);
            Ok::<(), std::convert::Infallible>(())
        });
        match filled {
            Ok(digest) => digest,
            Err(never) => match never {},
        }
    }

    /// The digest of a compressed message, by the hash of its compressed bytes (the
    /// server compresses each message once for a whole group, and with no context kept
    /// between messages, so equal bytes inflate to equal text): inflated only when this
    /// reader has not checked it.
    fn get_compressed(
        &mut self,
        bytes: &[u8],
        step: &Step,
        inflater: &mut wire::Inflater,
    ) -> Result<&Digest, String> {
        // Another seed than plain messages': a compressed message is its own key space.
        let key = xxhash_rust::xxh3::xxh3_128_with_seed(bytes, COMPRESSED_SEED);
        self.lookup(key, step, |digest, schedule| {
            digest.fill(inflater.inflate(bytes).map_err(|e| e.to_string())?, schedule);
            Ok(())
        })
    }

    /// The slot of `key` under `step`, filled by `fill` unless it holds that key already.
    fn lookup<E>(
        &mut self,
        key: u128,
        step: &Step,
        fill: impl FnOnce(&mut Digest, Option<&Schedule>) -> Result<(), E>,
    ) -> Result<&Digest, E> {
        if self.step != step.number {
            self.slots.iter_mut().for_each(|slot| slot.0 = 0);
            self.step = step.number;
        }
        // 0 marks an empty slot; a message hashing to 0 is digested every time.
        let slot = &mut self.slots[key as usize & (DIGEST_SLOTS - 1)];
        if slot.0 == key && key != 0 {
            self.reused += 1;
        } else {
            slot.0 = 0;
            fill(&mut slot.1, step.schedule.as_ref())?;
            slot.0 = key;
            self.parsed += 1;
        }
        Ok(&slot.1)
    }
}

/// The XXH3 seed of compressed messages' digests.
const COMPRESSED_SEED: u64 = 0x7ab1_e5ee_d5c0_ffee_u64;

#[cfg(test)]
mod tests {
    use super::*;

    fn target(watchlist: Option<usize>, policies: &[&str]) -> Target {
        let tickers: Vec<String> = (0..50).map(|i| format!("S{i}")).collect();
        Target {
            addrs: vec!["127.0.0.1:1".parse().unwrap()],
            path: "/stocks".to_owned(),
            token: "t".to_owned(),
            topics: "T.*".to_owned(),
            watchlist: watchlist.map(|symbols| Watchlist {
                symbols,
                channels: vec!["T".to_owned(), "HL".to_owned()],
                tickers: Arc::new(tickers),
            }),
            policies: policies.iter().map(|p| (*p).to_owned()).collect(),
            receive_buffer_bytes: 0,
            deflate: false,
        }
    }

    fn tally(id: u32) -> Tally {
        Tally {
            report: ConnReport { id, ..Default::default() },
            last_seq: 0,
            open: None,
            first_block: None,
            begin_open: None,
            step: 1,
        }
    }

    #[test]
    fn a_repeated_message_is_digested_once_and_counts_the_same_for_every_receiver() {
        let schedule = Schedule { first: 100, trades: 10, rate: 1000.0, start_ns: 1_000_000 };
        let step = Step { number: 1, schedule: Some(schedule) };
        let message = br#"[{"ev":"T","sym":"A","seq":5,"p":1.5,"s":10,"i":"101"},{"ev":"A","sym":"A","seq":6},{"ev":"T","sym":"B","seq":7,"p":2,"s":1,"i":"99"}]"#;
        let (mut digests, mut latency) = (Digests::new(), new_histogram());
        let mut tallies = [tally(0), tally(1)];
        for tally in &mut tallies {
            let trades = digests.get(message, &step).apply(tally, 10_000_000, &mut latency);
            assert_eq!(trades, 1);
        }
        assert_eq!((digests.parsed, digests.reused), (1, 1));
        let [a, b] = &tallies;
        for r in [&a.report, &b.report] {
            assert_eq!((r.trades, r.stray, r.events, r.order_violations), (1, 1, 3, 0));
            assert_eq!(r.checksum, trade_mix(101, 1_500_000, 10));
        }
        assert_eq!((a.last_seq, a.open), (7, b.open));
        assert_eq!(latency.len(), 2, "one latency per receiver");

        // One altered byte is another message, read afresh, and its checksum differs.
        let altered = String::from_utf8_lossy(message).replace("1.5", "1.6");
        let mut c = tally(2);
        digests.get(altered.as_bytes(), &step).apply(&mut c, 10_000_000, &mut latency);
        assert_eq!(digests.parsed, 2);
        assert_ne!(c.report.checksum, a.report.checksum);

        // A new step has a new schedule: the same bytes are read again under it.
        let next = Step { number: 2, schedule: Some(Schedule { first: 200, ..schedule }) };
        let mut d = tally(3);
        assert_eq!(digests.get(message, &next).apply(&mut d, 0, &mut latency), 0);
        assert_eq!((d.report.trades, d.report.stray, digests.parsed), (0, 2, 3));
        // Replaying seq 5..7 after 7 breaks the order.
        digests.get(message, &step).apply(&mut tallies[0], 0, &mut latency);
        assert_eq!(tallies[0].report.order_violations, 1);
    }

    #[test]
    fn watchlists_are_distinct_symbols_drawn_the_same_way_every_time() {
        let t = target(Some(10), &[]);
        let a = t.symbols_for(7).unwrap();
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "distinct and sorted");
        assert_eq!(a, t.symbols_for(7).unwrap(), "reproducible");
        assert_ne!(a, t.symbols_for(8).unwrap(), "another client, another draw");
        let topics = t.topics_for(7);
        assert_eq!(topics.split(',').count(), 20);
        assert!(topics.starts_with(&format!("T.S{},HL.S{}", a[0], a[0])), "{topics}");
        // More symbols than the source has: all of them.
        assert_eq!(target(Some(500), &[]).symbols_for(1).unwrap().len(), 50);
        assert_eq!(target(None, &[]).topics_for(3), "T.*");
    }

    #[test]
    fn policies_go_round_by_client_id() {
        let t = target(None, &["close", "conflate", "shed"]);
        let chosen: Vec<_> = (0..4).map(|id| t.policy_for(id).unwrap()).collect();
        assert_eq!(chosen, ["close", "conflate", "shed", "close"]);
        assert_eq!(target(None, &[]).policy_for(0), None);
    }
}
