//! The client side: N WebSocket connections to the server under test, read by a few reader
//! threads that wait in epoll (mio) and check every event they get.
//!
//! Per connection and step a reader keeps: the step's trades received, their checksum (id,
//! price, size), events of every kind, `seq` order, trades from outside the step, malformed
//! messages, conflation losses and how the connection ended. Per connection and run it keeps
//! a checksum of every event per block of `seq` numbers, so the load generator can check
//! that all clients saw the same bars and detector events. Latency is recorded for each
//! trade of the step: receive time minus the trade's intended send time.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use crate::upstream::{Clock, Schedule};
use crate::wire::{event_mix, for_each_event, trade_mix, Event};

/// `seq` numbers per block of the cross-client event checksum (`seq >> BLOCK_SHIFT`).
pub const BLOCK_SHIFT: u32 = 12;
/// tungstenite zero-fills this much before every read, so it stays small; a large message
/// still reserves its whole length.
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Deadline for the handshake, auth and subscribe of one connection.
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);
const WAKER: Token = Token(usize::MAX);
/// Connections handed to a reader at a time while a pool grows.
const ADD_BATCH: usize = 32;

/// Where and how clients connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// The server's address.
    pub addr: SocketAddr,
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
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Target {
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
    socket: WebSocket<TcpStream>,
    /// Its local port (to find its receive queue in `/proc/net/tcp`).
    port: u16,
}

