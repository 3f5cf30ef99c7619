//! TickStock's engine core: trades in, validated bars and detector events out.
//!
//! The core is a pure state machine. It does no I/O, reads no clock, spawns no thread and
//! draws no random number: the caller passes the time into every `handle_*` call and drains
//! the results with `poll_*` (see [`Engine`] for the call order). The same inputs with the
//! same clock values give the same events, every run, which is what makes replays exact.
//!
//! After [`Engine::new`] the per-tick path neither allocates nor frees; `tests/no_alloc.rs`
//! proves it with a counting global allocator.
//!
//! What the engine computes is specified in `shared/DETECTORS.md`; the choices it leaves
//! open are recorded in `docs/detectors.md`.
//!
//! | module | what it holds |
//! |---|---|
//! | [`tick`] | inputs: [`Trade`], [`Quote`], [`Aggregate`], [`Fmv`], fixed-point [`Price`] |
//! | [`event`] | outputs: [`Event`] with `seq`, bars, `HL`, `TR`, `SV`, `FMV` |
//! | [`config`] | [`Config`] with every default, validated into [`Params`] |
//! | [`symbol`] | the fixed-capacity [`SymbolTable`] |
//! | [`calendar`] | trading days and periods through the IANA time-zone database |
//! | [`error`] | `Copy` error enums and the table of what panics |
//! | [`mfbuf`] | the multi-frequency buffer between the engine and the emitter threads |
//! | [`ring`] | the lock-free [`ring::swap`] buffer under it (the only `unsafe` besides the hints) |
//! | [`encode`] | each event's JSON object, as PROTOCOL.md puts it on the wire |
//! | [`hint`] | cache prefetch hints for callers walking their input buffers |

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::too_many_lines)]

pub mod calendar;
pub mod config;
pub mod encode;
pub mod error;
pub mod event;
pub mod hint;
pub mod limits;
pub mod mfbuf;
pub mod ring;
pub mod stats;
pub mod symbol;
pub mod tick;

mod activity;
mod bars;
mod detect;
mod engine;
mod sync;
mod timers;
mod wide;
mod window;

pub use bars::vwap;
pub use calendar::{Period, SessionCalendar, TradingDay};
pub use config::{
    Config, HlBand, Params, PeriodOverrides, SessionHours, SurgeConfig, SurgeMode,
    ThresholdOverrides, Thresholds, TrendConfig,
};
pub use engine::Engine;
pub use error::{ConfigError, RejectReason, TickError};
pub use event::{
    Activity, ActivityLevel, Bar, Channel, Direction, Event, EventBody, Extreme, FairValue,
    Frequency, HighLow, Strength, Surge, SurgeTrigger, Trend, VwapPosition, ACTIVITY_WINDOWS_S,
};
pub use stats::Stats;
pub use symbol::{SymbolNames, SymbolTable, Ticker};
pub use tick::{Aggregate, Fmv, Price, Qty, Quote, SymbolId, Tick, Timestamp, Trade};
