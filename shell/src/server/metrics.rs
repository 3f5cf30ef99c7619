//! `/metrics` (Prometheus text exposition) and `/health` (JSON), rendered from the counters
//! every stage publishes. Rendering happens on the event loop thread when asked; nothing here
//! is on a hot path.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;
use prometheus::core::Collector;
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};
use prometheus::TextEncoder;
use tickstock_engine::RejectReason;

use super::event_log::EventLogCounters;
use super::service::Reporting;
use crate::config::Role;
use crate::database::pool::QueryCounters;
use crate::database::DatabaseStatus;
use crate::feed::upstream::parse::Garbage;
use crate::feed::upstream::{UpstreamStatus, FAILURE_LABELS};
use crate::nats::NatsStatus;
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
    /// WebSocket upgrades.
    pub upgrades: Counter,
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
    /// Events sent in snapshots (`subscribe` with `snapshot`).
    pub snapshot_events: Counter,
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
    // Acquire: pairs with the engine's Release store when the replay ends.
    if observed.counters.warming.load(Ordering::Acquire) {
        return Some(format!(
            "warming: replaying the journal ({} trades so far); clients are refused until it is done",
            observed.counters.received.get()
        ));
    }
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

/// A gateway without its stream is unhealthy (503): its clients are kept, and go on with no
/// gap when the stream returns, but a load balancer should send new ones elsewhere.
pub fn gateway_problem(reporting: &Reporting) -> Option<String> {
    let Some((Role::Gateway, status)) = &reporting.nats else { return None };
    // Acquire: pairs with the consumer's Release store when it has caught up.
    if reporting.observed.counters.warming.load(Ordering::Acquire) {
        return Some(format!(
            "warming: filling the event log from the NATS stream ({} events so far); \
             clients are refused until it is done",
            status.consumed_events.load(Ordering::Relaxed)
        ));
    }
    status.problem()
}

/// What degrades a NATS role (200, `degraded`): NATS away from an ingest (its ring keeps what
/// it cannot publish yet), or a gateway whose stream lacked events it had not read (it serves
/// on, but a resume across the hole is refused).
fn nats_degradation(reporting: &Reporting) -> Option<String> {
    match reporting.nats.as_ref()? {
        (Role::Ingest, status) => status.problem(),
        (Role::Gateway, status) => {
            let lost = status.gap_events.load(Ordering::Relaxed);
            (lost > 0).then(|| {
                format!(
                    "nats: the stream lacked {lost} events this gateway had not read (it \
                     lagged past nats.retain_*, or the ingest dropped them); a resume across \
                     the hole gets resume_failed"
                )
            })
        }
        (Role::All, _) => None,
    }
}

