#!/usr/bin/env python3
"""Peer-client check of Fossil deltas over `/ws`, using `websockets` and a
Fossil apply of its own (below, from fossil-scm.org's delta_format.wiki).

    python3 tests/python/delta_client.py ws://127.0.0.1:PORT/ws CHANNEL COUNT

Driven by a test over stdin/stdout:

1. connects twice (permessage-deflate offered, as `websockets` does): a
   delta subscriber (`"delta":"fossil"`, whose reply must say
   `"delta":true`) and a bystander without deltas; prints `subscribed`;
2. receives COUNT publications on each (the test publishes them): the
   bystander's are whole; the delta subscriber's first is whole and every
   later one a delta (`"delta":true`, `data` a JSON string), which it
   applies to the previous publication's data bytes; every offset's data
   bytes must equal the bystander's, byte for byte;
3. prints `ok DELTAS WHOLE DELTA_BYTES BYSTANDER_BYTES` (message payload
   bytes as received, after any decompression) and closes both.

Exits 0 on success; prints `FAIL: ...` to stderr and exits 1 otherwise.
"""

from __future__ import annotations

import json
import sys

from websockets.sync.client import connect

TIMEOUT = 15.0
B64 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~"
DIGIT = {c: i for i, c in enumerate(B64)}


def get_int(d: bytes, i: int) -> tuple[int, int]:
    start, v = i, 0
    while i < len(d) and d[i] in DIGIT:
        v = v * 64 + DIGIT[d[i]]
        i += 1
    if i == start:
        raise AssertionError(f"delta: no number at {i}")
    return v, i


def checksum(b: bytes) -> int:
    """The sum of the big-endian 32-bit words, the last padded with zeros."""
    pad = b + b"\0" * (-len(b) % 4)
    return sum(int.from_bytes(pad[k : k + 4], "big") for k in range(0, len(pad), 4)) & 0xFFFFFFFF


def fossil_apply(src: bytes, delta: bytes) -> bytes:
    size, i = get_int(delta, 0)
    if delta[i : i + 1] != b"\n":
        raise AssertionError("delta: size not followed by a newline")
    i += 1
    out = bytearray()
    while i < len(delta):
        cnt, i = get_int(delta, i)
        op, i = delta[i : i + 1], i + 1
        if op == b"@":
            off, i = get_int(delta, i)
            if delta[i : i + 1] != b",":
                raise AssertionError("delta: copy without ','")
            i += 1
            if off + cnt > len(src):
                raise AssertionError("delta: copy outside the source")
            out += src[off : off + cnt]
        elif op == b":":
            if i + cnt > len(delta):
                raise AssertionError("delta: insert past the end")
            out += delta[i : i + cnt]
            i += cnt
        elif op == b";":
            if i != len(delta) or len(out) != size or checksum(bytes(out)) != cnt:
                raise AssertionError("delta: bad size, checksum or trailing bytes")
            return bytes(out)
        else:
            raise AssertionError(f"delta: unknown op {op!r}")
    raise AssertionError("delta: no checksum")


def data_bytes(text: str) -> bytes:
    """A whole publication's `data`, as it stands in the frame's text."""
    raw = text.encode()
    start = raw.index(b',"data":') + len(b',"data":')
    if not raw.endswith(b"}"):
        raise AssertionError(f"not a publication: {text:.100}")
    return raw[start:-1]


def recv_text(ws) -> str:
    try:
        msg = ws.recv(timeout=TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"no message within {TIMEOUT}s")
    if not isinstance(msg, str):
        raise AssertionError(f"expected a text message, got {msg!r:.100}")
    return msg


def subscribe(ws, channel: str, delta: bool) -> dict:
    op = {"id": 1, "op": "subscribe", "channel": channel}
    if delta:
        op["delta"] = "fossil"
    ws.send(json.dumps(op))
    reply = json.loads(recv_text(ws))
    if reply.get("id") != 1 or reply.get("ok") is not True:
        raise AssertionError(f"subscribe: {reply}")
    if reply.get("delta", False) is not delta:
        raise AssertionError(f"subscribe: delta {delta} asked, reply {reply}")
    return reply


def main() -> None:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    url, channel, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with connect(url) as dws, connect(url) as bws:
        if dws.protocol.extensions == [] or bws.protocol.extensions == []:
            raise AssertionError("permessage-deflate was not negotiated")
        subscribe(dws, channel, True)
        subscribe(bws, channel, False)
        print("subscribed", flush=True)
        base = None
        deltas = whole = dbytes = bbytes = 0
        for n in range(1, count + 1):
            btext = recv_text(bws)
            bbytes += len(btext.encode())
            b = json.loads(btext)
            if "delta" in b or b.get("offset") is None:
                raise AssertionError(f"bystander: {btext:.200}")
            dtext = recv_text(dws)
            dbytes += len(dtext.encode())
            d = json.loads(dtext)
            if d.get("offset") != b["offset"] or d.get("channel") != channel:
                raise AssertionError(f"delta subscriber: {dtext:.200} vs {btext:.200}")
            if d.get("delta") is True:
                if base is None:
                    raise AssertionError("a delta before any whole publication")
                base = fossil_apply(base, d["data"].encode("utf-8"))
                deltas += 1
            else:
                base = data_bytes(dtext)
                whole += 1
                if n > 1:
                    raise AssertionError(f"publication {n} whole: {dtext:.200}")
            if base != data_bytes(btext):
                raise AssertionError(f"offset {d['offset']}: data differs")
        print(f"ok {deltas} {whole} {dbytes} {bbytes}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
