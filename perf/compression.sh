#!/usr/bin/env bash
# permessage-deflate under load (docs/performance.md): loadgen with CLIENTS (100) clients on
# every channel at RATE (20,000) trades/s, the clients plain and then offering
# permessage-deflate, ROUNDS (3) of each, alternated. Prints the medians and ratios of the
# bytes on the wire per delivered event, the server's CPU (and per million delivered
# client-events), its event loops' and emitter's threads, and the clients' p99. Outside CI.
#
#   perf/compression.sh
#   TICKSTOCK=/tmp/old/tickstock perf/compression.sh   # another server build
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
clients="${CLIENTS:-100}"
rate="${RATE:-20000}"
secs="${STEP_SECS:-20}"
out="${OUT:-perf/results/compression}"
cargo build --release -p tickstock-shell -p tickstock-perf
mkdir -p "$out"
: >"$out/runs.jsonl"
for round in $(seq 1 "$rounds"); do
    for compression in none deflate; do
        dir="$out/$compression-$round"
        rm -rf "$dir" && mkdir -p "$dir"
        target/release/loadgen --clients "$clients" --rates "$rate" --step-secs "$secs" \
            --warmup-secs 2 --compression "$compression" --out "$dir" \
            ${TICKSTOCK:+--tickstock "$TICKSTOCK"} >"$dir/stdout" 2>&1 || true
        python3 - "$dir" "$compression" "$round" <<'PY' | tee -a "$out/runs.jsonl"
import glob, json, sys
files = glob.glob(sys.argv[1] + "/loadgen-*.json")
if not files:
    print(json.dumps({"run": sys.argv[2], "round": int(sys.argv[3]), "error": open(sys.argv[1] + "/stdout").read()[-400:]}))
    sys.exit()
s = json.load(open(files[0]))["steps"][0]
t = s["server_threads_cpu"]
print(json.dumps({
    "run": sys.argv[2], "round": int(sys.argv[3]), "valid": s["valid"], "why": s["invalid_reasons"][:2],
    "bytes_per_event": s["wire_bytes_per_event"], "mib_per_s": s["wire_mib_per_s"],
    "events_per_s": s["delivered_events_per_s"], "cpu": s["server_cpu_cores"],
    "cpu_per_m_events": s["server_cpu_cores"] / max(s["delivered_events_per_s"], 1) * 1e6,
    "loops": t.get("tickstock-serve", 0.0), "emit": t.get("tickstock-emit", 0.0),
    "p99": s["latency_ms"]["p99"], "loadgen_cpu": s["loadgen_cpu_cores"],
}))
PY
    done
done
python3 - "$out/runs.jsonl" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def med(kind, key):
    values = [r[key] for r in runs if r["run"] == kind and key in r]
    return statistics.median(values) if values else float("nan")
print(f"medians of {len([r for r in runs if r['run'] == 'none'])} rounds each, alternated:")
for key, what in [("bytes_per_event", "bytes on the wire per event"), ("mib_per_s", "MiB/s to all clients"),
                  ("events_per_s", "delivered client-events/s"), ("cpu", "server CPU, cores"),
                  ("cpu_per_m_events", "server core-s per M events"), ("loops", "event loop threads, cores"),
                  ("emit", "emitter thread, cores"), ("p99", "client p99, ms"), ("loadgen_cpu", "loadgen CPU, cores")]:
    a, b = med("none", key), med("deflate", key)
    print(f"  {what:30} plain {a:12.3f}  deflate {b:12.3f}  ratio {b / a if a else float('nan'):5.2f}")
for r in runs:
    if not r.get("valid", False):
        print("  INVALID:", r["run"], r["round"], r.get("why") or r.get("error"))
PY
