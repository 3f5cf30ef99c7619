//! A deliberately naive reference model of the engine, written from DETECTORS.md.
//!
//! It keeps every accepted trade of every symbol and recomputes each figure from that full
//! history on every trade: window sums by scanning, session extremes by scanning, bars by
//! folding their trades, trading days by asking the time-zone database each time. It is slow
//! on purpose; the property tests require the real engine to produce identical events.

#![allow(dead_code, reason = "each test binary uses a different part of the model")]

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, TimeZone, Timelike};
use chrono_tz::Tz;
use tickstock_engine::{
    Activity, ActivityLevel, Bar, Config, Direction, Event, EventBody, Extreme, Frequency, HighLow,
    Period, Price, Qty, RejectReason, Strength, Surge, SurgeMode, SurgeTrigger, SymbolId,
    Timestamp, Trade, Trend, VwapPosition,
};

const MS: u64 = 1_000_000;

/// One accepted trade as the model remembers it.
#[derive(Clone, Copy, Debug)]
struct Past {
    /// Detector time (never behind the symbol's newest accepted trade).
    t_det: u64,
    price: i64,
    size: u64,
    sign: i64,
}

#[derive(Clone, Debug, Default)]
struct OpenBar {
    start: u64,
    trades: Vec<(i64, u64)>,
}

#[derive(Clone, Debug, Default)]
struct Sym {
    history: Vec<Past>,
    newest: u64,
    bars: [Option<OpenBar>; 2],
    floors: [u64; 2],
    day: i32,
    session_start: usize,
    session_open: i64,
    highs: u32,
    lows: u32,
    last_hl: Option<u64>,
    trend_dir: Option<Direction>,
    trend_strength: Option<Strength>,
    last_tr: Option<u64>,
    last_sv: Option<u64>,
}

/// The reference model.
pub struct Model {
    config: Config,
    tz: Tz,
    now: u64,
    seq: u64,
    syms: BTreeMap<u32, Sym>,
    /// `ACT`: the next boundary (s; 0 before the first accepted trade) and every counted
    /// accepted trade as (second of `t`, symbol).
    act_next: u64,
    act_trades: Vec<(u64, u32)>,
    pub events: Vec<Event>,
    pub rejects: Vec<RejectReason>,
}

fn micro(x: f64) -> i128 {
    (x * 1e6).round() as i128
}

impl Model {
    pub fn new(config: &Config) -> Model {
        Model {
            tz: config.timezone.parse().expect("valid tz"),
            config: config.clone(),
            now: 0,
            seq: config.seq_start,
            syms: BTreeMap::new(),
            act_next: 0,
            act_trades: Vec::new(),
            events: Vec::new(),
            rejects: Vec::new(),
        }
    }

    fn emit(&mut self, symbol: u32, body: EventBody) {
        self.events.push(Event { seq: self.seq, symbol: SymbolId(symbol), body });
        self.seq += 1;
    }

    /// The trading day and period of `t`, straight from the time-zone database.
    fn day_period(&self, t: u64) -> (i32, Period) {
        let utc = DateTime::from_timestamp((t / 1_000_000_000) as i64, (t % 1_000_000_000) as u32)
            .expect("in range");
        let local = utc.with_timezone(&self.tz);
        let minute = local.time().hour() * 60 + local.time().minute();
        let h = &self.config.session_hours;
        let period = if minute < h.pre_market_start_min || minute >= h.after_hours_end_min {
            Period::Overnight
        } else if minute < h.regular_start_min {
            Period::PreMarket
        } else if minute < h.midday_start_min {
            Period::Opening
        } else if minute < h.closing_start_min {
            Period::Midday
        } else if minute < h.after_hours_start_min {
            Period::Closing
        } else {
            Period::AfterHours
        };
        // DST gaps never contain a period start in New York, so the local minute decides.
        (local.date_naive().num_days_from_ce(), period)
    }

    /// The thresholds in force. The tests configure no period overrides (those are covered by
    /// `config::tests`), so every period has the base thresholds; the model checks that.
    fn thresholds(&self, _period: Period) -> tickstock_engine::Thresholds {
        assert_eq!(self.config.overrides, Default::default(), "model supports no overrides");
        self.config.thresholds.clone()
    }

    pub fn clock(&mut self, now: u64) {
        self.now = self.now.max(now);
        loop {
            let act_due = self.act_due().filter(|&due| due <= self.now);
            let limit = act_due.unwrap_or(self.now);
            let mut due: Vec<(u64, u32, Frequency)> = self
                .open_bars()
                .into_iter()
                .map(|(end, sym, f)| (self.close_due(end, sym), sym, f))
                .filter(|&(due, ..)| due <= limit)
                .collect();
            due.sort();
            for (_, sym, f) in due {
                self.close_bar(sym, f);
            }
            if act_due.is_none() {
                break;
            }
            self.activity();
        }
    }

