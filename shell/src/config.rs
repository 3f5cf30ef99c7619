//! The `tickstock` configuration file: every setting, its default, and its checks.
//!
//! The file is TOML; every section and key is optional and falls back to the default given
//! here and in `tickstock.toml` at the repository root (which a test keeps equal to
//! [`Settings::default`]). Unknown keys are errors, so a typo never silently does nothing.
//!
//! A run's settings come from, highest first: the command line's flags (applied by
//! `tickstock`), the environment (`TICKSTOCK_<SECTION>__<KEY>`, see [`Settings::resolve`]),
//! the file, the defaults.
//! Secrets (upstream keys, API keys, JWT secrets) are never settings here: they are read from
//! the environment or from a file named here, and never from the command line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tickstock_engine::mfbuf::MfBufConfig;
use tickstock_engine::Config as EngineConfig;

use crate::idle::IdleStrategy;

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The engine core: validation, bars, detectors (DETECTORS.md).
    pub engine: EngineConfig,
    /// Lanes of the multi-frequency buffer between engine and emitter.
    pub mfbuf: MfBufConfig,
    /// Threads, rings and the emitter.
    pub pipeline: PipelineSettings,
    /// The journal of accepted ticks.
    pub journal: JournalSettings,
    /// The built-in synthetic market.
    pub synthetic: SyntheticSettings,
    /// Which feed `serve` and `record` run.
    pub feed: FeedSettings,
    /// The upstream WebSocket feed.
    pub upstream: UpstreamSettings,
    /// The WebSocket server of PROTOCOL.md.
    pub server: ServerSettings,
    /// The PostgreSQL sink of bars and events, and the aggregates endpoint that reads it.
    pub database: DatabaseSettings,
    /// Scale-out over NATS JetStream: what `serve --role ingest` publishes to and
    /// `--role gateway` consumes from (`docs/scale-out.md`).
    pub nats: NatsSettings,
}

/// What a `serve` process is (`--role`, `docs/scale-out.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Feed, engine and clients in one process; no NATS.
    #[default]
    All,
    /// Feed, engine, journal and event log; every emitter cycle's batch published to the
    /// JetStream stream; `/health` and `/metrics` (and clients, if any connect).
    Ingest,
    /// No feed and no engine: the stream consumed from JetStream and served to clients as
    /// `all` serves them.
    Gateway,
}

/// Where the JetStream stream keeps its messages (`nats.storage`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// On the NATS server's disk: the stream outlives a restart of the server.
    #[default]
    File,
    /// In the NATS server's memory: a shorter hop, but a restarted server starts with an
    /// empty stream (the ingest publishes on from where it is; older `seq`s are gone from
    /// it, and a `resume` to them is served from an event log or refused).
    Memory,
}

/// NATS JetStream (`docs/scale-out.md`). Credentials come from `credentials_file` or the
/// environment (`NATS_USER` and `NATS_PASSWORD`, or `NATS_TOKEN`), never from `url` or the
/// command line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// What this `serve` process is (`serve --role` sets it). Default: all (no NATS).
    pub role: Role,
    /// The server; `tls://` for TLS. Default: `nats://127.0.0.1:4222`.
    pub url: String,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed). Default: none.
    pub credentials_file: Option<PathBuf>,
    /// With `tls://`: the PEM certificates that may sign the server's certificate (a
    /// private CA). Default: none (the webpki roots).
    pub tls_ca_file: Option<PathBuf>,
    /// The JetStream stream, created (or its limits updated) by the ingest. Default:
    /// `TICKSTOCK`.
    pub stream: String,
    /// The subject each batch is published on (the stream's one subject, so that it keeps
    /// one order). Default: `tickstock.events`.
    pub subject: String,
    /// Where the stream keeps its messages: `file` or `memory`. A stream's storage cannot
    /// change once it exists: delete the stream to change it. Default: file.
    pub storage: Storage,
    /// The stream keeps at most this many messages (one message is one emitter cycle's
    /// batch, about 1,000 a second). Default: 3,600,000 (an hour of 1 ms cycles).
    pub retain_messages: u64,
    /// The stream keeps at most this many bytes. Default: 8 GiB.
    pub retain_bytes: u64,
    /// The stream keeps messages at most this long. Default: 86,400 s (a day).
    pub retain_secs: u64,
    /// The ingest's republish of a batch within this window is stored once (`Nats-Msg-Id`
    /// is its first `seq`). Default: 120 s.
    pub duplicate_window_secs: u64,
    /// The emitter → publisher ring, in bytes: what is kept while NATS is away.
    /// Default: 64 MiB (about 250,000 events).
    pub ring_bytes: u32,
    /// A message's payload at most: a larger batch goes in several messages. It must not
    /// exceed the NATS server's `max_payload` (1 MiB unless configured). Default: 1,000,000.
    pub message_bytes_max: u32,
    /// Batches published and not yet acknowledged, at most. Default: 256.
    pub in_flight_max: u32,
    /// A publish not acknowledged in this time counts NATS as away. Default: 2,000 ms.
    pub ack_timeout_ms: u32,
    /// Connect deadline. Default: 5,000 ms.
    pub connect_timeout_ms: u32,
    /// First reconnect back-off step. Default: 100 ms.
    pub retry_ms_min: u32,
    /// Largest reconnect back-off step. Default: 5,000 ms.
    pub retry_ms_max: u32,
}

impl Default for NatsSettings {
    fn default() -> NatsSettings {
        NatsSettings {
            role: Role::All,
            url: "nats://127.0.0.1:4222".to_owned(),
            credentials_file: None,
            tls_ca_file: None,
            stream: "TICKSTOCK".to_owned(),
            subject: "tickstock.events".to_owned(),
            storage: Storage::File,
            retain_messages: 3_600_000,
            retain_bytes: 8 << 30,
            retain_secs: 86_400,
            duplicate_window_secs: 120,
            ring_bytes: 64 << 20,
            message_bytes_max: 1_000_000,
            in_flight_max: 256,
            ack_timeout_ms: 2_000,
            connect_timeout_ms: 5_000,
            retry_ms_min: 100,
            retry_ms_max: 5_000,
        }
    }
}

/// What the database sink does when its ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseOverflow {
    /// Keep what the ring holds and drop the batch that does not fit: counted, and the gap
    /// logged with its `seq` range, so `tickstock db backfill` can mend it. The emitter (and
    /// so the clients) never waits for the database.
    Drop,
    /// The emitter waits for room: nothing is lost, but while the database is slow or down
    /// the emitter stops, the engine's lanes fill and their policy applies to every client.
    /// For archives that must be complete more than live (and `db backfill`, which always
    /// waits).
    Wait,
}

