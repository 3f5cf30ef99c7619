//! The reconnect back-off every outbound link uses (the upstream feed, the database sink,
//! the NATS publisher and gateway consumer): waits that double from a least to a most, and
//! start from the least again after a success. Each user adds what its link needs on top
//! (the upstream: jitter and a floor after a refusal; the database sink: a deadline it polls).

use std::time::Duration;

/// Waits doubling from `min` to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `min`; never waits more than `max` (nor less than `min`).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, step: min }
    }

    /// The wait before the next attempt; the one after it is twice as long, up to `max`.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.step;
        self.step = self.step.saturating_mul(2).min(self.max);
        wait
    }

    /// A success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_most_and_start_again_after_a_success() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(1_000));
        let waits: Vec<Duration> = (0..6).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits, [ms(100), ms(200), ms(400), ms(800), ms(1_000), ms(1_000)]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), ms(100));
        assert_eq!(Backoff::new(ms(50), ms(10)).next_wait(), ms(50), "a most below the least");
    }
}
