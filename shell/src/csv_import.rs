//! `tickstock import-csv`: trades from a CSV file into journal segments, which `tickstock
//! replay` then plays like a recorded run.
//!
//! Columns: `ts`, `symbol`, `price`, `size`, and optionally `exchange` (a number, `x`), `id`
//! (the trade id, `i`: a number, or any text, kept as its hash) and `conditions` (condition
//! codes, `c`: numbers separated by spaces, `;`, `|` or commas inside quotes). A first row
//! of column names (any case, any order) says which is which; a file without one is
//! `ts,symbol,price,size` unless `--columns` names its columns.
//!
//! - `ts`: Unix time as an integer, whose unit is told by `--ts-unit` or, by default, by its
//!   number of digits (10 or fewer: seconds, 11-13: ms, 14-16: µs, 17 or more: ns, which is
//!   unambiguous for dates from 1973 to 2286), or an RFC 3339 string
//!   (`2026-11-24T14:30:00.123Z`).
//! - `symbol`: 1-12 characters of `A-Z 0-9 . -` (upper case, as the feeds send them).
//! - `price`: a positive decimal in dollars, at most 6 decimals (the engine's 1e-6); a finer
//!   one is an error unless `--round` rounds it. `size`: a positive whole number of shares.
//! - Quoting and surrounding spaces follow RFC 4180 (the `csv` crate).
//!
//! A journal directory that already holds segments is refused unless `--append` says to
//! add to it: importing the same file twice would otherwise double its trades.
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

use tickstock_engine::limits::{CONDITIONS_MAX, PRICE_SCALE};
use tickstock_engine::{Price, Qty, SymbolId, Tick, Ticker, Timestamp, Trade};

use crate::journal::codec::{self, Record};

/// A CSV column the importer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    /// Trade time.
    Ts,
    /// Ticker.
    Symbol,
    /// Price in dollars.
    Price,
    /// Shares.
    Size,
    /// Exchange id.
    Exchange,
    /// Trade id.
    Id,
    /// Condition codes.
    Conditions,
}

