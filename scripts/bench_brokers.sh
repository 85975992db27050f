#!/usr/bin/env bash
# Redis against NATS as the backbone between two nodes, alternating
# A B A B in one run (see tests/broker_bench.rs and ../shared/MEASURING.md):
# publish-to-receive p50/p99 across two nodes, publications per second,
# gateway CPU per delivery, broker CPU per publication (redis-server or
# nats-server, from /proc/PID/stat), and the load average of the box.
#
# Pinning: gateways (one worker each) on core 0; the broker server,
# publisher and subscribers on core 1. Needs redis-server, nats-server and
# taskset.
#
# Knobs (environment): SETUPS (redis,nats,nats-file: NATS with JetStream in
# memory, as Redis without persistence, and on file), ROUNDS (3), RATE
# (1000 publications/s for the latency run), SECS (5), LAT_SUBS (20),
# TPUT_SUBS (4), BATCH (50 publications per API request in the throughput
# run).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
{ command -v nats-server || [ -x /usr/sbin/nats-server ]; } >/dev/null ||
    { echo "nats-server not found (apt-get install nats-server)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset not found (apt-get install util-linux)" >&2; exit 1; }
SETUPS="${SETUPS:-redis,nats,nats-file}" \
    cargo test --release --test broker_bench -- --ignored --nocapture --test-threads 1 "$@"
