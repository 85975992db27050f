#!/usr/bin/env python3
"""Figures of issue 15's proxies (docs/hooks.md, "Figures").

Starts a backend and two release gateways on loopback: one with the
subscribe and rpc proxies, one with the connect proxy too. The backend is
nginx answering each hook with a constant JSON body from memory
(`--backend nginx`, the default: the fastest honest HTTP backend on this
box, so that the figures are the gateway's and the HTTP round trip's, not
an application's), or a threaded Python `http.server` (`--backend python`,
keep-alive, TCP_NODELAY). Then, in rounds that alternate the cases (the box
is shared), one client measures:

- latency of a plain subscribe + unsubscribe, a proxied one, an rpc and a
  ping (p50 / p99 per case; medians over rounds);
- gateway CPU per op: utime + stime of the gateway process
  (/proc/PID/stat) over a case, divided by its ops;
- connections per second (sequential upgrade + close) to /ws without and
  with the connect proxy, and the gateway CPU per connection.

    cargo build --release --bin wsgate
    python3 scripts/bench_hooks.py [--ops 400] [--conns 300] [--rounds 3] [--backend nginx]

Every loop is bounded in count and time (`--budget` seconds in all); every
process is stopped at the end.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attack_memory import ws_connect, ws_frame, ws_read_message  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        hook = self.path.strip("/")
        if hook == "connect":
            answer = {"result": {"user": "u" + body["client"][-6:]}}
        elif hook == "rpc":
            answer = {"result": {"data": body.get("data")}}
        else:
            answer = {"result": {}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  tcp_nodelay on;
  server {{
    listen 127.0.0.1:{port};
    default_type application/json;
    location = /connect {{ return 200 '{{"result":{{"user":"bench"}}}}'; }}
    location = /rpc {{ return 200 '{{"result":{{"data":null}}}}'; }}
    location = /subscribe {{ return 200 '{{"result":{{}}}}'; }}
  }}
}}
"""


