//! Shared input generators for the criterion benches.
//!
//! Inputs are generated before timing, deterministically from a seed (xorshift), so two runs
//! measure the same work.

#![forbid(unsafe_code)]

use tickstock_engine::{Price, Qty, SymbolId, Timestamp, Trade};

/// 2026-11-24 14:30 UTC (09:30 in New York): the regular open.
pub const OPEN_NS: u64 = 1_795_962_600_000_000_000;

/// A deterministic stream of trades over `symbols` symbols at `rate_per_sec` trades per
/// second of event time: per-symbol geometric random walks across price bands from pennies
/// to large caps, with bursts of size so that surges and trends occur.
#[derive(Debug)]
pub struct TradeStream {
    state: u64,
    prices: Vec<i64>,
    bases: Vec<i64>,
    t_ns: u64,
    step_ns: u64,
}

impl TradeStream {
    /// A stream starting at [`OPEN_NS`].
    pub fn new(symbols: u32, rate_per_sec: u64, seed: u64) -> TradeStream {
        let mut stream = TradeStream {
            state: seed | 1,
            prices: Vec::new(),
            bases: Vec::new(),
            t_ns: OPEN_NS,
            step_ns: 1_000_000_000 / rate_per_sec,
        };
        let bands = [500_000, 3_000_000, 20_000_000, 80_000_000, 400_000_000];
        stream.bases = (0..symbols).map(|_| bands[(stream.next_u64() % 5) as usize]).collect();
        stream.prices = stream.bases.clone();
        stream
    }

    fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    /// The next trade.
    pub fn next_trade(&mut self) -> Trade {
        self.t_ns += self.step_ns;
        let r = self.next_u64();
        let symbol = (r % self.prices.len() as u64) as usize;
        // Noise of -6..+6 basis points, a drift that turns every five minutes (so trends
        // form), and a pull back towards the symbol's base price that keeps the walk within
        // a few percent of it however many trades the symbol gets.
        let base = self.bases[symbol];
        let drift =
            if (self.t_ns / 300_000_000_000 + symbol as u64).is_multiple_of(2) { 2 } else { -2 };
        let price = &mut self.prices[symbol];
        let deviation_bp = (*price - base) * 10_000 / base;
        let step_bp = ((r >> 20) % 13) as i64 - 6 + drift - deviation_bp / 50;
        *price = (*price + *price * step_bp / 10_000).max(10_000);
        let burst = (r >> 40).is_multiple_of(100);
        let size = if burst { 5_000 + (r >> 48) % 20_000 } else { 1 + (r >> 48) % 500 };
        Trade::new(
            SymbolId(symbol as u32),
            Timestamp(self.t_ns),
            Price::from_raw(*price),
            Qty(size),
        )
    }

    /// The next `count` trades.
    pub fn take_trades(&mut self, count: usize) -> Vec<Trade> {
        (0..count).map(|_| self.next_trade()).collect()
    }
}
