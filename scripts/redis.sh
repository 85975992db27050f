#!/usr/bin/env bash
# Start a throwaway redis-server for trying a cluster by hand:
#
#   scripts/redis.sh [PORT]      # default 6390; no persistence; Ctrl-C stops it
#   target/release/wsgate --listen 127.0.0.1:8081 --redis redis://127.0.0.1:6390/0 &
#   target/release/wsgate --listen 127.0.0.1:8082 --redis redis://127.0.0.1:6390/0 &
#
# The tests do not need this script: each starts its own redis-server on a
# free port.
set -euo pipefail
port="${1:-6390}"
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --protected-mode no