impl Column {
    /// Every column, by its name.
    pub const ALL: [(&'static str, Column); 7] = [
        ("ts", Column::Ts),
        ("symbol", Column::Symbol),
        ("price", Column::Price),
        ("size", Column::Size),
        ("exchange", Column::Exchange),
        ("id", Column::Id),
        ("conditions", Column::Conditions),
    ];

    /// The column called `name` (any case).
    pub fn named(name: &str) -> Option<Column> {
        Column::ALL.iter().find(|(n, _)| n.eq_ignore_ascii_case(name.trim())).map(|&(_, c)| c)
    }

    /// Reads a list of names (`ts,symbol,price,size,exchange`): every name known, none
    /// twice, the four required ones present.
    pub fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<Column>, String> {
        let mut columns = Vec::new();
        for name in names {
            let column = Column::named(name).ok_or_else(|| {
                format!(
                    "unknown column {name:?}: the columns are ts, symbol, price, size and optionally exchange, id, conditions"
                )
            })?;
            if columns.contains(&column) {
                return Err(format!("column {name:?} given twice"));
            }
            columns.push(column);
        }
        for (name, required) in &Column::ALL[..4] {
            if !columns.contains(required) {
                return Err(format!("no {name} column"));
            }
        }
        Ok(columns)
    }
}

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
    /// The columns of a file without a header row (`None`: a header, if the first row is
    /// column names, else `ts,symbol,price,size`).
    pub columns: Option<Vec<Column>>,
    /// Add to a journal that already has segments.
    pub append: bool,
    /// Round prices finer than the engine's 1e-6 instead of refusing them.
    pub round: bool,
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
    /// The journal directory has segments and `append` was not asked for.
    NotEmpty(PathBuf, usize),
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
            ImportError::NotEmpty(dir, segments) => write!(
                f,
                "{} already holds {segments} journal segment(s): importing would add to them (give --append to), or use an empty directory",
                dir.display()
            ),
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
    if recovery.segments > 0 && !options.append {
        return Err(ImportError::NotEmpty(options.journal_dir.clone(), recovery.segments));
    }
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
    let mut columns =
        options.columns.clone().unwrap_or_else(|| Column::ALL[..4].iter().map(|c| c.1).collect());
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(error) => return Err(ImportError::Row { line, message: error.to_string() }),
        }
        // A first row of names is the header (unless `--columns` said there is none).
        if std::mem::take(&mut first)
            && options.columns.is_none()
            && record.iter().any(|field| Column::named(field).is_some())
        {
            columns = Column::list(record.iter()).map_err(|message| ImportError::Row {
                line,
                message: format!("header: {message}"),
            })?;
            continue;
        }
        let row = parse_row(&record, &columns, options).and_then(|(mut trade, ticker)| {
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
            trade.symbol = id;
            Ok((trade, ticker))
        });
        match row {
            Ok((trade, ticker)) => {
                let ts = trade.ts_event;
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

/// One row as a trade (its symbol id left for the caller) and its ticker.
fn parse_row(
    record: &csv::StringRecord,
    columns: &[Column],
    options: &ImportOptions,
) -> Result<(Trade, Ticker), String> {
    if record.len() != columns.len() {
        let names: Vec<&str> = columns.iter().map(|c| column_name(*c)).collect();
        return Err(format!(
            "expected {} fields ({}), found {}",
            columns.len(),
            names.join(","),
            record.len()
        ));
    }
    let mut trade = Trade::default();
    let mut ticker = None;
    for (field, column) in record.iter().zip(columns) {
        match column {
            Column::Ts => {
                trade.ts_event = parse_ts(field, options.ts_unit)?;
                trade.ts_recv = trade.ts_event;
            }
            Column::Symbol => ticker = Some(parse_symbol(field)?),
            Column::Price => trade.price = parse_price(field, options.round)?,
            Column::Size => {
                let size = field.parse::<u64>().ok().filter(|&size| size > 0);
                let size = size
                    .ok_or_else(|| format!("bad size {field:?}: need a positive whole number"))?;
                trade.size = Qty(size);
            }
            Column::Exchange => {
                trade.exchange = field
                    .parse()
                    .map_err(|_| format!("bad exchange {field:?}: need a number from 0 to 255"))?;
            }
            Column::Id => trade.trade_id = crate::feed::upstream::parse::trade_id(field),
            Column::Conditions => {
                let codes: Vec<&str> =
                    field.split([' ', ';', '|', ',']).filter(|c| !c.is_empty()).collect();
                if codes.len() > CONDITIONS_MAX {
                    return Err(format!(
                        "{} conditions in {field:?}: at most {CONDITIONS_MAX}",
                        codes.len()
                    ));
                }
                for (slot, code) in trade.conditions.iter_mut().zip(&codes) {
                    *slot = code.parse().map_err(|_| {
                        format!("bad condition {code:?}: need numbers from 0 to 255")
                    })?;
                }
                trade.conditions_len = codes.len() as u8;
            }
        }
    }
    let ticker = ticker.ok_or("no symbol")?;
    Ok((trade, ticker))
}

fn column_name(column: Column) -> &'static str {
    Column::ALL.iter().find(|(_, c)| *c == column).map_or("?", |(name, _)| name)
}

fn parse_symbol(field: &str) -> Result<Ticker, String> {
    Ticker::new(field).map_err(|_| {
        if field.bytes().any(|b| b.is_ascii_lowercase())
            && Ticker::new(&field.to_ascii_uppercase()).is_ok()
        {
            format!(
                "bad symbol {field:?}: symbols are upper case ({:?})",
                field.to_ascii_uppercase()
            )
        } else {
            format!("bad symbol {field:?}: need 1-12 characters of A-Z 0-9 . -")
        }
    })
}

/// A positive decimal in dollars; more than 6 decimals is an error unless `round`.
fn parse_price(field: &str, round: bool) -> Result<Price, String> {
    let bad = || format!("bad price {field:?}: need a positive decimal");
    let value = field.parse::<f64>().map_err(|_| bad())?;
    let price = Price::from_f64(value).filter(|price| price.raw() > 0).ok_or_else(bad)?;
    let decimals = field.split_once('.').map_or(0, |(_, frac)| frac.trim_end_matches('0').len());
    let places = PRICE_SCALE.ilog10() as usize;
    if decimals > places && !round {
        return Err(format!(
            "price {field:?} has {decimals} decimals, finer than the engine's {places}: give --round to round it to {}",
            price.to_f64()
        ));
    }
    Ok(price)
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

    fn options(columns: Option<&str>, round: bool) -> ImportOptions {
        ImportOptions {
            journal_dir: PathBuf::new(),
            ts_unit: TsUnit::Auto,
            skip_bad: false,
            symbols_max: 100,
            segment_bytes_max: 1 << 20,
            columns: columns.map(|c| Column::list(c.split(',')).unwrap()),
            append: false,
            round,
        }
    }

    fn row(fields: &[&str]) -> csv::StringRecord {
        csv::StringRecord::from(fields.to_vec())
    }

    #[test]
    fn columns_by_name_in_any_order_with_exchange_id_and_conditions() {
        let o = options(Some("symbol,size,conditions,price,id,ts,exchange"), false);
        let columns = o.columns.clone().unwrap();
        let fields = ["AAPL", "100", "12 37", "187.25", "T-9", "1795530600", "4"];
        let (trade, ticker) = parse_row(&row(&fields), &columns, &o).unwrap();
        assert_eq!(ticker.as_str(), "AAPL");
        assert_eq!((trade.size, trade.exchange), (Qty(100), 4));
        assert_eq!(trade.price, Price::from_raw(187_250_000));
        assert_eq!(&trade.conditions[..trade.conditions_len as usize], &[12, 37]);
        assert_eq!(trade.trade_id, crate::feed::upstream::parse::trade_id("T-9"));
        assert_eq!(trade.ts_event, Timestamp(1_795_530_600_000_000_000));
        let error = Column::list("ts,symbol,price,volume".split(',')).unwrap_err();
        assert!(error.contains("volume"), "{error}");
        assert!(Column::list("ts,symbol,price".split(',')).unwrap_err().contains("size"));
    }

    #[test]
    fn fine_prices_and_lower_case_symbols_are_named() {
        let o = options(None, false);
        let columns: Vec<Column> = Column::ALL[..4].iter().map(|c| c.1).collect();
        let fine = row(&["1795530600", "AAPL", "1.1234567", "1"]);
        let error = parse_row(&fine, &columns, &o).unwrap_err();
        assert!(error.contains("--round") && error.contains("7 decimals"), "{error}");
        let (trade, _) = parse_row(&fine, &columns, &options(None, true)).unwrap();
        assert_eq!(trade.price, Price::from_raw(1_123_457));
        let zeros = row(&["1795530600", "AAPL", "1.1000000", "1"]);
        assert!(parse_row(&zeros, &columns, &o).is_ok(), "trailing zeros are not finer");
        let lower = row(&["1795530600", "aapl", "1", "1"]);
        let error = parse_row(&lower, &columns, &o).unwrap_err();
        assert!(error.contains("upper case") && error.contains("AAPL"), "{error}");
    }

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
