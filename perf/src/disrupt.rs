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
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
/// Read timeout of an established disruptor's socket (how often it looks at the time).
const IO_TIMEOUT: Duration = Duration::from_millis(200);
/// Connect, handshake and auth timeout.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
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
    /// Connections opened at once, held, dropped at once, again and again.
    pub burst: u32,
    /// Clients that all drop and reconnect with `resume` at once, every `STORM_EVERY`.
    pub storm: u32,
    /// Hostile clients, each running the attacks in turn.
    pub hostile: u32,
    /// Deep resumers: each subscribes to every channel and resumes from the oldest `seq`
    /// the server has (the event log's, with one), reads until `resumed`, checks that
    /// every `seq` came once, drops, and again (`perf/resume.sh`).
    pub deep: u32,
    /// A deep resume starts every this many ms (`deep_every_ms=5000`); 0, the default: the
    /// next 200 ms after the last ended.
    pub deep_every_ms: u32,
}

impl Mix {
    /// All of them: the connections they may hold at once.
    pub fn total(&self) -> u32 {
        self.churn + self.slow + self.resume + self.burst + self.storm + self.hostile + self.deep
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Mix, String> {
        let mut mix = Mix::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, count) =
                part.split_once('=').ok_or_else(|| format!("{part:?}: want KIND=COUNT"))?;
            let count: u32 = count.parse().map_err(|_| format!("{part:?}: not a count"))?;
            match kind {
                "churn" => mix.churn = count,
                "slow" => mix.slow = count,
                "resume" => mix.resume = count,
                "burst" => mix.burst = count,
                "storm" => mix.storm = count,
                "hostile" => mix.hostile = count,
                "deep" => mix.deep = count,
                "deep_every_ms" => mix.deep_every_ms = count,
                other => {
                    return Err(format!(
                        "{other:?} is not churn, slow, resume, burst, storm, hostile, deep or deep_every_ms"
                    ))
                }
            }
        }
        Ok(mix)
    }
}

