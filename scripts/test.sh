#!/usr/bin/env bash
# Run all tests: cargo test (unit, integration, doc tests), the JavaScript
# client's node tests (tests/js/), then the Autobahn
# conformance runs in server role (scripts/autobahn.sh; its arguments pass
# through) and client role (scripts/autobahn_client.sh), then the browser
# tests (scripts/browser_test.sh).
#
# Integration tests that spawn Python peers (tests/python/*.py) get the venv's
# interpreter in WSGATE_PYTHON, and the venv's bin/ is first on PATH.
# Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
export PATH="$VENV/bin:$PATH"
export WSGATE_PYTHON="$VENV/bin/python"

# The Redis broker's tests start their own redis-server: install it if missing.
if ! command -v redis-server >/dev/null 2>&1; then
    echo "== installing redis-server =="
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server
fi
# The NATS broker's tests start their own nats-server (with -js): likewise.
if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    echo "== installing nats-server =="
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nats-server
fi

echo "== cargo test =="
cargo test

# The JavaScript client's unit tests: node alone, no browser, no gateway
# (Fossil deltas against tests/data/fossil and tests/js/delta_vectors.json).
if ! command -v node >/dev/null 2>&1; then
    echo "== installing nodejs =="
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs
fi
echo "== node: tests/js =="
node --test tests/js/

# Both Autobahn runs at once: the client-role run (kosoku's fuzzingserver
# against wsgate-load) is one case at a time, a ping-pong between two
# processes that leaves a core idle; the server-role run fills it.
echo "== autobahn: cargo build --release --bins =="
cargo build --release --bins
client_log="$(mktemp)"
scripts/autobahn_client.sh --no-build >"$client_log" 2>&1 &
client_pid=$!

echo "== autobahn =="
server_rc=0
scripts/autobahn.sh --no-build "$@" || server_rc=$?

echo "== autobahn client =="
client_rc=0
wait "$client_pid" || client_rc=$?
cat "$client_log"
rm -f "$client_log"
[ "$server_rc" -eq 0 ] || { echo "autobahn (server role) failed"; exit "$server_rc"; }
[ "$client_rc" -eq 0 ] || { echo "autobahn (client role) failed"; exit "$client_rc"; }

echo "== browser =="
scripts/browser_test.sh
