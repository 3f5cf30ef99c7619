#!/usr/bin/env bash
# A resume of a million events from the event log, under load (docs/performance.md). The
# server starts from a journal of TRADES (900,000) synthetic trades, about a million events,
# with an empty event log and a memory history of 100,000 events: its warm restart writes
# the log, so a resume from the first `seq` reads 900,000 events from disk, then the history,
# then goes live. loadgen holds CLIENTS (100) measured clients on every channel at RATE
# (20,000) trades/s, with and without a deep resumer beside them (`--disrupt deep=1`: it
# subscribes to every channel, resumes from the oldest `seq`, reads to `resumed`, checks
# every `seq` of the range came once, drops and does it again for the whole step), its
# thread under SCHED_IDLE (`--disruptors-idle`): on this shared machine it then takes only
# CPU nothing else wants, as a client on another machine would, and the measured clients'
# p99 shows what the resume makes the server do.
# ROUNDS (3) of each, alternated; medians and the ratio of the measured clients' p99, the
# deep resumes' rate. Outside CI.
#
#   perf/resume.sh
#   SERVER_SETTINGS='client_write_turn_bytes = 65536' perf/resume.sh   # more [server] lines
#   DEEP_EVERY_MS=5000 perf/resume.sh   # a resume every 5 s instead of back to back
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
clients="${CLIENTS:-100}"
rate="${RATE:-20000}"
secs="${STEP_SECS:-20}"
trades="${TRADES:-900000}"
out="${OUT:-perf/results/resume}"
cargo build --release -p tickstock-shell -p tickstock-perf
mkdir -p "$out"
work=$(mktemp -d /tmp/tickstock-resume.XXXXXX)
trap 'rm -rf "$work"' EXIT
printf '[synthetic]\ntrades_per_sec = %s\n' "$rate" >"$work/record.toml"
target/release/tickstock --config "$work/record.toml" --quiet record --virtual-time \
    --trades "$trades" --journal "$work/journal"

# run NAME [DISRUPT]: one loadgen run on a fresh copy of the journal and an empty log.
run() {
    local dir="$out/$1"
    rm -rf "$dir" "$work/run" && mkdir -p "$dir" "$work/run"
    cp -r "$work/journal" "$work/run/journal"
    cat >"$dir/server.toml" <<EOF
[journal]
enabled = true
dir = "$work/run/journal"

[server]
event_log_dir = "$work/run/events"
history_max_events = 100000
${SERVER_SETTINGS:-}
EOF
    target/release/loadgen --clients "$clients" --rates "$rate" --step-secs "$secs" \
        --warmup-secs 2 --server-config "$dir/server.toml" ${2:+--disrupt "$2" --disruptors-idle} \
        --out "$dir" >"$dir/stdout" 2>&1 || true
    python3 - "$dir" "$1" <<'PY'
import glob, json, sys
files = glob.glob(sys.argv[1] + "/loadgen-*.json")
if not files:
    print(json.dumps({"run": sys.argv[2], "error": open(sys.argv[1] + "/stdout").read()[-400:]}))
    sys.exit()
s = json.load(open(files[0]))["steps"][0]
d = s.get("disruptors") or {}
print(json.dumps({
    "run": sys.argv[2], "valid": s["valid"], "why": s["invalid_reasons"][:2],
    "p99": s["latency_ms"]["p99"], "cpu": s["server_cpu_cores"],
    "deep_resumes": d.get("deep_resumes", 0), "deep_events": d.get("deep_events", 0),
    "deep_micros": d.get("deep_micros", 0), "deep_gaps": d.get("deep_gaps", 0),
    "errors": d.get("errors", 0),
}))
PY
}

: >"$out/runs.jsonl"
for round in $(seq 1 "$rounds"); do
    run "alone-$round" | tee -a "$out/runs.jsonl"
    run "deep-$round" "deep=1${DEEP_EVERY_MS:+,deep_every_ms=$DEEP_EVERY_MS}" | tee -a "$out/runs.jsonl"
done
python3 - "$out/runs.jsonl" <<'PY' | tee "$out/summary.txt"
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
alone = [r for r in runs if r["run"].startswith("alone")]
deep = [r for r in runs if r["run"].startswith("deep")]
def med(rs, key):
    values = [r[key] for r in rs if key in r]
    return statistics.median(values) if values else float("nan")
a, b = med(alone, "p99"), med(deep, "p99")
print(f"measured clients' p99 (medians of {len(alone)} runs each, alternated): alone {a:.2f} ms, "
      f"beside deep resumes {b:.2f} ms, ratio {b / a:.2f}")
print(f"server CPU: alone {med(alone, 'cpu'):.2f}, beside {med(deep, 'cpu'):.2f} cores")
for r in deep:
    if r.get("deep_resumes"):
        print(f"  {r['run']}: {r['deep_resumes']} resumes of {r['deep_events'] / r['deep_resumes']:.0f} events each, "
              f"{r['deep_events'] / max(r['deep_micros'], 1):.2f} M events/s, {r['deep_gaps']} gaps, {r['errors']} errors")
for r in runs:
    if not r.get("valid", False):
        print("  INVALID:", r["run"], r.get("why") or r.get("error"))
PY