    /// DETECTORS.md's `ACT` of boundary `B` is due after that second's bars: at
    /// `B + bar_close_grace + bar_close_spread` (docs/detectors.md).
    fn act_delay(&self) -> u64 {
        (self.config.bar_close_grace_ms + self.config.bar_close_spread_ms) * MS
    }

    fn act_due(&self) -> Option<u64> {
        (self.config.activity && self.act_next > 0)
            .then(|| self.act_next * 1_000 * MS + self.act_delay())
    }

    /// Emits the next boundary's `ACT`, counting by scanning every counted trade; after a
    /// clock jump, boundaries whose windows are all empty are skipped up to the newest due.
    fn activity(&mut self) {
        let last = (self.now - self.act_delay()) / (1_000 * MS);
        let newest = self.act_trades.iter().map(|t| t.0).max().unwrap_or(0);
        if self.act_next < last && newest + 300 < self.act_next {
            self.act_next = last;
        }
        let b = self.act_next;
        let in_window =
            |w: u64| self.act_trades.iter().filter(move |t| t.0 >= b.saturating_sub(w) && t.0 < b);
        let trades = [10, 30, 60, 300].map(|w| in_window(w).count() as u64);
        let symbols: std::collections::BTreeSet<u32> = in_window(60).map(|t| t.1).collect();
        let level = match self
            .config
            .activity_levels
            .iter()
            .filter(|&&level| trades[2] as f64 / 60.0 >= level)
            .count()
        {
            0 => ActivityLevel::Quiet,
            1 => ActivityLevel::Normal,
            2 => ActivityLevel::Busy,
            _ => ActivityLevel::Extreme,
        };
        let body = Activity {
            ts: Timestamp(b * 1_000 * MS),
            trades,
            symbols_60s: symbols.len() as u32,
            level,
        };
        self.emit(u32::MAX, EventBody::Activity(body));
        self.act_next = b + 1;
    }

    /// DETECTORS.md's `end + bar_close_grace_ms`, plus the symbol's stagger: its id times
    /// 2^64/phi, top 32 bits, taken as a fraction of 2^32 of `bar_close_spread_ms`
    /// (docs/detectors.md).
    fn close_due(&self, end: u64, sym: u32) -> u64 {
        let hash = u128::from(u64::from(sym).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32);
        let spread = u128::from(self.config.bar_close_spread_ms * MS);
        end + self.config.bar_close_grace_ms * MS + ((hash * spread) >> 32) as u64
    }

    pub fn flush(&mut self) {
        for (_, sym, f) in self.open_bars() {
            self.close_bar(sym, f);
        }
    }

    /// Every open bar as (end, symbol, frequency), sorted.
    fn open_bars(&self) -> Vec<(u64, u32, Frequency)> {
        let mut all = Vec::new();
        for (&id, sym) in &self.syms {
            for f in Frequency::ALL {
                if let Some(bar) = &sym.bars[f.index()] {
                    all.push((bar.start + f.width_ns(), id, f));
                }
            }
        }
        all.sort();
        all
    }

    fn close_bar(&mut self, id: u32, f: Frequency) {
        let sym = self.syms.get_mut(&id).expect("known");
        let Some(bar) = sym.bars[f.index()].take() else { return };
        let end = bar.start + f.width_ns();
        sym.floors[f.index()] = end;
        let volume: u64 = bar.trades.iter().map(|t| t.1).sum();
        let pv: u128 = bar.trades.iter().map(|t| t.0 as u128 * t.1 as u128).sum();
        let session = &sym.history[sym.session_start..];
        let day_volume: u64 = session.iter().map(|p| p.size).sum();
        let day_pv: u128 = session.iter().map(|p| p.price as u128 * p.size as u128).sum();
        let body = EventBody::Bar(Bar {
            frequency: f,
            start: Timestamp(bar.start),
            end: Timestamp(end),
            open: Price::from_raw(bar.trades[0].0),
            high: Price::from_raw(bar.trades.iter().map(|t| t.0).max().expect("non-empty")),
            low: Price::from_raw(bar.trades.iter().map(|t| t.0).min().expect("non-empty")),
            close: Price::from_raw(bar.trades.last().expect("non-empty").0),
            volume: Qty(volume),
            vwap: round_div(pv, volume),
            day_volume: Qty(day_volume),
            day_open: Price::from_raw(sym.session_open),
            day_vwap: round_div(day_pv, day_volume),
            avg_size: Qty(volume / bar.trades.len() as u64),
            trades: bar.trades.len() as u64,
        });
        self.emit(id, body);
    }

