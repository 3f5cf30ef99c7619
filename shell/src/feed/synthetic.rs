//! The built-in synthetic market, the default feed: runs with no keys and no network.
//!
//! What it generates, all from one seed:
//! - `symbols` tickers, unique: the most active 40 named after well-known stocks (`AAPL`,
//!   `MSFT`, `NVDA`, ... [`FAMILIAR_TICKERS`]), the rest random (1-5 letters), whose prices
//!   start across a band mix like a real
//!   listing: 20 % penny stocks ($0.50-5), 30 % small caps ($5-20), 30 % mid ($20-100) and
//!   20 % large caps ($100-1,000), log-uniform within each band.
//! - A geometric random walk per symbol in event time: each trade moves the price by
//!   `exp(sigma * sqrt(dt) * z)`, `dt` the seconds since the symbol's previous trade and
//!   sigma drawn per symbol (0.015-0.06 % per root second: 2-9 % a trading day), so a busy
//!   name is no more volatile than a quiet one; ticked to cents ($0.0001 under $1).
//! - Trade arrival: Poisson at `trades_per_sec`, spread over symbols by a Zipf-like activity
//!   weight, so a few names trade a lot and most trade rarely.
//! - Bursts: every few seconds of event time one symbol starts a burst for 20-90 s, taking a
//!   share of all trades with a drift (2-10 % over the whole burst, whatever the trade rate),
//!   larger sizes and a jump of 1-3 % at the start. Bursts are what make surges (`SV`),
//!   trends (`TR`) and new session highs and lows (`HL`) actually happen.
//! - Sizes: round lots mostly, odd lots sometimes, an occasional block.
//!
//! Live (the default), a trade happens now: the feed paces itself to the wall clock. With
//! `virtual_time` the generator's own clock stamps the trades and the feed runs flat out;
//! then the same seed gives the same trades, byte for byte.

use std::time::{Duration, Instant};

use tickstock_engine::{Price, Qty, SymbolId, Tick, Timestamp, Trade};

use crate::config::SyntheticSettings;
use crate::feed::{Feed, FeedEnd, FeedTx};

/// Price bands: (share of symbols in percent, lowest, highest start price in dollars).
const PRICE_BANDS: [(u32, f64, f64); 4] =
    [(20, 0.5, 5.0), (30, 5.0, 20.0), (30, 20.0, 100.0), (20, 100.0, 1_000.0)];
/// Share of trades that go to the bursting symbol while a burst runs, in percent.
const BURST_SHARE_PCT: u32 = 10;
/// Mean event time between two bursts starting, in seconds.
const BURST_GAP_SECS_MEAN: f64 = 8.0;
/// A symbol's volatility, log return per root second: drawn in this range.
const SIGMA_PER_ROOT_S: (f64, f64) = (0.000_15, 0.000_6);
/// A burst's drift over its whole length, in log return: drawn in this range.
const BURST_MOVE: (f64, f64) = (0.02, 0.10);
/// Trades sent per pacing round when live, at most.
const PACE_BATCH_MAX: u32 = 512;

#[derive(Clone, Copy, Debug)]
struct Instrument {
    id: SymbolId,
    /// Current price in dollars.
    price: f64,
    /// Log-return volatility per root second.
    sigma: f64,
    /// Event time of its previous trade, ns (0: none yet).
    last_ns: u64,
}

#[derive(Clone, Copy, Debug)]
struct Burst {
    symbol: usize,
    until_ns: u64,
    /// Log drift per trade of the burst.
    drift: f64,
}

/// The generator: deterministic per seed; knows nothing of threads or rings.
#[derive(Debug)]
pub struct Market {
    rng: fastrand::Rng,
    tickers: Vec<String>,
    instruments: Vec<Instrument>,
    /// Cumulative activity weights, for picking a symbol by binary search.
    cumulative: Vec<f64>,
    burst: Option<Burst>,
    next_burst_ns: u64,
    /// Event time of the last trade, ns.
    now_ns: u64,
    mean_gap_ns: f64,
    trade_id: u64,
}

impl Market {
    /// A market of `settings.symbols` symbols; ids are assigned by the caller's interner.
    pub fn new(settings: &SyntheticSettings) -> Market {
        let mut rng = fastrand::Rng::with_seed(settings.seed);
        let count = settings.symbols as usize;
        let tickers = unique_tickers(&mut rng, count);
        let mut instruments = Vec::with_capacity(count);
        let mut cumulative = Vec::with_capacity(count);
        let mut total = 0.0;
        for rank in 0..count {
            let price = band_price(&mut rng, rank);
            let sigma = SIGMA_PER_ROOT_S.0 + rng.f64() * (SIGMA_PER_ROOT_S.1 - SIGMA_PER_ROOT_S.0);
            instruments.push(Instrument { id: SymbolId(rank as u32), price, sigma, last_ns: 0 });
            total += 1.0 / (rank as f64 + 10.0);
            cumulative.push(total);
        }
        let start_ns = settings.virtual_start_unix_ms.saturating_mul(1_000_000);
        let mean_gap_ns = 1e9 / f64::from(settings.trades_per_sec);
        Market {
            rng,
            tickers,
            instruments,
            cumulative,
            burst: None,
            next_burst_ns: start_ns + 2_000_000_000,
            now_ns: start_ns,
            mean_gap_ns,
            trade_id: 0,
        }
    }

