//! The multi-frequency buffer: the engine's events, sorted into lanes by how often they come,
//! handed to the emitter through a [`crate::ring::swap`] buffer.
//!
//! | lane | channels | why a lane of its own |
//! |---|---|---|
//! | `per_second` | `T`, `A`, `HL`, `TR`, `SV` | the bulk of the stream |
//! | `per_minute` | `AM` | every symbol's minute bar closes at once; a flood of trades must not crowd them out |
//! | `fmv` | `FMV` | an upstream extra that must not crowd out the engine's own events |
//!
//! Both sets of lanes are allocated at construction. One pull takes all three lanes of one
//! set at once, so they are a consistent cut of the stream: [`Pulled::for_each_in_seq`]
//! merges them back into `seq` order, and nothing with a lower `seq` can still be waiting in
//! the producer's set.
//!
//! # Overflow
//! A lane has a fixed capacity per set. An event that finds its lane full is **dropped** (the
//! newest is refused, as `rtrb`'s `push` refuses) and counted per lane in [`MfBufCounters`];
//! the emitter reports the count, and a client sees the hole as a gap in `seq`, which it can
//! fill with `resume`. Size the lanes for the events of one emitter cycle at peak, which the
//! defaults in [`MfBufConfig`] cover many times over.

use crate::error::ConfigError;
use crate::event::{Event, EventBody, Frequency};
use crate::ring::swap::{self, Set};
use crate::sync::{Arc, AtomicU64, Ordering};

/// The lanes, in the order of [`Lane::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// `T`, `A`, `HL`, `TR`, `SV`, `ACT`.
    PerSecond,
    /// `AM`.
    PerMinute,
    /// `FMV`.
    Fmv,
}

impl Lane {
    /// Number of lanes.
    pub const COUNT: usize = 3;
    /// Every lane, by index.
    pub const ALL: [Lane; Lane::COUNT] = [Lane::PerSecond, Lane::PerMinute, Lane::Fmv];

    /// The lane an event travels in.
    pub fn of(body: &EventBody) -> Lane {
        match body {
            EventBody::Bar(bar) if bar.frequency == Frequency::Minute => Lane::PerMinute,
            EventBody::Fmv(_) => Lane::Fmv,
            _ => Lane::PerSecond,
        }
    }

    /// Position in [`Lane::ALL`] and in counter arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The lane's name in configuration and metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Lane::PerSecond => "per_second",
            Lane::PerMinute => "per_minute",
            Lane::Fmv => "fmv",
        }
    }
}

/// Lane capacities, in events per set (there are two sets).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct MfBufConfig {
    /// `per_second` lane. At 1,000,000 trades/s and 1 ms emitter cycles about 1,300 events
    /// arrive per cycle; the default leaves room for the emitter to be descheduled for tens
    /// of milliseconds. Default: 65,536.
    pub per_second_capacity: u32,
    /// `per_minute` lane. Must hold one bar per symbol: every symbol's minute closes at once.
    /// Default: 16,384 (the default `symbols_max`).
    pub per_minute_capacity: u32,
    /// `fmv` lane. Default: 16,384.
    pub fmv_capacity: u32,
}

impl Default for MfBufConfig {
    fn default() -> MfBufConfig {
        MfBufConfig {
            per_second_capacity: 65_536,
            per_minute_capacity: 16_384,
            fmv_capacity: 16_384,
        }
    }
}

impl MfBufConfig {
    /// Largest capacity of one lane.
    pub const LANE_CAPACITY_MAX: u32 = 1 << 24;

    /// Checks the capacities against each other and against the engine's `symbols_max`.
    pub fn validate(&self, symbols_max: u32) -> Result<(), ConfigError> {
        for (field, value) in [
            ("mfbuf.per_second_capacity", self.per_second_capacity),
            ("mfbuf.per_minute_capacity", self.per_minute_capacity),
            ("mfbuf.fmv_capacity", self.fmv_capacity),
        ] {
            if value == 0 || value > Self::LANE_CAPACITY_MAX {
                return Err(ConfigError::OutOfRange {
                    field,
                    value: f64::from(value),
                    min: 1.0,
                    max: f64::from(Self::LANE_CAPACITY_MAX),
                });
            }
        }
        if self.per_minute_capacity < symbols_max {
            return Err(ConfigError::Inconsistent {
                field: "mfbuf.per_minute_capacity",
                rule: "must be at least symbols_max: every symbol's minute bar closes at once",
            });
        }
        Ok(())
    }

    fn capacity(&self, lane: Lane) -> usize {
        match lane {
            Lane::PerSecond => self.per_second_capacity as usize,
            Lane::PerMinute => self.per_minute_capacity as usize,
            Lane::Fmv => self.fmv_capacity as usize,
        }
    }
}

/// One set: a fixed-capacity vector per lane.
#[derive(Debug)]
pub struct LaneSet {
    lanes: [Vec<Event>; Lane::COUNT],
}

impl LaneSet {
    fn new(config: &MfBufConfig) -> LaneSet {
        LaneSet { lanes: Lane::ALL.map(|lane| Vec::with_capacity(config.capacity(lane))) }
    }

    /// Events in all lanes.
    pub fn len(&self) -> usize {
        self.lanes.iter().map(Vec::len).sum()
    }

    /// True when no lane holds an event.
    pub fn is_empty(&self) -> bool {
        self.lanes.iter().all(Vec::is_empty)
    }
}

impl Set for LaneSet {
    fn clear(&mut self) {
        self.lanes.iter_mut().for_each(Vec::clear);
    }
}

/// Counters of the buffer, readable from any thread.
#[derive(Debug, Default)]
pub struct MfBufCounters {
    buffered: [AtomicU64; Lane::COUNT],
    dropped: [AtomicU64; Lane::COUNT],
}

