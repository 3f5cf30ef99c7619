//! Trading days and market periods in the exchange's civil time.
//!
//! The trading day of a trade is its calendar date in the exchange's time zone; periods
//! (pre-market, opening, midday, closing, after-hours, overnight) select threshold overrides.
//! Conversions go through the IANA time-zone database compiled into `chrono-tz`, so daylight
//! saving time needs no code of its own. A day's boundaries are computed once, on the first
//! timestamp that falls in it, and cached: the per-trade cost is two comparisons and a scan of
//! six period starts.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone};
use chrono_tz::Tz;

/// A market period of the trading day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    /// Before pre-market and after after-hours (20:00-04:00 by default).
    Overnight,
    /// 04:00-09:30 by default.
    PreMarket,
    /// 09:30-10:00 by default.
    Opening,
    /// 10:00-15:30 by default.
    Midday,
    /// 15:30-16:00 by default.
    Closing,
    /// 16:00-20:00 by default.
    AfterHours,
}

impl Period {
    /// Every period, in index order.
    pub const ALL: [Period; 6] = [
        Period::Overnight,
        Period::PreMarket,
        Period::Opening,
        Period::Midday,
        Period::Closing,
        Period::AfterHours,
    ];

    /// Number of periods.
    pub const COUNT: usize = Self::ALL.len();

    /// Position in [`Period::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A trading day: days since 0001-01-01 (CE) of the local calendar date.
pub type TradingDay = i32;

/// Maps timestamps to trading days and periods, caching the current day.
#[derive(Clone, Debug)]
pub struct SessionCalendar {
    timezone: Tz,
    /// Period starts as minutes after local midnight: pre-market, opening, midday, closing,
    /// after-hours, and the end of after-hours.
    minutes: [u32; 6],
    day: DayBounds,
}

/// One cached day: `[start_ns, end_ns)` and the UTC instants of its period starts.
#[derive(Clone, Copy, Debug)]
struct DayBounds {
    day: TradingDay,
    start_ns: u64,
    end_ns: u64,
    period_starts_ns: [u64; 6],
}

impl SessionCalendar {
    /// A calendar for `timezone` with period starts `minutes` (validated by the config).
    pub(crate) fn new(timezone: Tz, minutes: [u32; 6]) -> SessionCalendar {
        // An empty range: the first lookup computes a real day.
        let day = DayBounds { day: 0, start_ns: 1, end_ns: 0, period_starts_ns: [0; 6] };
        SessionCalendar { timezone, minutes, day }
    }

    /// Whether `t_ns` falls on a weekday (Monday to Friday in the exchange's time zone) outside
    /// the overnight period: when a live feed is expected to be busy. Exchange holidays are not
    /// known to the calendar.
    pub fn market_open(&mut self, t_ns: u64) -> bool {
        use chrono::{Datelike, TimeZone, Weekday};
        let (_, period) = self.lookup(t_ns);
        let secs = i64::try_from(t_ns / 1_000_000_000).unwrap_or(i64::MAX);
        let weekday = self.timezone.timestamp_opt(secs, 0).single().map(|local| local.weekday());
        period != Period::Overnight && !matches!(weekday, Some(Weekday::Sat | Weekday::Sun) | None)
    }

    /// The trading day and period of `t_ns`.
    pub fn lookup(&mut self, t_ns: u64) -> (TradingDay, Period) {
        if t_ns < self.day.start_ns || t_ns >= self.day.end_ns {
            self.day = self.compute(t_ns);
        }
        let starts = &self.day.period_starts_ns;
        // Periods in order: overnight, pre-market, opening, midday, closing, after-hours,
        // overnight again after the last start.
        let passed = starts.iter().filter(|&&start| t_ns >= start).count();
        let period = match passed {
            1 => Period::PreMarket,
            2 => Period::Opening,
            3 => Period::Midday,
            4 => Period::Closing,
            5 => Period::AfterHours,
            _ => Period::Overnight,
        };
        (self.day.day, period)
    }

    fn compute(&self, t_ns: u64) -> DayBounds {
        let secs = (t_ns / 1_000_000_000) as i64;
        let nanos = (t_ns % 1_000_000_000) as u32;
        let date = DateTime::from_timestamp(secs, nanos)
            .map(|utc| utc.with_timezone(&self.timezone).date_naive())
            .unwrap_or_default();
        let next = date.succ_opt().unwrap_or(date);
        let local_minute = |date: NaiveDate, minute: u32| {
            let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
            self.utc_ns(midnight + Duration::minutes(i64::from(minute)))
        };
        let mut period_starts_ns = [0; 6];
        for (slot, &minute) in period_starts_ns.iter_mut().zip(&self.minutes) {
            *slot = local_minute(date, minute);
        }
        DayBounds {
            day: date.num_days_from_ce(),
            start_ns: local_minute(date, 0).min(t_ns),
            end_ns: local_minute(next, 0).max(t_ns + 1),
            period_starts_ns,
        }
    }

