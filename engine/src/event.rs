//! The outputs of the engine: one [`Event`] per message a client may receive.
//!
//! Every event carries `seq`, the engine-wide sequence number, strictly increasing by one per
//! event, so that a client can resume after a reconnect. Payloads are plain `Copy` values;
//! encoding them (JSON on the wire) is the emitter's job, not the engine's.

use crate::tick::{Price, Qty, SymbolId, Timestamp, Trade};

/// One output event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    /// Engine-wide sequence number.
    pub seq: u64,
    /// The symbol it is about.
    pub symbol: SymbolId,
    /// What happened.
    pub body: EventBody,
}

/// The payload of an [`Event`]; each variant is one channel of PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EventBody {
    /// `T`: an accepted trade, as ingested.
    Trade(Trade),
    /// `A` or `AM`: a closed bar.
    Bar(Bar),
    /// `HL`: a new session high or low.
    HighLow(HighLow),
    /// `TR`: a trend change.
    Trend(Trend),
    /// `SV`: a price or volume surge.
    Surge(Surge),
    /// `FMV`: a fair market value, passed through.
    Fmv(FairValue),
    /// `ACT`: market-wide activity, once a second, on [`SymbolId::MARKET`].
    Activity(Activity),
}

impl EventBody {
    /// The event's own time: `t` (a trade's event time, a detector event's triggering trade,
    /// an `FMV`'s, an `ACT`'s boundary), or a bar's start `s`. What `resume` by time
    /// (`from_t`) starts from.
    pub fn time(&self) -> Timestamp {
        match self {
            EventBody::Trade(trade) => trade.ts_event,
            EventBody::Bar(bar) => bar.start,
            EventBody::HighLow(event) => event.ts,
            EventBody::Trend(event) => event.ts,
            EventBody::Surge(event) => event.ts,
            EventBody::Fmv(event) => event.ts,
            EventBody::Activity(event) => event.ts,
        }
    }

    /// The channel of PROTOCOL.md this event goes out on.
    pub fn channel(&self) -> Channel {
        match self {
            EventBody::Trade(_) => Channel::T,
            EventBody::Bar(bar) => match bar.frequency {
                Frequency::Second => Channel::A,
                Frequency::Minute => Channel::Am,
            },
            EventBody::HighLow(_) => Channel::Hl,
            EventBody::Trend(_) => Channel::Tr,
            EventBody::Surge(_) => Channel::Sv,
            EventBody::Fmv(_) => Channel::Fmv,
            EventBody::Activity(_) => Channel::Act,
        }
    }
}

/// A channel of PROTOCOL.md section 3 (`ev` on the wire). It travels as this enum from the
/// engine's event to the fan-out's routing, so nothing searches a string per frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// `T`: trades.
    T,
    /// `A`: per-second bars.
    A,
    /// `AM`: per-minute bars.
    Am,
    /// `HL`: session highs and lows.
    Hl,
    /// `TR`: trend changes.
    Tr,
    /// `SV`: surges.
    Sv,
    /// `FMV`: fair market values.
    Fmv,
    /// `ACT`: market-wide activity (topic `ACT.*` only).
    Act,
}

impl Channel {
    /// Every channel, in index order.
    pub const ALL: [Channel; 8] = [
        Channel::T,
        Channel::A,
        Channel::Am,
        Channel::Hl,
        Channel::Tr,
        Channel::Sv,
        Channel::Fmv,
        Channel::Act,
    ];
    /// How many channels there are.
    pub const COUNT: usize = Channel::ALL.len();

    /// Dense index, `0..COUNT`, in [`Channel::ALL`] order.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name on the wire (`ev`, and the topic prefix).
    pub const fn label(self) -> &'static str {
        match self {
            Channel::T => "T",
            Channel::A => "A",
            Channel::Am => "AM",
            Channel::Hl => "HL",
            Channel::Tr => "TR",
            Channel::Sv => "SV",
            Channel::Fmv => "FMV",
            Channel::Act => "ACT",
        }
    }

    /// The channel named `label`, if any.
    pub fn parse(label: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|channel| channel.label() == label)
    }
}

/// Bar width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frequency {
    /// One second (`A`).
    Second,
    /// One minute (`AM`).
    Minute,
}

impl Frequency {
    /// Both frequencies.
    pub const ALL: [Frequency; 2] = [Frequency::Second, Frequency::Minute];

    /// The width in nanoseconds.
    pub const fn width_ns(self) -> u64 {
        match self {
            Frequency::Second => 1_000_000_000,
            Frequency::Minute => 60_000_000_000,
        }
    }