    pub fn trade(&mut self, now: u64, trade: &Trade) {
        self.clock(now);
        if let Err(reason) = self.validate(trade) {
            self.rejects.push(reason);
            return;
        }
        let id = trade.symbol.0;
        let (t, price, size) = (trade.ts_event.0, trade.price.raw(), trade.size.0);
        if self.act_next == 0 {
            self.act_next = self.now / (1_000 * MS) + 1;
        }
        // A trade dated 64 s or more after the next boundary is not counted (docs).
        if t / (1_000 * MS) < self.act_next + 64 {
            self.act_trades.push((t / (1_000 * MS), id));
        }
        let sym = self.syms.entry(id).or_default();
        let t_det = if sym.history.is_empty() { t } else { t.max(sym.newest) };
        let (day, period) = self.day_period(t_det);
        for f in Frequency::ALL {
            let sym = &self.syms[&id];
            if let Some(bar) = &sym.bars[f.index()] {
                if t >= bar.start + f.width_ns() {
                    self.close_bar(id, f);
                }
            }
        }
        let sym = self.syms.get_mut(&id).expect("known");
        let first_of_session = sym.history.is_empty() || sym.day != day;
        let prev_price = sym.history.last().map(|p| p.price);
        let sign = prev_price.map_or(0, |prev| (price - prev).signum());
        if first_of_session {
            sym.day = day;
            sym.session_start = sym.history.len();
            sym.session_open = price;
            sym.highs = 0;
            sym.lows = 0;
            sym.last_hl = None;
        }
        // The session's extremes before this trade, recomputed from the history.
        let before = &sym.history[sym.session_start..];
        let high_before = before.iter().map(|p| p.price).max();
        let low_before = before.iter().map(|p| p.price).min();
        sym.history.push(Past { t_det, price, size, sign });
        sym.newest = t_det;
        self.emit(id, EventBody::Trade(*trade));
        for f in Frequency::ALL {
            let sym = self.syms.get_mut(&id).expect("known");
            if t < sym.floors[f.index()] {
                continue; // late
            }
            match &mut sym.bars[f.index()] {
                Some(bar) => bar.trades.push((price, size)),
                None => {
                    let start = t - t % f.width_ns();
                    sym.floors[f.index()] = start;
                    sym.bars[f.index()] = Some(OpenBar { start, trades: vec![(price, size)] });
                }
            }
        }
        let th = self.thresholds(period);
        if !first_of_session {
            if let Some(event) = self.high_low(
                id,
                &th,
                price,
                prev_price.unwrap_or(0),
                high_before,
                low_before,
                size,
                t_det,
                trade.ts_event,
            ) {
                self.emit(id, EventBody::HighLow(event));
            }
        }
        if let Some(event) = self.trend(id, &th, price, t_det, trade.ts_event) {
            self.emit(id, EventBody::Trend(event));
        }
        if let Some(event) = self.surge(id, &th, price, t_det, trade.ts_event) {
            self.emit(id, EventBody::Surge(event));
        }
    }

