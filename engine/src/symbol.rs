//! The symbol table: tickers interned to dense [`SymbolId`]s, with a fixed capacity.
//!
//! Interning happens where tickers arrive as text (a feed parser, an importer), outside the
//! per-trade path; the engine only ever sees ids. Ids are never reused, so per-symbol state
//! indexed by id stays valid for the life of the process.
//!
//! One thread owns the [`SymbolTable`] and interns; any thread turns ids back into names
//! through [`SymbolNames`] (from [`SymbolTable::names`]), without a lock: each slot is
//! written once, and a pipeline publishes an id only after interning it (the ring between
//! the threads orders the write before the read).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use crate::error::RejectReason;
use crate::limits::SYMBOL_LEN_MAX;
use crate::tick::SymbolId;

/// A validated ticker: 1-12 bytes of `A-Z 0-9 . -`, stored inline. Ordered by its bytes (a
/// canonical order for sets of tickers, not the alphabetical order of the text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Ticker {
    bytes: [u8; SYMBOL_LEN_MAX],
    len: u8,
}

impl Ticker {
    /// `*`, the ticker of [`SymbolId::MARKET`] (never valid from outside: `new` refuses it).
    pub const MARKET: Ticker = {
        let mut bytes = [0; SYMBOL_LEN_MAX];
        bytes[0] = b'*';
        Ticker { bytes, len: 1 }
    };

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

/// Tickers to ids and back, up to a fixed capacity (`symbols_max`); the interning side.
///
/// # Overflow
/// A new ticker beyond the capacity is refused with [`RejectReason::SymbolTableFull`] and
/// counted in [`SymbolTable::rejects`]; known tickers keep resolving.
#[derive(Debug)]
pub struct SymbolTable {
    ids: HashMap<Ticker, SymbolId>,
    names: Arc<SymbolNames>,
    rejects_bad: u64,
    rejects_full: u64,
}

/// Names by id, readable from any thread while the table's owner interns.
#[derive(Debug)]
pub struct SymbolNames {
    slots: Box<[OnceLock<Ticker>]>,
}

impl SymbolNames {
    /// The ticker of `id`, once interned.
    pub fn ticker(&self, id: SymbolId) -> Option<Ticker> {
        if id == SymbolId::MARKET {
            return Some(Ticker::MARKET);
        }
        self.slots.get(id.index())?.get().copied()
    }

    /// The ticker text of `id`, once interned.
    pub fn name(&self, id: SymbolId) -> Option<&str> {
        if id == SymbolId::MARKET {
            return Some("*");
        }
        self.slots.get(id.index())?.get().map(Ticker::as_str)
    }

    /// The most symbols the table holds (`symbols_max`).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

impl SymbolTable {
    /// An empty table for `capacity` symbols; memory for all of them is reserved now.
    pub fn new(capacity: u32) -> SymbolTable {
        let slots = (0..capacity).map(|_| OnceLock::new()).collect();
        SymbolTable {
            ids: HashMap::with_capacity(capacity as usize),
            names: Arc::new(SymbolNames { slots }),
            rejects_bad: 0,
            rejects_full: 0,
        }
    }

    /// The shared read side.
    pub fn names(&self) -> Arc<SymbolNames> {
        Arc::clone(&self.names)
    }

    /// The id of `text`; a new ticker gets the next id (the count interned), or the lowest
    /// free one if `intern_at` took the next.
    pub fn intern(&mut self, text: &str) -> Result<SymbolId, RejectReason> {
        let ticker = self.validate(text)?;
        if let Some(&id) = self.ids.get(&ticker) {
            return Ok(id);
        }
        self.insert_free(ticker)
    }

    /// Interns `text` at `wanted` if that id is free (a replay keeps the recorded ids, so that
    /// same-instant bar closes come out in the recorded order); otherwise as
    /// [`SymbolTable::intern`].
    pub fn intern_at(&mut self, text: &str, wanted: SymbolId) -> Result<SymbolId, RejectReason> {
        let ticker = self.validate(text)?;
        if let Some(&id) = self.ids.get(&ticker) {
            return Ok(id);
        }
        match self.names.slots.get(wanted.index()) {
            Some(slot) if slot.get().is_none() => {
                self.insert(wanted, ticker);
                Ok(wanted)
            }
            _ => self.insert_free(ticker),
        }
    }

    fn validate(&mut self, text: &str) -> Result<Ticker, RejectReason> {
        Ticker::new(text).inspect_err(|_| self.rejects_bad += 1)
    }

    /// The next id if free, else the lowest free one (only after `intern_at` placed ids out
    /// of order; the scan is then linear, on the cold interning path).
    fn insert_free(&mut self, ticker: Ticker) -> Result<SymbolId, RejectReason> {
        let next = self.ids.len();
        let free = match self.names.slots.get(next) {
            Some(slot) if slot.get().is_none() => Some(next),
            _ => self.names.slots.iter().position(|slot| slot.get().is_none()),
        };
        let Some(index) = free else {
            self.rejects_full += 1;
            return Err(RejectReason::SymbolTableFull);
        };
        let id = SymbolId(index as u32);
        self.insert(id, ticker);
        Ok(id)
    }

    fn insert(&mut self, id: SymbolId, ticker: Ticker) {
        let fresh = self.names.slots[id.index()].set(ticker).is_ok();
        assert!(fresh, "Invariant: a symbol slot is written once");
        self.ids.insert(ticker, id);
    }

    /// The id of `text` if it was interned.
    pub fn get(&self, text: &str) -> Option<SymbolId> {
        Ticker::new(text).ok().and_then(|t| self.ids.get(&t).copied())
    }

    /// The ticker of `id`, if assigned.
    pub fn ticker(&self, id: SymbolId) -> Option<&str> {
        self.names.name(id)
    }

    /// Symbols interned so far.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no symbol was interned yet.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The most symbols the table holds.
    pub fn capacity(&self) -> usize {
        self.names.capacity()
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

    #[test]
    fn intern_at_keeps_a_free_id_and_moves_a_taken_one() {
        let mut table = SymbolTable::new(4);
        let names = table.names();
        assert_eq!(table.intern_at("IBM", SymbolId(2)), Ok(SymbolId(2)));
        assert_eq!(table.intern_at("AAPL", SymbolId(2)), Ok(SymbolId(1)), "taken: the next id");
        assert_eq!(table.intern("MSFT"), Ok(SymbolId(0)), "the next id is taken: the lowest free");
        assert_eq!(table.intern("TSLA"), Ok(SymbolId(3)));
        assert_eq!(names.name(SymbolId(2)), Some("IBM"));
        assert_eq!(
            names.ticker(SymbolId(3)).map(|t| t.as_str().to_owned()),
            Some("TSLA".to_owned())
        );
        assert_eq!(table.intern("NVDA"), Err(RejectReason::SymbolTableFull));
    }
}
