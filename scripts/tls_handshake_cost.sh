#!/usr/bin/env bash
# Server CPU per TLS 1.3 handshake (ECDSA P-256 certificate, X25519), full
# and resumed (session ticket), measured with `openssl s_time` from core 1
# while the server runs on core 0: the server's utime + stime around each
# run, divided by the handshakes s_time counted. Rounds alternate between
# the servers given (A B A B ...), as docs/MEASURING asks.
#
#   scripts/tls_handshake_cost.sh [--seconds 5] [--rounds 3] [--wsgate PORT:PID]
#
# Without --wsgate it measures nginx alone (scripts/nginx_tls_peer.sh,
# started here on core 0, with a test certificate from
# scripts/make_test_cert.sh). Part 2 of issue 14 adds the gateway with
# --wsgate PORT:PID (a wsgate started with --tls-cert/--tls-key on core 0).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=5 rounds=3 wsgate=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --wsgate) wsgate="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
work="$(mktemp -d /tmp/wsgate-hs-XXXXXX)"
peer_pid=""
cleanup() { [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
scripts/make_test_cert.sh "$work/cert" >/dev/null
# nginx needs an upstream only for requests; s_time sends none.
taskset -c 0 scripts/nginx_tls_peer.sh --cert "$work/cert/server.pem" --key "$work/cert/server.key" \
    --upstream 127.0.0.1:9 --cpu 0 >"$work/nginx.out" 2>&1 &
peer_pid=$!
for _ in $(seq 100); do grep -q '^nginx-tls-peer' "$work/nginx.out" && break; sleep 0.05; done
read -r _ _ nginx_port _ nginx_pid < <(grep '^nginx-tls-peer' "$work/nginx.out")

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# One run: prints "handshakes µs_per_handshake".
measure() { # port pid mode(-new|-reuse)
    local port=$1 pid=$2 mode=$3 t0 t1 out n
    # A resumption needs the ticket, which TLS 1.3 sends after the
    # handshake: s_time reads it only if it makes a request (-www), so
    # the resumed runs include one small request (answered by the peer).
    local www=()
    [ "$mode" = -reuse ] && www=(-www /tls-probe)
    t0=$(cpu_ticks "$pid")
    out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$port" "$mode" "${www[@]}" -time "$seconds" \
        -CAfile "$work/cert/ca.pem" -tls1_3 2>/dev/null | grep 'connections in' | tail -1)
    t1=$(cpu_ticks "$pid")
    n=$(echo "$out" | awk '{print $1}')
    awk -v n="$n" -v d=$((t1 - t0)) 'BEGIN { printf "%d %.0f\n", n, (n > 0 ? d * 10000 / n : 0) }'
}
servers=("nginx:$nginx_port:$nginx_pid")
[ -n "$wsgate" ] && servers+=("wsgate:${wsgate%%:*}:${wsgate##*:}")
echo "server  mode    handshakes  µs server CPU per handshake   (load $(cut -d' ' -f1-3 /proc/loadavg))"
for r in $(seq "$rounds"); do
    for s in "${servers[@]}"; do
        IFS=: read -r name port pid <<<"$s"
        for mode in -new -reuse; do
            read -r n us < <(measure "$port" "$pid" "$mode")
            printf '%-7s %-7s %10s  %s   (round %s)\n' "$name" "${mode#-}" "$n" "$us" "$r"
        done
    done
done