    /// The tickers, by index.
    pub fn tickers(&self) -> &[String] {
        &self.tickers
    }

    /// Tells the market the engine id of each ticker index.
    pub fn set_ids(&mut self, ids: &[SymbolId]) {
        for (instrument, &id) in self.instruments.iter_mut().zip(ids) {
            instrument.id = id;
        }
    }

    /// The next trade, stamped with the generator's event time (`ts_event` and `ts_recv`).
    pub fn next_trade(&mut self) -> Trade {
        let gap = -self.mean_gap_ns * (1.0 - self.rng.f64()).ln();
        self.now_ns += gap as u64;
        self.roll_burst();
        let (index, drift, burst) = self.pick();
        let instrument = &mut self.instruments[index];
        let z = normal(&mut self.rng);
        let since =
            if instrument.last_ns == 0 { 1e9 } else { (self.now_ns - instrument.last_ns) as f64 };
        instrument.last_ns = self.now_ns;
        let step = (drift + instrument.sigma * (since / 1e9).sqrt() * z).clamp(-0.05, 0.05);
        instrument.price = (instrument.price * step.exp()).clamp(0.01, 50_000.0);
        let price = tick_round(instrument.price);
        let size = trade_size(&mut self.rng, burst);
        self.trade_id += 1;
        let ts = Timestamp(self.now_ns);
        let mut trade = Trade::new(
            instrument.id,
            ts,
            Price::from_f64(price).unwrap_or(Price::from_raw(10_000)),
            Qty(size),
        );
        trade.ts_recv = ts;
        trade.trade_id = self.trade_id;
        trade.exchange = self.rng.u8(1..=20);
        trade
    }

    fn roll_burst(&mut self) {
        if self.burst.is_some_and(|burst| self.now_ns >= burst.until_ns) {
            self.burst = None;
        }
        if self.burst.is_none() && self.now_ns >= self.next_burst_ns {
            let symbol = self.rng.usize(..self.instruments.len());
            let length_ns = self.rng.u64(20..=90) * 1_000_000_000;
            let direction = if self.rng.bool() { 1.0 } else { -1.0 };
            // Spread over the trades the burst is expected to take, so the move stays a
            // move (not a hundredfold) at any rate: a per-trade drift fixed in advance would
            // compound over the thousands of trades a second a busy market gives a burst.
            let trades = length_ns as f64 / self.mean_gap_ns * f64::from(BURST_SHARE_PCT) / 100.0;
            let total = BURST_MOVE.0 + self.rng.f64() * (BURST_MOVE.1 - BURST_MOVE.0);
            let drift = direction * total / trades.max(1.0);
            let jump = (direction * (0.01 + self.rng.f64() * 0.02)).exp();
            self.instruments[symbol].price *= jump;
            self.burst = Some(Burst { symbol, until_ns: self.now_ns + length_ns, drift });
            let gap = -BURST_GAP_SECS_MEAN * (1.0 - self.rng.f64()).ln();
            self.next_burst_ns = self.now_ns + length_ns + (gap * 1e9) as u64;
        }
    }

    /// Which symbol trades next: the bursting one for its share, else by activity weight.
    fn pick(&mut self) -> (usize, f64, bool) {
        if let Some(burst) = self.burst {
            if self.rng.u32(0..100) < BURST_SHARE_PCT {
                return (burst.symbol, burst.drift, true);
            }
        }
        let total = *self.cumulative.last().expect("Invariant: at least one symbol");
        let target = self.rng.f64() * total;
        let index = self.cumulative.partition_point(|&c| c < target);
        (index.min(self.instruments.len() - 1), 0.0, false)
    }
}

/// The most active symbols get these well-known names, so that `T.AAPL` delivers out of
/// the box; prices and activity stay synthetic (the names are borrowed, nothing else).
pub const FAMILIAR_TICKERS: [&str; 40] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "AVGO", "JPM", "V", "LLY", "UNH",
    "XOM", "MA", "COST", "HD", "PG", "JNJ", "NFLX", "WMT", "BAC", "ABBV", "CRM", "KO", "ORCL",
    "CVX", "AMD", "MRK", "PEP", "ADBE", "TMO", "CSCO", "ACN", "MCD", "LIN", "ABT", "WFC", "INTC",
    "QCOM", "DIS",
];

