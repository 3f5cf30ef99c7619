//! Runtime configuration of the engine, with every default from DETECTORS.md.
//!
//! [`Config`] holds user-facing values (percent as `f64`, durations in milliseconds) and is
//! what a configuration file maps onto. [`Config::validate`] checks it once and resolves it
//! into [`Params`]: fixed-point thresholds, nanosecond durations and bucket counts, so that
//! the per-trade path does integer comparisons only.

use chrono_tz::Tz;

use crate::calendar::Period;
use crate::error::ConfigError;
use crate::limits::TREND_WINDOWS_COUNT;
use crate::limits::{HL_BANDS_COUNT, PRICE_SCALE, RATIO_SCALE, SYMBOLS_MAX, WINDOW_BUCKETS_MAX};

const NANOS_PER_MS: u64 = 1_000_000;

/// Everything the engine can be told. Construct with `Config::default()` and change fields.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Config {
    /// How many distinct symbols the engine tracks; per-symbol state is allocated up front.
    /// Default: 16,384.
    pub symbols_max: u32,
    /// Highest accepted price, in dollars. Default: 1,000,000.
    pub max_price: f64,
    /// Largest accepted trade size, in shares. Default: 10,000,000.
    pub max_size: u64,
    /// Largest accepted move from the symbol's last accepted price, in percent.
    /// Default: 50.
    pub max_jump_pct: f64,
    /// Accepted trades of a symbol (since start-up) before the jump check applies.
    /// Default: 10.
    pub jump_check_after_trades: u32,
    /// How far a tick may be ahead of the engine clock. Default: 5,000 ms.
    pub max_future_ms: u64,
    /// How far a tick may be behind the engine clock. Default: 86,400,000 ms (one day).
    pub max_age_ms: u64,
    /// How much older than the symbol's newest accepted trade a trade may be.
    /// Default: 1,000 ms.
    pub max_reorder_ms: u64,
    /// How long after its end a bar waits for the clock before it is closed.
    /// Default: 250 ms.
    pub bar_close_grace_ms: u64,
    /// Spreads the clock-driven closes of different symbols' bars over this window: each
    /// symbol waits `bar_close_grace_ms` plus its own fixed offset in `[0, spread)` (a hash of
    /// its id), so thousands of quiet symbols do not all close in the same instant and
    /// reach every client in one burst. 0 closes every symbol at exactly the grace. With the
    /// defaults every bar is out within one second of its end. Default: 750 ms.
    pub bar_close_spread_ms: u64,
    /// The exchange's time zone, an IANA name. Default: `America/New_York`.
    pub timezone: String,
    /// Market periods in the exchange's civil time. Default: see [`SessionHours`].
    pub session_hours: SessionHours,
    /// Trend windows and weights. Default: see [`TrendConfig`].
    pub trend: TrendConfig,
    /// Surge windows. Default: see [`SurgeConfig`].
    pub surge: SurgeConfig,
    /// Detector thresholds that apply unless a period overrides them.
    /// Default: see [`Thresholds`].
    pub thresholds: Thresholds,
    /// Per-period overrides of [`Config::thresholds`]. Default: none.
    pub overrides: PeriodOverrides,
    /// The `seq` of the first event. Default: 1.
    pub seq_start: u64,
    /// Emit `ACT`, the market's activity, once a second (DETECTORS.md). Default: true.
    pub activity: bool,
    /// `ACT`'s `level` thresholds in trades per second over the last minute, ascending:
    /// below the first `quiet`, then `normal`, `busy`, and `extreme` at or above the last.
    /// Default: `[100, 1000, 10000]`.
    pub activity_levels: [f64; 3],
}

impl Default for Config {
    fn default() -> Config {
        Config {
            symbols_max: 16_384,
            max_price: 1_000_000.0,
            max_size: 10_000_000,
            max_jump_pct: 50.0,
            jump_check_after_trades: 10,
            max_future_ms: 5_000,
            max_age_ms: 86_400_000,
            max_reorder_ms: 1_000,
            bar_close_grace_ms: 250,
            bar_close_spread_ms: 750,
            timezone: "America/New_York".to_owned(),
            session_hours: SessionHours::default(),
            trend: TrendConfig::default(),
            surge: SurgeConfig::default(),
            thresholds: Thresholds::default(),
            overrides: PeriodOverrides::default(),
            seq_start: 1,
            activity: true,
            activity_levels: [100.0, 1_000.0, 10_000.0],
        }
    }
}

