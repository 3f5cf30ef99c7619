//! Trailing time windows over UTC-aligned buckets, with O(1) cost per trade.
//!
//! A [`Windows`] is `K` trailing windows of one symbol, each `n_k` buckets long, that end at
//! the newest bucket: window `k` covers buckets `(head - n_k, head]`. Each keeps running sums
//! (volume, price x volume, signed volume) and `price_ref`, the last price at or before its
//! start (the close of the newest bucket that has left it, or the symbol's first price while
//! it warms up). The newest bucket lives in the [`Windows`] itself; older ones in a ring owned
//! by the caller, one slice per symbol, at least `n_max + 1` long (a power of two), so the
//! bucket leaving the longest window is still readable when the head moves past it.
//!
//! Moving the head by `d` buckets costs `min(d, ring) * K` steps and is the only time the
//! ring is touched; a trade that stays in the head bucket costs `K` additions and touches
//! nothing outside the symbol's state, which matters with thousands of symbols, where each
//! ring line is a cache miss. Both are bounded by constants of the configuration.

use core::fmt::Debug;

use bytemuck::{Pod, Zeroable};

use crate::wide::Wide;

/// What a bucket and its window sums hold. Two kinds: [`Bucket`] (everything the trend
/// detector needs, 40 bytes) and [`LeanBucket`] (volume and last price, all the surge
/// detector needs, 16 bytes: four to a cache line, so a symbol's consecutive seconds share
/// lines and a trade misses the cache less often).
pub(crate) trait Slot: Copy + Pod + Debug {
    /// The running sums of one window over buckets of this kind.
    type Sum: Copy + Debug + PartialEq;
    /// All sums zero, no reference price.
    const SUM_EMPTY: Self::Sum;
    /// An empty bucket.
    const ZERO: Self;

    /// Adds one trade to the bucket.
    fn add(&mut self, price: i64, volume: u64, sign: i64);
    /// Price of the bucket's last trade, 0 when empty.
    fn last_price(&self) -> i64;
    /// Adds one trade to a window's sums.
    fn sum_add(sum: &mut Self::Sum, price: i64, volume: u64, sign: i64);
    /// Removes a bucket leaving the window; its last price becomes the reference.
    fn sum_remove(sum: &mut Self::Sum, bucket: &Self);
    /// Empty sums whose reference price is `price_ref`.
    fn sum_with_reference(price_ref: i64) -> Self::Sum;
}

/// One trend bucket of one symbol. All zero means "no trade in this bucket".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct Bucket {
    /// Sum of price (raw units) x size; two `u64` halves so the bucket has no padding and can
    /// be allocated zeroed.
    pv: Wide,
    volume: u64,
    signed_volume: i64,
    /// Price of the last trade in the bucket, or 0 for an empty bucket.
    last_price: i64,
}

impl Slot for Bucket {
    type Sum = WindowSum;
    const SUM_EMPTY: WindowSum =
        WindowSum { pv: Wide::ZERO, volume: 0, signed_volume: 0, price_ref: 0 };
    const ZERO: Bucket = Bucket { pv: Wide::ZERO, volume: 0, signed_volume: 0, last_price: 0 };

    fn add(&mut self, price: i64, volume: u64, sign: i64) {
        self.pv += price as u128 * u128::from(volume);
        self.volume += volume;
        self.signed_volume += sign * volume as i64;
        self.last_price = price;
    }

    fn last_price(&self) -> i64 {
        self.last_price
    }

    fn sum_add(sum: &mut WindowSum, price: i64, volume: u64, sign: i64) {
        sum.pv += price as u128 * u128::from(volume);
        sum.volume += volume;
        sum.signed_volume += sign * volume as i64;
    }

    fn sum_remove(sum: &mut WindowSum, bucket: &Bucket) {
        sum.pv -= bucket.pv.get();
        sum.volume -= bucket.volume;
        sum.signed_volume -= bucket.signed_volume;
        if bucket.last_price != 0 {
            sum.price_ref = bucket.last_price;
        }
    }

    fn sum_with_reference(price_ref: i64) -> WindowSum {
        WindowSum { price_ref, ..Self::SUM_EMPTY }
    }
}

/// Running sums of one window of [`Bucket`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WindowSum {
    /// Sum of price (raw units) x size over the window.
    pub(crate) pv: Wide,
    /// Volume over the window.
    pub(crate) volume: u64,
    /// Up-tick volume minus down-tick volume over the window.
    pub(crate) signed_volume: i64,
    /// Last price at or before the window's start (raw units).
    pub(crate) price_ref: i64,
}

/// One surge bucket of one symbol: volume and last price. All zero means "no trade".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(crate) struct LeanBucket {
    volume: u64,
    /// Price of the last trade in the bucket, or 0 for an empty bucket.
    last_price: i64,
}

/// Running sums of one window of [`LeanBucket`]s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeanSum {
    /// Volume over the window.
    pub(crate) volume: u64,
    /// Last price at or before the window's start (raw units).
    pub(crate) price_ref: i64,
}

impl Slot for LeanBucket {
    type Sum = LeanSum;
    const SUM_EMPTY: LeanSum = LeanSum { volume: 0, price_ref: 0 };
    const ZERO: LeanBucket = LeanBucket { volume: 0, last_price: 0 };

    fn add(&mut self, price: i64, volume: u64, _sign: i64) {
        self.volume += volume;
        self.last_price = price;
    }

    fn last_price(&self) -> i64 {
        self.last_price
    }

    fn sum_add(sum: &mut LeanSum, _price: i64, volume: u64, _sign: i64) {
        sum.volume += volume;
    }

