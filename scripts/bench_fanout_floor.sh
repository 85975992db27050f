#!/usr/bin/env bash
# Fan-out against its floor, in one run: one publication per API request to
# CONNS subscribers of one channel, below saturation (RATES' first value,
# publications/s) and past it (the second), on
#
#   wsgate    taskset -c 0 wsgate --workers 1 --no-echo --max-queued-bytes QUEUE
#   floor     taskset -c 0 fanout-floor        (benches/peers/fanout-floor: one
#             writev per subscriber socket per loop iteration, nothing else)
#   uws       taskset -c 0 $UWS_BIN PORT       (optional: a uWebSockets build of
#             your own that maps the subscribe op and POST /api/publish to
#             ws->subscribe / app.publish; set UWS_BIN to use it)
#   wsgate-base  the same as wsgate from another build (BASE_BIN: the
#             directory of its wsgate), for an A/B of a change
#   wsgate2   wsgate --workers 2 on both cores (the subscribers spread over
#             both workers: fan-out in parallel; latency only, since the load
#             shares core 1 with the second worker; the latency is taken at
#             the kernel's arrival stamp, so the load's own backlog on its
#             shared core does not count: wsgate-load sub, --read-time)
#
# alternating the servers in rounds (A B C A B C …). Every load process runs
# on core 1:
#
#   taskset -c 1 wsgate-load sub --url ws://…/ws --conns CONNS --procs PROCS
#       --channels 1 --publishers 1 --batch 1 --rate R --size SIZE
#       --duration SECS --warmup WARMUP --server-pid PID --json
#
# Figures per run (wsgate-load samples /proc/PID/stat and /api/stats over the
# window): µs of server CPU per delivery, p50/p99 publish-to-receive, and
# gaps/duplicates/disconnects (all must be 0). The summary gives medians over
# the rounds and each server's ratio to the floor.
#
# Env: ROUNDS (3), CONNS (15000), PROCS (3), RATES ("3 8"), SIZE (64),
#      SECS (10), WARMUP (2), QUEUE (8388608), PORT (9600), SRC (2),
#      SERVERS ("wsgate floor" + "uws" when UWS_BIN is set + "wsgate2"),
#      BIN (target/release), BASE_BIN (unset), PEER_BIN (target/peers/release), OUT
#      (reports/bench/fanout-floor), SKIP_BUILD.
# Every run is bounded: SECS + WARMUP + 120 s.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-15000}
PROCS=${PROCS:-3}
RATES=${RATES:-3 8}
SIZE=${SIZE:-64}
SECS=${SECS:-10}
WARMUP=${WARMUP:-2}
QUEUE=${QUEUE:-8388608}
PORT=${PORT:-9600}
SRC=${SRC:-2}
BIN=${BIN:-$ROOT/target/release}
PEER_BIN=${PEER_BIN:-$ROOT/target/peers/release}
OUT=${OUT:-$ROOT/reports/bench/fanout-floor}
DEFAULT_SERVERS="wsgate floor"
[ -n "${UWS_BIN:-}" ] && DEFAULT_SERVERS="$DEFAULT_SERVERS uws"
[ -n "${BASE_BIN:-}" ] && DEFAULT_SERVERS="wsgate-base $DEFAULT_SERVERS"
SERVERS=${SERVERS:-$DEFAULT_SERVERS wsgate2}

