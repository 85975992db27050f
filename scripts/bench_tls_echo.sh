#!/usr/bin/env bash
# Server CPU per echoed message over wss:// against ws:// in the same run
# and the same process: one wsgate (--workers 1, core 0) with --tls-cert on
# PORT and --listen-plain on PORT+1; wsgate-load echo on core 1, alternating
# TLS and plaintext (A B A B ...). Per run: the server's utime + stime
# around the run divided by the messages echoed (after the warm-up, the
# connections are open before the clock starts: no handshake counted).
#
#   scripts/bench_tls_echo.sh [ROUNDS] [SIZE]      (defaults 3, 20)
# Env: BIN (default target/release), PORT (18443), CONNS (50), SECONDS_RUN (5)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}" size="${2:-20}"
BIN="${BIN:-target/release}" PORT="${PORT:-18443}" CONNS="${CONNS:-50}" SECS="${SECONDS_RUN:-5}"
work="$(mktemp -d /tmp/wsgate-tlsecho-XXXXXX)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
scripts/make_test_cert.sh "$work/cert" >/dev/null
RUST_LOG=warn taskset -c 0 "$BIN/wsgate" --workers 1 --listen "127.0.0.1:$PORT" \
    --listen-plain "127.0.0.1:$((PORT + 1))" \
    --tls-cert "$work/cert/server.pem" --tls-key "$work/cert/server.key" >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 1))") 2>/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
echo "mode  messages  µs server CPU per message   (size $size B, $CONNS conns, ${SECS}s; load $(cut -d' ' -f1-3 /proc/loadavg))"
for r in $(seq "$rounds"); do
    for mode in tls plain; do
        if [ "$mode" = tls ]; then
            url="wss://127.0.0.1:$PORT/echo" extra=(--ca "$work/cert/ca.pem")
        else
            url="ws://127.0.0.1:$((PORT + 1))/echo" extra=()
        fi
        # The load opens its connections, warms up 1 s, then runs SECS:
        # read the server's CPU around the measured part only.
        taskset -c 1 "$BIN/wsgate-load" echo --url "$url" "${extra[@]}" --conns "$CONNS" \
            --size "$size" --warmup 1s --duration "${SECS}s" --json >"$work/run.json" 2>/dev/null &
        lp=$!
        # Wait for the warm-up to pass (connections open, echoes flowing).
        sleep 2
        w0=$(date +%s.%N); t0=$(ticks)
        sleep "$((SECS - 2))"
        t1=$(ticks); w1=$(date +%s.%N)
        wait "$lp"
        python3 - "$work/run.json" "$t0" "$t1" "$SECS" "$mode" "$r" "$w0" "$w1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
t0, t1, secs = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
# The load's rate over its measured SECS, times the CPU window's length:
# the messages echoed while the server's CPU was read.
echoed = j.get("echoed", 0)
window = float(sys.argv[8]) - float(sys.argv[7])
n = echoed / secs * window
us = (t1 - t0) * 10000 / n if n else 0
print(f"{sys.argv[5]:5} {echoed:9d}  {us:.1f}   (round {sys.argv[6]})")
PY
    done
done