/// The PostgreSQL sink (`docs/database.md`). The password is a secret: it comes from
/// `password_file` or the `PGPASSWORD` variable, never from `url`, the command line or a log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The database, as a URL (`postgresql://tickstock@127.0.0.1:5432/tickstock`) or
    /// `key=value` pairs (`host=... port=... user=... dbname=...`), without a password.
    /// Default: none (no sink, and the aggregates endpoint answers 404).
    pub url: Option<String>,
    /// A file whose first line is the password. Default: none (`PGPASSWORD`, if set).
    pub password_file: Option<PathBuf>,
    /// Channels stored: `AM` and `A` into `bars`, `HL`, `TR`, `SV`, `FMV`, `ACT` into
    /// `events` (`T` is the journal's job). `A` is 60 times the rows of `AM`.
    /// Default: `["AM", "HL", "TR", "SV"]`.
    pub channels: Vec<String>,
    /// Rows written in one transaction at most. Default: 10,000.
    pub batch_max_rows: u32,
    /// Rows wait at most this long before they are written; with the write, an event is
    /// stored within about a second of its emission at 500 (0.6 s measured at 20,000
    /// trades/s with `A`, `docs/database.md`). Default: 500 ms.
    pub flush_interval_ms: u32,
    /// The emitter → sink ring, in bytes (an event takes 150-350): what is kept while the
    /// database is away. Default: 64 MiB (about 250,000 events).
    pub ring_bytes: u32,
    /// When the ring is full. Default: drop.
    pub on_overflow: DatabaseOverflow,
    /// Create or migrate the schema at start (`tickstock db init` does it by hand).
    /// Default: true.
    pub init_schema: bool,
    /// First reconnect back-off step. Default: 250 ms.
    pub retry_ms_min: u32,
    /// Largest reconnect back-off step. Default: 10,000 ms.
    pub retry_ms_max: u32,
    /// Connect deadline. Default: 5,000 ms.
    pub connect_timeout_ms: u32,
    /// Threads answering the aggregates endpoint, each with its own connection.
    /// Default: 2.
    pub query_threads: u32,
    /// Aggregates requests waiting for a thread; one more is answered 429. Default: 64.
    pub query_queue_max: u32,
    /// A query running longer is cancelled (`statement_timeout`) and answered 504.
    /// Default: 5,000 ms.
    pub query_timeout_ms: u32,
    /// Most bars one aggregates answer holds (`limit` is capped here). Default: 50,000.
    pub query_limit_max: u32,
}

impl Default for DatabaseSettings {
    fn default() -> DatabaseSettings {
        DatabaseSettings {
            url: None,
            password_file: None,
            channels: ["AM", "HL", "TR", "SV"].map(str::to_owned).to_vec(),
            batch_max_rows: 10_000,
            flush_interval_ms: 500,
            ring_bytes: 64 << 20,
            on_overflow: DatabaseOverflow::Drop,
            init_schema: true,
            retry_ms_min: 250,
            retry_ms_max: 10_000,
            connect_timeout_ms: 5_000,
            query_threads: 2,
            query_queue_max: 64,
            query_timeout_ms: 5_000,
            query_limit_max: 50_000,
        }
    }
}

/// Whether connections may be compressed (PROTOCOL.md section 5, `server.compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionMode {
    /// permessage-deflate when the client offers it (RFC 7692).
    Deflate,
    /// Never: an offer is declined and the connection goes uncompressed.
    Off,
}

/// The slow-consumer policy of PROTOCOL.md section 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Discard the outbox, close with 4008 `slow consumer`; the client reconnects and resumes.
    Close,
    /// Discard the outbox and, until the socket drains, keep only the latest event per
    /// channel and symbol; then send a `conflated` status with the count lost, and those
    /// latest events.
    Conflate,
    /// Degrade before disconnecting: stop sending `T`, then `A`, then `AM` (each step a
    /// `shed` status with the events dropped, undone with `unshed` once caught up); close with
    /// 4008 when it still falls behind with only the highest priorities left.
    Shed,
}

