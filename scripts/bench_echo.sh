#!/usr/bin/env bash
# Echo throughput and connection churn: wsgate (one worker) against the
# fastwebsockets echo server (benches/peers/fastwebsockets-echo), and the
# raw TCP echo floor (benches/peers/tcp-echo), alternating A B A B in one
# run. Results go in docs/benchmarks.md; see ../shared/MEASURING.md.
#
#   scripts/bench_echo.sh [--no-build]
#
# Every server runs pinned to core 0, every client to core 1:
#   taskset -c 0 wsgate --workers 1 --listen 127.0.0.1:PORT          (/echo)
#   taskset -c 0 fastwebsockets-echo --listen 127.0.0.1:PORT         (/)
#   taskset -c 0 tcp-echo-server --listen 127.0.0.1:PORT [--drain]
#   taskset -c 1 wsgate-load echo --url … --conns C --size S --duration SECS --warmup WARMUP --json
#   taskset -c 1 tcp-echo-load --addr … --conns C --size S --duration SECS --warmup WARMUP
#   taskset -c 1 wsgate-load churn --url … --conns CHURN_CONNS --duration CHURN_SECS --src-ips … --json
# A fresh server process per measurement. Server CPU (utime + stime from
# /proc/PID/stat) is read just before the client starts and just after it
# ends; CPU per message = CPU / messages echoed over the whole client run
# (warm-up included, as the CPU is), CPU per upgrade = CPU / upgrades.
# The load generator saturates its core before a good server does, so
# msgs/s mostly measures the client; the CPU per operation is the fair
# comparison on this 2-core box, and is robust to other load on it.
#
# The raw TCP echo runs twice: reading until a short read (the floor: one
# recv and one send per echo) and with --drain, reading until WouldBlock as
# wsgate does (one more recv per readable event): their difference is the
# price of that extra call.
#
# Env: ROUNDS (3), SECS (10), WARMUP (2), CASES ("100x20 200x16384"),
#      CHURN_SECS (10), CHURN_CONNS (50), PORT (18090),
#      BIN (wsgate binaries, default target/release; implies --no-build for
#      wsgate), PEER_BIN (peer binaries, default target/peers/release),
#      SERVERS ("wsgate fastwebsockets tcp tcp-drain"; add wsgate-base and
#      set BASE_BIN to a directory with another wsgate build to compare a
#      change against its base in the same run; add uws and set UWS_BIN to
#      a uWebSockets echo server built by hand, run as `UWS_BIN PORT`,
#      echoing on every path: docs/benchmarks.md says how it was built).
# Output: a summary table (medians) on stdout, every measurement in
# reports/bench/echo/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

SERVERS="${SERVERS:-wsgate fastwebsockets tcp tcp-drain}"
BASE_BIN="${BASE_BIN:-}"
ROUNDS="${ROUNDS:-3}"
SECS="${SECS:-10}"
WARMUP="${WARMUP:-2}"
CASES="${CASES:-100x20 200x16384}"
CHURN_SECS="${CHURN_SECS:-10}"
CHURN_CONNS="${CHURN_CONNS:-50}"
PORT="${PORT:-18090}"
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0
if [ -n "${BIN:-}" ]; then WSGATE_BUILD=0; else WSGATE_BUILD=$BUILD; BIN="$ROOT/target/release"; fi
PEER_BIN="${PEER_BIN:-$ROOT/target/peers/release}"
OUT="$ROOT/reports/bench/echo"
mkdir -p "$OUT"
command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }

if [ "$WSGATE_BUILD" = 1 ]; then cargo build --release --bins; fi
if [ "$BUILD" = 1 ]; then
    for p in fastwebsockets-echo tcp-echo; do
        CARGO_TARGET_DIR="$ROOT/target/peers" cargo build --release \
            --manifest-path "benches/peers/$p/Cargo.toml"
    done
fi

SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        sleep 0.2
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, 1/100 s

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "server did not listen on $PORT" >&2
    return 1
}

start_server() { # name
    # A plain command in the background (taskset execs the server), so that
    # $! is the server itself: its /proc/PID/stat is what is measured.
    local cmd
    case "$1" in
        wsgate) cmd=("$BIN/wsgate" --workers 1 --listen "127.0.0.1:$PORT") ;;
        wsgate-base) cmd=("$BASE_BIN/wsgate" --workers 1 --listen "127.0.0.1:$PORT") ;;
        fastwebsockets) cmd=("$PEER_BIN/fastwebsockets-echo" --listen "127.0.0.1:$PORT") ;;
        tcp) cmd=("$PEER_BIN/tcp-echo-server" --listen "127.0.0.1:$PORT") ;;
        tcp-drain) cmd=("$PEER_BIN/tcp-echo-server" --listen "127.0.0.1:$PORT" --drain) ;;
        uws) cmd=("$UWS_BIN" "$PORT") ;;
    esac
    RUST_LOG=warn taskset -c 0 "${cmd[@]}" >>"$OUT/servers.log" 2>&1 &
    SERVER_PID=$!
    wait_port
    sleep 0.3
}

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    # wsgate drains on SIGTERM (no connection is left: it exits at once);
    # the peers just die.
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    PORT=$((PORT + 1)) # a fresh port: no TIME_WAIT from the last run in the way
}

