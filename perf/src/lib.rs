//! TickStock's capacity-planning load generator (`loadgen`).
//!
//! ```text
//!  source ──▶ player (upstream) ──ws──▶ tickstock serve ──ws──▶ N clients ──▶ HDR, checks
//!  (synthetic,  open-loop schedule        (child process,         (reader threads
//!   journal,    trade id = k)              --feed upstream)        in epoll)
//!   CSV)
//! ```
//!
//! The load generator owns both ends, so it measures true tick-to-client latency: from the
//! moment a trade was *meant* to leave the upstream to the moment a client holds it. See
//! `perf/README.md` for the scenarios and what the figures mean.

#![forbid(unsafe_code)]

pub mod clients;
pub mod disrupt;
pub mod machine;
pub mod report;
pub mod run;
pub mod server;
pub mod source;
pub mod upstream;
pub mod wire;
