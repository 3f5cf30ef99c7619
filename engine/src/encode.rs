//! Each event's JSON object, exactly as PROTOCOL.md section 3 puts it on the wire.
//!
//! The emitter encodes every event once, here, and the fan-out shares the bytes among all the
//! clients that want them. The encoder writes into a caller's `Vec<u8>` that has at least
//! [`EVENT_JSON_BYTES_MAX`] bytes of spare capacity, so it never allocates; numbers go through
//! `itoa` and `ryu`, prices are printed exactly from fixed point (`114.125`, never
//! `114.12499999`), and a float that is not finite is written `null` (JSON has no NaN).
//!
//! Field choices PROTOCOL.md leaves open are Polygon's: the trade id `i` is a string, the
//! upstream sequence number goes out as `q` when the upstream sent one, and conditions `c`
//! only when there are some. `fmv_vs_market_pct` is `null` until the symbol has traded.

use crate::event::{Activity, Bar, Direction, Event, EventBody, Extreme, FairValue, HighLow};
use crate::event::{Strength, Surge, SurgeTrigger, Trend, VwapPosition};
use crate::limits::{EVENT_JSON_BYTES_MAX, PRICE_SCALE};
use crate::tick::{Price, Timestamp, Trade};

/// Appends `event`'s JSON object (no surrounding array, no separator) to `out`.
///
/// `ticker` is the symbol's name. The caller keeps [`EVENT_JSON_BYTES_MAX`] bytes of spare
/// capacity in `out`; then this never allocates.
pub fn encode_event(out: &mut Vec<u8>, event: &Event, ticker: &str) {
    debug_assert!(
        out.capacity() - out.len() >= EVENT_JSON_BYTES_MAX,
        "Invariant: the caller leaves EVENT_JSON_BYTES_MAX of spare capacity"
    );
    let mut w = Writer { out };
    w.raw("{\"ev\":\"");
    w.raw(event.body.channel().label());
    w.raw("\",\"sym\":\"");
    w.raw(ticker);
    w.raw("\",\"seq\":");
    w.uint(event.seq);
    match &event.body {
        EventBody::Trade(trade) => w.trade(trade),
        EventBody::Bar(bar) => w.bar(bar),
        EventBody::HighLow(high_low) => w.high_low(high_low),
        EventBody::Trend(trend) => w.trend(trend),
        EventBody::Surge(surge) => w.surge(surge),
        EventBody::Fmv(fair_value) => w.fair_value(fair_value),
        EventBody::Activity(activity) => w.activity(activity),
    }
    w.raw("}");
}