/// `count` unique tickers: the [`FAMILIAR_TICKERS`] first, then random ones (drawn exactly
/// as if there were none, so the rest of the market is the same for a seed either way).
fn unique_tickers(rng: &mut fastrand::Rng, count: usize) -> Vec<String> {
    let mut tickers = random_tickers(rng, count);
    let familiar = &FAMILIAR_TICKERS[..count.min(FAMILIAR_TICKERS.len())];
    let mut displaced: Vec<String> = Vec::with_capacity(familiar.len());
    for (slot, name) in tickers.iter_mut().zip(familiar) {
        displaced.push(std::mem::replace(slot, (*name).to_owned()));
    }
    // A random name further on that is now familiar takes a displaced one instead (those
    // are unique, and none of them is further on).
    let mut spare = displaced.into_iter().filter(|t| !familiar.contains(&t.as_str()));
    for ticker in tickers.iter_mut().skip(familiar.len()) {
        if familiar.contains(&ticker.as_str()) {
            *ticker = spare.next().expect("as many displaced names as familiar ones");
        }
    }
    tickers
}

fn random_tickers(rng: &mut fastrand::Rng, count: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut tickers = Vec::with_capacity(count);
    while tickers.len() < count {
        // Short names first, as on a real exchange; longer ones once short ones run out.
        let length = match tickers.len() {
            n if n < 200 => rng.usize(1..=3),
            n if n < 10_000 => rng.usize(2..=4),
            _ => rng.usize(3..=5),
        };
        let ticker: String = (0..length).map(|_| rng.alphabetic().to_ascii_uppercase()).collect();
        if seen.insert(ticker.clone()) {
            tickers.push(ticker);
        }
    }
    tickers
}

