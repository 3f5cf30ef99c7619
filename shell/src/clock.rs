//! The runtime's clock: Unix time in nanoseconds that never goes back.
//!
//! It reads the wall clock once at start-up and adds the monotonic clock's elapsed time to
//! it, so readings on different threads are comparable and ordered (a later reading is never
//! smaller), and an NTP step does not move event time backwards mid-run. The engine core
//! never reads it: the threads that drive the core read it and pass the value in.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tickstock_engine::Timestamp;

/// A monotonic clock anchored to Unix time. Cheap to copy; all copies agree.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    anchor: Instant,
    anchor_unix_ns: u64,
}

impl Clock {
    /// Anchors a clock to the current wall time.
    pub fn new() -> Clock {
        let anchor_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        Clock { anchor: Instant::now(), anchor_unix_ns }
    }

    /// Now, as Unix nanoseconds.
    pub fn now(&self) -> Timestamp {
        let elapsed_ns = u64::try_from(self.anchor.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.anchor_unix_ns.saturating_add(elapsed_ns))
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}