impl Config {
    /// The smallest legal limits: every overflow and warm-up path runs within a few trades.
    /// Tests use it (TigerBeetle's `test_min`).
    pub fn test_min() -> Config {
        Config {
            symbols_max: 2,
            jump_check_after_trades: 0,
            trend: TrendConfig {
                bucket_ms: 1_000,
                windows_ms: [1_000, 2_000, 3_000],
                ..TrendConfig::default()
            },
            surge: SurgeConfig { bucket_ms: 1_000, interval_ms: 1_000, baseline_intervals: 1 },
            ..Config::default()
        }
    }

    /// Checks every setting and resolves the configuration for the engine.
    pub fn validate(&self) -> Result<Params, ConfigError> {
        range("symbols_max", self.symbols_max as f64, 1.0, SYMBOLS_MAX as f64)?;
        range("max_price", self.max_price, 1e-6, 1e9)?;
        range("max_size", self.max_size as f64, 1.0, 1e10)?;
        range("max_jump_pct", self.max_jump_pct, 1e-6, 1e6)?;
        range("max_future_ms", self.max_future_ms as f64, 0.0, 86_400_000.0)?;
        range("max_age_ms", self.max_age_ms as f64, 0.0, 30.0 * 86_400_000.0)?;
        range("max_reorder_ms", self.max_reorder_ms as f64, 0.0, 3_600_000.0)?;
        range("bar_close_grace_ms", self.bar_close_grace_ms as f64, 0.0, 60_000.0)?;
        range("bar_close_spread_ms", self.bar_close_spread_ms as f64, 0.0, 60_000.0)?;
        range("seq_start", self.seq_start as f64, 1.0, (u64::MAX / 2) as f64)?;
        for level in self.activity_levels {
            range("activity_levels", level, 0.0, 1e9)?;
        }
        if !self.activity_levels.is_sorted() {
            return Err(ConfigError::Inconsistent {
                field: "activity_levels",
                rule: "the three levels ascend",
            });
        }
        let timezone: Tz = self.timezone.parse().map_err(|_| ConfigError::UnknownTimezone)?;
        let session_minutes = self.session_hours.validate()?;
        let trend = self.trend.validate()?;
        let surge = self.surge.validate()?;
        let base = self.thresholds.validate()?;
        let mut periods = [base; Period::COUNT];
        for period in Period::ALL {
            if let Some(patch) = self.overrides.get(period) {
                let mut thresholds = self.thresholds.clone();
                patch.apply(&mut thresholds);
                periods[period.index()] = thresholds.validate()?;
            }
        }
        Ok(Params {
            symbols_max: self.symbols_max,
            max_price_raw: fixed(self.max_price),
            max_size: self.max_size,
            max_jump_pct_micro: fixed(self.max_jump_pct),
            jump_check_after_trades: u64::from(self.jump_check_after_trades),
            max_future_ns: self.max_future_ms * NANOS_PER_MS,
            max_age_ns: self.max_age_ms * NANOS_PER_MS,
            max_reorder_ns: self.max_reorder_ms * NANOS_PER_MS,
            bar_close_grace_ns: self.bar_close_grace_ms * NANOS_PER_MS,
            bar_close_spread_ns: self.bar_close_spread_ms * NANOS_PER_MS,
            timezone,
            session_minutes,
            trend,
            surge,
            periods,
            seq_start: self.seq_start,
            // `trades_60s / 60 >= level` in integers: `trades_60s >= ceil(60 * level)`.
            activity_trades_60s: self
                .activity
                .then(|| self.activity_levels.map(|level| (level * 60.0).ceil() as u64)),
        })
    }
}

