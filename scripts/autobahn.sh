#!/usr/bin/env bash
# Autobahn|Testsuite conformance run of wsgate's /echo route, with kosoku
# (a PyPI reimplementation of the testsuite) in fuzzingclient mode.
#
#   scripts/autobahn.sh [--cases '1.*,2.*,...'] [--port N] [--expect N]
#                       [--parallelism N] [--no-build]
#
#   --cases        comma-separated case ids or globs (kosoku -i each); default
#                  '*', the full suite (517 cases, about 5 minutes at -p 2):
#                  groups 1-10 (301 cases) and 12.*, 13.* (permessage-deflate).
#   --port         port for wsgate (default: a free one)
#   --expect       minimum number of cases that must run (default: counted
#                  from kosoku's case list for --cases)
#   --parallelism  cases kosoku runs at once (default 2)
#   --no-build     use the existing target/release/wsgate
#
# Env: VENV (default .venv), AUTOBAHN_TIMEOUT (seconds for kosoku, default 1200),
#      WSGATE_BIN (server binary to test instead of target/release/wsgate; it
#      is run as `$WSGATE_BIN --listen 127.0.0.1:PORT`; implies --no-build),
#      RUST_LOG (passed to wsgate), WSGATE_COMPRESSION (off|shared|dedicated,
#      passed to wsgate), WSGATE_COMPRESSION_MIN_SIZE (default 0 here).
# Output: reports/autobahn/server/ (index.json, per-case JSON + HTML),
#         reports/autobahn/wsgate.log (server stdout/stderr).
# The last line is `autobahn: N passed, M failed`; exit 0 only if all passed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"

ALL_CASES='*'
ALL_CASES_COUNT=517

CASES=""
PORT=""
EXPECT=""
PARALLELISM=2
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cases) CASES="$2"; shift 2 ;;
        --cases=*) CASES="${1#*=}"; shift ;;
        --port) PORT="$2"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --expect) EXPECT="$2"; shift 2 ;;
        --expect=*) EXPECT="${1#*=}"; shift ;;
        --parallelism) PARALLELISM="$2"; shift 2 ;;
        --parallelism=*) PARALLELISM="${1#*=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "autobahn.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
PY="$VENV/bin/python"
KOSOKU="$VENV/bin/kosoku"

if [ -z "$CASES" ]; then
    CASES="$ALL_CASES"
    : "${EXPECT:=$ALL_CASES_COUNT}"
fi
if [ -z "$EXPECT" ]; then
    EXPECT="$("$PY" scripts/autobahn_check.py --count-cases "$CASES")"
fi
if [ "$EXPECT" -le 0 ] 2>/dev/null; then
    echo "autobahn: no kosoku case matches --cases '$CASES'" >&2
    exit 2
fi
KOSOKU_ARGS=()
IFS=',' read -ra _pats <<< "$CASES"
for p in "${_pats[@]}"; do
    p="${p// /}"
    [ -n "$p" ] && KOSOKU_ARGS+=(-i "$p")
done

if [ -z "$PORT" ]; then
    PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if port_open; then
    echo "autobahn: port $PORT is already in use; pick another with --port" >&2
    echo "autobahn: 0 passed, $EXPECT failed"
    exit 1
fi

if [ -n "${WSGATE_BIN:-}" ]; then
    BUILD=0
fi
if [ "$BUILD" = 1 ]; then
    echo "== autobahn: cargo build --release --bin wsgate =="
    if ! cargo build --release --bin wsgate; then
        echo "autobahn: cargo build --release --bin wsgate failed"
        echo "autobahn: 0 passed, $EXPECT failed"
        exit 1
    fi
fi
BIN="${WSGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/wsgate}"
if [ ! -x "$BIN" ]; then
    echo "autobahn: $BIN not found" >&2
    echo "autobahn: 0 passed, $EXPECT failed"
    exit 1
fi

