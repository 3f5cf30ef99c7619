//! The upstream message parser on arbitrary bytes: never panics, and reports exactly the
//! elements it handed to the callback.
//! Run: `cargo +nightly fuzz run feed_parse fuzz/seeds/feed_parse`

#![no_main]

use libfuzzer_sys::fuzz_target;
use tickstock_shell::feed::upstream::parse::parse_frame;

fuzz_target!(|data: &[u8]| {
    let mut seen = 0;
    let count = parse_frame(data, &mut |_| seen += 1);
    assert_eq!(count, seen);
});
