//! The engine facade: ticks in, events out, time passed in.
//!
//! [`Engine`] owns all per-symbol state, sized for `symbols_max` at construction. After
//! [`Engine::new`] nothing on the per-tick path allocates or frees: events go into an
//! output buffer whose capacity covers the worst case of one call (every open bar closing at
//! once, the `ACT` events of one clock step, plus one tick's events), and bar-close timers
//! into a timer wheel ([`Timers`]) that holds at most one entry per symbol and frequency.

use std::cmp::Reverse;

use crate::activity::ActivityWindows;
use crate::bars::{BarBuilder, BarInput, DayFigures, Placement};
use crate::calendar::{SessionCalendar, TradingDay};
use crate::config::{Config, Params, PeriodParams};
use crate::detect::high_low::{self, HighLowState};
use crate::detect::surge::{self, SURGE_WINDOWS_COUNT};
use crate::detect::trend::{self, TrendInput, TrendState};
use crate::detect::LastEvent;
use crate::error::{ConfigError, RejectReason, TickError};
use crate::event::{Bar, Event, EventBody, FairValue, Frequency};
use crate::hint::{huge_pages, huge_zeroed_vec};
use crate::limits::{ACTIVITY_PER_CALL_MAX, EVENTS_PER_TICK_MAX, TREND_WINDOWS_COUNT};
use crate::stats::Stats;
use crate::tick::{Aggregate, Fmv, Price, Qty, Quote, SymbolId, Tick, Timestamp, Trade};
use crate::timers::{Timer, Timers};
use crate::wide::Wide;
use crate::window::{Bucket, LeanBucket, Shape, Slot, Windows};

/// The engine core: validation, bars, detectors and the event sequence.
///
/// # Call order
/// 1. [`Engine::handle_tick`] for each input, or [`Engine::handle_clock`] when there is none
///    (the shell calls it at least every few milliseconds so that quiet symbols' bars
///    close), each with the current engine clock;
/// 2. [`Engine::poll_events`] after every `handle_*` call, draining all events: the next
///    `handle_*` call refuses to run until they are drained;
/// 3. [`Engine::handle_flush`] at a clean shutdown or the end of a replay, to close open bars.
///
/// [`Engine::poll_deadline`] says when the next bar close or `ACT` is due on the clock.
///
/// # Determinism
/// Output depends only on the sequence of calls and their arguments: the same ticks with
/// the same clock values give the same events, with the same `seq`, every run.
#[derive(Debug)]
pub struct Engine {
    params: Params,
    calendar: SessionCalendar,
    trend_shape: Shape<TREND_WINDOWS_COUNT>,
    surge_shape: Shape<SURGE_WINDOWS_COUNT>,
    symbols: Vec<SymbolState>,
    /// `symbols_max * trend_shape.ring_len` buckets, one ring per symbol.
    trend_ring: Vec<Bucket>,
    /// `symbols_max * surge_shape.ring_len` buckets, one ring per symbol.
    surge_ring: Vec<LeanBucket>,
    /// Bar-close timers. At most one per symbol and frequency (`BarBuilder::timer_armed`).
    timers: Timers,
    /// `ACT`'s windows; `None` with `activity` off.
    activity: Option<Box<ActivityWindows>>,
    out: Output,
    /// Engine clock: the largest `now` passed in so far.
    now_ns: u64,
    stats: Stats,
}

/// The output buffer and the sequence counter.
#[derive(Debug)]
struct Output {
    events: Vec<Event>,
    seq_next: u64,
}

impl Output {
    fn push(&mut self, stats: &mut Stats, symbol: SymbolId, body: EventBody) {
        debug_assert!(self.events.len() < self.events.capacity(), "Invariant: output has room");
        let seq = self.seq_next;
        self.seq_next = seq.checked_add(1).expect("Invariant: seq stays below u64::MAX");
        self.events.push(Event { seq, symbol, body });
        stats.events += 1;
    }
}

