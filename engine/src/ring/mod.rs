//! Lock-free structures shared between the pipeline's threads. This module and
//! `hint.rs` are the only places in the engine allowed `unsafe` (STYLE habit 6), and
//! every structure here has a loom model test (`tests/loom_*.rs`).
//!
//! The SPSC rings between threads are `rtrb`'s, a well-tested crate; what is written here is
//! the [`swap`] buffer, which `rtrb` does not offer.

pub mod swap;
