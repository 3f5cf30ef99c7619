//! Every fuzz target's seeds and found corpus (`fuzz/seeds/<target>/`, `fuzz/corpus/<target>/`
//! when a run has left one), replayed on stable through the same checks the cargo-fuzz targets
//! run (`tickstock_shell::fuzz_checks`): CI needs no nightly, and a finding that is fixed
//! stays fixed once its input is in `fuzz/seeds/`.

use std::path::Path;

use tickstock_shell::fuzz_checks;

/// Runs `check` on every file of the target's seed and corpus directories; returns how many.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = 0;
    for dir in [fuzz.join("seeds").join(target), fuzz.join("corpus").join(target)] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let data = std::fs::read(path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails its check", path.display());
            inputs += 1;
        }
    }
    assert!(inputs > 0, "{target}: no seeds in fuzz/seeds/{target}");
    inputs
}

#[test]
fn journal_scan() {
    replay("journal_scan", fuzz_checks::journal_scan);
}

#[test]
fn feed_parse() {
    replay("feed_parse", fuzz_checks::feed_parse);
}

#[test]
fn http_request() {
    replay("http_request", fuzz_checks::http_request);
}

#[test]
fn client_actions() {
    replay("client_actions", fuzz_checks::client_actions);
}

#[test]
fn ws_frames() {
    replay("ws_frames", fuzz_checks::ws_frames);
}

#[test]
fn inflate() {
    replay("inflate", fuzz_checks::inflate);
}

#[test]
fn csv_import() {
    replay("csv_import", fuzz_checks::csv_import);
}

#[test]
fn settings_toml() {
    replay("settings_toml", fuzz_checks::settings_toml);
}

#[test]
fn nats_batch() {
    replay("nats_batch", fuzz_checks::nats_batch);
}

#[test]
fn event_log_records() {
    replay("event_log_records", fuzz_checks::event_log_records);
}
