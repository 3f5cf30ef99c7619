//! Compile-time limits of the engine core.
//!
//! Every fixed size in the engine is named here, with its unit and the reason for its value.
//! Runtime limits (symbol capacity, price and size bounds, windows) live in
//! [`crate::config::Config`] instead, validated once at construction.

/// Fixed-point scale of [`crate::Price`]: one unit is a millionth of a dollar.
///
/// DETECTORS.md asks for at least 6 decimal places so that every price comparison is exact;
/// an `i64` at this scale still holds prices up to 9.2 trillion dollars.
pub const PRICE_SCALE: i64 = 1_000_000;

/// Fixed-point scale of ratios and percentages in the resolved configuration (micro-units).
///
/// A threshold of 0.15 % is stored as 150,000; comparisons multiply both sides in `i128`, so
/// no threshold test ever depends on float rounding.
pub const RATIO_SCALE: i64 = 1_000_000;

/// Longest ticker, in bytes (DETECTORS.md: 1-12 characters of `A-Z 0-9 . -`).
pub const SYMBOL_LEN_MAX: usize = 12;

/// Trade condition codes kept per trade; further codes are dropped and counted.
///
/// Ten keeps [`crate::Trade`] at exactly one 64-byte cache line; real trades carry 1-4.
pub const CONDITIONS_MAX: usize = 10;

/// Events one tick can produce: a closed `A`, a closed `AM`, the `T` itself, `HL`, `TR`, `SV`.
pub const EVENTS_PER_TICK_MAX: usize = 6;

/// How far after the next `ACT` boundary a trade may be dated and still be counted by
/// `ACT`, in seconds (`max_future_ms` is 5 s by default; a trade further ahead is counted
/// as uncounted in the engine's stats).
pub const ACTIVITY_AHEAD_S: u64 = 64;

/// Slots of `ACT`'s ring of per-second trade counts: the 300 s window plus
/// [`ACTIVITY_AHEAD_S`], rounded up to a power of two.
pub const ACTIVITY_COUNT_SLOTS: usize = 512;

/// Slots of `ACT`'s ring of per-second symbol bitmaps: the 60 s window plus
/// [`ACTIVITY_AHEAD_S`], rounded up to a power of two. One bitmap is `symbols_max` bits.
pub const ACTIVITY_SEEN_SLOTS: usize = 128;

/// Most `ACT` events one clock step emits: every boundary whose 300 s window can still hold
/// a counted trade (the trailing 300 s and [`ACTIVITY_AHEAD_S`] of the newest), plus the
/// newest due boundary after a silence (`engine/src/activity.rs`).
pub const ACTIVITY_PER_CALL_MAX: usize = 300 + ACTIVITY_AHEAD_S as usize + 2;

/// Number of high/low significance bands (DETECTORS.md table: <1, <5, <25, <100, >=100).
pub const HL_BANDS_COUNT: usize = 5;

/// Trend windows per symbol (short, medium, long).
pub const TREND_WINDOWS_COUNT: usize = 3;

/// Largest bucket ring per symbol and detector, in buckets.
///
/// Bounds per-symbol memory: the default trend ring needs 121 buckets (600 s / 5 s + 1) and
/// the default surge ring 66 (65 s / 1 s + 1); both round up to 128.
pub const WINDOW_BUCKETS_MAX: u64 = 4096;

/// Largest symbol capacity a configuration may ask for.
///
/// Per-symbol state is allocated up front (about 11 KiB of bucket rings per symbol at the
/// default windows), so this caps start-up memory at a few GiB.
pub const SYMBOLS_MAX: u32 = 1 << 20;

/// Width of one slot of the bar-close timer wheel, as a power of two of nanoseconds
/// (2^20 ns, about 1.05 ms).
///
/// The clock moves timers into a small heap one slot at a time, so a slot should hold few
/// timers (about 20 at 20,000 trades/s) and be reached shortly before they fire.
pub const TIMER_SLOT_NS_LOG2: u32 = 20;

/// Fewest slots in the timer wheel.
pub const TIMER_WHEEL_SLOTS_MIN: u64 = 1 << 10;

/// Most slots in the timer wheel (2^17 slots of about 1.05 ms: 137 s, 512 KiB of list
/// heads). The wheel is sized to cover the furthest a bar's close can be due ahead of the
/// clock (a minute bar plus `max_future_ms`, the grace and the spread); a timer beyond it
/// waits in an overflow list that is rescanned once per revolution.
pub const TIMER_WHEEL_SLOTS_MAX: u64 = 1 << 17;

const _: () = assert!(PRICE_SCALE == RATIO_SCALE);
const _: () = assert!(WINDOW_BUCKETS_MAX.is_power_of_two());
const _: () = assert!(SYMBOL_LEN_MAX <= u8::MAX as usize);
const _: () = assert!(SYMBOLS_MAX as u64 * 2 < u32::MAX as u64, "timer nodes are u32 indexes");

/// Largest JSON object [`crate::encode::encode_event`] writes for one event, in bytes.
///
/// The worst case (a `T` with a 12-character ticker, every number at its widest and ten
/// conditions) is about 330 bytes; a test in `encode.rs` builds it. The emitter keeps this
/// much room in its batch before encoding, so encoding never grows a buffer.
pub const EVENT_JSON_BYTES_MAX: usize = 512;
