//! `tickstock_shell::fuzz_checks::event_log_records` on arbitrary bytes (the property is documented
//! there; `shell/tests/fuzz_corpora.rs` replays the seeds and corpus on stable).
//! Run: `cargo +nightly fuzz run event_log_records fuzz/seeds/event_log_records`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tickstock_shell::fuzz_checks::event_log_records(data));