/// Everything the engine remembers about one symbol. Every trade reads and writes most of
/// it, so it is laid out to fill whole cache lines: 8 lines, line-aligned (asserted below),
/// which is what `Engine::prefetch` loads.
#[repr(align(64))]
#[derive(Clone, Copy, Debug)]
struct SymbolState {
    /// Last accepted price (raw units); meaningful once `accepted > 0`.
    last_price: i64,
    /// Newest accepted event time: the symbol's detector clock, which never goes back.
    newest_ns: u64,
    /// Trades (and aggregates) accepted since start-up, saturating: only whether it is zero
    /// and whether it reached `jump_check_after_trades` (a `u32`) matter.
    accepted: u32,
    day: TradingDay,
    session: Session,
    bars: [BarBuilder; 2],
    trend: Windows<TREND_WINDOWS_COUNT, Bucket>,
    trend_state: TrendState,
    surge: Windows<SURGE_WINDOWS_COUNT, LeanBucket>,
    last_surge: LastEvent,
}

impl SymbolState {
    const NEW: SymbolState = SymbolState {
        last_price: 0,
        newest_ns: 0,
        accepted: 0,
        day: 0,
        session: Session { open: 0, volume: 0, pv: Wide::ZERO, high_low: HighLowState::EMPTY },
        bars: [BarBuilder::EMPTY; 2],
        trend: Windows::EMPTY,
        trend_state: TrendState::NEW,
        surge: Windows::EMPTY,
        last_surge: LastEvent::NEVER,
    };
}

const _: () = assert!(size_of::<SymbolState>() == 512, "SymbolState fills 8 cache lines");

/// The day's running figures of one symbol; reset at its first trade of a trading day.
#[derive(Clone, Copy, Debug)]
struct Session {
    /// The session open: the first accepted price of the day, or the upstream's official open.
    open: i64,
    volume: u64,
    pv: Wide,
    high_low: HighLowState,
}

impl Session {
    fn figures(&self) -> DayFigures {
        DayFigures { volume: self.volume, open: self.open, pv: self.pv.get() }
    }
}

/// An accepted trade or aggregate, as the common ingest path sees it.
#[derive(Clone, Copy, Debug)]
struct Ingest {
    symbol: SymbolId,
    bar: BarInput,
    /// The time that goes out in the detector events' `t`.
    ts: Timestamp,
    /// The upstream's official open, or 0.
    official_open: i64,
    /// What goes out first: the trade (`T`) or the forwarded aggregate (`A`).
    forward: Forward,
}

#[derive(Clone, Copy, Debug)]
enum Forward {
    Trade(Trade),
    Aggregate(Aggregate),
}

impl Engine {
    /// Validates `config` and allocates everything the engine will ever use.
    pub fn new(config: &Config) -> Result<Engine, ConfigError> {
        let params = config.validate()?;
        let symbols_max = params.symbols_max as usize;
        let trend_shape = Shape::new(params.trend.bucket_ns, params.trend.window_buckets);
        let surge_shape = Shape::new(
            params.surge.bucket_ns,
            [params.surge.interval_buckets, params.surge.history_buckets],
        );
        // Huge pages for all three: each trade touches a random symbol's state and buckets,
        // and with 4 KiB pages nearly every such touch misses the TLB. They are faulted in
        // here, so no page fault lands on the trade path; where the kernel gives no huge
        // pages, the zeroed rings of symbols that never trade stay untouched.
        let trend_ring = huge_zeroed_vec(symbols_max * trend_shape.ring_len);
        let surge_ring = huge_zeroed_vec(symbols_max * surge_shape.ring_len);
        let mut symbols = huge_pages(Vec::with_capacity(symbols_max));
        symbols.resize(symbols_max, SymbolState::NEW);
        Ok(Engine {
            calendar: SessionCalendar::new(params.timezone, params.session_minutes),
            trend_shape,
            surge_shape,
            symbols,
            trend_ring,
            surge_ring,
            timers: Timers::new(params.symbols_max, close_horizon(&params)),
            activity: params.activity_trades_60s.map(|levels| {
                let delay_ns = params.bar_close_grace_ns + params.bar_close_spread_ns;
                Box::new(ActivityWindows::new(params.symbols_max, levels, delay_ns))
            }),
            out: Output {
                events: Vec::with_capacity(
                    2 * symbols_max + EVENTS_PER_TICK_MAX + ACTIVITY_PER_CALL_MAX,
                ),
                seq_next: params.seq_start,
            },
            now_ns: 0,
            stats: Stats::default(),
            params,
        })
    }

    /// Counters since construction.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The validated configuration.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The engine clock: the largest `now` passed in so far.
    pub fn now(&self) -> Timestamp {
        Timestamp(self.now_ns)
    }