/// Market periods as minutes after local midnight, in the exchange's time zone. Periods
/// select threshold overrides; they reset nothing. The time before `pre_market_start` and
/// after `after_hours_end` is [`Period::Overnight`], which uses the base thresholds.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct SessionHours {
    /// Pre-market opens. Default: 240 (04:00).
    pub pre_market_start_min: u32,
    /// Regular session and the opening period start. Default: 570 (09:30).
    pub regular_start_min: u32,
    /// Opening period ends, midday starts. Default: 600 (10:00).
    pub midday_start_min: u32,
    /// Closing period starts. Default: 930 (15:30).
    pub closing_start_min: u32,
    /// Regular session ends, after-hours starts. Default: 960 (16:00).
    pub after_hours_start_min: u32,
    /// After-hours ends. Default: 1,200 (20:00).
    pub after_hours_end_min: u32,
}

impl Default for SessionHours {
    fn default() -> SessionHours {
        SessionHours {
            pre_market_start_min: 240,
            regular_start_min: 570,
            midday_start_min: 600,
            closing_start_min: 930,
            after_hours_start_min: 960,
            after_hours_end_min: 1_200,
        }
    }
}

impl SessionHours {
    fn validate(&self) -> Result<[u32; 6], ConfigError> {
        let minutes = [
            self.pre_market_start_min,
            self.regular_start_min,
            self.midday_start_min,
            self.closing_start_min,
            self.after_hours_start_min,
            self.after_hours_end_min,
        ];
        range("session_hours.after_hours_end_min", minutes[5] as f64, 1.0, 1_440.0)?;
        if minutes.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(ConfigError::Inconsistent {
                field: "session_hours",
                rule: "period starts must be strictly ascending",
            });
        }
        Ok(minutes)
    }
}

/// Trend windows (DETECTORS.md `TR`). Windows are whole numbers of buckets.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct TrendConfig {
    /// Bucket width, aligned to UTC multiples. Default: 5,000 ms.
    pub bucket_ms: u64,
    /// Short, medium and long windows. Default: 180,000, 360,000, 600,000 ms.
    pub windows_ms: [u64; TREND_WINDOWS_COUNT],
    /// Weights of the short, medium and long window scores. Default: 0.3, 0.4, 0.3.
    pub window_weights: [f64; TREND_WINDOWS_COUNT],
    /// Weights of the price, VWAP and signed-volume components. Default: 0.5, 0.3, 0.2.
    pub component_weights: [f64; 3],
    /// A move of this many percent scores 1 (the clip). Default: 1.0.
    pub clip_pct: f64,
}

impl Default for TrendConfig {
    fn default() -> TrendConfig {
        TrendConfig {
            bucket_ms: 5_000,
            windows_ms: [180_000, 360_000, 600_000],
            window_weights: [0.3, 0.4, 0.3],
            component_weights: [0.5, 0.3, 0.2],
            clip_pct: 1.0,
        }
    }
}

impl TrendConfig {
    fn validate(&self) -> Result<TrendParams, ConfigError> {
        range("trend.bucket_ms", self.bucket_ms as f64, 1.0, 3_600_000.0)?;
        range("trend.clip_pct", self.clip_pct, 1e-6, 1e6)?;
        let mut window_buckets = [0; TREND_WINDOWS_COUNT];
        for (slot, &window_ms) in window_buckets.iter_mut().zip(&self.windows_ms) {
            *slot = buckets("trend.windows_ms", window_ms, self.bucket_ms)?;
        }
        if window_buckets.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(ConfigError::Inconsistent {
                field: "trend.windows_ms",
                rule: "short < medium < long",
            });
        }
        Ok(TrendParams {
            bucket_ns: self.bucket_ms * NANOS_PER_MS,
            window_buckets,
            window_weights: self.window_weights,
            component_weights: self.component_weights,
            score_per_ratio: 100.0 / self.clip_pct,
        })
    }
}

/// Surge windows (DETECTORS.md `SV`).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct SurgeConfig {
    /// Bucket width, aligned to UTC multiples. Default: 1,000 ms.
    pub bucket_ms: u64,
    /// The interval over which price change and volume are measured. Default: 5,000 ms.
    pub interval_ms: u64,
    /// Intervals before the current one that form the volume baseline. Default: 12.
    pub baseline_intervals: u32,
}

