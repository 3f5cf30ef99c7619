//! `tickstock`: the TickStock command. `tickstock serve` (the default) runs the synthetic
//! market through the engine and emits its events; `record`, `replay` and `import-csv` work
//! with the journal; `config` prints every setting, `check-config` checks a file.
//!
//! Settings, highest first: flags, `TICKSTOCK_<SECTION>__<KEY>` variables, the file, the
//! defaults (`docs/operations.md`).

#![forbid(unsafe_code)]

use std::io::{self, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tickstock_engine::RejectReason;
use tickstock_shell::config::{FeedSource, Role, Settings, SettingsError};
use tickstock_shell::csv_import::{self, ImportOptions, TsUnit};
use tickstock_shell::database::{schema, DatabaseSink, Link};
use tickstock_shell::emitter::{JsonLinesSink, NullSink};
use tickstock_shell::feed::journal::{JournalFeed, Pace, WarmStart};
use tickstock_shell::feed::synthetic::SyntheticFeed;
use tickstock_shell::feed::upstream::parse::Garbage;
use tickstock_shell::feed::upstream::{read_key, UpstreamFeed, UpstreamStatus, FAILURE_LABELS};
use tickstock_shell::feed::{Feed, FeedEnd};
use tickstock_shell::logging::{self, LogFormat};
use tickstock_shell::pipeline::{self, latency_summary, Observed, Report, TimeMode};
use tickstock_shell::server::auth::Credentials;
use tickstock_shell::server::universes::UniverseFile;
use tickstock_shell::server::{Reporting, Service};
use tickstock_shell::tracer::{Counters, Histograms};

/// Exit code for a configuration or usage error.
const EXIT_CONFIG: u8 = 2;
/// Exit code when the journal stopped the server (`on_failure = "shutdown"`).
const EXIT_JOURNAL: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "tickstock", version, about = "Real-time trades in; bars and market events out.")]
struct Cli {
    /// Configuration file (TOML). Every setting has a default; `tickstock config` prints them.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// No status lines in the log while running.
    #[arg(long, global = true)]
    quiet: bool,
    /// Which log events are written: a level (error, warn, info, debug, trace) or
    /// `tracing` directives (`info,tickstock_shell::server=debug`). Default: `RUST_LOG`,
    /// else info.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log lines as text or as JSON objects.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// The server's listen address (`server.listen`).
    #[arg(long, global = true, value_name = "ADDR")]
    listen: Option<String>,
    /// The upstream feed's URL (`upstream.url`).
    #[arg(long, global = true, value_name = "URL")]
    upstream_url: Option<String>,
    /// The API keys file (`server.api_keys_file`).
    #[arg(long, global = true, value_name = "FILE")]
    api_keys: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the feed through the engine and emit events (the default).
    Serve(ServeArgs),
    /// Run the feed through the engine and journal every accepted trade; no output.
    Record(RecordArgs),
    /// Play a journal through the engine, at its pace, N times it, or flat out.
    Replay(ReplayArgs),
    /// Write trades from a CSV file (ts,symbol,price,size, optionally exchange,id,conditions)
    /// into a journal.
    ImportCsv(ImportArgs),
    /// Print every setting of this run (the file, the environment and the flags over the
    /// defaults), the optional ones as comments that say what they do.
    Config,
    /// Check a configuration file (with the environment and flags, as a run would take it)
    /// without starting anything; exits 2 with the reason if it cannot be used.
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// The PostgreSQL database of `[database]` (`docs/database.md`).
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Create the tables and indexes, or check that they are this version's.
    Init,
    /// Replay a journal through the engine flat out into the database, skipping the rows
    /// already there (same `seq`): mends a gap, or fills a new database.
    Backfill {
        /// Journal directory.
        #[arg(long, value_name = "DIR")]
        journal: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
enum Output {
    /// The WebSocket server of PROTOCOL.md (`server.listen`, default 127.0.0.1:8765), with
    /// `/health` and `/metrics` on the same port.
    #[default]
    Websocket,
    /// One JSON object per line on stdout.
    Stdout,
    /// Discard (the counters and the final report still say what was emitted).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FeedArg {
    /// The built-in synthetic market.
    Synthetic,
    /// The `[upstream]` WebSocket feed (key from the environment or `upstream.key_file`).
    Upstream,
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// Which feed (default: `feed.source` of the configuration, synthetic unless set).
    #[arg(long, value_enum)]
    feed: Option<FeedArg>,
    /// Where events go.
    #[arg(long, value_enum, default_value = "websocket")]
    output: Output,
    /// Also journal accepted trades into this directory.
    #[arg(long, value_name = "DIR")]
    journal: Option<PathBuf>,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS")]
    duration_s: Option<u64>,
    /// What this process is (`nats.role`; default `all`): `ingest` publishes to NATS
    /// JetStream, `gateway` serves clients from it (docs/scale-out.md).
    #[arg(long, value_enum)]
    role: Option<Role>,
}

#[derive(Debug, Args)]
struct RecordArgs {
    /// Which feed (default: `feed.source` of the configuration).
    #[arg(long, value_enum)]
    feed: Option<FeedArg>,
    /// Journal directory (default: `journal.dir` of the configuration).
    #[arg(long, value_name = "DIR")]
    journal: Option<PathBuf>,
    /// Stop after this many trades.
    #[arg(long, value_name = "N")]
    trades: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration_s: Option<u64>,
    /// Generate event time instead of following the clock, as fast as the engine goes.
    #[arg(long)]
    virtual_time: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Journal directory.
    journal: PathBuf,
    /// Times the recorded pace (1 = original).
    #[arg(long, default_value_t = 1.0, conflicts_with = "max")]
    speed: f64,
    /// As fast as the engine goes.
    #[arg(long)]
    max: bool,
    /// Where events go.
    #[arg(long, value_enum, default_value = "stdout")]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TsUnitArg {
    Auto,
    S,
    Ms,
    Us,
    Ns,
}

#[derive(Debug, Args)]
struct ImportArgs {
    /// The CSV file (`-` for stdin).
    file: PathBuf,
    /// Journal directory to write into.
    #[arg(long, value_name = "DIR")]
    journal: PathBuf,
    /// Unit of integer timestamps.
    #[arg(long, value_enum, default_value = "auto")]
    ts_unit: TsUnitArg,
    /// Skip and count bad rows instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// The columns of a file without a header row, in order: ts, symbol, price, size and
    /// optionally exchange, id, conditions (default: a header row if the first row is
    /// column names, else ts,symbol,price,size).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    columns: Option<Vec<String>>,
    /// Add to a journal directory that already holds segments (refused otherwise).
    #[arg(long)]
    append: bool,
    /// Round prices with more than 6 decimals (refused otherwise).
    #[arg(long)]
    round: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = logging::init(cli.log_level.as_deref(), cli.log_format) {
        eprintln!("tickstock: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let file = match &cli.command {
        Some(Command::CheckConfig { file }) => Some(file.as_path()),
        _ => cli.config.as_deref(),
    };
    let mut settings = match settings_of(&cli, file) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    if let Err(error) = watch_signals(Arc::clone(&stop)) {
        tracing::error!(%error, "cannot install signal handlers");
        return ExitCode::FAILURE;
    }
    let quiet = cli.quiet;
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            if let Some(dir) = args.journal {
                settings.journal.enabled = true;
                settings.journal.dir = dir;
            }
            stop_after(args.duration_s, &stop);
            if let Some(role) = args.role {
                settings.nats.role = role;
            }
            if settings.nats.role == Role::Gateway {
                return serve_gateway(&settings, stop);
            }
            if settings.nats.role == Role::Ingest && args.output != Output::Websocket {
                tracing::error!(
                    "--role ingest publishes what the server emits: --output websocket"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            serve_or_record(&settings, args.feed, args.output, stop, quiet)
        }
        Command::Record(args) => {
            settings.journal.enabled = true;
            if let Some(dir) = args.journal {
                settings.journal.dir = dir;
            }
            settings.synthetic.trades_max = args.trades.or(settings.synthetic.trades_max);
            settings.synthetic.virtual_time |= args.virtual_time;
            stop_after(args.duration_s, &stop);
            serve_or_record(&settings, args.feed, Output::None, stop, quiet)
        }
        Command::Replay(args) => {
            if !(args.speed.is_finite() && args.speed > 0.0) {
                tracing::error!("--speed must be a positive number, got {}", args.speed);
                return ExitCode::from(EXIT_CONFIG);
            }
            settings.journal.enabled = false;
            let pace = if args.max { Pace::Max } else { Pace::Speed(args.speed) };
            let wake = Duration::from_micros(settings.journal.replay_pace_us.into());
            let feed = Box::new(JournalFeed::new(args.journal, pace).wake_every(wake));
            run(&settings, feed, args.output, TimeMode::Given, stop, quiet, None)
        }
        Command::ImportCsv(args) => import(&settings, &args),
        Command::Config => {
            print!("{}", settings.commented_toml());
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Command::Db(command) => db(&settings, command, stop, quiet),
    }
}

/// `tickstock db init` and `tickstock db backfill`.
fn db(settings: &Settings, command: DbCommand, stop: Arc<AtomicBool>, quiet: bool) -> ExitCode {
    let fail = |message: String| {
        tracing::error!("{message}");
        ExitCode::from(EXIT_CONFIG)
    };
    if settings.database.url.is_none() {
        return fail(
            "database.url is not set (the configuration file or TICKSTOCK_DATABASE__URL)"
                .to_owned(),
        );
    }
    let Ok(timezone) = settings.engine.timezone.parse::<chrono_tz::Tz>() else {
        return fail(format!("unknown engine.timezone {}", settings.engine.timezone));
    };
    match command {
        DbCommand::Init => {
            let link = match Link::new(&settings.database) {
                Ok(link) => link,
                Err(message) => return fail(message),
            };
            let outcome = link
                .connect_plain()
                .map_err(|e| e.to_string())
                .and_then(|mut client| schema::init(&mut client));
            match outcome {
                Ok(schema::Init::Created) => {
                    tracing::info!(
                        "database {}: schema version {} created",
                        link.target,
                        schema::VERSION
                    );
                    ExitCode::SUCCESS
                }
                Ok(schema::Init::Current) => {
                    tracing::info!(
                        "database {}: schema version {} is current",
                        link.target,
                        schema::VERSION
                    );
                    ExitCode::SUCCESS
                }
                Err(why) => fail(format!("database {}: {why}", link.target)),
            }
        }
        DbCommand::Backfill { journal } => {
            let mut settings = settings.clone();
            settings.journal.enabled = false;
            settings.database.init_schema = true;
            let (sink, status) = match DatabaseSink::start(&settings.database, timezone) {
                Ok(started) => started,
                Err(message) => return fail(message),
            };
            let feed = Box::new(JournalFeed::new(journal, Pace::Max));
            let started = std::time::Instant::now();
            let mut last = (0u64, std::time::Instant::now());
            let status_line_of = move |counters: &Counters, histograms: &Histograms| {
                if !quiet {
                    tracing::info!("{}", status_line(counters, histograms, &mut last));
                }
            };
            let report = pipeline::run_observed(
                &settings,
                feed,
                Box::new(sink),
                TimeMode::Given,
                stop,
                status_line_of,
                Observed::default(),
            );
            let c = &status.counters;
            let written = c.rows_written.load(Ordering::Relaxed);
            let already = c.rows_duplicate.load(Ordering::Relaxed);
            tracing::info!(
                "backfill: {written} rows written, {already} already there (same seq), in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            match report {
                Ok(report) if matches!(report.feed_end, FeedEnd::Exhausted) && status.is_up() => {
                    ExitCode::SUCCESS
                }
                Ok(report) => {
                    tracing::error!(
                        "backfill incomplete: {:?}{}",
                        report.feed_end,
                        status.problem().map_or_else(String::new, |p| format!("; {p}"))
                    );
                    ExitCode::FAILURE
                }
                Err(error) => {
                    tracing::error!("{error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The run's settings: the defaults, the file, the environment, then the flags, checked.
fn settings_of(cli: &Cli, file: Option<&std::path::Path>) -> Result<Settings, SettingsError> {
    // `vars_os`: a variable that is not UTF-8 (no setting is) must not panic the start.
    let env = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    let mut settings = Settings::resolve(file, env)?;
    if let Some(listen) = &cli.listen {
        settings.server.listen.clone_from(listen);
    }
    if let Some(url) = &cli.upstream_url {
        settings.upstream.url.clone_from(url);
    }
    if let Some(path) = &cli.api_keys {
        settings.server.api_keys_file = Some(path.clone());
    }
    settings.validated()
}

/// SIGINT or SIGTERM raises `stop`: the threads drain and the run reports. A second one
/// while draining exits at once, saying so. SIGHUP reloads the server's credentials (API
/// keys, JWT key, certificate) and universes; without a server it is logged and ignored.
fn watch_signals(stop: Arc<AtomicBool>) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new().name("tickstock-signals".into()).spawn(move || {
        for signal in signals.forever() {
            let name = match signal {
                SIGINT => "SIGINT",
                SIGTERM => "SIGTERM",
                _ => "SIGHUP",
            };
            if signal == SIGHUP {
                reload(name);
                continue;
            }
            // Relaxed: a polled flag.
            if stop.swap(true, Ordering::Relaxed) {
                tracing::error!(signal = name, "second signal while draining: exiting now");
                report_so_far();
                std::process::exit(1);
            }
            tracing::info!(signal = name, "stopping: draining the pipeline (again to force)");
        }
    })?;
    Ok(())
}

/// The server's credentials, once it runs: what SIGHUP reloads.
static RELOADABLE: std::sync::OnceLock<Arc<Credentials>> = std::sync::OnceLock::new();

/// The server's universes, once it runs: SIGHUP reloads them too.
static UNIVERSES: std::sync::OnceLock<Arc<UniverseFile>> = std::sync::OnceLock::new();

/// SIGHUP: the key file and JWT key read again and swapped in; the log says what changed
/// in counts, never a key. A file that cannot be used is refused; the old ones stay.
fn reload(signal: &str) {
    let Some(credentials) = RELOADABLE.get() else {
        tracing::info!(signal, "nothing to reload: no server is running");
        return;
    };
    if let Some(universes) = UNIVERSES.get() {
        match universes.reload() {
            Ok(count) => tracing::info!(
                signal,
                universes = count,
                "universes reloaded; subscriptions to them follow"
            ),
            Err(error) => {
                tracing::error!(signal, %error, "universes not reloaded; the old ones stay")
            }
        }
    }
    match credentials.reload() {
        Ok(r) => tracing::info!(
            signal,
            keys = r.keys,
            added = r.added,
            removed = r.removed,
            certificate = r.certificate,
            "credentials reloaded; connections of removed keys are closed (1008 key revoked)"
        ),
        Err(error) => {
            tracing::error!(signal, %error, "credentials not reloaded; the old ones stay")
        }
    }
}

/// What `report_so_far` prints, and when the run started: set once a run has started.
static RUNNING: std::sync::OnceLock<(Observed, std::time::Instant)> = std::sync::OnceLock::new();

/// The counters and latencies of a run that was forced to stop before its report: the
/// status line over the whole run, then the latency summary.
fn report_so_far() {
    if let Some((observed, started)) = RUNNING.get() {
        let (c, h) = (&observed.counters, &observed.histograms);
        tracing::info!("so far: received {}", status_line(c, h, &mut (0, *started)));
        for line in latency_summary(h).lines() {
            tracing::info!("{line}");
        }
    }
}

/// `serve` and `record`: the configured feed through the pipeline to `output`.
fn serve_or_record(
    settings: &Settings,
    feed: Option<FeedArg>,
    output: Output,
    stop: Arc<AtomicBool>,
    quiet: bool,
) -> ExitCode {
    match make_feed(settings, feed) {
        Ok((feed, time, upstream)) => {
            let feed = warm_start(settings, feed, time);
            run(settings, feed, output, time, stop, quiet, upstream)
        }
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

type MadeFeed = (Box<dyn Feed>, TimeMode, Option<Arc<UpstreamStatus>>);

/// The live feed, behind a replay of the journal when there is one to continue
/// (`journal.warm_start`). Only for feeds on the runtime clock: a virtual-time market runs
/// its own timeline, which would start before the journal's.
fn warm_start(settings: &Settings, live: Box<dyn Feed>, time: TimeMode) -> Box<dyn Feed> {
    let j = &settings.journal;
    let has_segments = tickstock_shell::journal::segments(&j.dir).is_ok_and(|s| !s.is_empty());
    if j.enabled && j.warm_start && has_segments && time == TimeMode::Live {
        Box::new(WarmStart::new(j.dir.clone(), live))
    } else {
        live
    }
}

/// The feed `serve` and `record` run: the synthetic market or the upstream.
fn make_feed(settings: &Settings, choice: Option<FeedArg>) -> Result<MadeFeed, String> {
    let source = match choice {
        Some(FeedArg::Synthetic) => FeedSource::Synthetic,
        Some(FeedArg::Upstream) => FeedSource::Upstream,
        None => settings.feed.source,
    };
    let heartbeat_ms = settings.pipeline.heartbeat_ms;
    match source {
        FeedSource::Synthetic => {
            let time =
                if settings.synthetic.virtual_time { TimeMode::Given } else { TimeMode::Live };
            Ok((Box::new(SyntheticFeed::new(settings.synthetic.clone(), heartbeat_ms)), time, None))
        }
        FeedSource::Upstream => {
            let key = read_key(&settings.upstream)?;
            let calendar = settings.engine.validate().map_err(|e| e.to_string())?.calendar();
            let status = Arc::new(UpstreamStatus::default());
            let feed = UpstreamFeed::new(
                settings.upstream.clone(),
                key,
                heartbeat_ms,
                calendar,
                settings.engine.symbols_max,
                Arc::clone(&status),
            );
            Ok((Box::new(feed), TimeMode::Live, Some(status)))
        }
    }
}

/// `serve --role gateway`: the server fed by the stream from NATS JetStream.
fn serve_gateway(settings: &Settings, stop: Arc<AtomicBool>) -> ExitCode {
    let observed = Observed::default();
    let reporting = Reporting { observed, upstream: None, feed: "nats", nats: None };
    let started = server_files(settings).and_then(|(credentials, open)| {
        let service = Service::start_gateway(settings, credentials, stop, reporting)
            .map_err(|e| format!("cannot start the gateway on {}: {e}", settings.server.listen))?;
        announce(&service, open);
        tracing::info!(nats = %settings.nats.url, stream = %settings.nats.stream, "gateway: serving the stream");
        Ok(service)
    });
    let service = match started {
        Ok(service) => service,
        Err(message) => {
            tracing::error!("{message}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let counters = service.counters.clone();
    let result = service.wait();
    tracing::info!(
        "gateway: {} accepted, {} messages out ({} events), {} slow-consumer closes",
        counters.total(|c| &c.accepted),
        counters.total(|c| &c.messages_out),
        counters.total(|c| &c.events_out),
        counters.total(|c| &c.slow_consumer_closes)
    );
    match result {
        Ok(report) => match report.feed_end {
            FeedEnd::Failed(why) => {
                tracing::error!("{why}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        },
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the WebSocket server fed by the pipeline.
fn serve(
    settings: &Settings,
    feed: Box<dyn Feed>,
    time: TimeMode,
    stop: Arc<AtomicBool>,
    reporting: Reporting,
    status: impl FnMut(&Counters, &Histograms) + Send + 'static,
) -> Result<Service, String> {
    let (credentials, open) = server_files(settings)?;
    let service = Service::start(settings, credentials, feed, time, stop, reporting, status)
        .map_err(|error| {
            format!("cannot start the server on {}: {error}", settings.server.listen)
        })?;
    announce(&service, open);
    Ok(service)
}

/// The server's credentials (kept for SIGHUP's reload), whether they admit anyone, and its
/// universes file read first for a clear error of its own (the server reads it as it starts).
fn server_files(settings: &Settings) -> Result<(Arc<Credentials>, bool), String> {
    let credentials = Arc::new(Credentials::load(&settings.server)?);
    let open = credentials.current().is_open();
    let _ = RELOADABLE.set(Arc::clone(&credentials));
    UniverseFile::load(&settings.server)?;
    Ok((credentials, open))
}

/// Says where a started server serves (the tests and loadgen read this line).
fn announce(service: &Service, open: bool) {
    let _ = UNIVERSES.set(Arc::clone(&service.universes));
    let address = service.local_addr;
    tracing::info!(
        "serving ws://{address}/stocks, http://{address}/health and http://{address}/metrics"
    );
    if open {
        tracing::warn!("no credentials configured: any token is accepted (loopback only)");
    }
}

fn stop_after(duration_s: Option<u64>, stop: &Arc<AtomicBool>) {
    if let Some(secs) = duration_s {
        let stop = Arc::clone(stop);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            // Relaxed: a polled flag.
            stop.store(true, Ordering::Relaxed);
        });
    }
}

fn run(
    settings: &Settings,
    feed: Box<dyn Feed>,
    output: Output,
    time: TimeMode,
    stop: Arc<AtomicBool>,
    quiet: bool,
    upstream: Option<Arc<UpstreamStatus>>,
) -> ExitCode {
    let mut last = (0u64, std::time::Instant::now());
    let upstream_line = upstream.clone();
    let status = move |counters: &Counters, histograms: &Histograms| {
        if !quiet {
            tracing::info!("{}", status_line(counters, histograms, &mut last));
            if let Some(upstream) = &upstream_line {
                tracing::info!("{}", upstream_report(upstream));
            }
        }
    };
    let observed = Observed::default();
    let _ = RUNNING.set((observed.clone(), std::time::Instant::now()));
    let reporting = Reporting {
        observed: observed.clone(),
        upstream: upstream.clone(),
        feed: feed.name(),
        nats: None,
    };
    let (result, server_counters) = match output {
        Output::Websocket => match serve(settings, feed, time, stop, reporting, status) {
            Ok(service) => {
                let counters = service.counters.clone();
                (service.wait(), Some(counters))
            }
            Err(message) => {
                tracing::error!("{message}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        Output::Stdout => {
            let sink = JsonLinesSink::new(BufWriter::with_capacity(1 << 16, io::stdout()));
            (
                pipeline::run_observed(
                    settings,
                    feed,
                    Box::new(sink),
                    time,
                    stop,
                    status,
                    observed,
                ),
                None,
            )
        }
        Output::None => (
            pipeline::run_observed(
                settings,
                feed,
                Box::new(NullSink),
                time,
                stop,
                status,
                observed,
            ),
            None,
        ),
    };
    let report = match result {
        Ok(report) => report,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(c) = server_counters {
        tracing::info!(
            "server: {} accepted, {} auth ok, {} auth failed, {} messages out ({} bytes, {} events, {} writes), {} slow-consumer closes, {} client errors",
            c.total(|c| &c.accepted), c.total(|c| &c.auth_successes), c.total(|c| &c.auth_failures), c.total(|c| &c.messages_out), c.total(|c| &c.bytes_out), c.total(|c| &c.events_out), c.total(|c| &c.writes), c.total(|c| &c.slow_consumer_closes), c.total(|c| &c.client_errors)
        );
    }
    for line in final_report(&report).lines() {
        tracing::info!("{line}");
    }
    if let Some(upstream) = &upstream {
        tracing::info!("{}", upstream_report(upstream));
    }
    if report.journal_failed {
        return ExitCode::from(EXIT_JOURNAL);
    }
    match report.feed_end {
        FeedEnd::Failed(_) => ExitCode::FAILURE,
        FeedEnd::Exhausted | FeedEnd::Stopped => ExitCode::SUCCESS,
    }
}

fn status_line(c: &Counters, h: &Histograms, last: &mut (u64, std::time::Instant)) -> String {
    let received = c.received.get();
    let rate = (received - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-9);
    *last = (received, std::time::Instant::now());
    let latency = match tickstock_shell::tracer::percentiles(&h.ring_to_frame_ns) {
        Some([p50, p99, _, _]) => {
            format!(", ring->frame p50 {:.1} µs p99 {:.1} µs", p50 as f64 / 1e3, p99 as f64 / 1e3)
        }
        None => String::new(),
    };
    format!(
        "{received} ticks ({rate:.0}/s), {} rejected, {} events, {} emitted, {} dropped, journal {} records{}{latency}",
        c.rejected.get(),
        c.detected.get(),
        c.emitted.get(),
        c.buffer_dropped.get(),
        c.journal_records.get(),
        if c.journal_down.load(Ordering::Relaxed) { " (DOWN)" } else { "" },
    )
}

fn final_report(report: &Report) -> String {
    let c = &report.counters;
    let mut lines =
        vec![format!("stopped after {:.1} s ({})", report.elapsed.as_secs_f64(), report.feed_end)];
    if let Some(recovery) = &report.recovery {
        lines.push(format!(
            "journal recovery: {} segments, kept {} records in the newest, truncated {} bytes{}",
            recovery.segments,
            recovery.records_kept,
            recovery.bytes_truncated,
            recovery.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
        ));
    }
    lines.push(format!(
        "received {}, accepted {}, rejected {}, events {}, buffered {}, buffer dropped {}, pulled {}, encoded {}, emitted {} in {} batches, sink failed {}",
        c.received.get(), c.accepted.get(), c.rejected.get(), c.detected.get(), c.buffered.get(),
        c.buffer_dropped.get(), c.pulled.get(), c.encoded.get(), c.emitted.get(), c.emitted_batches.get(), c.sink_failed.get()
    ));
    let reasons: Vec<String> = RejectReason::ALL
        .iter()
        .filter(|r| c.rejected_by[r.index()].get() > 0)
        .map(|r| format!("{} {}", r.label(), c.rejected_by[r.index()].get()))
        .collect();
    if !reasons.is_empty() {
        lines.push(format!("rejected by reason: {}", reasons.join(", ")));
    }
    if c.journal_records.get() + c.journal_failed.get() + c.journal_ring_dropped.get() > 0 {
        lines.push(format!(
            "journal: {} records, {} bytes, {} fsyncs, {} dropped (ring full), {} failed (disk){}",
            c.journal_records.get(),
            c.journal_bytes.get(),
            c.journal_fsyncs.get(),
            c.journal_ring_dropped.get(),
            c.journal_failed.get(),
            report
                .journal_state
                .last_error
                .as_ref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ));
    }
    lines.push(latency_summary(&report.histograms));
    lines.join("\n")
}

fn upstream_report(status: &UpstreamStatus) -> String {
    let c = &status.counters;
    let get = tickstock_shell::tracer::Counter::get;
    let health = status.health();
    let failures: Vec<String> = FAILURE_LABELS
        .iter()
        .zip(&c.failures)
        .filter(|(_, n)| get(n) > 0)
        .map(|(label, n)| format!("{label} {}", get(n)))
        .collect();
    let garbage: Vec<String> = Garbage::ALL
        .iter()
        .filter(|g| get(&c.garbage[g.index()]) > 0)
        .map(|g| format!("{} {}", g.label(), get(&c.garbage[g.index()])))
        .collect();
    format!(
        "upstream: {}, breaker {}{}; {} connects, {} reconnects, {:.1} s disconnected, {} frames, {} ticks, {} gaps in q; failures: {}; garbage: {}",
        if health.streaming { "streaming" } else { "not streaming" },
        if health.breaker.is_empty() { "closed" } else { health.breaker },
        health.last_failure.map(|f| format!(" (last failure: {f})")).unwrap_or_default(),
        get(&c.connects),
        get(&c.reconnects),
        get(&c.disconnected_ns) as f64 / 1e9,
        get(&c.frames),
        get(&c.ticks),
        get(&c.q_gaps),
        if failures.is_empty() { "none".to_owned() } else { failures.join(", ") },
        if garbage.is_empty() { "none".to_owned() } else { garbage.join(", ") },
    )
}

fn import(settings: &Settings, args: &ImportArgs) -> ExitCode {
    let columns = match &args.columns {
        None => None,
        Some(names) => match csv_import::Column::list(names.iter().map(String::as_str)) {
            Ok(columns) => Some(columns),
            Err(error) => {
                tracing::error!("--columns: {error}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let options = ImportOptions {
        columns,
        append: args.append,
        round: args.round,
        journal_dir: args.journal.clone(),
        ts_unit: match args.ts_unit {
            TsUnitArg::Auto => TsUnit::Auto,
            TsUnitArg::S => TsUnit::Seconds,
            TsUnitArg::Ms => TsUnit::Millis,
            TsUnitArg::Us => TsUnit::Micros,
            TsUnitArg::Ns => TsUnit::Nanos,
        },
        skip_bad: args.skip_bad,
        symbols_max: settings.engine.symbols_max,
        segment_bytes_max: settings.journal.segment_bytes_max,
    };
    let result = if args.file.as_os_str() == "-" {
        csv_import::import(io::stdin().lock(), &options)
    } else {
        match std::fs::File::open(&args.file) {
            Ok(file) => csv_import::import(io::BufReader::new(file), &options),
            Err(error) => {
                tracing::error!("cannot open {}: {error}", args.file.display());
                return ExitCode::FAILURE;
            }
        }
    };
    match result {
        Ok(report) => {
            tracing::info!(
                "imported {} trades of {} symbols into {} segment(s); skipped {} bad rows",
                report.imported,
                report.symbols,
                report.segments.len(),
                report.skipped
            );
            for example in &report.skipped_examples {
                tracing::info!("skipped {example}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!("import failed, nothing written: {error}");
            ExitCode::FAILURE
        }
    }
}
