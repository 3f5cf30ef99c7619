//! The journal's binary format: segment header and checksummed records. Pure byte code, no
//! I/O, so it is unit-tested and fuzzed on slices.
//!
//! ```text
//! segment  := header record*
//! header   := "TSJRNL01" (8 bytes) | version u32 LE (= 1) | reserved u32 (= 0)
//! record   := len u16 LE | kind u8 | reserved u8 | crc u32 LE | payload[len]
//!             crc = CRC-32 (IEEE) of kind, reserved and payload
//! payload  := Symbol:    id u32 LE | ticker bytes (1-12)
//!           | Trade, Quote, Aggregate, Fmv: the engine's `repr(C)` Pod struct, as in memory
//!           | Gap:       records_lost u64 LE | recv u64 LE
//! ```
//!
//! Tick payloads are the structs' memory images (`bytemuck`), so journaling costs a copy, and
//! the format is little-endian: a compile-time assertion refuses big-endian targets.
//! A trade record is 8 + 64 = 72 bytes. Each segment names its symbols (a `Symbol` record
//! before the first tick of that symbol in the segment), so a segment can be read alone.

use tickstock_engine::{Aggregate, Fmv, Quote, SymbolId, Tick, Timestamp, Trade};

const _: () = assert!(cfg!(target_endian = "little"), "the journal format is little-endian");

/// The segment header's magic.
pub const MAGIC: &[u8; 8] = b"TSJRNL01";
/// Format version.
pub const VERSION: u32 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record's header.
pub const RECORD_HEADER_LEN: usize = 8;
/// Largest payload: the largest tick struct, with room to grow.
pub const PAYLOAD_LEN_MAX: usize = 256;

/// Record kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A symbol's id and ticker.
    Symbol = 1,
    /// A trade.
    Trade = 2,
    /// A quote.
    Quote = 3,
    /// An upstream aggregate.
    Aggregate = 4,
    /// A fair market value.
    Fmv = 5,
    /// Records the writer had to drop before this point.
    Gap = 6,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Symbol,
            2 => Kind::Trade,
            3 => Kind::Quote,
            4 => Kind::Aggregate,
            5 => Kind::Fmv,
            6 => Kind::Gap,
            _ => return None,
        })
    }
}

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Record<'a> {
    /// A symbol's id and ticker.
    Symbol {
        /// The id ticks of this segment use.
        id: SymbolId,
        /// The ticker.
        ticker: &'a str,
    },
    /// A tick, with its `ts_recv` (the engine clock it was handled at).
    Tick(Tick),
    /// The writer dropped `records_lost` records before this point.
    Gap {
        /// How many.
        records_lost: u64,
        /// When the gap was noticed.
        recv: Timestamp,
    },
}

/// Why bytes are not a whole, valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record needs: a torn write at the tail, or more bytes to come.
    Truncated {
        /// Bytes the record needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// The checksum does not match.
    BadChecksum,
    /// Unknown kind byte.
    UnknownKind(u8),
    /// The length does not fit the kind.
    BadLength {
        /// The record's kind byte.
        kind: u8,
        /// Its length field.
        len: usize,
    },
    /// A symbol record whose ticker is not valid.
    BadTicker,
    /// The reserved header byte is not 0: a format this reader does not know.
    Reserved(u8),
    /// A segment that does not start with the journal header.
    BadHeader,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated { needed, available } => {
                write!(f, "truncated record: needs {needed} bytes, {available} left")
            }
            DecodeError::BadChecksum => f.write_str("checksum mismatch"),
            DecodeError::UnknownKind(kind) => write!(f, "unknown record kind {kind}"),
            DecodeError::BadLength { kind, len } => write!(f, "kind {kind} with length {len}"),
            DecodeError::BadTicker => f.write_str("symbol record with an invalid ticker"),
            DecodeError::Reserved(byte) => write!(f, "reserved byte {byte}, not 0"),
            DecodeError::BadHeader => f.write_str("not a TickStock journal segment"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// The segment header.
pub fn header() -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..12].copy_from_slice(&VERSION.to_le_bytes());
    bytes
}

