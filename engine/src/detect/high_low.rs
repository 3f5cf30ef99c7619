//! `HL`: a new session high or low that passes the cooldown and significance gates.

use crate::config::PeriodParams;
use crate::detect::{cooled_down, pct_at_least, LastEvent};
use crate::event::{Extreme, HighLow};
use crate::tick::{Price, Qty, Timestamp};

/// One symbol's session extremes and `HL` bookkeeping; reset at the first trade of a day.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HighLowState {
    pub(crate) high: i64,
    pub(crate) low: i64,
    highs: u32,
    lows: u32,
    last_event: LastEvent,
}

impl HighLowState {
    pub(crate) const EMPTY: HighLowState =
        HighLowState { high: 0, low: 0, highs: 0, lows: 0, last_event: LastEvent::NEVER };

    /// The state after the first trade of a session: high = low = price, nothing fired.
    pub(crate) fn start(price: i64) -> HighLowState {
        HighLowState { high: price, low: price, ..HighLowState::EMPTY }
    }
}

/// A trade after the session's first; returns the `HL` event if it fires.
///
/// `open` is the session open, `prev_price` the symbol's previous accepted price, `t_ns` the
/// detector time (cooldowns), `ts` the trade's own time (the event's `t`).
#[allow(clippy::too_many_arguments, reason = "a leaf over primitives, called from one place")]
pub(crate) fn on_trade(
    state: &mut HighLowState,
    params: &PeriodParams,
    open: i64,
    price: i64,
    prev_price: i64,
    size: u64,
    t_ns: u64,
    ts: Timestamp,
) -> Option<HighLow> {
    let kind = if price > state.high {
        state.high = price;
        Extreme::High
    } else if price < state.low {
        state.low = price;
        Extreme::Low
    } else {
        return None;
    };
    if !cooled_down(state.last_event, t_ns, params.hl_cooldown_ns) {
        return None;
    }
    // The last band is unbounded (checked by the config), so one always matches.
    let band = params.hl_bands.iter().find(|band| price < band.below_raw)?;
    let significant = pct_at_least(price - open, open, band.min_pct_micro, 1_000_000)
        || (i128::from(price) - i128::from(prev_price)).abs() >= i128::from(band.min_dollar_raw);
    if !significant {
        return None;
    }
    let count = match kind {
        Extreme::High => {
            state.highs += 1;
            state.highs
        }
        Extreme::Low => {
            state.lows += 1;
            state.lows
        }
    };
    state.last_event = LastEvent::at(t_ns);
    Some(HighLow {
        kind,
        price: Price::from_raw(price),
        ts,
        session_high: Price::from_raw(state.high),
        session_low: Price::from_raw(state.low),
        count,
        pct: (price - open) as f64 / open as f64 * 100.0,
        size: Qty(size),
    })
}
