//! Bars and events in PostgreSQL (`[database]`, `docs/database.md`): the sink that stores
//! them off the real-time path ([`sink`]), the schema ([`schema`]), the rows ([`rows`]), and
//! the Polygon-shaped aggregates endpoint that reads them back ([`aggs`], answered on a
//! small pool of its own, [`pool`]).
//!
//! The engine never waits on the database: the emitter's sink hands each batch's stored
//! events to a byte ring ([`DatabaseInlet`]), and a thread of its own writes them in
//! transactions with binary `COPY`. The database may be down at start, restart or refuse a
//! write: the writer reconnects with back-off, `/health` says `degraded` with the reason,
//! and what the ring holds is written when it returns. Only a wrong address, user, password
//! or database name at start is fatal, with a clear error: waiting would not mend it.

pub mod aggs;
pub mod pool;
pub mod rows;
pub mod schema;
pub mod sink;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::{Client, NoTls};
use tickstock_engine::Channel;

pub use self::sink::DatabaseInlet;
use crate::config::DatabaseSettings;
use crate::emitter::{FrameBatch, FrameSink};
use crate::tracer::SharedHistogram;

/// The channels stored, as a bit set of [`Channel::index`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelSet(u16);

impl ChannelSet {
    /// Whether `channel` is stored.
    pub fn has(self, channel: Channel) -> bool {
        self.0 & (1 << channel.index()) != 0
    }
}

/// `database.channels` checked: known channels, `T` refused (trades are the journal's).
pub fn stored_channels(names: &[String]) -> Result<ChannelSet, String> {
    let mut set = 0u16;
    for name in names {
        match Channel::parse(name) {
            Some(Channel::T) => {
                return Err(
                    "database.channels: T is not stored (trades are in the journal)".to_owned()
                )
            }
            Some(channel) => set |= 1 << channel.index(),
            None => {
                return Err(format!(
                    "database.channels: unknown channel {name:?} (A, AM, HL, TR, SV, FMV, ACT)"
                ))
            }
        }
    }
    if set == 0 {
        return Err("database.channels: name at least one channel".to_owned());
    }
    Ok(ChannelSet(set))
}

/// The connection settings of `url`, with `password` (from a file or `PGPASSWORD`). A URL
/// that holds a password itself is refused: it would sit in a file or a variable anyone
/// reading the settings sees, and in `ps` for a `TICKSTOCK_DATABASE__URL`.
pub fn connect_config(url: &str, password: Option<&str>) -> Result<postgres::Config, String> {
    let mut config = postgres::Config::from_str(url)
        .map_err(|e| format!("database.url is not a PostgreSQL URL or key=value list: {e}"))?;
    if config.get_password().is_some() {
        return Err("database.url holds a password: put it in database.password_file or \
                    PGPASSWORD instead"
            .to_owned());
    }
    if config.get_hosts().is_empty() {
        config.host("127.0.0.1");
    }
    if config.get_user().is_none() {
        config.user("tickstock");
    }
    if config.get_dbname().is_none() {
        config.dbname("tickstock");
    }
    if let Some(password) = password {
        config.password(password);
    }
    Ok(config)
}

/// `user@host:port/dbname`: how the logs and `/health` name the database (never with a
/// password).
pub fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "?".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// A driver error in words: the server's own message when it sent one.
pub fn reason(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                let more = inner.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                source = inner.source();
            }
            text
        }
    }
}

/// Why a connection failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The server is not there or went away: worth retrying.
    Unreachable(String),
    /// The server said no (user, password, database name): waiting will not mend it.
    Refused(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Unreachable(why) | ConnectError::Refused(why) => f.write_str(why),
        }
    }
}

/// How the sink and the query threads reach the database.
#[derive(Clone)]
pub struct Link {
    config: postgres::Config,
    /// The database in words (`user@host:port/dbname`).
    pub target: String,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config holds the password: only the target is shown.
        f.debug_struct("Link").field("target", &self.target).finish()
    }
}