OUT_BASE="$ROOT/reports/autobahn"
REPORT="$OUT_BASE/server"
LOG="$OUT_BASE/wsgate.log"
mkdir -p "$OUT_BASE"
rm -rf "$REPORT"

SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap cleanup EXIT

# Compress every message of a deflate connection (12.x, 13.x): kosoku 0.1.0
# errors on an uncompressed message there, which RFC 7692 allows.
export WSGATE_COMPRESSION_MIN_SIZE="${WSGATE_COMPRESSION_MIN_SIZE:-0}"
echo "== autobahn: starting $BIN --listen 127.0.0.1:$PORT (log: $LOG; WSGATE_COMPRESSION=${WSGATE_COMPRESSION:-default} WSGATE_COMPRESSION_MIN_SIZE=$WSGATE_COMPRESSION_MIN_SIZE) =="
"$BIN" --listen "127.0.0.1:$PORT" > "$LOG" 2>&1 &
SERVER_PID=$!

SERVER_EXIT=""
check_server() {
    # Sets SERVER_EXIT to the server's exit status once it has exited (and
    # clears SERVER_PID); leaves it empty while the server runs. Not to be
    # called in a subshell: only this shell can `wait` for its child.
    if [ -z "$SERVER_PID" ] || kill -0 "$SERVER_PID" 2>/dev/null; then
        return 0
    fi
    local rc=0
    wait "$SERVER_PID" 2>/dev/null || rc=$?
    SERVER_EXIT="$rc"
    SERVER_PID=""
}

show_log() {
    echo "--- last lines of $LOG ---"
    tail -n 30 "$LOG" || true
    echo "---"
}

deadline=$((SECONDS + 20))
until port_open; do
    check_server
    if [ -n "$SERVER_EXIT" ]; then
        echo "autobahn: wsgate exited (status $SERVER_EXIT) before accepting connections"
        show_log
        echo "autobahn: 0 passed, $EXPECT failed"
        exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "autobahn: wsgate did not accept connections on 127.0.0.1:$PORT within 20s"
        show_log
        echo "autobahn: 0 passed, $EXPECT failed"
        exit 1
    fi
    sleep 0.1
done

URL="ws://127.0.0.1:$PORT/echo"
echo "== autobahn: kosoku -m fuzzingclient ${KOSOKU_ARGS[*]} -o $REPORT $URL (expect $EXPECT cases) =="
start=$SECONDS
krc=0
timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-1200}" \
    "$KOSOKU" -m fuzzingclient "${KOSOKU_ARGS[@]}" -p "$PARALLELISM" -o "$REPORT" "$URL" \
    > "$OUT_BASE/kosoku.log" 2>&1 || krc=$?
echo "autobahn: kosoku finished in $((SECONDS - start))s (exit $krc; output in $OUT_BASE/kosoku.log)"

CHECK_ARGS=(--expect "$EXPECT")
check_server
if [ -n "$SERVER_EXIT" ]; then
    echo "autobahn: wsgate DIED during the run (exit status $SERVER_EXIT)"
    show_log
    CHECK_ARGS+=(--fail "wsgate died during the run (exit status $SERVER_EXIT)")
fi
case "$krc" in
    0|1) ;;  # 1: some case failed; the check below lists them
    124|137)
        tail -n 20 "$OUT_BASE/kosoku.log"
        CHECK_ARGS+=(--fail "kosoku timed out after ${AUTOBAHN_TIMEOUT:-1200}s") ;;
    *)
        tail -n 20 "$OUT_BASE/kosoku.log"
        CHECK_ARGS+=(--fail "kosoku exited with status $krc") ;;
esac

cleanup  # stop the server now, so that nothing prints after the summary

# kosoku and the check share one pass rule, so the check's verdict stands;
# its last line is `autobahn: N passed, M failed`.
crc=0
"$PY" scripts/autobahn_check.py "$REPORT" "${CHECK_ARGS[@]}" || crc=$?
exit "$crc"