/// Declares `Tally` (what the disruptors did, by field) and `Count` (one variant per field,
/// the index of its atomic in `Counts`), so a field is named once.
macro_rules! tally {
    ($($(#[doc = $doc:literal])* $field:ident => $count:ident,)*) => {
        /// What the disruptors did (over a run, or a step's difference of two of these).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
        pub struct Tally {
            $($(#[doc = $doc])* pub $field: u64,)*
        }

        #[derive(Clone, Copy)]
        enum Count {
            $($count,)*
        }

        /// Fields of a `Tally`.
        const COUNTS: usize = [$(Count::$count),*].len();

        impl Tally {
            /// Both together.
            pub fn plus(&self, other: &Tally) -> Tally {
                Tally { $($field: self.$field + other.$field,)* }
            }

            /// What happened between `earlier` and `self`.
            pub fn since(&self, earlier: &Tally) -> Tally {
                Tally { $($field: self.$field - earlier.$field,)* }
            }
        }

        impl Counts {
            fn tally(&self) -> Tally {
                // Relaxed: statistics, read between steps.
                Tally { $($field: self.0[Count::$count as usize].load(Ordering::Relaxed),)* }
            }
        }
    };
}

tally! {
    /// Churn sessions completed.
    churn_sessions => ChurnSessions,
    /// Slow sessions begun.
    slow_sessions => SlowSessions,
    /// Slow sessions the server closed as slow consumers (4008).
    slow_closed => SlowClosed,
    /// `conflated` and `shed` statuses slow clients received.
    slow_statuses => SlowStatuses,
    /// Resumes the server honoured (`resumed`), by resuming and storming clients.
    resumed => Resumed,
    /// Resumes it refused as too old (`resume_failed`); nothing is checked across those.
    resume_too_old => ResumeTooOld,
    /// Trades checked by resuming and storming clients.
    resume_trades => ResumeTrades,
    /// Trades missing on a resuming client: `q` jumped (must stay 0).
    resume_gaps => ResumeGaps,
    /// Trades a resuming client got twice: `q` or `seq` went back (must stay 0).
    resume_repeats => ResumeRepeats,
    /// Connections opened and authenticated by bursts.
    burst_connects => BurstConnects,
    /// Reconnect storms: every storming client dropped and resumed at once.
    storm_rounds => StormRounds,
    /// Hostile sessions run (slowloris, oversized, fragmented, bad UTF-8, rate-limit churn).
    hostile_sessions => HostileSessions,
    /// Hostile sessions the server answered otherwise than the protocol says (must stay 0;
    /// the first few are in `Disruptors::notes`).
    hostile_unexpected => HostileUnexpected,
    /// Deep resumes completed (`resumed` received after the replay).
    deep_resumes => DeepResumes,
    /// Events they replayed, in all.
    deep_events => DeepEvents,
    /// Their time, from the `resume` sent to the `resumed` read, in all, µs.
    deep_micros => DeepMicros,
    /// `seq`s of their `from_seq..=to_seq` that did not come, or came twice or out of
    /// order (must stay 0: they subscribe to every channel).
    deep_gaps => DeepGaps,
    /// Sessions of any kind that failed where they should not have (connect, handshake,
    /// auth, an unreadable message).
    errors => Errors,
}

/// The shared counts, one atomic per `Tally` field, and the first few notes on what went
/// wrong.
#[derive(Debug, Default)]
struct Counts([AtomicU64; COUNTS], Mutex<Vec<String>>);

/// Notes kept on unexpected reactions.
const NOTES_MAX: usize = 20;

impl Counts {
    fn add(&self, count: Count, n: u64) {
        // Relaxed: statistics, read between steps.
        self.0[count as usize].fetch_add(n, Ordering::Relaxed);
    }

    fn note(&self, count: Count, text: String) {
        self.add(count, 1);
        let mut notes = self.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if notes.len() < NOTES_MAX {
            notes.push(text);
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
    /// `Mix::deep_every_ms`.
    deep_every_ms: u32,
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

    fn error(&self, what: &str) {
        self.counts.note(Count::Errors, what.to_owned());
    }

    /// A hostile session's reaction was not the protocol's.
    fn unexpected(&self, attack: &str, got: String) {
        self.counts.note(Count::HostileUnexpected, format!("{attack}: {got}"));
    }
}

impl Disruptors {
    /// Starts `mix` disruptors against `target`; `tickers` are the played source's symbols.
    /// `idle`: their threads run under `SCHED_IDLE`, taking only CPU that nothing else
    /// wants, so on a machine they share with the server they cost about what they would
    /// from another machine, while what they make the server do still counts.
    pub fn start(
        target: &Target,
        mix: Mix,
        tickers: Arc<Vec<String>>,
        idle: bool,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut threads = Vec::new();
        // (threads, clients per thread, what each thread runs)
        let split = |n: u32, threads: u32| (threads.min(n), n.div_ceil(threads.max(1)));
        let kinds: [(&str, (u32, u32), Run); 7] = [
            ("churn", (mix.churn, 1), churn),
            ("slow", (mix.slow, 1), slow),
            ("resume", (mix.resume, 1), resume),
            ("burst", split(mix.burst, BURST_THREADS), burst),
            ("storm", split(mix.storm, STORM_THREADS), storm),
            ("hostile", (mix.hostile, 1), hostile),
            ("deep", (mix.deep, 1), deep),
        ];
        for (kind, (count, each), run) in kinds {
            for id in 0..count {
                let ctx = Ctx {
                    target: target.clone(),
                    tickers: Arc::clone(&tickers),
                    stop: Arc::clone(&stop),
                    counts: Arc::clone(&counts),
                    deep_every_ms: mix.deep_every_ms,
                };
                threads.push(
                    thread::Builder::new()
                        .name(format!("loadgen-{kind}-{id}"))
                        .stack_size(256 << 10)
                        .spawn(move || {
                            if idle && lowest_priority().is_err() {
                                ctx.error("cannot lower the thread's priority (SCHED_IDLE)");
                            }
                            // A disruptor that panics is a defect of this harness; it
                            // must not just stop counting (a quiet thread looks like a
                            // slow one), so it is an error in the step's tally.
                            let counts = Arc::clone(&ctx.counts);
                            let ran =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    run(&ctx, id, each)
                                }));
                            if let Err(panic) = ran {
                                let what = panic
                                    .downcast_ref::<&str>()
                                    .map(|s| (*s).to_owned())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_default();
                                counts.note(
                                    Count::Errors,
                                    format!("disruptor {kind}-{id} panicked: {what}"),
                                );
                            }
                        })?,
                );
            }
        }
        Ok(Disruptors { stop, counts, threads })
    }

    /// What they did so far.
    pub fn tally(&self) -> Tally {
        self.counts.tally()
    }

    /// The first few unexpected reactions and errors, in words.
    pub fn notes(&self) -> Vec<String> {
        self.counts.1.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Stops them and closes their connections.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// What a disruptor thread runs: its context, its id among its kind, and how many clients it
/// holds.
type Run = fn(&Ctx, u32, u32);

/// One hostile session: `Err` says how the server's answer differed from the protocol's.
type Attack = fn(&Ctx) -> Result<(), String>;

/// Moves the calling thread to `SCHED_IDLE`.
fn lowest_priority() -> Result<(), thread_priority::Error> {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    set_thread_priority_and_policy(thread_native_id(), thread_priority::ThreadPriority::Min, idle)
}

type Ws = WebSocket<TcpStream>;

fn tcp(ctx: &Ctx) -> Option<TcpStream> {
    // Disruptors use the first address (the first gateway, with several).
    let addr = ctx.target.addrs[0];
    let stream = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT).ok()?;
    // Long enough for a handshake and an auth under a storm; `ready` shortens it after.
    stream.set_read_timeout(Some(SETUP_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.set_nodelay(true).ok()?;
    Some(stream)
}

/// Connects and completes the handshake (not yet authenticated).
fn handshake(ctx: &Ctx) -> Option<Ws> {
    let stream = tcp(ctx)?;
    let url = format!("ws://{}{}", ctx.target.addrs[0], ctx.target.path);
    tungstenite::client(url, stream).ok().map(|(ws, _)| ws)
}

/// Connects, authenticates, optionally chooses a policy, and subscribes.
fn session(ctx: &Ctx, topics: &str, policy: Option<&str>) -> Option<Ws> {
    session_then(ctx, topics, policy, None)
}

/// As [`session`], with `then` (an action) written right behind the subscribe, in the same
/// socket write: back to back as PROTOCOL.md asks of a subscribe and its resume, however late
/// this thread is scheduled between the two (the storm's threads run under `SCHED_IDLE`, and
/// a resume that comes after the server's `resume_window_us` comes after live events).
fn session_then(ctx: &Ctx, topics: &str, policy: Option<&str>, then: Option<&str>) -> Option<Ws> {
    let mut ws = handshake(ctx)?;
    let token = serde_json::to_string(&ctx.target.token).ok()?;
    ws.send(Message::text(format!(r#"{{"action":"auth","params":{token}}}"#))).ok()?;
    await_auth(&mut ws).ok()?;
    if let Some(policy) = policy {
        let options = format!(r#"{{"action":"options","params":{{"slow_consumer":"{policy}"}}}}"#);
        ws.send(Message::text(options)).ok()?;
    }
    let topics = serde_json::to_string(topics).ok()?;
    ws.write(Message::text(format!(r#"{{"action":"subscribe","params":{topics}}}"#))).ok()?;
    if let Some(then) = then {
        ws.write(Message::text(then)).ok()?;
    }
    ws.flush().ok()?;
    ready(ws)
}

/// Set up: reads time out soon from now on.
fn ready(ws: Ws) -> Option<Ws> {
    ws.get_ref().set_read_timeout(Some(IO_TIMEOUT)).ok()?;
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

fn churn(ctx: &Ctx, id: u32, _: u32) {
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
            ctx.error(&format!("churn session {} failed", round % 5));
        }
        ctx.pause(ms(round, 100, 500));
    }
}

fn slow(ctx: &Ctx, id: u32, _: u32) {
    let policies = ["close", "conflate", "shed"];
    let policy = policies[id as usize % policies.len()];
    while !ctx.stopping() {
        let Some(mut ws) = session(ctx, "T.*,A.*", Some(policy)) else {
            ctx.error("slow client: cannot connect");
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
    /// `count` distinct symbols drawn from `seed`.
    fn new(ctx: &Ctx, seed: u64, count: usize) -> Resumer {
        let mut symbols: Vec<String> = Vec::new();
        let mut draw = seed;
        while symbols.len() < count.min(ctx.tickers.len().max(1)) {
            let t = ticker(ctx, draw).to_owned();
            draw += 1;
            if !symbols.contains(&t) {
                symbols.push(t);
            }
        }
        let topics = symbols.iter().map(|s| format!("T.{s}")).collect::<Vec<_>>().join(",");
        Resumer { topics, last_q: vec![None; symbols.len()], symbols, last_seq: None }
    }

    /// Connects and subscribes, then resumes from the last `seq` seen, if any (in the same
    /// write as the subscribe).
    fn connect(&self, ctx: &Ctx) -> Option<Ws> {
        let resume = self
            .last_seq
            .map(|last| format!(r#"{{"action":"resume","params":{{"from_seq":{}}}}}"#, last + 1));
        session_then(ctx, &self.topics, None, resume.as_deref())
    }

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

/// Every channel: a deep resume gets every event of its range.
const DEEP_TOPICS: &str = "T.*,A.*,AM.*,HL.*,TR.*,SV.*,FMV.*,ACT.*";
/// Longest a deep resume may take before it counts as an error.
const DEEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Resumes from the oldest `seq` the server keeps, again and again: the replay is read with
/// the scanner (no JSON tree per event), each `seq` checked to come once and in order, and
/// the count checked against the `resumed` status's `from_seq..=to_seq`.
fn deep(ctx: &Ctx, _id: u32, _: u32) {
    let mut from = 1u64;
    let every = Duration::from_millis(ctx.deep_every_ms.into());
    let mut next = Instant::now();
    while !ctx.stopping() {
        if !every.is_zero() {
            ctx.pause(next.saturating_duration_since(Instant::now()));
            next += every;
            if ctx.stopping() {
                break;
            }
        }
        let Some(mut ws) = subscribed_resuming(ctx, from) else {
            ctx.error("deep resume: cannot connect");
            ctx.pause(Duration::from_secs(1));
            continue;
        };
        let began = Instant::now();
        let (mut events, mut out_of_order, mut last) = (0u64, 0u64, 0u64);
        let mut outcome: Option<Result<(u64, u64), u64>> = None;
        while outcome.is_none() && !ctx.stopping() && began.elapsed() < DEEP_TIMEOUT {
            let text = match read(&mut ws) {
                Ok(Some(Message::Text(text))) => text,
                Ok(_) => continue,
                Err(code) => {
                    ctx.error(&format!("deep resume: closed ({code:?})"));
                    break;
                }
            };
            let mut status_seen = false;
            let scanned = crate::wire::for_each_event(text.as_bytes(), |event| match event {
                crate::wire::Event::Trade { seq, .. } | crate::wire::Event::Other { seq, .. } => {
                    // Until the `resumed` status: the replay (live events follow it).
                    if outcome.is_none() && !status_seen {
                        events += 1;
                        if seq <= last {
                            out_of_order += 1;
                        }
                        last = seq;
                    }
                }
                crate::wire::Event::Status { status, .. } => {
                    status_seen |= status == b"resumed" || status == b"resume_failed";
                }
            });
            if scanned.is_err() {
                ctx.error("deep resume: an unreadable message");
                break;
            }
            if status_seen {
                outcome = resume_status(text.as_str());
            }
        }
        match outcome {
            Some(Ok((from_seq, to_seq))) => {
                let micros = began.elapsed().as_micros() as u64;
                let expected = (to_seq + 1).saturating_sub(from_seq);
                ctx.counts.add(Count::DeepResumes, 1);
                ctx.counts.add(Count::DeepEvents, events);
                ctx.counts.add(Count::DeepMicros, micros);
                ctx.counts.add(Count::DeepGaps, events.abs_diff(expected) + out_of_order);
            }
            Some(Err(oldest)) => {
                // The oldest the server has moved on (retention) or was not 1: from there.
                from = oldest.max(from + 1);
                continue;
            }
            None if !ctx.stopping() => ctx.error("deep resume: no `resumed` status"),
            None => {}
        }
        drop(ws);
        ctx.pause(Duration::from_millis(200));
    }
}

/// Authenticates, then subscribes to every channel and resumes from `from` in one write,
/// so that no live event comes before the replay.
fn subscribed_resuming(ctx: &Ctx, from: u64) -> Option<Ws> {
    let mut ws = handshake(ctx)?;
    let token = serde_json::to_string(&ctx.target.token).ok()?;
    ws.send(Message::text(format!(r#"{{"action":"auth","params":{token}}}"#))).ok()?;
    await_auth(&mut ws).ok()?;
    let topics = serde_json::to_string(DEEP_TOPICS).ok()?;
    ws.write(Message::text(format!(r#"{{"action":"subscribe","params":{topics}}}"#))).ok()?;
    ws.write(Message::text(format!(r#"{{"action":"resume","params":{{"from_seq":{from}}}}}"#)))
        .ok()?;
    ws.flush().ok()?;
    ready(ws)
}

/// The `resumed` status's `(from_seq, to_seq)`, or `resume_failed`'s `oldest_seq`.
fn resume_status(text: &str) -> Option<Result<(u64, u64), u64>> {
    let serde_json::Value::Array(items) = serde_json::from_str(text).ok()? else { return None };
    items.iter().find_map(|item| match item["status"].as_str()? {
        "resumed" => Some(Ok((item["from_seq"].as_u64()?, item["to_seq"].as_u64()?))),
        "resume_failed" => Some(Err(item["oldest_seq"].as_u64()?)),
        _ => None,
    })
}

fn resume(ctx: &Ctx, id: u32, _: u32) {
    let seed = (u64::from(id) << 32) | 0x5e5e;
    let mut state = Resumer::new(ctx, seed, RESUME_SYMBOLS);
    let mut round = seed;
    while !ctx.stopping() {
        round += 1;
        let Some(mut ws) = state.connect(ctx) else {
            ctx.error("resuming client: cannot connect");
            ctx.pause(Duration::from_secs(1));
            continue;
        };
        let until = Instant::now() + ms(round, 2_000, 8_000);
        while !ctx.stopping() && Instant::now() < until {
            match read(&mut ws) {
                Ok(Some(Message::Text(text))) => {
                    if state.check(ctx, text.as_str()).is_err() {
                        ctx.error("resuming client: an unreadable message");
                        break;
                    }
                }
                Ok(_) => {}
                Err(code) => {
                    ctx.error(&format!("resuming client: closed ({code:?})"));
                    break;
                }
            }
        }
        // Gone without a word: the socket is dropped, as a client that loses its network.
        drop(ws);
        ctx.pause(ms(round, 300, 2_000));
    }
}

/// Threads opening a burst's connections.
const BURST_THREADS: u32 = 4;
/// A burst's connections are held this long, then dropped at once.
const BURST_HOLD: Duration = Duration::from_secs(2);
/// Between bursts.
const BURST_PAUSE: Duration = Duration::from_secs(3);

/// One thread's share (`each`) of a burst: connect and authenticate as fast as it can, hold,
/// drop all at once, pause, again.
fn burst(ctx: &Ctx, _: u32, each: u32) {
    let mut held = Vec::with_capacity(each as usize);
    while !ctx.stopping() {
        for _ in 0..each {
            if ctx.stopping() {
                break;
            }
            match authenticated(ctx) {
                Some(ws) => {
                    held.push(ws);
                    ctx.counts.add(Count::BurstConnects, 1);
                }
                None => ctx.error("burst: a connection failed"),
            }
        }
        ctx.pause(BURST_HOLD);
        held.clear();
        ctx.pause(BURST_PAUSE);
    }
}

/// Connects and authenticates (no subscription).
fn authenticated(ctx: &Ctx) -> Option<Ws> {
    let mut ws = handshake(ctx)?;
    let token = serde_json::to_string(&ctx.target.token).ok()?;
    ws.send(Message::text(format!(r#"{{"action":"auth","params":{token}}}"#))).ok()?;
    await_auth(&mut ws).ok()?;
    ready(ws)
}

/// Threads holding the storming clients.
const STORM_THREADS: u32 = 4;
/// Every this long, all storming clients drop and resume at once.
const STORM_EVERY: Duration = Duration::from_secs(10);

/// One thread's share (`each`) of the storm: clients on one symbol each, read when epoll
/// says they have something; at every `STORM_EVERY` boundary all drop, then all reconnect
/// and resume.
fn storm(ctx: &Ctx, id: u32, each: u32) {
    let mut clients: Vec<(Resumer, Option<Ws>)> = (0..each)
        .map(|k| (Resumer::new(ctx, (u64::from(id * each + k) << 32) | 0x5707, 1), None))
        .collect();
    let epoch = Instant::now();
    let mut round = 0u64;
    while !ctx.stopping() {
        // All connect (or reconnect and resume), as fast as they can.
        for (state, ws) in &mut clients {
            *ws = state.connect(ctx).and_then(|ws| {
                ws.get_ref().set_nonblocking(true).ok()?;
                Some(ws)
            });
            if ws.is_none() {
                ctx.error("storm: cannot reconnect");
            }
        }
        if id == 0 && round > 0 {
            ctx.counts.add(Count::StormRounds, 1);
        }
        round += 1;
        let next = epoch + STORM_EVERY * round as u32;
        // Wait in epoll and read only the sockets that have something, as a client on its
        // own machine would: a thread polling its sockets in turn without pause took a core
        // of this machine, and the bystander's figure would measure the storm's client, not
        // the server.
        let Ok(mut poll) = mio::Poll::new() else {
            ctx.error("storm: cannot create a poll");
            return;
        };
        let mut events = mio::Events::with_capacity(1_024);
        for (index, (_, slot)) in clients.iter_mut().enumerate() {
            let Some(ws) = slot.as_ref() else { continue };
            let fd = ws.get_ref().as_raw_fd();
            let source = &mut mio::unix::SourceFd(&fd);
            if poll.registry().register(source, mio::Token(index), mio::Interest::READABLE).is_err()
            {
                ctx.error("storm: cannot register a socket");
                *slot = None;
            }
        }
        // Bytes that came with the handshake are in tungstenite's buffer, not the socket's:
        // one pass over every connection first.
        for (state, slot) in &mut clients {
            storm_drain(ctx, state, slot);
        }
        while !ctx.stopping() && Instant::now() < next {
            let wait = next.saturating_duration_since(Instant::now()).min(STORM_POLL);
            if poll.poll(&mut events, Some(wait)).is_err() {
                continue; // EINTR
            }
            for event in &events {
                if let Some((state, slot)) = clients.get_mut(event.token().0) {
                    storm_drain(ctx, state, slot);
                }
            }
        }
        // The storm: every connection drops at once.
        for (_, ws) in &mut clients {
            *ws = None;
        }
    }
}

/// The longest a storm client's epoll wait, so that the stop flag is seen.
const STORM_POLL: Duration = Duration::from_millis(100);

/// Reads a storm connection to `WouldBlock` (its socket is edge-triggered in the storm's
/// poll), checking every message; a connection that ends is dropped and counted.
fn storm_drain(ctx: &Ctx, state: &mut Resumer, slot: &mut Option<Ws>) {
    while let Some(ws) = slot.as_mut() {
        match read(ws) {
            Ok(Some(Message::Text(text))) => {
                if state.check(ctx, text.as_str()).is_err() {
                    ctx.error("storm: an unreadable message");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(code) => {
                ctx.error(&format!("storm: closed ({code:?})"));
                *slot = None;
            }
        }
    }
}

/// Each hostile client runs these in turn; each checks the server's answer.
const ATTACKS: [(&str, Attack); 8] = [
    ("slowloris on the handshake", slowloris_handshake),
    ("a ping flood that never reads", ping_flood),
    ("slowloris on a frame", slowloris_frame),
    ("an oversized message", oversized),
    ("a message in 1-byte fragments", fragmented),
    ("fragments past the message limit", fragmented_too_big),
    ("invalid UTF-8 split across fragments", split_utf8),
    ("subscriptions churned at the rate limit", rate_limit_churn),
];

fn hostile(ctx: &Ctx, id: u32, _: u32) {
    let mut turn = id as usize;
    while !ctx.stopping() {
        let (name, attack) = ATTACKS[turn % ATTACKS.len()];
        turn += 1;
        match attack(ctx) {
            Ok(()) => ctx.counts.add(Count::HostileSessions, 1),
            Err(_) if ctx.stopping() => {}
            Err(got) => ctx.unexpected(name, got),
        }
        ctx.pause(Duration::from_millis(200));
    }
}

/// Sends a masked frame as raw bytes (so a message can be fragmented and bytes can be bad).
fn raw(
    ws: &mut Ws,
    payload: &[u8],
    opcode: tungstenite::protocol::frame::coding::OpCode,
    fin: bool,
) -> Result<(), String> {
    let frame = tungstenite::protocol::frame::Frame::message(payload.to_vec(), opcode, fin);
    crate::wire::send(ws.get_mut(), frame).map_err(|e| format!("send: {e}"))
}

fn text_op() -> tungstenite::protocol::frame::coding::OpCode {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    OpCode::Data(Data::Text)
}

fn continuation() -> tungstenite::protocol::frame::coding::OpCode {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    OpCode::Data(Data::Continue)
}

/// Reads until the server closes; its close code (`None`: dropped without one).
fn await_close(ws: &mut Ws, within: Duration) -> Result<Option<u16>, String> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        match read(ws) {
            Ok(_) => {}
            Err(code) => return Ok(code.map(u16::from)),
        }
    }
    Err(format!("still open after {within:?}"))
}

/// Reads until a status with `wanted` arrives; an error status or a close fails.
fn await_status(ws: &mut Ws, wanted: &str, within: Duration) -> Result<(), String> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        match read(ws) {
            Ok(Some(Message::Text(text))) => {
                if text.contains(&format!(r#""status":"{wanted}""#)) {
                    return Ok(());
                }
                if text.contains(r#""status":"error""#) {
                    return Err(format!("an error status: {text}"));
                }
            }
            Ok(_) => {}
            Err(code) => return Err(format!("closed ({code:?}) before {wanted}")),
        }
    }
    Err(format!("no {wanted} within {within:?}"))
}

/// The upgrade request one byte at a time, slower than the handshake timeout allows: the
/// server must drop the connection (at `handshake_timeout_ms`, 5 s by default).
fn slowloris_handshake(ctx: &Ctx) -> Result<(), String> {
    let mut stream = tcp(ctx).ok_or("cannot connect")?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ctx.target.path
    );
    let started = Instant::now();
    for byte in request.bytes() {
        if ctx.stopping() {
            return Ok(());
        }
        if stream.write_all(&[byte]).is_err() {
            // Dropped: what the server should do.
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    Err(format!("the whole request went through in {:?} at a byte per 100 ms", started.elapsed()))
}

/// A frame announced and then sent a byte per 100 ms for 3 s: the server holds it (it is
/// within every limit and costs one connection's buffer) and streams to everyone else; at
/// the end the frame completes and is answered.
fn slowloris_frame(ctx: &Ctx) -> Result<(), String> {
    let mut ws = authenticated(ctx).ok_or("cannot connect")?;
    let action = br#"{"action":"unsubscribe","params":"T.NONE"}                                "#;
    let mut bytes = Vec::new();
    let frame = tungstenite::protocol::frame::Frame::message(action.to_vec(), text_op(), true);
    let mut masked = frame;
    masked.header_mut().mask = Some([1, 2, 3, 4]);
    masked.format(&mut bytes).map_err(|e| e.to_string())?;
    for (at, byte) in bytes.iter().enumerate() {
        if ctx.stopping() {
            return Ok(());
        }
        ws.get_mut().write_all(&[*byte]).map_err(|e| format!("dropped at byte {at}: {e}"))?;
        thread::sleep(Duration::from_millis(3_000 / bytes.len() as u64));
    }
    await_status(&mut ws, "success", Duration::from_secs(5))
}

/// Pings as fast as the socket takes them, never reading the pongs: pings count against
/// `client_messages_per_sec`, so the server closes it 1008 after `client_errors_max`
/// refusals (or, should its pongs pile up first, as a slow consumer: 4008, or dropped when
/// the close frame cannot be written).
fn ping_flood(ctx: &Ctx) -> Result<(), String> {
    let mut ws = authenticated(ctx).ok_or("cannot connect")?;
    let ping = tungstenite::protocol::frame::Frame::ping(vec![b'p'; 125]);
    let mut bytes = Vec::new();
    let mut masked = ping;
    masked.header_mut().mask = Some([9, 8, 7, 6]);
    masked.format(&mut bytes).map_err(|e| e.to_string())?;
    let burst: Vec<u8> = bytes.iter().copied().cycle().take(bytes.len() * 1_000).collect();
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until && !ctx.stopping() {
        if ws.get_mut().write_all(&burst).is_err() {
            // Dropped by the server: what it should do.
            return Ok(());
        }
    }
    if ctx.stopping() {
        return Ok(());
    }
    match await_close(&mut ws, Duration::from_secs(10))? {
        Some(1008 | 4008) | None => Ok(()),
        other => Err(format!("closed with {other:?}, not 1008 or 4008")),
    }
}

/// One byte past `client_message_bytes_max` (64 KiB by default): close 1009.
fn oversized(ctx: &Ctx) -> Result<(), String> {
    let mut ws = authenticated(ctx).ok_or("cannot connect")?;
    let mut message = br#"{"action":"subscribe","params":""#.to_vec();
    message.resize(64 * 1024 + 1, b'A');
    raw(&mut ws, &message, text_op(), true)?;
    match await_close(&mut ws, Duration::from_secs(5))? {
        Some(1009) => Ok(()),
        other => Err(format!("closed with {other:?}, not 1009")),
    }
}

/// A `subscribe` in 1-byte fragments: reassembled and answered.
fn fragmented(ctx: &Ctx) -> Result<(), String> {
    let mut ws = authenticated(ctx).ok_or("cannot connect")?;
    let symbol = ticker(ctx, mix(Instant::now().elapsed().as_nanos() as u64)).to_owned();
    let message = format!(r#"{{"action":"subscribe","params":"HL.{symbol}"}}"#);
    for (at, byte) in message.bytes().enumerate() {
        let op = if at == 0 { text_op() } else { continuation() };
        raw(&mut ws, &[byte], op, at + 1 == message.len())?;
    }
    await_status(&mut ws, "success", Duration::from_secs(5))
}

/// Fragments of 1 KiB whose sum passes the message limit: close 1009.
fn fragmented_too_big(ctx: &Ctx) -> Result<(), String> {
    let mut ws = authenticated(ctx).ok_or("cannot connect")?;
    let chunk = vec![b' '; 1024];
    for at in 0..70 {
        let op = if at == 0 { text_op() } else { continuation() };
        if raw(&mut ws, &chunk, op, false).is_err() {
            break;
        }
    }
    match await_close(&mut ws, Duration::from_secs(5))? {
        Some(1009) => Ok(()),
        other => Err(format!("closed with {other:?}, not 1009")),
    }
}

/// A valid 2-byte character split across two fragments is accepted (answered); an invalid
/// sequence split the same way closes 1007.
fn split_utf8(ctx: &Ctx) -> Result<(), String> {
    let mut ws = authenticated(ctx).ok_or("cannot connect")?;
    // "é" is C3 A9: the first fragment ends inside it.
    raw(&mut ws, b"{\"action\":\"subscribe\",\"params\":\"HL.\xC3", text_op(), false)?;
    raw(&mut ws, b"\xA9\"}", continuation(), true)?;
    // Answered with an error status (no such symbol), not closed: the text was valid.
    let until = Instant::now() + Duration::from_secs(5);
    let mut answered = false;
    while !answered && Instant::now() < until {
        match read(&mut ws) {
            Ok(Some(Message::Text(text))) => answered = text.contains(r#""ev":"status""#),
            Ok(_) => {}
            Err(code) => return Err(format!("valid UTF-8 across fragments closed ({code:?})")),
        }
    }
    if !answered {
        return Err("valid UTF-8 across fragments was not answered".to_owned());
    }
    // C3 28 is invalid.
    raw(&mut ws, b"{\"action\":\"subscribe\",\"params\":\"HL.\xC3", text_op(), false)?;
    raw(&mut ws, b"(\"}", continuation(), true)?;
    match await_close(&mut ws, Duration::from_secs(5))? {
        Some(1007) => Ok(()),
        other => Err(format!("invalid UTF-8 closed with {other:?}, not 1007")),
    }
}

/// Subscribe and unsubscribe alternately just under `client_messages_per_sec` (50 by
/// default) for 2 s: every one answered `success`. Then 100 at once: past the bucket, errors,
/// and after `client_errors_max` (10) of them, close 1008.
fn rate_limit_churn(ctx: &Ctx) -> Result<(), String> {
    let mut ws = authenticated(ctx).ok_or("cannot connect")?;
    let symbol = ticker(ctx, 7).to_owned();
    // Let the bucket fill (the auth took a token).
    thread::sleep(Duration::from_millis(100));
    for at in 0..80 {
        let verb = if at % 2 == 0 { "subscribe" } else { "unsubscribe" };
        ws.send(Message::text(format!(r#"{{"action":"{verb}","params":"SV.{symbol}"}}"#)))
            .map_err(|e| format!("send: {e}"))?;
        await_status(&mut ws, "success", Duration::from_secs(5))
            .map_err(|e| format!("message {at} at 40/s: {e}"))?;
        thread::sleep(Duration::from_millis(25));
    }
    for _ in 0..100 {
        let message = format!(r#"{{"action":"subscribe","params":"SV.{symbol}"}}"#);
        if ws.send(Message::text(message)).is_err() {
            break;
        }
    }
    match await_close(&mut ws, Duration::from_secs(5))? {
        Some(1008) => Ok(()),
        other => Err(format!("a flood past the rate limit closed with {other:?}, not 1008")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_parses_and_refuses_what_it_does_not_know() {
        let mix: Mix = "churn=20, slow=15,resume=15".parse().unwrap();
        assert_eq!(mix, Mix { churn: 20, slow: 15, resume: 15, ..Mix::default() });
        let storms: Mix = "burst=10000,storm=1000,hostile=7".parse().unwrap();
        assert_eq!(
            (storms.burst, storms.storm, storms.hostile, storms.total()),
            (10_000, 1_000, 7, 11_007)
        );
        assert_eq!(mix.total(), 50);
        assert!("churn".parse::<Mix>().is_err());
        assert!("fast=1".parse::<Mix>().is_err());
        assert!("slow=x".parse::<Mix>().is_err());
        assert_eq!("".parse::<Mix>().unwrap(), Mix::default());
    }
}
