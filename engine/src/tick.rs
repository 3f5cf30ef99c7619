//! The inputs of the engine: trades, quotes, upstream aggregates and fair market values.
//!
//! Each input is a plain `#[repr(C)]` record that is `Copy` and [`bytemuck::Pod`], so it can
//! travel through rings and be written to the journal as raw bytes with no encoding step.
//! Domain values are newtypes: [`Price`] is fixed point (see [`PRICE_SCALE`]), [`Qty`] a
//! whole number of shares, [`Timestamp`] nanoseconds since the Unix epoch, [`SymbolId`] an
//! index into the [`crate::SymbolTable`].

use core::fmt;

use bytemuck::{Pod, Zeroable};

use crate::limits::{CONDITIONS_MAX, PRICE_SCALE};

/// A price in millionths of a dollar ([`PRICE_SCALE`] units per dollar).
///
/// Fixed point makes every comparison exact: `2.01 - 2.00` is exactly one cent.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Price(i64);

impl Price {
    /// Zero, which is never a valid trade price.
    pub const ZERO: Price = Price(0);

    /// A price from raw units (millionths of a dollar).
    pub const fn from_raw(units: i64) -> Price {
        Price(units)
    }

    /// The raw units (millionths of a dollar).
    pub const fn raw(self) -> i64 {
        self.0
    }

    /// A whole number of dollars.
    pub const fn from_dollars(dollars: i64) -> Price {
        Price(dollars * PRICE_SCALE)
    }

    /// Converts a float, rounding to the nearest unit.
    ///
    /// Returns `None` for NaN, infinities and values outside the `i64` range: the caller
    /// counts those as [`crate::RejectReason::PriceNotFinite`].
    pub fn from_f64(value: f64) -> Option<Price> {
        let scaled = (value * PRICE_SCALE as f64).round();
        // i64::MAX as f64 rounds up to 2^63, which is out of range, hence the strict `<`.
        if scaled.is_finite() && scaled >= i64::MIN as f64 && scaled < i64::MAX as f64 {
            Some(Price(scaled as i64))
        } else {
            None
        }
    }

    /// The price as a float, for output and scoring only, never for comparisons.
    pub fn to_f64(self) -> f64 {
        self.0 as f64 / PRICE_SCALE as f64
    }
}

impl fmt::Display for Price {
    /// Shortest exact decimal: `12.5`, `0.000001`, `100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let scale = PRICE_SCALE as u64;
        let (whole, mut frac) = (abs / scale, abs % scale);
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let mut digits = 6;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        write!(f, "{sign}{whole}.{frac:0digits$}")
    }
}

/// A quantity of shares.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Qty(pub u64);

/// Nanoseconds since the Unix epoch, UTC.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// Nanoseconds per millisecond.
    pub const NANOS_PER_MS: u64 = 1_000_000;

    /// From Unix milliseconds (the unit of the wire protocol).
    pub const fn from_millis(ms: u64) -> Timestamp {
        Timestamp(ms.saturating_mul(Self::NANOS_PER_MS))
    }

    /// Whole Unix milliseconds, rounded down.
    pub const fn as_millis(self) -> u64 {
        self.0 / Self::NANOS_PER_MS
    }

    /// Raw nanoseconds.
    pub const fn nanos(self) -> u64 {
        self.0
    }
}

/// Index of a symbol in the [`crate::SymbolTable`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct SymbolId(pub u32);

impl SymbolId {
    /// The whole market: the symbol of market-wide events (`ACT`), `*` on the wire. No
    /// ticker is ever interned under it (ids stay below `symbols_max`).
    pub const MARKET: SymbolId = SymbolId(u32::MAX);

    /// The id as an array index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// One trade, as the exchange reported it. Exactly one 64-byte cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Trade {
    /// Event time: when the trade happened, per the exchange (`t` on the wire).
    pub ts_event: Timestamp,
    /// When TickStock received it; used for latency, never for detection.
    pub ts_recv: Timestamp,
    /// Trade price (`p`).
    pub price: Price,
    /// Trade size in shares (`s`).
    pub size: Qty,
    /// Exchange trade id (`i`), numeric; a feed maps non-numeric ids to a hash.
    pub trade_id: u64,
    /// The upstream's sequence number (`q`), 0 when it has none; used for gap accounting.
    pub upstream_seq: u64,
    /// Symbol.
    pub symbol: SymbolId,
    /// Exchange id (`x`).
    pub exchange: u8,
    /// How many of `conditions` are meaningful (at most [`CONDITIONS_MAX`]).
    pub conditions_len: u8,
    /// Trade condition codes (`c`), the first `conditions_len` of them.
    pub conditions: [u8; CONDITIONS_MAX],
}

const _: () = assert!(core::mem::size_of::<Trade>() == 64);

impl Trade {
    /// A trade with no exchange, id or conditions: what tests and the synthetic market build.
    pub fn new(symbol: SymbolId, ts_event: Timestamp, price: Price, size: Qty) -> Trade {
        Trade { ts_event, ts_recv: ts_event, price, size, symbol, ..Trade::default() }
    }

    /// The meaningful condition codes.
    pub fn conditions(&self) -> &[u8] {
        let len = usize::from(self.conditions_len).min(CONDITIONS_MAX);
        &self.conditions[..len]
    }
}

