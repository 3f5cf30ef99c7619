//! A run: a grid of steps (clients × trade rate), each measured, validated and judged
//! against the latency budget; the knees of the grid are the capacity answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clients::{new_histogram, Pool, ReaderReport, Target, BLOCK_SHIFT};
use crate::disrupt::{Disruptors, Mix, Tally};
use crate::machine::{self, ProcSample};
use crate::server::{Metrics, Server};
use crate::upstream::{Clock, Command, Played, Report, Schedule};

/// What to measure.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Offered trade rates, trades/s, ascending.
    pub rates: Vec<u32>,
    /// Client counts, ascending.
    pub clients: Vec<u32>,
    /// Seconds of trades per step.
    pub step_secs: f64,
    /// The latency budget: p99 tick-to-client at or under this, in ms.
    pub budget_p99_ms: f64,
    /// Steps still run past a broken budget along each axis, to show the knee.
    pub past_knee: u32,
    /// Topics each client subscribes to (or its watchlist, below).
    pub topics: String,
    /// Per-client watchlists: symbols per client and the channels of each (`None`: every
    /// client takes `topics`).
    pub watchlist: Option<(usize, Vec<String>)>,
    /// Slow-consumer policies the clients choose in turn (empty: the server's default).
    pub policies: Vec<String>,
    /// The source of the played trades.
    pub source: String,
    /// Reader threads holding the clients.
    pub reader_threads: usize,
    /// Times each step is run (a soak: one step of a minute, sixty times).
    pub repeat: u32,
    /// Disruptors beside the measured clients.
    pub disrupt: Mix,
    /// The measured clients negotiate permessage-deflate.
    pub deflate: bool,
}

/// Latency percentiles, ms.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub samples: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |ns: u64| ns as f64 / 1e6;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }
}

/// What a server's database sink (`[database]`) did during a step, from its `/metrics`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DatabaseStep {
    /// Rows inserted.
    pub rows_written: u64,
    /// Events not stored (its ring overflowed).
    pub dropped_events: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Of those, committed more than a second after their oldest event was emitted.
    pub commits_over_1s: u64,
    /// Mean lag from emission to commit of a transaction's oldest event, ms.
    pub lag_mean_ms: f64,
    /// The smallest bucket bound of `tickstock_database_lag_seconds` that holds every
    /// commit of the step: the worst lag was at most this, s (`None`: over the last bound,
    /// or no commit).
    pub lag_max_bound_s: Option<f64>,
}

impl DatabaseStep {
    /// The sink's figures between two scrapes; `None` when the server has no database.
    pub fn between(before: &Metrics, after: &Metrics) -> Option<DatabaseStep> {
        after.0.contains_key("tickstock_database_up").then_some(())?;
        let bucket = |bound: &str| {
            let name = format!("tickstock_database_lag_seconds_bucket{{le=\"{bound}\"}}");
            before.delta(after, &name)
        };
        let commits = before.delta(after, "tickstock_database_lag_seconds_count");
        let lag_sum = after.get("tickstock_database_lag_seconds_sum")
            - before.get("tickstock_database_lag_seconds_sum");
        Some(DatabaseStep {
            rows_written: before.delta(after, "tickstock_database_rows_total"),
            dropped_events: before.delta(after, "tickstock_database_dropped_events_total"),
            commits,
            commits_over_1s: commits.saturating_sub(bucket("1")),
            lag_mean_ms: if commits == 0 { 0.0 } else { lag_sum * 1e3 / commits as f64 },
            lag_max_bound_s: before.bound_holding(after, "tickstock_database_lag_seconds", 1.0),
        })
    }
}

/// A gateway's ingest→gateway hop during a step (`tickstock_nats_transit_seconds`, from the
/// publisher's send to the gateway's hand-off to its server), from its `/metrics`: the first
/// of `--connect`'s servers.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NatsStep {
    /// Live batches it took from the stream.
    pub batches: u64,
    /// Their mean transit, ms.
    pub transit_mean_ms: f64,
    /// The smallest bucket bound holding half the step's batches, ms.
    pub transit_p50_bound_ms: Option<f64>,
    /// The smallest bucket bound holding 99 % of them, ms (`None`: over the last bound).
    pub transit_p99_bound_ms: Option<f64>,
    /// The smallest bucket bound holding all of them, ms.
    pub transit_max_bound_ms: Option<f64>,
}

impl NatsStep {
    /// The hop's figures between two scrapes; `None` when the server is not a gateway.
    pub fn between(before: &Metrics, after: &Metrics) -> Option<NatsStep> {
        let count = "tickstock_nats_transit_seconds_count";
        after.0.contains_key(count).then_some(())?;
        let batches = before.delta(after, count);
        (batches > 0).then_some(())?;
        let holding = |share: f64| {
            before.bound_holding(after, "tickstock_nats_transit_seconds", share).map(|s| s * 1e3)
        };
        let sum = after.get("tickstock_nats_transit_seconds_sum")
            - before.get("tickstock_nats_transit_seconds_sum");
        Some(NatsStep {
            batches,
            transit_mean_ms: sum * 1e3 / batches as f64,
            transit_p50_bound_ms: holding(0.5),
            transit_p99_bound_ms: holding(0.99),
            transit_max_bound_ms: holding(1.0),
        })
    }
}