url_of() { # server
    case "$1" in
        wsgate|wsgate-base) echo "ws://127.0.0.1:$PORT/echo" ;;
        *) echo "ws://127.0.0.1:$PORT/" ;;
    esac
}

echo_run() { # round server conns size
    local r="$1" s="$2" c="$3" z="$4" f="$OUT/echo-$1-$2-$3x$4.json" c0 c1
    start_server "$s"
    c0=$(cpu_ticks "$SERVER_PID")
    if [ "${s%-drain}" = tcp ]; then
        taskset -c 1 "$PEER_BIN/tcp-echo-load" --addr "127.0.0.1:$PORT" --conns "$c" --size "$z" \
            --duration "$SECS" --warmup "$WARMUP" >"$f.raw"
    else
        taskset -c 1 "$BIN/wsgate-load" echo --url "$(url_of "$s")" --conns "$c" --size "$z" \
            --duration "${SECS}s" --warmup "${WARMUP}s" --json >"$f.raw"
    fi
    c1=$(cpu_ticks "$SERVER_PID")
    stop_server
    python3 - "$f.raw" "$s" "$r" "$c" "$z" "$c0" "$c1" >"$f" <<'EOF'
import json, sys
raw, server, rnd, conns, size, c0, c1 = sys.argv[1:]
d = json.load(open(raw))
if server.startswith("tcp"):
    msgs, p50, p99, rate = d["total"], d["p50_us"], d["p99_us"], d["msgs_per_sec"]
else:
    msgs, rate = d["echoed"], d["msgs_per_sec"]
    p50, p99 = d["latency_us"]["p50"], d["latency_us"]["p99"]
cpu = (int(c1) - int(c0)) / 100
print(json.dumps(dict(kind="echo", server=server, round=int(rnd), conns=int(conns), size=int(size),
                      msgs_per_sec=rate, p50_us=p50, p99_us=p99, cpu_s=cpu, messages=msgs)))
EOF
    echo "round $r $s ${c}x${z}: $(cat "$f")" >&2
}

churn_run() { # round server index
    local r="$1" s="$2" i="$3" f="$OUT/churn-$1-$2.json" c0 c1 net
    net=$((60 + r))
    start_server "$s"
    c0=$(cpu_ticks "$SERVER_PID")
    taskset -c 1 "$BIN/wsgate-load" churn --url "$(url_of "$s")" --conns "$CHURN_CONNS" \
        --duration "${CHURN_SECS}s" --src-ips "127.$net.$i.2-127.$net.$i.9" --json >"$f.raw"
    c1=$(cpu_ticks "$SERVER_PID")
    stop_server
    python3 - "$f.raw" "$s" "$r" "$c0" "$c1" >"$f" <<'EOF'
import json, sys
raw, server, rnd, c0, c1 = sys.argv[1:]
d = json.load(open(raw))
print(json.dumps(dict(kind="churn", server=server, round=int(rnd),
                      upgrades_per_sec=d["upgrades_per_sec"], upgrades=d["connections"]["opened"],
                      failed=d["connections"]["failed"], closed_clean=d.get("closed_clean"),
                      handshake_p50_us=d["handshake_us"]["p50"] if "handshake_us" in d else None,
                      handshake_p99_us=d["handshake_us"]["p99"] if "handshake_us" in d else None,
                      cpu_s=(int(c1) - int(c0)) / 100)))
EOF
    echo "round $r churn $s: $(cat "$f")" >&2
}

