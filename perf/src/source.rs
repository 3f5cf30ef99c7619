//! Where the played trades come from: the synthetic market, a journal, or a CSV file.
//!
//! Only each trade's symbol, price, size and exchange are taken from the source; the player
//! stamps times and trade ids from its own open-loop schedule, so a recorded day can be
//! played at any rate. A recorded source that runs out starts again from its first trade.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use tickstock_engine::Tick;
use tickstock_shell::config::{JournalSettings, SyntheticSettings};
use tickstock_shell::csv_import::{self, ImportOptions, TsUnit};
use tickstock_shell::feed::synthetic::Market;
use tickstock_shell::journal::codec::Record;
use tickstock_shell::journal::reader;

/// One trade to play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trade {
    /// Index into [`Source::tickers`].
    pub symbol: u32,
    /// Millionths of a dollar (the engine's `Price` units).
    pub price: i64,
    /// Shares.
    pub size: u64,
    /// Exchange id.
    pub exchange: u8,
}

/// Which source, as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// The synthetic market with this many symbols and this seed.
    Synthetic {
        /// Symbols.
        symbols: u32,
        /// Seed.
        seed: u64,
    },
    /// A TickStock journal directory.
    Journal(PathBuf),
    /// A CSV file of `ts,symbol,price,size` (as `tickstock import-csv` takes).
    Csv(PathBuf),
}

impl std::str::FromStr for SourceSpec {
    type Err = String;

    /// `synthetic`, `synthetic:SYMBOLS`, `journal:DIR` or `csv:FILE`.
    fn from_str(text: &str) -> Result<SourceSpec, String> {
        let (kind, rest) = text.split_once(':').unwrap_or((text, ""));
        match kind {
            "synthetic" => {
                let symbols = if rest.is_empty() {
                    SyntheticSettings::default().symbols
                } else {
                    rest.parse().map_err(|_| format!("synthetic:{rest}: not a symbol count"))?
                };
                Ok(SourceSpec::Synthetic { symbols, seed: SyntheticSettings::default().seed })
            }
            "journal" if !rest.is_empty() => Ok(SourceSpec::Journal(rest.into())),
            "csv" if !rest.is_empty() => Ok(SourceSpec::Csv(rest.into())),
            _ => Err(format!(
                "source `{text}`: expected synthetic, synthetic:SYMBOLS, journal:DIR or csv:FILE"
            )),
        }
    }
}

enum Kind {
    Market(Box<Market>),
    Recorded { trades: Vec<Trade>, at: usize },
}

/// A stream of trades that never ends.
pub struct Source {
    tickers: Vec<String>,
    kind: Kind,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("tickers", &self.tickers.len()).finish_non_exhaustive()
    }
}

impl Source {
    /// Opens a source. A journal or CSV file is read whole into memory (24 bytes a trade).
    pub fn open(spec: &SourceSpec) -> Result<Source, String> {
        match spec {
            SourceSpec::Synthetic { symbols, seed } => {
                if *symbols == 0 {
                    return Err("the synthetic market needs at least one symbol".to_owned());
                }
                let settings =
                    SyntheticSettings { symbols: *symbols, seed: *seed, ..Default::default() };
                let market = Market::new(&settings);
                Ok(Source {
                    tickers: market.tickers().to_vec(),
                    kind: Kind::Market(Box::new(market)),
                })
            }
            SourceSpec::Journal(dir) => Source::from_journal(dir),
            SourceSpec::Csv(file) => {
                let scratch = std::env::temp_dir()
                    .join(format!("tickstock-loadgen-csv-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&scratch);
                let input = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
                let options = ImportOptions {
                    journal_dir: scratch.clone(),
                    ts_unit: TsUnit::Auto,
                    skip_bad: false,
                    symbols_max: u32::MAX,
                    segment_bytes_max: JournalSettings::default().segment_bytes_max,
                    columns: None,
                    append: false,
                    round: false,
                };
                let imported = csv_import::import(input, &options)
                    .map_err(|e| format!("{}: {e}", file.display()));
                let source = imported.and_then(|_| Source::from_journal(&scratch));
                let _ = std::fs::remove_dir_all(&scratch);
                source
            }
        }
    }

    fn from_journal(dir: &Path) -> Result<Source, String> {
        let mut tickers = Vec::new();
        let mut index_of: HashMap<String, u32> = HashMap::new();
        // Journal symbol ids are per segment; map each to this source's ticker index.
        let mut by_id: HashMap<u32, u32> = HashMap::new();
        let mut trades = Vec::new();
        let mut unmapped = 0u64;
        reader::for_each(dir, |_, record| {
            match record {
                Record::Symbol { id, ticker } => {
                    let next = tickers.len() as u32;
                    let index = *index_of.entry(ticker.to_owned()).or_insert_with(|| {
                        tickers.push(ticker.to_owned());
                        next
                    });
                    by_id.insert(id.0, index);
                }
                Record::Tick(Tick::Trade(trade)) => match by_id.get(&trade.symbol.0) {
                    Some(&symbol) => trades.push(Trade {
                        symbol,
                        price: trade.price.raw(),
                        size: trade.size.0,
                        exchange: trade.exchange,
                    }),
                    None => unmapped += 1,
                },
                Record::Tick(_) | Record::Gap { .. } => {}
            }
            true
        })
        .map_err(|e| format!("{}: {e}", dir.display()))?;
        if trades.is_empty() {
            return Err(format!("{}: no trades to play", dir.display()));
        }
        if unmapped > 0 {
            return Err(format!(
                "{}: {unmapped} trades name a symbol id with no symbol record",
                dir.display()
            ));
        }
        Ok(Source { tickers, kind: Kind::Recorded { trades, at: 0 } })
    }

    /// The tickers, by [`Trade::symbol`].
    pub fn tickers(&self) -> &[String] {
        &self.tickers
    }

    /// The next trade.
    pub fn next_trade(&mut self) -> Trade {
        match &mut self.kind {
            Kind::Market(market) => {
                let trade = market.next_trade();
                Trade {
                    symbol: trade.symbol.0,
                    price: trade.price.raw(),
                    size: trade.size.0,
                    exchange: trade.exchange,
                }
            }
            Kind::Recorded { trades, at } => {
                let trade = trades[*at];
                *at = (*at + 1) % trades.len();
                trade
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_refuses_nonsense() {
        assert!(matches!("synthetic:50".parse(), Ok(SourceSpec::Synthetic { symbols: 50, .. })));
        assert_eq!("journal:/x".parse(), Ok(SourceSpec::Journal("/x".into())));
        assert!("journal:".parse::<SourceSpec>().is_err());
        assert!("kafka:x".parse::<SourceSpec>().is_err());
        assert!("synthetic:many".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn csv_source_plays_its_trades_in_order_and_wraps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.csv");
        std::fs::write(
            &file,
            "ts,symbol,price,size\n1700000000000,AAPL,187.25,100\n1700000000001,MSFT,401.5,7\n",
        )
        .expect("writes");
        let mut source = Source::open(&SourceSpec::Csv(file)).expect("opens");
        let played: Vec<Trade> = (0..3).map(|_| source.next_trade()).collect();
        assert_eq!(source.tickers()[played[0].symbol as usize], "AAPL");
        assert_eq!((played[0].price, played[0].size), (187_250_000, 100));
        assert_eq!(source.tickers()[played[1].symbol as usize], "MSFT");
        assert_eq!(played[2], played[0]);
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_panic() {
        let error = Source::open(&SourceSpec::Csv("/nonexistent/t.csv".into())).unwrap_err();
        assert!(error.contains("/nonexistent/t.csv"), "{error}");
    }
}