    /// The first UTC instant at or after the local time `local` (a time in a DST gap maps to
    /// the end of the gap; an ambiguous one to its first occurrence).
    fn utc_ns(&self, local: NaiveDateTime) -> u64 {
        let mut probe = local;
        for _ in 0..=4 {
            if let Some(instant) = self.timezone.from_local_datetime(&probe).earliest() {
                let nanos = instant.timestamp_nanos_opt().unwrap_or(0);
                return u64::try_from(nanos).unwrap_or(0);
            }
            probe += Duration::minutes(30);
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ny() -> SessionCalendar {
        SessionCalendar::new(chrono_tz::America::New_York, [240, 570, 600, 930, 960, 1200])
    }

    fn utc_ns(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> u64 {
        let naive = NaiveDate::from_ymd_opt(y, mo, d).and_then(|d| d.and_hms_opt(h, mi, 0));
        let utc = naive.map(|n| n.and_utc().timestamp_nanos_opt().unwrap_or(0)).unwrap_or(0);
        u64::try_from(utc).unwrap_or(0)
    }

    #[test]
    fn regular_open_is_13_30_utc_in_summer_and_14_30_in_winter() {
        let mut cal = ny();
        assert_eq!(cal.lookup(utc_ns(2026, 7, 1, 13, 29)).1, Period::PreMarket);
        assert_eq!(cal.lookup(utc_ns(2026, 7, 1, 13, 30)).1, Period::Opening);
        assert_eq!(cal.lookup(utc_ns(2026, 12, 1, 14, 29)).1, Period::PreMarket);
        assert_eq!(cal.lookup(utc_ns(2026, 12, 1, 14, 30)).1, Period::Opening);
    }

    #[test]
    fn dst_start_2026_03_08_is_a_23_hour_day() {
        let mut cal = ny();
        // 2026-03-08 starts at 05:00 UTC (EST); 2026-03-09 at 04:00 UTC (EDT).
        let (day, _) = cal.lookup(utc_ns(2026, 3, 8, 5, 0));
        assert_eq!(cal.lookup(utc_ns(2026, 3, 8, 4, 59)).0, day - 1);
        assert_eq!(cal.lookup(utc_ns(2026, 3, 9, 3, 59)).0, day);
        assert_eq!(cal.lookup(utc_ns(2026, 3, 9, 4, 0)).0, day + 1);
        assert_eq!(cal.lookup(utc_ns(2026, 3, 8, 12, 0)).0, day);
        assert_eq!(cal.day.end_ns - cal.day.start_ns, 23 * 3_600_000_000_000);
        // The open on the DST day itself is already EDT: 13:30 UTC.
        assert_eq!(cal.lookup(utc_ns(2026, 3, 8, 13, 30)).1, Period::Opening);
        assert_eq!(cal.lookup(utc_ns(2026, 3, 8, 13, 29)).1, Period::PreMarket);
    }

    #[test]
    fn dst_end_2026_11_01_is_a_25_hour_day() {
        let mut cal = ny();
        // 2026-11-01 starts at 04:00 UTC (EDT); 2026-11-02 at 05:00 UTC (EST).
        let (day, period) = cal.lookup(utc_ns(2026, 11, 1, 4, 0));
        assert_eq!(period, Period::Overnight);
        assert_eq!(cal.day.end_ns - cal.day.start_ns, 25 * 3_600_000_000_000);
        assert_eq!(cal.lookup(utc_ns(2026, 11, 2, 4, 59)).0, day);
        assert_eq!(cal.lookup(utc_ns(2026, 11, 2, 5, 0)).0, day + 1);
        // 09:30 EST on 2026-11-01 is 14:30 UTC.
        assert_eq!(cal.lookup(utc_ns(2026, 11, 1, 14, 29)).1, Period::PreMarket);
        assert_eq!(cal.lookup(utc_ns(2026, 11, 1, 14, 30)).1, Period::Opening);
    }

    #[test]
    fn every_period_boundary() {
        let mut cal = ny();
        let at = |cal: &mut SessionCalendar, h, m| cal.lookup(utc_ns(2026, 11, 24, h, m)).1;
        // EST: local = UTC - 5 h.
        assert_eq!(at(&mut cal, 8, 59), Period::Overnight);
        assert_eq!(at(&mut cal, 9, 0), Period::PreMarket);
        assert_eq!(at(&mut cal, 14, 30), Period::Opening);
        assert_eq!(at(&mut cal, 15, 0), Period::Midday);
        assert_eq!(at(&mut cal, 20, 30), Period::Closing);
        assert_eq!(at(&mut cal, 21, 0), Period::AfterHours);
        assert_eq!(at(&mut cal, 23, 59), Period::AfterHours);
        assert_eq!(cal.lookup(utc_ns(2026, 11, 25, 1, 0)).1, Period::Overnight);
    }
}
