//! What a run leaves behind: the JSON result file, the terminal table, and a self-contained
//! HTML page whose SVG plots show the knee.

use std::fmt::Write as _;

use serde::Serialize;

use crate::machine::Machine;
use crate::run::{Capacity, Plan, Step};

/// The result file.
#[derive(Debug, Serialize)]
pub struct RunResult {
    /// Result format version.
    pub format: u32,
    /// When the run started, Unix seconds.
    pub started_unix_s: u64,
    /// Where it ran.
    pub machine: Machine,
    /// What it measured.
    pub plan: Plan,
    /// The server's settings (all of them, defaults filled in), when spawned here.
    pub server_settings: Option<serde_json::Value>,
    /// The steps, in the order run.
    pub steps: Vec<Step>,
    /// The knees.
    pub capacity: Capacity,
    /// Every step valid.
    pub valid: bool,
    /// SIGINT/SIGTERM ended the run before the plan was done.
    pub interrupted: bool,
    /// Why the run stopped before the plan was done (the server died, clients could not
    /// connect), if it did.
    pub aborted: Option<String>,
    /// With `--repeat`: the soak's verdicts.
    pub soak: Option<Soak>,
}

/// A repeated step read as a soak: is the server flat after its warm-up?
#[derive(Clone, Debug, Serialize)]
pub struct Soak {
    /// Steps counted as warm-up (the first tenth, at least one) and left out below.
    pub warmup_steps: usize,
    /// Server RSS after the warm-up: least, median, most (MiB).
    pub rss_mib: [f64; 3],
    /// The farthest any step's RSS is from that median, percent.
    pub rss_deviation_pct: f64,
    /// Within `SOAK_RSS_FLAT_PCT`.
    pub flat: bool,
    /// Server file descriptors after the warm-up: least and most.
    pub fds: [u64; 2],
    /// Median fds of the last quarter of the steps less that of the first quarter after the
    /// warm-up.
    pub fd_growth: i64,
    /// Growth beyond what the disruptors can hold open at once.
    pub fd_leak: bool,
    /// p99 per step after the warm-up: median and most (ms).
    pub p99_ms: [f64; 2],
    /// Events the server dropped (conflation, a full buffer), over the whole run.
    pub dropped_events: u64,
    /// Measured clients closed as slow consumers.
    pub slow_consumer_closes: u64,
    /// The disruptors over the whole run.
    pub disruptors: crate::disrupt::Tally,
}

/// A soak's RSS is flat if every step after the warm-up is within this many percent of the
/// median (the issue's ±5 %).
pub const SOAK_RSS_FLAT_PCT: f64 = 5.0;

/// A step's server CPU by thread, busiest first, those under 0.005 core left out:
/// `tickstock-serve 0.40, tickstock-engin 0.31`.
pub fn threads(step: &Step) -> String {
    let mut busy: Vec<(&String, &f64)> =
        step.server_threads_cpu.iter().filter(|(_, &cores)| cores >= 0.005).collect();
    busy.sort_by(|a, b| b.1.total_cmp(a.1));
    let parts: Vec<String> =
        busy.iter().map(|(name, cores)| format!("{name} {cores:.2}")).collect();
    if parts.is_empty() {
        "all idle".to_owned()
    } else {
        parts.join(", ")
    }
}

/// One server's share of a step with several: `127.0.0.1:8766: 1,000,000 trades, p50 0.9 p99
/// 2.1 ms, 0.31 cores`.
pub fn target(t: &crate::run::TargetStep) -> String {
    format!(
        "{}: {} trades, p50 {:.2} p99 {:.2} max {:.2} ms, {}",
        t.addr,
        t.received_trades,
        t.latency_ms.p50,
        t.latency_ms.p99,
        t.latency_ms.max,
        t.cpu_cores.map_or("CPU not local".to_owned(), |c| format!("{c:.2} cores")),
    )
}

/// A step's database sink: `120,000 rows, 0 dropped, 61 commits (0 over 1 s), lag mean 540 ms, at most 0.75 s`.
pub fn database(d: &crate::run::DatabaseStep) -> String {
    format!(
        "{} rows, {} dropped, {} commits ({} over 1 s), lag mean {:.0} ms, at most {}",
        d.rows_written,
        d.dropped_events,
        d.commits,
        d.commits_over_1s,
        d.lag_mean_ms,
        match (d.commits, d.lag_max_bound_s) {
            (0, _) => "no commit in the step".to_owned(),
            (_, None) => "over the last bound".to_owned(),
            (_, Some(b)) => format!("{b} s"),
        },
    )
}

