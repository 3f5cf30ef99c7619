#!/usr/bin/env bash
# The database sink's targets (docs/database.md, "Measured"), on a private PostgreSQL
# cluster this script starts and stops itself (Debian's postgresql; as root it runs the
# server as the `postgres` user). Outside CI: minutes to tens of minutes.
#
#   perf/database.sh sink    loadgen: 100 clients on every channel at 20,000 trades/s, the
#                            server storing every channel it can (A included) against the
#                            same server without a database, ROUNDS (3) of each, alternated;
#                            medians and ratios of the server's CPU and p99, the engine's
#                            and the sink's (`tickstock-db`) threads, the sink's lag.
#   perf/database.sh month   DAYS (21) trading days of the synthetic market (SYMBOLS 4,000
#                            at RATE 2,500 trades/s of event time: every symbol trades most
#                            minutes) recorded in virtual time and stored with
#                            `tickstock db backfill` (AM only), then the endpoint's 1-day
#                            query for one symbol timed through GET /v2/aggs (QUERIES of
#                            them, random symbols and days), the table's size, and the same
#                            table partitioned by day, timed alike.
#
# Results go to perf/results/database/ (OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"
case "$mode" in sink | month) ;; *) echo "usage: perf/database.sh sink|month" >&2; exit 2 ;; esac
out="${OUT:-perf/results/database}"
mkdir -p "$out"
cargo build --release -p tickstock-shell -p tickstock-perf
bin="$PWD/target/release"

