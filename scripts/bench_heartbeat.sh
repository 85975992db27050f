#!/usr/bin/env bash
# Heartbeat at density: CONNS idle connections on ONE worker, pinged every
# second, for a 30 s window. Checks that no connection is dropped for a
# missing pong (wsgate_timeouts_total stays 0, every connection stays open)
# and quotes the gateway's CPU per ping (utime + stime from /proc/PID/stat).
# See docs/density.md ("Heartbeat at density").
#
#   scripts/bench_heartbeat.sh [--no-build]
#
# Server: taskset -c 0 wsgate --workers 1 --ping-interval 1s --pong-timeout PONG
# Load:   taskset -c 1 wsgate-load hold --conns CONNS --procs PROCS --src-ips … --hold WINDOW+10s
#
# The window starts once every connection is established (counted with ss)
# and lasts WINDOW seconds. Pings sent in it are counted from the gateway's
# own bytes_out counter (an empty ping frame is 2 bytes and idle /echo
# clients get nothing else; the one /metrics answer inside the window is
# subtracted), pongs from bytes_in (an empty masked pong is 6 bytes; the
# /metrics request is subtracted).
#
# Env: CONNS (19000), PROCS (2), WINDOW (30), PONG (2s), RUNS (3),
#      PORT (18081), BIN (directory of the binaries; default target/release,
#      implies --no-build).
# Output: a table on stdout; raw numbers in reports/bench/heartbeat/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

CONNS="${CONNS:-19000}"
PROCS="${PROCS:-2}"
WINDOW="${WINDOW:-30}"
PONG="${PONG:-2s}"
RUNS="${RUNS:-3}"
PORT="${PORT:-18081}"
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0
if [ -n "${BIN:-}" ]; then BUILD=0; else BIN="$ROOT/target/release"; fi
OUT="$ROOT/reports/bench/heartbeat"
mkdir -p "$OUT"
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then cargo build --release --bins; fi

SERVER_PID=""
LOAD_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        sleep 0.2
        kill -TERM "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, 1/100 s
established() { ss -Htn state established "( sport = :$PORT )" 2>/dev/null | wc -l; }
time_wait() { ss -Htn state time-wait "( sport = :$PORT or dport = :$PORT )" 2>/dev/null | wc -l; }
metric() { awk -v m="$1" '$1 == m {print $2}' "$2"; }

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "gateway did not listen on $PORT" >&2
    return 1
}

: >"$OUT/runs.txt"
{
    echo "# $(date -u +%FT%TZ) $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# server: taskset -c 0 $BIN/wsgate --workers 1 --ping-interval 1s --pong-timeout $PONG"
    echo "# load:   taskset -c 1 $BIN/wsgate-load hold --conns $CONNS --procs $PROCS --src-ips 127.0.R.2-127.0.R.5 --hold $((WINDOW + 10))s"
} | tee "$OUT/summary.md"

