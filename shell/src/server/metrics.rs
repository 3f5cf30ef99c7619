//! `/metrics` (Prometheus text exposition) and `/health` (JSON), rendered from the counters
//! every stage publishes. Rendering happens on the event loop thread when asked; nothing here
//! is on a hot path.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use tickstock_engine::RejectReason;

use crate::feed::upstream::parse::Garbage;
use crate::feed::upstream::{UpstreamStatus, FAILURE_LABELS};
use crate::pipeline::Observed;
use crate::tracer::Counter;

/// One event loop's counters (one writer: that loop; `sink_waits` of the first loop is
/// written by the emitter's sink, its only writer).
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Open WebSocket connections (gauge).
    pub connections: Counter,
    /// TCP connections accepted.
    pub accepted: Counter,
    /// Upgrades refused with `max_connections`.
    pub refused_max_connections: Counter,
    /// HTTP requests answered (health, metrics, 404, 400).
    pub http_requests: Counter,
    /// Malformed or refused requests (`400`).
    pub bad_requests: Counter,
    /// Successful authentications.
    pub auth_successes: Counter,
    /// Failed authentications (bad, expired or missing token).
    pub auth_failures: Counter,
    /// Connections that did not authenticate in time.
    pub auth_timeouts: Counter,
    /// Connections closed because a reload removed their API key.
    pub keys_revoked: Counter,
    /// Requests that did not complete their head in time.
    pub handshake_timeouts: Counter,
    /// Subscribed topics over all connections (gauge).
    pub subscriptions: Counter,
    /// Groups: distinct deliveries among the connections (gauge).
    pub groups: Counter,
    /// Events appended to group streams, once per group (each may go to many clients).
    pub group_events: Counter,
    /// Messages (arrays) sent to clients.
    pub messages_out: Counter,
    /// Bytes written to client sockets.
    pub bytes_out: Counter,
    /// Socket write calls (each may carry several messages).
    pub writes: Counter,
    /// Events delivered (one per client that got it).
    pub events_out: Counter,
    /// The current write linger, in µs (gauge).
    pub linger_us: Counter,
    /// Clients closed with 4008 for not keeping up (any policy).
    pub slow_consumer_closes: Counter,
    /// Events slow consumers lost: left unwritten at a close or a shed step, or dropped by
    /// conflation.
    pub slow_consumer_dropped_events: Counter,
    /// Times a `conflate` client fell behind and began conflating.
    pub conflations: Counter,
    /// Events dropped by conflation.
    pub conflated_events: Counter,
    /// `shed` steps taken (a channel stopped for a lagging client).
    pub shed_steps: Counter,
    /// `unshed` steps (a channel given back to a client that caught up).
    pub unshed_steps: Counter,
    /// Client errors answered with an error status.
    pub client_errors: Counter,
    /// Connections closed for an oversized (1009), non-UTF-8 (1007) or unmasked (1002) frame.
    pub protocol_closes: Counter,
    /// Connections closed for not answering pings.
    pub pong_timeouts: Counter,
    /// Frame batches taken from the emitter.
    pub batches: Counter,
    /// Batches the emitter had to wait to hand over, because the fan-out still held every
    /// pooled batch or a batch ring was full (the emitter backs off, never drops).
    pub sink_waits: Counter,
}

/// Every event loop's counters; `/metrics` and `/health` show their sums.
#[derive(Clone, Debug)]
pub struct ServerStats {
    loops: Arc<[ServerCounters]>,
}

impl ServerStats {
    /// Counters for `loops` event loops.
    pub fn new(loops: usize) -> ServerStats {
        ServerStats { loops: (0..loops.max(1)).map(|_| ServerCounters::default()).collect() }
    }

    /// Loop `index`'s counters (written by that loop only).
    pub fn of_loop(&self, index: usize) -> &ServerCounters {
        &self.loops[index]
    }

    /// A counter summed over every loop.
    pub fn total(&self, field: impl Fn(&ServerCounters) -> &Counter) -> u64 {
        self.loops.iter().map(|c| field(c).get()).sum()
    }
}

