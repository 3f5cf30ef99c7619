//! The upstream the server under test connects to: a Polygon-compatible WebSocket feed that
//! plays trades on an open-loop schedule.
//!
//! Trade `k` of a step is *intended* at `start + (k - first) / rate`; the player sends every
//! trade that is due and never waits for the server. When it falls behind (the socket is
//! full, or the machine is busy), trades go out late in larger batches, and their latency is
//! still counted from the intended time: the coordinated-omission correction of wrk2 and
//! HdrHistogram's `record_correct`, applied at the source. The trade id `i` (and `q`) is `k`,
//! so a client can tell which trade it holds and when it was meant to leave.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hdrhistogram::Histogram;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

use tickstock_engine::encode::write_price;
use tickstock_engine::Price;
pub use tickstock_shell::clock::Clock;

use crate::source::Source;
use crate::wire::trade_mix;

/// Trades in one upstream message, at most.
pub const TRADES_PER_MESSAGE_MAX: u64 = 1_000;
/// The player sleeps until the next trade is due, waking this much early: Linux's default
/// timer slack makes a sleep overshoot by up to ~60 µs. It never spins or yields in a loop,
/// which on a 2-core machine would take a core from the server under test; what is left of
/// the overshoot is counted in the player's send lag and in every latency figure.
const WAKE_EARLY: Duration = Duration::from_micros(50);
/// The shortest sleep: at high rates the player wakes at most every 100 µs and sends what is
/// due as one message (as Polygon batches), instead of one wake-up and one write per trade.
const SLEEP_MIN: Duration = Duration::from_micros(100);
/// How long the player waits for the server's `auth` and `subscribe` messages.
const SESSION_DEADLINE: Duration = Duration::from_secs(10);

/// The schedule of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Id of the step's first trade.
    pub first: u64,
    /// Trades in the step.
    pub trades: u64,
    /// Trades per second.
    pub rate: f64,
    /// When trade `first` is intended, Unix ns on the shared [`Clock`].
    pub start_ns: u64,
}

impl Schedule {
    /// When trade `k` is meant to leave.
    pub fn intended_ns(&self, k: u64) -> u64 {
        self.start_ns + ((k - self.first) as f64 * 1e9 / self.rate) as u64
    }

    /// Whether trade `k` belongs to this step.
    pub fn contains(&self, k: u64) -> bool {
        k >= self.first && k < self.first + self.trades
    }
}

/// What the player is told.
#[derive(Debug)]
pub enum Command {
    /// Play a step.
    Play(Schedule),
    /// Close the session and end the thread.
    Stop,
}

/// What the player reports.
#[derive(Debug)]
pub enum Report {
    /// The server connected, authenticated and subscribed (the n-th session).
    Session(u32),
    /// A session ended or failed, with the reason.
    Lost(String),
    /// A step was played.
    Played(Played),
}

/// The outcome of one step on the sending side.
#[derive(Debug)]
pub struct Played {
    /// Trades written to the socket.
    pub sent: u64,
    /// Sum of [`trade_mix`] over the sent trades: what every client must add up to.
    pub checksum: u64,
    /// Per symbol index: trades sent and their checksum (what a watchlist must add up to).
    pub by_symbol: Vec<(u64, u64)>,
    /// Clock reading after the last write.
    pub finished_ns: u64,
    /// How late each message left against the intended time of its first trade (ns).
    pub send_lag: Histogram<u64>,
    /// Upstream messages written.
    pub messages: u64,
    /// Why the step ended early (the session failed), if it did.
    pub lost: Option<String>,
}

/// The listening player.
#[derive(Debug)]
pub struct Player {
    /// Where the server under test must connect (`ws://ADDR/stocks`).
    pub addr: SocketAddr,
    thread: JoinHandle<()>,
}

impl Player {
    /// Listens on `listen` and serves one session at a time on a thread; the server must
    /// authenticate with `key`.
    pub fn start(
        listen: SocketAddr,
        key: String,
        source: Source,
        clock: Clock,
        commands: Receiver<Command>,
        reports: Sender<Report>,
    ) -> std::io::Result<Player> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let thread = thread::Builder::new().name("loadgen-upstream".into()).spawn(move || {
            let mut state =
                State { source, clock, key, sessions: 0, next_send: Vec::new(), q: Vec::new() };
            state.run(&listener, &commands, &reports);
        })?;
        Ok(Player { addr, thread })
    }

    /// Waits for the thread (after [`Command::Stop`]).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

