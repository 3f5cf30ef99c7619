//! Upstream messages straight into engine inputs: the Polygon/Massive stocks WebSocket format
//! (`T`, `Q`, `A`, `AM`, `FMV`, `status`), which a TickStock server's `T.*` channel also
//! speaks, so one TickStock can feed another.
//!
//! No JSON tree is built. A frame's array is walked one element at a time, each element kept
//! as a borrowed slice (`serde_json::value::RawValue`), then deserialized into a flat struct
//! of optional fields with borrowed strings; a bad element costs only itself. Field meanings
//! follow Polygon: `t`, `s`, `e` are Unix milliseconds, except that `s` of a trade is its
//! size; `c` of a trade is its condition list, of a bar its close.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use tickstock_engine::limits::CONDITIONS_MAX;
use tickstock_engine::{Aggregate, Fmv, Price, Qty, Quote, SymbolId, Timestamp, Trade};

/// One parsed element. Ticks carry `SymbolId(0)` until the caller interns `sym`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Parsed<'a> {
    /// `T`.
    Trade {
        /// Ticker.
        sym: &'a str,
        /// The trade.
        trade: Trade,
    },
    /// `Q`.
    Quote {
        /// Ticker.
        sym: &'a str,
        /// The quote.
        quote: Quote,
    },
    /// `A` (per second) or `AM` (per minute).
    Aggregate {
        /// Ticker.
        sym: &'a str,
        /// The bar.
        aggregate: Aggregate,
        /// `AM` rather than `A`.
        minute: bool,
    },
    /// `FMV`.
    Fmv {
        /// Ticker.
        sym: &'a str,
        /// The value.
        fmv: Fmv,
    },
    /// `status`.
    Status {
        /// `status` (`connected`, `auth_success`, `auth_failed`, `max_connections`, ...).
        status: &'a str,
    },
    /// An element that is not a usable message; counted by kind.
    Garbage(Garbage),
}

/// Why an element was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Garbage {
    /// Not valid JSON, or not an array of objects.
    InvalidJson,
    /// A field of the wrong type (a string price, a negative size).
    WrongType,
    /// An `ev` this parser does not know.
    UnknownEv,
    /// A required field is missing.
    MissingField,
    /// A value outside what the engine can represent (a price beyond `i64` micro-dollars).
    BadValue,
}

impl Garbage {
    /// Kinds, in counter order.
    pub const ALL: [Garbage; 5] = [
        Garbage::InvalidJson,
        Garbage::WrongType,
        Garbage::UnknownEv,
        Garbage::MissingField,
        Garbage::BadValue,
    ];

    /// Label in metrics and reports.
    pub const fn label(self) -> &'static str {
        match self {
            Garbage::InvalidJson => "invalid_json",
            Garbage::WrongType => "wrong_type",
            Garbage::UnknownEv => "unknown_ev",
            Garbage::MissingField => "missing_field",
            Garbage::BadValue => "bad_value",
        }
    }

    /// Position in [`Garbage::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Walks one frame (an array of messages, or a single object) and calls `f` per element.
/// Returns the number of elements seen. Invalid JSON ends the walk with one
/// `Garbage(InvalidJson)` after the elements before it.
pub fn parse_frame<'a>(bytes: &'a [u8], f: &mut dyn FnMut(Parsed<'a>)) -> usize {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => {
            f(Parsed::Garbage(Garbage::InvalidJson));
            return 1;
        }
    };
    let mut count = 0;
    if text.trim_start().starts_with('{') {
        f(parse_element(text));
        return 1;
    }
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let result = deserializer.deserialize_seq(FrameVisitor { f: &mut *f, count: &mut count });
    let trailing = result.is_ok() && deserializer.end().is_err();
    if result.is_err() || trailing {
        f(Parsed::Garbage(Garbage::InvalidJson));
        count += 1;
    }
    count
}

struct FrameVisitor<'f, 'a> {
    f: &'f mut dyn FnMut(Parsed<'a>),
    count: &'f mut usize,
}

impl<'de> Visitor<'de> for FrameVisitor<'_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            *self.count += 1;
            (self.f)(parse_element(raw.get()));
        }
        Ok(())
    }
}