impl Default for SurgeConfig {
    fn default() -> SurgeConfig {
        SurgeConfig { bucket_ms: 1_000, interval_ms: 5_000, baseline_intervals: 12 }
    }
}

impl SurgeConfig {
    fn validate(&self) -> Result<SurgeParams, ConfigError> {
        range("surge.bucket_ms", self.bucket_ms as f64, 1.0, 3_600_000.0)?;
        range("surge.baseline_intervals", self.baseline_intervals as f64, 1.0, 1_000.0)?;
        let interval_buckets = buckets("surge.interval_ms", self.interval_ms, self.bucket_ms)?;
        let total_ms = self.interval_ms.saturating_mul(u64::from(self.baseline_intervals) + 1);
        let history_buckets = buckets("surge.interval_ms", total_ms, self.bucket_ms)?;
        Ok(SurgeParams {
            bucket_ns: self.bucket_ms * NANOS_PER_MS,
            interval_buckets,
            history_buckets,
            baseline_intervals: u64::from(self.baseline_intervals),
        })
    }
}

/// One high/low significance band: applies to trades priced below `below` dollars (the last
/// band uses `f64::INFINITY`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct HlBand {
    /// Upper bound (exclusive) of the band's prices, in dollars.
    pub below: f64,
    /// Minimum move from the session open, in percent.
    pub min_pct: f64,
    /// Minimum move from the previous accepted price, in dollars.
    pub min_dollar: f64,
}

/// How the surge triggers combine (DETECTORS.md `SV`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum SurgeMode {
    /// Both triggers, or one strong trigger compensating a weaker one (the default).
    Adaptive,
    /// Both triggers.
    Strict,
    /// Either trigger.
    Any,
}

/// Detector thresholds; each period may override any of them.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Thresholds {
    /// Least time between two `HL` events of a symbol. Default: 1,000 ms.
    pub hl_cooldown_ms: u64,
    /// Significance bands, ascending. Default: the DETECTORS.md table.
    pub hl_bands: [HlBand; HL_BANDS_COUNT],
    /// Least time between two `TR` events that only change strength. Default: 10,000 ms.
    pub trend_min_interval_ms: u64,
    /// `|score|` at which a direction is up or down. Default: 0.3.
    pub trend_direction_score: f64,
    /// `|score|` at which strength is moderate. Default: 0.45.
    pub trend_moderate_score: f64,
    /// `|score|` at which strength is strong. Default: 0.6.
    pub trend_strong_score: f64,
    /// Price trigger, in percent. Default: 1.0.
    pub surge_price_pct: f64,
    /// Volume trigger, as a multiple of the baseline. Default: 3.0.
    pub surge_volume_mult: f64,
    /// How the triggers combine. Default: adaptive.
    pub surge_mode: SurgeMode,
    /// Adaptive mode, first compensating case: price at this multiple of its threshold...
    /// Default: 1.5.
    pub surge_adaptive_price_strong: f64,
    /// ...with volume at this multiple of its threshold. Default: 0.7.
    pub surge_adaptive_volume_weak: f64,
    /// Adaptive mode, second case: volume at this multiple of its threshold...
    /// Default: 2.0.
    pub surge_adaptive_volume_strong: f64,
    /// ...with price at this multiple of its threshold. Default: 0.5.
    pub surge_adaptive_price_weak: f64,
    /// Least time between two `SV` events of a symbol. Default: 60,000 ms.
    pub surge_cooldown_ms: u64,
    /// Score at which a surge is moderate. Default: 60.
    pub surge_moderate_score: f64,
    /// Score at which a surge is strong. Default: 80.
    pub surge_strong_score: f64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        let band = |below, min_pct, min_dollar| HlBand { below, min_pct, min_dollar };
        Thresholds {
            hl_cooldown_ms: 1_000,
            hl_bands: [
                band(1.0, 0.20, 0.005),
                band(5.0, 0.15, 0.01),
                band(25.0, 0.10, 0.02),
                band(100.0, 0.08, 0.05),
                band(f64::INFINITY, 0.05, 0.10),
            ],
            trend_min_interval_ms: 10_000,
            trend_direction_score: 0.3,
            trend_moderate_score: 0.45,
            trend_strong_score: 0.6,
            surge_price_pct: 1.0,
            surge_volume_mult: 3.0,
            surge_mode: SurgeMode::Adaptive,
            surge_adaptive_price_strong: 1.5,
            surge_adaptive_volume_weak: 0.7,
            surge_adaptive_volume_strong: 2.0,
            surge_adaptive_price_weak: 0.5,
            surge_cooldown_ms: 60_000,
            surge_moderate_score: 60.0,
            surge_strong_score: 80.0,
        }
    }
}

