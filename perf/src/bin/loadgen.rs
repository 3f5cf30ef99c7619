//! `loadgen`: how many trades/s and clients one TickStock server holds inside a latency
//! budget.
//!
//! It plays a Polygon-compatible upstream (from the synthetic market, a journal or a CSV
//! file) into a `tickstock serve --feed upstream` it starts, holds N WebSocket clients on
//! the server, and steps through a grid of client counts and trade rates. Each step is
//! open loop, validated event for event, and reported with HDR percentiles; the run ends
//! with a JSON result file, a table, and an HTML page of plots in `--out`.
//!
//! Run: `cargo build --release -p tickstock-shell -p tickstock-perf && target/release/loadgen`
//! (see `perf/README.md`).

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tickstock_perf::clients::{Pool, Target, Watchlist};
use tickstock_perf::disrupt::{Disruptors, Mix};
use tickstock_perf::machine::{self, Machine};
use tickstock_perf::report::{self, RunResult};
use tickstock_perf::run::{self, Plan, Progress, Rig, Step};
use tickstock_perf::server::{Launch, Server};
use tickstock_perf::source::{Source, SourceSpec};
use tickstock_perf::upstream::{Clock, Command, Player};

/// Exit code: usage or configuration error.
const EXIT_USAGE: u8 = 2;
/// Exit code: the run could not complete (the server died, clients could not connect).
const EXIT_ABORTED: u8 = 3;
/// Exit code: the run completed but is invalid (events lost or altered without a cause).
const EXIT_INVALID: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    about = "TickStock capacity planning: open-loop load, HDR latency, rate and client sweeps."
)]
struct Args {
    /// Client counts to step through (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,200,500,1000,2000,5000,10000")]
    clients: Vec<u32>,
    /// Offered trade rates to step through, trades/s (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,20000,50000,100000,200000,500000,1000000"
    )]
    rates: Vec<u32>,
    /// Seconds of trades per step.
    #[arg(long, default_value_t = 10.0)]
    step_secs: f64,
    /// Seconds of unreported warm-up at the lowest rate and client count.
    #[arg(long, default_value_t = 2.0)]
    warmup_secs: f64,
    /// The latency budget: a step holds if its p99 is at or under this (ms).
    #[arg(long, default_value_t = 10.0)]
    budget_p99_ms: f64,
    /// Steps still run along an axis after the budget broke there (to show the knee).
    #[arg(long, default_value_t = 1)]
    past_knee: u32,
    /// Topics every client subscribes to (default: everything).
    #[arg(long, default_value = "T.*,A.*,AM.*,HL.*,TR.*,SV.*,FMV.*")]
    topics: String,
    /// Watchlists instead of --topics: each client on this many symbols of the source, drawn
    /// per client (the same on every run), on each of --watchlist-channels.
    #[arg(long, value_name = "SYMBOLS")]
    watchlist: Option<usize>,
    /// The channels of each watchlist symbol.
    #[arg(long, value_delimiter = ',', default_value = "T,A,HL")]
    watchlist_channels: Vec<String>,
    /// Slow-consumer policies the clients choose with `options`, in turn by client id
    /// (e.g. close,conflate,shed; default: the server's).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Trades to play: synthetic, synthetic:SYMBOLS, journal:DIR or csv:FILE.
    #[arg(long, default_value = "synthetic")]
    source: SourceSpec,
    /// The `tickstock` binary to start (default: next to this one).
    #[arg(long, value_name = "PATH")]
    tickstock: Option<PathBuf>,
    /// A configuration file for the started server (feed, upstream and listen are set here).
    #[arg(long, value_name = "FILE")]
    server_config: Option<PathBuf>,
    /// Test a server that is already running at this address instead of starting one. Point
    /// its `upstream.url` at `--upstream-listen` and give it `--upstream-key`. Several
    /// (comma-separated): gateways of one ingest (docs/scale-out.md), the clients spread
    /// over them in turn; the report gives each one's latency and CPU, and the total.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    connect: Vec<SocketAddr>,
    /// With `--connect`: the servers' pids, in the same order, for their CPU and memory.
    #[arg(long, value_name = "PID", value_delimiter = ',', requires = "connect")]
    server_pid: Vec<u32>,
    /// Where the player listens for the server's upstream connection.
    #[arg(long, default_value = "127.0.0.1:0")]
    upstream_listen: SocketAddr,
    /// The key the server must send the player (default: a fresh one per run).
    #[arg(long, env = "LOADGEN_UPSTREAM_KEY", hide_env_values = true)]
    upstream_key: Option<String>,
    /// The clients' `auth` token.
    #[arg(long, default_value = "loadgen")]
    token: String,
    /// Each client socket's receive buffer in bytes (`SO_RCVBUF`; 0, the default: the
    /// kernel's autotuning), for experiments with how much the clients' kernel holds.
    #[arg(long, default_value_t = 0)]
    client_receive_bytes: usize,
    /// Reader threads holding the clients.
    #[arg(long, default_value_t = 1)]
    reader_threads: usize,
    /// `deflate`: every measured client offers permessage-deflate (no context takeover) and
    /// fails if the server does not take it; the clients inflate what they receive (each
    /// distinct message once per reader). `none`: plain frames.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
    /// Runs each step this many times in a row (a soak: `--step-secs 60 --repeat 60` is an
    /// hour in one-minute steps, with a row per minute in `-soak.csv`).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Disruptors beside the measured clients: `churn=N,slow=N,resume=N` (see
    /// `perf/README.md`); their resumes are checked for gaps.
    #[arg(long, default_value = "")]
    disrupt: Mix,
    /// Run the disruptors' threads under `SCHED_IDLE`: on a machine they share with the
    /// server they then take only CPU nothing else wants, as if they ran elsewhere, and a
    /// bystander's latency shows what they make the server do (`tools/storms.sh`).
    #[arg(long)]
    disruptors_idle: bool,
    /// Directory for the result file, the HTML report and the server's log.
    #[arg(long, default_value = "perf/results")]
    out: PathBuf,
}

struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn say(&self, text: &str) {
        if self.bar.is_hidden() {
            eprintln!("{text}");
        } else {
            self.bar.println(text);
        }
    }
}

impl Progress for Bar {
    fn step_started(&mut self, index: usize, clients: u32, rate: u32, secs: f64) {
        self.bar.reset();
        self.bar.set_position(0);
        self.bar
            .set_message(format!("step {index}: {clients} clients × {rate} trades/s, {secs} s"));
    }

    fn step_tick(&mut self, fraction: f64) {
        self.bar.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
    }

    fn step_done(&mut self, s: &Step) {
        self.bar.set_position(1000);
        let verdict = if !s.valid {
            format!("INVALID: {}", s.invalid_reasons.join("; "))
        } else if s.within_budget {
            "ok".to_owned()
        } else {
            format!("over: {}", s.breaches.join("; "))
        };
        let limit = s.limit.as_ref().map_or(String::new(), |l| format!(" (limit: {l})"));
        let database = s.database.as_ref().map_or(String::new(), |d| {
            format!("; database: {}", tickstock_perf::report::database(d))
        });
        let nats = s.nats.as_ref().map_or(String::new(), |n| {
            format!("; ingest→gateway: {}", tickstock_perf::report::nats(n))
        });
        let deep = s.disruptors.filter(|t| t.deep_resumes > 0).map_or(String::new(), |t| {
            format!(
                "; deep resumes: {} of {:.0} events each at {:.2} M events/s",
                t.deep_resumes,
                t.deep_events as f64 / t.deep_resumes as f64,
                t.deep_events as f64 / t.deep_micros.max(1) as f64
            )
        });
        let targets: String =
            s.targets.iter().map(|t| format!("; {}", tickstock_perf::report::target(t))).collect();
        let threads = if s.server_threads_cpu.is_empty() {
            String::new()
        } else {
            format!(" ({})", tickstock_perf::report::threads(s))
        };
        self.say(&format!(
            "{:>5} clients {:>8} trades/s: {:>11.0} events/s, p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms, {:.0} B/event on the wire, server {} cores{threads}, RSS {} MiB, readers {:.0} % busy{database}{nats}{deep}{targets}; {verdict}{limit}",
            s.clients,
            s.rate,
            s.delivered_events_per_s,
            s.latency_ms.p50,
            s.latency_ms.p99,
            s.latency_ms.p999,
            s.latency_ms.max,
            s.wire_bytes_per_event,
            s.server_cpu_cores.map_or("-".to_owned(), |c| format!("{c:.2}")),
            s.server_rss_mib.map_or("-".to_owned(), |m| format!("{m:.0}")),
            s.reader_busy * 100.0,
        ));
    }

    fn note(&mut self, text: &str) {
        self.say(text);
    }
}

