//! Disruptors: clients beside the measured pool that do what a real population does besides
//! streaming, so a long run (the soak, `tools/soak.sh`) shows what they cost the server and
//! the pool's clients, and that they leak nothing:
//!
//! - **churn**: connect and leave, over and over, five ways in turn: a full session closed
//!   cleanly, one dropped without a close, a handshake never authenticated, a TCP connect
//!   that never speaks, and an upgrade request cut off half-way;
//! - **slow**: subscribe to everything and read a message every `SLOW_READ_PAUSE`, far below
//!   the stream's rate, each with a slow-consumer policy in turn (`close`, `conflate`,
//!   `shed`), reconnecting when closed;
//! - **resume**: hold a few symbols' trades, drop the connection, come back, subscribe and
//!   `resume` from the last `seq` seen, and check per symbol that `q` (numbered gaplessly
//!   per symbol by the player) goes on with no gap and no repeat.
//!
//! Each runs on a thread of its own with blocking sockets (they mostly sleep); their counts
//! are shared atomics the run samples per step.

use std::io::Write;
use std::net::TcpStream;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

use crate::clients::{await_auth, mix, Target};

/// A slow client reads one message, then sleeps this long.
const SLOW_READ_PAUSE: Duration = Duration::from_millis(20);
/// A slow client that was not closed reconnects after this long anyway (a shed or conflated
/// one would otherwise stay quiet).
const SLOW_SESSION_MAX: Duration = Duration::from_secs(30);
/// Socket timeouts of every disruptor.
const IO_TIMEOUT: Duration = Duration::from_millis(200);
/// Symbols each resuming client follows.
const RESUME_SYMBOLS: usize = 3;

/// How many disruptors of each kind (`churn=20,slow=15,resume=15`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mix {
    /// Churning clients.
    pub churn: u32,
    /// Slow readers.
    pub slow: u32,
    /// Resuming clients.
    pub resume: u32,
}

impl Mix {
    /// All of them.
    pub fn total(&self) -> u32 {
        self.churn + self.slow + self.resume
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut mix = Mix::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, count) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: want KIND=COUNT (churn, slow, resume)"))?;
            let count: u32 = count.parse().map_err(|_| format!("{part:?}: not a count"))?;
            match kind {
                "churn" => mix.churn = count,
                "slow" => mix.slow = count,
                "resume" => mix.resume = count,
                other => return Err(format!("{other:?} is not churn, slow or resume")),
            }
        }
        Ok(mix)
    }
}

/// What the disruptors did (over a run, or a step's difference of two of these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Churn sessions completed.
    pub churn_sessions: u64,
    /// Slow sessions begun.
    pub slow_sessions: u64,
    /// Slow sessions the server closed as slow consumers (4008).
    pub slow_closed: u64,
    /// `conflated` and `shed` statuses slow clients received.
    pub slow_statuses: u64,
    /// Resumes the server honoured (`resumed`).
    pub resumed: u64,
    /// Resumes it refused as too old (`resume_failed`); nothing is checked across those.
    pub resume_too_old: u64,
    /// Trades checked by resuming clients.
    pub resume_trades: u64,
    /// Trades missing on a resuming client: `q` jumped (must stay 0).
    pub resume_gaps: u64,
    /// Trades a resuming client got twice: `q` or `seq` went back (must stay 0).
    pub resume_repeats: u64,
    /// Sessions of any kind that failed where they should not have (connect, handshake,
    /// auth, an unreadable message).
    pub errors: u64,
}

impl Tally {
    /// Both together.
    pub fn plus(&self, other: &Tally) -> Tally {
        Tally {
            churn_sessions: self.churn_sessions + other.churn_sessions,
            slow_sessions: self.slow_sessions + other.slow_sessions,
            slow_closed: self.slow_closed + other.slow_closed,
            slow_statuses: self.slow_statuses + other.slow_statuses,
            resumed: self.resumed + other.resumed,
            resume_too_old: self.resume_too_old + other.resume_too_old,
            resume_trades: self.resume_trades + other.resume_trades,
            resume_gaps: self.resume_gaps + other.resume_gaps,
            resume_repeats: self.resume_repeats + other.resume_repeats,
            errors: self.errors + other.errors,
        }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            churn_sessions: self.churn_sessions - earlier.churn_sessions,
            slow_sessions: self.slow_sessions - earlier.slow_sessions,
            slow_closed: self.slow_closed - earlier.slow_closed,
            slow_statuses: self.slow_statuses - earlier.slow_statuses,
            resumed: self.resumed - earlier.resumed,
            resume_too_old: self.resume_too_old - earlier.resume_too_old,
            resume_trades: self.resume_trades - earlier.resume_trades,
            resume_gaps: self.resume_gaps - earlier.resume_gaps,
            resume_repeats: self.resume_repeats - earlier.resume_repeats,
            errors: self.errors - earlier.errors,
        }
    }
}