/// The `/health` body and whether it is healthy.
pub fn health(
    reporting: &Reporting,
    server: &ServerStats,
    uptime_s: u64,
    problem: Option<&str>,
    database: Option<&DatabaseStatus>,
) -> String {
    let c = &reporting.observed.counters;
    // The database away degrades the server (200, `degraded`): clients are served, and the
    // sink's ring keeps what it cannot write yet. So can NATS.
    let degradation =
        database.and_then(DatabaseStatus::problem).or_else(|| nats_degradation(reporting));
    let (status, problem) = match (problem, degradation.as_deref()) {
        (Some(problem), _) => ("unhealthy", Some(problem)),
        (None, Some(problem)) => ("degraded", Some(problem)),
        (None, None) => ("ok", None),
    };
    let database = database.map_or_else(String::new, |db| {
        let d = &db.counters;
        format!(
            r#","database":{{"state":{},"committed_seq":{},"lag_ms":{},"rows_written":{},"dropped":{}}}"#,
            json(if db.is_up() { "up" } else { "down" }),
            db.committed_seq(),
            d.lag_ms.load(Ordering::Relaxed),
            d.rows_written.load(Ordering::Relaxed),
            d.dropped.load(Ordering::Relaxed),
        )
    });
    let nats = reporting.nats.as_ref().map_or_else(String::new, |(role, n)| {
        let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        format!(
            r#","nats":{{"role":{},"state":{},"last_seq":{},"first_seq":{},"published_events":{},"dropped_events":{},"refilled_events":{},"consumed_events":{},"gap_events":{},"transit_us":{}}}"#,
            json(if *role == Role::Ingest { "ingest" } else { "gateway" }),
            json(if n.is_up() { "up" } else { "down" }),
            count(&n.last_seq),
            count(&n.first_seq),
            count(&n.published_events),
            count(&n.dropped_events),
            count(&n.refilled_events),
            count(&n.consumed_events),
            count(&n.gap_events),
            count(&n.transit_ns) / 1_000,
        )
    });
    let feed = match reporting.upstream.as_deref() {
        None => format!(r#"{{"source":{},"state":"running"}}"#, json(reporting.feed)),
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
        r#"{{"status":{},"problem":{},"uptime_s":{uptime_s},"feed":{feed},"clients":{},"ticks_in":{},"events_out":{},"drops":{{"mfbuf":{},"slow_consumer_closes":{},"journal":{}}}{database}{nats}}}"#,
        json(status),
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

/// The `/metrics` body: Prometheus text format 0.0.4, encoded by the `prometheus` crate
/// from the counters and histograms as they are at the scrape, with the `process_*`
/// metrics of its process collector.
pub fn prometheus(
    observed: &Observed,
    server: &ServerStats,
    upstream: Option<&UpstreamStatus>,
    event_log: Option<&EventLogCounters>,
    database: Option<(&DatabaseStatus, &QueryCounters)>,
    nats: Option<&NatsStatus>,
) -> String {
    let mut out = Families::default();
    let c = &observed.counters;
    let one = |value: u64| vec![(Vec::new(), value)];
    out.add(
        "ticks_received_total",
        MetricType::COUNTER,
        "Inputs the feed pushed into the engine ring.",
        &one(c.received.get()),
    );
    out.add(
        "ticks_accepted_total",
        MetricType::COUNTER,
        "Ticks the engine accepted.",
        &one(c.accepted.get()),
    );
    let rejects: Vec<(Labels, u64)> = RejectReason::ALL
        .iter()
        .map(|r| (vec![("reason", r.label().to_owned())], c.rejected_by[r.index()].get()))
        .collect();
    out.add("ticks_rejected_total", MetricType::COUNTER, "Ticks rejected, by reason.", &rejects);
    out.add(
        "feed_ring_full_waits_total",
        MetricType::COUNTER,
        "Times the feed waited on a full ring.",
        &one(c.feed_ring_full_waits.get()),
    );
    out.add(
        "events_detected_total",
        MetricType::COUNTER,
        "Events the engine produced.",
        &one(c.detected.get()),
    );
    out.add(
        "mfbuf_buffered_total",
        MetricType::COUNTER,
        "Events taken by the multi-frequency buffer.",
        &one(c.buffered.get()),
    );
    out.add(
        "mfbuf_dropped_total",
        MetricType::COUNTER,
        "Events a full lane refused.",
        &one(c.buffer_dropped.get()),
    );
    out.add(
        "events_encoded_total",
        MetricType::COUNTER,
        "Events encoded by the emitter.",
        &one(c.encoded.get()),
    );
    out.add(
        "journal_records_total",
        MetricType::COUNTER,
        "Records written to the journal.",
        &one(c.journal_records.get()),
    );
    out.add(
        "journal_written_bytes_total",
        MetricType::COUNTER,
        "Bytes written to the journal.",
        &one(c.journal_bytes.get()),
    );
    out.add(
        "journal_dropped_total",
        MetricType::COUNTER,
        "Journal records dropped.",
        &[
            (vec![("cause", "ring_full".to_owned())], c.journal_ring_dropped.get()),
            (vec![("cause", "disk".to_owned())], c.journal_failed.get()),
        ],
    );
    out.add(
        "journal_down",
        MetricType::GAUGE,
        "1 while the journal cannot write.",
        &one(u64::from(c.journal_down.load(Ordering::Relaxed))),
    );
    out.add(
        "connections",
        MetricType::GAUGE,
        "Open WebSocket connections.",
        &one(server.total(|c| &c.connections)),
    );
    out.add(
        "connections_accepted_total",
        MetricType::COUNTER,
        "TCP connections accepted (HTTP requests and WebSocket upgrades).",
        &one(server.total(|c| &c.accepted)),
    );
    out.add(
        "websocket_upgrades_total",
        MetricType::COUNTER,
        "WebSocket upgrades: client connections opened.",
        &one(server.total(|c| &c.upgrades)),
    );
    out.add(
        "connections_refused_total",
        MetricType::COUNTER,
        "Upgrades refused with max_connections.",
        &one(server.total(|c| &c.refused_max_connections)),
    );
    out.add(
        "auth_total",
        MetricType::COUNTER,
        "Authentications by outcome.",
        &[
            (vec![("outcome", "success".to_owned())], server.total(|c| &c.auth_successes)),
            (vec![("outcome", "failure".to_owned())], server.total(|c| &c.auth_failures)),
            (vec![("outcome", "timeout".to_owned())], server.total(|c| &c.auth_timeouts)),
            (vec![("outcome", "revoked".to_owned())], server.total(|c| &c.keys_revoked)),
        ],
    );
    out.add(
        "subscriptions",
        MetricType::GAUGE,
        "Subscribed topics over all connections.",
        &one(server.total(|c| &c.subscriptions)),
    );
    out.add(
        "messages_out_total",
        MetricType::COUNTER,
        "Messages sent to clients.",
        &one(server.total(|c| &c.messages_out)),
    );
    out.add(
        "sent_bytes_total",
        MetricType::COUNTER,
        "Bytes sent to clients.",
        &one(server.total(|c| &c.bytes_out)),
    );
    out.add(
        "client_events_out_total",
        MetricType::COUNTER,
        "Events delivered to clients.",
        &one(server.total(|c| &c.events_out)),
    );
    out.add(
        "slow_consumer_closes_total",
        MetricType::COUNTER,
        "Clients closed with 4008.",
        &one(server.total(|c| &c.slow_consumer_closes)),
    );
    out.add(
        "slow_consumer_dropped_events_total",
        MetricType::COUNTER,
        "Events slow consumers lost (unwritten at a close or shed step, or conflated away).",
        &one(server.total(|c| &c.slow_consumer_dropped_events)),
    );
    out.add(
        "slow_consumer_actions_total",
        MetricType::COUNTER,
        "What the slow-consumer policies did, by policy and action.",
        &[
            (
                vec![("policy", "any".to_owned()), ("action", "close".to_owned())],
                server.total(|c| &c.slow_consumer_closes),
            ),
            (
                vec![("policy", "conflate".to_owned()), ("action", "conflate".to_owned())],
                server.total(|c| &c.conflations),
            ),
            (
                vec![("policy", "shed".to_owned()), ("action", "shed".to_owned())],
                server.total(|c| &c.shed_steps),
            ),
            (
                vec![("policy", "shed".to_owned()), ("action", "unshed".to_owned())],
                server.total(|c| &c.unshed_steps),
            ),
        ],
    );
    out.add(
        "conflated_events_total",
        MetricType::COUNTER,
        "Events conflation dropped from slow clients (the `conflate` policy).",
        &one(server.total(|c| &c.conflated_events)),
    );
    out.add(
        "snapshot_events_total",
        MetricType::COUNTER,
        "Events sent in snapshots on subscribe (the latest of each channel and symbol).",
        &one(server.total(|c| &c.snapshot_events)),
    );
    out.add(
        "groups",
        MetricType::GAUGE,
        "Groups: distinct deliveries among the connections.",
        &one(server.total(|c| &c.groups)),
    );
    out.add(
        "group_events_total",
        MetricType::COUNTER,
        "Events appended to group streams, once per group (shared by its members).",
        &one(server.total(|c| &c.group_events)),
    );
    out.add(
        "socket_writes_total",
        MetricType::COUNTER,
        "Socket write calls to clients.",
        &one(server.total(|c| &c.writes)),
    );
    out.add_f64(
        "linger_seconds",
        MetricType::GAUGE,
        "The write linger now, summed over the event loops.",
        server.total(|c| &c.linger_us) as f64 / 1e6,
    );
    out.add(
        "sink_waits_total",
        MetricType::COUNTER,
        "Batches the emitter waited to hand to the fan-out (it was behind; nothing dropped).",
        &one(server.total(|c| &c.sink_waits)),
    );
    out.add(
        "client_errors_total",
        MetricType::COUNTER,
        "Client errors answered with an error status.",
        &one(server.total(|c| &c.client_errors)),
    );
    out.add(
        "protocol_closes_total",
        MetricType::COUNTER,
        "Connections closed for oversized, non-UTF-8 or unmasked frames.",
        &one(server.total(|c| &c.protocol_closes)),
    );
    out.add(
        "pong_timeouts_total",
        MetricType::COUNTER,
        "Connections closed for not answering pings.",
        &one(server.total(|c| &c.pong_timeouts)),
    );
    out.add(
        "http_requests_total",
        MetricType::COUNTER,
        "HTTP requests answered.",
        &one(server.total(|c| &c.http_requests)),
    );
    if let Some(upstream) = upstream {
        let u = &upstream.counters;
        let health = upstream.health();
        out.add(
            "upstream_streaming",
            MetricType::GAUGE,
            "1 while an upstream session streams.",
            &one(u64::from(health.streaming)),
        );
        let breaker = ["closed", "open", "half_open"]
            .map(|state| (vec![("state", state.to_owned())], u64::from(health.breaker == state)));
        out.add(
            "upstream_breaker",
            MetricType::GAUGE,
            "Circuit breaker state (the last failure is on /health).",
            &breaker,
        );
        out.add(
            "upstream_reconnects_total",
            MetricType::COUNTER,
            "Upstream reconnects.",
            &one(u.reconnects.get()),
        );
        let failures: Vec<(Labels, u64)> = FAILURE_LABELS
            .iter()
            .zip(&u.failures)
            .map(|(l, n)| (vec![("kind", (*l).to_owned())], n.get()))
            .collect();
        out.add(
            "upstream_failures_total",
            MetricType::COUNTER,
            "Upstream failures by kind.",
            &failures,
        );
        let garbage: Vec<(Labels, u64)> = Garbage::ALL
            .iter()
            .map(|g| (vec![("kind", g.label().to_owned())], u.garbage[g.index()].get()))
            .collect();
        out.add(
            "upstream_garbage_total",
            MetricType::COUNTER,
            "Upstream elements skipped, by kind.",
            &garbage,
        );
        out.add_f64(
            "upstream_disconnected_seconds_total",
            MetricType::COUNTER,
            "Time without an upstream session.",
            u.disconnected_ns.get() as f64 / 1e9,
        );
        out.add(
            "upstream_q_gaps_total",
            MetricType::COUNTER,
            "Trades whose per-symbol q skipped numbers after the previous one (possible losses upstream).",
            &one(u.q_gaps.get()),
        );
    }
    let h = &observed.histograms;
    out.histogram(
        "engine_tick_seconds",
        "Engine time per tick.",
        &h.engine_tick_ns,
        ENGINE_BUCKETS,
    );
    out.histogram(
        "ring_to_frame_seconds",
        "From a trade's ring entry to its encoded frame.",
        &h.ring_to_frame_ns,
        LATENCY_BUCKETS,
    );
    out.histogram(
        "tick_to_client_seconds",
        "From a trade's ring entry to the socket write that delivered it (per message: its oldest trade, once per event).",
        &h.tick_to_client_ns,
        LATENCY_BUCKETS,
    );
    out.histogram(
        "emitter_cycle_seconds",
        "Emitter cycle: pull, encode, hand-over.",
        &h.emitter_cycle_ns,
        CYCLE_BUCKETS,
    );
    if let Some(log) = event_log {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        out.add(
            "event_log_events_total",
            MetricType::COUNTER,
            "Events the event log wrote, dropped (its ring full: a hole), or skipped (had them).",
            &[
                (vec![("outcome", "written".to_owned())], get(&log.written)),
                (vec![("outcome", "dropped".to_owned())], get(&log.dropped)),
                (vec![("outcome", "duplicate".to_owned())], get(&log.duplicates)),
            ],
        );
        out.add(
            "event_log_truncated_bytes_total",
            MetricType::COUNTER,
            "Bytes of a torn or corrupt tail the event log truncated at start.",
            &one(get(&log.truncated_bytes)),
        );
        out.add(
            "event_log_write_errors_total",
            MetricType::COUNTER,
            "Event log writes or fsyncs that failed.",
            &one(get(&log.write_errors)),
        );
    }
    if let Some((db, queries)) = database {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let d = &db.counters;
        out.add(
            "database_rows_total",
            MetricType::COUNTER,
            "Rows the database sink inserted, or skipped because their seq was stored already.",
            &[
                (vec![("outcome", "written".to_owned())], get(&d.rows_written)),
                (vec![("outcome", "duplicate".to_owned())], get(&d.rows_duplicate)),
            ],
        );
        out.add(
            "database_dropped_events_total",
            MetricType::COUNTER,
            "Events the database sink dropped because its ring was full (each gap is logged).",
            &one(get(&d.dropped)),
        );
        out.add(
            "database_gaps_total",
            MetricType::COUNTER,
            "Gaps of dropped events the database sink logged.",
            &one(get(&d.gaps)),
        );
        out.add(
            "database_flushes_total",
            MetricType::COUNTER,
            "Transactions the database sink committed.",
            &one(get(&d.flushes)),
        );
        out.add(
            "database_failures_total",
            MetricType::COUNTER,
            "Database connections or transactions that failed (each retried).",
            &one(get(&d.failures)),
        );
        out.add(
            "database_ring_waits_total",
            MetricType::COUNTER,
            "Times the emitter waited for room in the database ring (on_overflow = wait).",
            &one(get(&d.ring_waits)),
        );
        out.add(
            "database_up",
            MetricType::GAUGE,
            "1 while the database sink's last connection or write succeeded.",
            &one(u64::from(db.is_up())),
        );
        out.add(
            "database_lag_ms",
            MetricType::GAUGE,
            "From emission to commit of the last transaction's oldest event, ms.",
            &one(get(&d.lag_ms)),
        );
        out.histogram(
            "database_lag_seconds",
            "From emission to commit of each transaction's oldest event.",
            &d.lag.0,
            DATABASE_LAG_BUCKETS,
        );
        out.add(
            "database_committed_seq",
            MetricType::GAUGE,
            "The highest seq the database sink committed.",
            &one(db.committed_seq()),
        );
        out.add(
            "aggs_requests_total",
            MetricType::COUNTER,
            "Aggregates requests answered by the query threads, refused 429, or failed.",
            &[
                (vec![("outcome", "answered".to_owned())], get(&queries.answered)),
                (vec![("outcome", "rejected".to_owned())], get(&queries.rejected)),
                (vec![("outcome", "failed".to_owned())], get(&queries.failed)),
            ],
        );
    }
    if let Some(n) = nats {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        out.add(
            "nats_up",
            MetricType::GAUGE,
            "1 while the NATS connection and JetStream answer.",
            &one(u64::from(n.is_up())),
        );
        out.add(
            "nats_events_total",
            MetricType::COUNTER,
            "Events published to JetStream and acknowledged (ingest), or consumed and handed \
             to the server (gateway).",
            &[
                (vec![("outcome", "published".to_owned())], get(&n.published_events)),
                (vec![("outcome", "consumed".to_owned())], get(&n.consumed_events)),
            ],
        );
        out.add(
            "nats_dropped_events_total",
            MetricType::COUNTER,
            "Events the ingest's publisher dropped because its ring was full (nats.ring_bytes).",
            &one(get(&n.dropped_events)),
        );
        out.add(
            "nats_refilled_events_total",
            MetricType::COUNTER,
            "Of the events the ingest's publisher dropped, those read back from the event log \
             and published after all.",
            &one(get(&n.refilled_events)),
        );
        out.add(
            "nats_gap_events_total",
            MetricType::COUNTER,
            "Events a gateway found missing between two batches of the stream.",
            &one(get(&n.gap_events)),
        );
        out.add(
            "nats_republished_batches_total",
            MetricType::COUNTER,
            "Batches the ingest published again after a failure (stored once by Nats-Msg-Id).",
            &one(get(&n.republished_batches)),
        );
        out.add(
            "nats_duplicate_batches_total",
            MetricType::COUNTER,
            "Batches a gateway received again, wholly or in part: what it had handed on already \
             it did not hand on again.",
            &one(get(&n.duplicate_batches)),
        );
        out.add(
            "nats_bad_messages_total",
            MetricType::COUNTER,
            "Messages on the stream's subject that were not a batch, skipped.",
            &one(get(&n.bad_messages)),
        );
        out.add(
            "nats_disconnects_total",
            MetricType::COUNTER,
            "Times the NATS connection was lost.",
            &one(get(&n.disconnects)),
        );
        out.add(
            "nats_last_seq",
            MetricType::GAUGE,
            "The last seq JetStream acknowledged (ingest) or the gateway handed on.",
            &one(get(&n.last_seq)),
        );
        out.add(
            "nats_transit_us",
            MetricType::GAUGE,
            "The last batch's time from the ingest's emitter to the gateway, µs.",
            &one(get(&n.transit_ns) / 1_000),
        );
        out.histogram(
            "nats_transit_seconds",
            "Each live batch's time from the ingest's emitter to the gateway's hand-off to its \
             server (a gateway; the two machines' clocks, if they are two).",
            &n.transit.0,
            NATS_TRANSIT_BUCKETS,
        );
    }
    out.build_info();
    let mut families = out.0;
    families.extend(ProcessCollector::for_self().collect());
    TextEncoder::new().encode_to_string(&families).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot encode /metrics");
        String::new()
    })
}

/// Label names and values of one sample.
type Labels = Vec<(&'static str, String)>;

/// Bucket bounds, seconds: engine time per tick (ns to µs).
const ENGINE_BUCKETS: &[f64] =
    &[1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2];
/// Latencies from a trade's arrival (µs to s; finer around the 1-3 ms of the latency targets).
const LATENCY_BUCKETS: &[f64] = &[
    5e-5, 1e-4, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 2.5e-3, 3e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The database sink's commit lag (`flush_interval_ms` and a write, to a database away).
const DATABASE_LAG_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0];
/// The ingest→gateway hop (100 µs to a second).
const NATS_TRANSIT_BUCKETS: &[f64] =
    &[1e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 1e-2, 0.1, 1.0];
/// The emitter's cycle (µs to 100 ms).
const CYCLE_BUCKETS: &[f64] =
    &[1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1];

/// The metric families of one scrape, every name prefixed `tickstock_`.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn family(&mut self, name: &str, kind: MetricType, help: &str, metrics: Vec<Metric>) {
        let mut family = MetricFamily::default();
        family.set_name(format!("tickstock_{name}"));
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.0.push(family);
    }

    /// A counter or gauge family of integer samples.
    fn add(&mut self, name: &str, kind: MetricType, help: &str, samples: &[(Labels, u64)]) {
        let metrics =
            samples.iter().map(|(labels, value)| sample(kind, labels, *value as f64)).collect();
        self.family(name, kind, help, metrics);
    }

    /// One unlabelled sample of a fractional value (seconds).
    fn add_f64(&mut self, name: &str, kind: MetricType, help: &str, value: f64) {
        self.family(name, kind, help, vec![sample(kind, &Vec::new(), value)]);
    }

    /// A latency histogram (recorded in ns by HDR) as cumulative buckets in seconds.
    fn histogram(&mut self, name: &str, help: &str, h: &Mutex<Histogram<u64>>, bounds: &[f64]) {
        let h = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let buckets = bounds
            .iter()
            .map(|&bound| {
                let mut bucket = prometheus::proto::Bucket::default();
                bucket.set_upper_bound(bound);
                bucket.set_cumulative_count(h.count_between(0, (bound * 1e9) as u64));
                bucket
            })
            .collect();
        let mut histogram = prometheus::proto::Histogram::default();
        histogram.set_sample_count(h.len());
        histogram.set_sample_sum(h.mean() * h.len() as f64 / 1e9);
        histogram.set_bucket(buckets);
        let mut metric = Metric::default();
        metric.set_histogram(histogram);
        self.family(name, MetricType::HISTOGRAM, help, vec![metric]);
    }

    /// `tickstock_build_info{version,commit} 1`.
    fn build_info(&mut self) {
        let labels = vec![
            ("version", env!("CARGO_PKG_VERSION").to_owned()),
            ("commit", env!("TICKSTOCK_COMMIT").to_owned()),
        ];
        let metric = sample(MetricType::GAUGE, &labels, 1.0);
        self.family("build_info", MetricType::GAUGE, "The running build.", vec![metric]);
    }
}

fn sample(kind: MetricType, labels: &Labels, value: f64) -> Metric {
    let mut metric = Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value(value.clone());
                pair
            })
            .collect(),
    );
    if kind == MetricType::GAUGE {
        let mut gauge = prometheus::proto::Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    } else {
        let mut counter = prometheus::proto::Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    }
    metric
}
