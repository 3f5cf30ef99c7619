//! The WebSocket server of PROTOCOL.md. One port serves the stream (`/stocks`, `/v1/stream`),
//! `/health`, `/metrics` and the [`dashboard`] at `/`.
//!
//! The emitter hands each cycle's batch to the [`ServerSink`] ([`sink`]), which shares it with
//! every event loop ([`event_loop`], the only mio user). Each loop's fan-out ([`fanout`])
//! routes the batch through its topic index ([`topics`]) to the groups ([`group`]) that want
//! it: connections with the same delivery share one group, whose events are built into arrays
//! and framed once ([`framing`]) into a stream of shared messages. Each connection is a
//! sans-IO [`Subscriber`](subscriber::Subscriber) with a cursor into its group's stream; its
//! protocol state is a [`Session`](session::Session); what it is told is built in
//! [`status`]. Writes are coalesced by an adaptive linger ([`linger`]) and drained to
//! `WouldBlock` with vectored writes.
//!
//! # Overflow
//! A connection that falls `client_lag_max_bytes` (or `client_lag_max_ms`) behind its
//! group's stream is a slow consumer; its policy (`close`: 4008; `conflate`; `shed`) applies
//! and what it loses is counted. See [`group`] and [`sink`] for the two bounded queues.

pub mod auth;
pub mod dashboard;
pub mod deflate;
pub mod event_log;
pub mod event_loop;
pub mod fanout;
pub mod framing;
pub mod group;
pub mod history;
pub mod http;
pub mod linger;
pub mod metrics;
pub mod service;
pub mod session;
pub mod sink;
pub mod snapshot;
pub mod status;
pub mod subscriber;
pub mod topics;
pub mod transport;
pub mod universes;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::Waker;

use self::auth::Credentials;
use self::event_log::{EventLog, EventLogSettings};
use self::event_loop::{EventLoop, Shared};
use self::metrics::ServerStats;
pub use self::service::{Reporting, Service};
pub use self::sink::{LoopInlet, ServerSink, BATCH_RING_CAPACITY};
use self::subscriber::Users;
use self::universes::UniverseFile;
use crate::config::ServerSettings;
use crate::database::{Database, DatabaseInlet};
use crate::nats::publisher::Publisher;

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    wakers: Vec<Arc<Waker>>,
    /// The server's counters, per event loop.
    pub counters: ServerStats,
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// The universes, for SIGHUP's reload.
    pub universes: Arc<UniverseFile>,
    /// The event log's writer, stopped (drained, fsynced) after the loops.
    event_log: Option<EventLog>,
    /// The database sink, stopped (what it holds written) after the loops.
    database: Option<Database>,
    /// The NATS publisher of an ingest, stopped (what its ring holds published) after the
    /// loops.
    publisher: Option<Publisher>,
}

impl ServerHandle {
    /// Closes every connection (1001 going away) and stops the loops.
    pub fn stop(self) {
        // Relaxed: the loops poll the flag after the wake-ups below.
        self.shared.stop.store(true, Ordering::Relaxed);
        for waker in &self.wakers {
            let _ = waker.wake();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        drop(self.event_log);
        drop(self.database);
        drop(self.publisher);
    }

    /// How the event log is read, when there is one.
    pub fn event_log_reader(&self) -> Option<event_log::EventLogReader> {
        self.event_log.as_ref().map(|log| log.reader.clone())
    }

    /// An ingest's publisher, stopped with the server.
    pub fn set_publisher(&mut self, publisher: Publisher) {
        self.publisher = Some(publisher);
    }
}

/// Event loops for `server.threads`: 0 takes the machine's cores less two (the engine and
/// the emitter), at least one.
pub fn loop_count(settings: &ServerSettings) -> usize {
    match settings.threads {
        0 => {
            let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            cores.saturating_sub(2).max(1)
        }
        n => n as usize,
    }
}

/// Binds the listener and starts the event loops; with `database` (started by the caller),
/// the sink stores every batch there too and the loops answer `/v2/aggs` from it.
pub fn start(
    settings: &ServerSettings,
    credentials: Arc<Credentials>,
    reporting: Reporting,
    batch_bytes: usize,
    database: Option<(Database, DatabaseInlet)>,
) -> io::Result<(ServerSink, ServerHandle)> {
    let address: SocketAddr =
        settings.listen.parse().map_err(|_| io::Error::other("bad server.listen"))?;
    let listener = TcpListener::bind(address)?;
    let local_addr = listener.local_addr()?;
    let threads = loop_count(settings);
    let stats = ServerStats::new(threads);
    let universes = Arc::new(UniverseFile::load(settings).map_err(io::Error::other)?);
    let (event_log, event_log_inlet) = match &settings.event_log_dir {
        Some(dir) => {
            let log_settings = EventLogSettings {
                dir: dir.clone(),
                segment_bytes_max: settings.event_log_segment_bytes_max,
                ring_bytes: settings.event_log_ring_bytes as usize,
                retain_days: settings.event_log_retain_days,
                fsync_interval: Duration::from_millis(settings.event_log_fsync_interval_ms.into()),
                read_slice_bytes: settings.event_log_read_slice_bytes as usize,
            };
            // A warm restart carries on the numbering of the log it finds.
            let continues = reporting.observed.counters.warming.load(Ordering::Acquire);
            let (log, inlet) = EventLog::start(&log_settings, continues).map_err(|e| {
                io::Error::other(format!("server.event_log_dir {}: {e}", dir.display()))
            })?;
            (Some(log), Some(inlet))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared {
        credentials,
        universes: Arc::clone(&universes),
        event_log: event_log.as_ref().map(|log| (log.reader.clone(), Arc::clone(&log.counters))),
        database: database
            .as_ref()
            .map(|(db, _)| (Arc::clone(&db.status), Arc::clone(&db.queries))),
        settings: settings.clone(),
        reporting,
        stats: stats.clone(),
        users: Users::default(),
        ws_count: AtomicUsize::new(0),
        started: Instant::now(),
        stop: Default::default(),
    });
    let (producers, consumers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| rtrb::RingBuffer::new(BATCH_RING_CAPACITY)).unzip();
    let (parts, wakers) = event_loop::parts(threads, listener, consumers)?;
    let mut handles = Vec::with_capacity(threads);
    for part in parts {
        let mut event_loop = EventLoop::new(part, Arc::clone(&shared));
        let name = format!("tickstock-server-{}", handles.len());
        handles.push(std::thread::Builder::new().name(name).spawn(move || event_loop.run())?);
    }
    let inlets = producers
        .into_iter()
        .zip(&wakers)
        .map(|(ring, waker)| LoopInlet { ring, waker: Arc::clone(waker) })
        .collect();
    let history = settings.history_max_events as usize;
    let mut sink = ServerSink::new(inlets, batch_bytes, stats.clone(), history);
    sink.set_event_log(event_log_inlet);
    let (database, database_inlet) =
        database.map_or((None, None), |(db, inlet)| (Some(db), Some(inlet)));
    sink.set_database(database_inlet);
    let handle = ServerHandle {
        threads: handles,
        shared,
        wakers,
        counters: stats,
        local_addr,
        universes,
        event_log,
        database,
        publisher: None,
    };
    Ok((sink, handle))
}
