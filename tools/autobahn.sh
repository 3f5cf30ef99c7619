#!/usr/bin/env bash
# Autobahn|Testsuite against `tickstock serve` in conformance mode (`server.conformance_echo`:
# `/echo` sends every message back, no auth, no session; docs/conformance.md). Runs the
# fuzzingclient over the sections given (default: 1-7, 9, 10, and 12-13 for
# permessage-deflate), writes the HTML/JSON reports
# to target/autobahn/reports and prints the summary that docs/conformance.md keeps.
#
#   tools/autobahn.sh [CASES...]      e.g. tools/autobahn.sh '1.*' '2.*'
#
# Needs Python 2.7 (the testsuite is Python 2 only): pyenv's 2.7 here, or `python2.7` on
# the path. The testsuite is installed with pip into target/autobahn-venv. Not part of CI
# (sections 9 and 10 take several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=('1.*' '2.*' '3.*' '4.*' '5.*' '6.*' '7.*' '9.*' '10.*' '12.*' '13.*')

venv=$root/target/autobahn-venv
if [ ! -x "$venv/bin/wstest" ]; then
  python2=""
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/2.7*/bin/python2.7 "$(command -v python2.7 || true)"; do
    if [ -x "$candidate" ]; then python2=$candidate; break; fi
  done
  [ -n "$python2" ] || { echo "tools/autobahn.sh: Python 2.7 not found (pyenv install 2.7.18)" >&2; exit 1; }
  "$python2" -m pip install -q 'virtualenv==20.15.1'
  "$python2" -m virtualenv -q "$venv"
  "$venv/bin/pip" install -q autobahntestsuite
fi

cargo build --release -q -p tickstock-shell
out=$root/target/autobahn
mkdir -p "$out"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$out/tickstock.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
conformance_echo = true
# Section 9 sends messages of up to 16 MiB.
client_message_bytes_max = 16777216
# Echoes of those wait in the connection's own queue, bounded at twice this.
client_lag_max_bytes = 67108864
frame_bytes_max = 16777216
TOML
target/release/tickstock --config "$out/tickstock.toml" --log-level warn serve \
  >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

cases_json=$(printf '"%s",' "${cases[@]}")
cat > "$out/fuzzingclient.json" <<JSON
{
  "outdir": "$out/reports",
  "servers": [{"agent": "tickstock", "url": "ws://127.0.0.1:$port/echo"}],
  "cases": [${cases_json%,}],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
(cd "$out" && "$venv/bin/wstest" -m fuzzingclient -s fuzzingclient.json >"$out/wstest.log" 2>&1)

python3 - "$out/reports/index.json" <<'PY'
import json, sys, collections
results = json.load(open(sys.argv[1]))["tickstock"]
def key(case):
    return [int(p) for p in case.split(".")]
by_section = collections.OrderedDict()
for case in sorted(results, key=key):
    section = case.split(".")[0]
    by_section.setdefault(section, collections.Counter())[results[case]["behavior"]] += 1
print("| section | cases | OK | NON-STRICT | INFORMATIONAL | UNIMPLEMENTED | FAILED |")
print("|---|---|---|---|---|---|---|")
for section, counts in by_section.items():
    total = sum(counts.values())
    print(f"| {section} | {total} | {counts['OK']} | {counts['NON-STRICT']} | {counts['INFORMATIONAL']} | {counts['UNIMPLEMENTED']} | {counts['FAILED']} |")
others = [(c, r) for c, r in sorted(results.items(), key=lambda kv: key(kv[0])) if r["behavior"] != "OK"]
for case, r in others:
    print(f"- {case}: {r['behavior']} (close: {r.get('behaviorClose')})")
failed = [c for c, r in results.items() if r["behavior"] == "FAILED"]
sys.exit(1 if failed else 0)
PY