/// Appends a price as the shortest exact decimal of its fixed point (`114.125`, `0.000001`,
/// `10`), as every event prints it. Anyone producing prices the server must echo byte for
/// byte (the load generator's upstream) calls this too.
pub fn write_price(out: &mut Vec<u8>, price: Price) {
    let raw = price.raw();
    if raw < 0 {
        out.push(b'-');
    }
    let abs = raw.unsigned_abs();
    let scale = PRICE_SCALE as u64;
    out.extend_from_slice(itoa::Buffer::new().format(abs / scale).as_bytes());
    let mut frac = abs % scale;
    if frac != 0 {
        let mut digits = 6;
        while frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        let mut buf = [b'0'; 7];
        buf[0] = b'.';
        let mut at = digits;
        while frac != 0 {
            buf[at] = b'0' + (frac % 10) as u8;
            frac /= 10;
            at -= 1;
        }
        out.extend_from_slice(&buf[..=digits]);
    }
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn raw(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
    }

    fn uint(&mut self, value: u64) {
        self.raw(itoa::Buffer::new().format(value));
    }

    fn float(&mut self, value: f64) {
        if value.is_finite() {
            self.raw(ryu::Buffer::new().format_finite(value));
        } else {
            self.raw("null");
        }
    }

    fn price(&mut self, price: Price) {
        write_price(self.out, price);
    }

    fn key(&mut self, key: &str) {
        self.raw(",\"");
        self.raw(key);
        self.raw("\":");
    }

    fn key_str(&mut self, key: &str, value: &str) {
        self.key(key);
        self.raw("\"");
        self.raw(value);
        self.raw("\"");
    }

    fn key_uint(&mut self, key: &str, value: u64) {
        self.key(key);
        self.uint(value);
    }

    fn key_price(&mut self, key: &str, value: Price) {
        self.key(key);
        self.price(value);
    }

    fn key_float(&mut self, key: &str, value: f64) {
        self.key(key);
        self.float(value);
    }

    fn key_ms(&mut self, key: &str, value: Timestamp) {
        self.key_uint(key, value.as_millis());
    }

    fn trade(&mut self, trade: &Trade) {
        self.key_price("p", trade.price);
        self.key_uint("s", trade.size.0);
        self.key_ms("t", trade.ts_event);
        self.key_uint("x", u64::from(trade.exchange));
        self.key("i");
        self.raw("\"");
        self.uint(trade.trade_id);
        self.raw("\"");
        if trade.upstream_seq != 0 {
            self.key_uint("q", trade.upstream_seq);
        }
        let conditions = &trade.conditions[..usize::from(trade.conditions_len)];
        if !conditions.is_empty() {
            self.key("c");
            for (index, &condition) in conditions.iter().enumerate() {
                self.raw(if index == 0 { "[" } else { "," });
                self.uint(u64::from(condition));
            }
            self.raw("]");
        }
    }

    fn bar(&mut self, bar: &Bar) {
        self.key_price("o", bar.open);
        self.key_price("h", bar.high);
        self.key_price("l", bar.low);
        self.key_price("c", bar.close);
        self.key_uint("v", bar.volume.0);
        self.key_price("vw", bar.vwap);
        self.key_uint("av", bar.day_volume.0);
        self.key_price("op", bar.day_open);
        self.key_price("a", bar.day_vwap);
        self.key_uint("z", bar.avg_size.0);
        self.key_uint("n", bar.trades);
        self.key_ms("s", bar.start);
        self.key_ms("e", bar.end);
    }

    fn high_low(&mut self, event: &HighLow) {
        self.key_str("kind", extreme_label(event.kind));
        self.key_price("p", event.price);
        self.key_ms("t", event.ts);
        self.key_price("session_high", event.session_high);
        self.key_price("session_low", event.session_low);
        self.key_uint("count", u64::from(event.count));
        self.key_float("pct", event.pct);
        self.key_uint("v", event.size.0);
    }

    fn trend(&mut self, event: &Trend) {
        self.key_str("dir", direction_label(event.direction));
        self.key_str("strength", strength_label(event.strength));
        self.key_float("score", event.score);
        self.key_float("short", event.window_scores[0]);
        self.key_float("medium", event.window_scores[1]);
        self.key_float("long", event.window_scores[2]);
        self.key_str("vwap_pos", vwap_label(event.vwap_position));
        self.key_ms("t", event.ts);
    }

    fn surge(&mut self, event: &Surge) {
        self.key_str("dir", direction_label(event.direction));
        self.key_str("trigger", trigger_label(event.trigger));
        self.key_float("pct", event.pct);
        self.key_float("vol_mult", event.vol_mult);
        self.key_float("score", event.score);
        self.key_str("strength", strength_label(event.strength));
        self.key_ms("t", event.ts);
    }

    fn fair_value(&mut self, event: &FairValue) {
        self.key_price("fmv", event.value);
        self.key_ms("t", event.ts);
        self.key("fmv_vs_market_pct");
        match event.vs_market_pct {
            Some(pct) => self.float(pct),
            None => self.raw("null"),
        }
    }

    fn activity(&mut self, event: &Activity) {
        self.key_ms("t", event.ts);
        for (key, trades) in
            ["trades_10s", "trades_30s", "trades_60s", "trades_300s"].into_iter().zip(event.trades)
        {
            self.key_uint(key, trades);
        }
        self.key_uint("symbols_60s", u64::from(event.symbols_60s));
        self.key_str("level", event.level.label());
    }
}

/// `kind` of `HL`.
pub const fn extreme_label(kind: Extreme) -> &'static str {
    match kind {
        Extreme::High => "high",
        Extreme::Low => "low",
    }
}

/// `dir` of `TR` and `SV`.
pub const fn direction_label(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "up",
        Direction::Down => "down",
    }
}

/// `strength` of `TR` and `SV`.
pub const fn strength_label(strength: Strength) -> &'static str {
    match strength {
        Strength::Weak => "weak",
        Strength::Moderate => "moderate",
        Strength::Strong => "strong",
    }
}

/// `vwap_pos` of `TR`.
pub const fn vwap_label(position: VwapPosition) -> &'static str {
    match position {
        VwapPosition::Above => "above",
        VwapPosition::Below => "below",
    }
}

