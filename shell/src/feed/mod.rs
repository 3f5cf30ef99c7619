//! Feeds: where ticks come from, and the one way they enter the engine's ring.
//!
//! A feed runs on its own thread and talks to the engine only through [`FeedTx`]: it interns
//! tickers, stamps each input with the clock at ring entry (`ts_recv`, which is also the
//! engine's clock for that input, so a replay of the journal reproduces the run exactly), and
//! pushes it into the SPSC ring.
//!
//! # Overflow
//! The feed -> engine ring has `pipeline.ring_capacity` slots. When it is full the feed
//! **waits** with its idle strategy (back-pressure: a socket feed stops reading and TCP slows
//! the sender; the synthetic market and replays simply slow down), counting each wait in
//! `feed_ring_full_waits`. Nothing is dropped.

pub mod journal;
pub mod synthetic;
pub mod upstream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tickstock_engine::{RejectReason, SymbolId, SymbolTable, Tick, Timestamp};

use crate::clock::Clock;
use crate::idle::{Idler, Waker};
use crate::tracer::Counters;

/// One input to the engine thread.
#[derive(Clone, Copy, Debug)]
pub enum Input {
    /// A tick; its `ts_recv` is the engine clock for it.
    Tick(Tick),
    /// Nothing to send: the feed's clock, so that bars close on time.
    Clock(Timestamp),
    /// Rejected by the feed before it had an id (bad ticker, full symbol table, non-finite
    /// price); counted by the engine with the others.
    Rejected {
        /// Ring-entry time.
        recv: Timestamp,
        /// Why.
        reason: RejectReason,
    },
    /// The feed has ended (replay finished, `trades_max` reached, shutdown): the engine
    /// closes its open bars and stops.
    End,
    /// A warm restart's replay of the journal is done: the engine journals what follows,
    /// and live events start at its next `seq`.
    Warmed,
}

/// The shutdown flag was raised while the feed was waiting on a full ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped;

/// Where the engine clock for each input comes from.
#[derive(Clone, Copy, Debug)]
pub enum TimeSource {
    /// The runtime clock at ring entry (live feeds).
    Live(Clock),
    /// The feed sets `ts_recv` itself (replays, virtual-time synthetic market).
    Given,
}

/// A feed's handle on the engine ring.
#[derive(Debug)]
pub struct FeedTx {
    ring: rtrb::Producer<Input>,
    symbols: SymbolTable,
    engine: Waker,
    idler: Idler,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    time: TimeSource,
    /// Where times come from after a warm restart's replay (the run's own time source).
    live_time: TimeSource,
    received: u64,
    full_waits: u64,
    last_sent: Timestamp,
}

impl FeedTx {
    #[allow(clippy::too_many_arguments, reason = "the feed thread's parts, each distinct")]
    pub(crate) fn new(
        ring: rtrb::Producer<Input>,
        symbols: SymbolTable,
        engine: Waker,
        idler: Idler,
        counters: Arc<Counters>,
        stop: Arc<AtomicBool>,
        live_time: TimeSource,
        warm_up: bool,
    ) -> FeedTx {
        let (received, full_waits, last_sent) = (0, 0, Timestamp(0));
        // A warm restart's replay gives the journal's times; the run's own source follows.
        let time = if warm_up { TimeSource::Given } else { live_time };
        FeedTx {
            ring,
            symbols,
            engine,
            idler,
            counters,
            stop,
            time,
            live_time,
            received,
            full_waits,
            last_sent,
        }
    }

    /// True once shutdown has been asked for: the feed should stop producing and return.
    pub fn stopping(&self) -> bool {
        // Relaxed: a flag polled in a loop; it orders nothing.
        self.stop.load(Ordering::Relaxed)
    }

    /// The id of a ticker, interning it on first sight.
    pub fn intern(&mut self, ticker: &str) -> Result<SymbolId, RejectReason> {
        self.symbols.intern(ticker)
    }

    /// Interns at a wanted id when it is free (replays).
    pub fn intern_at(&mut self, ticker: &str, id: SymbolId) -> Result<SymbolId, RejectReason> {
        self.symbols.intern_at(ticker, id)
    }

