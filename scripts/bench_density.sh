#!/usr/bin/env bash
# Memory per idle connection: user space (the gateway's VmRSS) and kernel
# (/proc/meminfo Slab, /proc/slabinfo per cache), with N connections held
# open against ONE worker process. See docs/density.md for the method and
# the figures; ../shared/MEASURING.md for why it is taken this way.
#
#   scripts/bench_density.sh [--no-build]
#
# Per run: start `wsgate --workers 1` pinned to core 0, take a snapshot,
# open CONNS connections with `wsgate-load hold` (pinned to core 1, spread
# over PROCS processes and 4 source addresses), take a snapshot once every
# one is open and the loop is quiet, let the hold end, stop the gateway.
# Deltas are divided by CONNS. Both ends of every connection live on this
# box, so the kernel figures are given per socket pair and halved; the
# per-cache table shows which caches grow by one object per socket (2 per
# pair: TCP, sock_inode_cache, dentry, filp, eventpoll_epi) and which only on
# the client side (bind buckets). Each run uses fresh source addresses
# (127.0.<run>.2-5 style) and waits for TIME_WAIT sockets of earlier runs to
# expire, so that expiring ones do not shrink the slab during a measurement.
#
# Cases (CASES, default "echo ws"):
#   echo  /echo with --ping-interval 0: the bare idle WebSocket connection.
#   ws    /ws?channel=density with --ping-interval 0: a gateway session
#         subscribed to one channel (all on the same channel).
#   ping  /echo with the default 30 s ping interval (one armed timer each).
#   tls-ping  wss:// /echo with the default configuration (heartbeats on):
#         the gateway with --tls-cert/--tls-key (a test certificate from
#         scripts/make_test_cert.sh: ECDSA P-256), each client making a full
#         TLS 1.3 handshake (X25519) and one 100-byte message each way, then
#         idle (issue 14: the goal is <= 4 KB of gateway RSS each).
#   nginx-tls  the tls-ping clients against nginx terminating TLS
#         (scripts/nginx_tls_peer.sh, one worker pinned to core 0) in front
#         of a plain gateway (default configuration, heartbeats on, also on
#         core 0, listening on PORT+1): the RSS figure is nginx's worker
#         plus the gateway behind it (what the proxied deployment holds per
#         client). nginx's worker has 19,000 connection slots and 20,000
#         descriptors and spends two of each per client: CONNS <= 9,000.
#         The slab figure counts the extra proxy-to-gateway pair too.
#   ws-ping  /ws?channel=density with the default configuration (heartbeats
#         on): the figure operators see for a session on one channel.
#   ws10  /ws subscribed to 10 channels (density0..density9, the same 10 for
#         every session), default configuration: the multiplexing pattern;
#         (ws10 - ws-ping) / 9 is the cost of each further subscription.
#   deflate-off, deflate-shared, deflate-dedicated
#         /echo with --compression MODE: each client offers permessage-
#         deflate (shared: no context takeover; dedicated: takeover both
#         ways, as browsers offer) and exchanges one 1 KiB JSON-like text
#         (compressed both ways where agreed), then idles. In dedicated mode
#         both ends keep their zlib contexts (window, hash chains) for the
#         connection's life; the client holds as much as the server (about
#         2 x CONNS x 0.4 MB in all at 15 window bits: mind the RAM).
#
# Env: CONNS (19000), RUNS (3), PROCS (2), HOLD (30s), PORT (18080),
#      CASES ("echo ws"), BIN (directory of wsgate and wsgate-load,
#      default target/release; implies --no-build when set).
# Output: a table per case on stdout (medians over RUNS) and every run's raw
# numbers in reports/bench/density/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

CONNS="${CONNS:-19000}"
RUNS="${RUNS:-3}"
PROCS="${PROCS:-2}"
HOLD="${HOLD:-30s}"
PORT="${PORT:-18080}"
CASES="${CASES:-echo ws}"
BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0
if [ -n "${BIN:-}" ]; then BUILD=0; else BIN="$ROOT/target/release"; fi
OUT="$ROOT/reports/bench/density"
mkdir -p "$OUT"

command -v taskset >/dev/null || { echo "taskset not found (util-linux)" >&2; exit 1; }
[ -r /proc/slabinfo ] || { echo "/proc/slabinfo is not readable (run as root)" >&2; exit 1; }
if [ "$BUILD" = 1 ]; then cargo build --release --bins; fi