    /// The `seq` the next event will get.
    pub fn seq_next(&self) -> u64 {
        self.out.seq_next
    }

    /// Starts loading the state `tick` will touch into the cache, without changing anything:
    /// the symbol's state, and the window buckets it reads if it moves a window's head.
    ///
    /// A caller holding several ticks (a chunk popped from the ring) calls this
    /// [`PREFETCH_DISTANCE`](crate::hint::PREFETCH_DISTANCE) ticks ahead of
    /// [`Engine::handle_tick`] (and [`crate::hint::prefetch`] on the input further ahead);
    /// with thousands of active symbols it hides most of the memory latency. Calling it or
    /// not never changes the output.
    ///
    /// Whether the tick will move a head is in the state, which is not in cache yet, so the
    /// buckets are loaded either way: reading the state here to decide costs more than the
    /// unneeded loads (measured, `docs/performance.md`).
    pub fn prefetch(&self, tick: &Tick) {
        let index = tick.symbol().index();
        let Some(state) = self.symbols.get(index) else { return };
        crate::hint::prefetch_bytes((state as *const SymbolState).cast(), size_of::<SymbolState>());
        let t_ns = tick.ts_event().0;
        prefetch_leaving(&self.trend_ring, &self.trend_shape, index, t_ns);
        prefetch_leaving(&self.surge_ring, &self.surge_shape, index, t_ns);
    }

    /// Processes one input at engine time `now`. Bars whose end plus the grace `now` has
    /// passed close first. A rejected input is counted by reason and changes no state.
    pub fn handle_tick(&mut self, now: Timestamp, tick: &Tick) -> Result<(), TickError> {
        self.ensure_drained()?;
        self.stats.ticks_received += 1;
        self.advance_clock(now.0);
        let outcome = match tick {
            Tick::Trade(trade) => self.handle_trade(trade),
            Tick::Quote(quote) => self.handle_quote(quote),
            Tick::Aggregate(aggregate) => self.handle_aggregate(aggregate),
            Tick::Fmv(fmv) => self.handle_fmv(fmv),
        };
        outcome.map_err(|reason| {
            self.stats.rejects[reason.index()] += 1;
            TickError::Rejected(reason)
        })
    }

    /// Advances the engine clock to `now`, closing the bars it makes due.
    pub fn handle_clock(&mut self, now: Timestamp) -> Result<(), TickError> {
        self.ensure_drained()?;
        self.advance_clock(now.0);
        Ok(())
    }

    /// Closes every open bar, in (end, symbol, frequency) order: a clean shutdown or the end
    /// of a replay.
    pub fn handle_flush(&mut self) -> Result<(), TickError> {
        self.ensure_drained()?;
        // Timers fire in due order, which staggers symbols; a flush closes in end order.
        // Sorting the near heap's own vector in place allocates nothing.
        // A timer may still name a bar a trade already closed; point each at the bar open now
        // so that none re-arms while the timers are taken out.
        let mut timers = self.timers.take_all();
        for Reverse(timer) in &mut timers {
            let builder = &self.symbols[timer.symbol as usize].bars[timer.frequency.index()];
            let end_ns = builder.open_end(timer.frequency).unwrap_or(0);
            timer.due_ns = close_due(&self.params, end_ns, SymbolId(timer.symbol));
        }
        let params = &self.params;
        timers.sort_unstable_by_key(|Reverse(t)| (t.end_ns(params), t.symbol, t.frequency));
        for Reverse(timer) in timers.drain(..) {
            self.fire_timer(timer, false);
        }
        self.timers.restore(timers);
        Ok(())
    }

    /// Counts an input rejected before it reached the engine (a non-finite price, a bad
    /// ticker, a full symbol table), so that every reason is on one counter.
    pub fn handle_rejected(&mut self, reason: RejectReason) {
        self.stats.ticks_received += 1;
        self.stats.rejects[reason.index()] += 1;
    }

