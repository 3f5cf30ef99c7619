//! `TR`: trend over the short, medium and long windows (DETECTORS.md).

use crate::config::{PeriodParams, TrendParams};
use crate::detect::{cooled_down, strength, LastEvent};
use crate::event::{Direction, Strength, Trend, VwapPosition};
use crate::limits::TREND_WINDOWS_COUNT;
use crate::tick::Timestamp;
use crate::window::{Bucket, Shape, Windows};

/// One symbol's trend bookkeeping.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrendState {
    /// Direction at the last evaluation (`None` between the thresholds).
    direction: Option<Direction>,
    /// Strength of the last `TR` event.
    strength: Strength,
    last_event: LastEvent,
}

impl TrendState {
    pub(crate) const NEW: TrendState =
        TrendState { direction: None, strength: Strength::Weak, last_event: LastEvent::NEVER };
}

/// What the trend evaluation needs besides the windows.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TrendInput {
    pub(crate) price: i64,
    /// Session volume and price x volume, for `vwap_pos`.
    pub(crate) day_volume: u64,
    pub(crate) day_pv: u128,
    pub(crate) t_ns: u64,
    pub(crate) ts: Timestamp,
}

/// Evaluates the trend after a trade was recorded in `windows`; returns `TR` if it fires.
pub(crate) fn evaluate(
    state: &mut TrendState,
    windows: &Windows<TREND_WINDOWS_COUNT, Bucket>,
    shape: &Shape<TREND_WINDOWS_COUNT>,
    trend: &TrendParams,
    params: &PeriodParams,
    input: &TrendInput,
) -> Option<Trend> {
    if !windows.is_full(shape, 0) {
        return None;
    }
    let price = input.price as f64;
    let per_ratio = trend.score_per_ratio;
    let mut window_scores = [0.0; TREND_WINDOWS_COUNT];
    for (score, sum) in window_scores.iter_mut().zip(&windows.sums) {
        // The window holds this trade, so its volume and price x volume are positive.
        let reference = sum.price_ref as f64;
        let volume = sum.volume as f64;
        let [w_price, w_vwap, w_volume] = trend.component_weights;
        let price_part = clip((price - reference) / reference * per_ratio);
        // (price - vwap) / vwap with vwap = pv / volume, in one division.
        let vwap_part = clip((price * volume / sum.pv.to_f64() - 1.0) * per_ratio);
        let volume_part = clip(sum.signed_volume as f64 / volume);
        *score = w_price * price_part + w_vwap * vwap_part + w_volume * volume_part;
    }
    let [w_short, w_medium, w_long] = trend.window_weights;
    let score =
        w_short * window_scores[0] + w_medium * window_scores[1] + w_long * window_scores[2];
    let direction = if score >= params.trend_direction_score {
        Some(Direction::Up)
    } else if score <= -params.trend_direction_score {
        Some(Direction::Down)
    } else {
        None
    };
    let strength = strength(score.abs(), params.trend_moderate_score, params.trend_strong_score);
    let previous = core::mem::replace(&mut state.direction, direction);
    let direction = direction?;
    let fires = previous != Some(direction)
        || (strength != state.strength
            && cooled_down(state.last_event, input.t_ns, params.trend_min_interval_ns));
    if !fires {
        return None;
    }
    state.strength = strength;
    state.last_event = LastEvent::at(input.t_ns);
    let above = i128::from(input.price) * i128::from(input.day_volume) >= input.day_pv as i128;
    Some(Trend {
        direction,
        strength,
        score,
        window_scores,
        vwap_position: if above { VwapPosition::Above } else { VwapPosition::Below },
        ts: input.ts,
    })
}

fn clip(value: f64) -> f64 {
    value.clamp(-1.0, 1.0)
}