SERVER_PID=""
LOAD_PID=""
NGINX_PID=""
cleanup() {
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        sleep 0.2
        kill -TERM "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# The gateway's RSS, plus nginx's worker's when nginx is in front.
stack_rss() {
    local kib
    kib=$(rss_kib "$SERVER_PID")
    [ -n "${NGINX_WORKER:-}" ] && kib=$((kib + $(rss_kib "$NGINX_WORKER")))
    echo "$kib"
}
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
# Counted with ss (netlink), not by listing /proc/PID/fd: that would create
# a proc inode and dentry per descriptor and pollute the slab figures.
established() { ss -Htn state established "( sport = :$PORT )" 2>/dev/null | wc -l; }
time_wait() { ss -Htn state time-wait "( sport = :$PORT or dport = :$PORT )" 2>/dev/null | wc -l; }

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "gateway did not listen on $PORT" >&2
    return 1
}

# Let TIME_WAIT sockets of earlier runs on this port expire first.
wait_time_wait() {
    local n
    for _ in $(seq 1 70); do
        n=$(time_wait)
        [ "$n" -lt 200 ] && return 0
        sleep 1
    done
    echo "note: $n sockets still in TIME_WAIT" >&2
}

run_one() { # case run -> writes $OUT/$case-$run.{before,during}.slabinfo and .json
    local case="$1" run="$2" url flags
    local load_flags=()
    case "$case" in
        echo) url="ws://127.0.0.1:$PORT/echo"; flags=(--ping-interval 0) ;;
        ws) url="ws://127.0.0.1:$PORT/ws?channel=density"; flags=(--ping-interval 0) ;;
        ping) url="ws://127.0.0.1:$PORT/echo"; flags=() ;;
        tls-ping)
            [ -f "$OUT/cert/ca.pem" ] || scripts/make_test_cert.sh "$OUT/cert" >/dev/null
            url="wss://127.0.0.1:$PORT/echo"
            flags=(--tls-cert "$OUT/cert/server.pem" --tls-key "$OUT/cert/server.key")
            load_flags=(--ca "$OUT/cert/ca.pem" --hello-size 100) ;;
        nginx-tls)
            [ -f "$OUT/cert/ca.pem" ] || scripts/make_test_cert.sh "$OUT/cert" >/dev/null
            url="wss://127.0.0.1:$PORT/echo"
            flags=()
            load_flags=(--ca "$OUT/cert/ca.pem" --hello-size 100) ;;
        ws-ping) url="ws://127.0.0.1:$PORT/ws?channel=density"; flags=() ;;
        ws10) url="ws://127.0.0.1:$PORT/ws?$(for i in 0 1 2 3 4 5 6 7 8 9; do printf 'channel=density%s&' "$i"; done)"
            url="${url%&}"; flags=() ;;
        deflate-off|deflate-shared|deflate-dedicated)
            # One compressible 1 KiB text each way, then idle. The client
            # offers what the server mode needs (off: the offer is declined).
            local mode="${case#deflate-}" offer
            offer=$([ "$mode" = dedicated ] && echo dedicated || echo shared)
            url="ws://127.0.0.1:$PORT/echo"
            flags=(--ping-interval 0 --compression "$mode")
            load_flags=(--deflate "$offer" --hello-size 1024) ;;
        *) echo "unknown case $case" >&2; exit 1 ;;
    esac
    # Fresh source addresses per run: 127.0.R.2 - 127.0.R.5.
    local net=$(( (run + ${SRC_BASE:-0}) % 250 + 1 ))
    local src="127.0.$net.2-127.0.$net.5"
    wait_time_wait
    local gw_listen="127.0.0.1:$PORT"
    [ "$case" = nginx-tls ] && gw_listen="127.0.0.1:$((PORT + 1))"
    RUST_LOG=warn taskset -c 0 "$BIN/wsgate" --workers 1 --listen "$gw_listen" \
        "${flags[@]}" >"$OUT/$case-$run.server.log" 2>&1 &
    SERVER_PID=$!
    NGINX_PID="" NGINX_WORKER=""
    if [ "$case" = nginx-tls ]; then
        scripts/nginx_tls_peer.sh --cert "$OUT/cert/server.pem" --key "$OUT/cert/server.key" \
            --upstream "$gw_listen" --port "$PORT" --cpu 0 >"$OUT/$case-$run.nginx.log" 2>&1 &
        NGINX_PID=$!
        for _ in $(seq 1 100); do
            NGINX_WORKER=$(awk '/^nginx-tls-peer/ {print $5}' "$OUT/$case-$run.nginx.log")
            [ -n "$NGINX_WORKER" ] && break
            sleep 0.1
        done
        [ -n "$NGINX_WORKER" ] || { echo "nginx did not start: $(cat "$OUT/$case-$run.nginx.log")" >&2; exit 1; }
    fi
    wait_port
    sleep 1
    local rss0 slab0 rss1 slab1
    rss0=$(stack_rss); slab0=$(slab_kib)
    cp /proc/slabinfo "$OUT/$case-$run.before.slabinfo"
    taskset -c 1 "$BIN/wsgate-load" hold --url "$url" --conns "$CONNS" --procs "$PROCS" \
        --src-ips "$src" --hold "$HOLD" "${load_flags[@]}" --json >"$OUT/$case-$run.json" 2>"$OUT/$case-$run.load.log" &
    LOAD_PID=$!
    local deadline=$((SECONDS + 180))
    while [ "$(established)" -lt "$CONNS" ]; do
        if [ $SECONDS -gt $deadline ] || ! kill -0 "$LOAD_PID" 2>/dev/null; then
            echo "$case run $run: only $(established) of $CONNS connections opened" >&2
            cat "$OUT/$case-$run.load.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    sleep 3 # the last handshakes' buffers returned, the loop idle
    rss1=$(stack_rss); slab1=$(slab_kib)
    if [ -n "$NGINX_WORKER" ]; then
        echo "$case run $run: nginx worker $(rss_kib "$NGINX_WORKER") KiB, gateway $(rss_kib "$SERVER_PID") KiB" >&2
    fi
    cp /proc/slabinfo "$OUT/$case-$run.during.slabinfo"
    # Epoll items of the gateway (after the snapshot: reading /proc/PID/fd
    # allocates proc inodes).
    local fd
    for fd in /proc/"$SERVER_PID"/fd/*; do
        if [ "$(readlink "$fd")" = "anon_inode:[eventpoll]" ]; then
            echo "$case run $run: gateway epoll $(basename "$fd") watches $(grep -c '^tfd:' "/proc/$SERVER_PID/fdinfo/$(basename "$fd")") descriptors" >&2
        fi
    done
    wait "$LOAD_PID"; LOAD_PID=""
    if [ -n "$NGINX_PID" ]; then
        kill -TERM "$NGINX_PID"; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=""
    fi
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
    echo "$case $run $src $rss0 $rss1 $slab0 $slab1" >>"$OUT/runs.txt"
    printf '%s run %s (%s): RSS %s -> %s KiB, Slab %s -> %s KiB, load: %s\n' \
        "$case" "$run" "$src" "$rss0" "$rss1" "$slab0" "$slab1" "$(cat "$OUT/$case-$run.json")" >&2
}

: >"$OUT/runs.txt"
echo "# $(date -u +%FT%TZ) $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg), CONNS=$CONNS PROCS=$PROCS" | tee "$OUT/summary.md"
echo "# server: taskset -c 0 $BIN/wsgate --workers 1 [--ping-interval 0]; load: taskset -c 1 $BIN/wsgate-load hold --conns $CONNS --procs $PROCS --src-ips 127.0.R.2-127.0.R.5 --hold $HOLD" | tee -a "$OUT/summary.md"
# Alternate the cases within each run (A B A B), so drift hits them alike.
for run in $(seq 1 "$RUNS"); do
    for case in $CASES; do
        SRC_BASE=$(( $(echo "$CASES" | tr ' ' '\n' | grep -n "^$case\$" | cut -d: -f1) * 10 ))
        run_one "$case" "$run"
    done
done

python3 - "$OUT" "$CONNS" "$CASES" <<'EOF' | tee -a "$OUT/summary.md"
import statistics, sys, json, os
out, n, cases = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()

def slabinfo(path):
    caches = {}
    for line in open(path).read().splitlines()[2:]:
        f = line.split()
        caches[f[0]] = (int(f[1]), int(f[3]))  # active objects, object size
    return caches

runs = [l.split() for l in open(os.path.join(out, "runs.txt"))]
SERVER_SOCKET = ["TCP", "sock_inode_cache", "dentry", "filp", "eventpoll_epi", "ep_head",
                 "lsm_inode_cache", "lsm_file_cache"]
# What one TCP socket allocates from: the socket, its inode and dentry, the
# file, the epoll item; the client's port bind buckets.
SOCKET_CACHES = {"TCP", "sock_inode_cache", "dentry", "filp", "eventpoll_epi",
                 "eventpoll_pwq", "ep_head", "tcp_bind_bucket", "tcp_bind2_bucket",
                 "lsm_file_cache", "lsm_inode_cache"}
med = statistics.median
for case in cases:
    rs = [r for r in runs if r[0] == case]
    if not rs:
        continue
    rss = [(int(r[4]) - int(r[3])) * 1024 / n for r in rs]
    slab = [(int(r[6]) - int(r[5])) * 1024 / n / 2 for r in rs]
    per_cache = {}
    for r in rs:
        a = slabinfo(os.path.join(out, f"{case}-{r[1]}.before.slabinfo"))
        b = slabinfo(os.path.join(out, f"{case}-{r[1]}.during.slabinfo"))
        for name, (objs, size) in b.items():
            d = objs - a.get(name, (0, size))[0]
            per_cache.setdefault(name, []).append((d, size))
    print(f"\n## {case}: {n} connections, {len(rs)} runs (median; every run)\n")
    print("| figure | median | runs |")
    print("|---|---:|---|")
    print(f"| VmRSS delta per connection (gateway; nginx-tls: nginx worker + gateway) | {med(rss):.0f} B | {', '.join(f'{x:.0f}' for x in rss)} |")
    print(f"| kernel Slab delta per socket (pair / 2) | {med(slab):.0f} B | {', '.join(f'{x:.0f}' for x in slab)} |")
    print("\nCaches that grew by at least one object per 4 connections (objects per connection pair, median).")
    print("The sum counts the caches a socket allocates from; the others grew with")
    print("other processes' activity on this shared box and are shown, not counted.\n")
    print("| cache | objects / pair | object size | bytes / pair | bytes / socket |")
    print("|---|---:|---:|---:|---:|")
    total = 0
    def socket_cache(name):
        return name in SOCKET_CACHES or name.startswith(("kmalloc-", "skbuff"))
    for name, ds in sorted(per_cache.items(), key=lambda kv: -med(d * s for d, s in kv[1])):
        per = med(d for d, _ in ds) / n
        size = ds[0][1]
        if per < 0.25:
            continue
        mark = "" if socket_cache(name) else " (not counted)"
        if socket_cache(name):
            total += per * size
        print(f"| {name}{mark} | {per:.2f} | {size} | {per * size:.0f} | {per * size / 2:.0f} |")
    print(f"| **sum of socket caches** | | | {total:.0f} | **{total / 2:.0f}** |")
    # The gateway's side alone: what one accepted, epoll-registered socket
    # allocates (one object of each; the epoll item count is checked against
    # the server's epoll fdinfo below). Measured per pair must be >= 2 for
    # each, or the model is wrong.
    sizes = slabinfo(os.path.join(out, f"{case}-{rs[0][1]}.during.slabinfo"))
    print("\nThe gateway's side alone, one object of each per accepted socket:\n")
    print("| cache | object size | measured objects / pair |")
    print("|---|---:|---:|")
    server = 0
    for name in SERVER_SOCKET:
        if name not in sizes:
            continue
        size = sizes[name][1]
        server += size
        per = med(d for d, _ in per_cache.get(name, [(0, size)])) / n
        print(f"| {name} | {size} | {per:.2f} |")
    print(f"| **kernel per gateway socket** | **{server}** | |")
    loads = [json.load(open(os.path.join(out, f"{case}-{r[1]}.json"))) for r in rs]
    print(f"\nload: opened {[l['connections']['opened'] for l in loads]}, still open at the end "
          f"{[l['still_open'] for l in loads]}, failed {[l['connections']['failed'] for l in loads]}")
EOF
