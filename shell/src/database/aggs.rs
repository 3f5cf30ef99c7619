//! `GET /v2/aggs/ticker/{SYM}/range/{N}/{minute|second}/{from}/{to}` (PROTOCOL.md section 1):
//! bars from the database in the shape of the Polygon/Massive aggregates endpoint, so the
//! official REST clients read them unchanged.
//!
//! - `from` and `to` are Unix ms or `YYYY-MM-DD`; a date is the trading day in the engine's
//!   time zone (`engine.timezone`), `to` included whole. Bars whose start is in
//!   `[from, to]` are returned.
//! - `N` minutes (or seconds) aggregate the stored 1-minute (1-second) bars into buckets
//!   aligned to multiples of N since the epoch: `o` of the first, `c` of the last, `h` and
//!   `l` the extremes, `v` and `n` summed, `vw` volume-weighted.
//! - Query parameters: `adjusted` (accepted; prices are as traded: there are no corporate
//!   actions to adjust for), `sort` (`asc`, default, or `desc`), `limit` (default 5,000, at
//!   most `database.query_limit_max`). Others are ignored, as Polygon does.
//! - Past `limit`, `next_url` gives the rest: the same request from where this one stopped.
//! - Errors are JSON: `{"status":"ERROR","request_id":...,"error":...}` with 400, 401, 403,
//!   404, 429, 503 or 504.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{NaiveDate, TimeZone};
use postgres::Client;

/// Polygon's default `limit`.
pub const LIMIT_DEFAULT: u32 = 5_000;

/// Bar width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timespan {
    /// From `A` bars.
    Second,
    /// From `AM` bars.
    Minute,
}

impl Timespan {
    fn name(self) -> &'static str {
        match self {
            Timespan::Second => "second",
            Timespan::Minute => "minute",
        }
    }

    fn width_ms(self) -> i64 {
        match self {
            Timespan::Second => 1_000,
            Timespan::Minute => 60_000,
        }
    }
}

/// One aggregates request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggsRequest {
    /// The ticker.
    pub symbol: String,
    /// `N`.
    pub multiplier: u32,
    /// `minute` or `second`.
    pub timespan: Timespan,
    /// First bar start, Unix ms, included.
    pub from_ms: i64,
    /// Last bar start, Unix ms, included.
    pub to_ms: i64,
    /// `sort=desc`.
    pub descending: bool,
    /// Most bars answered.
    pub limit: u32,
    /// `adjusted`, echoed.
    pub adjusted: bool,
}

/// A refused request: the HTTP status line and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggsError {
    /// `400 Bad Request` and the like.
    pub status: &'static str,
    /// What is wrong.
    pub message: String,
}

impl AggsError {
    /// A `400`.
    pub fn bad(message: impl Into<String>) -> AggsError {
        AggsError { status: "400 Bad Request", message: message.into() }
    }

    /// The JSON body.
    pub fn body(&self, request_id: &str) -> String {
        let status = if self.status.starts_with("401") || self.status.starts_with("403") {
            "NOT_AUTHORIZED"
        } else {
            "ERROR"
        };
        format!(
            r#"{{"status":"{status}","request_id":"{request_id}","error":{}}}"#,
            serde_json::to_string(&self.message).unwrap_or_default()
        )
    }
}

/// Whether `path` is an aggregates path (what [`parse`] then checks).
pub fn is_aggs_path(path: &str) -> bool {
    path.starts_with("/v2/aggs/")
}

/// Parses `path` and `query`; dates are days in `timezone`.
pub fn parse(
    path: &str,
    query: Option<&str>,
    timezone: chrono_tz::Tz,
    limit_max: u32,
) -> Result<AggsRequest, AggsError> {
    let shape = "expected /v2/aggs/ticker/{SYM}/range/{N}/{minute|second}/{from}/{to}";
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let ["v2", "aggs", "ticker", symbol, "range", multiplier, timespan, from, to] = parts[..]
    else {
        return Err(AggsError { status: "404 Not Found", message: shape.to_owned() });
    };
    if symbol.is_empty()
        || symbol.len() > 16
        || !symbol.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
    {
        return Err(AggsError::bad(format!("invalid ticker {symbol:?}")));
    }
    let multiplier: u32 =
        multiplier.parse().ok().filter(|n| (1..=1_440).contains(n)).ok_or_else(|| {
            AggsError::bad(format!("multiplier {multiplier:?}: a whole number 1..=1440"))
        })?;
    let timespan = match timespan {
        "minute" => Timespan::Minute,
        "second" => Timespan::Second,
        other => {
            return Err(AggsError::bad(format!(
                "timespan {other:?}: this server stores minute and second bars"
            )))
        }
    };
    let from_ms = bound(from, timezone, false)?;
    let to_ms = bound(to, timezone, true)?;
    if to_ms < from_ms {
        return Err(AggsError::bad(format!("from {from} is after to {to}")));
    }
    let (mut descending, mut limit, mut adjusted) = (false, LIMIT_DEFAULT.min(limit_max), true);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sort" => {
                descending = match value {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(AggsError::bad(format!("sort={value}: asc or desc"))),
                }
            }
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=limit_max).contains(n))
                    .ok_or_else(|| AggsError::bad(format!("limit={value}: 1..={limit_max}")))?;
            }
            "adjusted" => {
                adjusted = match value {
                    "true" | "" => true,
                    "false" => false,
                    _ => return Err(AggsError::bad(format!("adjusted={value}: true or false"))),
                }
            }
            _ => {}
        }
    }
    let symbol = symbol.to_owned();
    Ok(AggsRequest { symbol, multiplier, timespan, from_ms, to_ms, descending, limit, adjusted })
}

