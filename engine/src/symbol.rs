//! The symbol table: tickers interned to dense [`SymbolId`]s, with a fixed capacity.
//!
//! Interning happens where tickers arrive as text (a feed parser, an importer), outside the
//! per-trade path; the engine only ever sees ids. Ids are never reused, so per-symbol state
//! indexed by id stays valid for the life of the process.

use std::collections::HashMap;

use crate::error::RejectReason;
use crate::limits::SYMBOL_LEN_MAX;
use crate::tick::SymbolId;

/// A validated ticker: 1-12 bytes of `A-Z 0-9 . -`, stored inline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Ticker {
    bytes: [u8; SYMBOL_LEN_MAX],
    len: u8,
}

impl Ticker {
    /// Validates `text` as a ticker.
    pub fn new(text: &str) -> Result<Ticker, RejectReason> {
        let raw = text.as_bytes();
        let valid =
            |b: &u8| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-';
        if raw.is_empty() || raw.len() > SYMBOL_LEN_MAX || !raw.iter().all(valid) {
            return Err(RejectReason::BadSymbol);
        }
        let mut bytes = [0; SYMBOL_LEN_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(Ticker { bytes, len: raw.len() as u8 })
    }

    /// The ticker text.
    pub fn as_str(&self) -> &str {
        let len = usize::from(self.len).min(SYMBOL_LEN_MAX);
        // Only ASCII bytes are ever stored (checked in `new`), so this cannot fail.
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("")
    }
}

/// Tickers to ids and back, up to a fixed capacity (`symbols_max`).
///
/// # Overflow
/// A new ticker beyond the capacity is refused with [`RejectReason::SymbolTableFull`] and
/// counted in [`SymbolTable::rejects`]; known tickers keep resolving.
#[derive(Debug)]
pub struct SymbolTable {
    ids: HashMap<Ticker, SymbolId>,
    tickers: Vec<Ticker>,
    capacity: usize,
    rejects_bad: u64,
    rejects_full: u64,
}

impl SymbolTable {
    /// An empty table for `capacity` symbols; memory for all of them is reserved now.
    pub fn new(capacity: u32) -> SymbolTable {
        let capacity = capacity as usize;
        SymbolTable {
            ids: HashMap::with_capacity(capacity),
            tickers: Vec::with_capacity(capacity),
            capacity,
            rejects_bad: 0,
            rejects_full: 0,
        }
    }

    /// The id of `text`, assigning the next free one if it is new.
    pub fn intern(&mut self, text: &str) -> Result<SymbolId, RejectReason> {
        let ticker = Ticker::new(text).inspect_err(|_| self.rejects_bad += 1)?;
        if let Some(&id) = self.ids.get(&ticker) {
            return Ok(id);
        }
        if self.tickers.len() >= self.capacity {
            self.rejects_full += 1;
            return Err(RejectReason::SymbolTableFull);
        }
        let id = SymbolId(self.tickers.len() as u32);
        self.tickers.push(ticker);
        self.ids.insert(ticker, id);
        Ok(id)
    }

    /// The id of `text` if it was interned.
    pub fn get(&self, text: &str) -> Option<SymbolId> {
        Ticker::new(text).ok().and_then(|t| self.ids.get(&t).copied())
    }

    /// The ticker of `id`, if assigned.
    pub fn ticker(&self, id: SymbolId) -> Option<&str> {
        self.tickers.get(id.index()).map(Ticker::as_str)
    }

    /// Symbols interned so far.
    pub fn len(&self) -> usize {
        self.tickers.len()
    }

    /// Whether no symbol was interned yet.
    pub fn is_empty(&self) -> bool {
        self.tickers.is_empty()
    }

    /// The most symbols the table holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Refusals so far: `(bad ticker, table full)`.
    pub fn rejects(&self) -> (u64, u64) {
        (self.rejects_bad, self.rejects_full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickers_follow_the_alphabet_and_length_rule() {
        for good in ["A", "BRK.B", "BF-B", "ABCDEFGHIJKL", "X1"] {
            assert!(Ticker::new(good).is_ok(), "{good}");
        }
        for bad in ["", "aapl", "ABCDEFGHIJKLM", "A B", "É", "A/B"] {
            assert_eq!(Ticker::new(bad), Err(RejectReason::BadSymbol), "{bad}");
        }
    }

    #[test]
    fn symbol_table_at_capacity_refuses_new_and_keeps_old() {
        let mut table = SymbolTable::new(2);
        assert_eq!(table.intern("AAPL"), Ok(SymbolId(0)));
        assert_eq!(table.intern("MSFT"), Ok(SymbolId(1)));
        assert_eq!(table.intern("TSLA"), Err(RejectReason::SymbolTableFull));
        assert_eq!(table.intern("AAPL"), Ok(SymbolId(0)));
        assert_eq!(table.intern("bad"), Err(RejectReason::BadSymbol));
        assert_eq!(table.rejects(), (1, 1));
        assert_eq!(table.ticker(SymbolId(1)), Some("MSFT"));
        assert_eq!(table.ticker(SymbolId(2)), None);
        assert_eq!(table.len(), 2);
    }
}