/// `trigger` of `SV`.
pub const fn trigger_label(trigger: SurgeTrigger) -> &'static str {
    match trigger {
        SurgeTrigger::Price => "price",
        SurgeTrigger::Volume => "volume",
        SurgeTrigger::Both => "both",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ActivityLevel, Frequency};
    use crate::tick::{Qty, SymbolId};

    fn encode(body: EventBody, ticker: &str) -> String {
        let mut out = Vec::with_capacity(EVENT_JSON_BYTES_MAX);
        encode_event(&mut out, &Event { seq: 7, symbol: SymbolId(0), body }, ticker);
        assert!(out.len() <= EVENT_JSON_BYTES_MAX, "Invariant: an event fits the bound");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn trade_is_polygon_shaped_and_exact() {
        let mut trade = Trade::new(
            SymbolId(0),
            Timestamp(1_536_036_818_784_123_456),
            Price::from_raw(114_125_000),
            Qty(100),
        );
        trade.exchange = 4;
        trade.trade_id = 12_345;
        trade.upstream_seq = 3_681_328;
        trade.conditions_len = 2;
        trade.conditions[..2].copy_from_slice(&[0, 12]);
        let text = encode(EventBody::Trade(trade), "MSFT");
        assert_eq!(
            text,
            r#"{"ev":"T","sym":"MSFT","seq":7,"p":114.125,"s":100,"t":1536036818784,"x":4,"i":"12345","q":3681328,"c":[0,12]}"#
        );
    }

    #[test]
    fn activity_is_shaped_as_detectors_md_says() {
        let body = EventBody::Activity(Activity {
            ts: Timestamp(1_700_000_001_000_000_000),
            trades: [1, 2, 3, 4],
            symbols_60s: 2,
            level: ActivityLevel::Quiet,
        });
        assert_eq!(
            encode(body, "*"),
            r#"{"ev":"ACT","sym":"*","seq":7,"t":1700000001000,"trades_10s":1,"trades_30s":2,"trades_60s":3,"trades_300s":4,"symbols_60s":2,"level":"quiet"}"#
        );
    }

    #[test]
    fn prices_print_shortest_exact_decimals() {
        for (raw, text) in [
            (1, "0.000001"),
            (10, "0.00001"),
            (100_000_000, "100"),
            (12_500_000, "12.5"),
            (999_999_999_999, "999999.999999"),
            (-1_500_000, "-1.5"),
        ] {
            let mut out = Vec::with_capacity(EVENT_JSON_BYTES_MAX);
            Writer { out: &mut out }.price(Price::from_raw(raw));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    #[allow(clippy::too_many_lines, reason = "one literal per kind of event body")]
    fn the_widest_event_fits_the_bound_and_every_body_is_valid_json() {
        let mut trade =
            Trade::new(SymbolId(0), Timestamp(u64::MAX), Price::from_raw(i64::MAX), Qty(u64::MAX));
        trade.trade_id = u64::MAX;
        trade.upstream_seq = u64::MAX;
        trade.exchange = u8::MAX;
        trade.conditions_len = trade.conditions.len() as u8;
        trade.conditions = [u8::MAX; 10];
        let wide = Price::from_raw(-i64::MAX);
        let bar = Bar {
            frequency: Frequency::Minute,
            start: Timestamp(u64::MAX),
            end: Timestamp(u64::MAX),
            open: wide,
            high: wide,
            low: wide,
            close: wide,
            volume: Qty(u64::MAX),
            vwap: wide,
            day_volume: Qty(u64::MAX),
            day_open: wide,
            day_vwap: wide,
            avg_size: Qty(u64::MAX),
            trades: u64::MAX,
        };
        let float = -1.234_567_890_123_456_7e-300;
        let bodies = [
            EventBody::Trade(trade),
            EventBody::Bar(bar),
            EventBody::HighLow(HighLow {
                kind: Extreme::High,
                price: wide,
                ts: Timestamp(u64::MAX),
                session_high: wide,
                session_low: wide,
                count: u32::MAX,
                pct: float,
                size: Qty(u64::MAX),
            }),
            EventBody::Trend(Trend {
                direction: Direction::Down,
                strength: Strength::Moderate,
                score: float,
                window_scores: [float, f64::NAN, f64::INFINITY],
                vwap_position: VwapPosition::Below,
                ts: Timestamp(u64::MAX),
            }),
            EventBody::Surge(Surge {
                direction: Direction::Down,
                trigger: SurgeTrigger::Volume,
                pct: float,
                vol_mult: float,
                score: float,
                strength: Strength::Moderate,
                ts: Timestamp(u64::MAX),
            }),
            EventBody::Fmv(FairValue {
                value: wide,
                ts: Timestamp(u64::MAX),
                vs_market_pct: Some(float),
            }),
            EventBody::Fmv(FairValue { value: wide, ts: Timestamp(0), vs_market_pct: None }),
            EventBody::Activity(Activity {
                ts: Timestamp(u64::MAX),
                trades: [u64::MAX; 4],
                symbols_60s: u32::MAX,
                level: ActivityLevel::Extreme,
            }),
        ];
        for body in bodies {
            let text = encode(body, "ABCDEFGHIJKL");
            let value: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["ev"], body.channel().label(), "{text}");
            assert_eq!(value["seq"], 7, "{text}");
        }
    }
}