/// One measured step.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Clients connected at the start.
    pub clients: u32,
    /// Offered trades/s.
    pub rate: u32,
    /// Trades sent.
    pub sent: u64,
    /// Trades sent per second of sending (below `rate` when the player could not keep up).
    pub achieved_rate: f64,
    /// Events of every kind delivered to all clients, per second of the step.
    pub delivered_events_per_s: f64,
    /// Bytes the clients read from their sockets per event delivered (frames as sent:
    /// compressed, with `--compression deflate`).
    pub wire_bytes_per_event: f64,
    /// The same per second, over all clients, MiB/s.
    pub wire_mib_per_s: f64,
    /// Trades the clients should have received in all (each client's topics' share).
    pub expected_trades: u64,
    /// Trades they received (one latency sample each).
    pub received_trades: u64,
    /// Tick-to-client latency of the step's trades, from their intended send time.
    pub latency_ms: Percentiles,
    /// How late the player's messages left (its own lag), ms.
    pub send_lag_p99_ms: f64,
    /// Clients closed as slow consumers (4008 seen, or dropped while the server counted it).
    pub slow_consumer_closes: u64,
    /// Slow-consumer closes the server counted in the step (`/metrics`).
    pub server_slow_consumer_closes: u64,
    /// Events the server dropped: multi-frequency buffer full, or conflated away.
    pub server_dropped_events: u64,
    /// Server CPU, cores (CPU seconds per second), when local.
    pub server_cpu_cores: Option<f64>,
    /// Server CPU by thread name as the kernel keeps it (15 bytes, a trailing `-N` dropped:
    /// `tickstock-engin`, `tickstock-emit`, `tickstock-serve` for all the event loops,
    /// `tickstock-db`, ...), cores, when local.
    pub server_threads_cpu: std::collections::BTreeMap<String, f64>,
    /// The server's database sink, when it has one.
    pub database: Option<DatabaseStep>,
    /// The ingest→gateway hop, when the (first) server is a gateway.
    pub nats: Option<NatsStep>,
    /// Server resident memory at the end of the step, MiB, when local.
    pub server_rss_mib: Option<f64>,
    /// The load generator's own CPU, cores: on a shared machine it competes with the server.
    pub loadgen_cpu_cores: f64,
    /// The busiest reader thread's working time over the step's length (1.0: always busy).
    pub reader_busy: f64,
    /// The most the server had delivered into the clients' kernel receive queues that the
    /// readers had not read yet, sampled during the step, MiB.
    pub client_unread_mib: Option<f64>,
    /// Which side limited a step over budget: the server, or the load generator's readers
    /// (then the figures understate the server).
    pub limit: Option<String>,
    /// Clients that shed channels (`shed` policy), and the events they were told were
    /// dropped.
    pub shed_clients: u64,
    /// The server's open file descriptors at the end of the step, when local.
    pub server_fds: Option<u64>,
    /// With several servers (`--connect A,B,...`: gateways of one ingest), each one's
    /// share: its address, its clients' latency, the trades they received, its CPU. The
    /// step's own figures are the total.
    pub targets: Vec<TargetStep>,
    /// What the disruptors did during the step, when there are any.
    pub disruptors: Option<Tally>,
    /// Every expected event arrived intact, in order, on every client that stayed.
    pub valid: bool,
    /// Why not.
    pub invalid_reasons: Vec<String>,
    /// Valid, inside the budget, nothing shed: the server held this load.
    pub within_budget: bool,
    /// Why not.
    pub breaches: Vec<String>,
}

/// One server's part of a step with several (`Step::targets`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct TargetStep {
    /// Its address.
    pub addr: String,
    /// Its clients' tick-to-client latency.
    pub latency_ms: Percentiles,
    /// The trades its clients received.
    pub received_trades: u64,
    /// Its CPU, cores, when its pid is known.
    pub cpu_cores: Option<f64>,
}

/// The capacity answers read off the grid.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Capacity {
    /// Per client count: the highest rate held, with every lower rate held too.
    pub max_rate_by_clients: Vec<(u32, Option<u32>)>,
    /// Per rate: the most clients held, with every smaller count held too.
    pub max_clients_by_rate: Vec<(u32, Option<u32>)>,
}

/// How the steps went, for the progress display.
pub trait Progress {
    /// A step starts.
    fn step_started(&mut self, index: usize, clients: u32, rate: u32, secs: f64);
    /// Time passes in a step (fraction done, 0 to 1).
    fn step_tick(&mut self, fraction: f64);
    /// A step is measured.
    fn step_done(&mut self, step: &Step);
    /// A note (connecting clients, a skipped step).
    fn note(&mut self, text: &str);
}