/// A top-of-book quote. The engine validates quotes (a crossed quote is rejected) and counts
/// them; no channel carries them out yet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Quote {
    /// Event time.
    pub ts_event: Timestamp,
    /// Receive time.
    pub ts_recv: Timestamp,
    /// Best bid.
    pub bid_price: Price,
    /// Shares at the best bid.
    pub bid_size: Qty,
    /// Best ask.
    pub ask_price: Price,
    /// Shares at the best ask.
    pub ask_size: Qty,
    /// Symbol.
    pub symbol: SymbolId,
    /// Exchange of the bid.
    pub bid_exchange: u8,
    /// Exchange of the ask.
    pub ask_exchange: u8,
    /// Padding; always zero.
    pub reserved: [u8; 2],
}

/// A per-second aggregate (`A`) sent by an upstream that has no trades, as the old system's
/// did. The engine forwards it as its own `A` bar and drives the detectors with it as one
/// trade at its close carrying its volume, timed at its start `s`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Aggregate {
    /// Receive time.
    pub ts_recv: Timestamp,
    /// Bar start (`s`), inclusive.
    pub start: Timestamp,
    /// Bar end (`e`), exclusive.
    pub end: Timestamp,
    /// Open (`o`).
    pub open: Price,
    /// High (`h`).
    pub high: Price,
    /// Low (`l`).
    pub low: Price,
    /// Close (`c`).
    pub close: Price,
    /// Volume-weighted price of the bar (`vw`).
    pub vwap: Price,
    /// Volume (`v`).
    pub volume: Qty,
    /// The upstream's official day open (`op`), or zero when it sent none.
    pub official_open: Price,
    /// Average trade size (`z`), or zero when unknown.
    pub avg_size: Qty,
    /// Symbol.
    pub symbol: SymbolId,
    /// Padding; always zero.
    pub reserved: u32,
}

/// A fair-market-value update (`FMV`), passed through.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Fmv {
    /// Event time.
    pub ts_event: Timestamp,
    /// Receive time.
    pub ts_recv: Timestamp,
    /// The fair market value.
    pub value: Price,
    /// Symbol.
    pub symbol: SymbolId,
    /// Padding; always zero.
    pub reserved: u32,
}

/// Any input of the engine: what a feed pushes into the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// A trade.
    Trade(Trade),
    /// A quote.
    Quote(Quote),
    /// An upstream per-second aggregate.
    Aggregate(Aggregate),
    /// A fair market value.
    Fmv(Fmv),
}

impl Tick {
    /// The symbol the tick is about.
    pub fn symbol(&self) -> SymbolId {
        match self {
            Tick::Trade(t) => t.symbol,
            Tick::Quote(q) => q.symbol,
            Tick::Aggregate(a) => a.symbol,
            Tick::Fmv(f) => f.symbol,
        }
    }

    /// Event time of the tick (an aggregate's start).
    pub fn ts_event(&self) -> Timestamp {
        match self {
            Tick::Trade(t) => t.ts_event,
            Tick::Quote(q) => q.ts_event,
            Tick::Aggregate(a) => a.start,
            Tick::Fmv(f) => f.ts_event,
        }
    }

    /// Receive time: when the tick entered the engine's ring (the engine clock for it).
    pub fn ts_recv(&self) -> Timestamp {
        match self {
            Tick::Trade(t) => t.ts_recv,
            Tick::Quote(q) => q.ts_recv,
            Tick::Aggregate(a) => a.ts_recv,
            Tick::Fmv(f) => f.ts_recv,
        }
    }

    /// Sets the receive time.
    pub fn set_ts_recv(&mut self, ts_recv: Timestamp) {
        match self {
            Tick::Trade(t) => t.ts_recv = ts_recv,
            Tick::Quote(q) => q.ts_recv = ts_recv,
            Tick::Aggregate(a) => a.ts_recv = ts_recv,
            Tick::Fmv(f) => f.ts_recv = ts_recv,
        }
    }

    /// Sets the symbol (feeds intern tickers after parsing).
    pub fn set_symbol(&mut self, symbol: SymbolId) {
        match self {
            Tick::Trade(t) => t.symbol = symbol,
            Tick::Quote(q) => q.symbol = symbol,
            Tick::Aggregate(a) => a.symbol = symbol,
            Tick::Fmv(f) => f.symbol = symbol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_display_is_shortest_exact_decimal() {
        assert_eq!(Price::from_raw(12_500_000).to_string(), "12.5");
        assert_eq!(Price::from_raw(1).to_string(), "0.000001");
        assert_eq!(Price::from_dollars(100).to_string(), "100");
        assert_eq!(Price::from_raw(-2_010_000).to_string(), "-2.01");
    }

    #[test]
    fn price_from_f64_rounds_and_rejects_non_finite() {
        assert_eq!(Price::from_f64(2.01), Some(Price::from_raw(2_010_000)));
        assert_eq!(Price::from_f64(0.1 + 0.2), Some(Price::from_raw(300_000)));
        assert_eq!(Price::from_f64(f64::NAN), None);
        assert_eq!(Price::from_f64(f64::INFINITY), None);
        assert_eq!(Price::from_f64(1e300), None);
    }

    #[test]
    fn fixed_point_difference_is_exact() {
        let a = Price::from_f64(2.01).map(Price::raw);
        let b = Price::from_f64(2.00).map(Price::raw);
        assert_eq!(a.zip(b).map(|(a, b)| a - b), Some(10_000));
    }
}
