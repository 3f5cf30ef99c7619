//! `tickstock_shell::fuzz_checks::nats_batch` on arbitrary bytes (the property is documented there;
//! `shell/tests/fuzz_corpora.rs` replays the seeds and corpus on stable).
//! Run: `cargo +nightly fuzz run nats_batch fuzz/seeds/nats_batch`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tickstock_shell::fuzz_checks::nats_batch(data));