impl Link {
    /// The link of `settings` (the password read from its file or `PGPASSWORD`).
    pub fn new(settings: &DatabaseSettings) -> Result<Link, String> {
        let url = settings.url.as_deref().ok_or("database.url is not set")?;
        let password = match &settings.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("database.password_file {}: {e}", path.display()))?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            None => std::env::var("PGPASSWORD").ok(),
        };
        let mut config = connect_config(url, password.as_deref())?;
        config.connect_timeout(Duration::from_millis(settings.connect_timeout_ms.into()));
        config.application_name("tickstock");
        let target = describe(&config);
        Ok(Link { config, target })
    }

    /// A connection with its staging tables.
    pub fn connect(&self) -> Result<Client, ConnectError> {
        let mut client = self.connect_plain()?;
        client
            .batch_execute(schema::STAGE)
            .map_err(|error| ConnectError::Unreachable(reason(&error)))?;
        Ok(client)
    }

    /// A connection without staging tables (the schema may not exist yet). Only the
    /// server's refusals of who we are or what we ask for are [`ConnectError::Refused`]
    /// (invalid_authorization_specification, invalid_password, invalid_catalog_name); the
    /// rest, a server still starting (57P03) among them, is worth retrying.
    pub fn connect_plain(&self) -> Result<Client, ConnectError> {
        self.config.connect(NoTls).map_err(|error| {
            let why = reason(&error);
            let refused = error.code().is_some_and(|code| {
                let code = code.code();
                code.starts_with("28") || code == "3D000"
            });
            if refused {
                ConnectError::Refused(why)
            } else {
                ConnectError::Unreachable(why)
            }
        })
    }
}

/// The sink's counters (`/metrics`), written by the inlet (the emitter's thread) and the
/// writer.
#[derive(Debug, Default)]
pub struct DatabaseCounters {
    /// Rows inserted.
    pub rows_written: AtomicU64,
    /// Rows skipped because their `seq` was stored already (a retry, a backfill).
    pub rows_duplicate: AtomicU64,
    /// Transactions committed.
    pub flushes: AtomicU64,
    /// Transactions or connections that failed (each retried).
    pub failures: AtomicU64,
    /// Events not stored because the ring was full (`on_overflow = "drop"`).
    pub dropped: AtomicU64,
    /// Gaps logged (each a `seq` range of dropped events).
    pub gaps: AtomicU64,
    /// Times the emitter waited for room (`on_overflow = "wait"`).
    pub ring_waits: AtomicU64,
    /// Events whose JSON the sink could not read (a defect; logged).
    pub unparsed: AtomicU64,
    /// From emission to commit of the last batch's oldest event, ms (gauge).
    pub lag_ms: AtomicU64,
    /// The same for every transaction committed (`database_lag_seconds`), ns: a few a
    /// second, so the lock is uncontended.
    pub lag: SharedHistogram,
}

/// The sink's state, for `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct DatabaseStatus {
    up: AtomicBool,
    problem: Mutex<Option<String>>,
    committed_seq: AtomicU64,
    /// Whether skipped duplicates were logged (once).
    told_duplicates: AtomicBool,
    /// Its counters.
    pub counters: DatabaseCounters,
}

impl DatabaseStatus {
    /// Whether the last write or connection succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// What is wrong, when the database is away.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().map_or(None, |p| p.clone())
    }

    /// The highest `seq` committed.
    pub fn committed_seq(&self) -> u64 {
        self.committed_seq.load(Ordering::Acquire)
    }

    fn set_up(&self) {
        if let Ok(mut problem) = self.problem.lock() {
            *problem = None;
        }
        self.up.store(true, Ordering::Release);
    }

    fn set_down(&self, target: &str, reason: &str) {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        let text = format!("database {target}: {reason}");
        let changed = self.problem.lock().map_or(true, |mut problem| {
            let changed = problem.as_deref() != Some(text.as_str());
            *problem = Some(text.clone());
            changed
        });
        if was_up || changed {
            tracing::warn!("{text}; retrying, events are kept in the ring meanwhile");
        }
    }

    fn committed(&self, rows: &rows::Rows, inserted: u64, now_ms: u64) {
        let c = &self.counters;
        let duplicates = rows.len() as u64 - inserted.min(rows.len() as u64);
        if duplicates > 0 && !self.told_duplicates.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "database: {duplicates} of {} rows had a seq stored already and were skipped \
                 (a retried write, a backfill, or a run without a journal, whose seq starts \
                 again); counted in tickstock_database_rows_total{{outcome=\"duplicate\"}}",
                rows.len()
            );
        }
        c.rows_written.fetch_add(inserted, Ordering::Relaxed);
        c.rows_duplicate.fetch_add(duplicates, Ordering::Relaxed);
        c.flushes.fetch_add(1, Ordering::Relaxed);
        let lag_ms = now_ms.saturating_sub(rows.oldest_emitted_ms);
        c.lag_ms.store(lag_ms, Ordering::Relaxed);
        c.lag.record(lag_ms.saturating_mul(1_000_000));
        self.committed_seq.fetch_max(rows.last_seq, Ordering::AcqRel);
        if !self.is_up() {
            self.set_up();
        }
    }
}

