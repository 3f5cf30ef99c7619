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
//!
//! Two kinds of wait, two kinds of park:
//!
//! - **Signalled** ([`Idler::idle`], [`Idler::idle_at_most`]): waiting for work that a
//!   producer holding this thread's [`Waker`] signals. After its spins and yields the thread
//!   parks for `park_us_max` at once: the wake comes when the work does, and the timeout only
//!   bounds a wake that was missed. (Parks growing from 20 µs here cost the engine thread
//!   0.15 of a core at 20,000 trades/s, a timed wake-up every few tens of µs between the
//!   feed's messages, for no latency gained: `docs/pipeline.md`.)
//! - **Unsignalled** ([`Idler::idle_unsignalled`], and any wait of a thread no one holds a
//!   [`Waker`] for): waiting for something nobody announces (room in a ring, the emitter
//!   draining the buffer). The parks grow from `park_us_min` to `park_us_max`, so a short
//!   wait ends soon after its cause does.

use std::sync::atomic::{fence, AtomicBool, Ordering};
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
    /// Spin `spins` rounds, then yield `yields` rounds, then park (or until woken): for
    /// `park_us_max` when a producer will wake it, else for a time that doubles from
    /// `park_us_min` to `park_us_max` (the module's doc).
    Backoff {
        /// Rounds of spinning. Default: 8.
        spins: u32,
        /// Rounds of yielding after the spins. Default: 0 (a yield is a system call that,
        /// with the other core busy, gives nothing a park does not).
        yields: u32,
        /// First park of an unsignalled wait, in µs. Default: 20.
        park_us_min: u32,
        /// Longest park, and every park of a signalled wait, in µs. Default: 1,000.
        park_us_max: u32,
    },
}

impl Default for IdleStrategy {
    fn default() -> IdleStrategy {
        IdleStrategy::Backoff { spins: 8, yields: 0, park_us_min: 20, park_us_max: 1_000 }
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
    /// Wakes the consumer if it is parked; a fence and a load otherwise.
    pub fn wake(&self) {
        // The producer published its work (a store to its ring) before calling this; the
        // consumer announces `parked` and then looks for work. Each side's store must be
        // visible before its own load (store→load order, which Release and Acquire do not
        // give, and x86 does not keep without a fence), or both can miss: the producer reads
        // `parked` false from before the consumer's store, the consumer reads the ring from
        // before the producer's, and it parks for its whole timeout with work waiting. The
        // two SeqCst fences (here and in `Idler::park`) forbid that: at least one side sees
        // the other's store.
        fence(Ordering::SeqCst);
        if self.inner.parked.load(Ordering::Relaxed) {
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

    /// Call with the work done this round: resets the back-off after work, waits otherwise,
    /// for work a producer signals (a signalled wait: the module's doc). `has_work` is
    /// re-checked after announcing a park, so a wake-up cannot be missed.
    pub fn idle(&mut self, work_count: usize, has_work: impl Fn() -> bool) {
        if work_count > 0 {
            self.rounds = 0;
            return;
        }
        self.wait(Duration::MAX, has_work, true);
    }

    /// As [`Idler::idle`] with nothing done, but never parking past `limit` (a deadline).
    pub fn idle_at_most(&mut self, limit: Duration, has_work: impl Fn() -> bool) {
        self.wait(limit, has_work, true);
    }

    /// One round of waiting for something no one signals (the engine waiting for the
    /// emitter to drain its buffer): the parks grow from `park_us_min`, whoever holds a
    /// [`Waker`].
    pub fn idle_unsignalled(&mut self) {
        self.wait(Duration::MAX, || false, false);
    }

    /// True when a producer holds this thread's [`Waker`]: it will be woken for work.
    fn woken_by_producer(&self) -> bool {
        Arc::strong_count(&self.waker) > 1
    }

    fn wait(&mut self, limit: Duration, has_work: impl Fn() -> bool, signalled: bool) {
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
                    self.park_us = if signalled && self.woken_by_producer() {
                        park_us_max
                    } else if self.rounds == spins.saturating_add(yields) + 1 {
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
        // The fence pairs with the one in `Waker::wake`; see there.
        self.waker.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !has_work() {
            std::thread::park_timeout(park);
        }
        // Relaxed: only this thread reads the flag as its own state; producers only need
        // to see `true` while we are parked.
        self.waker.parked.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spin and a yield, then parks of 20 µs growing to 80.
    fn idler() -> Idler {
        Idler::new(IdleStrategy::Backoff { spins: 1, yields: 1, park_us_min: 20, park_us_max: 80 })
    }

    /// The parks of `rounds` waits after the spin and the yield.
    fn parks(idler: &mut Idler, rounds: usize, wait: fn(&mut Idler)) -> Vec<u32> {
        idler.idle(1, || true);
        wait(idler);
        wait(idler);
        (0..rounds)
            .map(|_| {
                wait(idler);
                idler.park_us
            })
            .collect()
    }

    fn signalled(idler: &mut Idler) {
        idler.idle(0, || false);
    }

    #[test]
    fn a_wait_no_one_can_signal_parks_longer_each_round_up_to_the_bound() {
        let mut idler = idler();
        assert_eq!(parks(&mut idler, 4, signalled), [20, 40, 80, 80], "no one holds a waker");
    }

    #[test]
    fn a_wait_a_producer_signals_parks_for_the_bound_at_once() {
        let mut idler = idler();
        let waker = idler.waker();
        assert_eq!(parks(&mut idler, 3, signalled), [80, 80, 80], "no timed wake-ups between");
        assert_eq!(parks(&mut idler, 3, Idler::idle_unsignalled), [20, 40, 80]);
        drop(waker);
        assert_eq!(parks(&mut idler, 3, signalled), [20, 40, 80], "no one will wake it now");
    }

    #[test]
    fn a_wake_ends_a_signalled_park_long_before_its_timeout() {
        let mut idler = Idler::new(IdleStrategy::Backoff {
            spins: 0,
            yields: 0,
            park_us_min: 20,
            park_us_max: 1_000_000,
        });
        let waker = idler.waker();
        let started = std::time::Instant::now();
        let producer = std::thread::spawn(move || {
            while !waker.inner.parked.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            waker.wake();
        });
        // A 1 s park, ended by the wake (a spurious wake-up would only end it sooner).
        idler.idle(0, || false);
        producer.join().unwrap();
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    }
}
