#!/usr/bin/env bash
# Figures of a live handoff (issue 17): how long SIGUSR2 takes to hand a
# gateway holding N idle connections to a new process, the longest pause an
# echo client sees, and what `wsgate-load sub` running through it counts
# (disconnects, publications lost and doubled). See docs/operations.md.
#
#   scripts/bench_handoff.sh [N]        (N idle /echo connections, 19000)
#
# One run:
#   1. start `wsgate --workers 2 --pid-file F` (memory broker) on PORT;
#   2. open N idle /echo connections with `wsgate-load hold` (one process
#      per 10,000, spread over 127.0.0.2-9: 20,000 open files a process);
#   3. start the echo pinger (scripts/handoff_pinger.py: a message every
#      1 ms on /echo, each echo awaited; the longest gap between echoes,
#      reconnecting at once when told 4000 or dropped) and `wsgate-load
#      sub` (SUBS subscribers over CHANNELS channels on /ws, publications
#      at RATE/s through /api/publish, offsets checked per connection);
#   4. after SETTLE seconds, SIGUSR2 to the gateway; time until the pid
#      file names the new process (it serves), and until the old process
#      has exited; both also per 10,000 connections;
#   5. wait for the clients to end, print one JSON summary (and the raw
#      reports under reports/bench/handoff/).
#
# With step 1 of the handoff (listeners only) the old process drains its
# connections (close 4000 over timeouts.drain_window), so disconnects are
# expected and the pinger's longest gap is a reconnect; moving the
# connections (step 2) is what brings them to 0.
#
# Env: PORT (18480), BIN (directory of wsgate and wsgate-load, default
#      target/release), SUBS (200), CHANNELS (10), RATE (200 publications/s),
#      SETTLE (3 s), DRAIN_WINDOW (the old process's drain window, 10s),
#      LIMIT (seconds the whole run may take, 300).
# Needs: `ulimit -n` hard limit >= N + 100 for the gateway (it raises its
#      soft limit itself), python3.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

N="${1:-19000}"
PORT="${PORT:-18480}"
BIN="${BIN:-target/release}"
SUBS="${SUBS:-200}"
CHANNELS="${CHANNELS:-10}"
RATE="${RATE:-200}"
SETTLE="${SETTLE:-3}"
DRAIN_WINDOW="${DRAIN_WINDOW:-10s}"
LIMIT="${LIMIT:-300}"
OUT="$ROOT/reports/bench/handoff"
mkdir -p "$OUT"
RUN="$OUT/$(date -u +%Y%m%dT%H%M%S)-n$N"
mkdir -p "$RUN"

for b in wsgate wsgate-load; do
    [ -x "$BIN/$b" ] || { echo "no $BIN/$b: cargo build --release --bins (or BIN=target/debug)" >&2; exit 2; }
done
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((N + 100)) ]; then
    echo "open-file hard limit $hard < N + 100 = $((N + 100)): the gateway cannot hold N connections" >&2
    exit 2
fi
ulimit -n "$hard" 2>/dev/null || true

PIDF="$RUN/wsgate.pid"
CFG="$RUN/wsgate.toml"
printf '[timeouts]\ndrain_window = "%s"\ndrain_timeout = "60s"\n' "$DRAIN_WINDOW" >"$CFG"
START=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - START))); }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for f in "$PIDF"; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    [ -n "${OLD:-}" ] && kill "$OLD" 2>/dev/null || true
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
stats() { curl -s --max-time 5 "http://127.0.0.1:$PORT/api/stats" || true; }
conns() { stats | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("connections", 0))
except Exception: print(0)'; }

"$BIN/wsgate" --listen "127.0.0.1:$PORT" --workers 2 -c "$CFG" --pid-file "$PIDF" \
    >"$RUN/wsgate.log" 2>&1 &
OLD=$!
for _ in $(seq 1 200); do [ -s "$PIDF" ] && break; sleep 0.05; done
[ "$(cat "$PIDF" 2>/dev/null)" = "$OLD" ] || { echo "the gateway did not start" >&2; cat "$RUN/wsgate.log" >&2; exit 1; }

# The idle connections are held a little longer than the pinger and the
# subscribers run (RUN_SECS), then report.
RUN_SECS=$((SETTLE + 30))
HOLD=$((RUN_SECS + 5))
PROCS=$(((N + 9999) / 10000))
"$BIN/wsgate-load" hold --url "ws://127.0.0.1:$PORT/echo" --conns "$N" --procs "$PROCS" \
    --src-ips 127.0.0.2-127.0.0.9 --hold "${HOLD}s" --json >"$RUN/hold.json" 2>"$RUN/hold.err" &