/// A gateway's hop: `1,000 batches from the ingest, transit mean 0.21 ms, p50 ≤ 0.3, p99 ≤ 0.75, max ≤ 2 ms`.
pub fn nats(n: &crate::run::NatsStep) -> String {
    let bound = |b: Option<f64>| b.map_or("> 1000".to_owned(), |b| format!("≤ {b}"));
    format!(
        "{} batches from the ingest, transit mean {:.2} ms, p50 {}, p99 {}, max {} ms",
        n.batches,
        n.transit_mean_ms,
        bound(n.transit_p50_bound_ms),
        bound(n.transit_p99_bound_ms),
        bound(n.transit_max_bound_ms),
    )
}

fn median<T: Copy + PartialOrd>(values: &[T]) -> Option<T> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(sorted.len() / 2).copied()
}

/// The soak's verdicts, for a plan that repeats its steps.
pub fn soak(plan: &Plan, steps: &[Step]) -> Option<Soak> {
    if plan.repeat < 2 || steps.len() < 2 {
        return None;
    }
    let warmup_steps = (steps.len() / 10).max(1);
    let after = &steps[warmup_steps..];
    let rss: Vec<f64> = after.iter().filter_map(|s| s.server_rss_mib).collect();
    let fds: Vec<u64> = after.iter().filter_map(|s| s.server_fds).collect();
    let p99: Vec<f64> = after.iter().map(|s| s.latency_ms.p99).collect();
    let rss_median = median(&rss).unwrap_or(0.0);
    let rss_deviation_pct = rss
        .iter()
        .map(|r| (r - rss_median).abs() / rss_median.max(f64::MIN_POSITIVE) * 100.0)
        .fold(0.0, f64::max);
    let quarter = (fds.len() / 4).max(1);
    let fd_growth = match (
        median(&fds[..quarter.min(fds.len())]),
        median(&fds[fds.len().saturating_sub(quarter)..]),
    ) {
        (Some(first), Some(last)) => last as i64 - first as i64,
        _ => 0,
    };
    let disruptors = steps
        .iter()
        .filter_map(|s| s.disruptors)
        .fold(crate::disrupt::Tally::default(), |sum, t| sum.plus(&t));
    Some(Soak {
        warmup_steps,
        rss_mib: [
            rss.iter().copied().fold(f64::INFINITY, f64::min),
            rss_median,
            rss.iter().copied().fold(0.0, f64::max),
        ],
        rss_deviation_pct,
        flat: rss_deviation_pct <= SOAK_RSS_FLAT_PCT,
        fds: [fds.iter().copied().min().unwrap_or(0), fds.iter().copied().max().unwrap_or(0)],
        fd_growth,
        fd_leak: fd_growth > i64::from(plan.disrupt.total()),
        p99_ms: [median(&p99).unwrap_or(0.0), p99.iter().copied().fold(0.0, f64::max)],
        dropped_events: steps.iter().map(|s| s.server_dropped_events).sum(),
        slow_consumer_closes: steps.iter().map(|s| s.slow_consumer_closes).sum(),
        disruptors,
    })
}

/// One row per step of a soak: the figures to plot over time.
pub fn soak_csv(result: &RunResult) -> String {
    let mut out = String::from("step,clients,rate,events_per_s,p50_ms,p99_ms,p999_ms,max_ms,server_cpu_cores,server_rss_mib,server_fds,dropped_events,slow_closes,valid,churn_sessions,slow_sessions,slow_closed,slow_statuses,resumed,resume_too_old,resume_trades,resume_gaps,resume_repeats,disruptor_errors\n");
    for (index, s) in result.steps.iter().enumerate() {
        let d = s.disruptors.unwrap_or_default();
        let _ = writeln!(
            out,
            "{},{},{},{:.0},{:.3},{:.3},{:.3},{:.3},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            index + 1,
            s.clients,
            s.rate,
            s.delivered_events_per_s,
            s.latency_ms.p50,
            s.latency_ms.p99,
            s.latency_ms.p999,
            s.latency_ms.max,
            s.server_cpu_cores.map_or(String::new(), |c| format!("{c:.3}")),
            s.server_rss_mib.map_or(String::new(), |r| format!("{r:.1}")),
            s.server_fds.map_or(String::new(), |f| f.to_string()),
            s.server_dropped_events,
            s.slow_consumer_closes,
            s.valid,
            d.churn_sessions,
            d.slow_sessions,
            d.slow_closed,
            d.slow_statuses,
            d.resumed,
            d.resume_too_old,
            d.resume_trades,
            d.resume_gaps,
            d.resume_repeats,
            d.errors,
        );
    }
    out
}