    /// Drains the events produced by the last `handle_*` call, in `seq` order.
    pub fn poll_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.out.events.drain(..)
    }

    /// When the next bar is due to close on the clock, or the next `ACT` is due, if either.
    pub fn poll_deadline(&self) -> Option<Timestamp> {
        let activity = self.activity.as_ref().and_then(|a| a.due_ns());
        [self.timers.earliest_due(), activity].into_iter().flatten().min().map(Timestamp)
    }

    fn ensure_drained(&self) -> Result<(), TickError> {
        match self.out.events.len() {
            0 => Ok(()),
            pending_count => Err(TickError::OutputNotDrained { pending_count }),
        }
    }

    /// Moves the clock to `now_ns`: bar closes and `ACT` events due by then, in due order
    /// (an `ACT` after the bars due at the same instant).
    fn advance_clock(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        loop {
            let activity_due = self.activity.as_ref().and_then(|a| a.due_ns());
            let activity_due = activity_due.filter(|&due| due <= self.now_ns);
            let limit = activity_due.unwrap_or(self.now_ns);
            loop {
                let symbols = &self.symbols;
                // A timer's slot is reached about a millisecond before it is due: start
                // loading the bar it will close (or find has moved on).
                let reached = |timer: Timer| {
                    let builder = &symbols[timer.symbol as usize].bars[timer.frequency.index()];
                    crate::hint::prefetch_bytes((builder as *const BarBuilder).cast(), 1);
                };
                let Some(timer) = self.timers.pop_due(limit, reached) else { break };
                self.fire_timer(timer, true);
            }
            let (Some(_), Some(activity)) = (activity_due, self.activity.as_mut()) else { break };
            let event = activity.take(&mut self.stats, self.now_ns);
            self.out.push(&mut self.stats, SymbolId::MARKET, EventBody::Activity(event));
        }
    }

    /// A timer popped: close its bar if it is still the open one, or re-arm for the bar that
    /// replaced it.
    fn fire_timer(&mut self, timer: Timer, by_clock: bool) {
        let frequency = timer.frequency;
        let symbol = SymbolId(timer.symbol);
        let state = &mut self.symbols[symbol.index()];
        let builder = &mut state.bars[frequency.index()];
        builder.timer_armed = false;
        match builder.open_end(frequency) {
            Some(end_ns) if end_ns == timer.end_ns(&self.params) => {
                if let Some(bar) = builder.close(frequency, &state.session.figures()) {
                    self.out.push(&mut self.stats, symbol, EventBody::Bar(bar));
                    if by_clock {
                        self.stats.bars_closed_by_clock += 1;
                    } else {
                        self.stats.bars_closed_by_flush += 1;
                    }
                }
            }
            Some(end_ns) => {
                let due_ns = close_due(&self.params, end_ns, symbol);
                arm(&mut self.timers, builder, Timer { due_ns, ..timer });
            }
            None => {}
        }
    }

    fn check_symbol(&self, symbol: SymbolId) -> Result<usize, RejectReason> {
        let index = symbol.index();
        if index < self.symbols.len() {
            Ok(index)
        } else {
            Err(RejectReason::UnknownSymbol)
        }
    }

    fn check_price(&self, price: Price) -> Result<(), RejectReason> {
        match price.raw() {
            raw if raw <= 0 => Err(RejectReason::PriceNotPositive),
            raw if raw > self.params.max_price_raw => Err(RejectReason::PriceTooHigh),
            _ => Ok(()),
        }
    }

    fn check_size(&self, size: Qty) -> Result<(), RejectReason> {
        match size.0 {
            0 => Err(RejectReason::SizeTooSmall),
            size if size > self.params.max_size => Err(RejectReason::SizeTooLarge),
            _ => Ok(()),
        }
    }

    fn check_time(&self, ts: Timestamp) -> Result<(), RejectReason> {
        if ts.0 > self.now_ns.saturating_add(self.params.max_future_ns) {
            Err(RejectReason::TooFarInFuture)
        } else if ts.0.saturating_add(self.params.max_age_ns) < self.now_ns {
            Err(RejectReason::TooOld)
        } else {
            Ok(())
        }
    }

    /// The per-symbol checks: reordering against the newest accepted trade, and the jump
    /// check once the symbol has enough history.
    fn check_sequence(
        &self,
        index: usize,
        ts: Timestamp,
        price: Price,
    ) -> Result<(), RejectReason> {
        let state = &self.symbols[index];
        if state.accepted == 0 {
            return Ok(());
        }
        if ts.0.saturating_add(self.params.max_reorder_ns) < state.newest_ns {
            return Err(RejectReason::OutOfOrder);
        }
        if u64::from(state.accepted) >= self.params.jump_check_after_trades {
            let delta = i128::from(price.raw()) - i128::from(state.last_price);
            let lhs = delta.abs() * 100 * 1_000_000;
            if lhs > i128::from(self.params.max_jump_pct_micro) * i128::from(state.last_price) {
                return Err(RejectReason::PriceJump);
            }
        }
        Ok(())
    }

    fn handle_trade(&mut self, trade: &Trade) -> Result<(), RejectReason> {
        let index = self.check_symbol(trade.symbol)?;
        self.check_price(trade.price)?;
        self.check_size(trade.size)?;
        self.check_time(trade.ts_event)?;
        self.check_sequence(index, trade.ts_event, trade.price)?;
        self.stats.trades_accepted += 1;
        if let Some(activity) = self.activity.as_mut() {
            activity.record(&mut self.stats, self.now_ns, trade.ts_event.0, trade.symbol);
        }
        let bar = BarInput::trade(trade.ts_event.0, trade.price.raw(), trade.size.0);
        let forward = Forward::Trade(*trade);
        let ingest =
            Ingest { symbol: trade.symbol, bar, ts: trade.ts_event, official_open: 0, forward };
        self.ingest(index, &ingest);
        Ok(())
    }

    fn handle_aggregate(&mut self, aggregate: &Aggregate) -> Result<(), RejectReason> {
        let index = self.check_symbol(aggregate.symbol)?;
        for price in
            [aggregate.open, aggregate.high, aggregate.low, aggregate.close, aggregate.vwap]
        {
            self.check_price(price)?;
        }
        let bounded = aggregate.low <= aggregate.open.min(aggregate.close)
            && aggregate.high >= aggregate.open.max(aggregate.close);
        let official_ok = aggregate.official_open == Price::ZERO
            || self.check_price(aggregate.official_open).is_ok();
        if aggregate.end <= aggregate.start || !bounded || !official_ok {
            return Err(RejectReason::BadAggregate);
        }
        if aggregate.volume.0 == 0 {
            return Err(RejectReason::SizeTooSmall);
        }
        self.check_time(aggregate.start)?;
        self.check_sequence(index, aggregate.start, aggregate.close)?;
        self.stats.aggregates_accepted += 1;
        let volume = aggregate.volume.0;
        let trades = volume.checked_div(aggregate.avg_size.0).unwrap_or(1).max(1);
        let bar = BarInput {
            t_ns: aggregate.start.0,
            open: aggregate.open.raw(),
            high: aggregate.high.raw(),
            low: aggregate.low.raw(),
            close: aggregate.close.raw(),
            volume,
            pv: aggregate.vwap.raw() as u128 * u128::from(volume),
            trades,
        };
        let ingest = Ingest {
            symbol: aggregate.symbol,
            bar,
            ts: aggregate.start,
            official_open: aggregate.official_open.raw(),
            forward: Forward::Aggregate(*aggregate),
        };
        self.ingest(index, &ingest);
        Ok(())
    }

    fn handle_quote(&mut self, quote: &Quote) -> Result<(), RejectReason> {
        self.check_symbol(quote.symbol)?;
        self.check_price(quote.bid_price)?;
        self.check_price(quote.ask_price)?;
        for size in [quote.bid_size, quote.ask_size] {
            if size.0 > self.params.max_size {
                return Err(RejectReason::SizeTooLarge);
            }
        }
        if quote.bid_price > quote.ask_price {
            return Err(RejectReason::CrossedQuote);
        }
        self.check_time(quote.ts_event)?;
        self.stats.quotes_accepted += 1;
        Ok(())
    }

    fn handle_fmv(&mut self, fmv: &Fmv) -> Result<(), RejectReason> {
        let index = self.check_symbol(fmv.symbol)?;
        self.check_price(fmv.value)?;
        self.check_time(fmv.ts_event)?;
        self.stats.fmv_accepted += 1;
        let state = &self.symbols[index];
        let vs_market_pct = (state.accepted > 0).then(|| {
            let last = state.last_price as f64;
            (fmv.value.raw() as f64 - last) / last * 100.0
        });
        let body = EventBody::Fmv(FairValue { value: fmv.value, ts: fmv.ts_event, vs_market_pct });
        self.out.push(&mut self.stats, fmv.symbol, body);
        Ok(())
    }

    /// The common path of an accepted trade or aggregate, in the documented event order:
    /// bars it closes, `T` (or the forwarded `A`), `HL`, `TR`, `SV`.
    fn ingest(&mut self, index: usize, ingest: &Ingest) {
        let symbol = ingest.symbol;
        let input = &ingest.bar;
        let state = &mut self.symbols[index];
        let out = &mut self.out;
        let stats = &mut self.stats;
        // Detector time never goes back: a reordered trade counts at the symbol's newest time.
        let t_ns = input.t_ns.max(state.newest_ns);
        let (day, period) = self.calendar.lookup(t_ns);
        let frequencies: &[Frequency] = match ingest.forward {
            Forward::Trade(_) => &Frequency::ALL,
            Forward::Aggregate(_) => &[Frequency::Minute],
        };
        for &frequency in frequencies {
            let builder = &mut state.bars[frequency.index()];
            if builder.is_closed_by(frequency, input.t_ns) {
                if let Some(bar) = builder.close(frequency, &state.session.figures()) {
                    out.push(stats, symbol, EventBody::Bar(bar));
                    stats.bars_closed_by_trade += 1;
                }
            }
        }
        let first_of_session = state.accepted == 0 || state.day != day;
        if first_of_session {
            state.day = day;
            state.session = Session {
                open: input.close,
                volume: 0,
                pv: Wide::ZERO,
                high_low: HighLowState::start(input.close),
            };
        }
        if ingest.official_open > 0 {
            state.session.open = ingest.official_open;
        }
        state.session.volume += input.volume;
        state.session.pv += input.pv;
        let forwarded = match ingest.forward {
            Forward::Trade(trade) => EventBody::Trade(trade),
            Forward::Aggregate(aggregate) => {
                EventBody::Bar(forwarded_bar(&aggregate, &state.session))
            }
        };
        out.push(stats, symbol, forwarded);
        for &frequency in frequencies {
            let builder = &mut state.bars[frequency.index()];
            match builder.add(frequency, input) {
                Placement::Added { opened: true } => {
                    let end_ns = builder.open_end(frequency).unwrap_or(input.t_ns);
                    let due_ns = close_due(&self.params, end_ns, symbol);
                    arm(&mut self.timers, builder, Timer { due_ns, symbol: symbol.0, frequency });
                }
                Placement::Added { opened: false } => {}
                Placement::Late => stats.late[frequency.index()] += 1,
            }
        }
        let params = &self.params.periods[period.index()];
        let rings = Rings {
            trend: ring_of(&mut self.trend_ring, self.trend_shape.ring_len, index),
            surge: ring_of(&mut self.surge_ring, self.surge_shape.ring_len, index),
        };
        let detect =
            Detect { params, trend_shape: &self.trend_shape, surge_shape: &self.surge_shape };
        detect.run(state, rings, ingest, t_ns, !first_of_session, out, stats, &self.params);
        state.last_price = input.close;
        state.newest_ns = t_ns;
        state.accepted = state.accepted.saturating_add(1);
    }
}

