#!/usr/bin/env bash
# Hunts tests whose outcome depends on the machine's speed: runs the whole suite RUNS times
# (default 20) while HOGS processes (default: one per core) spin beside it, and counts each
# test's failures. Run it through tools/test.sh's set-up first (it needs the same services).
#
#   tools/flaky.sh            # 20 runs, a hog per core
#   RUNS=5 HOGS=1 tools/flaky.sh
set -uo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-20}"
hogs="${HOGS:-$(nproc)}"
log="${FLAKY_LOG:-target/flaky}"
mkdir -p "$log"
cargo test --workspace --no-run -q || exit 2
pids=()
for _ in $(seq 1 "$hogs"); do
    ( while :; do :; done ) &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
failed=0
for run in $(seq 1 "$runs"); do
    started=$(date +%s)
    if cargo test --workspace -q >"$log/run-$run.log" 2>&1; then
        echo "run $run: ok ($(( $(date +%s) - started )) s)"
    else
        failed=$((failed + 1))
        echo "run $run: FAILED ($(( $(date +%s) - started )) s): $(grep -E '^    [a-z_0-9:]+$' "$log/run-$run.log" | tr -d ' ' | tr '\n' ' ')"
    fi
done
echo "$failed of $runs runs failed under $hogs hogs; logs in $log"
grep -hE '^    [a-z_0-9:]+$' "$log"/run-*.log | sort | uniq -c | sort -rn
[ "$failed" -eq 0 ]