/// The WebSocket server (PROTOCOL.md). Credentials are secrets: API keys live in
/// `api_keys_file`, the JWT HS256 secret in the environment (`jwt_secret_env`), public keys
/// in `jwt_public_key_file`; none of them in this file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Listen address. Default: `127.0.0.1:8765`.
    pub listen: String,
    /// API keys, one per line (`KEY [user=ID] [symbols=AAPL,MSFT]`; `#` comments and blank
    /// lines ignored). Default: none.
    pub api_keys_file: Option<PathBuf>,
    /// Named universes for `CHANNEL.@NAME` topics, one per line (`NAME: SYM,SYM,...`; `#`
    /// comments), reloaded on SIGHUP. Default: none.
    pub universes_file: Option<PathBuf>,
    /// JWT algorithm: `HS256`, `RS256` or `ES256`; none disables JWTs. Default: none.
    pub jwt_algorithm: Option<String>,
    /// Environment variable holding the HS256 secret. Default: `TICKSTOCK_JWT_SECRET`.
    pub jwt_secret_env: String,
    /// PEM public key for RS256/ES256. Default: none.
    pub jwt_public_key_file: Option<PathBuf>,
    /// The server's certificate chain (PEM). With `tls_key_file`, the port speaks TLS only:
    /// `wss://` and `https://`. Reloaded on SIGHUP. Default: none (plain `ws://`).
    pub tls_cert_file: Option<PathBuf>,
    /// The private key of `tls_cert_file` (PEM: PKCS#8, PKCS#1 or SEC1). Default: none.
    pub tls_key_file: Option<PathBuf>,
    /// Leeway on `exp`, in seconds. Default: 5.
    pub jwt_leeway_s: u64,
    /// Connections in all; one more gets `max_connections` and close 1013. Default: 10,000.
    pub connections_max: u32,
    /// Authenticated connections per user; one more gets `max_connections` and close 1013.
    /// Default: 100.
    pub connections_per_user_max: u32,
    /// Client messages (actions and pings) per second per connection (a token bucket of this
    /// size); past it each message gets an error status and counts as a client error.
    /// Default: 50.
    pub client_messages_per_sec: u32,
    /// Time to finish the HTTP request and upgrade. Default: 5,000 ms.
    pub handshake_timeout_ms: u32,
    /// Time to authenticate after `connected`. Default: 5,000 ms.
    pub auth_timeout_ms: u32,
    /// Largest client message and frame; bigger closes with 1009. Default: 64 KiB.
    pub client_message_bytes_max: u32,
    /// Client errors (bad JSON, unknown action, bad topic) before the connection is closed
    /// with 1008. Default: 10.
    pub client_errors_max: u32,
    /// Largest server message: a cycle's events for one client are split above it.
    /// Default: 1 MiB.
    pub frame_bytes_max: u32,
    /// How far a connection may fall behind its group's stream, in bytes not yet written to
    /// its socket (also the most a group's stream retains); past it the client is a slow
    /// consumer and its `slow_consumer_policy` applies. Memory is one stream per group, not
    /// one backlog per client. `client_queue_max_bytes` is the old name. Default: 4 MiB.
    #[serde(alias = "client_queue_max_bytes")]
    pub client_lag_max_bytes: u32,
    /// The same bound in time: a connection whose oldest unwritten message is older than this
    /// is a slow consumer. Default: 5,000 ms.
    pub client_lag_max_ms: u32,
    /// What happens to a slow consumer, unless the connection chose otherwise with
    /// `options`. Default: close.
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// permessage-deflate for clients that offer it (`deflate`), or never (`off`). Each
    /// group's messages are compressed once for all its members (level 1, no context kept
    /// between messages). Default: `deflate`.
    pub compression: CompressionMode,
    /// Messages smaller than this go uncompressed on a compressed connection (the extension
    /// allows it message by message): deflating a one-event array saves nothing and costs
    /// microseconds. Default: 512 bytes.
    pub compression_min_bytes: u32,
    /// A `shed` connection that has caught up gets a shed channel back after this long.
    /// Default: 1,000 ms.
    pub shed_recover_ms: u32,
    /// The most a group's new messages are held before they are written, so that members
    /// write fewer, larger messages. The hold adapts below it: none while the event loop's
    /// writes stay under `client_writes_per_sec_max`, growing toward this bound as they
    /// pass it. 0 never holds. Default: 5,000 µs.
    pub client_linger_us: u32,
    /// Socket writes per second per event loop above which the linger grows (what one core
    /// does besides the rest of the loop's work). Default: 200,000.
    pub client_writes_per_sec_max: u32,
    /// Held messages of a group are written at once when they reach this many bytes.
    /// Default: 64 KiB.
    pub client_coalesce_bytes: u32,
    /// Most bytes an event loop writes to one connection before it turns to the others
    /// (the connection's turn comes again in the next iteration): a connection with much to
    /// send (a resume from disk, a member far behind) to a client that reads as fast as the
    /// server writes would otherwise hold the loop until its socket blocked. Default:
    /// 256 KiB.
    pub client_write_turn_bytes: u32,
    /// After a subscribe, live delivery to that connection waits this long, so that a
    /// `resume` sent right behind the subscribe (PROTOCOL.md section 2, step 5) comes first
    /// and the connection sees strict `seq` order. Default: 2,000 µs.
    pub resume_window_us: u32,
    /// The kernel's send buffer per client socket (`SO_SNDBUF`), bounding what waits in the
    /// kernel beyond a connection's lag: a stalled client is found by its lag, and its 4008
    /// is not queued behind megabytes the kernel holds. 0 keeps the kernel's default and its
    /// autotuning (better for clients far away on fast links). Default: 262,144.
    pub client_socket_send_bytes: u32,
    /// Topics one connection may hold; one more gets an error status. Default: 10,000.
    pub subscriptions_max: u32,
    /// Event loops, each owning a shard of the connections; 0 takes what the machine's cores
    /// allow beside the pipeline (cores - 2, at least 1). Default: 0.
    pub threads: u32,
    /// After a close is sent, the TCP connection is dropped this much later at the latest.
    /// Default: 1,000 ms.
    pub close_timeout_ms: u32,
    /// Ping interval. Default: 15,000 ms.
    pub ping_interval_ms: u32,
    /// Events retained for `resume`, per event loop: about 72 bytes each beside their JSON
    /// (the entry, 64, and its place in the per-symbol index, 8). Default: 1,000,000.
    pub history_max_events: u32,
    /// Bytes of JSON retained for `resume`. Default: 256 MiB.
    pub history_max_bytes: u64,
    /// The event log: every emitted event on disk in this directory, so that a `resume`
    /// older than the memory history is served from it. Default: none (off).
    pub event_log_dir: Option<PathBuf>,
    /// An event log segment is closed and a new one started past this size. Default: 256 MiB.
    pub event_log_segment_bytes_max: u64,
    /// The emitter → event log writer ring, in bytes; a batch that does not fit is not
    /// logged (counted, and a resume across the hole is refused). Default: 64 MiB.
    pub event_log_ring_bytes: u32,
    /// Event log segments older than this are deleted. Default: 1 day.
    pub event_log_retain_days: u32,
    /// The event log is fsynced this often (it is handed to the kernel every 10 ms).
    /// Default: 1,000 ms.
    pub event_log_fsync_interval_ms: u32,
    /// A resume from the event log reads at most this much per turn of the event loop.
    /// Default: 256 KiB.
    pub event_log_read_slice_bytes: u32,
    /// A resume (from the event log and the memory history) looks at, and so sends, at most
    /// this many events a second for its connection, so that one client catching up takes a
    /// bounded share of its event loop and the others' latency holds; 0: as fast as the
    /// client reads. Events its topics or filter pass over count too, except those the
    /// history's per-symbol index skips for a watchlist. Default: 1,200,000.
    pub resume_events_per_sec_max: u32,
    /// A connection that has not answered a ping for this long is closed. Default: 30,000 ms.
    pub pong_timeout_ms: u32,
    /// Conformance mode, for WebSocket test suites (`tools/autobahn.sh`), never for clients:
    /// `/echo` upgrades to a connection that sends every text and binary message back as it
    /// came, with no auth and no session (`client_message_bytes_max` still bounds a message).
    /// Default: false.
    pub conformance_echo: bool,
    /// Serve the dashboard, a live web page of the market and the server, at `/` (it is a
    /// client like any other: it authenticates over the stream). Default: true.
    pub dashboard: bool,
}

impl Default for ServerSettings {
    fn default() -> ServerSettings {
        ServerSettings {
            listen: "127.0.0.1:8765".to_owned(),
            api_keys_file: None,
            universes_file: None,
            jwt_algorithm: None,
            jwt_secret_env: "TICKSTOCK_JWT_SECRET".to_owned(),
            jwt_public_key_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            conformance_echo: false,
            dashboard: true,
            jwt_leeway_s: 5,
            connections_max: 10_000,
            connections_per_user_max: 100,
            client_messages_per_sec: 50,
            handshake_timeout_ms: 5_000,
            auth_timeout_ms: 5_000,
            client_message_bytes_max: 64 * 1024,
            client_errors_max: 10,
            frame_bytes_max: 1 << 20,
            client_lag_max_bytes: 4 << 20,
            client_lag_max_ms: 5_000,
            slow_consumer_policy: SlowConsumerPolicy::Close,
            compression: CompressionMode::Deflate,
            compression_min_bytes: crate::server::deflate::COMPRESSION_MIN_BYTES_DEFAULT,
            shed_recover_ms: 1_000,
            client_linger_us: 5_000,
            client_writes_per_sec_max: 200_000,
            client_coalesce_bytes: 64 << 10,
            client_write_turn_bytes: 256 << 10,
            resume_window_us: 2_000,
            client_socket_send_bytes: 256 << 10,
            subscriptions_max: 10_000,
            threads: 0,
            close_timeout_ms: 1_000,
            ping_interval_ms: 15_000,
            history_max_events: 1_000_000,
            history_max_bytes: 256 << 20,
            event_log_dir: None,
            event_log_segment_bytes_max: 256 << 20,
            event_log_ring_bytes: 64 << 20,
            event_log_retain_days: 1,
            event_log_fsync_interval_ms: 1_000,
            event_log_read_slice_bytes: 256 << 10,
            resume_events_per_sec_max: 1_200_000,
            pong_timeout_ms: 30_000,
        }
    }
}

