//! The journal segment decoder on arbitrary bytes: never panics, never reads past the end,
//! and every record it accepts re-encodes to exactly the bytes it was decoded from.
//! Run: `cargo +nightly fuzz run journal_scan fuzz/seeds/journal_scan`

#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstock_shell::journal::codec;

fuzz_target!(|data: &[u8]| {
    let mut at = codec::HEADER_LEN;
    let (end, _) = codec::scan(data, |record| {
        let mut again = Vec::new();
        codec::encode(&mut again, &record);
        assert_eq!(&data[at..at + again.len()], &again[..], "a record round-trips");
        at += again.len();
    });
    assert!(end <= data.len());
});
