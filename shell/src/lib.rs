//! TickStock's runtime around the engine core: threads, rings, the emitter, the journal,
//! feeds and the `tickstock` command. The WebSocket server of PROTOCOL.md comes next, on the
//! emitter's frame batches.
//!
//! | module | what it holds |
//! |---|---|
//! | [`pipeline`] | spawns and stops the threads; the only place that does |
//! | [`feed`] | the [`feed::Input`] ring, the synthetic market, journal replay |
//! | [`emitter`] | swap-on-pull, encode once, frame batches, sinks |
//! | [`journal`] | segment format, writer thread, recovery, reader |
//! | [`csv_import`] | `ts,symbol,price,size` files into a journal |
//! | [`config`] | the TOML settings with their defaults |
//! | [`idle`] | spin, yield, back off and park |
//! | [`backoff`] | the reconnect back-off of every outbound link |
//! | [`server`] | the WebSocket server of PROTOCOL.md, `/health` and `/metrics`, on mio |
//! | [`tracer`] | per-stage counters and latency histograms |
//! | [`clock`] | the runtime clock |

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backoff;
pub mod clock;
pub mod config;
pub mod csv_import;
pub mod database;
pub mod emitter;
pub mod feed;
pub mod fuzz_checks;
pub mod idle;
pub mod journal;
pub mod logging;
pub mod nats;
pub mod pipeline;
pub mod server;
pub mod tracer;