def start_nginx():
    """nginx answering every hook from memory; returns (process, url, dir)."""
    port = free_port()
    d = tempfile.mkdtemp(prefix="bench_hooks_nginx_")
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(d=d, port=port))
    p = subprocess.Popen(["nginx", "-p", d, "-e", os.path.join(d, "error.log"), "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, f"http://127.0.0.1:{port}", d
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit(f"nginx did not start: see {d}/error.log")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_gateway(binary, backend, connect):
    port = free_port()
    conf = f"/tmp/bench_hooks_{port}.toml"
    # The proxies in the file: a namespace's subscribe_proxy is checked
    # against proxy.subscribe when the file is read.
    with open(conf, "w") as f:
        f.write(f'[proxy]\nsubscribe = "{backend}/subscribe"\nrpc = "{backend}/rpc"\n')
        if connect:
            f.write(f'connect = "{backend}/connect"\n')
        # One client subscribes thousands of times a second here.
        f.write('\n[limits]\nchannel_rate = 0\n')
        f.write('\n[namespaces.px]\nsubscribe_proxy = true\n')
    args = [binary, "-c", conf, "--listen", f"127.0.0.1:{port}", "--workers", "1"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return p, ("127.0.0.1", port)
            except OSError:
                time.sleep(0.05)
        p.kill()
        p.wait()
        raise SystemExit("gateway did not start")
    finally:
        os.remove(conf)  # read at start


class Ws:
    def __init__(self, addr, connect_proxy):
        self.s, self.buf = ws_connect(addr, "/ws")
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.n = 0
        # The connect proxy's `connected` message comes first.
        if connect_proxy:
            self.read()

    def read(self):
        _, payload, self.buf = ws_read_message(self.s, self.buf)
        return json.loads(payload)

    def call(self, op):
        self.n += 1
        op["id"] = self.n
        self.s.sendall(ws_frame(json.dumps(op)))
        while True:
            m = self.read()
            if m.get("id") == self.n:
                if "error" in m:
                    raise SystemExit(f"error reply: {m}")
                return m


def case(ws, name, ops):
    """Latencies (ms) of `ops` round trips of case `name`."""
    lat = []
    for i in range(ops):
        t0 = time.perf_counter()
        if name == "ping":
            ws.call({"op": "ping"})
        elif name == "rpc":
            ws.call({"op": "rpc", "method": "m", "data": i})
        else:
            ch = ("px:" if name == "proxied subscribe" else "plain:") + str(i % 50)
            ws.call({"op": "subscribe", "channel": ch})
            ws.call({"op": "unsubscribe", "channel": ch})
        lat.append((time.perf_counter() - t0) * 1000)
    return lat


def conns_per_s(addr, n, pid):
    """Sequential connections per second, and gateway CPU µs per connection."""
    before = cpu_s(pid)
    t0 = time.perf_counter()
    for _ in range(n):
        s, _ = ws_connect(addr, "/ws")
        s.close()
    took = time.perf_counter() - t0
    return n / took, (cpu_s(pid) - before) / n * 1e6


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/wsgate")
    ap.add_argument("--ops", type=int, default=400)
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backend", choices=["nginx", "python"], default="nginx")
    ap.add_argument("--budget", type=float, default=600, help="seconds for everything")
    a = ap.parse_args()
    deadline = time.monotonic() + a.budget
    load0 = os.getloadavg()
    server = nginx = None
    if a.backend == "python":
        bport = free_port()
        server = ThreadingHTTPServer(("127.0.0.1", bport), Backend)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        backend = f"http://127.0.0.1:{bport}"
    else:
        nginx, backend, ndir = start_nginx()
    cases = ["ping", "plain subscribe", "proxied subscribe", "rpc"]
    res = {c: {"p50": [], "p99": [], "cpu_us": []} for c in cases}
    cps = {"without connect proxy": [], "with connect proxy": []}
    cpc = {"without connect proxy": [], "with connect proxy": []}
    gateways = []
    try:
        # Inside the try: a gateway that does not start stops the rest.
        plain, plain_addr = start_gateway(a.binary, backend, False)
        gateways.append(plain)
        judged, judged_addr = start_gateway(a.binary, backend, True)
        gateways.append(judged)
        ws = Ws(plain_addr, False)
        for r in range(a.rounds):
            if time.monotonic() > deadline:
                print(f"budget of {a.budget} s spent after {r} rounds", file=sys.stderr)
                break
            order = cases if r % 2 == 0 else list(reversed(cases))
            for c in order:
                before = cpu_s(plain.pid)
                lat = case(ws, c, a.ops)
                cpu = cpu_s(plain.pid) - before
                ops = a.ops  # a subscribe case's op is a subscribe + unsubscribe pair
                res[c]["p50"].append(pct(lat, 0.5))
                res[c]["p99"].append(pct(lat, 0.99))
                res[c]["cpu_us"].append(cpu / ops * 1e6)
            pair = (("without connect proxy", plain_addr, plain.pid),
                    ("with connect proxy", judged_addr, judged.pid))
            for name, addr, pid in pair[:: 1 if r % 2 == 0 else -1]:
                rate, us = conns_per_s(addr, a.conns, pid)
                cps[name].append(rate)
                cpc[name].append(us)
    finally:
        for g in gateways:
            g.kill()
            g.wait()
        if server:
            server.shutdown()
        if nginx:
            nginx.kill()
            nginx.wait()
            shutil.rmtree(ndir, ignore_errors=True)
    load1 = os.getloadavg()
    print(f"backend {a.backend}; rounds {len(res['ping']['p50'])}, {a.ops} ops per case and round, "
          f"one client, 1 worker, loopback; load average {load0[0]:.1f} before, {load1[0]:.1f} after")
    print("| case | p50 ms | p99 ms | gateway CPU µs/op (subscribe: the pair) |")
    print("|---|---|---|---|")
    for c in cases:
        m = {k: statistics.median(v) for k, v in res[c].items()}
        print(f"| {c} | {m['p50']:.3f} | {m['p99']:.3f} | {m['cpu_us']:.1f} |")
    for name, v in cps.items():
        print(f"connections/s {name}: {statistics.median(v):.0f} "
              f"(rounds: {', '.join(f'{x:.0f}' for x in v)}); "
              f"gateway CPU {statistics.median(cpc[name]):.0f} µs per connection")


if __name__ == "__main__":
    main()