# --- a private cluster ---------------------------------------------------------------
pg_bin="${TICKSTOCK_TEST_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
[ -x "$pg_bin/initdb" ] || { echo "no PostgreSQL (apt-get install postgresql)" >&2; exit 1; }
work=$(mktemp -d /tmp/tickstock-db-bench.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$work"
    as_pg=(runuser -u postgres --)
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/data" -U tickstock --auth=trust -E UTF8 --no-locale >/dev/null
# The server's defaults (durable commits), with room for the month's index in memory.
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/server.log" -w \
    -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c shared_buffers=1GB" \
    start >/dev/null
server_pid=""
stop() {
    [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap stop EXIT
psql() { "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U tickstock -v ON_ERROR_STOP=1 -qAt "$@"; }
psql -d postgres -c "CREATE DATABASE tickstock"
url="host=127.0.0.1 port=$port user=tickstock dbname=tickstock"
median() { python3 -c 'import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 4))' "$@"; }

if [ "$mode" = sink ]; then
    rounds="${ROUNDS:-3}"
    secs="${STEP_SECS:-30}"
    cat >"$out/with.toml" <<EOF
[database]
url = "$url"
channels = ["A", "AM", "HL", "TR", "SV", "FMV", "ACT"]
EOF
    : >"$out/without.toml"
    "$bin/tickstock" --config "$out/with.toml" --quiet db init
    # pg_cpu: CPU seconds of every PostgreSQL process so far (ended backends included, via
    # their parent's cumulative children time).
    pg_cpu() {
        python3 - "$work/data/postmaster.pid" <<'PY'
import os, sys
hz = os.sysconf("SC_CLK_TCK")
master = int(open(sys.argv[1]).readline())
def ticks(pid, children):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
total = ticks(master, True)
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            if int(f[1]) == master:
                total += ticks(pid, False)
        except (OSError, IndexError):
            pass
print(total / hz)
PY
    }
    # run NAME: one loadgen run; prints its figures as one line of JSON.
    run() {
        local dir="$out/$1"
        rm -rf "$dir" && mkdir -p "$dir"
        psql -d tickstock -c "TRUNCATE bars, events"
        local pg_before began
        pg_before=$(pg_cpu)
        began=$(date +%s.%N)
        "$bin/loadgen" --clients 100 --rates 20000 --step-secs "$secs" --warmup-secs 2 \
            --server-config "$out/$2.toml" --out "$dir" >"$dir/stdout" 2>&1 || true
        local pg_cores
        pg_cores=$(python3 -c "import sys,time; print((float(sys.argv[2]) - float(sys.argv[1])) / (time.time() - float(sys.argv[3])))" "$pg_before" "$(pg_cpu)" "$began")
        PG_CORES=$pg_cores python3 - "$dir" <<'PY'
import glob, json, sys
files = glob.glob(sys.argv[1] + "/loadgen-*.json")
if not files:
    print(json.dumps({"error": open(sys.argv[1] + "/stdout").read()[-500:]}))
    sys.exit()
s = json.load(open(files[0]))["steps"][0]
t = s["server_threads_cpu"]
import os
print(json.dumps({
    "postgres": float(os.environ["PG_CORES"]),
    "valid": s["valid"], "why": s["invalid_reasons"], "p99": s["latency_ms"]["p99"],
    "cpu": s["server_cpu_cores"], "engine": t.get("tickstock-engin", 0.0),
    "emit": t.get("tickstock-emit", 0.0), "db": t.get("tickstock-db", 0.0),
    "database": s["database"],
}))
PY
    }
    : >"$out/sink.jsonl"
    for round in $(seq 1 "$rounds"); do
        for kind in without with; do
            line=$(run "$kind-$round" "$kind")
            echo "{\"run\":\"$kind\",\"round\":$round,\"figures\":$line}" | tee -a "$out/sink.jsonl"
        done
    done
    rows=$(psql -d tickstock -c "SELECT (SELECT count(*) FROM bars) || ' bars, ' || (SELECT count(*) FROM events) || ' events'")
    python3 - "$out/sink.jsonl" "$rows" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(kind, key):
    values = [r["figures"].get(key) for r in runs if r["run"] == kind and r["figures"].get(key) is not None]
    return statistics.median(values) if values else float("nan")
print("medians of", len([r for r in runs if r["run"] == "with"]), "rounds each (100 clients, 20,000 trades/s):")
for key, what in [("postgres", "PostgreSQL (whole run), cores"), ("cpu", "server CPU, cores"), ("p99", "client p99, ms"), ("engine", "engine thread, cores"), ("emit", "emitter thread, cores"), ("db", "tickstock-db thread, cores")]:
    a, b = med("without", key), med("with", key)
    ratio = b / a if a else float("nan")
    print(f"  {what:28} without {a:8.3f}  with {b:8.3f}  ratio {ratio:5.2f}")
for r in runs:
    f = r["figures"]
    if not f.get("valid", False):
        print("  INVALID:", r["run"], r["round"], f.get("why") or f.get("error"))
    if r["run"] == "with" and f.get("database"):
        d = f["database"]
        print(f"  round {r['round']}: {d['rows_written']} rows, {d['dropped_events']} dropped, {d['commits']} commits, "
              f"{d['commits_over_1s']} over 1 s, lag mean {d['lag_mean_ms']:.0f} ms, at most {d['lag_max_bound_s']} s")
print("  left in the database after the last round:", sys.argv[2])
PY
    exit 0
fi

# --- month ---------------------------------------------------------------------------
days="${DAYS:-21}"
symbols="${SYMBOLS:-4000}"
rate="${RATE:-2500}"
queries="${QUERIES:-200}"
trades_per_day=$((rate * 23400))
cat >"$out/month.toml" <<EOF
[synthetic]
symbols = $symbols
trades_per_sec = $rate
virtual_time = true

[database]
url = "$url"
channels = ["AM"]
on_overflow = "wait"
EOF
"$bin/tickstock" --config "$out/month.toml" --quiet db init
# Trading days from Monday 2026-11-02, weekdays only, 09:30 New York (14:30 UTC).
mapfile -t starts < <(python3 - "$days" <<'PY'
import datetime, sys
day, out = datetime.date(2026, 11, 2), []
while len(out) < int(sys.argv[1]):
    if day.weekday() < 5:
        out.append(int(datetime.datetime(day.year, day.month, day.day, 14, 30, tzinfo=datetime.timezone.utc).timestamp() * 1000))
    day += datetime.timedelta(days=1)
print("\n".join(map(str, out)))
PY
)
started=$(date +%s)
for i in "${!starts[@]}"; do
    journal="$work/journal-$i"
    # Each day its own seq range (the key), as a server with a journal would have.
    export TICKSTOCK_ENGINE__SEQ_START=$((i * 10000000000 + 1))
    export TICKSTOCK_SYNTHETIC__VIRTUAL_START_UNIX_MS="${starts[$i]}"
    # One seed for every day: the same 4,000 tickers each day (a seed draws the tickers
    # too), so the month holds 4,000 symbols; the days repeat one walk, which the query
    # does not care about.
    "$bin/tickstock" --config "$out/month.toml" --quiet record --virtual-time \
        --journal "$journal" --trades "$trades_per_day" 2>>"$out/month.log"
    "$bin/tickstock" --config "$out/month.toml" --quiet db backfill --journal "$journal" \
        2>>"$out/month.log"
    rm -rf "$journal"
    echo "day $((i + 1))/$days stored ($(($(date +%s) - started)) s)"
done
unset TICKSTOCK_ENGINE__SEQ_START TICKSTOCK_SYNTHETIC__VIRTUAL_START_UNIX_MS
psql -d tickstock -c "VACUUM ANALYZE bars"
generated=$(($(date +%s) - started))

# The same rows partitioned by day (start, in UTC days: one trading day each).
psql -d tickstock <<SQL
CREATE TABLE bars_by_day (LIKE bars INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (start);
ALTER TABLE bars_by_day ADD PRIMARY KEY (seq, start);
CREATE INDEX ON bars_by_day (symbol, frequency, start);
DO \$\$
DECLARE d date;
BEGIN
  FOR d IN SELECT generate_series(min(start)::date, max(start)::date, interval '1 day')::date FROM bars LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF bars_by_day FOR VALUES FROM (%L) TO (%L)',
                   'bars_' || to_char(d, 'YYYYMMDD'), d, d + 1);
  END LOOP;
END \$\$;
INSERT INTO bars_by_day SELECT * FROM bars;
VACUUM ANALYZE bars_by_day;
SQL

{
    echo "generated $days days in $generated s"
    psql -d tickstock -c "SELECT 'bars: ' || count(*) || ' rows, ' || count(DISTINCT symbol) || ' symbols, ' || min(start) || ' .. ' || max(start) FROM bars"
    psql -d tickstock -c "SELECT 'bars size: table ' || pg_size_pretty(pg_relation_size('bars')) || ', indexes ' || pg_size_pretty(pg_indexes_size('bars')) || ', total ' || pg_size_pretty(pg_total_relation_size('bars')) || ', ' || round(pg_total_relation_size('bars')::numeric / count(*)) || ' bytes a row' FROM bars"
    psql -d tickstock -c "SELECT 'bars_by_day size: total ' || pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits WHERE inhparent = 'bars_by_day'::regclass"
} | tee "$out/month.txt"

# The endpoint, on this database (a live feed beside it stores nothing: its channels are
# AM only and its seq far from the month's).
cat >"$out/serve.toml" <<EOF
[server]
listen = "127.0.0.1:0"

[database]
url = "$url"
channels = ["AM"]
EOF
TICKSTOCK_ENGINE__SEQ_START=900000000000000 "$bin/tickstock" --config "$out/serve.toml" \
    serve >"$out/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    addr=$(grep -o 'serving ws://[0-9.:]*' "$out/serve.log" | head -1 | sed 's|serving ws://||') || true
    [ -n "$addr" ] && break
    sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start:" >&2; cat "$out/serve.log" >&2; exit 1; }

# One symbol's trading day of minutes: GET /v2/aggs (HTTP, the query, the JSON), and the
# database's own execution time (EXPLAIN ANALYZE) on the plain and the partitioned table.
python3 - "$addr" "$queries" "$port" "$pg_bin" "${starts[@]}" <<'PY' | tee -a "$out/month.txt"
import http.client, json, random, statistics, subprocess, sys, time, datetime
addr, queries, port, pg_bin, starts = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
host, http_port = addr.rsplit(":", 1)
def psql(sql):
    return subprocess.run([pg_bin + "/psql", "-h", "127.0.0.1", "-p", port, "-U", "tickstock", "-d", "tickstock", "-qAt", "-c", sql],
                          check=True, capture_output=True, text=True).stdout
symbols = psql("SELECT DISTINCT symbol FROM bars WHERE start < (SELECT min(start) FROM bars) + interval '1 hour'").split()
rng = random.Random(7)
days = [datetime.datetime.fromtimestamp(int(s) / 1000, datetime.timezone.utc).date().isoformat() for s in starts]
picks = [(rng.choice(symbols), rng.choice(days)) for _ in range(queries)]
def percentiles(ms):
    ms = sorted(ms)
    return f"median {statistics.median(ms):.2f} ms, p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms, max {ms[-1]:.2f} ms"
timings, bars = [], []
for symbol, day in picks:
    conn = http.client.HTTPConnection(host, int(http_port), timeout=30)
    began = time.perf_counter()
    conn.request("GET", f"/v2/aggs/ticker/{symbol}/range/1/minute/{day}/{day}", headers={"Authorization": "Bearer bench"})
    response = conn.getresponse()
    body = response.read()
    timings.append((time.perf_counter() - began) * 1e3)
    conn.close()
    if response.status != 200:
        sys.exit(f"GET {symbol} {day}: {response.status} {body[:300]!r}")
    bars.append(json.loads(body).get("resultsCount", 0))
print(f"GET /v2/aggs 1 day of 1-minute bars, {queries} random symbols and days: {percentiles(timings)}; {statistics.median(bars):.0f} bars each (median)")
for table in ["bars", "bars_by_day"]:
    execution = []
    for symbol, day in picks[:50]:
        plan = psql(f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT start, o, h, l, c, v, vw, n FROM {table} "
                    f"WHERE symbol = '{symbol}' AND frequency = 'minute' AND start >= '{day} 09:30-05' "
                    f"AND start < '{day} 16:00-05' ORDER BY start")
        p = json.loads(plan)[0]
        execution.append(p["Planning Time"] + p["Execution Time"])
    print(f"{table}: the database's planning + execution, 50 of the same queries: {percentiles(execution)}")
PY