/// A running sink and query pool.
#[derive(Debug)]
pub struct Database {
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    /// The sink's state.
    pub status: Arc<DatabaseStatus>,
    /// The aggregates endpoint's threads.
    pub queries: Arc<pool::QueryPool>,
}

impl Database {
    /// Connects (creating or migrating the schema with `init_schema`) and starts the writer
    /// and the query threads; returns them and the emitter's inlet. A database that is not
    /// reachable yet is no error: the writer retries. One that refuses (user, password,
    /// database name, a newer schema) is.
    pub fn start(
        settings: &DatabaseSettings,
        timezone: chrono_tz::Tz,
    ) -> Result<(Database, DatabaseInlet), String> {
        let channels = stored_channels(&settings.channels)?;
        let link = Link::new(settings)?;
        let status = Arc::new(DatabaseStatus::default());
        let client = match first_connection(&link, settings.init_schema) {
            Ok(client) => {
                status.set_up();
                tracing::info!(
                    "database {}: connected, storing {:?}",
                    link.target,
                    settings.channels
                );
                Some(client)
            }
            Err(ConnectError::Refused(why)) => {
                return Err(format!("database {}: {why}", link.target));
            }
            Err(ConnectError::Unreachable(why)) => {
                status.set_down(&link.target, &why);
                None
            }
        };
        let (producer, consumer) = rtrb::RingBuffer::new(settings.ring_bytes as usize);
        let inlet =
            DatabaseInlet::new(producer, channels, settings.on_overflow, Arc::clone(&status));
        let writer_settings = sink::WriterSettings {
            batch_max_rows: settings.batch_max_rows as usize,
            flush_interval: Duration::from_millis(settings.flush_interval_ms.into()),
            retry_min: Duration::from_millis(settings.retry_ms_min.into()),
            retry_max: Duration::from_millis(settings.retry_ms_max.into()),
            stop_grace: Duration::from_millis(u64::from(settings.retry_ms_max).max(5_000)),
            init_schema: settings.init_schema,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (status, stop, link) = (Arc::clone(&status), Arc::clone(&stop), link.clone());
            std::thread::Builder::new()
                .name("tickstock-db".to_owned())
                .spawn(move || sink::run(consumer, link, client, writer_settings, status, stop))
                .map_err(|e| format!("cannot start the database sink: {e}"))?
        };
        let queries = Arc::new(pool::QueryPool::start(settings, link, timezone, channels)?);
        Ok((Database { stop, writer: Some(writer), status, queries }, inlet))
    }
}

/// Dropping waits for the writer to store what it holds (the emitter has stopped: its inlet
/// is dropped, or going), then stops it and the query threads.
impl Drop for Database {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.queries.stop();
    }
}

/// The emitter's sink straight into the database, for `tickstock db backfill`: every batch
/// waits for room in the ring (nothing is dropped), and [`FrameSink::finish`] waits until
/// the writer has stored everything.
#[derive(Debug)]
pub struct DatabaseSink {
    inlet: Option<DatabaseInlet>,
    database: Option<Database>,
}

impl DatabaseSink {
    /// Starts the database of `settings` (its ring waits when full, whatever `on_overflow`
    /// says); returns the sink and the sink's state, to report on.
    pub fn start(
        settings: &DatabaseSettings,
        timezone: chrono_tz::Tz,
    ) -> Result<(DatabaseSink, Arc<DatabaseStatus>), String> {
        let mut settings = settings.clone();
        settings.on_overflow = crate::config::DatabaseOverflow::Wait;
        settings.query_threads = 1;
        let (database, inlet) = Database::start(&settings, timezone)?;
        let status = Arc::clone(&database.status);
        Ok((DatabaseSink { inlet: Some(inlet), database: Some(database) }, status))
    }
}

impl FrameSink for DatabaseSink {
    fn emit(&mut self, batch: &FrameBatch) -> std::io::Result<()> {
        match self.inlet.as_mut() {
            Some(inlet) => inlet.append(batch),
            None => Err(std::io::Error::other("the database sink has finished")),
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        drop(self.inlet.take());
        drop(self.database.take());
        Ok(())
    }
}

/// The first connection, with the schema created or checked when `init`.
pub fn first_connection(link: &Link, init: bool) -> Result<Client, ConnectError> {
    if init {
        let mut plain = link.connect_plain()?;
        schema::init(&mut plain).map_err(ConnectError::Refused)?;
    }
    link.connect()
}

/// The highest `seq` the tables hold (0 for none).
pub fn stored_seq(client: &mut Client) -> Result<u64, postgres::Error> {
    let row = client.query_one(
        "SELECT greatest((SELECT max(seq) FROM bars), (SELECT max(seq) FROM events), 0)",
        &[],
    )?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}