rm -f "$OUT"/*.json "$OUT"/*.raw "$OUT/servers.log"
{
    echo "# $(date -u +%FT%TZ) $(uname -r), $(nproc) cores, load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
    if [ "$WSGATE_BUILD" = 1 ]; then
        echo "# wsgate built from $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo '+dirty')"
    else
        echo "# wsgate from BIN=$BIN ($("$BIN/wsgate" --version 2>/dev/null))"
    fi
} | tee "$OUT/summary.md"
for r in $(seq 1 "$ROUNDS"); do
    for case in $CASES; do
        c=${case%x*}; z=${case#*x}
        for s in $SERVERS; do echo_run "$r" "$s" "$c" "$z"; done
    done
    i=0
    for s in $SERVERS; do
        case "$s" in tcp*) continue ;; esac
        i=$((i + 1)); churn_run "$r" "$s" "$i"
    done
done
echo "# load average at end $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/summary.md"

python3 - "$OUT" <<'EOF' | tee -a "$OUT/summary.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
rows = [json.loads(open(f).read()) for f in sorted(glob.glob(os.path.join(out, "*.json")))]
med = statistics.median

def us_per_msg(r):
    # Server CPU over the whole client run / messages echoed in it.
    return r["cpu_s"] * 1e6 / r["messages"]

def each(xs, fmt):
    return "[" + ", ".join(format(x, fmt) for x in xs) + "]"

def by_round(rs):
    return sorted(rs, key=lambda r: r["round"])

NAMES = {"tcp": "raw TCP echo (floor)", "tcp-drain": "raw TCP echo, read to WouldBlock"}
cases = sorted({(r["conns"], r["size"]) for r in rows if r["kind"] == "echo"})
print("\n## Echo (medians over rounds; every round in brackets)\n")
print("| case | server | msgs/s | p50 | p99 | server CPU per echo | vs the raw TCP floor |")
print("|---|---|---:|---:|---:|---:|---:|")
for conns, size in cases:
    by = {}
    for s in ("wsgate", "wsgate-base", "fastwebsockets", "uws", "tcp", "tcp-drain"):
        rs = [r for r in rows if r["kind"] == "echo" and r["server"] == s and (r["conns"], r["size"]) == (conns, size)]
        if rs:
            by[s] = by_round(rs)
    floor = med(us_per_msg(r) for r in by["tcp"]) if "tcp" in by else None
    for s, rs in by.items():
        u = med(us_per_msg(r) for r in rs)
        vs_floor = f"{u / floor:.2f}×" if floor and s != "tcp" else ""
        if s == "tcp-drain":
            vs_floor += f" (+{u - floor:.2f} µs: the recv(2) that returns EAGAIN)"
        print(f"| {conns} × {size} B | {NAMES.get(s, s)} "
              f"| {med(r['msgs_per_sec'] for r in rs):,.0f} {each([r['msgs_per_sec'] for r in rs], ',.0f')} "
              f"| {med(r['p50_us'] for r in rs):,.0f} µs | {med(r['p99_us'] for r in rs):,.0f} µs "
              f"| {u:.2f} µs {each([us_per_msg(r) for r in rs], '.2f')} | {vs_floor} |")
    if "wsgate" in by and "fastwebsockets" in by:
        w, f = by["wsgate"], by["fastwebsockets"]
        ratio = med(r["msgs_per_sec"] for r in w) / med(r["msgs_per_sec"] for r in f)
        pairs = [a["msgs_per_sec"] / b["msgs_per_sec"] for a, b in zip(w, f)]
        cpu = med(us_per_msg(r) for r in f) / med(us_per_msg(r) for r in w)
        cpu_pairs = [us_per_msg(b) / us_per_msg(a) for a, b in zip(w, f)]
        print(f"| {conns} × {size} B | **wsgate / fastwebsockets** | **{ratio:.2f}×** {each(pairs, '.2f')} | | "
              f"| **{cpu:.2f}×** less CPU per echo {each(cpu_pairs, '.2f')} | |")
churn = [r for r in rows if r["kind"] == "churn"]
if churn:
    print("\n## Churn: connect, upgrade, close (medians; every round in brackets)\n")
    print("| server | upgrades/s | handshake p50 / p99 | server CPU per upgrade | failed |")
    print("|---|---:|---:|---:|---:|")
    per = {}
    for s in ("wsgate", "wsgate-base", "fastwebsockets", "uws"):
        rs = by_round([r for r in churn if r["server"] == s])
        if not rs:
            continue
        u = [r["cpu_s"] * 1e6 / r["upgrades"] for r in rs if r["upgrades"]]
        per[s] = (med(r["upgrades_per_sec"] for r in rs), med(u))
        hs = [r for r in rs if r["handshake_p50_us"] is not None]
        lat = f"{med(r['handshake_p50_us'] for r in hs):,.0f} / {med(r['handshake_p99_us'] for r in hs):,.0f} µs" if hs else ""
        print(f"| {s} | {per[s][0]:,.0f} {each([r['upgrades_per_sec'] for r in rs], ',.0f')} | {lat} "
              f"| {per[s][1]:.1f} µs {each(u, '.1f')} | {sum(r['failed'] for r in rs)} |")
    if "wsgate" in per and "fastwebsockets" in per:
        print(f"\nwsgate / fastwebsockets: {per['wsgate'][0] / per['fastwebsockets'][0]:.2f}× the upgrades/s, "
              f"{per['fastwebsockets'][1] / per['wsgate'][1]:.2f}× less CPU per upgrade")
EOF
