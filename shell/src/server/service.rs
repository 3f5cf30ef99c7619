//! The server fed by a pipeline on a thread of its own: `tickstock serve`, the tests and the
//! perf scenarios start it the same way.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::auth::Credentials;
use super::metrics::ServerStats;
use super::universes::UniverseFile;
use crate::config::Role;
use crate::config::Settings;
use crate::database::Database;
use crate::feed::upstream::UpstreamStatus;
use crate::feed::Feed;
use crate::nats::gateway::Gateway;
use crate::nats::publisher::Publisher;
use crate::nats::NatsStatus;
use crate::pipeline::{self, Observed, Report, StartError, TimeMode};
use crate::tracer::{Counters, Histograms};

/// What the server reports on.
#[derive(Clone, Debug)]
pub struct Reporting {
    /// The pipeline's counters and histograms.
    pub observed: Observed,
    /// The upstream client's status, when the feed is upstream.
    pub upstream: Option<Arc<UpstreamStatus>>,
    /// The feed's [`name`](crate::feed::Feed::name), for `/health` (`nats` on a gateway).
    pub feed: &'static str,
    /// What this process is (`nats.role`), and its NATS side's status unless it is `all`.
    pub nats: Option<(Role, Arc<NatsStatus>)>,
}

/// A server and the pipeline feeding it.
#[derive(Debug)]
pub struct Service {
    /// The address the server listens on.
    pub local_addr: SocketAddr,
    /// The server's counters, per event loop.
    pub counters: ServerStats,
    /// The universes (SIGHUP reloads them).
    pub universes: Arc<UniverseFile>,
    runner: JoinHandle<Result<Report, StartError>>,
}

impl Service {
    /// Starts the server, then the pipeline from `feed` into it. The pipeline stops when the
    /// feed ends or `stop` is raised; then the server closes its connections and stops.
    /// `status` is called every `stats_interval_ms` from the pipeline's thread.
    pub fn start(
        settings: &Settings,
        credentials: Arc<Credentials>,
        feed: Box<dyn Feed>,
        time: TimeMode,
        stop: Arc<AtomicBool>,
        mut reporting: Reporting,
        status: impl FnMut(&Counters, &Histograms) + Send + 'static,
    ) -> io::Result<Service> {
        let batch_bytes = settings.pipeline.emitter_batch_bytes as usize;
        let publishing = match settings.nats.role {
            Role::Gateway => {
                return Err(io::Error::other("a gateway has no feed: Service::start_gateway"))
            }
            Role::All => None,
            Role::Ingest => {
                let nats = Arc::new(NatsStatus::default());
                reporting.nats = Some((Role::Ingest, Arc::clone(&nats)));
                Some(nats)
            }
        };
        // Before the port opens: a client must not slip in ahead of a warm restart's replay.
        pipeline::mark_warm_up(&reporting.observed, feed.as_ref());
        let database = match &settings.database.url {
            Some(_) => {
                let timezone = settings.engine.timezone.parse().map_err(|_| {
                    io::Error::other(format!(
                        "unknown engine.timezone {}",
                        settings.engine.timezone
                    ))
                })?;
                Some(Database::start(&settings.database, timezone).map_err(io::Error::other)?)
            }
            None => None,
        };
        let (mut sink, mut handle) =
            super::start(&settings.server, credentials, reporting.clone(), batch_bytes, database)?;
        if let Some(nats) = publishing {
            let (publisher, inlet) =
                Publisher::start(&settings.nats, nats, handle.event_log_reader())?;
            sink.set_nats(Some(inlet));
            handle.set_publisher(publisher);
        }
        let (local_addr, counters) = (handle.local_addr, handle.counters.clone());
        let universes = Arc::clone(&handle.universes);
        let settings = settings.clone();
        let runner =
            std::thread::Builder::new().name("tickstock-main".to_owned()).spawn(move || {
                let sink = Box::new(sink);
                let observed = reporting.observed;
                let report =
                    pipeline::run_observed(&settings, feed, sink, time, stop, status, observed);
                handle.stop();
                report
            })?;
        Ok(Service { local_addr, counters, universes, runner })
    }

    /// Starts a gateway (`nats.role = "gateway"`): the server, fed by the stream consumed
    /// from JetStream instead of a pipeline, until `stop` is raised.
    pub fn start_gateway(
        settings: &Settings,
        credentials: Arc<Credentials>,
        stop: Arc<AtomicBool>,
        mut reporting: Reporting,
    ) -> io::Result<Service> {
        let batch_bytes = settings.pipeline.emitter_batch_bytes as usize;
        let nats = Arc::new(NatsStatus::default());
        reporting.nats = Some((Role::Gateway, Arc::clone(&nats)));
        reporting.feed = "nats";
        let observed = reporting.observed.clone();
        if settings.server.event_log_dir.is_some() {
            // Before the port opens: no client until the log has what the stream holds.
            observed.counters.warming.store(true, std::sync::atomic::Ordering::Release);
        }
        let (sink, handle) =
            super::start(&settings.server, credentials, reporting, batch_bytes, None)?;
        let (local_addr, counters) = (handle.local_addr, handle.counters.clone());
        let universes = Arc::clone(&handle.universes);
        let gateway = Gateway::start(
            &settings.nats,
            batch_bytes,
            Box::new(sink),
            stop,
            nats,
            Arc::clone(&observed.counters),
        )?;
        let runner =
            std::thread::Builder::new().name("tickstock-main".to_owned()).spawn(move || {
                let started = std::time::Instant::now();
                let result = gateway.wait();
                handle.stop();
                Ok(Report {
                    feed_end: match result {
                        Ok(()) => crate::feed::FeedEnd::Stopped,
                        Err(error) => crate::feed::FeedEnd::Failed(format!("nats: {error}")),
                    },
                    recovery: None,
                    journal_failed: false,
                    journal_state: Default::default(),
                    counters: Arc::clone(&observed.counters),
                    histograms: Arc::clone(&observed.histograms),
                    elapsed: started.elapsed(),
                })
            })?;
        Ok(Service { local_addr, counters, universes, runner })
    }

    /// Waits until the pipeline has ended and the server has stopped.
    pub fn wait(self) -> Result<Report, StartError> {
        self.runner.join().unwrap_or_else(|_| {
            Err(StartError::Spawn(io::Error::other("the pipeline thread panicked")))
        })
    }
}