/// The terminal summary.
pub fn table(result: &RunResult) -> String {
    let mut out = String::new();
    let m = &result.machine;
    let _ = writeln!(
        out,
        "machine: {} ({} cores, {:.0} GiB), kernel {}, {}, commit {}",
        m.cpu_model, m.cores, m.memory_gib, m.kernel, m.rustc, m.git_commit
    );
    let _ = writeln!(
        out,
        "budget: p99 ≤ {} ms; topics {}; source {}{}",
        result.plan.budget_p99_ms,
        result.plan.topics,
        result.plan.source,
        if result.plan.deflate { "; clients negotiate permessage-deflate" } else { "" }
    );
    let _ = writeln!(
        out,
        "{:>7} {:>9} {:>10} {:>12} {:>7} {:>7} {:>7} {:>8} {:>8} {:>5} {:>6} {:>6} {:>7} {:>6}  verdict",
        "clients",
        "trades/s",
        "sent/s",
        "events/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        "slow",
        "drops",
        "cpu",
        "rss MiB",
        "fds"
    );
    for s in &result.steps {
        let l = &s.latency_ms;
        let verdict = if !s.valid {
            format!("INVALID: {}", s.invalid_reasons.first().map_or("", String::as_str))
        } else if s.within_budget {
            "ok".to_owned()
        } else {
            format!("over: {}", s.breaches.join("; "))
        };
        let _ = writeln!(
            out,
            "{:>7} {:>9} {:>10.0} {:>12.0} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>8.2} {:>5} {:>6} {:>6} {:>7} {:>6}  {verdict}",
            s.clients,
            s.rate,
            s.achieved_rate,
            s.delivered_events_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            s.slow_consumer_closes,
            s.server_dropped_events,
            s.server_cpu_cores.map_or("-".to_owned(), |c| format!("{c:.2}")),
            s.server_rss_mib.map_or("-".to_owned(), |r| format!("{r:.0}")),
            s.server_fds.map_or("-".to_owned(), |f| f.to_string()),
        );
    }
    for s in &result.steps {
        let _ = writeln!(
            out,
            "at {} clients × {} trades/s: {:.1} bytes on the wire per event ({:.1} MiB/s to all clients); server threads: {}",
            s.clients,
            s.rate,
            s.wire_bytes_per_event,
            s.wire_mib_per_s,
            if s.server_threads_cpu.is_empty() { "not local".to_owned() } else { threads(s) }
        );
    }
    for s in &result.steps {
        for t in &s.targets {
            let _ =
                writeln!(out, "at {} clients × {} trades/s, on {}", s.clients, s.rate, target(t));
        }
    }
    for s in &result.steps {
        if let Some(d) = s.database {
            let _ = writeln!(
                out,
                "database at {} clients × {} trades/s: {}",
                s.clients,
                s.rate,
                database(&d)
            );
        }
    }
    let _ = writeln!(out, "latency: ms from each trade's intended send time to its arrival at a client (coordinated omission corrected)");
    for (clients, rate) in &result.capacity.max_rate_by_clients {
        let _ = writeln!(
            out,
            "capacity: {clients} clients: {}",
            rate.map_or("no rate held".to_owned(), |r| format!("up to {r} trades/s"))
        );
    }
    for (rate, clients) in &result.capacity.max_clients_by_rate {
        let _ = writeln!(
            out,
            "capacity: {rate} trades/s: {}",
            clients.map_or("no client count held".to_owned(), |c| format!("up to {c} clients"))
        );
    }
    if let Some(soak) = &result.soak {
        let d = &soak.disruptors;
        let _ = writeln!(
            out,
            "soak: after {} warm-up steps, RSS {:.0}/{:.0}/{:.0} MiB (least/median/most), {:.1} % from the median at most: {}; fds {}-{}, growth {}: {}; p99 median {:.2} ms, worst {:.2} ms; {} events dropped, {} measured clients closed slow",
            soak.warmup_steps,
            soak.rss_mib[0],
            soak.rss_mib[1],
            soak.rss_mib[2],
            soak.rss_deviation_pct,
            if soak.flat { "flat" } else { "NOT FLAT" },
            soak.fds[0],
            soak.fds[1],
            soak.fd_growth,
            if soak.fd_leak { "A LEAK" } else { "no leak" },
            soak.p99_ms[0],
            soak.p99_ms[1],
            soak.dropped_events,
            soak.slow_consumer_closes,
        );
        let _ = writeln!(
            out,
            "disruptors: {} churn sessions; {} slow sessions ({} closed 4008, {} conflated/shed statuses); {} resumes honoured, {} too old, {} trades checked, {} missing, {} repeated; {} errors",
            d.churn_sessions, d.slow_sessions, d.slow_closed, d.slow_statuses, d.resumed, d.resume_too_old, d.resume_trades, d.resume_gaps, d.resume_repeats, d.errors
        );
    }
    if let Some(reason) = &result.aborted {
        let _ = writeln!(out, "ABORTED: {reason}");
    }
    if result.interrupted {
        let _ = writeln!(out, "interrupted: only the steps above were run");
    }
    if !result.valid {
        let _ = writeln!(
            out,
            "THE RUN IS INVALID: some steps did not deliver what was sent (see `invalid_reasons`)"
        );
    }
    out
}