/// `from` or `to` in Unix ms: a number, or a date's first (or, for `to`, last) ms.
fn bound(text: &str, timezone: chrono_tz::Tz, end: bool) -> Result<i64, AggsError> {
    if let Ok(ms) = text.parse::<i64>() {
        if ms >= 0 {
            return Ok(ms);
        }
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| AggsError::bad(format!("{text:?}: Unix ms or YYYY-MM-DD")))?;
    let day = if end { date.succ_opt().unwrap_or(date) } else { date };
    let midnight = day.and_hms_opt(0, 0, 0).expect("Invariant: midnight exists as a time");
    let local = timezone
        .from_local_datetime(&midnight)
        .earliest()
        .ok_or_else(|| AggsError::bad(format!("{text}: no such day in {timezone}")))?;
    let ms = local.timestamp_millis();
    Ok(if end { ms - 1 } else { ms })
}

/// One answered bar.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agg {
    /// Start, Unix ms.
    pub t: i64,
    /// Open.
    pub o: f64,
    /// High.
    pub h: f64,
    /// Low.
    pub l: f64,
    /// Close.
    pub c: f64,
    /// Volume.
    pub v: i64,
    /// Volume-weighted price.
    pub vw: f64,
    /// Trades.
    pub n: i64,
}

fn time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Reads at most `request.limit + 1` bars (one more tells whether there is a next page).
pub fn query(client: &mut Client, request: &AggsRequest) -> Result<Vec<Agg>, postgres::Error> {
    let order = if request.descending { "DESC" } else { "ASC" };
    let frequency = request.timespan.name();
    let (from, to) = (time(request.from_ms), time(request.to_ms));
    let limit = i64::from(request.limit) + 1;
    let sql = if request.multiplier == 1 {
        format!(
            "SELECT (extract(epoch FROM start) * 1000)::bigint, o, h, l, c, v, vw, n FROM bars \
             WHERE symbol = $1 AND frequency = $2 AND start >= $3 AND start <= $4 \
             ORDER BY start {order} LIMIT $5"
        )
    } else {
        let width = request.timespan.width_ms() * i64::from(request.multiplier);
        format!(
            "SELECT b, (array_agg(o ORDER BY start))[1], max(h), min(l), \
             (array_agg(c ORDER BY start DESC))[1], sum(v)::bigint, \
             coalesce(sum(vw * v) / nullif(sum(v), 0), 0), sum(n)::bigint \
             FROM (SELECT (floor(extract(epoch FROM start) * 1000 / {width}) * {width})::bigint \
             AS b, start, o, h, l, c, v, vw, n FROM bars \
             WHERE symbol = $1 AND frequency = $2 AND start >= $3 AND start <= $4) AS s \
             GROUP BY b ORDER BY b {order} LIMIT $5"
        )
    };
    let rows = client.query(&sql, &[&request.symbol, &frequency, &from, &to, &limit])?;
    Ok(rows
        .iter()
        .map(|row| Agg {
            t: row.get(0),
            o: row.get(1),
            h: row.get(2),
            l: row.get(3),
            c: row.get(4),
            v: row.get(5),
            vw: row.get(6),
            n: row.get(7),
        })
        .collect())
}

