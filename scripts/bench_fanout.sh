#!/usr/bin/env bash
# Fan-out benchmark (docs/fanout.md): `wsgate-load sub` against one gateway
# worker.
#
#   sanity  100 subscribers on one channel, a short run: the tool works
#   A       one channel, CONNS (15,000) subscribers over PROCS load processes
#   B       1,000 channels x 15 subscribers (CONNS connections)
#
# For A and B: a saturation run (publishing as fast as the subscribers take
# it, --rate 0) gives deliveries/s per worker core = deliveries / server CPU
# seconds over the window (wsgate-load samples /proc/PID/stat and
# /api/stats itself, --server-pid); then a paced run at half the publication
# rate the saturation run reached (FRACTIONS, "0.5") gives p50/p99
# publish-to-receive latency.
#
# Pinning (../shared/MEASURING.md): the gateway on core 0 with --workers 1,
# every load process (subscribers and the publishing parent) on core 1.
# Every run uses its own gateway port and its own block of source addresses
# (127.0.0.x), so the TIME_WAIT sockets of a run never collide with the next.
#
# Knobs (environment): SECS (10) measured window, WARMUP (2), CONNS (15000),
# PROCS (3), PUBLISHERS (4), A_BATCH (64) and B_BATCH (8192) publications
# per request at saturation, A_HALF_BATCH (16) and B_HALF_BATCH (1024) in
# the paced runs, FRACTIONS ("0.5": the paced runs' share of the saturation
# rate; "0.5 0.2" runs both), SIZE (64) bytes of data, MAX_LAG (256), QUEUE
# (8388608, --max-queued-bytes), PORT (9400, first gateway port), SRC (2,
# first address octet), OUT (reports/fanout), SKIP_BUILD (unset); SWEEP_A,
# SWEEP_B and SWEEP_SECS for the optional corking sweep at the end.
#
# Every step is bounded: the gateway gets 10 s to come up and 15 s to stop,
# every load run SECS + WARMUP + 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-15000}
PROCS=${PROCS:-3}
PUBLISHERS=${PUBLISHERS:-4}
A_BATCH=${A_BATCH:-64}
B_BATCH=${B_BATCH:-8192}
A_HALF_BATCH=${A_HALF_BATCH:-16}
B_HALF_BATCH=${B_HALF_BATCH:-1024}
SIZE=${SIZE:-64}
MAX_LAG=${MAX_LAG:-256}
QUEUE=${QUEUE:-8388608}
PORT=${PORT:-9400}
SRC=${SRC:-2}
OUT=${OUT:-reports/fanout}
FRACTIONS=${FRACTIONS:-0.5}

for tool in taskset jq curl; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "needs two cores (gateway on 0, load on 1)" >&2
    exit 1