for run in $(seq 1 "$RUNS"); do
    net=$((run % 250 + 100))
    src="127.0.$net.2-127.0.$net.5"
    for _ in $(seq 1 70); do [ "$(time_wait)" -lt 200 ] && break; sleep 1; done
    RUST_LOG=warn taskset -c 0 "$BIN/wsgate" --workers 1 --listen "127.0.0.1:$PORT" \
        --ping-interval 1s --pong-timeout "$PONG" >"$OUT/server-$run.log" 2>&1 &
    SERVER_PID=$!
    wait_port
    taskset -c 1 "$BIN/wsgate-load" hold --url "ws://127.0.0.1:$PORT/echo" --conns "$CONNS" \
        --procs "$PROCS" --src-ips "$src" --hold "$((WINDOW + 10))s" --json \
        >"$OUT/load-$run.json" 2>"$OUT/load-$run.log" &
    LOAD_PID=$!
    deadline=$((SECONDS + 180))
    while [ "$(established)" -lt "$CONNS" ]; do
        if [ $SECONDS -gt $deadline ] || ! kill -0 "$LOAD_PID" 2>/dev/null; then
            echo "run $run: only $(established) of $CONNS connections opened" >&2
            exit 1
        fi
        sleep 0.5
    done
    sleep 1
    curl -s "http://127.0.0.1:$PORT/metrics" -o "$OUT/m0-$run.txt" -D "$OUT/h0-$run.txt"
    c0=$(cpu_ticks "$SERVER_PID")
    sleep "$WINDOW"
    c1=$(cpu_ticks "$SERVER_PID")
    curl -s "http://127.0.0.1:$PORT/metrics" -o "$OUT/m1-$run.txt"
    est=$(established)
    # The first scrape's answer went out inside the window.
    scrape_out=$(( $(wc -c <"$OUT/m0-$run.txt") + $(wc -c <"$OUT/h0-$run.txt") ))
    wait "$LOAD_PID"; LOAD_PID=""
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
    out0=$(metric wsgate_bytes_out_total "$OUT/m0-$run.txt"); out1=$(metric wsgate_bytes_out_total "$OUT/m1-$run.txt")
    in0=$(metric wsgate_bytes_in_total "$OUT/m0-$run.txt"); in1=$(metric wsgate_bytes_in_total "$OUT/m1-$run.txt")
    to1=$(metric wsgate_timeouts_total "$OUT/m1-$run.txt")
    conns1=$(awk '/^wsgate_connections\{/ {s += $2} END {print s}' "$OUT/m1-$run.txt")
    echo "$run $c0 $c1 $out0 $out1 $in0 $in1 $scrape_out $to1 $conns1 $est" >>"$OUT/runs.txt"
    echo "run $run: $(cat "$OUT/load-$run.json")" >&2
done

python3 - "$OUT" "$CONNS" "$WINDOW" <<'EOF' | tee -a "$OUT/summary.md"
import json, os, statistics, sys
out, n, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rows = []
for l in open(os.path.join(out, "runs.txt")):
    run, c0, c1, o0, o1, i0, i1, scrape, to, conns, est = l.split()
    load = json.load(open(os.path.join(out, f"load-{run}.json")))
    pings = (int(o1) - int(o0) - int(scrape)) / 2
    # The second scrape's request (~90 bytes) is in bytes_in; 6 bytes per pong.
    pongs = (int(i1) - int(i0) - 90) / 6
    cpu_s = (int(c1) - int(c0)) / 100
    rows.append(dict(run=run, pings=pings, pongs=pongs, cpu=cpu_s,
                     us=cpu_s * 1e6 / pings if pings > 0 else float("nan"),
                     timeouts=int(to), conns=int(float(conns)) - 1, est=int(est),
                     answered=load["pings_answered"], still=load["still_open"],
                     closes=load["closes_received"], opened=load["connections"]["opened"]))
print(f"\n| run | pings sent in {window:.0f} s | pings/s | pongs read | server CPU | µs CPU per ping+pong | wsgate_timeouts_total | connections at the end (gateway / ss) | load: opened, still open, pings answered, closes from server |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
for r in rows:
    print(f"| {r['run']} | {r['pings']:.0f} | {r['pings'] / window:.0f} | {r['pongs']:.0f} | {r['cpu']:.2f} s | {r['us']:.2f} | {r['timeouts']} | {r['conns']} / {r['est']} | {r['opened']}, {r['still']}, {r['answered']}, {r['closes']} |")
med = statistics.median
print(f"\nmedian: {med(r['us'] for r in rows):.2f} µs of gateway CPU per ping (timer, ping write, pong read), "
      f"{med(r['pings'] for r in rows) / window:.0f} pings/s, "
      f"{med(r['cpu'] for r in rows) / window * 100:.1f} % of one core; "
      f"timeouts {[r['timeouts'] for r in rows]}, still open {[r['still'] for r in rows]} of {n}")
ok = all(r["timeouts"] == 0 and r["still"] == n and r["closes"] == 0 for r in rows)
print("heartbeat: " + ("no false pong timeouts, every connection held" if ok else "FAILED: connections lost or timed out"))
sys.exit(0 if ok else 1)
EOF