/// Everything a run needs.
#[derive(Debug)]
pub struct Rig {
    /// The server under test.
    pub server: Server,
    /// The clients.
    pub pool: Pool,
    /// Where they connect.
    pub target: Target,
    /// Commands to the player.
    pub player: Sender<Command>,
    /// Its reports.
    pub reports: Receiver<Report>,
    /// The shared clock.
    pub clock: Clock,
    /// Set by SIGINT/SIGTERM: the run ends, keeping the steps done.
    pub stop: Arc<AtomicBool>,
    /// Whether the run ended early because of `stop`.
    pub interrupted: bool,
    /// The steps measured so far (kept when the run aborts).
    pub steps: Vec<Step>,
    /// The disruptors, when the plan has any.
    pub disruptors: Option<Disruptors>,
}

/// The id of the first trade; later steps continue from the last.
const FIRST_TRADE_ID: u64 = 1;
/// The run waits this long for the server's upstream session before the first step.
const SESSION_DEADLINE: Duration = Duration::from_secs(30);
/// After a step's last trade is sent, how long the clients may go without progress before
/// what has not arrived is counted missing.
const DRAIN_QUIET: Duration = Duration::from_millis(3_000);
/// The longest drain.
const DRAIN_MAX: Duration = Duration::from_secs(60);
/// The pause after clients connect or close, before the next step.
const SETTLE: Duration = Duration::from_secs(1);
/// Trades are scheduled from this far in the future, so readers know the step first.
const LEAD: Duration = Duration::from_millis(50);
/// Invalid reasons listed per step; the rest are counted.
const REASONS_LISTED: usize = 20;
/// A reader busy this fraction of a step or more was the limit, not the server.
const READER_SATURATED: f64 = 0.9;
/// How often the clients' receive queues are sampled during a step.
const UNREAD_SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// Unread bytes per client in the clients' receive queues, at the most during a step, past
/// which the readers were behind (the server had delivered; the clients had not read).
const CLIENT_UNREAD_BEHIND_BYTES: u64 = 256 * 1024;

impl Rig {
    /// Waits for the server's upstream session.
    pub fn await_session(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + SESSION_DEADLINE;
        loop {
            match self.reports.recv_timeout(Duration::from_millis(100)) {
                Ok(Report::Session(_)) => return Ok(()),
                Ok(Report::Lost(reason)) => return Err(reason),
                Ok(Report::Played(_)) => {}
                Err(_) if Instant::now() < deadline && self.server.running() => {}
                Err(_) => {
                    return Err(
                        "the server did not open its upstream session with the player".to_owned()
                    )
                }
            }
        }
    }

    /// Runs the plan; `warmup_secs` of trades first at the lowest rate, not reported.
    pub fn run(
        &mut self,
        plan: &Plan,
        warmup_secs: f64,
        progress: &mut dyn Progress,
    ) -> Result<(), String> {
        let mut next_trade = FIRST_TRADE_ID;
        let hz = machine::clock_ticks_per_sec();
        if warmup_secs > 0.0 {
            let clients = plan.clients.first().copied().unwrap_or(1);
            progress.note(&format!(
                "warm-up: {warmup_secs} s at {} trades/s, {clients} clients",
                plan.rates[0]
            ));
            self.resize(clients, progress)?;
            let warm = self.step(
                plan,
                clients,
                plan.rates[0],
                warmup_secs,
                &mut next_trade,
                hz,
                progress,
            )?;
            if !warm.valid {
                progress
                    .note(&format!("warm-up was not clean: {}", warm.invalid_reasons.join("; ")));
            }
        }
        let mut index = 0;
        let repeated = plan.clients.iter().flat_map(|&clients| {
            plan.rates
                .iter()
                .flat_map(move |&rate| (0..plan.repeat.max(1)).map(move |_| (clients, rate)))
        });
        for (clients, rate) in repeated {
            {
                if let Some(why) = skip(&self.steps, plan, clients, rate) {
                    progress.note(&format!("skipped {clients} clients × {rate} trades/s: {why}"));
                    continue;
                }
                if !self.server.running() {
                    return Err("the server under test exited".to_owned());
                }
                if self.stopping() {
                    return Ok(());
                }
                self.resize(clients, progress)?;
                index += 1;
                progress.step_started(index, clients, rate, plan.step_secs);
                let step =
                    self.step(plan, clients, rate, plan.step_secs, &mut next_trade, hz, progress)?;
                if self.stopping() {
                    progress.note("interrupted: the step in progress is not reported");
                    return Ok(());
                }
                progress.step_done(&step);
                self.steps.push(step);
            }
        }
        Ok(())
    }

    fn stopping(&mut self) -> bool {
        // Relaxed: a polled flag.
        self.interrupted |= self.stop.load(Ordering::Relaxed);
        self.interrupted
    }

