#!/usr/bin/env python3
"""An echo client for scripts/bench_handoff.sh: one WebSocket on /echo,
a message every `--every-ms` (default 1 ms), each echo awaited before the
next; records the longest time between two echoes (the pause a client
sees across a handoff). Told to reconnect (close 4000) or dropped, it
reconnects at once and the time until its next echo counts in the pause.
Standard library only (raw socket, RFC 6455 client frames). Bounded:
`--duration` seconds, then it prints one JSON object and exits.
"""

import argparse
import base64
import json
import os
import socket
import struct
import time


def connect(host, port, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /echo HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(4096)
        if not b:
            raise ConnectionError("closed during the handshake")
        head += b
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n")[0].decode(errors="replace"))
    return s, head.split(b"\r\n\r\n", 1)[1]


def frame(payload):
    # A client frame is masked (RFC 6455 §5.3); payloads here are < 126 bytes.
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def read_frame(s, buf):
    """(opcode, payload, rest of buf)."""
    while True:
        if len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    n = None
                else:
                    n, off = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    n = None
                else:
                    n, off = struct.unpack(">Q", buf[2:10])[0], 10
            if n is not None and len(buf) >= off + n:
                return buf[0] & 0x0F, buf[off : off + n], buf[off + n :]
        b = s.recv(65536)
        if not b:
            raise ConnectionError("connection closed")
        buf += b


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--every-ms", type=float, default=1.0)
    a = ap.parse_args()
    end = time.monotonic() + a.duration
    out = {"echoes": 0, "max_gap_ms": 0.0, "reconnects": 0, "close_codes": {}, "errors": {}}
    s, buf = None, b""
    last = None
    i = 0
    while time.monotonic() < end:
        try:
            if s is None:
                s, buf = connect(a.host, a.port, 10)
            i += 1
            msg = f"p{i}".encode()
            s.sendall(frame(msg))
            while True:
                op, payload, buf = read_frame(s, buf)
                if op == 0x8:
                    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                    out["close_codes"][str(code)] = out["close_codes"].get(str(code), 0) + 1
                    raise ConnectionError(f"close {code}")
                if op == 0x1 and payload == msg:
                    break
            now = time.monotonic()
            if last is not None:
                out["max_gap_ms"] = max(out["max_gap_ms"], (now - last) * 1000)
            last = now
            out["echoes"] += 1
            time.sleep(a.every_ms / 1000)
        except (OSError, ConnectionError) as e:
            why = str(e).split(":")[0][:60]
            if not why.startswith("close"):
                out["errors"][why] = out["errors"].get(why, 0) + 1
            if s is not None:
                s.close()
            s, buf = None, b""
            out["reconnects"] += 1
            time.sleep(0.001)
    if s is not None:
        s.close()
    out["max_gap_ms"] = round(out["max_gap_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
