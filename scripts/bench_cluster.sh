#!/usr/bin/env bash
# Publish-to-receive latency and throughput: one node with the memory broker
# against two nodes sharing channels through Redis, alternating A B A B in
# one run (see tests/broker_bench.rs and ../shared/MEASURING.md).
#
# Pinning: gateways (one worker each) on core 0; redis-server, publisher and
# subscribers on core 1. Needs redis-server and taskset on PATH.
#
# Knobs (environment): ROUNDS (3), RATE (1000 publications/s for the
# latency run), SECS (5), LAT_SUBS (20), TPUT_SUBS (4), BATCH (50
# publications per API request in the throughput run).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset not found (apt-get install util-linux)" >&2; exit 1; }
SETUPS=memory,redis cargo test --release --test broker_bench -- --ignored --nocapture --test-threads 1 "$@"
