//! Helpers shared by the integration tests: run a pipeline and capture its frames.

#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod nats;
pub mod postgres;
pub mod process;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tickstock_shell::config::Settings;
use tickstock_shell::emitter::CaptureSink;
use tickstock_shell::feed::Feed;
use tickstock_shell::pipeline::{self, Report, TimeMode};

/// Runs `feed` through a pipeline with `settings`; returns the report and every frame.
pub fn run(
    settings: &Settings,
    feed: Box<dyn Feed>,
    time: TimeMode,
) -> (Report, Vec<(u64, String)>) {
    run_with_stop(settings, feed, time, Arc::new(AtomicBool::new(false)))
}

/// As [`run`], with a stop flag the caller may raise.
pub fn run_with_stop(
    settings: &Settings,
    feed: Box<dyn Feed>,
    time: TimeMode,
    stop: Arc<AtomicBool>,
) -> (Report, Vec<(u64, String)>) {
    let sink = CaptureSink::default();
    let frames = Arc::clone(&sink.frames);
    let report = pipeline::run(settings, feed, Box::new(sink), time, stop, |_, _| {})
        .expect("pipeline starts");
    let frames = std::mem::take(&mut *frames.lock().unwrap());
    (report, frames)
}

/// Asserts `seq` runs 1, 2, 3... with no gap and no repeat.
pub fn assert_contiguous(frames: &[(u64, String)]) {
    for (index, (seq, _)) in frames.iter().enumerate() {
        assert_eq!(*seq, index as u64 + 1, "seq is contiguous from 1");
    }
}

/// Settings for a small virtual-time synthetic market.
pub fn virtual_market(trades: u64, seed: u64) -> Settings {
    let mut settings = Settings::default();
    settings.synthetic.symbols = 300;
    settings.synthetic.seed = seed;
    settings.synthetic.virtual_time = true;
    settings.synthetic.trades_max = Some(trades);
    settings.pipeline.stats_interval_ms = 100;
    settings
}
