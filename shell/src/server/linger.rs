//! The write linger: how long a group's new messages are held so that members write fewer,
//! larger messages. It adapts to the event loop's measured write rate: none while the loop's
//! socket writes stay under `client_writes_per_sec_max` (few clients: every cycle goes out at
//! once), doubling toward `client_linger_us` while they exceed it (many clients: each write
//! carries several cycles), halving back once they fall below half of it. The latency it adds
//! is part of every latency figure (PROTOCOL.md section 5).

use std::time::{Duration, Instant};

/// How often the write rate is measured, in ms.
const WINDOW_MS: u64 = 100;
/// The smallest linger once it is on, in µs.
const STEP_MIN_US: u32 = 250;

/// The adaptive linger of one event loop.
#[derive(Debug)]
pub struct Linger {
    bound_us: u32,
    writes_per_sec_max: u64,
    current_us: u32,
    window_start: Instant,
    writes_at_start: u64,
}

impl Linger {
    /// A linger of at most `bound_us`, growing while writes pass `writes_per_sec_max`.
    pub fn new(now: Instant, bound_us: u32, writes_per_sec_max: u32) -> Linger {
        Linger {
            bound_us,
            writes_per_sec_max: u64::from(writes_per_sec_max),
            current_us: 0,
            window_start: now,
            writes_at_start: 0,
        }
    }

    /// The linger now.
    pub fn current(&self) -> Duration {
        Duration::from_micros(self.current_us.into())
    }

    /// The linger now, in µs.
    pub fn current_us(&self) -> u32 {
        self.current_us
    }

    /// The loop had made `writes` socket writes in all by `now`; adapts once per window.
    pub fn handle_writes(&mut self, now: Instant, writes: u64) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < Duration::from_millis(WINDOW_MS) {
            return;
        }
        let made = writes.saturating_sub(self.writes_at_start);
        let rate = made as f64 / elapsed.as_secs_f64();
        let max = self.writes_per_sec_max as f64;
        if rate > max {
            self.current_us = (self.current_us * 2).max(STEP_MIN_US).min(self.bound_us);
        } else if rate < max / 2.0 {
            self.current_us /= 2;
            if self.current_us < STEP_MIN_US {
                self.current_us = 0;
            }
        }
        self.window_start = now;
        self.writes_at_start = writes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_linger_grows_under_too_many_writes_and_falls_back() {
        let start = Instant::now();
        let mut linger = Linger::new(start, 5_000, 1_000);
        let step = Duration::from_millis(WINDOW_MS);
        let mut writes = 0;
        let mut now = start;
        let mut seen = Vec::new();
        for _ in 0..8 {
            now += step;
            writes += 500; // 5,000 writes/s: five times the limit.
            linger.handle_writes(now, writes);
            seen.push(linger.current_us());
        }
        assert_eq!(seen, [250, 500, 1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
        // Between half the limit and the limit, it holds.
        now += step;
        writes += 70;
        linger.handle_writes(now, writes);
        assert_eq!(linger.current_us(), 5_000);
        for _ in 0..6 {
            now += step;
            writes += 10; // 100 writes/s.
            linger.handle_writes(now, writes);
        }
        assert_eq!(linger.current_us(), 0, "few writes: no linger");
        // A window not over yet changes nothing.
        linger.handle_writes(now + Duration::from_millis(1), writes + 1_000_000);
        assert_eq!(linger.current_us(), 0);
    }

    #[test]
    fn a_zero_bound_never_lingers() {
        let start = Instant::now();
        let mut linger = Linger::new(start, 0, 1);
        linger.handle_writes(start + Duration::from_secs(1), 1_000_000);
        assert_eq!(linger.current(), Duration::ZERO);
    }
}