for tool in taskset jq python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release --bins
    CARGO_TARGET_DIR="$ROOT/target/peers" cargo build --release \
        --manifest-path benches/peers/fanout-floor/Cargo.toml
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.log "$OUT"/*.stderr

SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

start_server() { # name port
    local cmd
    case "$1" in
        wsgate) cmd=(taskset -c 0 "$BIN/wsgate" --workers 1 --no-echo --max-queued-bytes "$QUEUE" --listen "127.0.0.1:$2") ;;
        wsgate-base) cmd=(taskset -c 0 "$BASE_BIN/wsgate" --workers 1 --no-echo --max-queued-bytes "$QUEUE" --listen "127.0.0.1:$2") ;;
        wsgate2) cmd=("$BIN/wsgate" --workers 2 --no-echo --max-queued-bytes "$QUEUE" --listen "127.0.0.1:$2") ;;
        floor) cmd=(taskset -c 0 "$PEER_BIN/fanout-floor" --listen "127.0.0.1:$2") ;;
        uws) cmd=(taskset -c 0 "$UWS_BIN" "$2") ;;
        *) echo "unknown server $1" >&2; exit 1 ;;
    esac
    # taskset execs the server: $! is the server itself.
    RUST_LOG=warn "${cmd[@]}" >>"$OUT/servers.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$1 did not listen on $2" >&2
    exit 1
}

run() { # round server rate
    local name="$1-$2-$3"
    PORT=$((PORT + 1))
    if [ "$SRC" -gt 248 ]; then SRC=2; fi
    local src="127.0.0.$SRC-127.0.0.$((SRC + 5))"
    SRC=$((SRC + 6))
    start_server "$2" "$PORT"
    local cmd=(taskset -c 1 "$BIN/wsgate-load" sub --url "ws://127.0.0.1:$PORT/ws" --src-ips "$src"
        --conns "$CONNS" --procs "$PROCS" --channels 1 --publishers 1 --batch 1 --rate "$3"
        --size "$SIZE" --duration "${SECS}s" --warmup "${WARMUP}s" --server-pid "$SERVER_PID" --json)
    echo "== $name: ${cmd[*]}" >&2
    if ! timeout $((SECS + WARMUP + 120)) "${cmd[@]}" >"$OUT/$name.json" 2>"$OUT/$name.stderr"; then
        echo "$name: wsgate-load failed (see $OUT/$name.stderr)" >&2
    fi
    stop_server
    jq -c --arg s "$2" --argjson r "$1" --argjson rate "$3" '{server: $s, round: $r, rate: $rate,
        us_per_delivery: .server.us_per_delivery, p50: .latency_us.p50, p99: .latency_us.p99,
        received: .received, expected: .expected, gaps: .gaps, duplicates: .duplicates,
        disconnects: .disconnects}' "$OUT/$name.json" | tee -a "$OUT/runs.jsonl" >&2
}

: >"$OUT/runs.jsonl"
{
    echo "# fan-out vs its floor, $(date -u +%FT%TZ), $(uname -r), $(nproc) cores"
    echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# CONNS=$CONNS PROCS=$PROCS RATES=\"$RATES\" SIZE=$SIZE SECS=$SECS ROUNDS=$ROUNDS SERVERS=\"$SERVERS\""
} | tee "$OUT/summary.md"
for r in $(seq 1 "$ROUNDS"); do
    for rate in $RATES; do
        for s in $SERVERS; do run "$r" "$s" "$rate"; done
    done
done
echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.md"

python3 - "$OUT/runs.jsonl" <<'EOF' | tee -a "$OUT/summary.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = statistics.median
fmt = lambda xs, f: "[" + ", ".join(format(x, f) for x in xs) + "]"
print("\n| publications/s | server | µs CPU per delivery | vs the floor | p50 | p99 | lost/doubled/disconnects |")
print("|---:|---|---:|---:|---:|---:|---:|")
for rate in sorted({r["rate"] for r in rows}):
    by = {}
    for r in rows:
        if r["rate"] == rate:
            by.setdefault(r["server"], []).append(r)
    floor = med(r["us_per_delivery"] for r in by["floor"]) if "floor" in by else None
    for s, rs in by.items():
        rs.sort(key=lambda r: r["round"])
        us = [r["us_per_delivery"] for r in rs if r["us_per_delivery"] is not None]
        u = med(us) if us else float("nan")
        vs = f"{u / floor:.2f}×" if floor and s not in ("floor", "wsgate2") else ""
        if s == "wsgate2":
            u_txt = "(2 workers: latency only)"
        else:
            u_txt = f"{u:.2f} {fmt(us, '.2f')}"
        bad = sum(r["expected"] - r["received"] + r["gaps"] + r["duplicates"] + r["disconnects"] for r in rs)
        print(f"| {rate} | {s} | {u_txt} | {vs} | {med(r['p50'] for r in rs)/1000:.1f} ms "
              f"| {med(r['p99'] for r in rs)/1000:.1f} ms | {bad} |")
EOF