/// Is the feed up and the engine moving? `None` when healthy, else why not.
pub fn unhealthy(
    observed: &Observed,
    upstream: Option<&UpstreamStatus>,
    now_ns: u64,
    stall_ns: u64,
) -> Option<String> {
    if let Some(upstream) = upstream {
        let health = upstream.health();
        if !health.streaming {
            let why = health.last_failure.unwrap_or_else(|| "not connected yet".to_owned());
            return Some(format!("feed down: {why}"));
        }
    }
    let engine_now = observed.counters.engine_now_ns.get();
    if engine_now > 0 && now_ns.saturating_sub(engine_now) > stall_ns {
        return Some(format!(
            "engine stalled: its clock is {} ms behind",
            (now_ns - engine_now) / 1_000_000
        ));
    }
    None
}

/// The `/health` body and whether it is healthy.
pub fn health(
    observed: &Observed,
    server: &ServerStats,
    upstream: Option<&UpstreamStatus>,
    uptime_s: u64,
    problem: Option<&str>,
) -> String {
    let c = &observed.counters;
    let feed = match upstream {
        None => r#"{"source":"synthetic","state":"running"}"#.to_owned(),
        Some(upstream) => {
            let health = upstream.health();
            format!(
                r#"{{"source":"upstream","state":{},"breaker":{},"last_failure":{}}}"#,
                json(if health.streaming { "streaming" } else { "down" }),
                json(if health.breaker.is_empty() { "closed" } else { health.breaker }),
                health.last_failure.as_deref().map_or_else(|| "null".to_owned(), json)
            )
        }
    };
    format!(
        r#"{{"status":{},"problem":{},"uptime_s":{uptime_s},"feed":{feed},"clients":{},"ticks_in":{},"events_out":{},"drops":{{"mfbuf":{},"slow_consumer_closes":{},"journal":{}}}}}"#,
        json(if problem.is_none() { "ok" } else { "unhealthy" }),
        problem.map_or_else(|| "null".to_owned(), json),
        server.total(|c| &c.connections),
        c.received.get(),
        server.total(|c| &c.events_out),
        c.buffer_dropped.get(),
        server.total(|c| &c.slow_consumer_closes),
        c.journal_ring_dropped.get() + c.journal_failed.get(),
    )
}

fn json(text: &str) -> String {
    serde_json::to_string(text).expect("Invariant: a str serializes")
}