    /// Position in [`Frequency::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A closed bar over `[start, end)`, aligned to UTC boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Second or minute.
    pub frequency: Frequency,
    /// `s`, inclusive.
    pub start: Timestamp,
    /// `e`, exclusive.
    pub end: Timestamp,
    /// `o`.
    pub open: Price,
    /// `h`.
    pub high: Price,
    /// `l`.
    pub low: Price,
    /// `c`.
    pub close: Price,
    /// `v`.
    pub volume: Qty,
    /// `vw`: the bar's volume-weighted price, rounded half up to a price unit.
    pub vwap: Price,
    /// `av`: the day's volume so far, this bar included.
    pub day_volume: Qty,
    /// `op`: the session open.
    pub day_open: Price,
    /// `a`: the day's volume-weighted price so far.
    pub day_vwap: Price,
    /// `z`: average trade size, rounded down.
    pub avg_size: Qty,
    /// `n`: trades in the bar (for an upstream per-second aggregate, its volume over its `z`,
    /// at least 1: upstream bars carry no count).
    pub trades: u64,
}

/// Which extreme an `HL` event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extreme {
    /// A new session high.
    High,
    /// A new session low.
    Low,
}

/// `HL`: a new session high or low.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HighLow {
    /// `kind`.
    pub kind: Extreme,
    /// `p`: the triggering trade's price.
    pub price: Price,
    /// `t`: the triggering trade's time.
    pub ts: Timestamp,
    /// `session_high` after this trade.
    pub session_high: Price,
    /// `session_low` after this trade.
    pub session_low: Price,
    /// `count`: `HL` events of this kind this session, this one included.
    pub count: u32,
    /// `pct`: change from the session open, in percent.
    pub pct: f64,
    /// `v`: the triggering trade's size.
    pub size: Qty,
}

/// Direction of a trend or surge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Up.
    Up,
    /// Down.
    Down,
}

/// Strength of a trend or surge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Weak.
    Weak,
    /// Moderate.
    Moderate,
    /// Strong.
    Strong,
}

/// Where the price stands against the session VWAP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VwapPosition {
    /// At or above.
    Above,
    /// Below.
    Below,
}

/// `TR`: a trend change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trend {
    /// `dir`.
    pub direction: Direction,
    /// `strength`.
    pub strength: Strength,
    /// `score`, in `[-1, 1]`.
    pub score: f64,
    /// `short`, `medium`, `long`: the window scores.
    pub window_scores: [f64; 3],
    /// `vwap_pos`: the trade price against the session VWAP.
    pub vwap_position: VwapPosition,
    /// `t`: the evaluating trade's time.
    pub ts: Timestamp,
}

/// What fired a surge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SurgeTrigger {
    /// The price trigger alone.
    Price,
    /// The volume trigger alone.
    Volume,
    /// Both triggers.
    Both,
}

/// `SV`: a price or volume surge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Surge {
    /// `dir`: up when `pct >= 0`.
    pub direction: Direction,
    /// `trigger`.
    pub trigger: SurgeTrigger,
    /// `pct`: price change over the interval, in percent.
    pub pct: f64,
    /// `vol_mult`: interval volume over the baseline mean; 0 when the baseline is empty.
    pub vol_mult: f64,
    /// `score`, in `[0, 100]`.
    pub score: f64,
    /// `strength`.
    pub strength: Strength,
    /// `t`: the triggering trade's time.
    pub ts: Timestamp,
}

/// `FMV`: a fair market value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FairValue {
    /// `fmv`.
    pub value: Price,
    /// `t`.
    pub ts: Timestamp,
    /// `fmv_vs_market_pct`: against the symbol's last trade; `None` before any trade.
    pub vs_market_pct: Option<f64>,
}

/// `ACT`: the market's activity at a UTC second boundary (DETECTORS.md, `ACT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    /// `t`: the boundary; the windows end here (exclusive).
    pub ts: Timestamp,
    /// `trades_10s`, `trades_30s`, `trades_60s`, `trades_300s`: accepted trades of every
    /// symbol with `t` in the trailing window ([`ACTIVITY_WINDOWS_S`]).
    pub trades: [u64; 4],
    /// `symbols_60s`: distinct symbols with a trade in the trailing 60 s.
    pub symbols_60s: u32,
    /// `level`: `trades_60s / 60` against `activity_levels`.
    pub level: ActivityLevel,
}

/// The trailing windows of [`Activity::trades`], in seconds.
pub const ACTIVITY_WINDOWS_S: [u64; 4] = [10, 30, 60, 300];

/// `level` of an `ACT` event: where the last minute's trades per second stand against
/// `activity_levels`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActivityLevel {
    /// Below the first level.
    Quiet,
    /// At or above the first.
    Normal,
    /// At or above the second.
    Busy,
    /// At or above the third.
    Extreme,
}

impl ActivityLevel {
    /// The name on the wire.
    pub const fn label(self) -> &'static str {
        match self {
            ActivityLevel::Quiet => "quiet",
            ActivityLevel::Normal => "normal",
            ActivityLevel::Busy => "busy",
            ActivityLevel::Extreme => "extreme",
        }
    }
}