impl Thresholds {
    fn validate(&self) -> Result<PeriodParams, ConfigError> {
        let mut hl_bands = [HlBandParams::default(); HL_BANDS_COUNT];
        let mut below_prev = 0.0;
        for (slot, band) in hl_bands.iter_mut().zip(&self.hl_bands) {
            if band.below.is_nan() || band.below <= below_prev {
                return Err(ConfigError::Inconsistent {
                    field: "hl_bands",
                    rule: "band upper bounds must be positive and ascending",
                });
            }
            below_prev = band.below;
            range("hl_bands.min_pct", band.min_pct, 0.0, 1e6)?;
            range("hl_bands.min_dollar", band.min_dollar, 0.0, 1e9)?;
            let below_raw = if band.below >= 1e12 { i64::MAX } else { fixed(band.below) };
            *slot = HlBandParams {
                below_raw,
                min_pct_micro: fixed(band.min_pct),
                min_dollar_raw: fixed(band.min_dollar),
            };
        }
        if hl_bands[HL_BANDS_COUNT - 1].below_raw != i64::MAX {
            return Err(ConfigError::Inconsistent {
                field: "hl_bands",
                rule: "the last band must be unbounded (below = inf)",
            });
        }
        range("hl_cooldown_ms", self.hl_cooldown_ms as f64, 0.0, 86_400_000.0)?;
        range("trend_min_interval_ms", self.trend_min_interval_ms as f64, 0.0, 86_400_000.0)?;
        range("surge_cooldown_ms", self.surge_cooldown_ms as f64, 0.0, 86_400_000.0)?;
        range("trend_direction_score", self.trend_direction_score, 0.0, 1.0)?;
        range("trend_moderate_score", self.trend_moderate_score, 0.0, 1.0)?;
        range("trend_strong_score", self.trend_strong_score, 0.0, 1.0)?;
        range("surge_price_pct", self.surge_price_pct, 1e-6, 1e6)?;
        range("surge_volume_mult", self.surge_volume_mult, 1e-6, 1e6)?;
        for (field, factor) in [
            ("surge_adaptive_price_strong", self.surge_adaptive_price_strong),
            ("surge_adaptive_volume_weak", self.surge_adaptive_volume_weak),
            ("surge_adaptive_volume_strong", self.surge_adaptive_volume_strong),
            ("surge_adaptive_price_weak", self.surge_adaptive_price_weak),
        ] {
            range(field, factor, 0.0, 1e3)?;
        }
        range("surge_moderate_score", self.surge_moderate_score, 0.0, 100.0)?;
        range("surge_strong_score", self.surge_strong_score, 0.0, 100.0)?;
        Ok(PeriodParams {
            hl_cooldown_ns: self.hl_cooldown_ms * NANOS_PER_MS,
            hl_bands,
            trend_min_interval_ns: self.trend_min_interval_ms * NANOS_PER_MS,
            trend_direction_score: self.trend_direction_score,
            trend_moderate_score: self.trend_moderate_score,
            trend_strong_score: self.trend_strong_score,
            surge_price_pct: self.surge_price_pct,
            surge_volume_mult: self.surge_volume_mult,
            surge_price_pct_micro: fixed(self.surge_price_pct),
            surge_volume_mult_micro: fixed(self.surge_volume_mult),
            surge_mode: self.surge_mode,
            surge_adaptive_micro: [
                fixed(self.surge_adaptive_price_strong),
                fixed(self.surge_adaptive_volume_weak),
                fixed(self.surge_adaptive_volume_strong),
                fixed(self.surge_adaptive_price_weak),
            ],
            surge_cooldown_ns: self.surge_cooldown_ms * NANOS_PER_MS,
            surge_moderate_score: self.surge_moderate_score,
            surge_strong_score: self.surge_strong_score,
        })
    }
}

