#!/usr/bin/env bash
# nginx terminating TLS 1.3 in front of a plain wsgate: the peer that TLS
# figures are compared with (docs/density.md, docs/tls.md). Starts nginx in
# the foreground (master + one worker, pinned with --cpu), proxying HTTP and
# WebSocket (Upgrade) to UPSTREAM, until it is stopped (Ctrl-C, SIGTERM).
#
#   scripts/nginx_tls_peer.sh --cert server.pem --key server.key \
#       --upstream 127.0.0.1:8080 [--port 8443] [--cpu 0] [--tls12]
#
# Prints "nginx-tls-peer port PORT pid WORKER_PID" once the worker runs.
# TLS 1.3 only (1.2 too with --tls12), X25519, session tickets on (as
# nginx ships), a session cache off so that a resumption is a ticket.
set -euo pipefail
cert="" key="" upstream="" port="" cpu="" protocols="TLSv1.3"
while [ $# -gt 0 ]; do
    case "$1" in
        --cert) cert="$2"; shift 2 ;;
        --key) key="$2"; shift 2 ;;
        --upstream) upstream="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --cpu) cpu="$2"; shift 2 ;;
        --tls12) protocols="TLSv1.2 TLSv1.3"; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$cert" ] && [ -n "$key" ] && [ -n "$upstream" ] || {
    echo "usage: nginx_tls_peer.sh --cert FILE --key FILE --upstream HOST:PORT [--port N] [--cpu N] [--tls12]" >&2
    exit 2
}
nginx=/usr/sbin/nginx
[ -x "$nginx" ] || nginx="$(command -v nginx)" || { echo "nginx not found (apt-get install nginx-light)" >&2; exit 2; }
if [ -z "$port" ]; then
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
fi
dir="$(mktemp -d /tmp/wsgate-nginx-XXXXXX)"
cleanup() { [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null; sleep 0.2; rm -rf "$dir"; }
trap cleanup EXIT
trap 'exit 0' INT TERM
cert="$(realpath "$cert")" key="$(realpath "$key")"
affinity=""
[ -n "$cpu" ] && affinity="worker_cpu_affinity $(python3 -c "print(format(1 << $cpu, 'b'))");"
cat >"$dir/nginx.conf" <<CONF
daemon off;
master_process on;
worker_processes 1;
$affinity
worker_rlimit_nofile 20000;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 19000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    upstream wsgate { server $upstream; keepalive 64; }
    server {
        listen 127.0.0.1:$port ssl;
        ssl_certificate $cert;
        ssl_certificate_key $key;
        ssl_protocols $protocols;
        ssl_ecdh_curve X25519;
        ssl_session_tickets on;
        ssl_session_cache off;
        # For handshake measurements (openssl s_time -www): answered here.
        location = /tls-probe { return 200 "ok\n"; }
        location / {
            proxy_pass http://wsgate;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_buffering off;
        }
    }
}
CONF
"$nginx" -c "$dir/nginx.conf" -p "$dir" &
master=$!
for _ in $(seq 100); do
    worker="$(pgrep -P "$master" | head -1 || true)"
    [ -n "$worker" ] && break
    sleep 0.05
done
[ -n "${worker:-}" ] || { echo "nginx did not start: $(cat "$dir/error.log" 2>/dev/null)" >&2; exit 1; }
echo "nginx-tls-peer port $port pid $worker"
wait "$master"
