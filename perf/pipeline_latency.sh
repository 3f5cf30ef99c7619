#!/usr/bin/env bash
# Ring-entry-to-frame latency and engine time per tick of `tickstock serve` at the synthetic
# market's default 20,000 trades/s, with the default settings and with perf/low-latency.toml.
# Usage: perf/pipeline_latency.sh [seconds per profile, default 30]
# Prints each run's final report (p50/p99/p99.9/max from HDR histograms) and the CPU time used.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"
cargo build --release -q -p tickstock-shell
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(rustc --version)"
for profile in default low-latency; do
  args=(--quiet)
  [[ $profile == low-latency ]] && args+=(--config perf/low-latency.toml)
  echo "== $profile, ${secs} s at 20,000 trades/s"
  /usr/bin/time -f "cpu: %U s user + %S s system over %e s" \
    ./target/release/tickstock "${args[@]}" serve --output none --duration-s "$secs" 2>&1 |
    grep -E 'received|engine per tick|ring entry|emitter cycle|cpu:'
done
