//! `tickstock_shell::fuzz_checks::csv_import` on arbitrary bytes (the property is documented there;
//! `shell/tests/fuzz_corpora.rs` replays the seeds and corpus on stable).
//! Run: `cargo +nightly fuzz run csv_import fuzz/seeds/csv_import`

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tickstock_shell::fuzz_checks::csv_import(data));