/// One line of a chart.
struct Series<'a> {
    name: &'a str,
    color: &'a str,
    /// (x, y, step within budget).
    points: Vec<(f64, f64, bool)>,
}

struct Chart<'a> {
    title: String,
    x_label: &'a str,
    y_label: &'a str,
    series: Vec<Series<'a>>,
    /// A horizontal dashed line (the budget).
    budget: Option<f64>,
    /// A vertical marker (the knee): x and label.
    knee: Option<(f64, String)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 380.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 5] = ["#1b9e77", "#7570b3", "#d95f02", "#e7298a", "#444444"];

/// A log-scale axis from the data, widened to whole decades.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

fn svg(chart: &Chart<'_>) -> String {
    let xs = chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = decades(xs);
    let ys = chart.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(chart.budget);
    let (y0, y1) = decades(ys);
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x.max(x0).log10() - x0.log10()) / (x1.log10() - x0.log10()) * pw;
    let py = |y: f64| TOP + ph - (y.max(y0).log10() - y0.log10()) / (y1.log10() - y0.log10()) * ph;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&chart.title)
    );
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    // Grid and ticks at 1, 2 and 5 of each decade.
    for (lo, hi, vertical) in [(x0, x1, true), (y0, y1, false)] {
        let mut decade = lo;
        while decade < hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v > hi * 1.0001 {
                    break;
                }
                let label = human(v);
                if vertical {
                    let x = px(v);
                    let _ = write!(
                        out,
                        r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/>"##,
                        TOP + ph
                    );
                    let _ = write!(
                        out,
                        r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
                        TOP + ph + 16.0
                    );
                } else {
                    let y = py(v);
                    let _ = write!(
                        out,
                        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##,
                        LEFT + pw
                    );
                    let _ = write!(
                        out,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
                        LEFT - 6.0,
                        y + 4.0
                    );
                }
            }
            decade *= 10.0;
        }
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 12.0,
        escape(chart.x_label)
    );
    let _ = write!(
        out,
        r#"<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + ph / 2.0,
        escape(chart.y_label)
    );
    if let Some(budget) = chart.budget {
        let y = py(budget);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#c00" stroke-dasharray="6,4"/>"##,
            LEFT + pw
        );
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#c00">budget {}</text>"##,
            LEFT + pw + 6.0,
            y + 4.0,
            human(budget)
        );
    }
    if let Some((x, label)) = &chart.knee {
        let x = px(*x);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#c00" stroke-width="2" opacity="0.5"/>"##,
            TOP + ph
        );
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{:.1}" fill="#c00">{}</text>"##,
            x + 4.0,
            TOP + 14.0,
            escape(label)
        );
    }
    for (index, series) in chart.series.iter().enumerate() {
        let path: Vec<String> =
            series.points.iter().map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1))).collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            series.color
        );
        for &(x, y, ok) in &series.points {
            let fill = if ok { series.color } else { "white" };
            let _ = write!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{}"><title>{}: {} at {}</title></circle>"#,
                px(x),
                py(y),
                series.color,
                escape(series.name),
                human(y),
                human(x)
            );
        }
        let ly = TOP + 16.0 + index as f64 * 18.0;
        let _ = write!(
            out,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"/>"#,
            LEFT + pw + 8.0,
            LEFT + pw + 28.0,
            series.color
        );
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + pw + 32.0,
            ly + 4.0,
            escape(series.name)
        );
    }
    out.push_str("</svg>");
    out
}

