//! Idle strategies: what a thread does when it found no work (Aeron's `IdleStrategy`).
//!
//! | strategy | CPU when idle | wake-up latency | when to use |
//! |---|---|---|---|
//! | `spin` | one full core | tens of ns | a core of its own (`isolcpus`, pinned) |
//! | `yield` | a full core, shared | about a µs, more under load | more cores than busy threads |
//! | `backoff` (default) | near zero | spins, then yields, then parks up to `park_us_max` | anything else, and every 2-core machine |
//!
//! On these 2-core machines the pipeline runs four threads (feed, engine, emitter, journal):
//! a spinning thread per stage would starve the rest, so the default backs off to parking.
//! A parked consumer is woken by its producer through [`Waker`] as soon as work arrives, so
//! parking costs a wake-up (a few µs), not the park timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a thread waits for work. Configured per thread in `[pipeline]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", deny_unknown_fields)]
pub enum IdleStrategy {
    /// Busy-spin with a CPU pause hint.
    Spin,
    /// `thread::yield_now` on every idle round.
    Yield,
    /// Spin `spins` rounds, then yield `yields` rounds, then park for a time that doubles
    /// from `park_us_min` to `park_us_max` (or until woken).
    Backoff {
        /// Rounds of spinning. Default: 64.
        spins: u32,
        /// Rounds of yielding after the spins. Default: 16.
        yields: u32,
        /// First park, in µs. Default: 20.
        park_us_min: u32,
        /// Longest park, in µs. Default: 1,000.
        park_us_max: u32,
    },
}

impl Default for IdleStrategy {
    fn default() -> IdleStrategy {
        IdleStrategy::Backoff { spins: 64, yields: 16, park_us_min: 20, park_us_max: 1_000 }
    }
}

impl IdleStrategy {
    /// Checks the parameters.
    pub fn validate(&self, field: &'static str) -> Result<(), String> {
        if let IdleStrategy::Backoff { park_us_min, park_us_max, .. } = *self {
            if park_us_min == 0 || park_us_min > park_us_max || park_us_max > 1_000_000 {
                return Err(format!(
                    "{field}: need 0 < park_us_min <= park_us_max <= 1000000, got {park_us_min} and {park_us_max}"
                ));
            }
        }
        Ok(())
    }
}

/// The wake-up handle a producer uses to unpark a parked consumer.
#[derive(Clone, Debug)]
pub struct Waker {
    inner: Arc<WakerInner>,
}

#[derive(Debug)]
struct WakerInner {
    parked: AtomicBool,
    thread: Thread,
}

impl Waker {
    /// Wakes the consumer if it is parked; a relaxed load otherwise.
    pub fn wake(&self) {
        // SeqCst pairs with the SeqCst store in `Idler::idle`: either the consumer sees the
        // producer's push when it re-checks, or the producer sees `parked` here. A miss is
        // still bounded by the park timeout.
        if self.inner.parked.load(Ordering::SeqCst) {
            self.inner.thread.unpark();
        }
    }
}

/// One thread's idle state machine.
#[derive(Debug)]
pub struct Idler {
    strategy: IdleStrategy,
    rounds: u32,
    park_us: u32,
    waker: Arc<WakerInner>,
}

impl Idler {
    /// An idler for the calling thread.
    pub fn new(strategy: IdleStrategy) -> Idler {
        let waker =
            Arc::new(WakerInner { parked: AtomicBool::new(false), thread: std::thread::current() });
        Idler { strategy, rounds: 0, park_us: 0, waker }
    }

    /// A handle that producers feeding this thread call after they publish work.
    pub fn waker(&self) -> Waker {
        Waker { inner: Arc::clone(&self.waker) }
    }

    /// Call with the work done this round: resets the back-off after work, waits otherwise.
    /// `has_work` is re-checked after announcing a park, so a wake-up cannot be missed.
    pub fn idle(&mut self, work_count: usize, has_work: impl Fn() -> bool) {
        if work_count > 0 {
            self.rounds = 0;
            return;
        }
        self.idle_at_most(Duration::MAX, has_work);
    }

    /// As [`Idler::idle`] with nothing done, but never parking past `limit` (a deadline).
    pub fn idle_at_most(&mut self, limit: Duration, has_work: impl Fn() -> bool) {
        match self.strategy {
            IdleStrategy::Spin => std::hint::spin_loop(),
            IdleStrategy::Yield => std::thread::yield_now(),
            IdleStrategy::Backoff { spins, yields, park_us_min, park_us_max } => {
                self.rounds = self.rounds.saturating_add(1);
                if self.rounds <= spins {
                    std::hint::spin_loop();
                } else if self.rounds <= spins.saturating_add(yields) {
                    std::thread::yield_now();
                } else {
                    self.park_us = if self.rounds == spins.saturating_add(yields) + 1 {
                        park_us_min
                    } else {
                        self.park_us.saturating_mul(2).clamp(park_us_min, park_us_max)
                    };
                    let park = Duration::from_micros(u64::from(self.park_us)).min(limit);
                    self.park(park, has_work);
                }
            }
        }
    }

    fn park(&self, park: Duration, has_work: impl Fn() -> bool) {
        // SeqCst pairs with `Waker::wake`; see there.
        self.waker.parked.store(true, Ordering::SeqCst);
        if !has_work() {
            std::thread::park_timeout(park);
        }
        // Relaxed: only this thread reads the flag as its own state; producers only need
        // to see `true` while we are parked.
        self.waker.parked.store(false, Ordering::Relaxed);
    }
}
