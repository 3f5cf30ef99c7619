//! The journal: every accepted tick, appended to segment files on its own thread.
//!
//! - **Format:** [`codec`]: a header per segment, then records with a length, a kind and a
//!   CRC-32 each. Segments are `<dir>/<index:010>.tsj`, closed and fsynced at
//!   `segment_bytes_max`.
//! - **Writer:** [`writer`] runs on its own thread, fed by its own SPSC ring from the engine
//!   thread. The engine never waits for it.
//! - **Recovery:** at start-up [`recover`] scans the newest segment, truncates a torn or
//!   corrupt tail to the last whole record, and reports what it kept.
//! - **Reading:** [`reader`] walks the segments for replays.
//!
//! # Overflow
//! The engine -> journal ring has `journal.ring_capacity` records. When it is full the engine
//! **drops** the record and counts it (`journal_ring_dropped`); the writer then writes a `Gap`
//! record saying how many records are missing, so a replay knows the journal is incomplete.
//! A disk error is handled the same way (`journal_failed`). Under `on_failure = "shutdown"`
//! either one stops the server instead.

pub mod codec;
pub mod reader;
pub mod writer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The segment files of a journal directory, oldest first.
pub fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let index = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".tsj"))
            .and_then(|stem| stem.parse::<u64>().ok());
        if let Some(index) = index {
            found.push((index, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The path of segment `index`.
pub fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:010}.tsj"))
}

/// What recovery found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments in the directory.
    pub segments: usize,
    /// Whole records kept in the newest segment.
    pub records_kept: u64,
    /// Bytes cut from the newest segment's tail.
    pub bytes_truncated: u64,
    /// Why the tail was cut, if it was.
    pub reason: Option<String>,
    /// Index the next segment gets.
    pub next_index: u64,
}

/// Scans the newest segment of `dir` and truncates a torn or corrupt tail to its last whole
/// record (a segment left with no whole header is removed). Creates `dir` if needed.
pub fn recover(dir: &Path) -> io::Result<Recovery> {
    fs::create_dir_all(dir)?;
    let found = segments(dir)?;
    let mut recovery = Recovery { segments: found.len(), ..Recovery::default() };
    let Some((index, path)) = found.last() else { return Ok(recovery) };
    recovery.next_index = index + 1;
    let bytes = fs::read(path)?;
    let mut records = 0u64;
    let (end, error) = codec::scan(&bytes, |_| records += 1);
    recovery.records_kept = records;
    if end < bytes.len() || error.is_some() {
        recovery.bytes_truncated = (bytes.len() - end) as u64;
        recovery.reason = error.map(|error| error.to_string());
        if end < codec::HEADER_LEN {
            fs::remove_file(path)?;
        } else {
            let file = fs::OpenOptions::new().write(true).open(path)?;
            file.set_len(end as u64)?;
            file.sync_all()?;
        }
    }
    Ok(recovery)
}