/// 1, 20, 500, 1k, 20k, 1M, 0.5 ...
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The HTML page: per client count, latency percentiles against trade rate; per rate,
/// delivered events/s and p99 against clients; then the table.
pub fn html(result: &RunResult) -> String {
    let plan = &result.plan;
    let mut charts = Vec::new();
    for &clients in &plan.clients {
        let steps: Vec<&Step> = result.steps.iter().filter(|s| s.clients == clients).collect();
        if steps.is_empty() {
            continue;
        }
        let percentile = |name, color, f: fn(&Step) -> f64| Series {
            name,
            color,
            points: steps
                .iter()
                .map(|s| (f64::from(s.rate), f(s).max(0.001), s.within_budget))
                .collect(),
        };
        let knee = result
            .capacity
            .max_rate_by_clients
            .iter()
            .find(|(c, _)| *c == clients)
            .and_then(|(_, r)| *r);
        charts.push(svg(&Chart {
            title: format!("Tick-to-client latency against trade rate, {clients} clients"),
            x_label: "offered trades/s",
            y_label: "latency, ms",
            series: vec![
                percentile("p50", COLORS[0], |s| s.latency_ms.p50),
                percentile("p90", COLORS[1], |s| s.latency_ms.p90),
                percentile("p99", COLORS[2], |s| s.latency_ms.p99),
                percentile("p99.9", COLORS[3], |s| s.latency_ms.p999),
                percentile("max", COLORS[4], |s| s.latency_ms.max),
            ],
            budget: Some(plan.budget_p99_ms),
            knee: knee.map(|r| (f64::from(r), format!("holds {}/s", human(f64::from(r))))),
        }));
    }
    for &rate in &plan.rates {
        let steps: Vec<&Step> = result.steps.iter().filter(|s| s.rate == rate).collect();
        if steps.len() < 2 {
            continue;
        }
        let knee = result
            .capacity
            .max_clients_by_rate
            .iter()
            .find(|(r, _)| *r == rate)
            .and_then(|(_, c)| *c);
        charts.push(svg(&Chart {
            title: format!(
                "Delivered events/s against clients, {} trades/s",
                human(f64::from(rate))
            ),
            x_label: "clients",
            y_label: "client-events/s",
            series: vec![Series {
                name: "delivered",
                color: COLORS[0],
                points: steps
                    .iter()
                    .map(|s| {
                        (f64::from(s.clients), s.delivered_events_per_s.max(1.0), s.within_budget)
                    })
                    .collect(),
            }],
            budget: None,
            knee: knee.map(|c| (f64::from(c), format!("holds {c} clients"))),
        }));
        charts.push(svg(&Chart {
            title: format!("p99 latency against clients, {} trades/s", human(f64::from(rate))),
            x_label: "clients",
            y_label: "p99 latency, ms",
            series: vec![Series {
                name: "p99",
                color: COLORS[2],
                points: steps
                    .iter()
                    .map(|s| (f64::from(s.clients), s.latency_ms.p99.max(0.001), s.within_budget))
                    .collect(),
            }],
            budget: Some(plan.budget_p99_ms),
            knee: knee.map(|c| (f64::from(c), format!("holds {c} clients"))),
        }));
    }
    let mut page = String::new();
    page.push_str(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>TickStock capacity</title>",
    );
    page.push_str("<style>body{font-family:sans-serif;margin:24px;max-width:1100px}pre{background:#f6f6f6;padding:12px;overflow-x:auto}figure{margin:16px 0}</style></head><body>\n");
    let _ = writeln!(
        page,
        "<h1>TickStock capacity run{}</h1>",
        if result.valid { "" } else { " — INVALID" }
    );
    page.push_str("<p>Filled markers: steps the server held (valid, p99 within the budget, nothing shed). Hollow markers: steps over capacity. Latency is from each trade's intended send time (open loop, coordinated omission corrected) to its arrival at a client.</p>\n");
    for chart in charts {
        let _ = writeln!(page, "<figure>{chart}</figure>");
    }
    let _ = writeln!(page, "<h2>Steps</h2><pre>{}</pre>", escape(&table(result)));
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_cover_whole_decades_and_labels_are_short() {
        assert_eq!(decades([3.0, 450.0].into_iter()), (1.0, 1000.0));
        assert_eq!(decades(std::iter::empty()), (1.0, 10.0));
        assert_eq!(
            (human(20_000.0), human(1e6), human(0.5)),
            ("20k".to_owned(), "1M".to_owned(), "0.5".to_owned())
        );
    }
}