fn band_price(rng: &mut fastrand::Rng, rank: usize) -> f64 {
    let mut pick = (rank as u32).wrapping_mul(2_654_435_761) % 100;
    for (share, low, high) in PRICE_BANDS {
        if pick < share {
            return (low.ln() + rng.f64() * (high.ln() - low.ln())).exp();
        }
        pick -= share;
    }
    unreachable!("Invariant: band shares add up to 100")
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = 1.0 - rng.f64();
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Cents, or hundredths of a cent below a dollar (the US tick-size rule).
fn tick_round(price: f64) -> f64 {
    let tick = if price < 1.0 { 10_000.0 } else { 100.0 };
    ((price * tick).round() / tick).max(1.0 / tick)
}

fn trade_size(rng: &mut fastrand::Rng, burst: bool) -> u64 {
    let lots = match rng.u32(0..100) {
        0..=24 => return rng.u64(1..100),
        25..=97 => rng.u64(1..=10),
        _ => rng.u64(50..=500),
    };
    lots * if burst { 400 } else { 100 }
}

/// The synthetic market as a feed.
#[derive(Debug)]
pub struct SyntheticFeed {
    settings: SyntheticSettings,
    heartbeat_ns: u64,
}

impl SyntheticFeed {
    /// A feed from its settings; `heartbeat_ms` from `[pipeline]`.
    pub fn new(settings: SyntheticSettings, heartbeat_ms: u32) -> SyntheticFeed {
        SyntheticFeed { settings, heartbeat_ns: u64::from(heartbeat_ms) * 1_000_000 }
    }

    fn intern_all(&self, market: &mut Market, tx: &mut FeedTx) -> Result<(), String> {
        let mut ids = Vec::with_capacity(market.tickers().len());
        for ticker in market.tickers() {
            let id =
                tx.intern(ticker).map_err(|reason| format!("cannot intern {ticker}: {reason}"))?;
            ids.push(id);
        }
        market.set_ids(&ids);
        Ok(())
    }
}

impl Feed for SyntheticFeed {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn run(&mut self, tx: &mut FeedTx) -> FeedEnd {
        let mut market = Market::new(&self.settings);
        if let Err(message) = self.intern_all(&mut market, tx) {
            return FeedEnd::Failed(message);
        }
        let trades_max = self.settings.trades_max.unwrap_or(u64::MAX);
        let result = if self.settings.virtual_time {
            run_virtual(&mut market, tx, trades_max)
        } else {
            run_paced(&mut market, tx, trades_max, &self.settings, self.heartbeat_ns)
        };
        match result {
            Ok(()) => FeedEnd::Exhausted,
            Err(_) => FeedEnd::Stopped,
        }
    }
}

fn run_virtual(
    market: &mut Market,
    tx: &mut FeedTx,
    trades_max: u64,
) -> Result<(), super::Stopped> {
    for _ in 0..trades_max {
        if tx.stopping() {
            return Err(super::Stopped);
        }
        tx.send_tick(Tick::Trade(market.next_trade()))?;
    }
    Ok(())
}

/// Live: trade `k` is due `k / trades_per_sec` after start; everything due is sent, then the
/// thread sleeps until the next is due, or `pace_us` if that is later (heartbeats keep the
/// engine clock moving meanwhile).
fn run_paced(
    market: &mut Market,
    tx: &mut FeedTx,
    trades_max: u64,
    settings: &SyntheticSettings,
    heartbeat_ns: u64,
) -> Result<(), super::Stopped> {
    let start = Instant::now();
    let gap_ns = 1e9 / f64::from(settings.trades_per_sec);
    let pace = Duration::from_micros(settings.pace_us.into());
    let mut sent = 0u64;
    while sent < trades_max {
        if tx.stopping() {
            return Err(super::Stopped);
        }
        let elapsed_ns = start.elapsed().as_nanos() as f64;
        let due = ((elapsed_ns / gap_ns) as u64 + 1).min(trades_max);
        let mut round = 0;
        while sent < due && round < PACE_BATCH_MAX {
            let mut trade = market.next_trade();
            // Live: the trade happens now; `send_tick` stamps `ts_recv` with the same clock.
            trade.ts_event = tx.now().unwrap_or(trade.ts_event);
            tx.send_tick(Tick::Trade(trade))?;
            sent += 1;
            round += 1;
        }
        tx.heartbeat(heartbeat_ns)?;
        if sent >= due {
            let next_ns = (sent as f64 * gap_ns) as u64;
            let wait = Duration::from_nanos(next_ns).saturating_sub(start.elapsed());
            std::thread::sleep(wait.max(pace).min(Duration::from_nanos(heartbeat_ns)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(seed: u64) -> SyntheticSettings {
        SyntheticSettings { symbols: 500, seed, virtual_time: true, ..SyntheticSettings::default() }
    }

    #[test]
    fn same_seed_same_market() {
        let (mut a, mut b) = (Market::new(&settings(3)), Market::new(&settings(3)));
        assert_eq!(a.tickers(), b.tickers());
        for _ in 0..10_000 {
            assert_eq!(a.next_trade(), b.next_trade());
        }
        let mut c = Market::new(&settings(4));
        assert_ne!(a.next_trade(), c.next_trade());
    }

    #[test]
    fn the_most_active_names_are_familiar_and_every_name_is_unique() {
        for (seed, symbols) in [(1, 3), (7, 40), (2, 500), (9, 20_000)] {
            let settings = SyntheticSettings { symbols, ..settings(seed) };
            let tickers = Market::new(&settings).tickers().to_vec();
            assert_eq!(tickers.len(), symbols as usize);
            let familiar = FAMILIAR_TICKERS.len().min(symbols as usize);
            assert_eq!(tickers[..familiar], FAMILIAR_TICKERS[..familiar]);
            let unique: std::collections::HashSet<&String> = tickers.iter().collect();
            assert_eq!(unique.len(), tickers.len(), "seed {seed}");
            assert!(tickers.iter().all(|t| tickstock_engine::Ticker::new(t).is_ok()));
        }
    }

    #[test]
    fn prices_span_the_bands_and_stay_positive_on_tick() {
        let mut market = Market::new(&settings(1));
        let (mut low, mut high) = (f64::MAX, 0.0f64);
        for _ in 0..200_000 {
            let trade = market.next_trade();
            let price = trade.price.to_f64();
            assert!(price > 0.0);
            let cents = price * if price < 1.0 { 10_000.0 } else { 100.0 };
            assert!((cents - cents.round()).abs() < 1e-6, "{price} is on tick");
            low = low.min(price);
            high = high.max(price);
            assert!(trade.size.0 >= 1);
        }
        assert!(low < 5.0 && high > 100.0, "band mix: {low}..{high}");
    }

    #[test]
    fn a_busy_symbol_moves_like_a_market_not_a_lottery() {
        // 100 s of a 20,000 trades/s market, bursts included: the busiest name (hundreds of
        // trades a second) and every other stay within a plausible range of their start.
        let mut market = Market::new(&settings(5));
        let start: Vec<f64> = market.instruments.iter().map(|i| i.price).collect();
        for _ in 0..2_000_000 {
            market.next_trade();
        }
        for (instrument, start) in market.instruments.iter().zip(&start) {
            let moved = (instrument.price / start).ln().abs();
            assert!(moved < 0.35, "{:?} moved {moved} in log from {start}", instrument.id);
        }
    }

    #[test]
    fn time_advances_at_the_configured_rate() {
        let mut market = Market::new(&settings(2));
        let first = market.next_trade().ts_event.0;
        let mut last = first;
        for _ in 0..20_000 {
            let ts = market.next_trade().ts_event.0;
            assert!(ts >= last);
            last = ts;
        }
        let secs = (last - first) as f64 / 1e9;
        assert!((0.9..1.1).contains(&secs), "20,000 trades at 20,000/s took {secs} s");
    }
}