/// The detectors' view of the engine for one ingest.
struct Detect<'a> {
    params: &'a PeriodParams,
    trend_shape: &'a Shape<TREND_WINDOWS_COUNT>,
    surge_shape: &'a Shape<SURGE_WINDOWS_COUNT>,
}

/// One symbol's bucket rings.
struct Rings<'a> {
    trend: &'a mut [Bucket],
    surge: &'a mut [LeanBucket],
}

impl Detect<'_> {
    #[allow(clippy::too_many_arguments, reason = "disjoint borrows of the engine's fields")]
    fn run(
        &self,
        state: &mut SymbolState,
        rings: Rings<'_>,
        ingest: &Ingest,
        t_ns: u64,
        check_high_low: bool,
        out: &mut Output,
        stats: &mut Stats,
        all: &Params,
    ) {
        let (price, volume, ts) = (ingest.bar.close, ingest.bar.volume, ingest.ts);
        let sign = if state.accepted == 0 { 0 } else { (price - state.last_price).signum() };
        if check_high_low {
            let session = &mut state.session;
            let (open, prev) = (session.open, state.last_price);
            let hl = &mut session.high_low;
            if let Some(event) =
                high_low::on_trade(hl, self.params, open, price, prev, volume, t_ns, ts)
            {
                out.push(stats, ingest.symbol, EventBody::HighLow(event));
                stats.high_low_events += 1;
            }
        }
        state.trend.record(self.trend_shape, rings.trend, t_ns, price, volume, sign);
        let input = TrendInput {
            price,
            day_volume: state.session.volume,
            day_pv: state.session.pv.get(),
            t_ns,
            ts,
        };
        let trend_state = &mut state.trend_state;
        if let Some(event) = trend::evaluate(
            trend_state,
            &state.trend,
            self.trend_shape,
            &all.trend,
            self.params,
            &input,
        ) {
            out.push(stats, ingest.symbol, EventBody::Trend(event));
            stats.trend_events += 1;
        }
        state.surge.record(self.surge_shape, rings.surge, t_ns, price, volume, sign);
        let last = &mut state.last_surge;
        if let Some(event) = surge::evaluate(
            last,
            &state.surge,
            self.surge_shape,
            &all.surge,
            self.params,
            price,
            t_ns,
            ts,
        ) {
            out.push(stats, ingest.symbol, EventBody::Surge(event));
            stats.surge_events += 1;
        }
    }
}