/// Every field any message may carry; unknown fields are ignored. Strings are borrowed from
/// the frame: one with JSON escapes in it fails as `WrongType`, which no ticker, `ev` or
/// status needs.
#[derive(Deserialize)]
struct Raw<'a> {
    ev: &'a str,
    #[serde(default)]
    sym: Option<&'a str>,
    #[serde(default)]
    status: Option<&'a str>,
    p: Option<f64>,
    s: Option<u64>,
    t: Option<u64>,
    x: Option<u8>,
    i: Option<TradeId>,
    c: Option<CField>,
    q: Option<u64>,
    bp: Option<f64>,
    bs: Option<u64>,
    ap: Option<f64>,
    #[serde(rename = "as")]
    ask_size: Option<u64>,
    bx: Option<u8>,
    ax: Option<u8>,
    o: Option<f64>,
    h: Option<f64>,
    l: Option<f64>,
    v: Option<u64>,
    vw: Option<f64>,
    op: Option<f64>,
    z: Option<u64>,
    e: Option<u64>,
    fmv: Option<f64>,
}

/// `i`: Polygon sends a string, some peers a number. Non-numeric ids are hashed (FNV-1a).
struct TradeId(u64);

impl<'de> Deserialize<'de> for TradeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TradeId, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = TradeId;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a trade id")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<TradeId, E> {
                Ok(TradeId(value))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<TradeId, E> {
                Ok(TradeId(trade_id(value)))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// A trade id as the engine keeps it: the number, or a hash (FNV-1a) of a non-numeric id.
pub fn trade_id(text: &str) -> u64 {
    text.parse().unwrap_or_else(|_| fnv1a(text.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// `c`: a trade's conditions (an array) or a bar's close (a number).
enum CField {
    Close(f64),
    Conditions { len: u8, codes: [u8; CONDITIONS_MAX] },
}

impl<'de> Deserialize<'de> for CField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CField, D::Error> {
        struct CVisitor;
        impl<'de> Visitor<'de> for CVisitor {
            type Value = CField;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a condition list or a close price")
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<CField, E> {
                Ok(CField::Close(value))
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<CField, E> {
                Ok(CField::Close(value as f64))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<CField, E> {
                Ok(CField::Close(value as f64))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CField, A::Error> {
                let mut codes = [0u8; CONDITIONS_MAX];
                let mut len = 0;
                // Conditions beyond CONDITIONS_MAX are dropped: the engine keeps ten.
                while let Some(code) = seq.next_element::<u8>()? {
                    if len < CONDITIONS_MAX {
                        codes[len] = code;
                        len += 1;
                    }
                }
                Ok(CField::Conditions { len: len as u8, codes })
            }
        }
        deserializer.deserialize_any(CVisitor)
    }
}

const NANOS_PER_MS: u64 = 1_000_000;

fn ms(value: u64) -> Option<Timestamp> {
    value.checked_mul(NANOS_PER_MS).map(Timestamp)
}

/// Parses one element.
pub fn parse_element(text: &str) -> Parsed<'_> {
    let raw: Raw<'_> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(error) if error.is_data() => return Parsed::Garbage(Garbage::WrongType),
        Err(_) => return Parsed::Garbage(Garbage::InvalidJson),
    };
    let result = match raw.ev {
        "T" => trade(&raw),
        "Q" => quote(&raw),
        "A" => aggregate(&raw, false),
        "AM" => aggregate(&raw, true),
        "FMV" => fmv(&raw),
        "status" => raw.status.map(|status| Parsed::Status { status }).ok_or(Garbage::MissingField),
        _ => Err(Garbage::UnknownEv),
    };
    result.unwrap_or_else(Parsed::Garbage)
}

fn sym<'a>(raw: &Raw<'a>) -> Result<&'a str, Garbage> {
    raw.sym.ok_or(Garbage::MissingField)
}

fn price(value: Option<f64>) -> Result<Price, Garbage> {
    Price::from_f64(value.ok_or(Garbage::MissingField)?).ok_or(Garbage::BadValue)
}

fn time(value: Option<u64>) -> Result<Timestamp, Garbage> {
    ms(value.ok_or(Garbage::MissingField)?).ok_or(Garbage::BadValue)
}

fn trade<'a>(raw: &Raw<'a>) -> Result<Parsed<'a>, Garbage> {
    let sym = sym(raw)?;
    let mut trade = Trade::new(
        SymbolId(0),
        time(raw.t)?,
        price(raw.p)?,
        Qty(raw.s.ok_or(Garbage::MissingField)?),
    );
    trade.exchange = raw.x.unwrap_or(0);
    trade.trade_id = raw.i.as_ref().map_or(0, |id| id.0);
    trade.upstream_seq = raw.q.unwrap_or(0);
    match raw.c {
        Some(CField::Conditions { len, codes }) => {
            trade.conditions_len = len;
            trade.conditions = codes;
        }
        Some(CField::Close(_)) => return Err(Garbage::WrongType),
        None => {}
    }
    Ok(Parsed::Trade { sym, trade })
}