impl MfBufCounters {
    /// Events accepted into `lane` since start-up.
    pub fn buffered(&self, lane: Lane) -> u64 {
        // Relaxed: a monotonic statistic; readers need no ordering with the events.
        self.buffered[lane.index()].load(Ordering::Relaxed)
    }

    /// Events refused by a full `lane` since start-up.
    pub fn dropped(&self, lane: Lane) -> u64 {
        // Relaxed: as `buffered`.
        self.dropped[lane.index()].load(Ordering::Relaxed)
    }

    /// Events refused by all lanes.
    pub fn dropped_total(&self) -> u64 {
        Lane::ALL.iter().map(|&lane| self.dropped(lane)).sum()
    }
}

/// Creates the buffer: the engine thread keeps the [`MfProducer`], the emitter the
/// [`MfConsumer`].
pub fn mfbuf(config: &MfBufConfig) -> (MfProducer, MfConsumer, Arc<MfBufCounters>) {
    let (producer, consumer) = swap::swap_buffer(LaneSet::new(config), LaneSet::new(config));
    let counters = Arc::new(MfBufCounters::default());
    let local = Box::new([[0; Lane::COUNT]; 2]);
    (
        MfProducer { inner: producer, counters: Arc::clone(&counters), local },
        MfConsumer { inner: consumer },
        counters,
    )
}

/// The engine thread's side.
#[derive(Debug)]
pub struct MfProducer {
    inner: swap::Producer<LaneSet>,
    counters: Arc<MfBufCounters>,
    /// This thread's running totals (`[buffered, dropped]` per lane), the only writer's copy,
    /// published with plain stores instead of read-modify-writes.
    local: Box<[[u64; Lane::COUNT]; 2]>,
}

impl MfProducer {
    /// Writes a batch of events, in `seq` order, as one batch. Returns how many were dropped
    /// because their lane was full. Never waits, never allocates.
    pub fn publish(&mut self, events: impl IntoIterator<Item = Event>) -> u64 {
        self.publish_with(|lanes| {
            for event in events {
                lanes.push(event);
            }
            lanes.dropped()
        })
    }

    /// Runs `f` as one batch: everything it pushes is taken by the same pull. The engine
    /// thread handles a whole chunk of ticks inside one batch, so the two read-modify-writes
    /// of the swap are paid per chunk, not per event. Keep batches short: a pull that meets
    /// a batch in flight waits for its end.
    pub fn publish_with<R>(&mut self, f: impl FnOnce(&mut LaneWriter<'_>) -> R) -> R {
        let (result, added, dropped) = self.inner.write(|set| {
            let mut writer = LaneWriter { set, added: [0; Lane::COUNT], dropped: [0; Lane::COUNT] };
            let result = f(&mut writer);
            (result, writer.added, writer.dropped)
        });
        let local = &mut self.local;
        for lane in 0..Lane::COUNT {
            local[0][lane] += added[lane];
            local[1][lane] += dropped[lane];
            // Relaxed: statistics; this thread is the only writer.
            self.counters.buffered[lane].store(local[0][lane], Ordering::Relaxed);
            self.counters.dropped[lane].store(local[1][lane], Ordering::Relaxed);
        }
        result
    }
}

/// The open batch of [`MfProducer::publish_with`].
#[derive(Debug)]
pub struct LaneWriter<'a> {
    set: &'a mut LaneSet,
    added: [u64; Lane::COUNT],
    dropped: [u64; Lane::COUNT],
}

impl LaneWriter<'_> {
    /// Appends `event` to its lane; `false` (and counted) when the lane is full.
    pub fn push(&mut self, event: Event) -> bool {
        let lane = Lane::of(&event.body).index();
        let vec = &mut self.set.lanes[lane];
        if vec.len() < vec.capacity() {
            vec.push(event);
            self.added[lane] += 1;
            true
        } else {
            self.dropped[lane] += 1;
            false
        }
    }

    /// Events dropped in this batch so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// The emitter's side.
#[derive(Debug)]
pub struct MfConsumer {
    inner: swap::Consumer<LaneSet>,
}

impl MfConsumer {
    /// Takes everything published so far (see [`swap::Consumer::pull`]); `None` means "try
    /// again": the engine was mid-batch.
    pub fn pull(&mut self) -> Option<Pulled<'_>> {
        self.inner.pull().map(|inner| Pulled { inner })
    }
}

/// The lanes taken by one pull; cleared for reuse when dropped.
#[derive(Debug)]
pub struct Pulled<'a> {
    inner: swap::Pulled<'a, LaneSet>,
}

impl Pulled<'_> {
    /// Events taken.
    pub fn len(&mut self) -> usize {
        self.inner.with(|set| set.len())
    }

    /// True when nothing was taken.
    pub fn is_empty(&mut self) -> bool {
        self.inner.with(|set| set.is_empty())
    }

    /// Calls `f` on every taken event in `seq` order (a merge of the lanes, each of which is
    /// in `seq` order already).
    pub fn for_each_in_seq(&mut self, mut f: impl FnMut(&Event)) {
        self.inner.with(|set| {
            let mut next = [0usize; Lane::COUNT];
            loop {
                let mut best: Option<(usize, u64)> = None;
                for (lane, events) in set.lanes.iter().enumerate() {
                    if let Some(event) = events.get(next[lane]) {
                        if best.is_none_or(|(_, seq)| event.seq < seq) {
                            best = Some((lane, event.seq));
                        }
                    }
                }
                let Some((lane, _)) = best else { break };
                f(&set.lanes[lane][next[lane]]);
                next[lane] += 1;
            }
        });
    }
}
