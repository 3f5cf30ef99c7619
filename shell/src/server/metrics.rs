//! `/metrics` (Prometheus text exposition) and `/health` (JSON), rendered from the counters
//! every stage publishes. Rendering happens on the event loop thread when asked; nothing here
//! is on a hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use tickstock_engine::RejectReason;

use crate::feed::upstream::parse::Garbage;
use crate::feed::upstream::{UpstreamCounters, UpstreamStatus, FAILURE_LABELS};
use crate::pipeline::Observed;

/// The server's own counters (one writer: the event loop).
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Open WebSocket connections (gauge).
    pub connections: AtomicU64,
    /// TCP connections accepted.
    pub accepted: AtomicU64,
    /// Upgrades refused with `max_connections`.
    pub refused_max_connections: AtomicU64,
    /// HTTP requests answered (health, metrics, 404, 400).
    pub http_requests: AtomicU64,
    /// Malformed or refused requests (`400`).
    pub bad_requests: AtomicU64,
    /// Successful authentications.
    pub auth_successes: AtomicU64,
    /// Failed authentications (bad, expired or missing token).
    pub auth_failures: AtomicU64,
    /// Connections that did not authenticate in time.
    pub auth_timeouts: AtomicU64,
    /// Requests that did not complete their head in time.
    pub handshake_timeouts: AtomicU64,
    /// Subscribed topics over all connections (gauge).
    pub subscriptions: AtomicU64,
    /// Messages (arrays) sent to clients.
    pub messages_out: AtomicU64,
    /// Bytes of those messages.
    pub bytes_out: AtomicU64,
    /// Events delivered (one per client that got it).
    pub events_out: AtomicU64,
    /// Clients closed with 4008 for not keeping up.
    pub slow_consumer_closes: AtomicU64,
    /// Events discarded with those clients' outboxes.
    pub slow_consumer_dropped_bytes: AtomicU64,
    /// Events dropped by conflation (`slow_consumer_policy = "conflate"`).
    pub conflated_events: AtomicU64,
    /// Client errors answered with an error status.
    pub client_errors: AtomicU64,
    /// Connections closed for an oversized (1009), non-UTF-8 (1007) or unmasked (1002) frame.
    pub protocol_closes: AtomicU64,
    /// Connections closed for not answering pings.
    pub pong_timeouts: AtomicU64,
    /// Frame batches taken from the emitter.
    pub batches: AtomicU64,
    /// Batches the emitter had to wait to hand over, because the fan-out still held every
    /// pooled batch or the batch ring was full (the emitter backs off, never drops).
    pub sink_waits: AtomicU64,
}

impl ServerCounters {
    /// Adds to a counter (event loop thread only).
    pub fn add(counter: &AtomicU64, delta: u64) {
        // Relaxed: statistics with one writer.
        counter.store(counter.load(Ordering::Relaxed) + delta, Ordering::Relaxed);
    }

    /// Sets a gauge (event loop thread only).
    pub fn set(counter: &AtomicU64, value: u64) {
        // Relaxed: as `add`.
        counter.store(value, Ordering::Relaxed);
    }
}

fn get(counter: &AtomicU64) -> u64 {
    // Relaxed: statistics.
    counter.load(Ordering::Relaxed)
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
    server: &ServerCounters,
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
        get(&server.connections),
        c.received.get(),
        get(&server.events_out),
        c.buffer_dropped.get(),
        get(&server.slow_consumer_closes),
        c.journal_ring_dropped.get() + c.journal_failed.get(),
    )
}

fn json(text: &str) -> String {
    serde_json::to_string(text).expect("Invariant: a str serializes")
}

/// The `/metrics` body.
pub fn prometheus(
    observed: &Observed,
    server: &ServerCounters,
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
    metric("connections", "gauge", "Open WebSocket connections.", &one(get(&server.connections)));
    metric(
        "connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        &one(get(&server.accepted)),
    );
    metric(
        "connections_refused_total",
        "counter",
        "Upgrades refused with max_connections.",
        &one(get(&server.refused_max_connections)),
    );
    metric(
        "auth_total",
        "counter",
        "Authentications by outcome.",
        &[
            ("{outcome=\"success\"}".to_owned(), get(&server.auth_successes)),
            ("{outcome=\"failure\"}".to_owned(), get(&server.auth_failures)),
            ("{outcome=\"timeout\"}".to_owned(), get(&server.auth_timeouts)),
        ],
    );
    metric(
        "subscriptions",
        "gauge",
        "Subscribed topics over all connections.",
        &one(get(&server.subscriptions)),
    );
    metric(
        "messages_out_total",
        "counter",
        "Messages sent to clients.",
        &one(get(&server.messages_out)),
    );
    metric("bytes_out_total", "counter", "Bytes sent to clients.", &one(get(&server.bytes_out)));
    metric(
        "client_events_out_total",
        "counter",
        "Events delivered to clients.",
        &one(get(&server.events_out)),
    );
    metric(
        "slow_consumer_closes_total",
        "counter",
        "Clients closed with 4008.",
        &one(get(&server.slow_consumer_closes)),
    );
    metric(
        "slow_consumer_dropped_bytes_total",
        "counter",
        "Outbox bytes discarded with slow consumers.",
        &one(get(&server.slow_consumer_dropped_bytes)),
    );
    metric(
        "conflated_events_total",
        "counter",
        "Events conflation dropped from slow clients' outboxes (`slow_consumer_policy = \"conflate\"`).",
        &one(get(&server.conflated_events)),
    );
    metric(
        "sink_waits_total",
        "counter",
        "Batches the emitter waited to hand to the fan-out (it was behind; nothing dropped).",
        &one(get(&server.sink_waits)),
    );
    metric(
        "client_errors_total",
        "counter",
        "Client errors answered with an error status.",
        &one(get(&server.client_errors)),
    );
    metric(
        "protocol_closes_total",
        "counter",
        "Connections closed for oversized, non-UTF-8 or unmasked frames.",
        &one(get(&server.protocol_closes)),
    );
    metric(
        "pong_timeouts_total",
        "counter",
        "Connections closed for not answering pings.",
        &one(get(&server.pong_timeouts)),
    );
    metric(
        "http_requests_total",
        "counter",
        "HTTP requests answered.",
        &one(get(&server.http_requests)),
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
            &one(UpstreamCounters::get(&u.reconnects)),
        );
        let failures: Vec<(String, u64)> = FAILURE_LABELS
            .iter()
            .zip(&u.failures)
            .map(|(l, n)| (format!("{{kind=\"{l}\"}}"), UpstreamCounters::get(n)))
            .collect();
        metric("upstream_failures_total", "counter", "Upstream failures by kind.", &failures);
        let garbage: Vec<(String, u64)> = Garbage::ALL
            .iter()
            .map(|g| {
                (
                    format!("{{kind=\"{}\"}}", g.label()),
                    UpstreamCounters::get(&u.garbage[g.index()]),
                )
            })
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
            &one(UpstreamCounters::get(&u.disconnected_ns) / 1_000_000_000),
        );
        metric(
            "upstream_lost_by_q_total",
            "counter",
            "Trades missing by the upstream's q numbers (upper bound).",
            &one(UpstreamCounters::get(&u.lost_by_q)),
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
