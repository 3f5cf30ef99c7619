//! The detectors: new session highs and lows (`HL`), trends (`TR`) and surges (`SV`).
//!
//! Each detector is a free function over one symbol's state and the period's thresholds,
//! called once per accepted trade in event time; none allocates, and each costs O(1).
//! Threshold tests are exact integer comparisons in `i128` (prices are fixed point, ratios
//! micro-units); floats are used only for the scores and percentages that go out.

pub(crate) mod high_low;
pub(crate) mod surge;
pub(crate) mod trend;

use crate::event::Strength;

/// `|delta| / base * 100 >= pct_micro / 1e6 * factor_micro / 1e6`, exactly.
///
/// `delta` and `base` are raw price units (`base > 0`); `pct_micro` and `factor_micro` are
/// micro-units. All magnitudes fit `i128` for prices up to the configurable maximum.
pub(crate) fn pct_at_least(delta: i64, base: i64, pct_micro: i64, factor_micro: i64) -> bool {
    debug_assert!(base > 0, "Invariant: reference prices are positive");
    let lhs = i128::from(delta).abs() * 100 * 1_000_000 * 1_000_000;
    lhs >= i128::from(pct_micro) * i128::from(factor_micro) * i128::from(base)
}

/// Strength from a score and the two thresholds.
pub(crate) fn strength(score_abs: f64, moderate: f64, strong: f64) -> Strength {
    if score_abs >= strong {
        Strength::Strong
    } else if score_abs >= moderate {
        Strength::Moderate
    } else {
        Strength::Weak
    }
}

/// When a detector last fired for a symbol, or never: 8 bytes where an `Option<u64>` takes
/// 16, because per-symbol state is read on every trade and every byte of it is cache.
/// `u64::MAX` (the year 2554) stands for never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LastEvent(u64);

impl LastEvent {
    pub(crate) const NEVER: LastEvent = LastEvent(u64::MAX);

    pub(crate) fn at(t_ns: u64) -> LastEvent {
        LastEvent(t_ns)
    }
}

/// Whether `cooldown_ns` has passed since `last` (always true when there was none).
pub(crate) fn cooled_down(last: LastEvent, t_ns: u64, cooldown_ns: u64) -> bool {
    last == LastEvent::NEVER || t_ns.saturating_sub(last.0) >= cooldown_ns
}
