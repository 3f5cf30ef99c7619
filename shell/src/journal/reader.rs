//! Reading a journal back, segment by segment, for replays.

use std::path::{Path, PathBuf};

use super::codec::{self, Record};

/// Why a journal could not be read to its end.
#[derive(Debug)]
pub enum ReadError {
    /// A segment could not be read.
    Io {
        /// The segment.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record in the middle of the journal is damaged. (A torn tail of the newest segment
    /// is not an error: it is where a crash stopped the writer.)
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: usize,
        /// What is wrong with it.
        error: codec::DecodeError,
    },
    /// The directory holds no segment.
    Empty(PathBuf),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            ReadError::Corrupt { path, offset, error } => {
                write!(f, "{} is damaged at byte {offset}: {error}", path.display())
            }
            ReadError::Empty(dir) => write!(f, "no journal segments (*.tsj) in {}", dir.display()),
        }
    }
}

impl std::error::Error for ReadError {}

/// Calls `f` on every record of every segment of `dir`, oldest first, with the segment's
/// index. `f` returns `false` to stop early. A torn tail of the newest segment ends the walk
/// quietly; damage anywhere else is an error (after `f` has seen everything before it).
pub fn for_each(dir: &Path, mut f: impl FnMut(u64, Record<'_>) -> bool) -> Result<(), ReadError> {
    let io = |path: &Path, source| ReadError::Io { path: path.to_owned(), source };
    let found = super::segments(dir).map_err(|source| io(dir, source))?;
    if found.is_empty() {
        return Err(ReadError::Empty(dir.to_owned()));
    }
    let newest = found.len() - 1;
    for (position, (index, path)) in found.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|source| io(path, source))?;
        let mut going = true;
        let (offset, error) = codec::scan(&bytes, |record| {
            if going {
                going = f(*index, record);
            }
        });
        if !going {
            return Ok(());
        }
        if let Some(error) = error {
            let torn_tail =
                position == newest && matches!(error, codec::DecodeError::Truncated { .. });
            if !torn_tail {
                return Err(ReadError::Corrupt { path: path.clone(), offset, error });
            }
        }
    }
    Ok(())
}