/// Checks a segment header.
pub fn check_header(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { needed: HEADER_LEN, available: bytes.len() });
    }
    if &bytes[..8] != MAGIC || bytes[8..12] != VERSION.to_le_bytes() || bytes[12..16] != [0; 4] {
        return Err(DecodeError::BadHeader);
    }
    Ok(())
}

/// Appends one record to `out`.
pub fn encode(out: &mut Vec<u8>, record: &Record<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER_LEN]);
    let kind = match record {
        Record::Symbol { id, ticker } => {
            out.extend_from_slice(&id.0.to_le_bytes());
            out.extend_from_slice(ticker.as_bytes());
            Kind::Symbol
        }
        Record::Tick(tick) => match tick {
            Tick::Trade(trade) => {
                out.extend_from_slice(bytemuck::bytes_of(trade));
                Kind::Trade
            }
            Tick::Quote(quote) => {
                out.extend_from_slice(bytemuck::bytes_of(quote));
                Kind::Quote
            }
            Tick::Aggregate(aggregate) => {
                out.extend_from_slice(bytemuck::bytes_of(aggregate));
                Kind::Aggregate
            }
            Tick::Fmv(fmv) => {
                out.extend_from_slice(bytemuck::bytes_of(fmv));
                Kind::Fmv
            }
        },
        Record::Gap { records_lost, recv } => {
            out.extend_from_slice(&records_lost.to_le_bytes());
            out.extend_from_slice(&recv.0.to_le_bytes());
            Kind::Gap
        }
    };
    let len = out.len() - start - RECORD_HEADER_LEN;
    debug_assert!(len <= PAYLOAD_LEN_MAX, "Invariant: payloads fit PAYLOAD_LEN_MAX");
    out[start..start + 2].copy_from_slice(&(len as u16).to_le_bytes());
    out[start + 2] = kind as u8;
    let crc = checksum(&out[start + 2..start + 4], &out[start + RECORD_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn checksum(kind_and_reserved: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(kind_and_reserved);
    hasher.update(payload);
    hasher.finalize()
}

/// Decodes the record at the start of `bytes`; returns it and its length in bytes.
pub fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    let available = bytes.len();
    if available < RECORD_HEADER_LEN {
        return Err(DecodeError::Truncated { needed: RECORD_HEADER_LEN, available });
    }
    let len = usize::from(u16::from_le_bytes([bytes[0], bytes[1]]));
    let kind_byte = bytes[2];
    let kind = Kind::from_u8(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))?;
    // A writer that sets the reserved byte means something this reader cannot know: the
    // record is refused, never read as if it were 0 (found by the `journal_scan` fuzz target).
    if bytes[3] != 0 {
        return Err(DecodeError::Reserved(bytes[3]));
    }
    let bad_length = DecodeError::BadLength { kind: kind_byte, len };
    let expected = match kind {
        Kind::Symbol if (5..=4 + 12).contains(&len) => len,
        Kind::Symbol => return Err(bad_length),
        Kind::Trade => size_of::<Trade>(),
        Kind::Quote => size_of::<Quote>(),
        Kind::Aggregate => size_of::<Aggregate>(),
        Kind::Fmv => size_of::<Fmv>(),
        Kind::Gap => 16,
    };
    if len != expected {
        return Err(bad_length);
    }
    let total = RECORD_HEADER_LEN + len;
    if available < total {
        return Err(DecodeError::Truncated { needed: total, available });
    }
    let payload = &bytes[RECORD_HEADER_LEN..total];
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if checksum(&bytes[2..4], payload) != crc {
        return Err(DecodeError::BadChecksum);
    }
    let record = match kind {
        Kind::Symbol => {
            let id = SymbolId(u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]));
            let ticker = std::str::from_utf8(&payload[4..]).map_err(|_| DecodeError::BadTicker)?;
            tickstock_engine::Ticker::new(ticker).map_err(|_| DecodeError::BadTicker)?;
            Record::Symbol { id, ticker }
        }
        Kind::Trade => Record::Tick(Tick::Trade(bytemuck::pod_read_unaligned(payload))),
        Kind::Quote => Record::Tick(Tick::Quote(bytemuck::pod_read_unaligned(payload))),
        Kind::Aggregate => Record::Tick(Tick::Aggregate(bytemuck::pod_read_unaligned(payload))),
        Kind::Fmv => Record::Tick(Tick::Fmv(bytemuck::pod_read_unaligned(payload))),
        Kind::Gap => {
            let word = |at: usize| {
                u64::from_le_bytes(payload[at..at + 8].try_into().expect("Invariant: 8 bytes"))
            };
            Record::Gap { records_lost: word(0), recv: Timestamp(word(8)) }
        }
    };
    Ok((record, total))
}

