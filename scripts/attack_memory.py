#!/usr/bin/env python3
"""Hostile patterns against the gateway's memory and fairness (issue 12,
items 7-9), with a bystander measured alongside. Python 3, standard library
only (raw sockets: the WebSocket framing needed here is a few lines).

    scripts/attack_memory.py MODE --addr 127.0.0.1:8080 --pid PID [options]

MODE:
  churn    CONNS /ws connections subscribe to new channel names and leave
           them, as fast as they can (pipelined batches), for DURATION.
  replay   First fill CHANNELS channels with HISTORY_MIB of history each
           (through POST /api/publish); then hold, without ever reading,
           POLLS long-polls, WS WebSocket connections and SSE streams that
           each ask to replay every channel from offset 0, for DURATION.
  history  One publisher fills CHANNELS channels with 100 KiB
           publications as fast as the API answers, for DURATION.

Alongside, a bystander /echo client sends a message every 20 ms and times
each round trip. The gateway's VmRSS (/proc/PID/status) is sampled every
100 ms. After the attack stops (every attacking socket closed), the script
waits SETTLE seconds (the default timeouts.trim_memory is 10 s) and reads
VmRSS again. It prints one JSON object:

  {"mode", "rss_before_mib", "rss_peak_mib", "rss_after_mib",
   "echo_count", "echo_worst_ms", "echo_p99_ms", "attack": {...}}

Every loop is bounded in count and time; every socket is closed at the end.
"""

import argparse
import base64
import json
import multiprocessing
import os
import socket
import struct
import sys
import threading
import time

# --------------------------------------------------------------- helpers --


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def http(addr, method, target, body=b"", headers=()):
    """One request on a fresh connection; returns (status, body)."""
    s = socket.create_connection(addr, timeout=30)
    try:
        head = f"{method} {target} HTTP/1.1\r\nHost: attack\r\nConnection: close\r\n"
        for h in headers:
            head += h + "\r\n"
        head += f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n\r\n"
        s.sendall(head.encode() + body)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    return status, rest