fn quote<'a>(raw: &Raw<'a>) -> Result<Parsed<'a>, Garbage> {
    let sym = sym(raw)?;
    let quote = Quote {
        ts_event: time(raw.t)?,
        ts_recv: Timestamp(0),
        bid_price: price(raw.bp)?,
        bid_size: Qty(raw.bs.ok_or(Garbage::MissingField)?),
        ask_price: price(raw.ap)?,
        ask_size: Qty(raw.ask_size.ok_or(Garbage::MissingField)?),
        symbol: SymbolId(0),
        bid_exchange: raw.bx.unwrap_or(0),
        ask_exchange: raw.ax.unwrap_or(0),
        reserved: [0; 2],
    };
    Ok(Parsed::Quote { sym, quote })
}

fn aggregate<'a>(raw: &Raw<'a>, minute: bool) -> Result<Parsed<'a>, Garbage> {
    let sym = sym(raw)?;
    let close = match raw.c {
        Some(CField::Close(close)) => price(Some(close))?,
        Some(CField::Conditions { .. }) => return Err(Garbage::WrongType),
        None => return Err(Garbage::MissingField),
    };
    let volume = raw.v.ok_or(Garbage::MissingField)?;
    let aggregate = Aggregate {
        ts_recv: Timestamp(0),
        start: time(raw.s)?,
        end: time(raw.e)?,
        open: price(raw.o)?,
        high: price(raw.h)?,
        low: price(raw.l)?,
        close,
        vwap: raw.vw.map_or(Ok(close), |vw| price(Some(vw)))?,
        volume: Qty(volume),
        official_open: raw.op.map_or(Ok(Price::ZERO), |op| price(Some(op)))?,
        avg_size: Qty(raw.z.unwrap_or(0)),
        symbol: SymbolId(0),
        reserved: 0,
    };
    Ok(Parsed::Aggregate { sym, aggregate, minute })
}

