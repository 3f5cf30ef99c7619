#!/usr/bin/env bash
# The soak: MINUTES (default 60) at 50,000 trades/s with 200 clients on one server, one row
# per minute. 150 clients on every channel are measured (every trade checked, latency from
# its intended send time); beside them 20 churn (sessions closed cleanly, dropped, never
# authenticated, silent, cut off mid-upgrade), 15 read far too slowly (policies close,
# conflate and shed in turn) and 15 drop their connection and resume (every trade of their
# symbols checked for gaps and repeats by its per-symbol `q`).
#
#   tools/soak.sh        # an hour
#   tools/soak.sh 10     # the 10-minute version
#
# Writes perf/results/soak/loadgen-<time>{.json,.html,-soak.csv,-server.log}; the CSV has
# RSS, CPU, p99, drops and fds per minute. Exits 1 if a step lost or altered events, a
# resume had a gap or a repeat, RSS moved more than 5 % from its median after the warm-up
# (the first tenth of the minutes), or the fds grew by more than the disruptors hold.
set -euo pipefail
minutes="${1:-60}"
cd "$(dirname "$0")/.."
cargo build --release -p tickstock-shell -p tickstock-perf
exec target/release/loadgen \
    --clients 150 --rates 50000 --step-secs 60 --repeat "$minutes" --warmup-secs 5 \
    --disrupt churn=20,slow=15,resume=15 \
    --out "${SOAK_OUT:-perf/results/soak}"
