//! The symbol names shared by the pipeline's threads.
//!
//! The feed thread interns tickers ([`SymbolWriter`], one owner); the engine sees only ids;
//! the emitter and the journal writer turn ids back into names ([`Symbols::name`]), lock-free:
//! each slot is written once, before the first tick carrying its id enters a ring, and the
//! ring's release/acquire hand-over makes the name visible to whoever pops that tick.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use tickstock_engine::{RejectReason, SymbolId, Ticker};

/// Names by id, readable from any thread.
#[derive(Debug)]
pub struct Symbols {
    names: Box<[OnceLock<Ticker>]>,
}

impl Symbols {
    /// The name of `id`, once interned.
    pub fn name(&self, id: SymbolId) -> Option<&str> {
        self.names.get(id.index())?.get().map(Ticker::as_str)
    }

    /// The ticker of `id`, once interned.
    pub fn ticker(&self, id: SymbolId) -> Option<Ticker> {
        self.names.get(id.index())?.get().copied()
    }

    /// Capacity (`symbols_max`).
    pub fn capacity(&self) -> usize {
        self.names.len()
    }
}

/// The interning side: owned by the one thread that turns tickers into ids.
#[derive(Debug)]
pub struct SymbolWriter {
    shared: Arc<Symbols>,
    ids: HashMap<Ticker, SymbolId>,
}

impl SymbolWriter {
    /// A table with room for `capacity` symbols, and its shared read side.
    pub fn new(capacity: u32) -> (SymbolWriter, Arc<Symbols>) {
        let names = (0..capacity).map(|_| OnceLock::new()).collect();
        let shared = Arc::new(Symbols { names });
        let ids = HashMap::with_capacity(capacity as usize);
        (SymbolWriter { shared: Arc::clone(&shared), ids }, shared)
    }

    /// The id of `text`, interning it at the next free id if new.
    pub fn intern(&mut self, text: &str) -> Result<SymbolId, RejectReason> {
        let ticker = Ticker::new(text)?;
        if let Some(&id) = self.ids.get(&ticker) {
            return Ok(id);
        }
        let next = self.ids.len();
        if next >= self.shared.names.len() {
            return Err(RejectReason::SymbolTableFull);
        }
        let id = SymbolId(next as u32);
        self.insert(id, ticker);
        Ok(id)
    }

    /// Interns `text` at `wanted` if that id is free (replays keep the recorded ids, so that
    /// clock-closed bars come out in the recorded order); otherwise as [`SymbolWriter::intern`].
    pub fn intern_at(&mut self, text: &str, wanted: SymbolId) -> Result<SymbolId, RejectReason> {
        let ticker = Ticker::new(text)?;
        if let Some(&id) = self.ids.get(&ticker) {
            return Ok(id);
        }
        match self.shared.names.get(wanted.index()) {
            Some(slot) if slot.get().is_none() => {
                self.insert(wanted, ticker);
                Ok(wanted)
            }
            _ => self.intern_free(ticker),
        }
    }

    fn intern_free(&mut self, ticker: Ticker) -> Result<SymbolId, RejectReason> {
        let free = self.shared.names.iter().position(|slot| slot.get().is_none());
        let index = free.ok_or(RejectReason::SymbolTableFull)?;
        let id = SymbolId(index as u32);
        self.insert(id, ticker);
        Ok(id)
    }

    fn insert(&mut self, id: SymbolId, ticker: Ticker) {
        let fresh = self.shared.names[id.index()].set(ticker).is_ok();
        assert!(fresh, "Invariant: a symbol slot is written once");
        self.ids.insert(ticker, id);
    }

    /// Symbols interned.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when none is interned.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_bounded() {
        let (mut writer, shared) = SymbolWriter::new(2);
        let aapl = writer.intern("AAPL").unwrap();
        assert_eq!(writer.intern("AAPL").unwrap(), aapl);
        assert_eq!(shared.name(aapl), Some("AAPL"));
        assert_eq!(writer.intern("msft!"), Err(RejectReason::BadSymbol));
        writer.intern("MSFT").unwrap();
        assert_eq!(writer.intern("IBM"), Err(RejectReason::SymbolTableFull));
    }

    #[test]
    fn intern_at_keeps_a_free_id_and_moves_a_taken_one() {
        let (mut writer, shared) = SymbolWriter::new(4);
        assert_eq!(writer.intern_at("IBM", SymbolId(2)).unwrap(), SymbolId(2));
        assert_eq!(writer.intern_at("AAPL", SymbolId(2)).unwrap(), SymbolId(0));
        assert_eq!(shared.name(SymbolId(2)), Some("IBM"));
        assert_eq!(shared.name(SymbolId(1)), None);
    }
}