/// Scans a whole segment image: the records that are whole and valid, in order, and the
/// byte offset where the valid prefix ends (the recovery point). Stops at the first bad or
/// torn record, reporting why.
pub fn scan(bytes: &[u8], mut f: impl FnMut(Record<'_>)) -> (usize, Option<DecodeError>) {
    if let Err(error) = check_header(bytes) {
        return (0, Some(error));
    }
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        match decode(&bytes[at..]) {
            Ok((record, len)) => {
                f(record);
                at += len;
            }
            Err(error) => return (at, Some(error)),
        }
    }
    (at, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickstock_engine::{Price, Qty};

    fn sample() -> Vec<u8> {
        let mut bytes = header().to_vec();
        encode(&mut bytes, &Record::Symbol { id: SymbolId(3), ticker: "AAPL" });
        for k in 0..5u64 {
            let mut trade = Trade::new(
                SymbolId(3),
                Timestamp(1_000 + k),
                Price::from_raw(5_000_000 + k as i64),
                Qty(100),
            );
            trade.ts_recv = Timestamp(2_000 + k);
            encode(&mut bytes, &Record::Tick(Tick::Trade(trade)));
        }
        encode(&mut bytes, &Record::Gap { records_lost: 7, recv: Timestamp(9) });
        bytes
    }

    #[test]
    fn records_round_trip() {
        let bytes = sample();
        let mut records = Vec::new();
        let (end, error) = scan(&bytes, |record| records.push(format!("{record:?}")));
        assert_eq!((end, error), (bytes.len(), None));
        assert_eq!(records.len(), 7);
        assert!(records[0].contains("AAPL"));
        assert!(records[6].contains("records_lost: 7"));
    }

    #[test]
    fn every_truncation_recovers_exactly_the_whole_records() {
        let bytes = sample();
        let mut ends = vec![HEADER_LEN];
        scan(&bytes, |_| {});
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            at += decode(&bytes[at..]).unwrap().1;
            ends.push(at);
        }
        for cut in 0..=bytes.len() {
            let (end, _) = scan(&bytes[..cut], |_| {});
            let whole = ends.iter().copied().filter(|&e| e <= cut).max().unwrap_or(0);
            let expected = if cut < HEADER_LEN { 0 } else { whole };
            assert_eq!(end, expected, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample();
        let (clean, _) = scan(&bytes, |_| {});
        for at in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[at] ^= bit;
                let mut count = 0;
                let (end, error) = scan(&bad, |_| count += 1);
                assert!(error.is_some(), "flip at {at} went unnoticed");
                assert!(
                    end <= clean && end <= at.max(HEADER_LEN),
                    "flip at {at}: kept up to {end}"
                );
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_and_accepted_records_round_trip() {
        let mut rng = fastrand::Rng::with_seed(42);
        let valid = sample();
        for round in 0..20_000 {
            let mut bytes = if round % 2 == 0 { valid.clone() } else { header().to_vec() };
            let flips = rng.usize(1..8);
            for _ in 0..flips {
                let at = rng.usize(..bytes.len() + 64);
                if at < bytes.len() {
                    bytes[at] = rng.u8(..);
                } else {
                    bytes.push(rng.u8(..));
                }
            }
            bytes.truncate(rng.usize(..=bytes.len()));
            let mut at = HEADER_LEN;
            let (end, _) = scan(&bytes, |record| {
                let mut again = Vec::new();
                encode(&mut again, &record);
                assert_eq!(&bytes[at..at + again.len()], &again[..]);
                at += again.len();
            });
            assert!(end <= bytes.len());
        }
    }
}