    fn resize(&mut self, clients: u32, progress: &mut dyn Progress) -> Result<(), String> {
        let have = self.pool.len();
        if have == clients as usize {
            return Ok(());
        }
        if have < clients as usize {
            progress.note(&format!("connecting clients: {have} → {clients}"));
        }
        self.pool.resize(&self.target, clients as usize, |_| {})?;
        // New clients start with the server's current stream; let what piled up while they
        // connected be read before the step is timed.
        std::thread::sleep(SETTLE);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        plan: &Plan,
        clients: u32,
        rate: u32,
        secs: f64,
        next_trade: &mut u64,
        hz: u64,
        progress: &mut dyn Progress,
    ) -> Result<Step, String> {
        let trades = ((f64::from(rate) * secs).round() as u64).max(1);
        // A server too busy to answer /metrics makes the step unmeasurable, not the run.
        let before = self.server.metrics();
        let tally_before = self.disruptors.as_ref().map(Disruptors::tally);
        let proc_before = self.server.pid.and_then(machine::sample);
        let others_before: Vec<_> =
            self.server.others.iter().map(|(_, pid)| pid.and_then(machine::sample)).collect();
        let threads_before = self.server.pid.map(machine::thread_ticks).unwrap_or_default();
        let own_before = machine::sample(std::process::id()).unwrap_or_default();
        let started = Instant::now();
        let schedule = Schedule {
            first: *next_trade,
            trades,
            rate: f64::from(rate),
            start_ns: self.clock.now().0 + LEAD.as_nanos() as u64,
        };
        *next_trade += trades;
        self.pool.begin(schedule);
        let _ = self.player.send(Command::Play(schedule));
        let mut lost = Vec::new();
        // The most the clients' receive queues held unread during the step (sampled).
        let mut unread: Option<u64> = None;
        let mut sampled = Instant::now();
        let played = loop {
            match self.reports.recv_timeout(Duration::from_millis(100)) {
                Ok(Report::Played(played)) => break played,
                Ok(Report::Lost(reason)) => lost.push(reason),
                Ok(Report::Session(n)) => {
                    lost.push(format!("the server opened upstream session {n} mid-run"))
                }
                Err(_) => {
                    if sampled.elapsed() >= UNREAD_SAMPLE_EVERY {
                        sampled = Instant::now();
                        let now = machine::unread_bytes(&self.pool.ports);
                        unread = unread.max(now);
                    }
                    progress.step_tick(started.elapsed().as_secs_f64() / secs);
                    if !self.server.running() {
                        return Err("the server under test exited".to_owned());
                    }
                }
            }
        };
        // Drain: until every client has every trade, or neither the clients nor the server
        // (events it wrote) made progress for DRAIN_QUIET, or DRAIN_MAX.
        let unread = unread.max(machine::unread_bytes(&self.pool.ports));
        let target = &self.target;
        let expect = |id: u32| match target.symbols_for(id) {
            Some(symbols) => symbols.iter().fold((0u64, 0u64), |(n, sum), &s| {
                let (count, mix) = played.by_symbol.get(s).copied().unwrap_or_default();
                (n + count, sum.wrapping_add(mix))
            }),
            None => (played.sent, played.checksum),
        };
        let expected: u64 = self.pool.ids().map(|id| expect(id).0).sum();
        let out_events = |server: &Server| {
            server.metrics().map_or(0.0, |m| m.get("tickstock_client_events_out_total"))
        };
        let mut seen = (self.pool.received.load(Ordering::Relaxed), out_events(&self.server));
        let (mut moved, mut polled) = (Instant::now(), Instant::now());
        let drain_started = Instant::now();
        let mut drain_cut = false;
        while seen.0 < expected && moved.elapsed() < DRAIN_QUIET {
            if drain_started.elapsed() > DRAIN_MAX {
                drain_cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            let mut now = (self.pool.received.load(Ordering::Relaxed), seen.1);
            if polled.elapsed() > Duration::from_millis(250) {
                (now.1, polled) = (out_events(&self.server), Instant::now());
            }
            if now != seen {
                (seen, moved) = (now, Instant::now());
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let reports = self.pool.end();
        let after = self.server.metrics();
        let proc_after = self.server.pid.and_then(machine::sample);
        let others_after: Vec<_> =
            self.server.others.iter().map(|(_, pid)| pid.and_then(machine::sample)).collect();
        let threads_after = self.server.pid.map(machine::thread_ticks).unwrap_or_default();
        let own_after = machine::sample(std::process::id()).unwrap_or_default();
        let cores = |a: ProcSample, b: ProcSample| {
            (b.cpu_ticks - a.cpu_ticks.min(b.cpu_ticks)) as f64 / hz as f64 / elapsed
        };
        let (before, after, unmeasured) = match (before, after) {
            (Ok(before), Ok(after)) => (before, after, None),
            (Err(error), _) | (_, Err(error)) => (
                Metrics::default(),
                Metrics::default(),
                Some(format!("server metrics unavailable: {error}")),
            ),
        };
        let mut step = judge(
            plan, clients, rate, &played, &schedule, &reports, &before, &after, elapsed, &expect,
        );
        step.database = DatabaseStep::between(&before, &after);
        step.nats = NatsStep::between(&before, &after);
        if let Some(reason) = unmeasured {
            // Without the server's counts nothing can be checked against them.
            step.invalid_reasons = vec![reason];
        }
        if drain_cut {
            lost.push(format!(
                "events were still arriving {} s after the step (the server is far over capacity)",
                DRAIN_MAX.as_secs()
            ));
        }
        step.invalid_reasons.extend(lost);
        step.valid = step.invalid_reasons.is_empty();
        step.within_budget &= step.valid;
        step.server_cpu_cores = proc_before.zip(proc_after).map(|(a, b)| cores(a, b));
        if !self.server.others.is_empty() {
            let mut latencies = Vec::new();
            for report in &reports {
                for (index, histogram) in report.latency.iter().enumerate() {
                    if latencies.len() <= index {
                        latencies.resize_with(index + 1, new_histogram);
                    }
                    let _ = latencies[index].add(histogram);
                }
            }
            let addrs = std::iter::once(self.server.addr)
                .chain(self.server.others.iter().map(|(addr, _)| *addr));
            let cpus = std::iter::once(step.server_cpu_cores).chain(
                others_before
                    .iter()
                    .zip(&others_after)
                    .map(|(a, b)| a.zip(*b).map(|(a, b)| cores(a, b))),
            );
            step.targets = addrs
                .zip(cpus)
                .enumerate()
                .map(|(index, (addr, cpu_cores))| {
                    let latency = latencies.get(index);
                    TargetStep {
                        addr: addr.to_string(),
                        latency_ms: latency.map(Percentiles::of).unwrap_or_default(),
                        received_trades: latency.map_or(0, Histogram::len),
                        cpu_cores,
                    }
                })
                .collect();
            // The total: every server's CPU.
            let all: Vec<f64> = step.targets.iter().filter_map(|t| t.cpu_cores).collect();
            if !all.is_empty() {
                step.server_cpu_cores = Some(all.iter().sum());
            }
        }
        step.server_threads_cpu = threads_after
            .iter()
            .map(|(name, &after)| {
                let before = threads_before.get(name).copied().unwrap_or(0);
                let ticks = after.saturating_sub(before);
                (name.clone(), ticks as f64 / hz as f64 / elapsed)
            })
            .collect();
        step.server_rss_mib = proc_after.map(|p| p.rss_bytes as f64 / (1024.0 * 1024.0));
        step.server_fds = self.server.pid.and_then(machine::open_fds);
        step.disruptors =
            self.disruptors.as_ref().zip(tally_before).map(|(d, b)| d.tally().since(&b));
        if let Some(t) = step.disruptors {
            let mut wrong = Vec::new();
            if t.deep_gaps > 0 {
                wrong.push(format!(
                    "deep resumes: {} seqs of their ranges missing, repeated or out of order",
                    t.deep_gaps
                ));
            }
            if t.resume_gaps + t.resume_repeats > 0 {
                wrong.push(format!(
                    "resuming clients: {} trades missing and {} repeated across their resumes",
                    t.resume_gaps, t.resume_repeats
                ));
            }
            if t.hostile_unexpected + t.errors > 0 {
                let notes = self.disruptors.as_ref().map(Disruptors::notes).unwrap_or_default();
                wrong.push(format!(
                    "disruptors: {} unexpected answers to hostile clients, {} failed sessions (first: {})",
                    t.hostile_unexpected,
                    t.errors,
                    notes.join("; ")
                ));
            }
            if !wrong.is_empty() {
                step.invalid_reasons.extend(wrong);
                step.valid = false;
                step.within_budget = false;
            }
        }
        step.loadgen_cpu_cores = cores(own_before, own_after);
        step.client_unread_mib = unread.map(|b| b as f64 / (1024.0 * 1024.0));
        if !step.within_budget {
            let unread_per_client = unread.unwrap_or(0) / u64::from(clients.max(1));
            step.limit = Some(if unread_per_client >= CLIENT_UNREAD_BEHIND_BYTES {
                format!(
                    "loadgen readers: {:.0} MiB delivered and not yet read at the clients (readers {:.0} % busy); add --reader-threads or cores, the figures understate the server",
                    step.client_unread_mib.unwrap_or(0.0),
                    step.reader_busy * 100.0
                )
            } else if step.reader_busy >= READER_SATURATED {
                format!(
                    "loadgen readers (busiest {:.0} % busy): the figures understate the server",
                    step.reader_busy * 100.0
                )
            } else {
                format!(
                    "the server ({:.1} MiB unread at the clients, readers {:.0} % busy)",
                    step.client_unread_mib.unwrap_or(0.0),
                    step.reader_busy * 100.0
                )
            });
        }
        Ok(step)
    }
}

/// Why a step is not worth running: a smaller load (no more clients and no higher rate)
/// already broke the budget, and this step is not one of the `past_knee` steps run just past
/// that break along the same axis to show the knee.
fn skip(steps: &[Step], plan: &Plan, clients: u32, rate: u32) -> Option<String> {
    let at = |list: &[u32], value: u32| list.iter().position(|&v| v == value).unwrap_or(0);
    let (c, r) = (at(&plan.clients, clients), at(&plan.rates, rate));
    let past = plan.past_knee as usize;
    steps.iter().filter(|s| !s.within_budget).find_map(|s| {
        let (sc, sr) = (at(&plan.clients, s.clients), at(&plan.rates, s.rate));
        let smaller = sc <= c && sr <= r && (sc, sr) != (c, r);
        let just_past = (sc == c && r - sr <= past) || (sr == r && c - sc <= past);
        (smaller && !just_past).then(|| {
            format!("{} clients × {} trades/s already broke the budget", s.clients, s.rate)
        })
    })
}

#[allow(clippy::too_many_arguments)]
fn judge(
    plan: &Plan,
    clients: u32,
    rate: u32,
    played: &Played,
    schedule: &Schedule,
    reports: &[ReaderReport],
    before: &Metrics,
    after: &Metrics,
    elapsed: f64,
    expect: &dyn Fn(u32) -> (u64, u64),
) -> Step {
    let mut latency = new_histogram();
    let mut invalid = Vec::new();
    let mut breaches = Vec::new();
    let (mut events, mut slow, mut conflated, mut shed_clients) = (0u64, 0u64, 0u64, 0u64);
    let busy_ns = reports.iter().map(|r| r.busy_ns).max().unwrap_or(0);
    let wire_bytes: u64 = reports.iter().map(|r| r.wire_bytes).sum();

    let reader_busy = busy_ns as f64 / (elapsed * 1e9).max(1.0);
    let mut lost: Vec<(u32, String)> = Vec::new();
    let mut blocks: HashMap<u64, (u64, u64, u32)> = HashMap::new();
    let conns: Vec<_> = reports.iter().flat_map(|r| r.conns.iter()).collect();
    let expected_trades: u64 = conns.iter().map(|c| expect(c.id).0).sum();
    let received_trades: u64 = conns.iter().map(|c| c.trades).sum();
    for report in reports {
        for by_target in &report.latency {
            let _ = latency.add(by_target);
        }
    }
    let mut unlisted = 0u64;
    let mut note = |list: &mut Vec<String>, text: String| {
        if list.len() < REASONS_LISTED {
            list.push(text);
        } else {
            unlisted += 1;
        }
    };
    for c in &conns {
        events += c.events;
        conflated += c.conflated;
        if let Some(error) = &c.malformed {
            note(&mut invalid, format!("client {}: unreadable message: {error}", c.id));
        }
        if c.order_violations > 0 {
            note(
                &mut invalid,
                format!("client {}: {} events out of seq order", c.id, c.order_violations),
            );
        }
        if c.stray > 0 {
            note(
                &mut invalid,
                format!("client {}: {} trades from an earlier step arrived late", c.id, c.stray),
            );
        }
        if c.slow_consumer {
            slow += 1;
            continue;
        }
        if let Some(how) = &c.closed {
            // PROTOCOL.md: a slow consumer's close frame is sent only if the socket takes
            // it; after `close_timeout_ms` the TCP connection is dropped either way. A
            // connection lost without a frame is explained when the server counted it.
            lost.push((c.id, how.clone()));
            continue;
        }
        if c.shed.0 > 0 {
            shed_clients += 1;
            continue;
        }
        if c.conflated > 0 {
            continue;
        }
        let (want, want_checksum) = expect(c.id);
        if c.trades != want {
            let what = if c.trades < want { "missing" } else { "extra" };
            let n = c.trades.abs_diff(want);
            let got = c.k_range.map_or("none".to_owned(), |(lo, hi)| {
                format!("ids {} to {}", lo - schedule.first, hi - schedule.first)
            });
            note(&mut invalid, format!("client {}: {n} trades {what} of {want} (got {got})", c.id));
        } else if c.checksum != want_checksum {
            note(&mut invalid, format!("client {}: every trade arrived but the checksum differs (id, price or size altered)", c.id));
        }
        // Clients on different watchlists see different events: nothing to compare.
        let blocks_comparable = plan.watchlist.is_none();
        for &(block, count, sum) in c.blocks.iter().filter(|_| blocks_comparable) {
            let first = blocks.entry(block).or_insert((count, sum, c.id));
            if (first.0, first.1) != (count, sum) {
                note(
                    &mut invalid,
                    format!(
                        "clients {} and {} disagree on the events with seq in [{}, {}): {} vs {}",
                        first.2,
                        c.id,
                        block << BLOCK_SHIFT,
                        (block + 1) << BLOCK_SHIFT,
                        first.0,
                        count
                    ),
                );
            }
        }
    }
    // A client that was there for a whole block must have reported it.
    let comparable = |c: &&&crate::clients::ConnReport| {
        plan.watchlist.is_none() && c.closed.is_none() && c.conflated == 0 && c.shed.0 == 0
    };
    for c in conns.iter().filter(comparable) {
        for (&block, &(_, _, by)) in &blocks {
            let covered = block >= c.covered.0 && block < c.covered.1;
            if covered && !c.blocks.iter().any(|b| b.0 == block) {
                note(
                    &mut invalid,
                    format!(
                    "client {} got none of the events with seq in [{}, {}) that client {by} got",
                    c.id, block << BLOCK_SHIFT, (block + 1) << BLOCK_SHIFT
                ),
                );
            }
        }
    }
    let server_slow = before.delta(after, "tickstock_slow_consumer_closes_total");
    if server_slow >= slow + lost.len() as u64 {
        slow += lost.len() as u64;
    } else {
        for (id, how) in &lost {
            note(&mut invalid, format!("client {id}: {how}"));
        }
    }
    if conns.len() < clients as usize {
        note(&mut invalid, format!("{} of {clients} clients answered", conns.len()));
    }
    // The player numbers `q` per symbol without gaps: any gap the server saw is a loss.
    let q_gaps = before.delta(after, "tickstock_upstream_q_gaps_total");
    if q_gaps > 0 {
        note(&mut invalid, format!("the server saw {q_gaps} gaps in the player's q numbers"));
    }
    let accepted = before.delta(after, "tickstock_ticks_accepted_total");
    let rejected = before.delta(after, "tickstock_ticks_rejected_total");
    // A gateway (`serve --role gateway`, docs/scale-out.md) has no engine: the ingest
    // accepts the trades, and the gateway's stream from NATS must have no hole.
    let gateway = accepted == 0 && before.delta(after, "tickstock_nats_events_total") > 0;
    let nats_gaps = before.delta(after, "tickstock_nats_gap_events_total");
    if nats_gaps > 0 {
        note(&mut invalid, format!("the gateway's stream from NATS lacked {nats_gaps} events"));
    }
    if accepted != played.sent && !gateway {
        note(
            &mut invalid,
            format!(
                "the server accepted {accepted} of {} trades sent ({rejected} rejected)",
                played.sent
            ),
        );
    }
    let buffer_dropped = before.delta(after, "tickstock_mfbuf_dropped_total");
    // Slow disruptors are conflated on purpose; then only the measured clients' own count
    // says whether the load broke the budget.
    let server_conflated = if plan.disrupt.slow > 0 {
        conflated
    } else {
        before.delta(after, "tickstock_conflated_events_total").max(conflated)
    };
    let sending_secs = (played.finished_ns.saturating_sub(schedule.start_ns)) as f64 / 1e9;
    let achieved_rate = played.sent as f64 / sending_secs.max(played.sent as f64 / f64::from(rate));
    let step_secs = played.sent as f64 / f64::from(rate);
    let latency_ms = Percentiles::of(&latency);
    if latency_ms.p99 > plan.budget_p99_ms {
        breaches.push(format!(
            "p99 {:.2} ms over the {} ms budget",
            latency_ms.p99, plan.budget_p99_ms
        ));
    }
    if slow > 0 {
        breaches.push(format!("{slow} clients closed as slow consumers"));
    }
    if shed_clients > 0 {
        breaches.push(format!("{shed_clients} clients shed channels to keep up"));
    }
    if buffer_dropped + server_conflated > 0 {
        breaches.push(format!(
            "the server dropped {buffer_dropped} events and conflated {server_conflated}"
        ));
    }
    if achieved_rate < 0.95 * f64::from(rate) {
        breaches.push(format!(
            "only {achieved_rate:.0} trades/s could be sent (the server's feed pushed back)"
        ));
    }
    if unlisted > 0 {
        invalid.push(format!("and {unlisted} more like these"));
    }
    let valid = invalid.is_empty();
    Step {
        clients,
        rate,
        sent: played.sent,
        achieved_rate,
        delivered_events_per_s: events as f64 / step_secs.max(elapsed.min(step_secs * 2.0)),
        wire_bytes_per_event: wire_bytes as f64 / (events.max(1)) as f64,
        wire_mib_per_s: wire_bytes as f64
            / (1024.0 * 1024.0)
            / step_secs.max(elapsed.min(step_secs * 2.0)),
        expected_trades,
        received_trades,
        latency_ms,
        send_lag_p99_ms: played.send_lag.value_at_quantile(0.99) as f64 / 1e6,
        slow_consumer_closes: slow,
        server_slow_consumer_closes: server_slow,
        server_dropped_events: buffer_dropped + server_conflated,
        server_cpu_cores: None,
        server_threads_cpu: Default::default(),
        database: None,
        nats: None,
        server_rss_mib: None,
        server_fds: None,
        targets: Vec::new(),
        disruptors: None,
        loadgen_cpu_cores: 0.0,
        reader_busy,
        client_unread_mib: None,
        limit: None,
        shed_clients,
        valid,
        invalid_reasons: invalid,
        within_budget: valid && breaches.is_empty(),
        breaches,
    }
}

/// Reads the capacity answers off the measured steps.
pub fn capacity(plan: &Plan, steps: &[Step]) -> Capacity {
    let held = |clients: u32, rate: u32| {
        // Held only if every run of the step held (a soak repeats it).
        steps
            .iter()
            .filter(|s| s.clients == clients && s.rate == rate)
            .map(|s| s.within_budget)
            .reduce(|a, b| a && b)
    };
    let knee = |line: &mut dyn Iterator<Item = (u32, Option<bool>)>| {
        let mut best = None;
        for (value, ok) in line {
            match ok {
                Some(true) => best = Some(value),
                Some(false) => break,
                None => {}
            }
        }
        best
    };
    Capacity {
        max_rate_by_clients: plan
            .clients
            .iter()
            .map(|&c| (c, knee(&mut plan.rates.iter().map(|&r| (r, held(c, r))))))
            .collect(),
        max_clients_by_rate: plan
            .rates
            .iter()
            .map(|&r| (r, knee(&mut plan.clients.iter().map(|&c| (c, held(c, r))))))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateways_hop_is_read_off_its_histogram_between_two_scrapes() {
        let scrape = |counts: [u64; 4], sum: f64| {
            let buckets = ["0.0002", "0.0005", "0.001", "1"];
            let mut body = String::new();
            for (bound, count) in buckets.iter().zip(counts) {
                body +=
                    &format!("tickstock_nats_transit_seconds_bucket{{le=\"{bound}\"}} {count}\n");
            }
            body += &format!("tickstock_nats_transit_seconds_sum {sum}\n");
            body += &format!("tickstock_nats_transit_seconds_count {}\n", counts[3]);
            crate::server::parse_metrics(&body)
        };
        let before = scrape([50, 100, 100, 100], 0.02);
        // 1,000 batches more: 600 under 200 µs, 990 under 500 µs, all under 1 ms.
        let after = scrape([650, 1_090, 1_100, 1_100], 0.32);
        let hop = NatsStep::between(&before, &after).expect("a gateway's metrics");
        assert_eq!(hop.batches, 1_000);
        assert!((hop.transit_mean_ms - 0.3).abs() < 1e-9);
        assert_eq!(hop.transit_p50_bound_ms, Some(0.2));
        assert_eq!(hop.transit_p99_bound_ms, Some(0.5));
        assert_eq!(hop.transit_max_bound_ms, Some(1.0));
        assert!(NatsStep::between(&before, &before).is_none(), "no batch, no figure");
        let not_a_gateway = crate::server::parse_metrics("tickstock_accepted_total 3\n");
        assert!(NatsStep::between(&not_a_gateway, &not_a_gateway).is_none());
    }

    fn plan() -> Plan {
        Plan {
            rates: vec![10, 20, 50, 100],
            clients: vec![1, 10, 100],
            step_secs: 1.0,
            budget_p99_ms: 10.0,
            past_knee: 1,
            topics: String::new(),
            watchlist: None,
            policies: Vec::new(),
            source: String::new(),
            reader_threads: 1,
            repeat: 1,
            disrupt: Mix::default(),
            deflate: false,
        }
    }

    fn step(clients: u32, rate: u32, within_budget: bool) -> Step {
        Step {
            clients,
            rate,
            sent: 0,
            achieved_rate: 0.0,
            delivered_events_per_s: 0.0,
            wire_bytes_per_event: 0.0,
            wire_mib_per_s: 0.0,
            expected_trades: 0,
            received_trades: 0,
            latency_ms: Percentiles::default(),
            send_lag_p99_ms: 0.0,
            slow_consumer_closes: 0,
            server_slow_consumer_closes: 0,
            server_dropped_events: 0,
            server_cpu_cores: None,
            server_threads_cpu: Default::default(),
            database: None,
            nats: None,
            server_rss_mib: None,
            server_fds: None,
            targets: Vec::new(),
            disruptors: None,
            loadgen_cpu_cores: 0.0,
            reader_busy: 0.0,
            client_unread_mib: None,
            limit: None,
            shed_clients: 0,
            valid: true,
            invalid_reasons: Vec::new(),
            within_budget,
            breaches: Vec::new(),
        }
    }

    #[test]
    fn steps_past_the_knee_are_skipped_but_one_per_axis_runs() {
        let plan = plan();
        let steps = vec![step(1, 10, true), step(1, 20, false)];
        assert_eq!(skip(&steps, &plan, 1, 50), None, "one step past the knee on the rate axis");
        let steps = [steps, vec![step(1, 50, false)]].concat();
        assert!(skip(&steps, &plan, 1, 100).is_some(), "two past: skipped");
        assert_eq!(skip(&steps, &plan, 10, 10), None, "a smaller load that held");
        assert_eq!(skip(&steps, &plan, 10, 20), None, "one past on the client axis");
        assert!(skip(&steps, &plan, 100, 20).is_some(), "two past on the client axis");
        assert!(skip(&steps, &plan, 100, 100).is_some(), "dominated by a break");
    }

    #[test]
    fn capacity_is_the_last_step_held_before_the_first_break() {
        let plan = plan();
        let steps = vec![
            step(1, 10, true),
            step(1, 20, true),
            step(1, 50, false),
            step(1, 100, true),
            step(10, 10, false),
            step(100, 10, false),
        ];
        let capacity = capacity(&plan, &steps);
        assert_eq!(capacity.max_rate_by_clients, vec![(1, Some(20)), (10, None), (100, None)]);
        assert_eq!(capacity.max_clients_by_rate[0], (10, Some(1)));
        assert_eq!(capacity.max_clients_by_rate[1], (20, Some(1)));
    }
}