    fn validate(&self, trade: &Trade) -> Result<(), RejectReason> {
        let c = &self.config;
        if trade.symbol.0 >= c.symbols_max {
            return Err(RejectReason::UnknownSymbol);
        }
        let price = trade.price.raw();
        if price <= 0 {
            return Err(RejectReason::PriceNotPositive);
        }
        if price as i128 > micro(c.max_price) {
            return Err(RejectReason::PriceTooHigh);
        }
        if trade.size.0 < 1 {
            return Err(RejectReason::SizeTooSmall);
        }
        if trade.size.0 > c.max_size {
            return Err(RejectReason::SizeTooLarge);
        }
        let t = trade.ts_event.0 as i128;
        let now = self.now as i128;
        if t > now + (c.max_future_ms * MS) as i128 {
            return Err(RejectReason::TooFarInFuture);
        }
        if t < now - (c.max_age_ms * MS) as i128 {
            return Err(RejectReason::TooOld);
        }
        if let Some(sym) = self.syms.get(&trade.symbol.0).filter(|s| !s.history.is_empty()) {
            if t < sym.newest as i128 - (c.max_reorder_ms * MS) as i128 {
                return Err(RejectReason::OutOfOrder);
            }
            let last = sym.history.last().expect("non-empty").price as i128;
            if sym.history.len() as u64 >= u64::from(c.jump_check_after_trades) {
                // |p - last| / last * 100 > max_jump_pct
                if (price as i128 - last).abs() * 100 * 1_000_000 > micro(c.max_jump_pct) * last {
                    return Err(RejectReason::PriceJump);
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn high_low(
        &mut self,
        id: u32,
        th: &tickstock_engine::Thresholds,
        price: i64,
        prev: i64,
        high_before: Option<i64>,
        low_before: Option<i64>,
        size: u64,
        t_det: u64,
        ts: Timestamp,
    ) -> Option<HighLow> {
        let sym = self.syms.get_mut(&id).expect("known");
        let kind = if price > high_before? {
            Extreme::High
        } else if price < low_before? {
            Extreme::Low
        } else {
            return None;
        };
        if let Some(last) = sym.last_hl {
            if t_det - last < th.hl_cooldown_ms * MS {
                return None;
            }
        }
        let band = th
            .hl_bands
            .iter()
            .find(|b| b.below.is_infinite() || (price as i128) < micro(b.below))?;
        let open = sym.session_open as i128;
        let pct_ok = (price as i128 - open).abs() * 100 * 1_000_000 >= micro(band.min_pct) * open;
        let dollar_ok = (price as i128 - prev as i128).abs() >= micro(band.min_dollar);
        if !(pct_ok || dollar_ok) {
            return None;
        }
        let count = match kind {
            Extreme::High => {
                sym.highs += 1;
                sym.highs
            }
            Extreme::Low => {
                sym.lows += 1;
                sym.lows
            }
        };
        sym.last_hl = Some(t_det);
        let session = &sym.history[sym.session_start..];
        Some(HighLow {
            kind,
            price: Price::from_raw(price),
            ts,
            session_high: Price::from_raw(session.iter().map(|p| p.price).max()?),
            session_low: Price::from_raw(session.iter().map(|p| p.price).min()?),
            count,
            pct: (price - sym.session_open) as f64 / sym.session_open as f64 * 100.0,
            size: Qty(size),
        })
    }

    /// Sums over the buckets `(b - n, b]` and the last price at or before bucket `b - n`.
    fn window(history: &[Past], bucket_ns: u64, b: u64, n: u64) -> (u128, u64, i64, i64) {
        let inside = |p: &Past| p.t_det / bucket_ns + n > b;
        let pv =
            history.iter().filter(|p| inside(p)).map(|p| p.price as u128 * p.size as u128).sum();
        let volume = history.iter().filter(|p| inside(p)).map(|p| p.size).sum();
        let signed = history.iter().filter(|p| inside(p)).map(|p| p.sign * p.size as i64).sum();
        let reference = history.iter().rfind(|p| !inside(p)).unwrap_or(&history[0]).price;
        (pv, volume, signed, reference)
    }

    fn trend(
        &mut self,
        id: u32,
        th: &tickstock_engine::Thresholds,
        price: i64,
        t_det: u64,
        ts: Timestamp,
    ) -> Option<Trend> {
        let tc = self.config.trend;
        let sym = self.syms.get_mut(&id).expect("known");
        let bucket_ns = tc.bucket_ms * MS;
        let b = t_det / bucket_ns;
        let first = sym.history[0].t_det / bucket_ns;
        if first + tc.windows_ms[0] / tc.bucket_ms > b + 1 {
            return None;
        }
        let mut scores = [0.0; 3];
        for (k, score) in scores.iter_mut().enumerate() {
            let (pv, volume, signed, reference) =
                Self::window(&sym.history, bucket_ns, b, tc.windows_ms[k] / tc.bucket_ms);
            let p = price as f64;
            let r = reference as f64;
            let v = volume as f64;
            let clip = |x: f64| x.clamp(-1.0, 1.0);
            let [wp, wv, wvol] = tc.component_weights;
            // The engine's float expressions, so that scores agree to the bit:
            // (p - vwap) / vwap is written p * volume / pv - 1.
            let per_ratio = 100.0 / tc.clip_pct;
            *score = wp * clip((p - r) / r * per_ratio)
                + wv * clip((p * v / pv as f64 - 1.0) * per_ratio)
                + wvol * clip(signed as f64 / v);
        }
        let [ws, wm, wl] = tc.window_weights;
        let score = ws * scores[0] + wm * scores[1] + wl * scores[2];
        let dir = if score >= th.trend_direction_score {
            Some(Direction::Up)
        } else if score <= -th.trend_direction_score {
            Some(Direction::Down)
        } else {
            None
        };
        let strength = if score.abs() >= th.trend_strong_score {
            Strength::Strong
        } else if score.abs() >= th.trend_moderate_score {
            Strength::Moderate
        } else {
            Strength::Weak
        };
        let previous = std::mem::replace(&mut sym.trend_dir, dir);
        let dir = dir?;
        let interval_ok =
            sym.last_tr.is_none_or(|last| t_det - last >= th.trend_min_interval_ms * MS);
        let reported = sym.trend_strength.unwrap_or(Strength::Weak);
        if previous == Some(dir) && (strength == reported || !interval_ok) {
            return None;
        }
        sym.trend_strength = Some(strength);
        sym.last_tr = Some(t_det);
        let session = &sym.history[sym.session_start..];
        let day_volume: u64 = session.iter().map(|p| p.size).sum();
        let day_pv: u128 = session.iter().map(|p| p.price as u128 * p.size as u128).sum();
        let above = price as i128 * day_volume as i128 >= day_pv as i128;
        Some(Trend {
            direction: dir,
            strength,
            score,
            window_scores: scores,
            vwap_position: if above { VwapPosition::Above } else { VwapPosition::Below },
            ts,
        })
    }

    fn surge(
        &mut self,
        id: u32,
        th: &tickstock_engine::Thresholds,
        price: i64,
        t_det: u64,
        ts: Timestamp,
    ) -> Option<Surge> {
        let sc = self.config.surge;
        let sym = self.syms.get_mut(&id).expect("known");
        let bucket_ns = sc.bucket_ms * MS;
        let b = t_det / bucket_ns;
        let n_recent = sc.interval_ms / sc.bucket_ms;
        let n_history = n_recent * (u64::from(sc.baseline_intervals) + 1);
        if sym.history[0].t_det / bucket_ns + n_history > b + 1 {
            return None;
        }
        if sym.last_sv.is_some_and(|last| t_det - last < th.surge_cooldown_ms * MS) {
            return None;
        }
        let (_, recent, _, reference) = Self::window(&sym.history, bucket_ns, b, n_recent);
        let (_, all, _, _) = Self::window(&sym.history, bucket_ns, b, n_history);
        let baseline = all - recent;
        let intervals = u64::from(sc.baseline_intervals);
        let delta = (price - reference) as i128;
        let price_at = |f: f64| {
            delta.abs() * 100 * 10i128.pow(12)
                >= micro(th.surge_price_pct) * micro(f) * reference as i128
        };
        let volume_at = |f: f64| {
            baseline > 0
                && recent as i128 * intervals as i128 * 10i128.pow(12)
                    >= micro(th.surge_volume_mult) * micro(f) * baseline as i128
        };
        let (p_ok, v_ok) = (price_at(1.0), volume_at(1.0));
        let fires = match th.surge_mode {
            SurgeMode::Strict => p_ok && v_ok,
            SurgeMode::Any => p_ok || v_ok,
            SurgeMode::Adaptive => {
                (p_ok && v_ok)
                    || (price_at(th.surge_adaptive_price_strong)
                        && volume_at(th.surge_adaptive_volume_weak))
                    || (volume_at(th.surge_adaptive_volume_strong)
                        && price_at(th.surge_adaptive_price_weak))
            }
        };
        if !fires {
            return None;
        }
        let pct = (price - reference) as f64 / reference as f64 * 100.0;
        let vol_mult =
            if baseline > 0 { recent as f64 * intervals as f64 / baseline as f64 } else { 0.0 };
        let (pr, vr) = (pct.abs() / th.surge_price_pct, vol_mult / th.surge_volume_mult);
        let trigger = match (p_ok, v_ok) {
            (true, true) => SurgeTrigger::Both,
            (true, false) => SurgeTrigger::Price,
            (false, true) => SurgeTrigger::Volume,
            _ if pr >= vr => SurgeTrigger::Price,
            _ => SurgeTrigger::Volume,
        };
        let score = (pr * 25.0).min(50.0) + (vr * 25.0).min(50.0);
        let strength = if score >= th.surge_strong_score {
            Strength::Strong
        } else if score >= th.surge_moderate_score {
            Strength::Moderate
        } else {
            Strength::Weak
        };
        sym.last_sv = Some(t_det);
        Some(Surge {
            direction: if pct >= 0.0 { Direction::Up } else { Direction::Down },
            trigger,
            pct,
            vol_mult,
            score,
            strength,
            ts,
        })
    }
}

fn round_div(pv: u128, volume: u64) -> Price {
    Price::from_raw(((pv + volume as u128 / 2) / volume as u128) as i64)
}

/// Helper so tests can name a UTC instant.
pub fn utc_ns(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> u64 {
    chrono::Utc
        .with_ymd_and_hms(y, mo, d, h, mi, s)
        .single()
        .expect("valid")
        .timestamp_nanos_opt()
        .expect("range") as u64
}