/// Prefetches the ring slots that leave each window when a trade at `t_ns` moves the head.
fn prefetch_leaving<const K: usize, S: Slot>(
    ring: &[S],
    shape: &Shape<K>,
    index: usize,
    t_ns: u64,
) {
    let bucket = t_ns / shape.bucket_ns;
    let base = index * shape.ring_len;
    let mask = shape.ring_len - 1;
    let leaving = shape.lengths.map(|length| bucket.wrapping_sub(length));
    for slot in leaving {
        if let Some(bucket) = ring.get(base + (slot as usize & mask)) {
            crate::hint::prefetch_bytes((bucket as *const S).cast(), size_of::<S>());
        }
    }
}

fn ring_of<S>(ring: &mut [S], ring_len: usize, index: usize) -> &mut [S] {
    let start = index * ring_len;
    &mut ring[start..start + ring_len]
}

impl Timer {
    /// The end of the bar this timer was armed for.
    fn end_ns(&self, params: &Params) -> u64 {
        self.due_ns - params.bar_close_grace_ns - stagger(params, SymbolId(self.symbol))
    }
}

/// A symbol's fixed offset in `[0, bar_close_spread)`: the top 32 bits of its id times
/// 2^64/phi (Fibonacci hashing, which spreads consecutive ids evenly), as a fraction of 2^32.
fn stagger(params: &Params, symbol: SymbolId) -> u64 {
    let hash = u64::from(symbol.0).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    ((u128::from(hash) * u128::from(params.bar_close_spread_ns)) >> 32) as u64
}

