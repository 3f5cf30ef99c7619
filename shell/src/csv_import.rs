//! `tickstock import-csv`: trades from a CSV file (`ts,symbol,price,size`) into journal
//! segments, which `tickstock replay` then plays like a recorded run.
//!
//! - `ts`: Unix time as an integer, whose unit is told by `--ts-unit` or, by default, by its
//!   number of digits (10 or fewer: seconds, 11-13: ms, 14-16: µs, 17 or more: ns, which is
//!   unambiguous for dates from 1973 to 2286), or an RFC 3339 string
//!   (`2026-11-24T14:30:00.123Z`).
//! - `symbol`: 1-12 characters of `A-Z 0-9 . -`.
//! - `price`: a positive decimal in dollars; `size`: a positive whole number of shares.
//! - A first line `ts,symbol,price,size` (any case) is taken as a header. Quoting and
//!   surrounding spaces follow RFC 4180 (the `csv` crate).
//!
//! A bad row is an error naming its line. By default the import stops at the first one and
//! removes the segments it wrote, so a journal is never half an import; with `--skip-bad`
//! bad rows are skipped, counted and listed (the first few) in the report.
//! The importer does not validate trades against the engine's rules (price jumps, reordering):
//! the replay does that, and counts what it rejects, as it would live.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tickstock_engine::{Price, Qty, SymbolId, Tick, Ticker, Timestamp, Trade};

use crate::journal::codec::{self, Record};

/// The unit of integer timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsUnit {
    /// By digit count (see the module docs).
    Auto,
    /// Seconds.
    Seconds,
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
    /// Nanoseconds.
    Nanos,
}

/// Import options.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// Journal directory to write segments into (created if needed).
    pub journal_dir: PathBuf,
    /// Integer timestamp unit.
    pub ts_unit: TsUnit,
    /// Skip and count bad rows instead of stopping.
    pub skip_bad: bool,
    /// Most distinct symbols.
    pub symbols_max: u32,
    /// Segment size limit.
    pub segment_bytes_max: u64,
}

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportReport {
    /// Trades written.
    pub imported: u64,
    /// Rows skipped (with `skip_bad`).
    pub skipped: u64,
    /// The first skipped rows' errors.
    pub skipped_examples: Vec<String>,
    /// Distinct symbols.
    pub symbols: usize,
    /// Segment files written.
    pub segments: Vec<PathBuf>,
    /// Earliest and latest trade time.
    pub ts_range: Option<(Timestamp, Timestamp)>,
}

/// Bad rows listed in the report, at most.
const SKIPPED_EXAMPLES_MAX: usize = 10;

/// Why an import failed.
#[derive(Debug)]
pub enum ImportError {
    /// Reading the CSV or writing the journal failed.
    Io(io::Error),
    /// A bad row (without `skip_bad`).
    Row {
        /// 1-based line.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Io(error) => write!(f, "{error}"),
            ImportError::Row { line, message } => write!(f, "line {line}: {message}"),
        }
    }
}

impl std::error::Error for ImportError {}

impl From<io::Error> for ImportError {
    fn from(error: io::Error) -> ImportError {
        ImportError::Io(error)
    }
}

/// Imports CSV from `input` into the journal.
pub fn import(input: impl Read, options: &ImportOptions) -> Result<ImportReport, ImportError> {
    let recovery = crate::journal::recover(&options.journal_dir)?;
    let mut out =
        SegmentOut::new(&options.journal_dir, recovery.next_index, options.segment_bytes_max);
    let result = import_rows(input, options, &mut out);
    match result {
        Ok(mut report) => {
            out.close()?;
            report.segments = out.written.clone();
            Ok(report)
        }
        Err(error) => {
            for path in &out.written {
                let _ = std::fs::remove_file(path);
            }
            Err(error)
        }
    }
}

fn import_rows(
    input: impl Read,
    options: &ImportOptions,
    out: &mut SegmentOut,
) -> Result<ImportReport, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let mut ids: HashMap<Ticker, SymbolId> = HashMap::new();
    let mut report = ImportReport::default();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => return Err(ImportError::Row { line, message: error.to_string() }),
        }
        if std::mem::take(&mut first) && record.get(0).is_some_and(|f| f.eq_ignore_ascii_case("ts"))
        {
            continue;
        }
        let row = parse_row(&record, options.ts_unit).and_then(|(ts, ticker, price, size)| {
            let next = SymbolId(ids.len() as u32);
            let id = match ids.get(&ticker) {
                Some(&id) => id,
                None if ids.len() < options.symbols_max as usize => {
                    *ids.entry(ticker).or_insert(next)
                }
                None => {
                    return Err(format!("more than symbols_max = {} symbols", options.symbols_max))
                }
            };
            Ok((ts, ticker, id, price, size))
        });
        match row {
            Ok((ts, ticker, id, price, size)) => {
                let mut trade = Trade::new(id, ts, price, size);
                trade.ts_recv = ts;
                out.trade(&trade, ticker)?;
                report.imported += 1;
                report.ts_range = Some(match report.ts_range {
                    Some((low, high)) => (low.min(ts), high.max(ts)),
                    None => (ts, ts),
                });
            }
            Err(message) if options.skip_bad => {
                report.skipped += 1;
                if report.skipped_examples.len() < SKIPPED_EXAMPLES_MAX {
                    report.skipped_examples.push(format!("line {line}: {message}"));
                }
            }
            Err(message) => return Err(ImportError::Row { line, message }),
        }
    }
    report.symbols = ids.len();
    Ok(report)
}

