//! `SV`: a price or volume surge over the last interval against its baseline.

use crate::config::{PeriodParams, SurgeMode, SurgeParams};
use crate::detect::{cooled_down, pct_at_least, strength, LastEvent};
use crate::event::{Direction, Surge, SurgeTrigger};
use crate::tick::Timestamp;
use crate::window::{LeanBucket, Shape, Windows};

/// Windows of the surge detector: the interval, and the interval plus its baseline.
pub(crate) const SURGE_WINDOWS_COUNT: usize = 2;

const ONE_MICRO: i64 = 1_000_000;

/// Evaluates a surge after a trade was recorded in `windows`; returns `SV` if it fires.
#[allow(clippy::too_many_arguments, reason = "a leaf over primitives, called from one place")]
pub(crate) fn evaluate(
    last_event: &mut LastEvent,
    windows: &Windows<SURGE_WINDOWS_COUNT, LeanBucket>,
    shape: &Shape<SURGE_WINDOWS_COUNT>,
    surge: &SurgeParams,
    params: &PeriodParams,
    price: i64,
    t_ns: u64,
    ts: Timestamp,
) -> Option<Surge> {
    if !windows.is_full(shape, 1) || !cooled_down(*last_event, t_ns, params.surge_cooldown_ns) {
        return None;
    }
    let [recent, history] = windows.sums;
    let reference = recent.price_ref;
    let delta = price - reference;
    let recent_volume = recent.volume;
    let baseline_volume = history.volume - recent.volume;
    let intervals = surge.baseline_intervals;
    let price_at = |factor| pct_at_least(delta, reference, params.surge_price_pct_micro, factor);
    let volume_at = |factor: i64| {
        let lhs = i128::from(recent_volume) * i128::from(intervals) * 1_000_000 * 1_000_000;
        let rhs = i128::from(params.surge_volume_mult_micro) * i128::from(factor);
        baseline_volume > 0 && lhs >= rhs * i128::from(baseline_volume)
    };
    let price_ok = price_at(ONE_MICRO);
    let volume_ok = volume_at(ONE_MICRO);
    let [price_strong, volume_weak, volume_strong, price_weak] = params.surge_adaptive_micro;
    let fires = match params.surge_mode {
        SurgeMode::Strict => price_ok && volume_ok,
        SurgeMode::Any => price_ok || volume_ok,
        SurgeMode::Adaptive => {
            (price_ok && volume_ok)
                || (price_at(price_strong) && volume_at(volume_weak))
                || (volume_at(volume_strong) && price_at(price_weak))
        }
    };
    if !fires {
        return None;
    }
    let pct = delta as f64 / reference as f64 * 100.0;
    let vol_mult = if baseline_volume > 0 {
        recent_volume as f64 * intervals as f64 / baseline_volume as f64
    } else {
        0.0
    };
    let price_ratio = pct.abs() / params.surge_price_pct;
    let volume_ratio = vol_mult / params.surge_volume_mult;
    let trigger = match (price_ok, volume_ok) {
        (true, true) => SurgeTrigger::Both,
        (true, false) => SurgeTrigger::Price,
        (false, true) => SurgeTrigger::Volume,
        // A compensating case with factors below one: the stronger of the two.
        (false, false) if price_ratio >= volume_ratio => SurgeTrigger::Price,
        (false, false) => SurgeTrigger::Volume,
    };
    let score = (price_ratio * 25.0).min(50.0) + (volume_ratio * 25.0).min(50.0);
    *last_event = LastEvent::at(t_ns);
    Some(Surge {
        direction: if pct >= 0.0 { Direction::Up } else { Direction::Down },
        trigger,
        pct,
        vol_mult,
        score,
        strength: strength(score, params.surge_moderate_score, params.surge_strong_score),
        ts,
    })
}