impl Conn {
    /// Connects, authenticates and subscribes, blocking, then switches to non-blocking.
    pub fn open(target: &Target, id: u32) -> Result<Conn, String> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("client {id}: {what}: {e}");
        let domain = socket2::Domain::for_address(target.addr);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .map_err(|e| fail("socket", &e))?;
        if target.receive_buffer_bytes > 0 {
            // Before connecting, so the window is set from the start (and autotuning is off).
            socket
                .set_recv_buffer_size(target.receive_buffer_bytes)
                .map_err(|e| fail("SO_RCVBUF", &e))?;
        }
        socket
            .connect_timeout(&target.addr.into(), CONNECT_DEADLINE)
            .map_err(|e| fail("connect", &e))?;
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).map_err(|e| fail("socket", &e))?;
        stream.set_read_timeout(Some(CONNECT_DEADLINE)).map_err(|e| fail("socket", &e))?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let url = format!("ws://{}{}", target.addr, target.path);
        let (mut socket, _) = tungstenite::client::client_with_config(url, stream, Some(config))
            .map_err(|e| fail("handshake", &e))?;
        let token = serde_json::to_string(&target.token).unwrap_or_default();
        socket
            .send(Message::text(format!(r#"{{"action":"auth","params":{token}}}"#)))
            .map_err(|e| fail("send auth", &e))?;
        await_status(&mut socket, |s| s == "auth_success").map_err(|e| fail("auth", &e))?;
        let topics = serde_json::to_string(&target.topics_for(id)).unwrap_or_default();
        socket
            .send(Message::text(format!(r#"{{"action":"subscribe","params":{topics}}}"#)))
            .map_err(|e| fail("send subscribe", &e))?;
        await_status(&mut socket, |s| s == "success").map_err(|e| fail("subscribe", &e))?;
        if let Some(policy) = target.policy_for(id) {
            let options = format!(
                r#"{{"action":"options","params":{{"slow_consumer":{}}}}}"#,
                serde_json::to_string(policy).unwrap_or_default()
            );
            socket.send(Message::text(options)).map_err(|e| fail("send options", &e))?;
            await_status(&mut socket, |s| s == "success").map_err(|e| fail("options", &e))?;
        }
        socket.get_mut().set_nonblocking(true).map_err(|e| fail("socket", &e))?;
        let port = socket.get_ref().local_addr().map_or(0, |a| a.port());
        Ok(Conn { id, socket, port })
    }
}

/// Reads messages until a status for which `wanted` holds; an `error`-like status fails.
fn await_status(
    socket: &mut WebSocket<TcpStream>,
    wanted: impl Fn(&str) -> bool,
) -> Result<(), String> {
    loop {
        let text = match socket.read().map_err(|e| e.to_string())? {
            Message::Text(text) => text,
            Message::Close(frame) => return Err(format!("closed: {frame:?}")),
            _ => continue,
        };
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str(text.as_str()) else {
            continue;
        };
        for item in items {
            let status = item["status"].as_str().unwrap_or_default();
            if wanted(status) {
                return Ok(());
            }
            if matches!(status, "auth_failed" | "error" | "max_connections") {
                return Err(format!("{status}: {}", item["message"].as_str().unwrap_or_default()));
            }
        }
    }
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
    /// Tick-to-client latency of the step's trades (ns).
    pub latency: Histogram<u64>,
    /// Time the reader spent reading and checking (not waiting in epoll), ns: near the
    /// step's length, the reader, not the server, was the limit.
    pub busy_ns: u64,
    /// Per connection.
    pub conns: Vec<ConnReport>,
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
    latency: Histogram<u64>,
    /// The step `latency` is for.
    latency_step: u64,
    /// Time spent working since the last report, ns.
    busy_ns: u64,
}

fn new_histogram() -> Histogram<u64> {
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
            latency: new_histogram(),
            latency_step: 0,
            busy_ns: 0,
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
            let fd = conn.socket.get_ref().as_raw_fd();
            let mut held = Held {
                report: ConnReport { id: conn.id, ..Default::default() },
                conn,
                last_seq: 0,
                open: None,
                first_block: None,
                begin_open: None,
                step: 0,
            };
            if let Err(error) =
                self.poll.registry().register(&mut SourceFd(&fd), Token(slot), Interest::READABLE)
            {
                held.report.closed = Some(format!("epoll: {error}"));
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
                    let fd = held.conn.socket.get_ref().as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                    let _ = held.conn.socket.close(None);
                    let _ = held.conn.socket.flush();
                }
            }
        }
    }

    fn end(&mut self) -> ReaderReport {
        let step = self.step().number;
        let mut conns = Vec::new();
        for slot in &mut self.conns {
            let Some(held) = slot.as_mut() else { continue };
            roll(held, step);
            // Whole blocks seen in this step: from the one open at `begin` (or after the
            // first, partial one) up to, not including, the one open now.
            let start = match held.first_block {
                Some(first) => held.begin_open.unwrap_or(0).max(first + 1),
                None => u64::MAX,
            };
            held.report.covered = (start, held.open.map_or(0, |o| o.0));
            let report = std::mem::replace(
                &mut held.report,
                ConnReport { id: held.conn.id, ..Default::default() },
            );
            held.begin_open = held.open.map(|o| o.0);
            if report.closed.is_some() {
                *slot = None;
            }
            conns.push(report);
        }
        let latency = if self.latency_step == step {
            std::mem::replace(&mut self.latency, new_histogram())
        } else {
            new_histogram()
        };
        ReaderReport { latency, conns, busy_ns: std::mem::take(&mut self.busy_ns) }
    }

    fn read(&mut self, slot: usize) {
        let Some(Some(held)) = self.conns.get_mut(slot) else { return };
        if held.report.closed.is_some() {
            return;
        }
        loop {
            match held.conn.socket.read() {
                Ok(Message::Text(text)) => {
                    let now = self.clock.now().0;
                    let step = *self.current.read().unwrap_or_else(PoisonError::into_inner);
                    roll(held, step.number);
                    if self.latency_step != step.number {
                        (self.latency, self.latency_step) = (new_histogram(), step.number);
                    }
                    let trades = absorb(
                        held,
                        text.as_bytes(),
                        now,
                        step.schedule.as_ref(),
                        &mut self.latency,
                    );
                    self.received.fetch_add(trades, Ordering::Relaxed);
                }
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame
                        .map_or((0, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    held.report.slow_consumer = code == 4008;
                    held.report.closed = Some(format!("closed by the server: {code} {reason}"));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break
                }
                Err(error) => {
                    if held.report.closed.is_none() {
                        held.report.closed = Some(format!("connection lost: {error}"));
                    }
                }
            }
            if held.report.closed.is_some() {
                let fd = held.conn.socket.get_ref().as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                return;
            }
        }
        // Pongs for the server's pings.
        let _ = held.conn.socket.flush();
    }
}

/// Moves a connection's figures to step `number` if they are for an earlier one. Trades
/// that arrived after the earlier step was reported are counted as strays of the new one.
fn roll(held: &mut Held, number: u64) {
    if held.step == number {
        return;
    }
    let late = held.report.trades + held.report.stray;
    let closed = held.report.closed.take();
    let slow_consumer = held.report.slow_consumer;
    held.report =
        ConnReport { id: held.conn.id, stray: late, closed, slow_consumer, ..Default::default() };
    held.begin_open = held.open.map(|o| o.0);
    held.step = number;
}

/// Takes one message into a connection's figures; returns the step trades in it.
fn absorb(
    held: &mut Held,
    text: &[u8],
    now: u64,
    schedule: Option<&Schedule>,
    latency: &mut Histogram<u64>,
) -> u64 {
    let report = &mut held.report;
    let (last_seq, open, first_block) = (&mut held.last_seq, &mut held.open, &mut held.first_block);
    let mut trades = 0;
    let mut note = |seq: u64, ev: &[u8], report: &mut ConnReport| {
        report.events += 1;
        if seq <= *last_seq {
            report.order_violations += 1;
        }
        *last_seq = seq;
        let block = seq >> BLOCK_SHIFT;
        match open {
            Some((b, count, sum)) if *b == block => {
                *count += 1;
                *sum = sum.wrapping_add(event_mix(seq, ev));
            }
            _ => {
                if let Some(done) = open.take() {
                    if *first_block != Some(done.0) {
                        report.blocks.push(done);
                    }
                }
                first_block.get_or_insert(block);
                *open = Some((block, 1, event_mix(seq, ev)));
            }
        }
    };
    let scanned = for_each_event(text, |event| match event {
        Event::Trade { seq, k, price, size } => {
            note(seq, b"T", report);
            match schedule {
                Some(s) if s.contains(k) => {
                    trades += 1;
                    report.trades += 1;
                    report.k_range =
                        Some(report.k_range.map_or((k, k), |(lo, hi)| (lo.min(k), hi.max(k))));
                    report.checksum = report.checksum.wrapping_add(trade_mix(k, price, size));
                    let _ = latency.record(now.saturating_sub(s.intended_ns(k)).max(1_000));
                }
                _ => report.stray += 1,
            }
        }
        Event::Other { ev, seq } => note(seq, ev, report),
        Event::Status { status, dropped } => {
            if status == b"conflated" {
                report.conflated += dropped;
            } else if status == b"shed" {
                report.shed.0 += 1;
                report.shed.1 += dropped;
            }
        }
    });
    if let Err(error) = scanned {
        report.malformed.get_or_insert(error.0);
    }
    trades
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(watchlist: Option<usize>, policies: &[&str]) -> Target {
        let tickers: Vec<String> = (0..50).map(|i| format!("S{i}")).collect();
        Target {
            addr: "127.0.0.1:1".parse().unwrap(),
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
        }
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
