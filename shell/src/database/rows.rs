//! What travels the sink's ring, and how it becomes rows.
//!
//! **Records.** `json_len u32 | seq u64 | emitted_ms u64 | channel u8 | json`, little-endian:
//! the event as it was sent, with its `seq`, its channel and when the emitter handed it on
//! (for the sink's lag). The ring is the sink's only input, so no CRC: nothing but this
//! process writes it.
//!
//! **Rows.** The sink parses each event's JSON (its own output, PROTOCOL.md section 3) into
//! a [`BarRow`] or an [`EventRow`] and copies a batch of them in binary with `COPY`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{Json, ToSql, Type};
use postgres::Transaction;
use serde::Deserialize;
use serde_json::value::RawValue;
use tickstock_engine::Channel;

/// Record bytes before the JSON.
pub const HEAD: usize = 4 + 8 + 8 + 1;

/// Appends one record to `out`.
pub fn encode(out: &mut Vec<u8>, seq: u64, emitted_ms: u64, channel: Channel, json: &[u8]) {
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&emitted_ms.to_le_bytes());
    out.push(channel.index() as u8);
    out.extend_from_slice(json);
}

/// One record read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// The event's `seq`.
    pub seq: u64,
    /// When the emitter handed it on, Unix ms.
    pub emitted_ms: u64,
    /// Its channel.
    pub channel: Channel,
    /// Its JSON object, as sent.
    pub json: &'a [u8],
}

/// The record at the start of `bytes` and its length, or `None` when `bytes` holds less
/// than a whole one.
pub fn decode(bytes: &[u8]) -> Option<(Record<'_>, usize)> {
    let head = bytes.get(..HEAD)?;
    let json_len = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let json = bytes.get(HEAD..HEAD + json_len)?;
    let seq = u64::from_le_bytes(head[4..12].try_into().ok()?);
    let emitted_ms = u64::from_le_bytes(head[12..20].try_into().ok()?);
    let channel = Channel::ALL.get(usize::from(head[20])).copied()?;
    Some((Record { seq, emitted_ms, channel, json }, HEAD + json_len))
}

/// A row of `bars`.
#[derive(Clone, Debug, PartialEq)]
pub struct BarRow {
    seq: i64,
    symbol: String,
    frequency: &'static str,
    start: SystemTime,
    end: SystemTime,
    o: f64,
    h: f64,
    l: f64,
    c: f64,
    v: i64,
    vw: f64,
    n: i64,
    day_volume: i64,
    day_open: f64,
    day_vwap: f64,
    avg_size: i64,
}

/// A row of `events`.
#[derive(Clone, Debug)]
pub struct EventRow {
    seq: i64,
    kind: &'static str,
    symbol: String,
    t: SystemTime,
    price: Option<f64>,
    direction: Option<String>,
    strength: Option<String>,
    score: Option<f64>,
    /// The event as sent (`jsonb`).
    body: Json<Box<RawValue>>,
}

/// A bar's JSON (`A`, `AM`).
#[derive(Deserialize)]
struct BarJson<'a> {
    #[serde(borrow)]
    sym: &'a str,
    o: f64,
    h: f64,
    l: f64,
    c: f64,
    v: u64,
    vw: f64,
    #[serde(default)]
    n: u64,
    av: u64,
    op: f64,
    a: f64,
    z: u64,
    s: u64,
    e: u64,
}

/// The fields of an event's JSON that have columns.
#[derive(Deserialize)]
struct EventJson<'a> {
    #[serde(borrow)]
    sym: &'a str,
    t: u64,
    p: Option<f64>,
    fmv: Option<f64>,
    #[serde(borrow)]
    kind: Option<&'a str>,
    #[serde(borrow)]
    dir: Option<&'a str>,
    #[serde(borrow)]
    strength: Option<&'a str>,
    score: Option<f64>,
}