/// The shared counts, one atomic per `Tally` field.
#[derive(Debug, Default)]
struct Counts([AtomicU64; 10]);

#[derive(Clone, Copy)]
enum Count {
    ChurnSessions,
    SlowSessions,
    SlowClosed,
    SlowStatuses,
    Resumed,
    ResumeTooOld,
    ResumeTrades,
    ResumeGaps,
    ResumeRepeats,
    Errors,
}

impl Counts {
    fn add(&self, count: Count, n: u64) {
        // Relaxed: statistics, read between steps.
        self.0[count as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn tally(&self) -> Tally {
        let get = |c: Count| self.0[c as usize].load(Ordering::Relaxed);
        Tally {
            churn_sessions: get(Count::ChurnSessions),
            slow_sessions: get(Count::SlowSessions),
            slow_closed: get(Count::SlowClosed),
            slow_statuses: get(Count::SlowStatuses),
            resumed: get(Count::Resumed),
            resume_too_old: get(Count::ResumeTooOld),
            resume_trades: get(Count::ResumeTrades),
            resume_gaps: get(Count::ResumeGaps),
            resume_repeats: get(Count::ResumeRepeats),
            errors: get(Count::Errors),
        }
    }
}

/// The running disruptors.
#[derive(Debug)]
pub struct Disruptors {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<()>>,
}

struct Ctx {
    target: Target,
    tickers: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
}

impl Ctx {
    fn stopping(&self) -> bool {
        // Relaxed: a polled flag.
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps up to `time`, waking early to stop.
    fn pause(&self, time: Duration) {
        let until = Instant::now() + time;
        while !self.stopping() && Instant::now() < until {
            thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }

    fn error(&self) {
        self.counts.add(Count::Errors, 1);
    }
}

impl Disruptors {
    /// Starts `mix` disruptors against `target`; `tickers` are the played source's symbols.
    pub fn start(target: &Target, mix: Mix, tickers: Arc<Vec<String>>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        let kinds = [(mix.churn, "churn"), (mix.slow, "slow"), (mix.resume, "resume")];
        for (count, kind) in kinds {
            for id in 0..count {
                let ctx = Ctx {
                    target: target.clone(),
                    tickers: Arc::clone(&tickers),
                    stop: Arc::clone(&stop),
                    counts: Arc::clone(&counts),
                };
                let run: fn(&Ctx, u32) = match kind {
                    "churn" => churn,
                    "slow" => slow,
                    _ => resume,
                };
                threads.push(
                    thread::Builder::new()
                        .name(format!("loadgen-{kind}-{id}"))
                        .stack_size(256 << 10)
                        .spawn(move || run(&ctx, id))?,
                );
            }
        }
        Ok(Disruptors { stop, counts, threads })
    }

    /// What they did so far.
    pub fn tally(&self) -> Tally {
        self.counts.tally()
    }

    /// Stops them and closes their connections.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

type Ws = WebSocket<TcpStream>;

fn tcp(ctx: &Ctx) -> Option<TcpStream> {
    let stream = TcpStream::connect_timeout(&ctx.target.addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.set_nodelay(true).ok()?;
    Some(stream)
}

/// Connects and completes the handshake (not yet authenticated).
fn handshake(ctx: &Ctx) -> Option<Ws> {
    let stream = tcp(ctx)?;
    let url = format!("ws://{}{}", ctx.target.addr, ctx.target.path);
    tungstenite::client(url, stream).ok().map(|(ws, _)| ws)
}

/// Connects, authenticates, optionally chooses a policy, and subscribes.
fn session(ctx: &Ctx, topics: &str, policy: Option<&str>) -> Option<Ws> {
    let mut ws = handshake(ctx)?;
    let token = serde_json::to_string(&ctx.target.token).ok()?;
    ws.send(Message::text(format!(r#"{{"action":"auth","params":{token}}}"#))).ok()?;
    await_auth(&mut ws).ok()?;
    if let Some(policy) = policy {
        let options = format!(r#"{{"action":"options","params":{{"slow_consumer":"{policy}"}}}}"#);
        ws.send(Message::text(options)).ok()?;
    }
    let topics = serde_json::to_string(topics).ok()?;
    ws.send(Message::text(format!(r#"{{"action":"subscribe","params":{topics}}}"#))).ok()?;
    Some(ws)
}

/// One read: `Ok(Some)` a message, `Ok(None)` nothing within the timeout, `Err` the end
/// (with the close code, if the server sent one).
fn read(ws: &mut Ws) -> Result<Option<Message>, Option<CloseCode>> {
    match ws.read() {
        Ok(Message::Close(frame)) => Err(frame.map(|f| f.code)),
        Ok(message) => Ok(Some(message)),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(_) => Err(None),
    }
}

/// Reads for `time` (or until the connection ends); whether it is still open.
fn read_for(ctx: &Ctx, ws: &mut Ws, time: Duration) -> bool {
    let until = Instant::now() + time;
    while !ctx.stopping() && Instant::now() < until {
        if read(ws).is_err() {
            return false;
        }
    }
    true
}

/// A draw in `[lo, hi)` ms from `seed`.
fn ms(seed: u64, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(lo + mix(seed) % (hi - lo).max(1))
}

fn churn(ctx: &Ctx, id: u32) {
    let mut round = u64::from(id) << 32;
    while !ctx.stopping() {
        round += 1;
        let ok = match round % 5 {
            // A full session, closed cleanly.
            0 => session(ctx, "T.*,HL.*", None).is_some_and(|mut ws| {
                read_for(ctx, &mut ws, ms(round, 300, 2_000));
                let _ = ws.close(None);
                let until = Instant::now() + Duration::from_secs(2);
                while Instant::now() < until && read(&mut ws).is_ok() {}
                true
            }),
            // A session on a few symbols, dropped without a close.
            1 => {
                let symbols: Vec<String> =
                    (0..4).map(|k| format!("A.{}", ticker(ctx, round + k))).collect();
                session(ctx, &symbols.join(","), None).is_some_and(|mut ws| {
                    read_for(ctx, &mut ws, ms(round, 300, 2_000));
                    true
                })
            }
            // A handshake that never authenticates.
            2 => handshake(ctx).is_some_and(|_ws| {
                ctx.pause(ms(round, 50, 500));
                true
            }),
            // A TCP connection that never speaks.
            3 => tcp(ctx).is_some_and(|_stream| {
                ctx.pause(ms(round, 50, 500));
                true
            }),
            // An upgrade request cut off half-way.
            _ => tcp(ctx).is_some_and(|mut stream| {
                let request =
                    format!("GET {} HTTP/1.1\r\nHost: x\r\nUpgrade: webs", ctx.target.path);
                let _ = stream.write_all(request.as_bytes());
                ctx.pause(ms(round, 50, 500));
                true
            }),
        };
        if ok {
            ctx.counts.add(Count::ChurnSessions, 1);
        } else if !ctx.stopping() {
            ctx.error();
        }
        ctx.pause(ms(round, 100, 500));
    }
}

fn slow(ctx: &Ctx, id: u32) {
    let policies = ["close", "conflate", "shed"];
    let policy = policies[id as usize % policies.len()];
    while !ctx.stopping() {
        let Some(mut ws) = session(ctx, "T.*,A.*", Some(policy)) else {
            ctx.error();
            ctx.pause(Duration::from_secs(1));
            continue;
        };
        ctx.counts.add(Count::SlowSessions, 1);
        let began = Instant::now();
        while !ctx.stopping() && began.elapsed() < SLOW_SESSION_MAX {
            match read(&mut ws) {
                Ok(Some(Message::Text(text))) => {
                    let statuses = text.matches(r#""status":"conflated""#).count()
                        + text.matches(r#""status":"shed""#).count();
                    ctx.counts.add(Count::SlowStatuses, statuses as u64);
                }
                Ok(_) => {}
                Err(code) => {
                    if code == Some(CloseCode::Library(4008)) {
                        ctx.counts.add(Count::SlowClosed, 1);
                    }
                    break;
                }
            }
            thread::sleep(SLOW_READ_PAUSE);
        }
        ctx.pause(Duration::from_millis(500));
    }
}

fn ticker(ctx: &Ctx, draw: u64) -> &str {
    if ctx.tickers.is_empty() {
        return "X";
    }
    &ctx.tickers[(mix(draw) % ctx.tickers.len() as u64) as usize]
}

/// A resuming client's view of its symbols: the last `seq` and each symbol's last `q`.
struct Resumer {
    topics: String,
    symbols: Vec<String>,
    last_seq: Option<u64>,
    last_q: Vec<Option<u64>>,
}

impl Resumer {
    /// Checks one message's trades; `Err` if it cannot be read.
    fn check(&mut self, ctx: &Ctx, text: &str) -> Result<(), ()> {
        let serde_json::Value::Array(items) = serde_json::from_str(text).map_err(|_| ())? else {
            return Err(());
        };
        for item in items {
            match item["ev"].as_str() {
                Some("status") => match item["status"].as_str() {
                    Some("resumed") => ctx.counts.add(Count::Resumed, 1),
                    Some("resume_failed") => {
                        // Too old: what follows is live; nothing to check across the gap.
                        ctx.counts.add(Count::ResumeTooOld, 1);
                        self.last_q.iter_mut().for_each(|q| *q = None);
                        self.last_seq = None;
                    }
                    _ => {}
                },
                Some("T") => {
                    let (Some(sym), Some(q), Some(seq)) =
                        (item["sym"].as_str(), item["q"].as_u64(), item["seq"].as_u64())
                    else {
                        return Err(());
                    };
                    let Some(at) = self.symbols.iter().position(|s| s == sym) else {
                        return Err(());
                    };
                    ctx.counts.add(Count::ResumeTrades, 1);
                    if self.last_seq.is_some_and(|last| seq <= last) {
                        ctx.counts.add(Count::ResumeRepeats, 1);
                        continue;
                    }
                    self.last_seq = Some(seq);
                    match self.last_q[at] {
                        Some(last) if q <= last => ctx.counts.add(Count::ResumeRepeats, 1),
                        Some(last) if q > last + 1 => {
                            ctx.counts.add(Count::ResumeGaps, q - last - 1)
                        }
                        _ => {}
                    }
                    self.last_q[at] = Some(q);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn resume(ctx: &Ctx, id: u32) {
    let seed = (u64::from(id) << 32) | 0x5e5e;
    let mut symbols: Vec<String> = Vec::new();
    let mut draw = seed;
    while symbols.len() < RESUME_SYMBOLS.min(ctx.tickers.len().max(1)) {
        let t = ticker(ctx, draw).to_owned();
        draw += 1;
        if !symbols.contains(&t) {
            symbols.push(t);
        }
    }
    let topics = symbols.iter().map(|s| format!("T.{s}")).collect::<Vec<_>>().join(",");
    let mut state = Resumer { topics, last_q: vec![None; symbols.len()], symbols, last_seq: None };
    let mut round = seed;
    while !ctx.stopping() {
        round += 1;
        let Some(mut ws) = session(ctx, &state.topics.clone(), None) else {
            ctx.error();
            ctx.pause(Duration::from_secs(1));
            continue;
        };
        if let Some(last) = state.last_seq {
            let action = format!(r#"{{"action":"resume","params":{{"from_seq":{}}}}}"#, last + 1);
            if ws.send(Message::text(action)).is_err() {
                ctx.error();
                continue;
            }
        }
        let until = Instant::now() + ms(round, 2_000, 8_000);
        while !ctx.stopping() && Instant::now() < until {
            match read(&mut ws) {
                Ok(Some(Message::Text(text))) => {
                    if state.check(ctx, text.as_str()).is_err() {
                        ctx.error();
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    ctx.error();
                    break;
                }
            }
        }
        // Gone without a word: the socket is dropped, as a client that loses its network.
        drop(ws);
        ctx.pause(ms(round, 300, 2_000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_and_refuses_what_it_does_not_know() {
        let mix: Mix = "churn=20, slow=15,resume=15".parse().unwrap();
        assert_eq!(mix, Mix { churn: 20, slow: 15, resume: 15 });
        assert_eq!(mix.total(), 50);
        assert!("churn".parse::<Mix>().is_err());
        assert!("fast=1".parse::<Mix>().is_err());
        assert!("slow=x".parse::<Mix>().is_err());
        assert_eq!("".parse::<Mix>().unwrap(), Mix::default());
    }
}