macro_rules! threshold_overrides {
    ($($field:ident: $ty:ty),* $(,)?) => {
        /// Threshold overrides for one period: each `Some` replaces the base value of the
        /// [`Thresholds`] field of the same name. Default: all `None`.
        #[non_exhaustive]
        #[derive(Clone, Debug, Default, PartialEq)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
        pub struct ThresholdOverrides {
            $(
                #[doc = concat!("Overrides [`Thresholds::", stringify!($field), "`].")]
                pub $field: Option<$ty>,
            )*
        }

        impl ThresholdOverrides {
            fn apply(&self, base: &mut Thresholds) {
                $(
                    if let Some(value) = &self.$field {
                        base.$field = value.clone();
                    }
                )*
            }
        }
    };
}

threshold_overrides! {
    hl_cooldown_ms: u64,
    hl_bands: [HlBand; HL_BANDS_COUNT],
    trend_min_interval_ms: u64,
    trend_direction_score: f64,
    trend_moderate_score: f64,
    trend_strong_score: f64,
    surge_price_pct: f64,
    surge_volume_mult: f64,
    surge_mode: SurgeMode,
    surge_adaptive_price_strong: f64,
    surge_adaptive_volume_weak: f64,
    surge_adaptive_volume_strong: f64,
    surge_adaptive_price_weak: f64,
    surge_cooldown_ms: u64,
    surge_moderate_score: f64,
    surge_strong_score: f64,
}

/// Overrides per market period (the old system's opening, midday, closing, after-hours and
/// pre-market settings). Overnight always uses the base thresholds.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct PeriodOverrides {
    /// 04:00-09:30 by default.
    pub pre_market: Option<ThresholdOverrides>,
    /// 09:30-10:00 by default.
    pub opening: Option<ThresholdOverrides>,
    /// 10:00-15:30 by default.
    pub midday: Option<ThresholdOverrides>,
    /// 15:30-16:00 by default.
    pub closing: Option<ThresholdOverrides>,
    /// 16:00-20:00 by default.
    pub after_hours: Option<ThresholdOverrides>,
}

impl PeriodOverrides {
    fn get(&self, period: Period) -> Option<&ThresholdOverrides> {
        match period {
            Period::Overnight => None,
            Period::PreMarket => self.pre_market.as_ref(),
            Period::Opening => self.opening.as_ref(),
            Period::Midday => self.midday.as_ref(),
            Period::Closing => self.closing.as_ref(),
            Period::AfterHours => self.after_hours.as_ref(),
        }
    }
}

/// A validated configuration, resolved for the hot path. Built only by [`Config::validate`].
#[derive(Clone, Debug)]
pub struct Params {
    pub(crate) symbols_max: u32,
    pub(crate) max_price_raw: i64,
    pub(crate) max_size: u64,
    pub(crate) max_jump_pct_micro: i64,
    pub(crate) jump_check_after_trades: u64,
    pub(crate) max_future_ns: u64,
    pub(crate) max_age_ns: u64,
    pub(crate) max_reorder_ns: u64,
    pub(crate) bar_close_grace_ns: u64,
    pub(crate) bar_close_spread_ns: u64,
    pub(crate) timezone: Tz,
    pub(crate) session_minutes: [u32; 6],
    pub(crate) trend: TrendParams,
    pub(crate) surge: SurgeParams,
    pub(crate) periods: [PeriodParams; Period::COUNT],
    pub(crate) seq_start: u64,
    /// `ACT`'s level thresholds as trades in 60 s; `None` with `activity` off.
    pub(crate) activity_trades_60s: Option<[u64; 3]>,
}