/// When a silent upstream counts as stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleCheck {
    /// While the market is open: weekdays outside the overnight period, in the engine's time
    /// zone (holidays are not known).
    MarketHours,
    /// Always (a feed that must never be silent, like a chained TickStock's clock).
    Always,
    /// Never.
    Never,
}

/// Which feed runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedSource {
    /// The built-in synthetic market (no keys, no network).
    Synthetic,
    /// A Polygon/Massive-compatible WebSocket upstream (`[upstream]`), or another TickStock.
    Upstream,
}

/// Which feed runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedSettings {
    /// Default: synthetic.
    pub source: FeedSource,
}

impl Default for FeedSettings {
    fn default() -> FeedSettings {
        FeedSettings { source: FeedSource::Synthetic }
    }
}

/// The upstream WebSocket feed. The key is a secret: it is read from the environment
/// variable `key_env` or from `key_file`, never from this file or the command line, and
/// never logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// `wss://` or `ws://` URL. Default: `wss://socket.polygon.io/stocks`.
    pub url: String,
    /// Environment variable holding the key. Default: `TICKSTOCK_UPSTREAM_KEY`.
    pub key_env: String,
    /// A file holding the key (first line), used when set. Default: none.
    pub key_file: Option<PathBuf>,
    /// Topics to subscribe to (`T.*`, `A.*`, `AM.*`, `Q.*`, `FMV.*`, or `T.AAPL`...).
    /// The engine ingests one source of volume: trades if `T` is subscribed, else `A`, else
    /// `AM`; the others are parsed and counted. Default: `["T.*"]`.
    pub topics: Vec<String>,
    /// Extra CA certificates (PEM) to trust besides the webpki roots, for private upstreams.
    /// Default: none.
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS + WebSocket handshake deadline. Default: 5,000 ms.
    pub connect_timeout_ms: u32,
    /// Deadline for `connected` and then for the auth answer. Default: 5,000 ms.
    pub auth_timeout_ms: u32,
    /// Reconnect when nothing arrived for this long (see `stale_check`). Default: 10,000 ms.
    pub stale_ms: u32,
    /// When silence counts as stale. Default: market_hours.
    pub stale_check: StaleCheck,
    /// First reconnect back-off step. Default: 250 ms.
    pub backoff_ms_min: u32,
    /// Largest back-off step. Default: 30,000 ms.
    pub backoff_ms_max: u32,
    /// Least wait after `auth_failed` or `max_connections`. Default: 60,000 ms.
    pub auth_backoff_ms: u32,
    /// Consecutive failures that open the circuit breaker. Default: 5.
    pub breaker_failures: u32,
    /// How long an open breaker waits before its half-open probe. Default: 60,000 ms.
    pub breaker_open_ms: u32,
    /// Largest WebSocket message accepted; a bigger one is counted and the connection
    /// restarted. Default: 16 MiB.
    pub message_bytes_max: u32,
}

impl Default for UpstreamSettings {
    fn default() -> UpstreamSettings {
        UpstreamSettings {
            url: "wss://socket.polygon.io/stocks".to_owned(),
            key_env: "TICKSTOCK_UPSTREAM_KEY".to_owned(),
            key_file: None,
            topics: vec!["T.*".to_owned()],
            ca_file: None,
            connect_timeout_ms: 5_000,
            auth_timeout_ms: 5_000,
            stale_ms: 10_000,
            stale_check: StaleCheck::MarketHours,
            backoff_ms_min: 250,
            backoff_ms_max: 30_000,
            auth_backoff_ms: 60_000,
            breaker_failures: 5,
            breaker_open_ms: 60_000,
            message_bytes_max: 16 << 20,
        }
    }
}

/// Threads, rings and the emitter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSettings {
    /// Feed -> engine ring, in inputs (power of two). When full, the feed waits (back-pressure
    /// to its source) and counts `feed_ring_full_waits`. Default: 65,536.
    pub ring_capacity: u32,
    /// Most inputs the engine takes from the ring in one batch. Default: 256.
    pub engine_chunk_max: u32,
    /// Pin the engine thread to this core id. Default: not pinned.
    pub engine_core: Option<usize>,
    /// How the engine thread waits for inputs. Default: backoff.
    pub engine_idle: IdleStrategy,
    /// How the emitter waits between cycles. Default: backoff.
    pub emitter_idle: IdleStrategy,
    /// How the feed waits on a full ring. Default: backoff.
    pub feed_idle: IdleStrategy,
    /// How the journal writer waits for records. Default: backoff.
    pub journal_idle: IdleStrategy,
    /// Emitter cycle: events are pulled and handed on as one batch per cycle, in µs. 0 pulls
    /// continuously (lowest latency, smallest batches). Default: 1,000.
    pub emitter_cycle_us: u32,
    /// Encoded bytes one emitter batch holds before it is handed on early. Default: 4 MiB.
    pub emitter_batch_bytes: u32,
    /// A feed with nothing to send still sends the clock this often, so bars close on time.
    /// Default: 1 ms.
    pub heartbeat_ms: u32,
    /// How often the log gets a status line. Default: 5,000 ms.
    pub stats_interval_ms: u32,
    /// What the engine does when the emitter falls behind. Default: auto.
    pub emitter_backpressure: Backpressure,
}

/// What the engine thread does when the emitter falls behind by half a lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backpressure {
    /// `wait` for replays and virtual-time feeds (nothing to keep up with, every event
    /// wanted), `drop` for live feeds.
    Auto,
    /// Never wait: a full lane drops the newest events and counts them (the multi-frequency
    /// buffer's policy). Live data never queues behind a slow emitter.
    Drop,
    /// Wait for the emitter before the next chunk: nothing is dropped, the feed slows down.
    Wait,
}

impl Default for PipelineSettings {
    fn default() -> PipelineSettings {
        PipelineSettings {
            ring_capacity: 65_536,
            engine_chunk_max: 256,
            engine_core: None,
            engine_idle: IdleStrategy::default(),
            emitter_idle: IdleStrategy::default(),
            feed_idle: IdleStrategy::default(),
            journal_idle: IdleStrategy::default(),
            emitter_cycle_us: 1_000,
            emitter_batch_bytes: 4 << 20,
            heartbeat_ms: 1,
            stats_interval_ms: 5_000,
            emitter_backpressure: Backpressure::Auto,
        }
    }
}

