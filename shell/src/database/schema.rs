//! The tables the sink writes and the aggregates endpoint reads, created or migrated by
//! [`init`] (`tickstock db init`, and at start with `database.init_schema`).
//!
//! One table per kind, each keyed by the event's `seq`, so a batch written twice (a retry
//! after a lost connection, a backfill over rows already there) never stores a row twice:
//!
//! - `bars`: `A` and `AM` (`frequency` `second` or `minute`), indexed by
//!   `(symbol, frequency, start)` for "one symbol, a time range";
//! - `events`: `HL`, `TR`, `SV`, `FMV` and `ACT`, with the columns queries filter on and the
//!   event itself as `jsonb`, indexed by `(symbol, t)`.
//!
//! Rows arrive through per-connection staging tables ([`STAGE`]) and an
//! `INSERT ... ON CONFLICT (seq) DO NOTHING`, which is what makes a retried batch harmless
//! and tells a backfill how many rows were already there.
//!
//! Prices are `double precision`: the engine's prices have at most six decimals and stay far
//! below 2^53 micro-units, so every one survives the round trip exactly (and is what the
//! REST clients read anyway). Times are `timestamptz`.

use postgres::Client;

/// The schema this build writes; `tickstock_schema` records the one a database has.
pub const VERSION: i32 = 1;

/// Creates what is missing, in one transaction (version 1).
const CREATE: &str = r#"
CREATE TABLE IF NOT EXISTS tickstock_schema (
    version integer NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS bars (
    seq bigint PRIMARY KEY,
    symbol text NOT NULL,
    frequency text NOT NULL CHECK (frequency IN ('second', 'minute')),
    start timestamptz NOT NULL,
    "end" timestamptz NOT NULL,
    o double precision NOT NULL,
    h double precision NOT NULL,
    l double precision NOT NULL,
    c double precision NOT NULL,
    v bigint NOT NULL,
    vw double precision NOT NULL,
    n bigint NOT NULL,
    day_volume bigint NOT NULL,
    day_open double precision NOT NULL,
    day_vwap double precision NOT NULL,
    avg_size bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS bars_symbol_frequency_start ON bars (symbol, frequency, start);
CREATE TABLE IF NOT EXISTS events (
    seq bigint PRIMARY KEY,
    kind text NOT NULL,
    symbol text NOT NULL,
    t timestamptz NOT NULL,
    price double precision,
    direction text,
    strength text,
    score double precision,
    body jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS events_symbol_t ON events (symbol, t);
CREATE INDEX IF NOT EXISTS events_kind_t ON events (kind, t);
"#;

/// Each connection's staging tables: a batch is copied in, moved to the tables with
/// `ON CONFLICT DO NOTHING`, and gone at commit.
pub const STAGE: &str = "
CREATE TEMP TABLE IF NOT EXISTS bars_stage (LIKE bars) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS events_stage (LIKE events) ON COMMIT DELETE ROWS;
";

/// What [`init`] found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// The tables were created.
    Created,
    /// They were there, at [`VERSION`].
    Current,
}

/// Creates the schema, or checks it is this build's; a newer one (written by a later
/// TickStock) is an error rather than something to write into.
pub fn init(client: &mut Client) -> Result<Init, String> {
    let mut tx = client.transaction().map_err(|e| super::reason(&e))?;
    // One initialiser at a time (two servers starting against one database).
    tx.batch_execute("SELECT pg_advisory_xact_lock(7405201)").map_err(|e| super::reason(&e))?;
    let found: Option<i32> = tx
        .query_opt("SELECT to_regclass('tickstock_schema') IS NOT NULL", &[])
        .map_err(|e| super::reason(&e))?
        .and_then(|row| row.get::<_, bool>(0).then_some(()))
        .map(|()| {
            tx.query_one("SELECT coalesce(max(version), 0) FROM tickstock_schema", &[])
                .map(|row| row.get(0))
        })
        .transpose()
        .map_err(|e| super::reason(&e))?;
    let outcome = match found {
        Some(VERSION) => Init::Current,
        Some(newer) if newer > VERSION => {
            return Err(format!(
                "the database has schema version {newer}, newer than this build's {VERSION}: \
                 run the TickStock that wrote it, or another database"
            ))
        }
        _ => {
            tx.batch_execute(CREATE).map_err(|e| super::reason(&e))?;
            tx.execute("INSERT INTO tickstock_schema (version) VALUES ($1)", &[&VERSION])
                .map_err(|e| super::reason(&e))?;
            Init::Created
        }
    };
    tx.commit().map_err(|e| super::reason(&e))?;
    Ok(outcome)
}
