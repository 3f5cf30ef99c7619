//! Error types of the engine: small `Copy` enums that carry the numbers, never a `String`.
//!
//! | operation | on bad input |
//! |---|---|
//! | [`crate::Config::validate`], [`crate::Engine::new`] | `Err(ConfigError)` |
//! | [`crate::SymbolTable::intern`] | `Err(RejectReason)` (bad ticker, table full) |
//! | [`crate::Engine::handle_tick`] | `Err(TickError)`; a rejected tick is counted by reason |
//! | [`crate::Engine::handle_clock`], [`crate::Engine::handle_flush`] | `Err(TickError::OutputNotDrained)` |
//!
//! Nothing in the engine panics on input from outside. The only panics are broken internal
//! invariants (`assert!` with an `Invariant:` message) and the event sequence number running
//! past `u64::MAX`, which at ten million events a second takes 58,000 years.

use core::fmt;

/// Why a tick was rejected. Each reason is a label on one counter
/// ([`crate::Stats::rejects`]); see DETECTORS.md "Input validation".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The price was NaN or infinite before conversion to fixed point. Raised by feeds, which
    /// report it through [`crate::Engine::handle_rejected`].
    PriceNotFinite,
    /// The price was zero or negative.
    PriceNotPositive,
    /// The price was above `max_price`.
    PriceTooHigh,
    /// The size was below one share.
    SizeTooSmall,
    /// The size was above `max_size`.
    SizeTooLarge,
    /// The ticker was not 1-12 characters of `A-Z 0-9 . -`.
    BadSymbol,
    /// The ticker was new and the symbol table is full.
    SymbolTableFull,
    /// The symbol id is not below `symbols_max`: a feed bug, not market data.
    UnknownSymbol,
    /// The price moved more than `max_jump_pct` from the symbol's last accepted price.
    PriceJump,
    /// The timestamp is more than `max_future_ms` ahead of the engine clock.
    TooFarInFuture,
    /// The timestamp is more than `max_age_ms` behind the engine clock.
    TooOld,
    /// The timestamp is more than `max_reorder_ms` older than the symbol's newest accepted
    /// trade.
    OutOfOrder,
    /// A quote's bid is above its ask.
    CrossedQuote,
    /// An aggregate is inconsistent: `end <= start`, or `low`/`high` do not bound
    /// `open`/`close`.
    BadAggregate,
}

impl RejectReason {
    /// Every reason, in counter order.
    pub const ALL: [RejectReason; 14] = [
        RejectReason::PriceNotFinite,
        RejectReason::PriceNotPositive,
        RejectReason::PriceTooHigh,
        RejectReason::SizeTooSmall,
        RejectReason::SizeTooLarge,
        RejectReason::BadSymbol,
        RejectReason::SymbolTableFull,
        RejectReason::UnknownSymbol,
        RejectReason::PriceJump,
        RejectReason::TooFarInFuture,
        RejectReason::TooOld,
        RejectReason::OutOfOrder,
        RejectReason::CrossedQuote,
        RejectReason::BadAggregate,
    ];

    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// The Prometheus label value.
    pub const fn label(self) -> &'static str {
        match self {
            RejectReason::PriceNotFinite => "price_not_finite",
            RejectReason::PriceNotPositive => "price_not_positive",
            RejectReason::PriceTooHigh => "price_too_high",
            RejectReason::SizeTooSmall => "size_too_small",
            RejectReason::SizeTooLarge => "size_too_large",
            RejectReason::BadSymbol => "bad_symbol",
            RejectReason::SymbolTableFull => "symbol_table_full",
            RejectReason::UnknownSymbol => "unknown_symbol",
            RejectReason::PriceJump => "price_jump",
            RejectReason::TooFarInFuture => "too_far_in_future",
            RejectReason::TooOld => "too_old",
            RejectReason::OutOfOrder => "out_of_order",
            RejectReason::CrossedQuote => "crossed_quote",
            RejectReason::BadAggregate => "bad_aggregate",
        }
    }

    /// Position in [`RejectReason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What [`crate::Engine::handle_tick`] and friends return instead of processing an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickError {
    /// The tick failed validation; it was counted and changed no state. The caller moves on.
    Rejected(RejectReason),
    /// The events of the previous call were not drained with [`crate::Engine::poll_events`].
    /// Nothing was processed; drain, then call again with the same input.
    OutputNotDrained {
        /// Events still waiting.
        pending_count: usize,
    },
}

impl fmt::Display for TickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TickError::Rejected(reason) => write!(f, "tick rejected: {reason}"),
            TickError::OutputNotDrained { pending_count } => {
                write!(f, "{pending_count} events not drained; call poll_events first")
            }
        }
    }
}

impl std::error::Error for TickError {}

/// A configuration value that cannot work. Returned once, by [`crate::Config::validate`];
/// the fix is to change the named setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConfigError {
    /// A numeric setting is outside its legal range.
    OutOfRange {
        /// The setting's name, as in the configuration file.
        field: &'static str,
        /// The value given.
        value: f64,
        /// Smallest legal value.
        min: f64,
        /// Largest legal value.
        max: f64,
    },
    /// `timezone` is not a name in the IANA time-zone database.
    UnknownTimezone,
    /// A pair of settings contradict each other (for example bands not ascending).
    Inconsistent {
        /// The setting's name.
        field: &'static str,
        /// What must hold.
        rule: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::OutOfRange { field, value, min, max } => {
                write!(f, "setting `{field}` = {value} is outside [{min}, {max}]")
            }
            ConfigError::UnknownTimezone => {
                f.write_str("setting `timezone` is not an IANA time-zone name")
            }
            ConfigError::Inconsistent { field, rule } => {
                write!(f, "setting `{field}` is inconsistent: {rule}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}
