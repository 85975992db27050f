#!/usr/bin/env bash
# Autobahn|Testsuite conformance run of wsgate-load's client role, with
# kosoku (a PyPI reimplementation of the testsuite) in fuzzingserver mode.
#
#   scripts/autobahn_client.sh [--cases '1.*,2.*,...'] [--port N] [--expect N]
#                              [--no-build]
#
#   --cases     comma-separated case ids or globs (kosoku -i each); default
#               groups 1-10 and 12-13: 517 cases (301 in 1-10, there is no
#               group 8; 216 in 12.* and 13.*, permessage-deflate, which
#               `wsgate-load autobahn` offers by default: --deflate shared,
#               every echo compressed). Runtime on a 2-core VM: groups
#               1-10 about 10 s, groups 12-13 about 4.5-6 min (1000
#               messages of up to 128 KiB per case; kosoku's side of the
#               compression and framing is most of it).
#   --port      port for kosoku's fuzzingserver (default: a free one)
#   --expect    minimum number of cases that must run (default: counted from
#               kosoku's case list for --cases)
#   --no-build  use the existing target/release/wsgate-load
#
# Env: VENV (default .venv), AUTOBAHN_TIMEOUT (seconds for the client run,
#      default 1500), WSGATE_LOAD_BIN (client binary to test instead of
#      target/release/wsgate-load; implies --no-build), AUTOBAHN_DEFLATE
#      (the client's --deflate: shared (default), dedicated or off; with off
#      groups 12-13 fail, with dedicated 13.2, 13.5 and 13.6 do: their
#      answers need client_no_context_takeover, which that offer leaves out).
#
# How kosoku's fuzzingserver behaves (kosoku 0.1.0): it serves
# /getCaseCount, /runCase?case=N&agent=A and /updateReports?agent=A; after
# updateReports it writes its report into the -o directory (index.json plus a
# JSON and an HTML file per case, as in fuzzingclient mode) and exits by
# itself, with status 0 if every case passed and 1 if not. Should it not
# exit, it is stopped after a grace period and whatever report it wrote is
# checked.
#
# Output: reports/autobahn/client/ (index.json, per-case JSON + HTML),
#         reports/autobahn/kosoku-server.log, reports/autobahn/wsgate-load.log.
# The last line is `autobahn-client: N passed, M failed`; exit 0 only if all
# passed.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$(pwd)"

# Groups 1-10 (301 cases) and the permessage-deflate groups 12-13 (216).
DEFAULT_CASES='1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*,12.*,13.*'
DEFAULT_CASES_COUNT=517

CASES=""
PORT=""
EXPECT=""
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cases) CASES="$2"; shift 2 ;;
        --cases=*) CASES="${1#*=}"; shift ;;
        --port) PORT="$2"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --expect) EXPECT="$2"; shift 2 ;;
        --expect=*) EXPECT="${1#*=}"; shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "autobahn_client.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

# shellcheck source=scripts/venv.sh
source scripts/venv.sh
PY="$VENV/bin/python"
KOSOKU="$VENV/bin/kosoku"

if [ -z "$CASES" ]; then
    CASES="$DEFAULT_CASES"
    : "${EXPECT:=$DEFAULT_CASES_COUNT}"
fi
if [ -z "$EXPECT" ]; then
    EXPECT="$("$PY" scripts/autobahn_check.py --count-cases "$CASES")"
fi
if [ "$EXPECT" -le 0 ] 2>/dev/null; then
    echo "autobahn-client: no kosoku case matches --cases '$CASES'" >&2
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

summary_fail() {
    echo "autobahn-client: $1"
    echo "autobahn-client: 0 passed, $EXPECT failed"
    exit 1
}

if port_open; then
    summary_fail "port $PORT is already in use; pick another with --port"
fi

if [ -n "${WSGATE_LOAD_BIN:-}" ]; then
    BUILD=0
fi
if [ "$BUILD" = 1 ]; then
    echo "== autobahn-client: cargo build --release --bin wsgate-load =="
    cargo build --release --bin wsgate-load || summary_fail "cargo build --release --bin wsgate-load failed"
fi
BIN="${WSGATE_LOAD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/wsgate-load}"
[ -x "$BIN" ] || summary_fail "$BIN not found"