    /// The clock a live feed stamps with.
    pub fn now(&self) -> Option<Timestamp> {
        match self.time {
            TimeSource::Live(clock) => Some(clock.now()),
            TimeSource::Given => None,
        }
    }

    /// Ends a warm restart's replay: tells the engine, then takes times from the run's own
    /// source (the runtime clock, for a live feed).
    pub fn go_live(&mut self) -> Result<(), Stopped> {
        self.push(Input::Warmed)?;
        self.time = self.live_time;
        Ok(())
    }

    /// Inputs sent so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Stamps (live feeds) and sends a tick.
    pub fn send_tick(&mut self, mut tick: Tick) -> Result<(), Stopped> {
        if let TimeSource::Live(clock) = self.time {
            tick.set_ts_recv(clock.now());
        }
        self.last_sent = tick.ts_recv();
        self.received += 1;
        self.push(Input::Tick(tick))
    }

    /// Sends a feed-side reject.
    pub fn send_rejected(&mut self, reason: RejectReason, recv: Timestamp) -> Result<(), Stopped> {
        let recv = self.now().unwrap_or(recv);
        self.last_sent = recv;
        self.received += 1;
        self.push(Input::Rejected { recv, reason })
    }

    /// Sends the clock if nothing was sent for `heartbeat_ns` (live feeds; a no-op otherwise).
    pub fn heartbeat(&mut self, heartbeat_ns: u64) -> Result<(), Stopped> {
        let Some(now) = self.now() else { return Ok(()) };
        if now.0 >= self.last_sent.0.saturating_add(heartbeat_ns) {
            self.last_sent = now;
            return self.push(Input::Clock(now));
        }
        Ok(())
    }

    fn push(&mut self, input: Input) -> Result<(), Stopped> {
        let mut input = input;
        loop {
            match self.ring.push(input) {
                Ok(()) => {
                    self.engine.wake();
                    self.idler.idle(1, || true);
                    self.counters.received.set(self.received);
                    return Ok(());
                }
                Err(rtrb::PushError::Full(back)) => {
                    input = back;
                    if self.ring.is_abandoned() {
                        // The engine thread is gone (it panicked); nothing will drain the ring.
                        return Err(Stopped);
                    }
                    if self.stopping() && !matches!(input, Input::End) {
                        return Err(Stopped);
                    }
                    self.full_waits += 1;
                    self.counters.feed_ring_full_waits.set(self.full_waits);
                    self.engine.wake();
                    let ring = &self.ring;
                    self.idler.idle(0, || ring.slots() > 0);
                }
            }
        }
    }

    /// Ends the feed: the engine flushes open bars and stops. Waits for room even during
    /// shutdown, since the engine is draining the ring.
    pub(crate) fn end(mut self) {
        let _ = self.push(Input::End);
    }
}

/// What a feed reports when it returns.
#[derive(Debug)]
pub enum FeedEnd {
    /// It ran out of input (end of journal, `trades_max`).
    Exhausted,
    /// Shutdown was asked for.
    Stopped,
    /// It failed; the message says why.
    Failed(String),
}

impl std::fmt::Display for FeedEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedEnd::Exhausted => f.write_str("the feed ran out of input"),
            FeedEnd::Stopped => f.write_str("stopped on request"),
            FeedEnd::Failed(why) => write!(f, "the feed failed: {why}"),
        }
    }
}

/// A source of ticks, run on the feed thread.
pub trait Feed: Send {
    /// Produces inputs until exhausted, stopped or failed.
    fn run(&mut self, tx: &mut FeedTx) -> FeedEnd;

    /// What `/health` calls this feed (`feed.source`): `synthetic`, `upstream`,
    /// `journal replay`.
    fn name(&self) -> &'static str;

    /// True for a warm restart: the feed first replays the journal (its times given), then
    /// calls [`FeedTx::go_live`] and runs live.
    fn warms_up(&self) -> bool {
        false
    }
}
