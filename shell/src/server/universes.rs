//! Named universes (PROTOCOL.md section 2, step 3): `CHANNEL.@NAME` subscribes to every
//! symbol of the universe `NAME`, listed by the operator in `server.universes_file`, one per
//! line:
//!
//! ```text
//! # name: symbols
//! MEGACAP: AAPL, MSFT, NVDA
//! BANKS: JPM,BAC,WFC,C
//! ```
//!
//! A name is 1-64 characters of `A-Z a-z 0-9 _ - .`; symbols are tickers, separated by
//! commas. `#` starts a comment; blank lines are ignored. On SIGHUP the file is read again
//! ([`UniverseFile::reload`]) and every live subscription to a universe follows the new list;
//! a file that cannot be used is refused whole and the old universes stay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tickstock_engine::Ticker;

use crate::config::ServerSettings;

/// Longest universe name, in bytes.
pub const UNIVERSE_NAME_BYTES_MAX: usize = 64;

/// The universes of one reading of the file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Universes {
    by_name: BTreeMap<String, BTreeSet<Ticker>>,
}

impl Universes {
    /// Parses the file's text; the first bad line is the error, with its number.
    pub fn parse(text: &str) -> Result<Universes, String> {
        let mut by_name = BTreeMap::new();
        for (number, line) in text.lines().enumerate().map(|(i, line)| (i + 1, line)) {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (name, symbols) = line
                .split_once(':')
                .ok_or_else(|| format!("line {number}: want NAME: SYM,SYM,..."))?;
            let name = name.trim();
            if !valid_name(name) {
                return Err(format!(
                    "line {number}: universe name {name:?}: want 1-{UNIVERSE_NAME_BYTES_MAX} of \
                     A-Z a-z 0-9 _ - ."
                ));
            }
            let mut tickers = BTreeSet::new();
            for symbol in symbols.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let ticker = Ticker::new(symbol)
                    .map_err(|_| format!("line {number}: {symbol:?} is not a ticker"))?;
                tickers.insert(ticker);
            }
            if by_name.insert(name.to_owned(), tickers).is_some() {
                return Err(format!("line {number}: universe {name} is listed twice"));
            }
        }
        Ok(Universes { by_name })
    }

    /// The symbols of universe `name`.
    pub fn get(&self, name: &str) -> Option<&BTreeSet<Ticker>> {
        self.by_name.get(name)
    }

    /// How many universes there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// `GET /v1/universes`: `{"universes":[{"name":"...","symbols":["..."]}]}`, by name.
    pub fn to_json(&self) -> String {
        let list: Vec<serde_json::Value> = self
            .by_name
            .iter()
            .map(|(name, symbols)| {
                let symbols: Vec<&str> = symbols.iter().map(Ticker::as_str).collect();
                serde_json::json!({ "name": name, "symbols": symbols })
            })
            .collect();
        serde_json::json!({ "universes": list }).to_string()
    }
}

fn valid_name(name: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-.".contains(&b);
    !name.is_empty() && name.len() <= UNIVERSE_NAME_BYTES_MAX && name.bytes().all(allowed)
}

/// The universes now, swapped whole on reload (readers never block).
#[derive(Debug)]
pub struct UniverseFile {
    current: ArcSwap<Universes>,
    path: Option<PathBuf>,
}

impl UniverseFile {
    /// Reads `server.universes_file` (none: no universes).
    pub fn load(settings: &ServerSettings) -> Result<UniverseFile, String> {
        let path = settings.universes_file.clone();
        let universes = read(path.as_ref())?;
        Ok(UniverseFile { current: ArcSwap::from_pointee(universes), path })
    }

    /// The universes now.
    pub fn current(&self) -> Arc<Universes> {
        self.current.load_full()
    }

    /// Reads the file again and swaps it in; a file that cannot be used changes nothing.
    /// Returns how many universes there are now.
    pub fn reload(&self) -> Result<usize, String> {
        let universes = read(self.path.as_ref())?;
        let count = universes.len();
        self.current.store(Arc::new(universes));
        Ok(count)
    }
}

fn read(path: Option<&PathBuf>) -> Result<Universes, String> {
    let Some(path) = path else { return Ok(Universes::default()) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("server.universes_file {}: {e}", path.display()))?;
    Universes::parse(&text).map_err(|e| format!("server.universes_file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_lists_names_and_tickers_and_every_bad_line_is_named() {
        let text = "# ours\nMEGA: AAPL, MSFT ,NVDA  # the big ones\n\nbanks.us: JPM,BAC,\nEMPTY:\n";
        let universes = Universes::parse(text).unwrap();
        assert_eq!(universes.len(), 3);
        let mega: Vec<&str> = universes.get("MEGA").unwrap().iter().map(Ticker::as_str).collect();
        assert_eq!(mega, ["AAPL", "MSFT", "NVDA"]);
        assert_eq!(universes.get("banks.us").unwrap().len(), 2);
        assert!(universes.get("EMPTY").unwrap().is_empty());
        assert!(universes.get("mega").is_none(), "names are case-sensitive");
        assert_eq!(
            universes.to_json(),
            r#"{"universes":[{"name":"EMPTY","symbols":[]},{"name":"MEGA","symbols":["AAPL","MSFT","NVDA"]},{"name":"banks.us","symbols":["BAC","JPM"]}]}"#
        );
        for (bad, why) in [
            ("MEGA AAPL", "line 1: want NAME"),
            ("ok: A\nbad name: A", "line 2: universe name"),
            ("X: aapl", "\"aapl\" is not a ticker"),
            ("X: A\nX: B", "line 2: universe X is listed twice"),
            (": A", "universe name \"\""),
        ] {
            let error = Universes::parse(bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }

    #[test]
    fn a_reload_swaps_the_file_in_or_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("universes.txt");
        std::fs::write(&path, "A: AAPL\n").unwrap();
        let settings =
            ServerSettings { universes_file: Some(path.clone()), ..ServerSettings::default() };
        let file = UniverseFile::load(&settings).unwrap();
        let before = file.current();
        std::fs::write(&path, "A: AAPL,MSFT\nB: IBM\n").unwrap();
        assert_eq!(file.reload(), Ok(2));
        assert_eq!(file.current().get("A").unwrap().len(), 2);
        assert!(!Arc::ptr_eq(&before, &file.current()));
        std::fs::write(&path, "A AAPL\n").unwrap();
        assert!(file.reload().unwrap_err().contains("line 1"));
        assert_eq!(file.current().len(), 2, "the old universes stay");
        let missing = ServerSettings {
            universes_file: Some(dir.path().join("none.txt")),
            ..ServerSettings::default()
        };
        assert!(UniverseFile::load(&missing).unwrap_err().contains("none.txt"));
    }
}