/// When the clock closes a bar of `symbol` ending at `end_ns`: the end, plus the grace,
/// plus the symbol's [`stagger`].
pub(crate) fn close_due(params: &Params, end_ns: u64, symbol: SymbolId) -> u64 {
    end_ns + params.bar_close_grace_ns + stagger(params, symbol)
}

/// How far ahead of the clock a bar's close can be due: a minute bar opened by a trade
/// `max_future` ahead, plus the grace and the largest stagger.
fn close_horizon(params: &Params) -> u64 {
    Frequency::Minute.width_ns()
        + params.max_future_ns
        + params.bar_close_grace_ns
        + params.bar_close_spread_ns
}

/// Queues a close timer for `builder` unless one is queued already.
fn arm(timers: &mut Timers, builder: &mut BarBuilder, timer: Timer) {
    if !builder.timer_armed {
        builder.timer_armed = true;
        timers.arm(timer);
    }
}

/// An upstream aggregate as our own `A` bar, with this engine's day figures.
fn forwarded_bar(aggregate: &Aggregate, session: &Session) -> Bar {
    let day = session.figures();
    Bar {
        frequency: Frequency::Second,
        start: aggregate.start,
        end: aggregate.end,
        open: aggregate.open,
        high: aggregate.high,
        low: aggregate.low,
        close: aggregate.close,
        volume: aggregate.volume,
        vwap: aggregate.vwap,
        day_volume: Qty(day.volume),
        day_open: Price::from_raw(day.open),
        day_vwap: crate::bars::vwap(day.pv, day.volume),
        avg_size: aggregate.avg_size,
        trades: aggregate.volume.0.checked_div(aggregate.avg_size.0).unwrap_or(1).max(1),
    }
}
