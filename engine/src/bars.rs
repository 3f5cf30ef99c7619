//! Per-second (`A`) and per-minute (`AM`) bars, built from trades or upstream aggregates.
//!
//! A [`BarBuilder`] holds at most one open bar. Bars follow the Polygon rules: OHLCV over
//! the trades with `start <= t < end`, aligned to UTC boundaries, no bar for an interval
//! without trades. A bar closes when the first trade at or past its end arrives, or when the
//! engine clock passes `end + bar_close_grace_ms`. A trade older than the open bar's start,
//! or older than the end of the last closed bar, is late: it is counted and never reopens a
//! bar (the caller still sends it out on `T` and counts it in the day's totals).

use crate::event::{Bar, Frequency};
use crate::tick::{Price, Qty, Timestamp};
use crate::wide::Wide;

/// What a trade contributes to a bar: a trade is `open = high = low = close = price`, an
/// upstream aggregate brings its own OHLC.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BarInput {
    pub(crate) t_ns: u64,
    pub(crate) open: i64,
    pub(crate) high: i64,
    pub(crate) low: i64,
    pub(crate) close: i64,
    pub(crate) volume: u64,
    /// Price (raw units) x size, summed.
    pub(crate) pv: u128,
    /// Trades represented (an aggregate's estimate).
    pub(crate) trades: u64,
}

impl BarInput {
    pub(crate) fn trade(t_ns: u64, price: i64, size: u64) -> BarInput {
        let pv = price as u128 * u128::from(size);
        BarInput {
            t_ns,
            open: price,
            high: price,
            low: price,
            close: price,
            volume: size,
            pv,
            trades: 1,
        }
    }
}

/// The day's running figures that a closed bar reports (`av`, `op`, `a`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DayFigures {
    pub(crate) volume: u64,
    pub(crate) open: i64,
    pub(crate) pv: u128,
}

/// Where a bar input went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Added to the open bar (possibly just opened).
    Added {
        /// A bar was opened for it, whose timer the caller must arm.
        opened: bool,
    },
    /// Older than the open bar or the last closed one: counted as late.
    Late,
}

/// One symbol's open bar of one frequency.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BarBuilder {
    /// Whether a bar is open.
    is_open: bool,
    /// Whether a close timer for this builder is queued in the engine's timers (`crate::timers`).
    pub(crate) timer_armed: bool,
    open: i64,
    high: i64,
    low: i64,
    close: i64,
    volume: u64,
    pv: Wide,
    trades: u64,
    /// Inputs before this time are late: the open bar's start (so also where the open bar
    /// starts), or the last closed bar's end.
    floor_ns: u64,
}

impl BarBuilder {
    pub(crate) const EMPTY: BarBuilder = BarBuilder {
        is_open: false,
        timer_armed: false,
        open: 0,
        high: 0,
        low: 0,
        close: 0,
        volume: 0,
        pv: Wide::ZERO,
        trades: 0,
        floor_ns: 0,
    };

    /// The end of the open bar, if one is open.
    pub(crate) fn open_end(&self, frequency: Frequency) -> Option<u64> {
        self.is_open.then(|| self.floor_ns + frequency.width_ns())
    }

    /// Whether `t_ns` is at or past the open bar's end (so the bar must close first).
    pub(crate) fn is_closed_by(&self, frequency: Frequency, t_ns: u64) -> bool {
        self.open_end(frequency).is_some_and(|end| t_ns >= end)
    }

    /// Adds an input; the open bar must not be closed by it (see [`Self::is_closed_by`]).
    pub(crate) fn add(&mut self, frequency: Frequency, input: &BarInput) -> Placement {
        debug_assert!(!self.is_closed_by(frequency, input.t_ns), "Invariant: close first");
        if input.t_ns < self.floor_ns {
            return Placement::Late;
        }
        if self.is_open {
            self.high = self.high.max(input.high);
            self.low = self.low.min(input.low);
            self.close = input.close;
            self.volume += input.volume;
            self.pv += input.pv;
            self.trades += input.trades;
            return Placement::Added { opened: false };
        }
        let width = frequency.width_ns();
        let start_ns = input.t_ns - input.t_ns % width;
        *self = BarBuilder {
            is_open: true,
            timer_armed: self.timer_armed,
            open: input.open,
            high: input.high,
            low: input.low,
            close: input.close,
            volume: input.volume,
            pv: Wide::new(input.pv),
            trades: input.trades,
            floor_ns: start_ns,
        };
        Placement::Added { opened: true }
    }

    /// Closes the open bar and returns it.
    pub(crate) fn close(&mut self, frequency: Frequency, day: &DayFigures) -> Option<Bar> {
        if !self.is_open {
            return None;
        }
        let start_ns = self.floor_ns;
        let end_ns = start_ns + frequency.width_ns();
        self.is_open = false;
        self.floor_ns = end_ns;
        Some(Bar {
            frequency,
            start: Timestamp(start_ns),
            end: Timestamp(end_ns),
            open: Price::from_raw(self.open),
            high: Price::from_raw(self.high),
            low: Price::from_raw(self.low),
            close: Price::from_raw(self.close),
            volume: Qty(self.volume),
            vwap: vwap(self.pv.get(), self.volume),
            day_volume: Qty(day.volume),
            day_open: Price::from_raw(day.open),
            day_vwap: vwap(day.pv, day.volume),
            avg_size: Qty(self.volume / self.trades.max(1)),
            trades: self.trades,
        })
    }
}

/// `pv / volume` rounded half up to a price unit; zero for no volume.
pub fn vwap(pv: u128, volume: u64) -> Price {
    if volume == 0 {
        return Price::ZERO;
    }
    let volume = u128::from(volume);
    Price::from_raw(((pv + volume / 2) / volume) as i64)
}
