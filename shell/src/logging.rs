//! The log: `tracing` events, written by `tracing-subscriber` to stderr as text or as JSON
//! lines, with a timestamp, a level, the target and the event's fields.
//!
//! Which events are written: `--log-level` if given, else `RUST_LOG`, else `info`; either
//! takes a level (`debug`) or `tracing-subscriber`'s directives
//! (`info,tickstock_shell::server=debug`). Events never carry a token, key or secret: a
//! connection is named by its peer address and user id, a key by its user.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// `2026-12-01T22:40:00.123456Z  INFO tickstock_shell::server: accepted peer=...`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: want text or json")),
        }
    }
}

/// Installs the process's log writer. `level` (the flag) wins over `RUST_LOG`; a bad filter
/// is an error that names it.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), String> {
    let directives = match level {
        Some(level) => level.to_owned(),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
    };
    let filter = EnvFilter::builder()
        .parse(&directives)
        .map_err(|error| format!("log level {directives:?}: {error}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|error| format!("cannot install the log: {error}"))
}