/// When the journal calls `fsync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Never; the OS writes back when it likes. A crash of the machine (not the process) may
    /// lose the last seconds.
    Never,
    /// Every `fsync_interval_ms`.
    Interval,
    /// After every record: the slowest, for when no accepted trade may be lost.
    EveryRecord,
}

/// What happens when the journal cannot keep up (its ring is full) or the disk fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalFailurePolicy {
    /// Keep serving; drop journal records, count them, and write a gap record when the
    /// journal can write again.
    Continue,
    /// Stop the server cleanly (exit code 3): for desks that must have every trade on disk.
    Shutdown,
}

/// The journal of accepted ticks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalSettings {
    /// Write the journal. Default: false (`tickstock record` turns it on).
    pub enabled: bool,
    /// Directory of the segment files. Default: `journal`.
    pub dir: PathBuf,
    /// A segment is closed (and fsynced) and a new one started past this size.
    /// Default: 256 MiB.
    pub segment_bytes_max: u64,
    /// Default: interval.
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`. Default: 200 ms.
    pub fsync_interval_ms: u32,
    /// Engine -> journal ring, in records (power of two). Default: 262,144.
    pub ring_capacity: u32,
    /// Default: continue.
    pub on_failure: JournalFailurePolicy,
    /// With a journal that has segments, `serve` and `record` on a live feed (the runtime
    /// clock, not `virtual_time`) first replay it through the engine at full speed (no output but the server's resume history; clients refused and
    /// `/health` 503 `warming` meanwhile), then go live: after a restart the engine's state
    /// and `seq` are what they would have been without it. false: start from nothing.
    /// Default: true.
    pub warm_start: bool,
    /// `tickstock replay` at a speed: the feed wakes at most this often and sends every
    /// trade due since, in µs (0: a wake-up per trade, which at 20,000 trades/s costs over
    /// a core). Trades keep their recorded times, so this only groups them. Default: 1,000.
    pub replay_pace_us: u32,
    /// Events leave the emitter only once the journal has written (to the kernel) the
    /// trades they come from, as LMAX's output waits for its journaller: a client never sees
    /// an event whose trade a kill -9 could lose, so a `resume` after a warm restart finds
    /// exactly the events it saw, under the same `seq`. The wait is the writer's wake-up and
    /// one `write` (microseconds). A power cut can still lose up to `fsync_interval_ms`.
    /// false: events go out as soon as they are encoded. Default: true.
    pub emit_after_write: bool,
}

impl Default for JournalSettings {
    fn default() -> JournalSettings {
        JournalSettings {
            enabled: false,
            dir: PathBuf::from("journal"),
            segment_bytes_max: 256 << 20,
            fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 200,
            ring_capacity: 262_144,
            on_failure: JournalFailurePolicy::Continue,
            warm_start: true,
            replay_pace_us: 1_000,
            emit_after_write: true,
        }
    }
}

/// The built-in synthetic market.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticSettings {
    /// Symbols traded. Default: 4,000.
    pub symbols: u32,
    /// Trades per second (of event time). Default: 20,000.
    pub trades_per_sec: u32,
    /// Same seed, same market. Default: 1.
    pub seed: u64,
    /// Generate event time instead of following the wall clock, as fast as the pipeline
    /// takes it (benches, tests, recording a day in minutes). Default: false.
    pub virtual_time: bool,
    /// With `virtual_time`: the first trade's time, Unix ms. Default: 2026-11-24 14:30 UTC
    /// (09:30 in New York).
    pub virtual_start_unix_ms: u64,
    /// Stop after this many trades. Default: never.
    pub trades_max: Option<u64>,
    /// Live pacing: the feed wakes at most this often and sends every trade due since, in
    /// µs; 0 wakes it for each trade. A wake-up per trade at 20,000 trades/s costs a quarter
    /// of a core in sleeps and wake-ups; one per millisecond, 0.02 (`docs/pipeline.md`).
    /// Trades are stamped when sent, so this only groups them. Default: 1,000.
    pub pace_us: u32,
}

impl Default for SyntheticSettings {
    fn default() -> SyntheticSettings {
        SyntheticSettings {
            symbols: 4_000,
            trades_per_sec: 20_000,
            seed: 1,
            virtual_time: false,
            virtual_start_unix_ms: 1_795_530_600_000,
            trades_max: None,
            pace_us: 1_000,
        }
    }
}

/// A configuration file that cannot be used, with the reason.
#[derive(Debug)]
pub enum SettingsError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the settings (the message gives line
    /// and column).
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A `TICKSTOCK_<SECTION>__<KEY>` variable names no setting or has a value it cannot take.
    Env {
        /// The variable.
        var: String,
        /// The parser's message.
        message: String,
    },
    /// A value is out of range or contradicts another.
    Invalid(String),
}

/// Prefix of the environment variables that are settings: `TICKSTOCK_SERVER__LISTEN` is
/// `server.listen`; each further `__` goes a table deeper (`TICKSTOCK_ENGINE__TREND__BUCKET_MS`).
/// Variables without `__` (the secrets `TICKSTOCK_UPSTREAM_KEY`, `TICKSTOCK_JWT_SECRET`) are
/// not settings.
pub const ENV_PREFIX: &str = "TICKSTOCK_";

/// The settings that have no default value, so that `Settings::default_toml` leaves them
/// out: (table, the key with an example value, what it does). `commented_toml` prints them
/// as comments under their table.
const OPTIONAL: &[(&str, &str, &str)] = &[
    ("engine.overrides", "[engine.overrides.opening]", "thresholds for one market period (pre_market, opening, midday, closing, after_hours): any key of [engine.thresholds]"),
    ("pipeline", "engine_core = 1", "pin the engine thread to this core id"),
    ("synthetic", "trades_max = 1000000", "stop after this many trades"),
    ("upstream", "key_file = \"/etc/tickstock/upstream.key\"", "read the upstream key from this file's first line instead of the variable named by key_env"),
    ("upstream", "ca_file = \"/etc/tickstock/upstream-ca.pem\"", "extra CA certificates (PEM) to trust for a private upstream"),
    ("server", "api_keys_file = \"/etc/tickstock/api_keys\"", "API keys, one per line: KEY [user=ID] [symbols=AAPL,MSFT]; without keys or JWTs any token is accepted, on loopback only"),
    ("server", "universes_file = \"/etc/tickstock/universes\"", "named universes for CHANNEL.@NAME topics, one per line: NAME: SYM,SYM,...; reloaded on SIGHUP"),
    ("server", "event_log_dir = \"/var/lib/tickstock/events\"", "keep every emitted event on disk here, so a resume older than the memory history is served from it"),
    ("server", "jwt_algorithm = \"HS256\"", "accept JWTs: HS256 (secret in the variable named by jwt_secret_env), RS256 or ES256 (jwt_public_key_file)"),
    ("server", "jwt_public_key_file = \"/etc/tickstock/jwt.pem\"", "PEM public key for RS256 or ES256 JWTs"),
    ("server", "tls_cert_file = \"/etc/tickstock/cert.pem\"", "serve wss:// and https:// on the port: the certificate chain (PEM), reloaded on SIGHUP"),
    ("server", "tls_key_file = \"/etc/tickstock/key.pem\"", "and its private key (PEM)"),
    ("database", "url = \"postgresql://tickstock@127.0.0.1:5432/tickstock\"", "store bars and events in PostgreSQL and serve /v2/aggs from them (no password here: password_file or PGPASSWORD)"),
    ("database", "password_file = \"/etc/tickstock/db-password\"", "the database password, first line"),
];

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingsError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            SettingsError::Parse { path, message } => write!(f, "{}: {message}", path.display()),
            SettingsError::Env { var, message } => {
                write!(f, "environment variable {var}: {message}")
            }
            SettingsError::Invalid(message) => write!(f, "invalid setting: {message}"),
        }
    }
}

impl std::error::Error for SettingsError {}

impl Settings {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
        Settings::parse(&text)
            .map_err(|message| SettingsError::Parse { path: path.to_owned(), message })?
            .validated()
    }

    /// A run's settings before its flags: the defaults, overlaid by `file` (if any), overlaid
    /// by the `TICKSTOCK_<SECTION>__<KEY>` variables of `env`. A variable's value is read as
    /// a TOML value (`8080`, `true`, `1.5`, `["T.*", "A.*"]`, `"text"`) and, when it is not
    /// one, as a string (`127.0.0.1:9000`); quote a string that looks like a number.
    /// Not yet range-checked: apply the flags, then call [`Settings::validated`].
    pub fn resolve(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
                let parse = |message| SettingsError::Parse { path: path.to_owned(), message };
                // Parsed as settings first, for messages that name the line and the key.
                Settings::parse(&text).map_err(parse)?;
                text.parse::<toml::Table>().map_err(|e| parse(e.to_string()))?
            }
            None => toml::Table::new(),
        };
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains("__"))
            .collect();
        vars.sort();
        for (var, raw) in vars {
            let path: Vec<String> =
                var[ENV_PREFIX.len()..].split("__").map(str::to_ascii_lowercase).collect();
            let value = env_value(&raw);
            let fail = |message: String| SettingsError::Env { var: var.clone(), message };
            if path.iter().any(String::is_empty) {
                return Err(fail("an empty section or key".to_owned()));
            }
            // Alone on the defaults first, so an error names this variable.
            let mut alone = toml::Table::new();
            insert(&mut alone, &path, value.clone()).map_err(&fail)?;
            Settings::from_table(alone).map_err(&fail)?;
            insert(&mut table, &path, value).map_err(&fail)?;
        }
        Settings::from_table(table).map_err(SettingsError::Invalid)
    }

    fn from_table(table: toml::Table) -> Result<Settings, String> {
        Settings::deserialize(toml::Value::Table(table)).map_err(|error| error.to_string())
    }

    /// Every setting as a TOML document, those without a default (`OPTIONAL`) included as
    /// comments that say what they do: what `tickstock config` prints.
    pub fn commented_toml(&self) -> String {
        let text = toml::to_string(self).expect("Invariant: settings serialize");
        let mut out = String::with_capacity(text.len() + 2_048);
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            out.push_str(line);
            out.push('\n');
            let Some(table) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) else {
                continue;
            };
            // This table's own keys: up to the next header.
            let keys = lines[at + 1..].iter().take_while(|l| !l.starts_with('['));
            let keys: Vec<&str> = keys.filter_map(|l| l.split(" = ").next()).collect();
            for (_, example, meaning) in OPTIONAL.iter().filter(|(t, ..)| *t == table) {
                let key = example.split(" = ").next().unwrap_or_default();
                if !keys.contains(&key) {
                    out.push_str(&format!("# {meaning}:\n# {example}\n"));
                }
            }
        }
        out
    }

    /// Parses TOML text (without the range checks of [`Settings::validated`]).
    pub fn parse(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|error| error.to_string())
    }

    /// The defaults as a TOML document.
    pub fn default_toml() -> String {
        toml::to_string(&Settings::default()).expect("Invariant: the defaults serialize")
    }

    /// Checks every value; returns the settings unchanged when they are usable.
    pub fn validated(self) -> Result<Settings, SettingsError> {
        let invalid = SettingsError::Invalid;
        self.engine.validate().map_err(|error| invalid(format!("engine: {error}")))?;
        self.mfbuf
            .validate(self.engine.symbols_max)
            .map_err(|error| invalid(format!("mfbuf: {error}")))?;
        let p = &self.pipeline;
        for (name, strategy) in [
            ("pipeline.engine_idle", p.engine_idle),
            ("pipeline.emitter_idle", p.emitter_idle),
            ("pipeline.feed_idle", p.feed_idle),
            ("pipeline.journal_idle", p.journal_idle),
        ] {
            strategy.validate(name).map_err(invalid)?;
        }
        power_of_two("pipeline.ring_capacity", p.ring_capacity, 2, 1 << 24)?;
        power_of_two("journal.ring_capacity", self.journal.ring_capacity, 2, 1 << 24)?;
        within("pipeline.engine_chunk_max", p.engine_chunk_max.into(), 1, 65_536)?;
        within("pipeline.emitter_cycle_us", p.emitter_cycle_us.into(), 0, 1_000_000)?;
        within("pipeline.emitter_batch_bytes", p.emitter_batch_bytes.into(), 4_096, 1 << 30)?;
        within("pipeline.heartbeat_ms", p.heartbeat_ms.into(), 1, 60_000)?;
        within("pipeline.stats_interval_ms", p.stats_interval_ms.into(), 10, 3_600_000)?;
        within("journal.segment_bytes_max", self.journal.segment_bytes_max, 4_096, 1 << 40)?;
        within("journal.fsync_interval_ms", self.journal.fsync_interval_ms.into(), 1, 3_600_000)?;
        within("journal.replay_pace_us", self.journal.replay_pace_us.into(), 0, 1_000_000)?;
        let s = &self.synthetic;
        within("synthetic.symbols", s.symbols.into(), 1, self.engine.symbols_max.into())?;
        within("synthetic.trades_per_sec", s.trades_per_sec.into(), 1, 100_000_000)?;
        within("synthetic.pace_us", s.pace_us.into(), 0, 1_000_000)?;
        let u = &self.upstream;
        if !(u.url.starts_with("ws://") || u.url.starts_with("wss://")) {
            return Err(SettingsError::Invalid(format!(
                "upstream.url = {:?}, must start with ws:// or wss://",
                u.url
            )));
        }
        if u.topics.is_empty() || u.topics.iter().any(|t| t.is_empty() || t.contains(',')) {
            return Err(SettingsError::Invalid(
                "upstream.topics: one or more topics, no commas inside one".to_owned(),
            ));
        }
        within("upstream.connect_timeout_ms", u.connect_timeout_ms.into(), 1, 600_000)?;
        within("upstream.auth_timeout_ms", u.auth_timeout_ms.into(), 1, 600_000)?;
        within("upstream.stale_ms", u.stale_ms.into(), 10, 86_400_000)?;
        within("upstream.backoff_ms_min", u.backoff_ms_min.into(), 1, u.backoff_ms_max.into())?;
        within("upstream.backoff_ms_max", u.backoff_ms_max.into(), 1, 3_600_000)?;
        within("upstream.auth_backoff_ms", u.auth_backoff_ms.into(), 0, 86_400_000)?;
        within("upstream.breaker_failures", u.breaker_failures.into(), 1, 1_000_000)?;
        within("upstream.breaker_open_ms", u.breaker_open_ms.into(), 1, 86_400_000)?;
        within("upstream.message_bytes_max", u.message_bytes_max.into(), 1_024, 1 << 30)?;
        let v = &self.server;
        v.listen.parse::<std::net::SocketAddr>().map_err(|_| {
            SettingsError::Invalid(format!(
                "server.listen = {:?}, must be an IP address and port",
                v.listen
            ))
        })?;
        within("server.connections_max", v.connections_max.into(), 1, 1_000_000)?;
        within("server.connections_per_user_max", v.connections_per_user_max.into(), 1, 1_000_000)?;
        within("server.client_messages_per_sec", v.client_messages_per_sec.into(), 1, 1_000_000)?;
        within("server.handshake_timeout_ms", v.handshake_timeout_ms.into(), 1, 600_000)?;
        within("server.auth_timeout_ms", v.auth_timeout_ms.into(), 1, 600_000)?;
        within("server.client_message_bytes_max", v.client_message_bytes_max.into(), 256, 1 << 24)?;
        within("server.client_errors_max", v.client_errors_max.into(), 1, 1_000_000)?;
        within("server.frame_bytes_max", v.frame_bytes_max.into(), 4_096, 1 << 26)?;
        within("server.client_lag_max_bytes", v.client_lag_max_bytes.into(), 4_096, 1 << 30)?;
        within("server.client_lag_max_ms", v.client_lag_max_ms.into(), 1, 3_600_000)?;
        within("server.shed_recover_ms", v.shed_recover_ms.into(), 1, 3_600_000)?;
        within("server.client_linger_us", v.client_linger_us.into(), 0, 1_000_000)?;
        within("server.client_writes_per_sec_max", v.client_writes_per_sec_max.into(), 1, 1 << 30)?;
        within("server.client_coalesce_bytes", v.client_coalesce_bytes.into(), 1, 1 << 30)?;
        within("server.client_write_turn_bytes", v.client_write_turn_bytes.into(), 4_096, 1 << 30)?;
        within("server.resume_window_us", v.resume_window_us.into(), 0, 1_000_000)?;
        within("server.subscriptions_max", v.subscriptions_max.into(), 1, 1_000_000)?;
        within("server.client_socket_send_bytes", v.client_socket_send_bytes.into(), 0, 1 << 30)?;
        within("server.threads", v.threads.into(), 0, 1_024)?;
        within("server.close_timeout_ms", v.close_timeout_ms.into(), 1, 600_000)?;
        within("server.ping_interval_ms", v.ping_interval_ms.into(), 10, 3_600_000)?;
        within("server.pong_timeout_ms", v.pong_timeout_ms.into(), 10, 3_600_000)?;
        within("server.history_max_events", v.history_max_events.into(), 1, 100_000_000)?;
        within("server.history_max_bytes", v.history_max_bytes, 4_096, 1 << 36)?;
        within(
            "server.event_log_segment_bytes_max",
            v.event_log_segment_bytes_max,
            4_096,
            1 << 40,
        )?;
        within("server.event_log_ring_bytes", v.event_log_ring_bytes.into(), 1 << 16, 1 << 31)?;
        within("server.event_log_retain_days", v.event_log_retain_days.into(), 1, 3_650)?;
        within(
            "server.event_log_fsync_interval_ms",
            v.event_log_fsync_interval_ms.into(),
            1,
            3_600_000,
        )?;
        within(
            "server.event_log_read_slice_bytes",
            v.event_log_read_slice_bytes.into(),
            4_096,
            1 << 30,
        )?;
        let pace = v.resume_events_per_sec_max;
        if pace != 0 && !(1_000..=1 << 30).contains(&pace) {
            return Err(SettingsError::Invalid(format!(
                "server.resume_events_per_sec_max = {pace}, must be 0 (no limit) or in \
                 1000..={}",
                1u32 << 30
            )));
        }
        if v.tls_cert_file.is_some() != v.tls_key_file.is_some() {
            return Err(SettingsError::Invalid(
                "server.tls_cert_file and server.tls_key_file go together: set both or neither"
                    .to_owned(),
            ));
        }
        if let Some(algorithm) = &v.jwt_algorithm {
            if !["HS256", "RS256", "ES256"].contains(&algorithm.as_str()) {
                return Err(SettingsError::Invalid(format!(
                    "server.jwt_algorithm = {algorithm:?}, must be HS256, RS256 or ES256"
                )));
            }
        }
        let d = &self.database;
        crate::database::stored_channels(&d.channels).map_err(invalid)?;
        if let Some(url) = &d.url {
            crate::database::connect_config(url, None).map_err(invalid)?;
        }
        within("database.batch_max_rows", d.batch_max_rows.into(), 1, 1_000_000)?;
        within("database.flush_interval_ms", d.flush_interval_ms.into(), 1, 3_600_000)?;
        within("database.ring_bytes", d.ring_bytes.into(), 1 << 16, 1 << 31)?;
        within("database.retry_ms_min", d.retry_ms_min.into(), 1, d.retry_ms_max.into())?;
        within("database.retry_ms_max", d.retry_ms_max.into(), 1, 3_600_000)?;
        within("database.connect_timeout_ms", d.connect_timeout_ms.into(), 1, 600_000)?;
        within("database.query_threads", d.query_threads.into(), 1, 256)?;
        within("database.query_queue_max", d.query_queue_max.into(), 1, 1_000_000)?;
        within("database.query_timeout_ms", d.query_timeout_ms.into(), 1, 3_600_000)?;
        within("database.query_limit_max", d.query_limit_max.into(), 1, 1_000_000)?;
        let n = &self.nats;
        if !["nats://", "tls://"].iter().any(|scheme| n.url.starts_with(scheme)) {
            return Err(invalid(format!(
                "nats.url = {:?}, must start with nats:// or tls://",
                n.url
            )));
        }
        if n.url.contains('@') {
            return Err(invalid(
                "nats.url: no credentials in the URL; use nats.credentials_file or NATS_USER \
                 and NATS_PASSWORD (or NATS_TOKEN)"
                    .to_owned(),
            ));
        }
        let token = |t: &str| {
            !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        };
        if !token(&n.stream) {
            return Err(invalid(format!("nats.stream = {:?}: letters, digits, - and _", n.stream)));
        }
        if !n.subject.split('.').all(token) {
            return Err(invalid(format!(
                "nats.subject = {:?}: dot-separated tokens of letters, digits, - and _",
                n.subject
            )));
        }
        within("nats.retain_messages", n.retain_messages, 1, 1 << 40)?;
        within("nats.retain_bytes", n.retain_bytes, 1 << 20, 1 << 50)?;
        within("nats.retain_secs", n.retain_secs, 1, 365 * 86_400)?;
        within("nats.duplicate_window_secs", n.duplicate_window_secs, 1, n.retain_secs)?;
        within("nats.ring_bytes", n.ring_bytes.into(), 1 << 16, 1 << 31)?;
        within("nats.message_bytes_max", n.message_bytes_max.into(), 4_096, 64 << 20)?;
        within("nats.in_flight_max", n.in_flight_max.into(), 1, 65_536)?;
        within("nats.ack_timeout_ms", n.ack_timeout_ms.into(), 1, 600_000)?;
        within("nats.connect_timeout_ms", n.connect_timeout_ms.into(), 1, 600_000)?;
        within("nats.retry_ms_min", n.retry_ms_min.into(), 1, n.retry_ms_max.into())?;
        within("nats.retry_ms_max", n.retry_ms_max.into(), 1, 3_600_000)?;
        Ok(self)
    }
}

/// An environment variable's value as TOML: a TOML value if it is one, else a string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut table) if table.len() == 1 => {
            table.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned()))
        }
        _ => toml::Value::String(raw.to_owned()),
    }
}

/// Sets `path` (tables, then a key) in `table` to `value`.
fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (key, tables) = path.split_last().ok_or("no key")?;
    let mut at = table;
    for name in tables {
        let next = at.entry(name.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
        at = next.as_table_mut().ok_or_else(|| format!("{name} is a value, not a table"))?;
    }
    at.insert(key.clone(), value);
    Ok(())
}

fn within(field: &str, value: u64, min: u64, max: u64) -> Result<(), SettingsError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(SettingsError::Invalid(format!("{field} = {value}, must be in {min}..={max}")))
    }
}

fn power_of_two(field: &str, value: u32, min: u32, max: u32) -> Result<(), SettingsError> {
    within(field, value.into(), min.into(), max.into())?;
    if value.is_power_of_two() {
        Ok(())
    } else {
        Err(SettingsError::Invalid(format!("{field} = {value}, must be a power of two")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_file_is_the_defaults() {
        let shipped = include_str!("../../tickstock.toml");
        assert_eq!(Settings::parse(shipped).unwrap(), Settings::default());
        // Word for word what `tickstock config` prints, after the file's opening comment.
        let body = shipped.split_once("\n\n").map_or(shipped, |(_, body)| body);
        assert_eq!(body, Settings::default().commented_toml(), "regenerate tickstock.toml");
        Settings::default().validated().unwrap();
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        assert_eq!(Settings::parse(&Settings::default_toml()).unwrap(), Settings::default());
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let error = Settings::parse("[pipeline]\nring_capacty = 4\n").unwrap_err();
        assert!(error.contains("ring_capacty"), "{error}");
        let bad = Settings::parse("[pipeline]\nring_capacity = 1000\n").unwrap();
        let error = bad.validated().unwrap_err().to_string();
        assert!(error.contains("pipeline.ring_capacity"), "{error}");
        let bad = Settings::parse("[engine]\nmax_jump_pct = -1.0\n").unwrap();
        assert!(bad.validated().unwrap_err().to_string().contains("max_jump_pct"));
        let idle = "[pipeline.engine_idle]\nkind = \"backoff\"\nspins = 1\nyields = 1\npark_us_min = 0\npark_us_max = 5\n";
        let error = Settings::parse(idle).unwrap().validated().unwrap_err().to_string();
        assert!(error.contains("engine_idle"), "{error}");
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_environment_overrides_the_file_which_overrides_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.toml");
        std::fs::write(
            &file,
            "[server]\nlisten = \"127.0.0.1:1\"\nthreads = 3\n[synthetic]\nseed = 7\n",
        )
        .unwrap();
        let vars = env(&[
            ("TICKSTOCK_SERVER__LISTEN", "127.0.0.1:9000"),
            ("TICKSTOCK_SYNTHETIC__TRADES_MAX", "5"),
            ("TICKSTOCK_UPSTREAM__TOPICS", "[\"T.*\", \"A.*\"]"),
            ("TICKSTOCK_ENGINE__TREND__BUCKET_MS", "2500"),
            ("TICKSTOCK_SERVER__JWT_ALGORITHM", "HS256"),
            // Secrets and strangers are not settings.
            ("TICKSTOCK_UPSTREAM_KEY", "secret"),
            ("HOME", "/root"),
        ]);
        let s = Settings::resolve(Some(&file), vars).unwrap().validated().unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:9000", "environment over file");
        assert_eq!(s.server.threads, 3, "file over default");
        assert_eq!(s.synthetic.seed, 7);
        assert_eq!(s.synthetic.trades_max, Some(5));
        assert_eq!(s.upstream.topics, ["T.*", "A.*"]);
        assert_eq!(s.engine.trend.bucket_ms, 2500);
        assert_eq!(s.server.jwt_algorithm.as_deref(), Some("HS256"));
        assert_eq!(Settings::resolve(None, Vec::new()).unwrap(), Settings::default());
    }

    #[test]
    fn a_bad_variable_is_named() {
        for (var, value, says) in [
            ("TICKSTOCK_SERVER__LISTN", "x", "listn"),
            ("TICKSTOCK_SERVER__THREADS", "many", "threads"),
            ("TICKSTOCK_NOPE__X", "1", "nope"),
            ("TICKSTOCK_SERVER__", "1", "empty"),
        ] {
            let error = Settings::resolve(None, env(&[(var, value)])).unwrap_err().to_string();
            assert!(error.contains(var) && error.contains(says), "{var}: {error}");
        }
    }

    #[test]
    fn the_printed_configuration_has_every_setting_and_parses_back() {
        let text = Settings::default().commented_toml();
        assert_eq!(Settings::parse(&text).unwrap(), Settings::default());
        for (_, example, _) in OPTIONAL {
            assert!(text.contains(&format!("# {example}\n")), "{example} missing");
        }
        let mut set = Settings::default();
        set.synthetic.trades_max = Some(9);
        let text = set.commented_toml();
        assert!(text.contains("trades_max = 9") && !text.contains("# trades_max"), "{text}");
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let text = "[synthetic]\nseed = 7\n[pipeline.engine_idle]\nkind = \"spin\"\n";
        let settings = Settings::parse(text).unwrap();
        assert_eq!(settings.synthetic.seed, 7);
        assert_eq!(settings.pipeline.engine_idle, IdleStrategy::Spin);
        assert_eq!(settings.synthetic.symbols, 4_000);
    }
}
