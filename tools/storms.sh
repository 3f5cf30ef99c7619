#!/usr/bin/env bash
# A bystander's p99 alone and beside each storm. One measured client on T.* at 20,000
# trades/s (every trade checked, latency from its intended send time); beside it, in turn:
#
#   burst=10000   10,000 connects at once, held 2 s, dropped at once, again
#   storm=1000    1,000 clients dropping and resuming at once every 10 s
#   hostile=20    slowloris on the handshake and on a frame, a ping flood, oversized and
#                 fragmented messages, UTF-8 split across fragments, rate-limit churn
#
# The storm's threads run under SCHED_IDLE (`--disruptors-idle`): on this shared machine
# they then cost about what they would from another one, and the bystander's latency shows
# what they make the server do.
#
# Runs alternate (alone, storm, alone, storm, ...), ROUNDS (default 3) of each; prints the
# medians and the ratio. Every run must also be valid: the bystander got every trade, and
# every storm client's answers and resumes were what the protocol says.
#
#   tools/storms.sh                   # all three
#   tools/storms.sh storm=1000        # one
#   TICKSTOCK=/tmp/old/tickstock tools/storms.sh   # another server build
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
out="${STORMS_OUT:-perf/results/storms}"
storms=("$@")
[ ${#storms[@]} -gt 0 ] || storms=(burst=10000 storm=1000 hostile=20)
cargo build --release -p tickstock-shell -p tickstock-perf
mkdir -p "$out"

# run NAME [DISRUPT]: the bystander's p99 (ms) of one run, and whether it was valid.
run() {
    local dir="$out/$1"
    rm -rf "$dir" && mkdir -p "$dir"
    target/release/loadgen --clients 1 --rates 20000 --step-secs 20 --warmup-secs 2 \
        --topics 'T.*' --budget-p99-ms 100000 ${2:+--disrupt "$2" --disruptors-idle} --out "$dir" \
        ${TICKSTOCK:+--tickstock "$TICKSTOCK"} \
        >"$dir/stdout" 2>&1 || true
    python3 - "$dir" <<'PY'
import glob, json, sys
files = [f for f in glob.glob(sys.argv[1] + "/loadgen-*.json")]
if not files:
    print("nan", "no-result")
    sys.exit()
step = json.load(open(files[0]))["steps"][0]
print(step["latency_ms"]["p99"], "valid" if step["valid"] else "INVALID:" + "|".join(step["invalid_reasons"])[:300])
PY
}

median() { python3 -c 'import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }

status=0
printf '%-14s %12s %12s %7s  %s\n' storm "alone p99" "beside p99" ratio verdict
for storm in "${storms[@]}"; do
    alone=() beside=()
    for round in $(seq 1 "$rounds"); do
        read -r p99 valid < <(run "alone-$storm-$round")
        [ "$valid" = valid ] || { echo "alone, round $round: $valid" >&2; status=1; }
        alone+=("$p99")
        read -r p99 valid < <(run "$storm-$round" "$storm")
        [ "$valid" = valid ] || { echo "$storm, round $round: $valid" >&2; status=1; }
        beside+=("$p99")
        echo "  $storm round $round: alone ${alone[-1]} ms, beside ${beside[-1]} ms" >&2
    done
    a=$(median "${alone[@]}") b=$(median "${beside[@]}")
    ratio=$(python3 -c "print(f'{$b / $a:.2f}')")
    verdict=$(python3 -c "print('within 20 %' if $b <= 1.2 * $a else 'OVER 20 %')")
    printf '%-14s %9.2f ms %9.2f ms %6s×  %s\n' "$storm" "$a" "$b" "$ratio" "$verdict"
done
exit $status