/// The answer: Polygon's shape, with `next_url` (on `base`, e.g. `http://host:port`) when
/// `aggs` holds more than the limit.
pub fn answer(request: &AggsRequest, mut aggs: Vec<Agg>, base: &str, request_id: &str) -> String {
    let more = aggs.len() > request.limit as usize;
    aggs.truncate(request.limit as usize);
    let mut out = String::with_capacity(128 + aggs.len() * 120);
    out.push_str(&format!(
        r#"{{"ticker":{},"queryCount":{n},"resultsCount":{n},"adjusted":{},"#,
        serde_json::to_string(&request.symbol).unwrap_or_default(),
        request.adjusted,
        n = aggs.len()
    ));
    if !aggs.is_empty() {
        out.push_str(r#""results":["#);
        for (at, a) in aggs.iter().enumerate() {
            if at > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                r#"{{"v":{},"vw":{},"o":{},"c":{},"h":{},"l":{},"t":{},"n":{}}}"#,
                a.v, a.vw, a.o, a.c, a.h, a.l, a.t, a.n
            ));
        }
        out.push_str("],");
    }
    out.push_str(&format!(r#""status":"OK","request_id":"{request_id}","count":{}"#, aggs.len()));
    if let (true, Some(last)) = (more, aggs.last()) {
        let width = request.timespan.width_ms() * i64::from(request.multiplier);
        let (from, to) = if request.descending {
            (request.from_ms, last.t - 1)
        } else {
            (last.t + if request.multiplier == 1 { 1 } else { width }, request.to_ms)
        };
        out.push_str(&format!(
            r#","next_url":"{base}/v2/aggs/ticker/{}/range/{}/{}/{from}/{to}?adjusted={}&sort={}&limit={}""#,
            request.symbol,
            request.multiplier,
            request.timespan.name(),
            request.adjusted,
            if request.descending { "desc" } else { "asc" },
            request.limit
        ));
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NY: chrono_tz::Tz = chrono_tz::America::New_York;

    #[test]
    fn a_path_with_dates_is_the_trading_day_in_the_engines_time_zone() {
        let r =
            parse("/v2/aggs/ticker/AAPL/range/5/minute/2026-11-24/2026-11-24", None, NY, 50_000)
                .unwrap();
        // 2026-11-24 00:00 in New York is 05:00 UTC.
        assert_eq!((r.from_ms, r.to_ms), (1_795_496_400_000, 1_795_496_400_000 + 86_400_000 - 1));
        assert_eq!(
            (r.multiplier, r.timespan, r.limit, r.descending),
            (5, Timespan::Minute, 5_000, false)
        );
        let r = parse(
            "/v2/aggs/ticker/AAPL/range/1/second/1000/2000",
            Some("adjusted=false&sort=desc&limit=7&other=1"),
            NY,
            50_000,
        )
        .unwrap();
        assert_eq!(
            (r.from_ms, r.to_ms, r.limit, r.descending, r.adjusted),
            (1_000, 2_000, 7, true, false)
        );
    }

    #[test]
    fn every_bad_part_is_named() {
        let bad = |path: &str, query: Option<&str>| parse(path, query, NY, 100).unwrap_err();
        assert_eq!(bad("/v2/aggs/ticker/AAPL/range/1/minute/1", None).status, "404 Not Found");
        assert!(bad("/v2/aggs/ticker/AAPL/range/0/minute/1/2", None)
            .message
            .contains("multiplier"));
        assert!(bad("/v2/aggs/ticker/AAPL/range/1/hour/1/2", None).message.contains("hour"));
        assert!(bad("/v2/aggs/ticker/AAPL/range/1/minute/2026-13-01/2", None)
            .message
            .contains("YYYY"));
        assert!(bad("/v2/aggs/ticker/AAPL/range/1/minute/5/2", None).message.contains("after"));
        assert!(bad("/v2/aggs/ticker/AAPL/range/1/minute/1/2", Some("limit=101"))
            .message
            .contains("limit"));
        assert!(bad("/v2/aggs/ticker/AAPL/range/1/minute/1/2", Some("sort=up"))
            .message
            .contains("sort"));
        assert!(bad("/v2/aggs/ticker/A%20B/range/1/minute/1/2", None).message.contains("ticker"));
    }

    #[test]
    fn a_full_page_says_where_the_next_one_starts() {
        let r =
            parse("/v2/aggs/ticker/AAPL/range/1/minute/0/999999", Some("limit=2"), NY, 10).unwrap();
        let bar = |t| Agg { t, o: 1.5, h: 2.0, l: 1.0, c: 1.25, v: 10, vw: 1.4, n: 2 };
        let body = answer(&r, vec![bar(60_000), bar(120_000), bar(180_000)], "http://h:1", "x");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["resultsCount"], 2);
        assert_eq!(json["results"][1]["t"], 120_000);
        assert_eq!(json["results"][0]["vw"], 1.4);
        assert_eq!(
            json["next_url"],
            "http://h:1/v2/aggs/ticker/AAPL/range/1/minute/120001/999999?adjusted=true&sort=asc&limit=2"
        );
        let last = answer(&r, vec![bar(60_000)], "http://h:1", "x");
        let json: serde_json::Value = serde_json::from_str(&last).unwrap();
        assert!(json.get("next_url").is_none());
        let empty: serde_json::Value = serde_json::from_str(&answer(&r, vec![], "", "x")).unwrap();
        assert_eq!(
            (json["status"].as_str(), empty["resultsCount"].as_u64()),
            (Some("OK"), Some(0))
        );
    }
}
