//! Loom model test of the swap buffer (`src/ring/swap.rs`): every interleaving of one
//! producer writing batches and one consumer pulling delivers each value exactly once, in
//! order, with no data race on the sets (loom's `UnsafeCell` tracking catches those).
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p tickstock-engine --release --test loom_swap`

#![cfg(loom)]

use loom::thread;
use tickstock_engine::ring::swap::swap_buffer;

/// Drives `batches` producer batches of `per_batch` values against a consumer that pulls
/// until it has them all.
fn check(batches: u64, per_batch: u64) {
    loom::model(move || {
        let (mut producer, mut consumer) =
            swap_buffer(Vec::with_capacity(8), Vec::with_capacity(8));
        let total = batches * per_batch;
        let writer = thread::spawn(move || {
            for batch in 0..batches {
                producer.write(|set: &mut Vec<u64>| {
                    for k in 0..per_batch {
                        set.push(batch * per_batch + k);
                    }
                });
            }
        });
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            match consumer.pull() {
                Some(mut pulled) => pulled.with(|set| seen.extend_from_slice(set)),
                None => thread::yield_now(),
            }
            if (seen.len() as u64) < total {
                thread::yield_now();
            }
        }
        writer.join().unwrap();
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        // Nothing is left behind: a final pull (twice, to cover both sets) finds nothing.
        for _ in 0..2 {
            if let Some(mut pulled) = consumer.pull() {
                pulled.with(|set| assert!(set.is_empty()));
            }
        }
    });
}

#[test]
fn one_batch_is_delivered_once() {
    check(1, 2);
}

#[test]
fn three_batches_arrive_in_order_exactly_once() {
    check(3, 1);
}

#[test]
fn two_batches_of_two() {
    check(2, 2);
}