type Socket = WebSocket<TcpStream>;

struct State {
    source: Source,
    clock: Clock,
    key: String,
    sessions: u32,
    next_send: Vec<u8>,
    /// The last `q` sent per symbol: numbered per symbol, gapless, as an upstream's sequence
    /// numbers are read (the server counts the gaps in them).
    q: Vec<u64>,
}

impl State {
    fn run(
        &mut self,
        listener: &TcpListener,
        commands: &Receiver<Command>,
        reports: &Sender<Report>,
    ) {
        let mut socket: Option<Socket> = None;
        loop {
            if socket.is_none() {
                socket = match listener.accept() {
                    Ok((stream, _)) => match self.handshake(stream) {
                        Ok(socket) => {
                            self.sessions += 1;
                            let _ = reports.send(Report::Session(self.sessions));
                            Some(socket)
                        }
                        Err(reason) => {
                            let _ = reports.send(Report::Lost(reason));
                            None
                        }
                    },
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => None,
                    Err(error) => {
                        let _ = reports.send(Report::Lost(format!("accept: {error}")));
                        None
                    }
                };
            }
            match commands.recv_timeout(Duration::from_millis(10)) {
                Ok(Command::Play(schedule)) => {
                    let played = self.play(socket.as_mut(), schedule);
                    if let Some(reason) = &played.lost {
                        socket = None;
                        let _ = reports.send(Report::Lost(reason.clone()));
                    }
                    let _ = reports.send(Report::Played(played));
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    if let Some(mut socket) = socket {
                        let _ = socket.close(None);
                        let _ = socket.flush();
                    }
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(live) = socket.as_mut() {
                        // Between steps: answer pings, notice a close.
                        if let Err(reason) = idle(live) {
                            socket = None;
                            let _ = reports.send(Report::Lost(reason));
                        }
                    }
                }
            }
        }
    }

    /// Polygon's session: `connected`, then the server's `auth` (checked against the key),
    /// then its `subscribe`.
    fn handshake(&mut self, stream: TcpStream) -> Result<Socket, String> {
        let fail = |what: &str, error: &dyn std::fmt::Display| {
            format!("upstream session: {what}: {error}")
        };
        stream.set_nonblocking(false).map_err(|e| fail("socket", &e))?;
        stream.set_nodelay(true).map_err(|e| fail("socket", &e))?;
        stream.set_read_timeout(Some(SESSION_DEADLINE)).map_err(|e| fail("socket", &e))?;
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let mut socket = tungstenite::accept_with_config(stream, Some(config))
            .map_err(|e| fail("WebSocket handshake", &e))?;
        let status = |status: &str, message: &str| {
            Message::text(format!(
                r#"[{{"ev":"status","status":"{status}","message":"{message}"}}]"#
            ))
        };
        socket.send(status("connected", "Connected Successfully")).map_err(|e| fail("send", &e))?;
        let auth = read_text(&mut socket).map_err(|e| fail("reading auth", &e))?;
        let expected = serde_json::json!({"action": "auth", "params": self.key});
        if serde_json::from_str::<serde_json::Value>(&auth).ok() != Some(expected) {
            let _ = socket.send(status("auth_failed", "authentication failed"));
            return Err("upstream session: the server sent the wrong key".to_owned());
        }
        socket.send(status("auth_success", "authenticated")).map_err(|e| fail("send", &e))?;
        let subscribe = read_text(&mut socket).map_err(|e| fail("reading subscribe", &e))?;
        let value: serde_json::Value =
            serde_json::from_str(&subscribe).map_err(|e| fail("subscribe", &e))?;
        let topics = value["params"].as_str().unwrap_or_default().to_owned();
        if !topics.split(',').any(|t| t.trim() == "T.*") {
            return Err(format!("upstream session: the server subscribed to `{topics}`, not T.*"));
        }
        socket
            .send(status("success", &format!("subscribed to: {topics}")))
            .map_err(|e| fail("send", &e))?;
        socket
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .map_err(|e| fail("socket", &e))?;
        Ok(socket)
    }

