#!/usr/bin/env bash
# The fan-out targets of issue 13, measured with loadgen against two builds of `tickstock`,
# alternating them, three runs each; prints one line per run and the medians.
#
#   perf/targets.sh OLD_TICKSTOCK NEW_TICKSTOCK [OUT_DIR]
#
# Both servers are driven by this tree's loadgen (target/release/loadgen; build it first:
# cargo build --release -p tickstock-shell -p tickstock-perf). Takes about 30 minutes on a
# 2-core machine; not part of CI. Scenarios: SCENARIOS below (name, then loadgen arguments).
set -euo pipefail
old=${1:?usage: perf/targets.sh OLD_TICKSTOCK NEW_TICKSTOCK [OUT_DIR]}
new=${2:?usage: perf/targets.sh OLD_TICKSTOCK NEW_TICKSTOCK [OUT_DIR]}
out=${3:-perf/results/targets-$(date +%Y%m%d-%H%M%S)}
runs=${RUNS:-3}
cd "$(dirname "$0")/.."
loadgen=${LOADGEN:-target/release/loadgen}
mkdir -p "$out"
SCENARIOS=(
  "t-1000x20k|--clients 1000 --rates 20000 --topics T.*"
  "t-100x100k|--clients 100 --rates 100000 --topics T.*"
  "all-100x20k|--clients 100 --rates 20000"
  "watch-10000x20k|--clients 10000 --rates 20000 --watchlist 10 --watchlist-channels T,A,HL"
  "idle-10000|--clients 1,10000 --rates 10 --watchlist 1 --watchlist-channels FMV"
  "policies-300x20k|--clients 300 --rates 20000 --topics T.*,A.* --policies close,conflate,shed"
)
only=${ONLY:-}
for scenario in "${SCENARIOS[@]}"; do
  name=${scenario%%|*}
  args=${scenario#*|}
  if [ -n "$only" ] && [[ "$name" != $only ]]; then continue; fi
  for run in $(seq 1 "$runs"); do
    for build in old new; do
      binary=$old
      [ "$build" = new ] && binary=$new
      dir="$out/$name/$build-$run"
      mkdir -p "$dir"
      # shellcheck disable=SC2086 # the scenario's arguments are words
      "$loadgen" --tickstock "$binary" $args --step-secs "${STEP_SECS:-10}" --warmup-secs 2 \
        --out "$dir" >"$dir/stdout.txt" 2>"$dir/stderr.txt" || true
      python3 - "$name" "$build" "$run" "$dir" <<'PY'
import glob, json, sys
name, build, run, d = sys.argv[1:]
files = [f for f in glob.glob(d + "/loadgen-*.json")]
if not files:
    print(f"{name:18} {build} {run}: no result (see {d}/stderr.txt)")
    sys.exit()
r = json.load(open(files[0]))
for s in r["steps"]:
    exp = s.get("expected_trades") or 0
    got = s.get("received_trades") or 0
    pct = 100.0 * got / exp if exp else 0.0
    print(f"{name:18} {build} {run}: {s['clients']:>5} clients {s['rate']:>6}/s "
          f"delivered {pct:6.2f} % closed {s['slow_consumer_closes']:>5} "
          f"p99 {s['latency_ms']['p99']:9.2f} ms server {s['server_cpu_cores'] or 0:.2f} cores "
          f"RSS {s['server_rss_mib'] or 0:7.1f} MiB unread {s.get('client_unread_mib') or 0:8.1f} MiB "
          f"shed {s.get('shed_clients', 0)} limit: {s.get('limit') or '-'}")
PY
    done
  done
done | tee "$out/summary.txt"