    fn sum_remove(sum: &mut LeanSum, bucket: &LeanBucket) {
        sum.volume -= bucket.volume;
        if bucket.last_price != 0 {
            sum.price_ref = bucket.last_price;
        }
    }

    fn sum_with_reference(price_ref: i64) -> LeanSum {
        LeanSum { price_ref, volume: 0 }
    }
}

/// The shape shared by all symbols: bucket width, window lengths, ring length.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape<const K: usize> {
    pub(crate) bucket_ns: u64,
    /// Window lengths in buckets, ascending.
    pub(crate) lengths: [u64; K],
    /// Ring length: a power of two above the longest window.
    pub(crate) ring_len: usize,
}

impl<const K: usize> Shape<K> {
    pub(crate) fn new(bucket_ns: u64, lengths: [u64; K]) -> Shape<K> {
        let longest = lengths.iter().copied().max().unwrap_or(1);
        let ring_len = (longest + 1).next_power_of_two() as usize;
        Shape { bucket_ns, lengths, ring_len }
    }
}

/// The `K` windows of one symbol over buckets of kind `S`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windows<const K: usize, S: Slot> {
    /// Absolute index of the newest bucket (`t / bucket_ns`).
    head: u64,
    /// Absolute index of the symbol's first bucket; `u64::MAX` before its first trade.
    first: u64,
    /// The head bucket, written to the ring when the head moves past it.
    newest: S,
    pub(crate) sums: [S::Sum; K],
}

impl<const K: usize, S: Slot> Windows<K, S> {
    pub(crate) const EMPTY: Windows<K, S> =
        Windows { head: 0, first: u64::MAX, newest: S::ZERO, sums: [S::SUM_EMPTY; K] };

    /// Adds one trade at `t_ns`, which must not be older than the newest one recorded.
    pub(crate) fn record(
        &mut self,
        shape: &Shape<K>,
        ring: &mut [S],
        t_ns: u64,
        price: i64,
        volume: u64,
        sign: i64,
    ) {
        debug_assert!(ring.len() == shape.ring_len, "Invariant: one ring per symbol");
        let bucket = t_ns / shape.bucket_ns;
        if self.first == u64::MAX {
            self.first = bucket;
            self.head = bucket;
            for sum in &mut self.sums {
                *sum = S::sum_with_reference(price);
            }
            ring.fill(S::ZERO);
        } else if bucket > self.head {
            self.advance(shape, ring, bucket);
        }
        debug_assert!(bucket <= self.head, "Invariant: trades are recorded in time order");
        self.newest.add(price, volume, sign);
        for sum in &mut self.sums {
            S::sum_add(sum, price, volume, sign);
        }
    }

    /// Moves the head to `bucket`, removing the buckets that leave each window.
    fn advance(&mut self, shape: &Shape<K>, ring: &mut [S], bucket: u64) {
        let mask = shape.ring_len - 1;
        let steps = bucket - self.head;
        if steps >= shape.ring_len as u64 {
            // Every bucket leaves every window; the newest price becomes every reference.
            let last = self.newest.last_price();
            for sum in &mut self.sums {
                *sum = S::sum_with_reference(last);
            }
            ring.fill(S::ZERO);
        } else {
            ring[(self.head as usize) & mask] = self.newest;
            for entering in self.head + 1..=bucket {
                for (sum, &length) in self.sums.iter_mut().zip(&shape.lengths) {
                    if let Some(leaving) = entering.checked_sub(length) {
                        S::sum_remove(sum, &ring[(leaving as usize) & mask]);
                    }
                }
                // An empty bucket the head skips over. Its slot held the bucket `ring_len`
                // back, which has left every window already (every length is below
                // `ring_len`). The new head's slot is written when the head leaves it.
                if entering < bucket {
                    ring[(entering as usize) & mask] = S::ZERO;
                }
            }
        }
        self.newest = S::ZERO;
        self.head = bucket;
    }

    /// Whether window `k` is full: the symbol's first bucket is its oldest bucket or older.
    pub(crate) fn is_full(&self, shape: &Shape<K>, k: usize) -> bool {
        self.first != u64::MAX && self.first + shape.lengths[k] <= self.head + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_match_a_recount_across_gaps() {
        let shape = Shape::new(10, [2, 3]);
        assert_eq!(shape.ring_len, 4);
        let mut ring = vec![Bucket::default(); shape.ring_len];
        let mut windows = Windows::<2, Bucket>::EMPTY;
        let mut lean_ring = vec![LeanBucket::default(); shape.ring_len];
        let mut lean = Windows::<2, LeanBucket>::EMPTY;
        let trades = [(0, 5, 1), (15, 7, 2), (25, 9, 3), (31, 8, 4), (75, 6, 5), (79, 6, 1)];
        for (i, &(t, price, volume)) in trades.iter().enumerate() {
            windows.record(&shape, &mut ring, t, price, volume, 0);
            lean.record(&shape, &mut lean_ring, t, price, volume, 0);
            for (k, &len) in shape.lengths.iter().enumerate() {
                let head = t / 10;
                let inside = |b: u64| b + len > head && b <= head;
                let expected: u64 =
                    trades[..=i].iter().filter(|x| inside(x.0 / 10)).map(|x| x.2).sum();
                assert_eq!(windows.sums[k].volume, expected, "trade {i} window {k}");
                let before = trades[..=i].iter().rfind(|x| !inside(x.0 / 10));
                let price_ref = before.map_or(trades[0].1, |x| x.1);
                assert_eq!(windows.sums[k].price_ref, price_ref, "trade {i} window {k}");
                assert_eq!(lean.sums[k].volume, expected, "lean: trade {i} window {k}");
                assert_eq!(lean.sums[k].price_ref, price_ref, "lean: trade {i} window {k}");
            }
        }
    }
}