/// The `/metrics` body.
pub fn prometheus(
    observed: &Observed,
    server: &ServerStats,
    upstream: Option<&UpstreamStatus>,
) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let c = &observed.counters;
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP tickstock_{name} {help}\n# TYPE tickstock_{name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "tickstock_{name}{labels} {value}");
        }
    };
    let one = |value: u64| vec![(String::new(), value)];
    metric(
        "ticks_received_total",
        "counter",
        "Inputs the feed pushed into the engine ring.",
        &one(c.received.get()),
    );
    metric("ticks_accepted_total", "counter", "Ticks the engine accepted.", &one(c.accepted.get()));
    let rejects: Vec<(String, u64)> = RejectReason::ALL
        .iter()
        .map(|r| (format!("{{reason=\"{}\"}}", r.label()), c.rejected_by[r.index()].get()))
        .collect();
    metric("ticks_rejected_total", "counter", "Ticks rejected, by reason.", &rejects);
    metric(
        "feed_ring_full_waits_total",
        "counter",
        "Times the feed waited on a full ring.",
        &one(c.feed_ring_full_waits.get()),
    );
    metric(
        "events_detected_total",
        "counter",
        "Events the engine produced.",
        &one(c.detected.get()),
    );
    metric(
        "mfbuf_buffered_total",
        "counter",
        "Events taken by the multi-frequency buffer.",
        &one(c.buffered.get()),
    );
    metric(
        "mfbuf_dropped_total",
        "counter",
        "Events a full lane refused.",
        &one(c.buffer_dropped.get()),
    );
    metric(
        "events_encoded_total",
        "counter",
        "Events encoded by the emitter.",
        &one(c.encoded.get()),
    );
    metric(
        "journal_records_total",
        "counter",
        "Records written to the journal.",
        &one(c.journal_records.get()),
    );
    metric(
        "journal_bytes_total",
        "counter",
        "Bytes written to the journal.",
        &one(c.journal_bytes.get()),
    );
    metric(
        "journal_dropped_total",
        "counter",
        "Journal records dropped.",
        &[
            ("{cause=\"ring_full\"}".to_owned(), c.journal_ring_dropped.get()),
            ("{cause=\"disk\"}".to_owned(), c.journal_failed.get()),
        ],
    );
    metric(
        "journal_down",
        "gauge",
        "1 while the journal cannot write.",
        &one(u64::from(c.journal_down.load(Ordering::Relaxed))),
    );
    metric(
        "connections",
        "gauge",
        "Open WebSocket connections.",
        &one(server.total(|c| &c.connections)),
    );
    metric(
        "connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        &one(server.total(|c| &c.accepted)),
    );
    metric(
        "connections_refused_total",
        "counter",
        "Upgrades refused with max_connections.",
        &one(server.total(|c| &c.refused_max_connections)),
    );
    metric(
        "auth_total",
        "counter",
        "Authentications by outcome.",
        &[
            ("{outcome=\"success\"}".to_owned(), server.total(|c| &c.auth_successes)),
            ("{outcome=\"failure\"}".to_owned(), server.total(|c| &c.auth_failures)),
            ("{outcome=\"timeout\"}".to_owned(), server.total(|c| &c.auth_timeouts)),
            ("{outcome=\"revoked\"}".to_owned(), server.total(|c| &c.keys_revoked)),
        ],
    );
    metric(
        "subscriptions",
        "gauge",
        "Subscribed topics over all connections.",
        &one(server.total(|c| &c.subscriptions)),
    );
    metric(
        "messages_out_total",
        "counter",
        "Messages sent to clients.",
        &one(server.total(|c| &c.messages_out)),
    );
    metric(
        "bytes_out_total",
        "counter",
        "Bytes sent to clients.",
        &one(server.total(|c| &c.bytes_out)),
    );
    metric(
        "client_events_out_total",
        "counter",
        "Events delivered to clients.",
        &one(server.total(|c| &c.events_out)),
    );
    metric(
        "slow_consumer_closes_total",
        "counter",
        "Clients closed with 4008.",
        &one(server.total(|c| &c.slow_consumer_closes)),
    );
    metric(
        "slow_consumer_dropped_events_total",
        "counter",
        "Events slow consumers lost (unwritten at a close or shed step, or conflated away).",
        &one(server.total(|c| &c.slow_consumer_dropped_events)),
    );
    metric(
        "slow_consumer_actions_total",
        "counter",
        "What the slow-consumer policies did, by policy and action.",
        &[
            (
                "{policy=\"any\",action=\"close\"}".to_owned(),
                server.total(|c| &c.slow_consumer_closes),
            ),
            (
                "{policy=\"conflate\",action=\"conflate\"}".to_owned(),
                server.total(|c| &c.conflations),
            ),
            ("{policy=\"shed\",action=\"shed\"}".to_owned(), server.total(|c| &c.shed_steps)),
            ("{policy=\"shed\",action=\"unshed\"}".to_owned(), server.total(|c| &c.unshed_steps)),
        ],
    );
    metric(
        "conflated_events_total",
        "counter",
        "Events conflation dropped from slow clients (the `conflate` policy).",
        &one(server.total(|c| &c.conflated_events)),
    );
    metric(
        "groups",
        "gauge",
        "Groups: distinct deliveries among the connections.",
        &one(server.total(|c| &c.groups)),
    );
    metric(
        "group_events_total",
        "counter",
        "Events appended to group streams, once per group (shared by its members).",
        &one(server.total(|c| &c.group_events)),
    );
    metric(
        "socket_writes_total",
        "counter",
        "Socket write calls to clients.",
        &one(server.total(|c| &c.writes)),
    );
    metric(
        "linger_microseconds",
        "gauge",
        "The write linger now, summed over the event loops.",
        &one(server.total(|c| &c.linger_us)),
    );
    metric(
        "sink_waits_total",
        "counter",
        "Batches the emitter waited to hand to the fan-out (it was behind; nothing dropped).",
        &one(server.total(|c| &c.sink_waits)),
    );
    metric(
        "client_errors_total",
        "counter",
        "Client errors answered with an error status.",
        &one(server.total(|c| &c.client_errors)),
    );
    metric(
        "protocol_closes_total",
        "counter",
        "Connections closed for oversized, non-UTF-8 or unmasked frames.",
        &one(server.total(|c| &c.protocol_closes)),
    );
    metric(
        "pong_timeouts_total",
        "counter",
        "Connections closed for not answering pings.",
        &one(server.total(|c| &c.pong_timeouts)),
    );
    metric(
        "http_requests_total",
        "counter",
        "HTTP requests answered.",
        &one(server.total(|c| &c.http_requests)),
    );
    if let Some(upstream) = upstream {
        let u = &upstream.counters;
        let health = upstream.health();
        metric(
            "upstream_streaming",
            "gauge",
            "1 while an upstream session streams.",
            &one(u64::from(health.streaming)),
        );
        let breaker = ["closed", "open", "half_open"]
            .map(|state| (format!("{{state=\"{state}\"}}"), u64::from(health.breaker == state)));
        metric(
            "upstream_breaker",
            "gauge",
            "Circuit breaker state (the last failure is on /health).",
            &breaker,
        );
        metric(
            "upstream_reconnects_total",
            "counter",
            "Upstream reconnects.",
            &one(u.reconnects.get()),
        );
        let failures: Vec<(String, u64)> = FAILURE_LABELS
            .iter()
            .zip(&u.failures)
            .map(|(l, n)| (format!("{{kind=\"{l}\"}}"), n.get()))
            .collect();
        metric("upstream_failures_total", "counter", "Upstream failures by kind.", &failures);
        let garbage: Vec<(String, u64)> = Garbage::ALL
            .iter()
            .map(|g| (format!("{{kind=\"{}\"}}", g.label()), u.garbage[g.index()].get()))
            .collect();
        metric(
            "upstream_garbage_total",
            "counter",
            "Upstream elements skipped, by kind.",
            &garbage,
        );
        metric(
            "upstream_disconnected_seconds_total",
            "counter",
            "Time without an upstream session.",
            &one(u.disconnected_ns.get() / 1_000_000_000),
        );
        metric(
            "upstream_q_gaps_total",
            "counter",
            "Trades whose per-symbol q skipped numbers after the previous one (possible losses upstream).",
            &one(u.q_gaps.get()),
        );
    }
    summary(
        &mut out,
        "engine_tick_seconds",
        "Engine time per tick.",
        &observed.histograms.engine_tick_ns,
    );
    summary(
        &mut out,
        "ring_to_frame_seconds",
        "From ring entry to encoded frame.",
        &observed.histograms.ring_to_frame_ns,
    );
    summary(
        &mut out,
        "emitter_cycle_seconds",
        "Emitter cycle.",
        &observed.histograms.emitter_cycle_ns,
    );
    out
}

/// A latency histogram as a Prometheus summary (quantiles in seconds).
fn summary(out: &mut String, name: &str, help: &str, histogram: &Mutex<Histogram<u64>>) {
    let h = histogram.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = writeln!(out, "# HELP tickstock_{name} {help}\n# TYPE tickstock_{name} summary");
    for quantile in [0.5, 0.9, 0.99, 0.999] {
        let seconds = h.value_at_quantile(quantile) as f64 / 1e9;
        let _ = writeln!(out, "tickstock_{name}{{quantile=\"{quantile}\"}} {seconds}");
    }
    let sum = h.mean() * h.len() as f64 / 1e9;
    let _ = writeln!(out, "tickstock_{name}_sum {sum}\ntickstock_{name}_count {}", h.len());
}