    /// Sends the step's trades on schedule; a write failure ends the step early, with the
    /// reason in [`Played::lost`].
    fn play(&mut self, socket: Option<&mut Socket>, schedule: Schedule) -> Played {
        let mut played = Played {
            sent: 0,
            checksum: 0,
            by_symbol: vec![(0, 0); self.source.tickers().len()],
            finished_ns: 0,
            send_lag: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds"),
            messages: 0,
            lost: None,
        };
        let Some(socket) = socket else {
            played.finished_ns = self.clock.now().0;
            played.lost = Some("no upstream session: the server is not connected".to_owned());
            return played;
        };
        let end = schedule.first + schedule.trades;
        let mut next = schedule.first;
        while next < end {
            let now = self.clock.now().0;
            let due = if now < schedule.start_ns {
                schedule.first
            } else {
                let elapsed = (now - schedule.start_ns) as f64;
                (schedule.first + 1 + (elapsed * schedule.rate / 1e9) as u64).min(end)
            };
            if due > next {
                let upto = due.min(next + TRADES_PER_MESSAGE_MAX);
                let lag = now.saturating_sub(schedule.intended_ns(next));
                let sum = self.encode(&schedule, next, upto, &mut played.by_symbol);
                played.checksum = played.checksum.wrapping_add(sum);
                // Tickers are `&str`s and the rest is ASCII: this cannot fail.
                let text =
                    String::from_utf8(std::mem::take(&mut self.next_send)).unwrap_or_default();
                let message = Message::text(text);
                if let Err(error) = socket.send(message) {
                    played.finished_ns = self.clock.now().0;
                    played.lost = Some(format!("upstream write: {error}"));
                    return played;
                }
                let _ = played.send_lag.record(lag.max(1));
                played.messages += 1;
                played.sent += upto - next;
                next = upto;
                continue;
            }
            let wait = Duration::from_nanos(schedule.intended_ns(next).saturating_sub(now));
            thread::sleep(wait.saturating_sub(WAKE_EARLY).max(SLEEP_MIN));
        }
        played.finished_ns = self.clock.now().0;
        played
    }

    /// Encodes trades `[from, upto)` into `next_send`; returns their checksum.
    fn encode(
        &mut self,
        schedule: &Schedule,
        from: u64,
        upto: u64,
        by_symbol: &mut [(u64, u64)],
    ) -> u64 {
        let out = &mut self.next_send;
        out.clear();
        out.push(b'[');
        let mut sum = 0u64;
        for k in from..upto {
            let trade = self.source.next_trade();
            if k > from {
                out.push(b',');
            }
            let t = schedule.intended_ns(k) / 1_000_000;
            let symbol = trade.symbol as usize;
            if self.q.len() <= symbol {
                self.q.resize(symbol + 1, 0);
            }
            self.q[symbol] += 1;
            let q = self.q[symbol];
            let ticker = &self.source.tickers()[symbol];
            let _ =
                write!(out, r#"{{"ev":"T","sym":"{ticker}","i":"{k}","x":{},"p":"#, trade.exchange);
            write_price(out, Price::from_raw(trade.price));
            let _ = write!(out, r#","s":{},"t":{t},"q":{q}}}"#, trade.size);
            let mix = trade_mix(k, trade.price, trade.size);
            sum = sum.wrapping_add(mix);
            if let Some(entry) = by_symbol.get_mut(trade.symbol as usize) {
                entry.0 += 1;
                entry.1 = entry.1.wrapping_add(mix);
            }
        }
        out.push(b']');
        sum
    }
}

/// Reads the next text message (answering pings), within the socket's read timeout.
fn read_text(socket: &mut Socket) -> Result<String, tungstenite::Error> {
    loop {
        match socket.read()? {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Close(_) => return Err(tungstenite::Error::ConnectionClosed),
            _ => {}
        }
    }
}

/// Between steps: reads whatever the server sent, without waiting more than the 1 ms read
/// timeout; an error means the session is gone.
fn idle(socket: &mut Socket) -> Result<(), String> {
    match socket.read() {
        Ok(Message::Close(_)) => Err("the server closed the upstream session".to_owned()),
        Ok(_) => Ok(()),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            let _ = socket.flush();
            Ok(())
        }
        Err(error) => Err(format!("upstream session: {error}")),
    }
}
