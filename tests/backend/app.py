#!/usr/bin/env python3
"""A test backend for wsgate's hooks (standard library only).

It answers every proxy hook (POST /connect, /refresh, /subscribe, /publish,
/rpc) in Centrifugo's proxy protocol and receives webhooks (POST /webhook),
with a behaviour that tests switch at run time, and records what it
received so that tests can assert on it.

    python3 tests/backend/app.py --port P --control-port Q --secret S

Prints "ready" on stdout once both ports listen. Hooks and webhooks are on
--port (HTTP/1.1 keep-alive); the control API is on --control-port, so that
its own connections are never counted:

    POST /set      {"hook": "subscribe", "mode": "error", "error": {...}, "count": 2}
                   the next `count` requests of that hook (every one when
                   absent) get this behaviour; then the one before it
    POST /reset    forget behaviours, records and counters
    GET  /log?hook=subscribe   what that hook received: [{"conn", "headers", "body", "signature_ok"?}]
    GET  /stats    {"connections", "requests": {hook: n}, "in_flight": {...}, "max_in_flight": {...}}

Modes: allow (the default answer below), result ({"result": b["result"]}),
error ({"error": b["error"]}), disconnect ({"disconnect": b["disconnect"]}),
status (HTTP b["status"], a small body), raw (HTTP b.get("status", 200) with
b["body"] as is), badjson (200, truncated JSON), huge (200, a valid JSON
answer of b["size"] bytes), slow (wait b["delay_ms"], then b.get("then") or
allow), close (drop the connection without answering), hang (never answer,
until the connection closes or the process ends).

Default answers: connect {"result":{"user": data.user or "u-<client>"}},
refresh {"result":{"expire_at": now + 3600}}, subscribe and publish
{"result":{}}, rpc {"result":{"data":{"method": m, "echo": data}}},
webhook 200 {} once its X-Wsgate-Signature (hex HMAC-SHA256 of the body
under --secret) checks; a bad signature gets 401 (recorded too).
"""

import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

HOOKS = ("connect", "refresh", "subscribe", "publish", "rpc", "webhook")

lock = threading.Lock()
state = {}


def reset():
    with lock:
        state.clear()
        state.update(
            behaviours={h: [] for h in HOOKS},
            log={h: [] for h in HOOKS},
            requests={h: 0 for h in HOOKS},
            in_flight={h: 0 for h in HOOKS},
            max_in_flight={h: 0 for h in HOOKS},
            connections=0,
        )


reset()
SECRET = b""


def take_behaviour(hook):
    """The behaviour for this request; counted ones are used up."""
    with lock:
        stack = state["behaviours"][hook]
        while stack:
            b = stack[-1]
            if "count" not in b:
                return b
            if b["count"] > 0:
                b["count"] -= 1
                if b["count"] == 0:
                    stack.pop()
                return b
            stack.pop()
        return {"mode": "allow"}


def default_answer(hook, body):
    if not isinstance(body, dict):
        body = {}
    if hook == "connect":
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        return {"result": {"user": data.get("user", "u-" + str(body.get("client", "")))}}
    if hook == "refresh":
        return {"result": {"expire_at": int(time.time()) + 3600}}
    if hook == "rpc":
        return {"result": {"data": {"method": body.get("method"), "echo": body.get("data")}}}
    return {"result": {}}


class Hooks(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes: without TCP_NODELAY the
    # second waits for the client's delayed ACK (40 ms a call).
    disable_nagle_algorithm = True

    def setup(self):
        super().setup()
        with lock:
            state["connections"] += 1
            self.conn = state["connections"]

    def log_message(self, *args):
        pass

    def send(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_POST(self):
        hook = self.path.strip("/").split("?")[0]
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        if hook not in HOOKS:
            self.send(404, {"error": "no such hook"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = {
            "conn": self.conn,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        if hook == "webhook":
            want = hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
            record["signature_ok"] = hmac.compare_digest(
                want, self.headers.get("X-Wsgate-Signature", "")
            )
        with lock:
            state["requests"][hook] += 1
            state["log"][hook].append(record)
            state["in_flight"][hook] += 1
            state["max_in_flight"][hook] = max(
                state["max_in_flight"][hook], state["in_flight"][hook]
            )
        try:
            self.answer(hook, body, record, take_behaviour(hook))
        finally:
            with lock:
                state["in_flight"][hook] -= 1

    def answer(self, hook, body, record, b):
        mode = b.get("mode", "allow")
        if mode == "slow":
            time.sleep(b.get("delay_ms", 1000) / 1000.0)
            b = b.get("then") or {"mode": "allow"}
            mode = b.get("mode", "allow")
        if mode == "allow":
            if hook == "webhook":
                self.send(200 if record["signature_ok"] else 401, {})
            else:
                self.send(200, default_answer(hook, body))
        elif mode in ("result", "error", "disconnect"):
            self.send(200, {mode: b.get(mode, {})})
        elif mode == "status":
            self.send(b.get("status", 500), {"error": "status %d" % b.get("status", 500)})
        elif mode == "raw":
            self.send(b.get("status", 200), b.get("body", "").encode())
        elif mode == "badjson":
            self.send(200, b'{"result": {"user": "u1"')
        elif mode == "huge":
            size = b.get("size", 2 << 20)
            pad = "x" * max(0, size - 40)
            self.send(200, json.dumps({"result": {"data": pad}}).encode())
        elif mode == "close":
            self.close_connection = True
            self.connection.shutdown(2)
        elif mode == "hang":
            while self.rfile.read(1):
                pass
        else:
            self.send(500, {"error": "unknown mode " + mode})


class Control(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        with lock:
            if url.path == "/log":
                self.send(200, state["log"].get(q.get("hook", [""])[0], []))
            elif url.path == "/stats":
                self.send(
                    200,
                    {
                        k: state[k]
                        for k in ("connections", "requests", "in_flight", "max_in_flight")
                    },
                )
            else:
                self.send(404, {})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/set":
            if body.get("hook") not in HOOKS:
                self.send(400, {"error": "hook"})
                return
            with lock:
                state["behaviours"][body["hook"]].append(body)
            self.send(200, {"ok": True})
        elif self.path == "/reset":
            reset()
            self.send(200, {"ok": True})
        else:
            self.send(404, {})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # A client that gave up (its timeout) closed the connection before
        # the answer: expected in these tests, not worth a traceback.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    global SECRET
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--secret", default="")
    args = ap.parse_args()
    SECRET = args.secret.encode()
    hooks = Server(("127.0.0.1", args.port), Hooks)
    control = Server(("127.0.0.1", args.control_port), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print("ready", flush=True)
    hooks.serve_forever()


if __name__ == "__main__":
    main()
