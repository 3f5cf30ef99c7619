//! The circuit breaker and the back-off around the upstream connection. Pure state machines,
//! time passed in, unit-tested without sockets.
//!
//! Breaker: **closed** (connect freely) → after `breaker_failures` consecutive failures
//! **open** (no attempt for `breaker_open_ms`) → **half-open** (one probe) → closed on a
//! session that authenticates, open again on a failure. It always remembers the last
//! failure, so `/health` and the report can say *why* it opened.
//!
//! Back-off between attempts: exponential from `backoff_ms_min` to `backoff_ms_max` with
//! "equal jitter" (half the step fixed, half random), so a fleet of clients does not reconnect
//! in lockstep. `auth_failed` and `max_connections` wait at least `auth_backoff_ms`: retrying a
//! refused key or a full account at once only hammers the vendor.

use std::fmt;
use std::time::Duration;

use crate::backoff::Backoff;

/// Why a connection attempt or session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// TCP, TLS or WebSocket handshake failed.
    Connect(String),
    /// The upstream refused the key.
    AuthFailed,
    /// The upstream says the account has too many connections.
    MaxConnections,
    /// No `connected` or auth answer in time.
    Timeout(&'static str),
    /// The connection dropped or errored mid-stream.
    Disconnected(String),
    /// Nothing arrived for `stale_ms` while the market was open.
    Stale,
    /// A frame over `message_bytes_max` or another protocol violation.
    Protocol(String),
}

impl Failure {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::AuthFailed => "auth_failed",
            Failure::MaxConnections => "max_connections",
            Failure::Timeout(_) => "timeout",
            Failure::Disconnected(_) => "disconnected",
            Failure::Stale => "stale",
            Failure::Protocol(_) => "protocol",
        }
    }

    /// Failures that must not be retried quickly.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Failure::AuthFailed | Failure::MaxConnections)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect(why) => write!(f, "connect failed: {why}"),
            Failure::AuthFailed => f.write_str("auth_failed: the upstream refused the key"),
            Failure::MaxConnections => {
                f.write_str("max_connections: the upstream account has too many connections")
            }
            Failure::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Failure::Disconnected(why) => write!(f, "disconnected: {why}"),
            Failure::Stale => {
                f.write_str("stale: no message within stale_ms while the market is open")
            }
            Failure::Protocol(why) => write!(f, "protocol error: {why}"),
        }
    }
}

/// Breaker states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts allowed.
    Closed,
    /// No attempt until the time given (Unix ns).
    Open {
        /// When the next probe is allowed.
        until_ns: u64,
    },
    /// One probe in progress.
    HalfOpen,
}

impl BreakerState {
    /// Metric label and gauge value.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    state: BreakerState,
    consecutive_failures: u32,
    threshold: u32,
    open_ns: u64,
    /// The failure that last moved it, with its time.
    pub last_failure: Option<(u64, Failure)>,
    /// Times it opened.
    pub opened_count: u64,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `open_ns`.
    pub fn new(threshold: u32, open_ns: u64) -> Breaker {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            threshold,
            open_ns,
            last_failure: None,
            opened_count: 0,
        }
    }

    /// The state at `now_ns` (an open breaker whose time is up is half-open).
    pub fn state(&mut self, now_ns: u64) -> BreakerState {
        if let BreakerState::Open { until_ns } = self.state {
            if now_ns >= until_ns {
                self.state = BreakerState::HalfOpen;
            }
        }
        self.state
    }

    /// A session authenticated: close.
    pub fn on_success(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
    }

    /// An attempt or session failed at `now_ns`.
    pub fn on_failure(&mut self, now_ns: u64, failure: Failure) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        let trips =
            self.state == BreakerState::HalfOpen || self.consecutive_failures >= self.threshold;
        if trips {
            self.state = BreakerState::Open { until_ns: now_ns.saturating_add(self.open_ns) };
            self.opened_count += 1;
        }
        self.last_failure = Some((now_ns, failure));
    }

    /// Consecutive failures so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

/// The upstream's back-off: the shared doubling [`Backoff`] with equal jitter (so that many
/// servers cut off at once do not retry in lockstep) and a floor after a refusal.
#[derive(Debug)]
pub struct Jittered {
    steps: Backoff,
    refusal_ns: u64,
    rng: fastrand::Rng,
}

impl Jittered {
    /// Steps from `min_ns` doubling to `max_ns`; refusals wait at least `refusal_ns`.
    pub fn new(min_ns: u64, max_ns: u64, refusal_ns: u64, seed: u64) -> Jittered {
        let steps = Backoff::new(Duration::from_nanos(min_ns), Duration::from_nanos(max_ns));
        Jittered { steps, refusal_ns, rng: fastrand::Rng::with_seed(seed) }
    }

    /// The wait before the next attempt after `failure`, ns.
    pub fn next(&mut self, failure: &Failure) -> u64 {
        let step = self.steps.next_wait().as_nanos() as u64;
        let half = step / 2;
        let delay = half + self.rng.u64(0..=half);
        if failure.is_refusal() {
            delay.max(self.refusal_ns)
        } else {
            delay
        }
    }

    /// A session ran well: start again from the smallest step.
    pub fn reset(&mut self) {
        self.steps.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_k_failures_probes_and_says_why() {
        let mut breaker = Breaker::new(3, 1_000);
        for now in 0..2 {
            breaker.on_failure(now, Failure::Connect("refused".into()));
            assert_eq!(breaker.state(now), BreakerState::Closed);
        }
        breaker.on_failure(2, Failure::AuthFailed);
        assert_eq!(breaker.state(2), BreakerState::Open { until_ns: 1_002 });
        assert_eq!(breaker.last_failure, Some((2, Failure::AuthFailed)));
        assert_eq!(breaker.state(1_001), BreakerState::Open { until_ns: 1_002 });
        assert_eq!(breaker.state(1_002), BreakerState::HalfOpen);
        // A failed probe opens it again at once.
        breaker.on_failure(1_003, Failure::Stale);
        assert_eq!(breaker.state(1_003), BreakerState::Open { until_ns: 2_003 });
        assert_eq!(breaker.opened_count, 2);
        assert_eq!(breaker.state(2_003), BreakerState::HalfOpen);
        breaker.on_success();
        assert_eq!(breaker.state(2_004), BreakerState::Closed);
        assert_eq!(breaker.consecutive_failures(), 0);
        assert!(breaker.last_failure.as_ref().unwrap().1.to_string().contains("stale"));
    }

    #[test]
    fn backoff_doubles_with_jitter_caps_and_respects_refusals() {
        let mut backoff = Jittered::new(100, 1_000, 5_000, 7);
        let failure = Failure::Disconnected("eof".into());
        let delays: Vec<u64> = (0..8).map(|_| backoff.next(&failure)).collect();
        for (attempt, &delay) in delays.iter().enumerate() {
            let step = (100u64 << attempt).min(1_000);
            assert!((step / 2..=step).contains(&delay), "attempt {attempt}: {delay}");
        }
        assert!(backoff.next(&Failure::AuthFailed) >= 5_000);
        assert!(backoff.next(&Failure::MaxConnections) >= 5_000);
        backoff.reset();
        assert!(backoff.next(&failure) <= 100);
    }
}
