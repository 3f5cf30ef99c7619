#!/usr/bin/env bash
# The scale-out against one process (docs/scale-out.md, "Measured"): loadgen's open-loop
# upstream at RATE (20,000) trades/s, CLIENTS (100) clients on every channel, latency from
# the upstream's send to the client, in two set-ups, alternated ROUNDS (3) times:
#   all:     one `serve` (feed, engine and clients), started by loadgen;
#   gateway: `serve --role ingest` (the feed from loadgen's upstream, the engine, publishing
#            to a private nats-server with JetStream) and GATEWAYS (1) `serve --role
#            gateway` that the clients are spread over (`loadgen --connect A,B,...`, their
#            CPU by `--server-pid`; per-gateway figures in each run's loadgen output).
# Medians and ratios: the clients' p99 (what ingest -> NATS -> gateway adds), the serving
# process's CPU per delivered client-event (the gateway's against all's), and the ingest's
# CPU. One machine: NATS, the ingest, the gateway and the clients share its 2 cores, which
# a deployment with a machine per gateway would not. Outside CI.
#
#   perf/scale-out.sh
#   GATEWAYS=2 CLIENTS=100,500,1000 perf/scale-out.sh     # two gateways, a client sweep
#   NATS_SERVER=/usr/sbin/nats-server perf/scale-out.sh    # another nats-server
#   TICKSTOCK=/tmp/old/tickstock perf/scale-out.sh         # another build of tickstock
#   NATS_STORAGE=memory perf/scale-out.sh                  # the stream in memory (nats.storage)
#
# The write budget: `server.client_writes_per_sec_max` (200,000 by default) is what one
# core's event loop writes before the linger grows. On this one machine the gateways share
# the cores `all` has, so each gateway gets 200,000 / GATEWAYS (GATEWAY_WRITES_PER_SEC_MAX
# sets it): with the default each, two gateways would make twice `all`'s writes at the same
# client count, and their CPU per client-event would measure the extra writes, not the
# split. With a machine per gateway, each keeps the default.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
clients="${CLIENTS:-100}"
rate="${RATE:-20000}"
secs="${STEP_SECS:-20}"
out="${OUT:-perf/results/scale-out}"
gateways="${GATEWAYS:-1}"
gateway_writes="${GATEWAY_WRITES_PER_SEC_MAX:-$((200000 / gateways))}"
nats_server="${NATS_SERVER:-target/test-venv/bin/nats-server}"
tickstock="${TICKSTOCK:-target/release/tickstock}"
storage="${NATS_STORAGE:-file}"
if [ ! -x "$nats_server" ]; then
  nats_server=$(command -v nats-server || true)
fi
if [ -z "$nats_server" ]; then
  echo "perf/scale-out.sh: no nats-server: run tools/test.sh once (it installs one) or set NATS_SERVER" >&2
  exit 2