/// A batch of rows for one transaction.
#[derive(Debug, Default)]
pub struct Rows {
    /// For `bars`.
    pub bars: Vec<BarRow>,
    /// For `events`.
    pub events: Vec<EventRow>,
    /// The lowest `seq` held.
    pub first_seq: u64,
    /// The highest.
    pub last_seq: u64,
    /// When the oldest was emitted, Unix ms.
    pub oldest_emitted_ms: u64,
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Rows {
    /// Rows held.
    pub fn len(&self) -> usize {
        self.bars.len() + self.events.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.bars.clear();
        self.events.clear();
    }

    /// Adds `record`'s row. An event whose JSON is not what the emitter writes (which would
    /// be a defect here, not bad input) is refused with the reason.
    pub fn push(&mut self, record: &Record<'_>) -> Result<(), String> {
        if self.is_empty() {
            self.first_seq = record.seq;
            self.oldest_emitted_ms = record.emitted_ms;
        }
        let bad = |e: serde_json::Error| format!("event seq {}: {e}", record.seq);
        let seq = signed(record.seq);
        match record.channel {
            Channel::A | Channel::Am => {
                let bar: BarJson<'_> = serde_json::from_slice(record.json).map_err(bad)?;
                self.bars.push(BarRow {
                    seq,
                    symbol: bar.sym.to_owned(),
                    frequency: if record.channel == Channel::A { "second" } else { "minute" },
                    start: time(bar.s),
                    end: time(bar.e),
                    o: bar.o,
                    h: bar.h,
                    l: bar.l,
                    c: bar.c,
                    v: signed(bar.v),
                    vw: bar.vw,
                    n: signed(bar.n),
                    day_volume: signed(bar.av),
                    day_open: bar.op,
                    day_vwap: bar.a,
                    avg_size: signed(bar.z),
                });
            }
            channel => {
                let event: EventJson<'_> = serde_json::from_slice(record.json).map_err(bad)?;
                let body = serde_json::from_slice::<&RawValue>(record.json).map_err(bad)?;
                // HL says which extreme in `kind`; TR and SV say `dir`.
                let direction = event.dir.or(event.kind).map(str::to_owned);
                self.events.push(EventRow {
                    seq,
                    kind: channel.label(),
                    symbol: event.sym.to_owned(),
                    t: time(event.t),
                    price: event.p.or(event.fmv),
                    direction,
                    strength: event.strength.map(str::to_owned),
                    score: event.score,
                    body: Json(body.to_owned()),
                });
            }
        }
        self.last_seq = record.seq;
        Ok(())
    }

    /// Copies the batch into the staging tables and on into `bars` and `events`, skipping
    /// `seq`s already there; returns the rows inserted (the rest were there already). The
    /// caller commits.
    pub fn write(&self, tx: &mut Transaction<'_>) -> Result<u64, postgres::Error> {
        use Type as T;
        let mut inserted = 0;
        if !self.bars.is_empty() {
            let columns = "seq, symbol, frequency, start, \"end\", o, h, l, c, v, vw, n, \
                           day_volume, day_open, day_vwap, avg_size";
            let types = [
                T::INT8,
                T::TEXT,
                T::TEXT,
                T::TIMESTAMPTZ,
                T::TIMESTAMPTZ,
                T::FLOAT8,
                T::FLOAT8,
                T::FLOAT8,
                T::FLOAT8,
                T::INT8,
                T::FLOAT8,
                T::INT8,
                T::INT8,
                T::FLOAT8,
                T::FLOAT8,
                T::INT8,
            ];
            let rows = self.bars.iter().map(|b| -> [&(dyn ToSql + Sync); 16] {
                [
                    &b.seq,
                    &b.symbol,
                    &b.frequency,
                    &b.start,
                    &b.end,
                    &b.o,
                    &b.h,
                    &b.l,
                    &b.c,
                    &b.v,
                    &b.vw,
                    &b.n,
                    &b.day_volume,
                    &b.day_open,
                    &b.day_vwap,
                    &b.avg_size,
                ]
            });
            inserted += stage(tx, "bars", columns, &types, rows)?;
        }
        if !self.events.is_empty() {
            let columns = "seq, kind, symbol, t, price, direction, strength, score, body";
            let types = [
                T::INT8,
                T::TEXT,
                T::TEXT,
                T::TIMESTAMPTZ,
                T::FLOAT8,
                T::TEXT,
                T::TEXT,
                T::FLOAT8,
                T::JSONB,
            ];
            let rows = self.events.iter().map(|e| -> [&(dyn ToSql + Sync); 9] {
                [
                    &e.seq,
                    &e.kind,
                    &e.symbol,
                    &e.t,
                    &e.price,
                    &e.direction,
                    &e.strength,
                    &e.score,
                    &e.body,
                ]
            });
            inserted += stage(tx, "events", columns, &types, rows)?;
        }
        Ok(inserted)
    }
}

/// `rows` copied in binary into `{table}_stage`, then moved into `table` but for the `seq`s
/// it has; the rows inserted.
fn stage<'a, const N: usize>(
    tx: &mut Transaction<'_>,
    table: &str,
    columns: &str,
    types: &[Type; N],
    rows: impl Iterator<Item = [&'a (dyn ToSql + Sync); N]>,
) -> Result<u64, postgres::Error> {
    let sink = tx.copy_in(&format!("COPY {table}_stage ({columns}) FROM STDIN (FORMAT binary)"))?;
    let mut writer = BinaryCopyInWriter::new(sink, types);
    for row in rows {
        writer.write(&row)?;
    }
    writer.finish()?;
    tx.execute(
        &format!("INSERT INTO {table} SELECT * FROM {table}_stage ON CONFLICT (seq) DO NOTHING"),
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_a_short_one_waits_for_more() {
        let json = br#"{"ev":"AM","sym":"AAPL","seq":7}"#;
        let mut out = Vec::new();
        encode(&mut out, 7, 1_700, Channel::Am, json);
        encode(&mut out, 8, 1_701, Channel::Hl, b"{}");
        let (first, len) = decode(&out).expect("whole");
        assert_eq!(
            first,
            Record { seq: 7, emitted_ms: 1_700, channel: Channel::Am, json: &json[..] }
        );
        let (second, rest) = decode(&out[len..]).expect("whole");
        assert_eq!((second.seq, second.channel, rest), (8, Channel::Hl, HEAD + 2));
        assert_eq!(decode(&out[..len - 1]), None);
    }

    #[test]
    fn bars_and_events_become_rows_with_their_fields() {
        let mut rows = Rows::default();
        let bar = br#"{"ev":"AM","sym":"AAPL","seq":10,"o":1.5,"h":2,"l":1,"c":1.25,"v":300,"vw":1.4,"av":900,"op":1.1,"a":1.3,"z":100,"n":3,"s":60000,"e":120000}"#;
        let high = br#"{"ev":"HL","sym":"AAPL","seq":11,"kind":"high","p":2,"t":61000,"session_high":2,"session_low":1,"count":4,"pct":1.5,"v":100}"#;
        rows.push(&Record { seq: 10, emitted_ms: 5, channel: Channel::Am, json: bar }).unwrap();
        rows.push(&Record { seq: 11, emitted_ms: 6, channel: Channel::Hl, json: high }).unwrap();
        assert_eq!(
            (rows.len(), rows.first_seq, rows.last_seq, rows.oldest_emitted_ms),
            (2, 10, 11, 5)
        );
        let b = &rows.bars[0];
        assert_eq!((b.frequency, b.v, b.n, b.start, b.c), ("minute", 300, 3, time(60_000), 1.25));
        let e = &rows.events[0];
        assert_eq!(
            (e.kind, e.direction.as_deref(), e.price, e.t),
            ("HL", Some("high"), Some(2.0), time(61_000))
        );
        assert_eq!(e.body.0.get(), std::str::from_utf8(high).unwrap());
        let broken = Record { seq: 12, emitted_ms: 7, channel: Channel::Tr, json: b"{\"sym\":1}" };
        assert!(rows.push(&broken).unwrap_err().contains("seq 12"));
    }
}