/// What the measured clients offer for compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Compression {
    /// Plain frames.
    None,
    /// permessage-deflate.
    Deflate,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("loadgen: {message}");
            ExitCode::from(code)
        }
    }
}

fn sorted(mut values: Vec<u32>, what: &str) -> Result<Vec<u32>, (u8, String)> {
    values.sort_unstable();
    values.dedup();
    if values.is_empty() || values[0] == 0 {
        return Err((EXIT_USAGE, format!("--{what} needs positive numbers")));
    }
    Ok(values)
}

fn run(args: Args) -> Result<ExitCode, (u8, String)> {
    let usage = |message: String| (EXIT_USAGE, message);
    let aborted = |message: String| (EXIT_ABORTED, message);
    let plan = Plan {
        rates: sorted(args.rates, "rates")?,
        clients: sorted(args.clients, "clients")?,
        step_secs: args.step_secs,
        budget_p99_ms: args.budget_p99_ms,
        past_knee: args.past_knee,
        topics: args.topics,
        watchlist: args.watchlist.map(|n| (n, args.watchlist_channels.clone())),
        policies: args.policies.clone(),
        source: format!("{:?}", args.source),
        reader_threads: args.reader_threads.max(1),
        repeat: args.repeat.max(1),
        disrupt: args.disrupt,
        deflate: args.compression == Compression::Deflate,
    };
    if !(plan.step_secs > 0.0 && plan.step_secs.is_finite() && args.warmup_secs >= 0.0) {
        return Err(usage(
            "--step-secs must be positive and --warmup-secs not negative".to_owned(),
        ));
    }
    if plan.budget_p99_ms.is_nan() || plan.budget_p99_ms <= 0.0 {
        return Err(usage("--budget-p99-ms must be positive".to_owned()));
    }
    // Each client is a socket here and one in a local server, which inherits this limit.
    let files_needed =
        u64::from(plan.clients.last().copied().unwrap_or(1)) + u64::from(plan.disrupt.total()) + 64;
    // Up to the hard limit, without privileges; what is still short is reported below.
    let _ = rlimit::increase_nofile_limit(files_needed);
    if let Some(limit) = machine::open_files_limit().filter(|&limit| limit < files_needed) {
        return Err(usage(format!(
            "{} clients need about {files_needed} open files and the limit is {limit}: raise it (ulimit -n {files_needed}) or use fewer clients",
            plan.clients.last().copied().unwrap_or(1)
        )));
    }
    let started_unix_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    std::fs::create_dir_all(&args.out)
        .map_err(|e| usage(format!("{}: {e}", args.out.display())))?;
    let stem = args.out.join(format!("loadgen-{started_unix_s}"));
    let file = |suffix: &str| PathBuf::from(format!("{}{suffix}", stem.display()));
    let machine = Machine::describe();
    if machine.cores < 4 {
        eprintln!("loadgen: {} cores: the server and the load generator share them, so figures include contention (see the loadgen CPU column)", machine.cores);
    }
    if let Some(bad) =
        plan.policies.iter().find(|p| !["close", "conflate", "shed"].contains(&p.as_str()))
    {
        return Err(usage(format!("--policies: {bad:?} is not close, conflate or shed")));
    }
    let source = Source::open(&args.source).map_err(usage)?;
    let tickers = Arc::new(source.tickers().to_vec());
    let key = args
        .upstream_key
        .unwrap_or_else(|| format!("loadgen-{}-{started_unix_s}", std::process::id()));
    let clock = Clock::new();
    let (commands, inbox) = mpsc::channel();
    let (reports_tx, reports) = mpsc::channel();
    let player = Player::start(args.upstream_listen, key.clone(), source, clock, inbox, reports_tx)
        .map_err(|e| usage(format!("the player cannot listen on {}: {e}", args.upstream_listen)))?;
    let launch = match args.connect.as_slice() {
        [] => {
            let binary = args.tickstock.clone().unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| exe.parent().map(|d| d.join("tickstock")))
                    .unwrap_or_default()
            });
            Launch::Spawn { binary, config: args.server_config.clone() }
        }
        addrs => {
            if !args.server_pid.is_empty() && args.server_pid.len() != addrs.len() {
                return Err(usage(format!(
                    "--server-pid: one pid per --connect address ({} for {})",
                    args.server_pid.len(),
                    addrs.len()
                )));
            }
            for addr in addrs {
                eprintln!(
                    "loadgen: clients connect to {addr}; the ingest (or the server) must \
                     connect to ws://{}/stocks",
                    player.addr
                );
            }
            let pids = args.server_pid.iter().map(|&pid| Some(pid)).chain(std::iter::repeat(None));
            Launch::Connect { servers: addrs.iter().copied().zip(pids).collect() }
        }
    };
    let connections = plan
        .clients
        .last()
        .copied()
        .unwrap_or(1)
        .saturating_add(plan.disrupt.total())
        .saturating_add(16);
    let server = Server::launch(
        &launch,
        player.addr,
        &key,
        connections,
        &file("-server.toml"),
        &file("-server.log"),
    )
    .map_err(usage)?;
    let server_settings = server.settings.as_ref().and_then(|s| serde_json::to_value(s).ok());
    let pool = Pool::start(plan.reader_threads, clock)
        .map_err(|e| aborted(format!("reader threads: {e}")))?;
    let target = Target {
        addrs: std::iter::once(server.addr)
            .chain(server.others.iter().map(|(addr, _)| *addr))
            .collect(),
        path: "/stocks".to_owned(),
        token: args.token,
        topics: plan.topics.clone(),
        watchlist: plan.watchlist.as_ref().map(|(symbols, channels)| Watchlist {
            symbols: *symbols,
            channels: channels.clone(),
            tickers: Arc::clone(&tickers),
        }),
        policies: plan.policies.clone(),
        receive_buffer_bytes: args.client_receive_bytes,
        deflate: plan.deflate,
    };
    let disruptors = (plan.disrupt.total() > 0)
        .then(|| {
            Disruptors::start(&target, plan.disrupt, Arc::clone(&tickers), args.disruptors_idle)
        })
        .transpose()
        .map_err(|e| aborted(format!("disruptor threads: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once (the started server then outlives this process).
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop));
        let _ = signal_hook::flag::register(signal, Arc::clone(&stop));
    }
    let mut rig = Rig {
        server,
        pool,
        target,
        player: commands,
        reports,
        clock,
        stop,
        interrupted: false,
        steps: Vec::new(),
        disruptors,
    };
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:30} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut progress = Bar { bar };
    progress.note(&format!(
        "loadgen: server at {}, upstream player at {}; results in {}.*",
        rig.server.addr,
        player.addr,
        stem.display()
    ));
    let outcome =
        rig.await_session().and_then(|()| rig.run(&plan, args.warmup_secs, &mut progress));
    progress.bar.finish_and_clear();
    let Rig { server, pool, player: commands, interrupted, steps, disruptors, .. } = rig;
    if let Some(disruptors) = disruptors {
        disruptors.stop();
    }
    pool.stop();
    let _ = commands.send(Command::Stop);
    player.join();
    server.stop();
    let aborted_because =
        outcome.err().map(|e| format!("{e} (server log: {})", file("-server.log").display()));
    if let Some(reason) = &aborted_because {
        eprintln!("loadgen: the run stopped: {reason}; reporting the {} steps done", steps.len());
    }
    let capacity = run::capacity(&plan, &steps);
    let soak = report::soak(&plan, &steps);
    let valid = steps.iter().all(|s| s.valid);
    if interrupted {
        eprintln!("loadgen: interrupted; reporting the {} steps done", steps.len());
    }
    let result = RunResult {
        format: 1,
        started_unix_s,
        machine,
        plan,
        server_settings,
        steps,
        capacity,
        valid,
        interrupted,
        aborted: aborted_because.clone(),
        soak,
    };
    let json = serde_json::to_string_pretty(&result).map_err(|e| aborted(e.to_string()))?;
    std::fs::write(file(".json"), json)
        .map_err(|e| aborted(format!("{}: {e}", file(".json").display())))?;
    std::fs::write(file(".html"), report::html(&result))
        .map_err(|e| aborted(format!("{}: {e}", file(".html").display())))?;
    if result.soak.is_some() {
        std::fs::write(file("-soak.csv"), report::soak_csv(&result))
            .map_err(|e| aborted(format!("{}: {e}", file("-soak.csv").display())))?;
    }
    print!("{}", report::table(&result));
    println!("result: {}  report: {}", file(".json").display(), file(".html").display());
    let valid = valid && result.soak.as_ref().is_none_or(|soak| soak.flat && !soak.fd_leak);
    Ok(match (aborted_because, valid) {
        (Some(_), _) => ExitCode::from(EXIT_ABORTED),
        (None, true) => ExitCode::SUCCESS,
        (None, false) => ExitCode::from(EXIT_INVALID),
    })
}