OUT_BASE="$ROOT/reports/autobahn"
REPORT="$OUT_BASE/client"
KLOG="$OUT_BASE/kosoku-server.log"
CLOG="$OUT_BASE/wsgate-load.log"
mkdir -p "$OUT_BASE"
rm -rf "$REPORT"

KOSOKU_PID=""
stop_kosoku() {
    if [ -n "$KOSOKU_PID" ] && kill -0 "$KOSOKU_PID" 2>/dev/null; then
        kill "$KOSOKU_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$KOSOKU_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$KOSOKU_PID" 2>/dev/null || true
        wait "$KOSOKU_PID" 2>/dev/null || true
    fi
    KOSOKU_PID=""
}
trap stop_kosoku EXIT

echo "== autobahn-client: kosoku -m fuzzingserver ${KOSOKU_ARGS[*]} -o $REPORT 127.0.0.1:$PORT (log: $KLOG) =="
"$KOSOKU" -m fuzzingserver "${KOSOKU_ARGS[@]}" -o "$REPORT" "127.0.0.1:$PORT" > "$KLOG" 2>&1 &
KOSOKU_PID=$!

KOSOKU_EXIT=""
check_kosoku() {
    # Sets KOSOKU_EXIT once kosoku has exited (and clears KOSOKU_PID). Not
    # to be called in a subshell: only this shell can `wait` for its child.
    if [ -z "$KOSOKU_PID" ] || kill -0 "$KOSOKU_PID" 2>/dev/null; then
        return 0
    fi
    local rc=0
    wait "$KOSOKU_PID" 2>/dev/null || rc=$?
    KOSOKU_EXIT="$rc"
    KOSOKU_PID=""
}

deadline=$((SECONDS + 30))
until port_open; do
    check_kosoku
    if [ -n "$KOSOKU_EXIT" ]; then
        tail -n 20 "$KLOG" || true
        summary_fail "kosoku exited (status $KOSOKU_EXIT) before accepting connections"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        tail -n 20 "$KLOG" || true
        summary_fail "kosoku did not listen on 127.0.0.1:$PORT within 30s"
    fi
    sleep 0.1
done

URL="ws://127.0.0.1:$PORT"
DEFLATE="${AUTOBAHN_DEFLATE:-shared}"
echo "== autobahn-client: $BIN autobahn --url $URL --agent wsgate-load --deflate $DEFLATE (expect $EXPECT cases; log: $CLOG) =="
start=$SECONDS
crc=0
timeout --kill-after=10 "${AUTOBAHN_TIMEOUT:-1500}" \
    "$BIN" autobahn --url "$URL" --agent wsgate-load --deflate "$DEFLATE" > "$CLOG" 2>&1 || crc=$?
cat "$CLOG"
echo "autobahn-client: wsgate-load finished in $((SECONDS - start))s (exit $crc)"

# kosoku writes its report after /updateReports and exits by itself; give
# it a grace period, then stop it.
CHECK_ARGS=(--expect "$EXPECT")
deadline=$((SECONDS + 30))
while [ -z "$KOSOKU_EXIT" ] && [ "$SECONDS" -lt "$deadline" ]; do
    check_kosoku
    [ -n "$KOSOKU_EXIT" ] || sleep 0.1
done
if [ -z "$KOSOKU_EXIT" ]; then
    echo "autobahn-client: kosoku did not exit within 30s of the client's end; stopping it"
    stop_kosoku
    [ -f "$REPORT/index.json" ] || CHECK_ARGS+=(--fail "kosoku wrote no report")
else
    case "$KOSOKU_EXIT" in
        0|1) ;;  # 1: some case failed; the check below lists them
        *)
            tail -n 20 "$KLOG" || true
            CHECK_ARGS+=(--fail "kosoku exited with status $KOSOKU_EXIT") ;;
    esac
fi
case "$crc" in
    0) ;;
    124|137) CHECK_ARGS+=(--fail "wsgate-load timed out after ${AUTOBAHN_TIMEOUT:-1500}s") ;;
    *) CHECK_ARGS+=(--fail "wsgate-load exited with status $crc") ;;
esac

# The check prints `autobahn: N passed, M failed` last; say it as the
# client's verdict.
set +e
"$PY" scripts/autobahn_check.py "$REPORT" "${CHECK_ARGS[@]}" \
    | sed -u 's/^autobahn: \([0-9]* passed, [0-9]* failed\)$/autobahn-client: \1/'
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