fn parse_row(
    record: &csv::StringRecord,
    unit: TsUnit,
) -> Result<(Timestamp, Ticker, Price, Qty), String> {
    if record.len() != 4 {
        return Err(format!("expected 4 fields (ts,symbol,price,size), found {}", record.len()));
    }
    let ts = parse_ts(&record[0], unit)?;
    let ticker = Ticker::new(&record[1]).map_err(|_| format!("bad symbol {:?}", &record[1]))?;
    let price = record[2]
        .parse::<f64>()
        .ok()
        .and_then(Price::from_f64)
        .filter(|price| price.raw() > 0)
        .ok_or_else(|| format!("bad price {:?}: need a positive decimal", &record[2]))?;
    let size = record[3]
        .parse::<u64>()
        .ok()
        .filter(|&size| size > 0)
        .ok_or_else(|| format!("bad size {:?}: need a positive whole number", &record[3]))?;
    Ok((ts, ticker, price, Qty(size)))
}

/// Parses a timestamp field.
pub fn parse_ts(field: &str, unit: TsUnit) -> Result<Timestamp, String> {
    if let Ok(value) = field.parse::<u64>() {
        let unit = match unit {
            TsUnit::Auto => match field.trim_start_matches('0').len() {
                0..=10 => TsUnit::Seconds,
                11..=13 => TsUnit::Millis,
                14..=16 => TsUnit::Micros,
                _ => TsUnit::Nanos,
            },
            given => given,
        };
        let scale: u64 = match unit {
            TsUnit::Seconds => 1_000_000_000,
            TsUnit::Millis => 1_000_000,
            TsUnit::Micros => 1_000,
            TsUnit::Nanos | TsUnit::Auto => 1,
        };
        return value
            .checked_mul(scale)
            .map(Timestamp)
            .ok_or_else(|| format!("timestamp {field} is out of range"));
    }
    let parsed = chrono::DateTime::parse_from_rfc3339(field)
        .map_err(|_| format!("bad timestamp {field:?}: need Unix time or RFC 3339"))?;
    let ns = parsed.timestamp_nanos_opt().filter(|&ns| ns >= 0);
    ns.map(|ns| Timestamp(ns as u64)).ok_or_else(|| format!("timestamp {field} is out of range"))
}

/// Segments written synchronously (the importer has no engine to keep up with).
struct SegmentOut {
    dir: PathBuf,
    index: u64,
    segment_bytes_max: u64,
    file: Option<(File, u64)>,
    named: HashSet<SymbolId>,
    buf: Vec<u8>,
    written: Vec<PathBuf>,
}

impl SegmentOut {
    fn new(dir: &Path, index: u64, segment_bytes_max: u64) -> SegmentOut {
        let (file, named, buf, written) =
            (None, HashSet::new(), Vec::with_capacity(1 << 20), Vec::new());
        SegmentOut { dir: dir.to_owned(), index, segment_bytes_max, file, named, buf, written }
    }

    fn trade(&mut self, trade: &Trade, ticker: Ticker) -> io::Result<()> {
        if self.file.is_none() {
            let path = crate::journal::segment_path(&self.dir, self.index);
            let mut file = OpenOptions::new().create_new(true).write(true).open(&path)?;
            self.written.push(path);
            file.write_all(&codec::header())?;
            self.file = Some((file, codec::HEADER_LEN as u64));
            self.index += 1;
            self.named.clear();
        }
        if self.named.insert(trade.symbol) {
            codec::encode(
                &mut self.buf,
                &Record::Symbol { id: trade.symbol, ticker: ticker.as_str() },
            );
        }
        codec::encode(&mut self.buf, &Record::Tick(Tick::Trade(*trade)));
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some((file, bytes)) = self.file.as_mut() {
            file.write_all(&self.buf)?;
            *bytes += self.buf.len() as u64;
            self.buf.clear();
            if *bytes >= self.segment_bytes_max {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> io::Result<()> {
        if let Some((mut file, _)) = self.file.take() {
            file.write_all(&self.buf)?;
            self.buf.clear();
            file.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_by_digit_count_and_rfc3339() {
        let expected = Timestamp(1_795_530_600_000_000_000);
        for field in [
            "1795530600",
            "1795530600000",
            "1795530600000000",
            "1795530600000000000",
            "2026-11-24T14:30:00Z",
        ] {
            assert_eq!(parse_ts(field, TsUnit::Auto), Ok(expected), "{field}");
        }
        assert_eq!(parse_ts("1795530600000", TsUnit::Nanos), Ok(Timestamp(1_795_530_600_000)));
        assert!(parse_ts("yesterday", TsUnit::Auto).unwrap_err().contains("yesterday"));
        assert!(parse_ts("99999999999999999999", TsUnit::Auto).is_err());
    }
}
