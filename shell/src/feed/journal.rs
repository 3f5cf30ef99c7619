//! Replay: a journal as a feed, at its original pace, at N times that, or flat out.
//!
//! Each tick goes to the engine with its recorded `ts_recv`, which was the engine clock when
//! it was first handled, so the engine produces the same events with the same `seq` as the
//! run that wrote the journal, whatever the pace (a test holds it to that). Symbols keep
//! their recorded ids when they are free, so bars the clock closes at the same instant come
//! out in the recorded order too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tickstock_engine::{SymbolId, Tick, Timestamp};

use crate::feed::{Feed, FeedEnd, FeedTx};
use crate::journal::codec::Record;
use crate::journal::reader;

/// How fast a replay runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// As fast as the pipeline takes it.
    Max,
    /// `speed` times the recorded pace (1.0 is the original).
    Speed(f64),
}

/// The longest single sleep, so a stop is seen promptly.
const SLEEP_MAX: Duration = Duration::from_millis(50);

/// A journal directory as a feed.
#[derive(Debug)]
pub struct JournalFeed {
    dir: PathBuf,
    pace: Pace,
    wake_every: Duration,
    /// Gap records seen: how many records the journal says it lost.
    pub records_lost: u64,
}

impl JournalFeed {
    /// Replays `dir` at `pace`, waking at most every millisecond.
    pub fn new(dir: PathBuf, pace: Pace) -> JournalFeed {
        JournalFeed { dir, pace, wake_every: Duration::from_millis(1), records_lost: 0 }
    }

    /// At a speed, wakes at most every `wake_every` and sends every trade due since
    /// (`journal.replay_pace_us`): sleeping, never spinning.
    pub fn wake_every(mut self, wake_every: Duration) -> JournalFeed {
        self.wake_every = wake_every;
        self
    }
}

struct Replay<'a> {
    tx: &'a mut FeedTx,
    pace: Pace,
    wake_every: Duration,
    /// Recorded id -> id in this run, per segment (ids are per segment in the format).
    ids: Vec<Option<SymbolId>>,
    segment: u64,
    start: Option<(Instant, Timestamp)>,
    records_lost: u64,
    failure: Option<String>,
    stopped: bool,
}

impl Replay<'_> {
    fn record(&mut self, segment: u64, record: Record<'_>) -> bool {
        if segment != self.segment {
            self.segment = segment;
            self.ids.iter_mut().for_each(|id| *id = None);
        }
        match record {
            Record::Symbol { id, ticker } => match self.tx.intern_at(ticker, id) {
                Ok(local) => {
                    if let Some(slot) = self.ids.get_mut(id.index()) {
                        *slot = Some(local);
                    } else {
                        self.failure = Some(format!("symbol id {} above symbols_max", id.0));
                        return false;
                    }
                }
                Err(reason) => {
                    self.failure = Some(format!("cannot intern {ticker}: {reason}"));
                    return false;
                }
            },
            Record::Tick(tick) => return self.tick(tick),
            Record::Gap { records_lost, .. } => self.records_lost += records_lost,
        }
        true
    }

    fn tick(&mut self, mut tick: Tick) -> bool {
        let recorded = tick.symbol();
        let Some(Some(local)) = self.ids.get(recorded.index()).copied() else {
            self.failure = Some(format!("tick for symbol id {} with no symbol record", recorded.0));
            return false;
        };
        tick.set_symbol(local);
        self.wait_until_due(tick.ts_recv());
        if self.tx.stopping() || self.tx.send_tick(tick).is_err() {
            self.stopped = true;
            return false;
        }
        true
    }

    fn wait_until_due(&mut self, recv: Timestamp) {
        let Pace::Speed(speed) = self.pace else { return };
        let (wall0, recv0) = *self.start.get_or_insert((Instant::now(), recv));
        let offset_ns = recv.0.saturating_sub(recv0.0) as f64 / speed;
        let due = wall0 + Duration::from_nanos(offset_ns as u64);
        loop {
            let now = Instant::now();
            if now >= due || self.tx.stopping() {
                return;
            }
            // At least `wake_every`: the trades that fall due meanwhile go together after.
            std::thread::sleep((due - now).max(self.wake_every).min(SLEEP_MAX));
        }
    }
}

/// A warm restart: the journal replayed through the engine at full speed with its recorded
/// times, then the live feed. The engine is deterministic, so it ends the replay in the state
/// and at the `seq` it had when the journal was written, and goes on from there: session
/// figures, bars, trend windows, and `seq` for clients' `resume`, as if nothing had stopped
/// (a CLI test compares a run restarted after kill -9 with one uninterrupted pass).
/// Nothing is journaled twice; only the server's sink sees the replay (its resume history),
/// and the server refuses clients and says `warming` on `/health` until it is done.
pub struct WarmStart {
    replay: JournalFeed,
    live: Box<dyn Feed>,
}

impl std::fmt::Debug for WarmStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmStart").field("dir", &self.replay.dir).finish_non_exhaustive()
    }
}

impl WarmStart {
    /// Replays `dir` flat out, then runs `live`.
    pub fn new(dir: PathBuf, live: Box<dyn Feed>) -> WarmStart {
        WarmStart { replay: JournalFeed::new(dir, Pace::Max), live }
    }
}

impl Feed for WarmStart {
    fn warms_up(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        self.live.name()
    }

    fn run(&mut self, tx: &mut FeedTx) -> FeedEnd {
        let started = Instant::now();
        let dir = self.replay.dir.display().to_string();
        tracing::info!(journal = %dir, "warm restart: replaying the journal");
        match self.replay.run(tx) {
            FeedEnd::Stopped => return FeedEnd::Stopped,
            FeedEnd::Failed(why) => tracing::error!(
                journal = %dir,
                "warm restart: the journal could not be replayed whole ({why}); going live from where it stopped"
            ),
            FeedEnd::Exhausted => {}
        }
        let (inputs, took) = (tx.received(), started.elapsed().as_secs_f64());
        tracing::info!(
            journal = %dir,
            trades = inputs,
            seconds = took,
            per_second = (inputs as f64 / took.max(1e-9)) as u64,
            "warm restart: journal replayed; going live"
        );
        if tx.go_live().is_err() {
            return FeedEnd::Stopped;
        }
        self.live.run(tx)
    }
}

impl Feed for JournalFeed {
    fn name(&self) -> &'static str {
        "journal replay"
    }

    fn run(&mut self, tx: &mut FeedTx) -> FeedEnd {
        let capacity = tickstock_engine::limits::SYMBOLS_MAX as usize;
        let mut replay = Replay {
            tx,
            pace: self.pace,
            wake_every: self.wake_every,
            ids: vec![None; capacity],
            segment: u64::MAX,
            start: None,
            records_lost: 0,
            failure: None,
            stopped: false,
        };
        let result = reader::for_each(&self.dir, |segment, record| replay.record(segment, record));
        self.records_lost = replay.records_lost;
        match (result, replay.failure, replay.stopped) {
            (Err(error), _, _) => FeedEnd::Failed(error.to_string()),
            (Ok(()), Some(failure), _) => FeedEnd::Failed(failure),
            (Ok(()), None, true) => FeedEnd::Stopped,
            (Ok(()), None, false) => FeedEnd::Exhausted,
        }
    }
}
