//! Journal recovery on real files: a writer killed mid-record leaves a torn tail, a bad disk
//! flips bytes; recovery must keep exactly the records that were whole and valid, and a
//! replay must then see exactly those.

mod common;

use std::fs;
use std::path::Path;

use tickstock_shell::feed::synthetic::SyntheticFeed;
use tickstock_shell::journal::codec::{self, Record};
use tickstock_shell::journal::{self, reader};
use tickstock_shell::pipeline::TimeMode;

/// Records a small journal and returns its one segment's bytes.
fn recorded_segment(dir: &Path, trades: u64) -> Vec<u8> {
    let mut settings = common::virtual_market(trades, 3);
    settings.journal.enabled = true;
    settings.journal.dir = dir.to_owned();
    let feed = Box::new(SyntheticFeed::new(settings.synthetic.clone(), 1));
    let (report, _) = common::run(&settings, feed, TimeMode::Given);
    assert_eq!(report.counters.journal_records.get(), trades);
    let segments = journal::segments(dir).unwrap();
    assert_eq!(segments.len(), 1);
    fs::read(&segments[0].1).unwrap()
}

/// Byte offsets where records end.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = vec![codec::HEADER_LEN];
    let mut at = codec::HEADER_LEN;
    while at < bytes.len() {
        at += codec::decode(&bytes[at..]).unwrap().1;
        ends.push(at);
    }
    ends
}

fn ticks_in(dir: &Path) -> u64 {
    let mut ticks = 0;
    reader::for_each(dir, |_, record| {
        ticks += u64::from(matches!(record, Record::Tick(_)));
        true
    })
    .unwrap();
    ticks
}

#[test]
fn truncation_at_every_offset_of_the_last_records_recovers_the_whole_ones() {
    let source = tempfile::tempdir().unwrap();
    let bytes = recorded_segment(source.path(), 2_000);
    let ends = record_ends(&bytes);
    let first_cut = ends[ends.len() - 4];
    for cut in first_cut..=bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(journal::segment_path(dir.path(), 0), &bytes[..cut]).unwrap();
        let recovery = journal::recover(dir.path()).unwrap();
        let whole = ends.iter().rposition(|&end| end <= cut).unwrap();
        assert_eq!(recovery.records_kept, whole as u64, "cut at {cut}");
        assert_eq!(recovery.bytes_truncated, (cut - ends[whole]) as u64, "cut at {cut}");
        assert_eq!(recovery.next_index, 1);
        let kept = fs::read(journal::segment_path(dir.path(), 0)).unwrap();
        assert_eq!(
            kept,
            bytes[..ends[whole]],
            "cut at {cut}: the file is cut to the last whole record"
        );
        // Recovering again finds nothing to do.
        assert_eq!(journal::recover(dir.path()).unwrap().bytes_truncated, 0);
    }
}

#[test]
fn a_flipped_byte_cuts_the_journal_before_the_damaged_record() {
    let source = tempfile::tempdir().unwrap();
    let bytes = recorded_segment(source.path(), 500);
    let ends = record_ends(&bytes);
    let all_ticks = ticks_in(source.path());
    let first = ends[ends.len() - 6];
    for offset in (first..bytes.len()).step_by(5) {
        let mut bad = bytes.clone();
        bad[offset] ^= 0x40;
        let dir = tempfile::tempdir().unwrap();
        fs::write(journal::segment_path(dir.path(), 0), &bad).unwrap();
        let recovery = journal::recover(dir.path()).unwrap();
        let damaged = ends.iter().rposition(|&end| end <= offset).unwrap();
        assert_eq!(recovery.records_kept, damaged as u64, "flip at {offset}");
        assert!(recovery.reason.is_some(), "flip at {offset}");
        let kept_ticks = ticks_in(dir.path());
        let lost_records = (ends.len() - 1 - damaged) as u64;
        assert!(kept_ticks < all_ticks || lost_records == 0, "flip at {offset}");
        assert!(kept_ticks >= all_ticks - lost_records, "flip at {offset}");
    }
}

#[test]
fn damage_in_an_older_segment_is_an_error_not_a_silent_stop() {
    let source = tempfile::tempdir().unwrap();
    let bytes = recorded_segment(source.path(), 300);
    let dir = tempfile::tempdir().unwrap();
    let mut bad = bytes.clone();
    bad[codec::HEADER_LEN + 100] ^= 1;
    fs::write(journal::segment_path(dir.path(), 0), &bad).unwrap();
    fs::write(journal::segment_path(dir.path(), 1), &bytes).unwrap();
    let error = reader::for_each(dir.path(), |_, _| true).unwrap_err().to_string();
    assert!(error.contains("0000000000.tsj") && error.contains("damaged"), "{error}");
}
