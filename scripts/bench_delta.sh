#!/usr/bin/env bash
# CPU and bytes per delivery with Fossil deltas off and on (docs/deltas.md):
# `wsgate-load sub` against one gateway worker, CONNS subscribers of one
# channel of a namespace with `delta = "fossil"`, publications of the
# 200-metric dashboard (--dashboard) at RATE per second.
#
#   off  the subscribers do not ask for deltas: whole publications (~3.9 KB)
#   on   they subscribe with "delta":"fossil" (--delta): one whole, then deltas
#
# With DEFLATE=shared (or dedicated) the subscribers also offer
# permessage-deflate. Rounds alternate off, on (ROUNDS of them); each takes
# a fresh gateway on its own port and source address (TIME_WAIT). Per run:
# µs of server CPU per delivery over the window (wsgate-load samples
# /proc/PID/stat and /api/stats: --server-pid), and bytes the gateway wrote
# per delivery (wsgate_bytes_out_total / wsgate_deliveries_total from
# /metrics after the run: the handshakes, subscribe replies and closes of
# the CONNS connections are included, and with deltas each subscriber's
# first, whole, publication), and with deltas the bytes saved per delta
# delivery (wsgate_delta_bytes_saved_total / deltas sent: a delta frame is
# the whole frame less that). Medians at the end.
#
# Pinning (../shared/MEASURING.md): gateway on core 0 (--workers 1), load on
# core 1. Knobs: CONNS (2000), RATE (20 publications/s), SECS (10), WARMUP
# (2), ROUNDS (3), DEFLATE (off), PORT (9600), SRC (40, first address
# octet), OUT (reports/delta), SKIP_BUILD. Every step is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-2000}
RATE=${RATE:-20}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
DEFLATE=${DEFLATE:-off}
PORT=${PORT:-9600}
SRC=${SRC:-40}
OUT=${OUT:-reports/delta}

for tool in taskset jq curl; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bins
fi
mkdir -p "$OUT"
CFG="$OUT/gateway.toml"
cat >"$CFG" <<'EOF'
[namespaces.dash]
delta = "fossil"
[limits]
max_queued_bytes = 8388608
EOF

metric() { # metric NAME  (from the last /metrics scrape in $OUT/metrics)
    awk -v n="$1" '$1 == n { print $2 }' "$OUT/metrics"
}

run() { # run MODE ROUND
    local mode=$1 round=$2 port=$PORT src="127.0.$SRC.1"
    PORT=$((PORT + 1)); SRC=$((SRC + 1))
    taskset -c 0 target/release/wsgate -c "$CFG" --listen "127.0.0.1:$port" --workers 1 \
        >"$OUT/gateway-$mode-$round.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    local flag=""
    [ "$mode" = on ] && flag="--delta"
    timeout $((SECS + WARMUP + 120)) taskset -c 1 target/release/wsgate-load sub \
        --url "ws://127.0.0.1:$port/ws" --src-ips "$src" --conns "$CONNS" --channels 1 \
        --channel-prefix dash --publishers 1 --batch 1 --rate "$RATE" --dashboard $flag \
        --deflate "$DEFLATE" --duration "${SECS}s" --warmup "${WARMUP}s" --drain 10s \
        --server-pid "$pid" --json >"$OUT/run-$mode-$round.json"
    curl -fs "http://127.0.0.1:$port/metrics" >"$OUT/metrics"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local us bytes sent missing
    us=$(jq '.server.us_per_delivery' "$OUT/run-$mode-$round.json")
    bytes=$(awk -v b="$(metric wsgate_bytes_out_total)" -v d="$(metric wsgate_deliveries_total)" \
        'BEGIN { printf "%.1f", b / d }')
    sent=$(metric 'wsgate_delta_deliveries_total{form="delta"}')
    saved=$(awk -v s="$(metric wsgate_delta_bytes_saved_total)" -v n="${sent:-0}" \
        'BEGIN { printf "%.1f", (n > 0 ? s / n : 0) }')
    missing=$(jq '.missing // 0' "$OUT/run-$mode-$round.json")
    echo "$mode $round us_per_delivery=$us bytes_per_delivery=$bytes deltas_sent=${sent:-0}" \
        "saved_per_delta=$saved missing=$missing load=$(cut -d' ' -f1 /proc/loadavg)" \
        | tee -a "$OUT/results.txt"
}

: >"$OUT/results.txt"
echo "CONNS=$CONNS RATE=$RATE SECS=$SECS DEFLATE=$DEFLATE load=$(cut -d' ' -f1-3 /proc/loadavg)" \
    | tee -a "$OUT/results.txt"
for r in $(seq "$ROUNDS"); do
    run off "$r"
    run on "$r"
done
for mode in off on; do
    for key in us_per_delivery bytes_per_delivery; do
        grep "^$mode " "$OUT/results.txt" | tr ' ' '\n' | grep "^$key=" | cut -d= -f2 | sort -g \
            | awk -v m="$mode" -v k="$key" '{ v[NR] = $1 } END {
                printf "%s %s: median %s (min %s, max %s, %d runs)\n", m, k, v[int((NR + 1) / 2)], v[1], v[NR], NR }'
    done
done | tee -a "$OUT/results.txt"
