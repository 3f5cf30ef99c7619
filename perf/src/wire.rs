//! The bytes both ends of the load generator agree on: prices read back as the server
//! prints them (`tickstock_engine::encode::write_price`), the per-trade checksum, and a scanner that reads the fields it needs out of the server's
//! event arrays without building a JSON tree (a client reads millions of events a second).

use tickstock_engine::limits::PRICE_SCALE as SCALE;

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
///
/// One pass: each object's `"key":value` pairs are walked with `memchr` jumps, strings and
/// arrays skipped whole, so a brace or comma inside a string cannot split an object.
pub fn for_each_event<'a>(text: &'a [u8], mut f: impl FnMut(Event<'a>)) -> Result<(), Malformed> {
    let malformed =
        |at: &[u8]| Malformed(format!("not an array of event objects near: {}", excerpt(at)));
    let mut rest = match text.split_first() {
        Some((b'[', rest)) => rest,
        _ => return Err(malformed(text)),
    };
    loop {
        match rest.split_first() {
            Some((b']', _)) => return Ok(()),
            Some((b',', tail)) => rest = tail,
            Some((b'{', tail)) => {
                let (object, tail) = walk_object(tail).ok_or_else(|| malformed(rest))?;
                rest = tail;
                f(object.event().ok_or_else(|| malformed(object.raw))?);
            }
            _ => return Err(malformed(rest)),
        }
    }
}

/// The fields of one object the load generator reads.
#[derive(Default)]
struct Fields<'a> {
    raw: &'a [u8],
    ev: Option<&'a [u8]>,
    seq: Option<&'a [u8]>,
    i: Option<&'a [u8]>,
    p: Option<&'a [u8]>,
    s: Option<&'a [u8]>,
    status: Option<&'a [u8]>,
    dropped: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// Whether a data event has every field read (`status` objects are walked whole).
    fn complete(&self) -> bool {
        match self.ev {
            Some(b"\"status\"") | None => false,
            Some(b"\"T\"") => {
                self.seq.is_some() && self.i.is_some() && self.p.is_some() && self.s.is_some()
            }
            Some(_) => self.seq.is_some(),
        }
    }

    fn event(&self) -> Option<Event<'a>> {
        let ev = unquote(self.ev?)?;
        if ev == b"status" {
            let status = self.status.and_then(unquote).unwrap_or_default();
            let dropped = self.dropped.and_then(digits).unwrap_or(0);
            return Some(Event::Status { status, dropped });
        }
        let seq = digits(self.seq?)?;
        if ev == b"T" {
            let k = digits(unquote(self.i?)?)?;
            let price = parse_price(self.p?)?;
            let size = digits(self.s?)?;
            Some(Event::Trade { seq, k, price, size })
        } else {
            Some(Event::Other { ev, seq })
        }
    }
}

fn unquote(value: &[u8]) -> Option<&[u8]> {
    value.strip_prefix(b"\"")?.strip_suffix(b"\"")
}

/// Walks `"key":value,...}` (after the `{`); returns the fields and what follows the `}`.
fn walk_object(text: &[u8]) -> Option<(Fields<'_>, &[u8])> {
    let mut fields = Fields::default();
    let mut at = 0;
    loop {
        match text.get(at)? {
            b'}' => {
                fields.raw = &text[..at];
                return Some((fields, &text[at + 1..]));
            }
            b',' => at += 1,
            b'"' => {
                let key_end = at + 1 + memchr::memchr(b'"', &text[at + 1..])?;
                let key = &text[at + 1..key_end];
                if text.get(key_end + 1) != Some(&b':') {
                    return None;
                }
                let start = key_end + 2;
                let end = match text.get(start)? {
                    b'"' => string_end(text, start + 1)? + 1,
                    b'[' => start + memchr::memchr(b']', &text[start..])? + 1,
                    _ => start + memchr::memchr2(b',', b'}', &text[start..])?,
                };
                let value = &text[start..end];
                match key {
                    b"ev" => fields.ev = Some(value),
                    b"seq" => fields.seq = Some(value),
                    b"i" => fields.i = Some(value),
                    b"p" => fields.p = Some(value),
                    b"s" => fields.s = Some(value),
                    b"status" => fields.status = Some(value),
                    b"dropped" => fields.dropped = Some(value),
                    _ => {}
                }
                at = end;
                if fields.complete() {
                    // A data event's strings (tickers, labels, trade ids) hold no braces:
                    // the rest of the object can be skipped in one jump.
                    let close = at + memchr::memchr(b'}', &text[at..])?;
                    fields.raw = &text[..close];
                    return Some((fields, &text[close + 1..]));
                }
            }
            _ => return None,
        }
    }
}

/// The index of the closing quote of a string whose body starts at `from`.
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', &text[from..])?;
        if text[at] == b'"' {
            return Some(at);
        }
        from = at + 2;
    }
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickstock_engine::encode::write_price;
    use tickstock_engine::Price;

    #[test]
    fn prices_round_trip_as_the_server_prints_them() {
        for raw in [1, 10, 1_000_000, 187_250_000, 123_456_789, 50_000_000_000, -2_500_000] {
            let mut text = Vec::new();
            write_price(&mut text, Price::from_raw(raw));
            assert_eq!(parse_price(&text), Some(raw), "{}", String::from_utf8_lossy(&text));
        }
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
