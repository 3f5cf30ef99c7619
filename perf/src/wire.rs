//! The bytes both ends of the load generator agree on: prices as the server prints them,
//! the per-trade checksum, and a scanner that reads the fields it needs out of the server's
//! event arrays without building a JSON tree (a client reads millions of events a second).

use std::fmt::Write as _;

/// Millionths of a dollar per dollar (the engine's `PRICE_SCALE`).
const SCALE: i64 = 1_000_000;

/// Writes a price (millionths) as the shortest exact decimal, as the server encodes it.
pub fn write_price(out: &mut String, raw: i64) {
    if raw < 0 {
        out.push('-');
    }
    let abs = raw.unsigned_abs();
    let (whole, mut frac) = (abs / SCALE as u64, abs % SCALE as u64);
    let _ = write!(out, "{whole}");
    if frac != 0 {
        let mut digits = 6;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        let _ = write!(out, ".{frac:0digits$}");
    }
}

/// Reads a decimal price into millionths; `None` if it is not one (or has over 6 decimals).
pub fn parse_price(text: &[u8]) -> Option<i64> {
    let (negative, text) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let (whole, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &text[..0]),
    };
    if whole.is_empty() || frac.len() > 6 || (text.len() > whole.len() && frac.is_empty()) {
        return None;
    }
    let mut value = digits(whole)?.checked_mul(SCALE as u64)?;
    let mut scale = SCALE as u64;
    for &b in frac {
        scale /= 10;
        value = value.checked_add(u64::from(digit(b)?) * scale)?;
    }
    let value = i64::try_from(value).ok()?;
    Some(if negative { -value } else { value })
}

fn digit(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b - b'0')
}

fn digits(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0u64, |n, &b| n.checked_mul(10)?.checked_add(u64::from(digit(b)?)))
}

/// splitmix64's finalizer: a cheap, well-mixed 64-bit hash.
pub fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// One trade's contribution to a step's checksum: id, price and size must all arrive intact.
pub fn trade_mix(k: u64, price: i64, size: u64) -> u64 {
    mix(k ^ mix(price as u64 ^ mix(size)))
}

/// One event's contribution to the cross-client checksum of a `seq` range.
pub fn event_mix(seq: u64, ev: &[u8]) -> u64 {
    let kind = ev.iter().fold(0u64, |h, &b| (h << 8) | u64::from(b));
    mix(seq ^ mix(kind))
}

/// What a client needs of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A `T` event: `seq`, and the trade's id, price and size.
    Trade {
        /// `seq`.
        seq: u64,
        /// `i`.
        k: u64,
        /// `p`, millionths.
        price: i64,
        /// `s`.
        size: u64,
    },
    /// Any other data event.
    Other {
        /// `ev`.
        ev: &'a [u8],
        /// `seq`.
        seq: u64,
    },
    /// A `status` object.
    Status {
        /// `status`.
        status: &'a [u8],
        /// `dropped` (of `conflated`), else 0.
        dropped: u64,
    },
}

/// Why a message could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Calls `f` for each event of one server message (a JSON array of event objects).
pub fn for_each_event<'a>(text: &'a [u8], mut f: impl FnMut(Event<'a>)) -> Result<(), Malformed> {
    const OPEN: &[u8] = b"{\"ev\":\"";
    if !text.starts_with(b"[") {
        return Err(Malformed(format!("not an array: {}", excerpt(text))));
    }
    let mut at = 0;
    while let Some(found) = find(&text[at..], OPEN) {
        let object = &text[at + found + OPEN.len()..];
        let end = find(object, OPEN).unwrap_or(object.len());
        let object = &object[..end];
        at += found + OPEN.len() + end;
        let ev = &object[..find(object, b"\"").ok_or_else(|| Malformed(excerpt(object)))?];
        let field = |key: &[u8]| value(object, key);
        if ev == b"status" {
            let status = field(b",\"status\":\"").unwrap_or_default();
            let status = &status[..find(status, b"\"").unwrap_or(status.len())];
            let dropped = field(b",\"dropped\":").and_then(number).unwrap_or(0);
            f(Event::Status { status, dropped });
            continue;
        }
        let bad = || Malformed(format!("`{}` event without a readable field: {}", excerpt(ev), excerpt(object)));
        let seq = field(b",\"seq\":").and_then(number).ok_or_else(bad)?;
        if ev == b"T" {
            let k = field(b",\"i\":\"").and_then(number).ok_or_else(bad)?;
            let price = field(b",\"p\":").and_then(|v| parse_price(token(v))).ok_or_else(bad)?;
            let size = field(b",\"s\":").and_then(number).ok_or_else(bad)?;
            f(Event::Trade { seq, k, price, size });
        } else {
            f(Event::Other { ev, seq });
        }
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The bytes after `key` in `object`.
fn value<'a>(object: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    find(object, key).map(|at| &object[at + key.len()..])
}

/// A number token: up to the next `,`, `}`, `]` or `"`.
fn token(value: &[u8]) -> &[u8] {
    &value[..value.iter().position(|b| matches!(b, b',' | b'}' | b']' | b'"')).unwrap_or(value.len())]
}

fn number(value: &[u8]) -> Option<u64> {
    digits(token(value))
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_round_trip_as_the_server_prints_them() {
        for raw in [1, 10, 1_000_000, 187_250_000, 123_456_789, 50_000_000_000, -2_500_000] {
            let mut text = String::new();
            write_price(&mut text, raw);
            assert_eq!(parse_price(text.as_bytes()), Some(raw), "{text}");
        }
        let mut text = String::new();
        write_price(&mut text, 187_250_000);
        assert_eq!(text, "187.25");
        for bad in ["", "1.", ".5", "1.2345678", "12a", "99999999999999999999"] {
            assert_eq!(parse_price(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn scans_trades_others_and_statuses() {
        let text = br#"[{"ev":"T","sym":"AAPL","seq":7,"p":187.25,"s":100,"t":1,"x":4,"i":"42","q":42},{"ev":"A","sym":"AAPL","seq":8,"o":1,"s":1000,"e":2000},{"ev":"status","status":"conflated","dropped":3}]"#;
        let mut seen = Vec::new();
        for_each_event(text, |e| seen.push(e)).expect("reads");
        assert_eq!(
            seen,
            vec![
                Event::Trade { seq: 7, k: 42, price: 187_250_000, size: 100 },
                Event::Other { ev: b"A", seq: 8 },
                Event::Status { status: b"conflated", dropped: 3 },
            ]
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(for_each_event(b"{\"ev\":\"T\"}", |_| {}).is_err());
        assert!(for_each_event(br#"[{"ev":"T","sym":"X","seq":1,"p":1}]"#, |_| {}).is_err());
        assert!(for_each_event(br#"[{"ev":"A","sym":"X"}]"#, |_| {}).is_err());
        assert!(for_each_event(b"[]", |_| panic!("no events")).is_ok());
    }
}