fi
cargo build --release -p tickstock-shell -p tickstock-perf
mkdir -p "$out"
work=$(mktemp -d /tmp/tickstock-scale-out.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

summarize() { # DIR NAME [EXTRA_JSON]
  python3 - "$1" "$2" "$3" <<'PY'
import glob, json, sys
files = glob.glob(sys.argv[1] + "/loadgen-*.json")
extra = json.loads(sys.argv[3])
if not files:
    print(json.dumps({"run": sys.argv[2], "error": open(sys.argv[1] + "/stdout").read()[-400:]}))
    sys.exit()
for s in json.load(open(files[0]))["steps"]:
    events = s["delivered_events_per_s"] or 1
    row = {"run": sys.argv[2], "clients": s["clients"], "valid": s["valid"],
           "within_budget": s["within_budget"], "why": s["invalid_reasons"][:2],
           "p50": s["latency_ms"]["p50"], "p99": s["latency_ms"]["p99"],
           "cpu": s["server_cpu_cores"], "events_per_s": events,
           "ns_per_client_event": s["server_cpu_cores"] * 1e9 / events,
           "targets": [(t["addr"], round(t["latency_ms"]["p99"], 3), t["cpu_cores"]) for t in s.get("targets", [])]}
    if s.get("nats"):
        # The first gateway's hop, from its tickstock_nats_transit_seconds (bucket bounds).
        row["transit_p50_ms"] = s["nats"]["transit_p50_bound_ms"]
        row["transit_p99_ms"] = s["nats"]["transit_p99_bound_ms"]
        row["transit_mean_ms"] = s["nats"]["transit_mean_ms"]
    row.update(extra)
    print(json.dumps(row))
PY
}

run_all() {
  local dir="$out/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  target/release/loadgen --clients "$clients" --rates "$rate" --step-secs "$secs" \
    --warmup-secs 2 --tickstock "$tickstock" --out "$dir" >"$dir/stdout" 2>&1 || true
  summarize "$dir" "$1" "{}"
}

run_gateway() {
  local dir="$out/$1"
  rm -rf "$dir" "$work/nats" && mkdir -p "$dir" "$work/nats"
  local nats_port up_port key
  nats_port=$(free_port); up_port=$(free_port)
  key="scale-out-$$-$RANDOM"
  "$nats_server" -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$dir/nats.log" 2>&1 &
  local nats_pid=$!
  pids+=("$nats_pid")
  cat >"$dir/ingest.toml" <<EOF
[feed]
source = "upstream"

[upstream]
url = "ws://127.0.0.1:$up_port/stocks"
key_env = "LOADGEN_UPSTREAM_KEY"
topics = ["T.*"]
stale_check = "never"

[server]
listen = "127.0.0.1:0"

[nats]
url = "nats://127.0.0.1:$nats_port"
storage = "$storage"
EOF
  sleep 0.5
  LOADGEN_UPSTREAM_KEY="$key" "$tickstock" --config "$dir/ingest.toml" --quiet \
    serve --role ingest >"$dir/ingest.log" 2>&1 &
  local ingest_pid=$!
  pids+=("$ingest_pid")
  local connect="" gw_pids="" gw_list=() gw_port gw_pid
  for g in $(seq 1 "$gateways"); do
    gw_port=$(free_port)
    printf '[server]\nlisten = "127.0.0.1:%s"\nconnections_max = 20000\nconnections_per_user_max = 20000\nclient_writes_per_sec_max = %s\n\n[nats]\nurl = "nats://127.0.0.1:%s"\n' \
      "$gw_port" "$gateway_writes" "$nats_port" >"$dir/gateway-$g.toml"
    "$tickstock" --config "$dir/gateway-$g.toml" --quiet serve --role gateway \
      >"$dir/gateway-$g.log" 2>&1 &
    gw_pid=$!
    pids+=("$gw_pid")
    gw_list+=("$gw_pid")
    connect="${connect:+$connect,}127.0.0.1:$gw_port"
    gw_pids="${gw_pids:+$gw_pids,}$gw_pid"
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$gw_port/health" >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  local ingest_before nats_before
  ingest_before=$(cpu_ticks "$ingest_pid"); nats_before=$(cpu_ticks "$nats_pid")
  local started=$SECONDS
  LOADGEN_UPSTREAM_KEY="$key" target/release/loadgen --clients "$clients" --rates "$rate" \
    --step-secs "$secs" --warmup-secs 2 --connect "$connect" --server-pid "$gw_pids" \
    --upstream-listen "127.0.0.1:$up_port" --out "$dir" >"$dir/stdout" 2>&1 || true
  local elapsed=$((SECONDS - started))
  local ingest_cpu nats_cpu hz
  hz=$(getconf CLK_TCK)
  ingest_cpu=$(python3 -c "print(($(cpu_ticks "$ingest_pid") - $ingest_before) / $hz / max($elapsed, 1))")
  nats_cpu=$(python3 -c "print(($(cpu_ticks "$nats_pid") - $nats_before) / $hz / max($elapsed, 1))")
  local gaps=0 one
  for addr in ${connect//,/ }; do
    one=$(curl -s "http://$addr/metrics" | awk '/^tickstock_nats_gap_events_total/ {print $2}')
    gaps=$((gaps + ${one:-0}))
  done
  for pid in "${gw_list[@]}" "$ingest_pid" "$nats_pid"; do kill "$pid" 2>/dev/null || true; done
  wait "${gw_list[@]}" "$ingest_pid" "$nats_pid" 2>/dev/null || true
  pids=()
  summarize "$dir" "$1" "{\"ingest_cpu\": $ingest_cpu, \"nats_cpu\": $nats_cpu, \"gap_events\": ${gaps:-null}, \"gateway_writes_per_sec_max\": $gateway_writes}"
}

: >"$out/runs.jsonl"
for round in $(seq 1 "$rounds"); do
  run_all "all-$round" | tee -a "$out/runs.jsonl"
  run_gateway "gateway-$round" | tee -a "$out/runs.jsonl"
done
python3 - "$out/runs.jsonl" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
for clients in sorted({r.get("clients", 0) for r in runs}):
    def med(prefix, key):
        values = [r[key] for r in runs if r["run"].startswith(prefix) and r.get("clients") == clients
                  and key in r and r[key] is not None]
        return statistics.median(values) if values else float("nan")
    print(f"{clients} clients:")
    for key, what in [("p50", "p50, ms"), ("p99", "p99, ms"), ("cpu", "serving processes' CPU, cores"),
                      ("ns_per_client_event", "serving processes' CPU per client-event, ns"),
                      ("events_per_s", "client-events/s")]:
        a, g = med("all", key), med("gateway", key)
        print(f"  {what}: all {a:.3f}, gateways {g:.3f}, ratio {g / a:.2f}")
    print(f"  each gateway's client_writes_per_sec_max: {med('gateway', 'gateway_writes_per_sec_max'):.0f} (all: 200000)")
    print(f"  ingest CPU beside the gateways: {med('gateway', 'ingest_cpu'):.3f} cores; nats-server {med('gateway', 'nats_cpu'):.3f}")
    print(f"  added p99 (gateways - all): {med('gateway', 'p99') - med('all', 'p99'):.3f} ms")
    print(f"  the hop itself (first gateway, emitter -> hand-off): mean {med('gateway', 'transit_mean_ms'):.3f} ms, "
          f"p50 <= {med('gateway', 'transit_p50_ms')} ms, p99 <= {med('gateway', 'transit_p99_ms')} ms")
    held = lambda prefix: sum(1 for r in runs if r["run"].startswith(prefix) and r.get("clients") == clients and r.get("within_budget"))
    print(f"  runs within loadgen's budget: all {held('all')}, gateways {held('gateway')}")
for r in runs:
    if not r.get("valid", False):
        print("  INVALID:", r["run"], r.get("why") or r.get("error"))
    if r.get("gap_events"):
        print("  GAPS:", r["run"], r["gap_events"])
PY