impl Params {
    /// How many symbols the engine tracks.
    pub fn symbols_max(&self) -> u32 {
        self.symbols_max
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct TrendParams {
    pub(crate) bucket_ns: u64,
    pub(crate) window_buckets: [u64; TREND_WINDOWS_COUNT],
    pub(crate) window_weights: [f64; TREND_WINDOWS_COUNT],
    pub(crate) component_weights: [f64; 3],
    /// `100 / clip_pct`: turns a ratio into a component score before the clip.
    pub(crate) score_per_ratio: f64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct SurgeParams {
    pub(crate) bucket_ns: u64,
    /// Buckets in one interval (the recent window).
    pub(crate) interval_buckets: u64,
    /// Buckets in the interval plus its baseline.
    pub(crate) history_buckets: u64,
    pub(crate) baseline_intervals: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HlBandParams {
    pub(crate) below_raw: i64,
    pub(crate) min_pct_micro: i64,
    pub(crate) min_dollar_raw: i64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PeriodParams {
    pub(crate) hl_cooldown_ns: u64,
    pub(crate) hl_bands: [HlBandParams; HL_BANDS_COUNT],
    pub(crate) trend_min_interval_ns: u64,
    pub(crate) trend_direction_score: f64,
    pub(crate) trend_moderate_score: f64,
    pub(crate) trend_strong_score: f64,
    pub(crate) surge_price_pct: f64,
    pub(crate) surge_volume_mult: f64,
    pub(crate) surge_price_pct_micro: i64,
    pub(crate) surge_volume_mult_micro: i64,
    pub(crate) surge_mode: SurgeMode,
    /// Price strong, volume weak, volume strong, price weak; micro-units.
    pub(crate) surge_adaptive_micro: [i64; 4],
    pub(crate) surge_cooldown_ns: u64,
    pub(crate) surge_moderate_score: f64,
    pub(crate) surge_strong_score: f64,
}

/// Dollars, percent or a multiple as fixed point (`PRICE_SCALE` = `RATIO_SCALE`).
fn fixed(value: f64) -> i64 {
    (value * PRICE_SCALE as f64).round() as i64
}

fn range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    // NaN fails both comparisons and so is rejected.
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { field, value, min, max })
    }
}

fn buckets(field: &'static str, window_ms: u64, bucket_ms: u64) -> Result<u64, ConfigError> {
    if window_ms == 0 || !window_ms.is_multiple_of(bucket_ms) {
        return Err(ConfigError::Inconsistent {
            field,
            rule: "windows must be positive whole multiples of the bucket width",
        });
    }
    let count = window_ms / bucket_ms;
    // The ring keeps one bucket more than the longest window (the one leaving it).
    range(field, count as f64, 1.0, (WINDOW_BUCKETS_MAX - 1) as f64)?;
    Ok(count)
}

const _: () = assert!(RATIO_SCALE == 1_000_000);

impl Params {
    /// A session calendar for these settings' time zone and period starts.
    pub fn calendar(&self) -> crate::calendar::SessionCalendar {
        crate::calendar::SessionCalendar::new(self.timezone, self.session_minutes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let params = Config::default().validate();
        assert!(params.is_ok(), "{params:?}");
        assert!(Config::test_min().validate().is_ok());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let config = Config { max_price: f64::NAN, ..Config::default() };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::OutOfRange { field: "max_price", .. })
        ));
        let config = Config { timezone: "Mars/Olympus".into(), ..Config::default() };
        assert_eq!(config.validate().err(), Some(ConfigError::UnknownTimezone));
        let mut config = Config::default();
        config.trend.windows_ms = [180_000, 180_000, 600_000];
        assert!(matches!(config.validate(), Err(ConfigError::Inconsistent { .. })));
        let mut config = Config::default();
        config.surge.interval_ms = 4_500;
        assert!(matches!(config.validate(), Err(ConfigError::Inconsistent { .. })));
    }

    #[test]
    fn period_override_replaces_only_its_fields() {
        let mut config = Config::default();
        config.overrides.opening = Some(ThresholdOverrides {
            surge_price_pct: Some(2.0),
            ..ThresholdOverrides::default()
        });
        let params = config.validate().map_err(|e| e.to_string());
        let params = params.as_ref().map(|p| p.periods).map_err(Clone::clone);
        let periods = params.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(periods[Period::Opening.index()].surge_price_pct_micro, 2_000_000);
        assert_eq!(periods[Period::Midday.index()].surge_price_pct_micro, 1_000_000);
        assert_eq!(periods[Period::Opening.index()].surge_cooldown_ns, 60_000_000_000);
    }
}
