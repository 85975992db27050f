#!/usr/bin/env bash
# Run all tests: cargo test (unit, integration, doc tests), then the Autobahn
# conformance run (scripts/autobahn.sh; its arguments pass through).
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

echo "== cargo test =="
cargo test

echo "== autobahn =="
scripts/autobahn.sh "$@"

echo "== autobahn client =="
scripts/autobahn_client.sh

echo "== browser =="
scripts/browser_test.sh