fn fmv<'a>(raw: &Raw<'a>) -> Result<Parsed<'a>, Garbage> {
    let sym = sym(raw)?;
    let fmv = Fmv {
        ts_event: time(raw.t)?,
        ts_recv: Timestamp(0),
        value: price(raw.fmv)?,
        symbol: SymbolId(0),
        reserved: 0,
    };
    Ok(Parsed::Fmv { sym, fmv })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<Parsed<'_>> {
        let mut out = Vec::new();
        parse_frame(text.as_bytes(), &mut |parsed| out.push(parsed));
        out
    }

    #[test]
    fn polygon_messages_parse_into_engine_inputs() {
        let frame = r#"[{"ev":"T","sym":"MSFT","x":4,"i":"12345","z":3,"p":114.125,"s":100,"c":[0,12],"t":1536036818784,"q":3681328},
            {"ev":"Q","sym":"MSFT","bx":4,"bp":114.125,"bs":100,"ax":7,"ap":114.128,"as":160,"c":0,"t":1536036818784,"z":3},
            {"ev":"A","sym":"SPCE","v":200,"av":8642007,"op":25.66,"vw":25.3981,"o":25.39,"c":25.39,"h":25.39,"l":25.39,"a":25.3714,"z":50,"s":1610144868000,"e":1610144869000},
            {"ev":"AM","sym":"SPCE","v":2000,"o":25.39,"c":25.5,"h":25.6,"l":25.3,"s":1610144820000,"e":1610144880000},
            {"ev":"FMV","fmv":189.22,"sym":"AAPL","t":1678220098130},
            {"ev":"status","status":"auth_success","message":"authenticated"}]"#;
        let parsed = all(frame);
        assert_eq!(parsed.len(), 6);
        let Parsed::Trade { sym, trade } = parsed[0] else { panic!("{:?}", parsed[0]) };
        assert_eq!(sym, "MSFT");
        assert_eq!(trade.price, Price::from_raw(114_125_000));
        assert_eq!(
            (trade.size, trade.exchange, trade.trade_id, trade.upstream_seq),
            (Qty(100), 4, 12_345, 3_681_328)
        );
        assert_eq!(&trade.conditions[..usize::from(trade.conditions_len)], &[0, 12]);
        assert_eq!(trade.ts_event, Timestamp(1_536_036_818_784_000_000));
        let Parsed::Quote { quote, .. } = parsed[1] else { panic!() };
        assert_eq!((quote.ask_size, quote.ask_exchange), (Qty(160), 7));
        let Parsed::Aggregate { aggregate, minute: false, .. } = parsed[2] else { panic!() };
        assert_eq!(aggregate.official_open, Price::from_raw(25_660_000));
        assert_eq!(aggregate.end, Timestamp(1_610_144_869_000_000_000));
        assert!(matches!(parsed[3], Parsed::Aggregate { minute: true, .. }));
        assert!(matches!(parsed[4], Parsed::Fmv { sym: "AAPL", .. }));
        assert_eq!(parsed[5], Parsed::Status { status: "auth_success" });
    }

    #[test]
    fn a_tickstock_trade_frame_parses_too() {
        let frame = r#"[{"ev":"T","sym":"BRK.B","seq":42,"p":412.5,"s":10,"t":1795530600000,"x":0,"i":"7"}]"#;
        let parsed = all(frame);
        assert!(matches!(parsed[0], Parsed::Trade { sym: "BRK.B", trade } if trade.trade_id == 7));
    }

    #[test]
    fn garbage_is_classified_and_costs_only_its_element() {
        let frame = r#"[{"ev":"T","sym":"A","p":"1.0","s":1,"t":1},{"ev":"XX"},{"ev":"T","sym":"A","s":1,"t":1},
            {"ev":"T","sym":"A","p":1e300,"s":1,"t":1},{"ev":"T","sym":"A","p":1.5,"s":-3,"t":1},42,{"ev":"T","sym":"OK","p":1.5,"s":3,"t":1}]"#;
        let kinds: Vec<_> = all(frame)
            .into_iter()
            .map(|p| match p {
                Parsed::Garbage(g) => g.label(),
                Parsed::Trade { sym, .. } => sym,
                _ => "other",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "wrong_type",
                "unknown_ev",
                "missing_field",
                "bad_value",
                "wrong_type",
                "wrong_type",
                "OK"
            ]
        );
        for bad in ["", "[", "not json", "[{\"ev\":\"T\"", "[1,2] trailing", "\u{0}"] {
            let parsed = all(bad);
            assert_eq!(parsed.last(), Some(&Parsed::Garbage(Garbage::InvalidJson)), "{bad:?}");
        }
        assert_eq!(all("[]").len(), 0);
        let invalid_utf8 = [b'[', 0xff, b']'];
        let mut seen = Vec::new();
        parse_frame(&invalid_utf8, &mut |p| seen.push(p));
        assert_eq!(seen, [Parsed::Garbage(Garbage::InvalidJson)]);
    }

    #[test]
    fn mutated_frames_never_panic_and_count_what_they_hand_out() {
        let seeds = [
            r#"[{"ev":"T","sym":"MSFT","x":4,"i":"12345","p":114.125,"s":100,"c":[0,12],"t":1536036818784,"q":3}]"#,
            r#"[{"ev":"A","sym":"SPCE","v":200,"op":25.66,"vw":25.3981,"o":25.39,"c":25.39,"h":25.39,"l":25.39,"z":50,"s":1610144868000,"e":1610144869000}]"#,
            r#"[{"ev":"status","status":"connected","message":"Connected Successfully"}]"#,
        ];
        const PIECES: &[u8] = b"{}[],:\"-0e9";
        let mut rng = fastrand::Rng::with_seed(9);
        for round in 0..30_000 {
            let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
            for _ in 0..rng.usize(1..6) {
                let at = rng.usize(..bytes.len());
                match rng.u8(..3) {
                    0 => bytes[at] = rng.u8(..),
                    1 => bytes.insert(at, PIECES[rng.usize(..PIECES.len())]),
                    _ => {
                        bytes.remove(at);
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
            let mut seen = 0;
            let count = parse_frame(&bytes, &mut |_| seen += 1);
            assert_eq!(count, seen);
        }
    }
}