pids+=($!)
HOLD_PID=$!
until [ "$(conns)" -ge "$N" ]; do
    [ "$(left)" -gt 0 ] || { echo "only $(conns) of $N connections opened" >&2; exit 1; }
    kill -0 "$HOLD_PID" 2>/dev/null || { echo "wsgate-load hold ended early" >&2; cat "$RUN/hold.err" >&2; exit 1; }
    sleep 0.5
done
echo "$N idle connections open" >&2

python3 scripts/handoff_pinger.py --port "$PORT" --duration "$RUN_SECS" >"$RUN/pinger.json" 2>"$RUN/pinger.err" &
pids+=($!)
PINGER=$!
"$BIN/wsgate-load" sub --url "ws://127.0.0.1:$PORT/ws" --conns "$SUBS" --channels "$CHANNELS" \
    --publishers 1 --batch 1 --rate "$RATE" --warmup 0s --duration "$((RUN_SECS - 5))s" --drain 5s \
    --json >"$RUN/sub.json" 2>"$RUN/sub.err" &
pids+=($!)
SUB=$!
sleep "$SETTLE"

T0=$(now_ms)
kill -USR2 "$OLD"
NEW=""
while :; do
    p=$(cat "$PIDF" 2>/dev/null || true)
    if [ -n "$p" ] && [ "$p" != "$OLD" ]; then NEW=$p; break; fi
    [ "$(left)" -gt 0 ] || { echo "no new process" >&2; tail -20 "$RUN/wsgate.log" >&2; exit 1; }
    sleep 0.005
done
T_NEW=$(now_ms)
while kill -0 "$OLD" 2>/dev/null; do
    [ "$(left)" -gt 0 ] || { echo "the old process did not exit" >&2; exit 1; }
    # Reap it if it is our child and has exited.
    wait "$OLD" 2>/dev/null || true
    sleep 0.005
done
T_EXIT=$(now_ms)
echo "handed over: new pid $NEW after $((T_NEW - T0)) ms, old gone after $((T_EXIT - T0)) ms" >&2

wait "$PINGER" || true
wait "$SUB" || true
while kill -0 "$HOLD_PID" 2>/dev/null; do
    [ "$(left)" -gt 0 ] || { kill "$HOLD_PID" 2>/dev/null; break; }
    sleep 0.5
done
wait "$HOLD_PID" 2>/dev/null || true
kill "$NEW" 2>/dev/null || true

python3 - "$RUN" "$N" "$T0" "$T_NEW" "$T_EXIT" <<'EOF'
import json, sys
run, n, t0, t_new, t_exit = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
def load(name):
    try:
        with open(f"{run}/{name}") as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception as e:
        return {"error": str(e)}
ping, sub, hold = load("pinger.json"), load("sub.json"), load("hold.json")
s = sub.get("sub", sub)
p = sub.get("publish", {})
out = {
    "connections": n,
    "ms_to_new_pid": t_new - t0,
    "ms_to_old_exit": t_exit - t0,
    "ms_to_new_pid_per_10k": round((t_new - t0) * 10000 / n, 1),
    "ms_to_old_exit_per_10k": round((t_exit - t0) * 10000 / n, 1),
    "echo_longest_pause_ms": ping.get("max_gap_ms"),
    "echo_reconnects": ping.get("reconnects"),
    "echo_close_codes": ping.get("close_codes"),
    "idle_closed_by_server": hold.get("closes_received", hold.get("hold", {}).get("closes_received")),
    "idle_still_open_at_end": hold.get("still_open", hold.get("hold", {}).get("still_open")),
    "sub_disconnects": s.get("disconnects"),
    "sub_close_codes": s.get("close_codes"),
    "sub_expected": s.get("expected"),
    "sub_received": s.get("received"),
    "sub_lost": (s.get("expected") or 0) - (s.get("received") or 0) if "expected" in s else None,
    "sub_missing_in_gaps": s.get("missing"),
    "sub_doubled": s.get("duplicates"),
    "published": p.get("published"),
    "publish_refused": p.get("rejected"),
    "publish_failed_requests": p.get("failed_requests"),
    "publish_errors": p.get("errors"),
}
with open(f"{run}/summary.json", "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps(out, indent=1))
EOF
