#!/usr/bin/env python3
"""Peer-client check of the gateway's `/ws` protocol, using `websockets`.

    python3 tests/python/gateway_client.py ws://127.0.0.1:PORT/ws CHANNEL

Driven by a test over stdin/stdout, one line each way per step:

1. subscribes to CHANNEL, prints `subscribed EPOCH OFFSET`;
2. receives 100 publications (the test publishes them), checks offsets
   1..=100 in order with data {"n": offset}, closes cleanly, prints `closed`;
3. waits for a line `published` on stdin (the test published 100 more);
4. reconnects, subscribes with since {EPOCH, 100}, checks the reply says
   recovered:true at offset 200, then receives exactly offsets 101..=200 in
   order, and nothing else before the reply to a ping op; prints `ok`.

Exits 0 on success; prints `FAIL: ...` to stderr and exits 1 otherwise (2
on bad usage). Integration tests run it with $WSGATE_PYTHON.
"""

from __future__ import annotations

import json
import sys

from websockets.frames import CloseCode
from websockets.sync.client import connect

TIMEOUT = 15.0
COUNT = 100


def say(line: str) -> None:
    print(line, flush=True)


def recv_json(ws) -> dict:
    try:
        msg = ws.recv(timeout=TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"no message within {TIMEOUT}s")
    if not isinstance(msg, str):
        raise AssertionError(f"expected a text message, got {msg!r:.100}")
    return json.loads(msg)


def call(ws, op: dict) -> dict:
    """Send an op and return its reply; nothing may arrive before it."""
    ws.send(json.dumps(op))
    reply = recv_json(ws)
    if reply.get("id") != op["id"]:
        raise AssertionError(f"expected the reply to {op}, got {reply}")
    return reply


def expect_publications(ws, channel: str, first: int, last: int) -> None:
    for offset in range(first, last + 1):
        m = recv_json(ws)
        want = {"channel": channel, "offset": offset, "data": {"n": offset}}
        if m != want:
            raise AssertionError(f"expected {want}, got {m}")


def open_ws(url: str):
    return connect(url, open_timeout=TIMEOUT, close_timeout=TIMEOUT, compression=None)


def close_cleanly(ws) -> None:
    ws.close(CloseCode.NORMAL_CLOSURE, "bye")
    proto = ws.protocol
    if proto.close_rcvd is None or proto.close_rcvd.code != 1000:
        raise AssertionError(f"server did not answer our close with 1000: {proto.close_rcvd!r}")


def run(url: str, channel: str) -> None:
    with open_ws(url) as ws:
        r = call(ws, {"id": 1, "op": "subscribe", "channel": channel})
        if r.get("ok") is not True or r.get("channel") != channel:
            raise AssertionError(f"subscribe failed: {r}")
        epoch, offset = r["epoch"], r["offset"]
        if offset != 0 or "recovered" in r:
            raise AssertionError(f"fresh channel expected: {r}")
        say(f"subscribed {epoch} {offset}")
        expect_publications(ws, channel, 1, COUNT)
        close_cleanly(ws)
    say("closed")

    line = sys.stdin.readline().strip()
    if line != "published":
        raise AssertionError(f"expected `published` from the test, got {line!r}")

    with open_ws(url) as ws:
        r = call(
            ws,
            {
                "id": 2,
                "op": "subscribe",
                "channel": channel,
                "since": {"epoch": epoch, "offset": COUNT},
            },
        )
        want = {
            "id": 2,
            "ok": True,
            "channel": channel,
            "epoch": epoch,
            "offset": 2 * COUNT,
            "recovered": True,
        }
        if r != want:
            raise AssertionError(f"expected {want}, got {r}")
        expect_publications(ws, channel, COUNT + 1, 2 * COUNT)
        pong = call(ws, {"id": 3, "op": "ping"})
        if pong != {"id": 3, "ok": True, "pong": True}:
            raise AssertionError(f"expected only the pong after the replay, got {pong}")
        close_cleanly(ws)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} ws://HOST:PORT/ws CHANNEL", file=sys.stderr)
        return 2
    try:
        run(argv[1], argv[2])
    except Exception as e:  # mismatch, refused, closed early, bad JSON...
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    say("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