def ws_connect(addr, path, timeout=30):
    s = socket.create_connection(addr, timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: attack\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("closed during the handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise OSError(f"handshake refused: {head[:40]!r}")
    return s, rest


def ws_frame(text):
    """A masked text frame (the mask is zero: XOR with it is the identity,
    and a client may pick any mask)."""
    payload = text.encode() if isinstance(text, str) else text
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def ws_read_message(s, buf):
    """Read one unmasked server frame; returns (opcode, payload, buf)."""
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126 and len(buf) >= 4:
                n = struct.unpack("!H", buf[2:4])[0]
                off = 4
            elif n == 127 and len(buf) >= 10:
                n = struct.unpack("!Q", buf[2:10])[0]
                off = 10
            if n < 126 or off > 2:
                if len(buf) >= off + n:
                    return buf[0] & 0x0F, buf[off : off + n], buf[off + n :]
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("closed")
        buf += chunk


def token(positions):
    raw = json.dumps(positions, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# ------------------------------------------------------------- bystander --


class Bystander(multiprocessing.Process):
    """An /echo client in its own process (the attack's threads would hold
    the interpreter lock against it): one message every 20 ms, each round
    trip timed; the times come back through a pipe."""

    def __init__(self, addr):
        super().__init__(daemon=True)
        self.addr = addr
        self.stop = multiprocessing.Event()
        self.results, self._send = multiprocessing.Pipe(duplex=False)
        self.rtts = []
        self.error = None

    def collect(self):
        """After `stop` is set: the round trips and the error, if any."""
        if self.results.poll(30):
            self.rtts, self.error = self.results.recv()
        else:
            self.error = "the bystander did not report"
        self.join(5)

    def run(self):
        try:
            self._run()
        except Exception as e:  # reported in the output
            self.error = repr(e)
        self._send.send((self.rtts, self.error))

    def _run(self):
        s, buf = ws_connect(self.addr, "/echo")
        n = 0
        while not self.stop.is_set():
            msg = f"bystander #{n}"
            t0 = time.monotonic()
            s.sendall(ws_frame(msg))
            while True:
                op, payload, buf = ws_read_message(s, buf)
                if op == 0x1:
                    break
            if payload.decode() != msg:
                raise AssertionError(f"echo #{n} differs: {payload[:40]!r}")
            self.rtts.append(time.monotonic() - t0)
            n += 1
            time.sleep(0.02)
        s.close()


# --------------------------------------------------------------- attacks --


def churn(args, stop, stats):
    """Subscribe and leave new channel names, pipelined, as fast as the
    connection takes them; replies are read and discarded."""
    conns = []
    for i in range(args.conns):
        s, _ = ws_connect(args.addr, "/ws")
        s.setblocking(False)
        conns.append(s)
    seq = 0
    batch = 200
    sent = 0
    while not stop.is_set():
        for s in conns:
            frames = []
            for _ in range(batch):
                ch = f"churn-{os.getpid()}-{seq}"
                seq += 1
                frames.append(ws_frame(f'{{"op":"subscribe","channel":"{ch}"}}'))
                frames.append(ws_frame(f'{{"op":"unsubscribe","channel":"{ch}"}}'))
            data = b"".join(frames)
            view = memoryview(data)
            deadline = time.monotonic() + 5
            while view and not stop.is_set() and time.monotonic() < deadline:
                try:
                    n = s.send(view)
                    view = view[n:]
                except BlockingIOError:
                    pass
                try:
                    while s.recv(1 << 20):
                        pass
                except BlockingIOError:
                    pass
            sent += batch
    stats["subscribes_sent"] = sent
    for s in conns:
        s.close()


def replay_setup(args):
    """CHANNELS channels of HISTORY_MIB each; returns their positions."""
    per = 100 << 10
    pad = "h" * (per - 64)
    count = max(1, (args.history_mib << 20) // per)
    positions = []
    for c in range(args.channels):
        ch = f"replay-{c}"
        epoch = None
        for k in range(0, count, 8):
            items = [
                {"channel": ch, "data": {"n": k + j, "pad": pad}}
                for j in range(min(8, count - k))
            ]
            status, body = http(args.addr, "POST", "/api/publish", json.dumps(items).encode())
            if status != 200:
                raise SystemExit(f"publish failed: {status} {body[:200]!r}")
            epoch = json.loads(body)[0]["epoch"]
        positions.append([ch, epoch, 0])
    return positions


def replay(args, stop, stats, positions):
    """Clients that ask to replay every channel and never read."""
    socks = []
    names = "&".join(f"channel={p[0]}" for p in positions)
    tok = token(positions)
    for _ in range(args.polls):
        s = socket.create_connection(args.addr, timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /poll?{names}&cursor={tok}&wait=30 HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        socks.append(s)
    for _ in range(args.sse):
        s = socket.create_connection(args.addr, timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /sse?{names} HTTP/1.1\r\nHost: a\r\nLast-Event-ID: {tok}\r\n\r\n".encode())
        socks.append(s)
    for _ in range(args.ws):
        s, _ = ws_connect(args.addr, "/ws")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ops = b"".join(
            ws_frame(
                json.dumps(
                    {"op": "subscribe", "channel": p[0], "since": {"epoch": p[1], "offset": 0}}
                )
            )
            for p in positions
        )
        s.sendall(ops)
        socks.append(s)
    stats["clients"] = len(socks)
    stop.wait()
    for s in socks:
        s.close()


def history(args, stop, stats):
    """Big publications into many channels as fast as the API answers."""
    pad = "p" * ((100 << 10) - 64)
    n = 0
    while not stop.is_set():
        items = [
            {"channel": f"flood-{(n + j) % args.channels}", "data": {"pad": pad}}
            for j in range(8)
        ]
        status, _ = http(args.addr, "POST", "/api/publish", json.dumps(items).encode())
        if status != 200:
            stats["refused"] = stats.get("refused", 0) + 1
        n += 8
    stats["publications"] = n
    stats["bytes_mib"] = round(n * 100 / 1024, 1)


# ------------------------------------------------------------------ main --


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["churn", "replay", "history"])
    p.add_argument("--addr", default="127.0.0.1:8080")
    p.add_argument("--pid", type=int, required=True, help="the gateway's process id")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=15.0)
    p.add_argument("--conns", type=int, default=4, help="churn: connections")
    p.add_argument("--channels", type=int, help="replay: 40, history: 200")
    p.add_argument("--history-mib", type=int, default=3, help="replay: history per channel")
    p.add_argument("--polls", type=int, default=3)
    p.add_argument("--ws", type=int, default=3)
    p.add_argument("--sse", type=int, default=3)
    args = p.parse_args()
    host, port = args.addr.rsplit(":", 1)
    args.addr = (host, int(port))
    args.duration = min(args.duration, 600.0)
    if args.channels is None:
        args.channels = 200 if args.mode == "history" else 40

    stats = {}
    positions = replay_setup(args) if args.mode == "replay" else None
    rss_before = rss_kib(args.pid)
    bystander = Bystander(args.addr)
    bystander.start()
    time.sleep(0.5)
    stop = threading.Event()
    work = {
        "churn": lambda: churn(args, stop, stats),
        "replay": lambda: replay(args, stop, stats, positions),
        "history": lambda: history(args, stop, stats),
    }[args.mode]
    attacker = threading.Thread(target=work, daemon=True)
    attacker.start()
    peak = rss_before
    end = time.monotonic() + args.duration
    while time.monotonic() < end:
        peak = max(peak, rss_kib(args.pid))
        time.sleep(0.1)
    stop.set()
    attacker.join(30)
    bystander.stop.set()
    bystander.collect()
    settle_end = time.monotonic() + args.settle
    while time.monotonic() < settle_end:
        peak = max(peak, rss_kib(args.pid))
        time.sleep(0.1)
    rtts = sorted(bystander.rtts)
    out = {
        "mode": args.mode,
        "rss_before_mib": round(rss_before / 1024, 1),
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_after_mib": round(rss_kib(args.pid) / 1024, 1),
        "echo_count": len(rtts),
        "echo_worst_ms": round(rtts[-1] * 1000, 1) if rtts else None,
        "echo_p99_ms": round(rtts[int(len(rtts) * 0.99)] * 1000, 1) if rtts else None,
        "bystander_error": bystander.error,
        "attack": stats,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
