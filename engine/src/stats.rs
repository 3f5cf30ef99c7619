//! Counters of the engine: what came in, what was rejected and why, what went out.
//!
//! Plain integers owned by the engine's thread; the pipeline publishes copies of them.

use crate::error::RejectReason;
use crate::event::Frequency;

/// Engine counters, cumulative since construction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ticks passed to [`crate::Engine::handle_tick`] (accepted or not).
    pub ticks_received: u64,
    /// Trades accepted.
    pub trades_accepted: u64,
    /// Quotes accepted.
    pub quotes_accepted: u64,
    /// Upstream aggregates accepted.
    pub aggregates_accepted: u64,
    /// Fair market values accepted.
    pub fmv_accepted: u64,
    /// Rejections, indexed by [`RejectReason::index`].
    pub rejects: [u64; RejectReason::COUNT],
    /// Inputs too late for their bar, indexed by [`Frequency::index`].
    pub late: [u64; 2],
    /// Bars closed because a later trade of the symbol arrived.
    pub bars_closed_by_trade: u64,
    /// Bars closed because the engine clock passed their end plus the grace.
    pub bars_closed_by_clock: u64,
    /// Bars closed by [`crate::Engine::handle_flush`].
    pub bars_closed_by_flush: u64,
    /// `HL` events.
    pub high_low_events: u64,
    /// `TR` events.
    pub trend_events: u64,
    /// `SV` events.
    pub surge_events: u64,
    /// `ACT` events.
    pub activity_events: u64,
    /// `ACT` boundaries skipped after a silence of over 300 s (all their windows empty).
    pub activity_skipped: u64,
    /// Accepted trades dated too far ahead of the next `ACT` boundary to be counted by it.
    pub activity_uncounted: u64,
    /// Events of every kind handed out by [`crate::Engine::poll_events`] or waiting there.
    pub events: u64,
}

impl Stats {
    /// Rejections for one reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejects[reason.index()]
    }

    /// Rejections for all reasons.
    pub fn rejected_total(&self) -> u64 {
        self.rejects.iter().sum()
    }

    /// Late inputs for one bar frequency.
    pub fn late(&self, frequency: Frequency) -> u64 {
        self.late[frequency.index()]
    }
}