fi
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bins
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.cmd "$OUT"/*.stderr "$OUT"/*.log
GW=target/release/wsgate
LOAD=target/release/wsgate-load
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { echo "$@" | tee -a "$SUMMARY"; }

# Source addresses for the next run: a block of 6 (2,500 connections each
# at 15,000), advancing through 127.0.0.2..127.0.0.253.
next_src() {
    if [ "$SRC" -gt 248 ]; then SRC=2; fi
    SRC_RANGE="127.0.0.$SRC-127.0.0.$((SRC + 5))"
    SRC=$((SRC + 6))
}

# CPU ticks of ksoftirqd/0: loopback receive work the kernel defers there is
# not charged to the gateway.
softirq_ticks() {
    local pid
    pid=$(pgrep -x ksoftirqd/0 | head -1 || true)
    if [ -n "$pid" ]; then
        sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'
    else
        echo 0
    fi
}

GW_PID=
stop_gateway() {
    if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
        kill -TERM "$GW_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$GW_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$GW_PID" 2>/dev/null || true
        wait "$GW_PID" 2>/dev/null || true
    fi
    GW_PID=
}
trap stop_gateway EXIT

# run NAME LOAD-ARGS…: a fresh gateway, one load run, its JSON in $OUT/NAME.json.
run() {
    local name=$1
    shift
    next_src
    PORT=$((PORT + 1))
    taskset -c 0 "$GW" --listen "127.0.0.1:$PORT" --workers 1 --no-echo \
        --max-queued-bytes "$QUEUE" >"$OUT/$name.gateway.log" 2>&1 &
    GW_PID=$!
    local up=
    for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; then
            up=1
            break
        fi
        sleep 0.1
    done
    if [ -z "$up" ]; then
        echo "gateway did not come up on port $PORT (see $OUT/$name.gateway.log)" >&2
        exit 1
    fi
    local cmd=(taskset -c 1 "$LOAD" sub --url "ws://127.0.0.1:$PORT/ws" --src-ips "$SRC_RANGE"
        --server-pid "$GW_PID" --warmup "${WARMUP}s" --size "$SIZE"
        --max-lag "$MAX_LAG" --json "$@")
    echo "${cmd[*]}" >"$OUT/$name.cmd"
    echo "== $name: ${cmd[*]}" >&2
    local s0 s1
    s0=$(softirq_ticks)
    # Bounded: opening 15,000 connections, warm-up, window, drain, close.
    if ! timeout $((SECS + WARMUP + 120)) "${cmd[@]}" >"$OUT/$name.json" 2>"$OUT/$name.stderr"; then
        echo "$name: wsgate-load failed (see $OUT/$name.stderr)" >&2
    fi
    s1=$(softirq_ticks)
    stop_gateway
    jq -c --arg s "$((s1 - s0))" '. + {ksoftirqd0_ticks: ($s | tonumber)}' "$OUT/$name.json" \
        >"$OUT/$name.json.tmp" && mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}

# One line per run.
line() {
    jq -r --arg n "$1" '
        def f(x): if x == null then "-" else (x | tostring) end;
        [$n,
         "conns=\(.subscribed)/\(.connections.requested) ch=\(.channels) batch=\(.publish.batch) rate=\(.publish.rate)",
         "pub/s=\(.publications_per_sec)",
         "deliv/s=\(.deliveries_per_sec)",
         "recv=\(.received)/\(.expected)",
         "gaps=\(.gaps) dups=\(.duplicates) disc=\(.disconnects) closes=\(.close_codes | tostring)",
         "p50=\(f(.latency_us.p50))us p99=\(f(.latency_us.p99))us max=\(f(.latency_us.max))us",
         "srv: \(f(.server.us_per_delivery))us/deliv \(f(.server.deliveries_per_core_sec))/s/core util=\(f(.server.utilization)) cpu-wait=\(f(.server.wait_secs))s",
         "load: cpu=\(.load_cpu_secs)s cpu-wait=\(.load_wait_secs)s",
         "ksoftirqd0=\(.ksoftirqd0_ticks)ticks"] | join("  ")' "$OUT/$1.json"
}

say "fan-out benchmark, $(date -u +%FT%TZ), $(nproc) cores, $(uname -r)"
say "load before: $(uptime)"
say "knobs: FRACTIONS=\"$FRACTIONS\" SECS=$SECS WARMUP=$WARMUP CONNS=$CONNS PROCS=$PROCS PUBLISHERS=$PUBLISHERS A_BATCH=$A_BATCH B_BATCH=$B_BATCH A_HALF_BATCH=$A_HALF_BATCH B_HALF_BATCH=$B_HALF_BATCH SIZE=$SIZE MAX_LAG=$MAX_LAG QUEUE=$QUEUE"

run sanity --conns 100 --channels 1 --procs 1 --publishers 2 --batch 64 --duration 3s
line sanity | tee -a "$SUMMARY"

run a_sat --duration "${SECS}s" --conns "$CONNS" --channels 1 --procs "$PROCS" --publishers "$PUBLISHERS" --batch "$A_BATCH"
line a_sat | tee -a "$SUMMARY"
for f in $FRACTIONS; do
    rate=$(jq --argjson f "$f" '.publications_per_sec * $f | if . < 1 then 1 else . end' "$OUT/a_sat.json")
    run "a_paced_$f" --duration "${SECS}s" --conns "$CONNS" --channels 1 --procs "$PROCS" \
        --publishers "$PUBLISHERS" --batch "$A_HALF_BATCH" --rate "$rate"
    line "a_paced_$f" | tee -a "$SUMMARY"
done
say "load after A: $(uptime)"

run b_sat --duration "${SECS}s" --conns "$CONNS" --channels 1000 --procs "$PROCS" --publishers "$PUBLISHERS" --batch "$B_BATCH"
line b_sat | tee -a "$SUMMARY"
for f in $FRACTIONS; do
    rate=$(jq --argjson f "$f" '.publications_per_sec * $f | if . < 1 then 1 else . end' "$OUT/b_sat.json")
    run "b_paced_$f" --duration "${SECS}s" --conns "$CONNS" --channels 1000 --procs "$PROCS" \
        --publishers "$PUBLISHERS" --batch "$B_HALF_BATCH" --rate "$rate"
    line "b_paced_$f" | tee -a "$SUMMARY"
done
say "load after B: $(uptime)"

# Optional: how corking depth (publications per socket per request) sets the
# CPU per delivery. SWEEP_A="1 4 16 64", SWEEP_B="1024 4096 8192" (batch
# sizes), SWEEP_SECS (5) each.
for b in ${SWEEP_A:-}; do
    run "sweep_a_$b" --duration "${SWEEP_SECS:-5}s" --conns "$CONNS" --channels 1 --procs "$PROCS" \
        --publishers "$PUBLISHERS" --batch "$b"
    line "sweep_a_$b" | tee -a "$SUMMARY"
done
for b in ${SWEEP_B:-}; do
    run "sweep_b_$b" --duration "${SWEEP_SECS:-5}s" --conns "$CONNS" --channels 1000 --procs "$PROCS" \
        --publishers "$PUBLISHERS" --batch "$b"
    line "sweep_b_$b" | tee -a "$SUMMARY"
done
if [ -n "${SWEEP_A:-}${SWEEP_B:-}" ]; then
    say "load after the sweep: $(uptime)"
fi

bad=$(jq -s '[.[] | .gaps + .duplicates + .disconnects + (.expected - .received)] | add' "$OUT"/*.json)
say "gaps + duplicates + disconnects + undelivered over all runs: $bad"
say "JSON per run, commands and gateway logs in $OUT/"
[ "$bad" = 0 ]
