#!/usr/bin/env python3
"""Peer-client check of an echo endpoint, using the `websockets` library.

    python3 tests/python/echo_client.py ws://127.0.0.1:PORT/echo

Sends text messages of 0, 1, 125, 126, 65535, 65536 and 1 MiB bytes (the
7-bit, 16-bit and 64-bit length encodings on either side of each boundary)
and one binary message, checks that each comes back exactly (same type,
same payload), then closes with 1000 and checks that the closing handshake
completed and that the server answered with 1000.

Prints `ok` and exits 0 on success; prints `FAIL: ...` to stderr and exits 1
otherwise (2 on bad usage). Integration tests run it with $WSGATE_PYTHON.
"""

from __future__ import annotations

import os
import ssl
import sys

from websockets.frames import CloseCode
from websockets.sync.client import connect

TIMEOUT = 10.0
TEXT_SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20]



def tls_kwargs(url: str) -> dict:
    """For a wss:// URL: trust the test CA named by $WSGATE_CA (and only
    it), so the certificate is checked, not ignored."""
    ca = os.environ.get("WSGATE_CA")
    if url.startswith("wss://") and ca:
        return {"ssl": ssl.create_default_context(cafile=ca)}
    return {}

def _text(n: int) -> str:
    # ASCII, patterned so that a misplaced or dropped chunk shows up.
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return (alphabet * (n // len(alphabet) + 1))[:n]


def _binary() -> bytes:
    # Every byte value, including ones that are not valid UTF-8.
    return bytes(range(256)) * 4 + b"\x00\xff\xfe"


def _describe(msg: str | bytes) -> str:
    kind = "text" if isinstance(msg, str) else "binary"
    return f"{kind} message of {len(msg)} {'chars' if kind == 'text' else 'bytes'}"


def run(url: str) -> None:
    messages: list[str | bytes] = [_text(n) for n in TEXT_SIZES] + [_binary()]
    with connect(
        url,
        **tls_kwargs(url),
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        max_size=None,  # accept the 1 MiB echo
        compression=None,  # plain RFC 6455: no permessage-deflate
    ) as ws:
        for sent in messages:
            ws.send(sent)
            try:
                got = ws.recv(timeout=TIMEOUT)
            except TimeoutError:
                raise AssertionError(f"no echo within {TIMEOUT}s for {_describe(sent)}")
            if type(got) is not type(sent):
                raise AssertionError(
                    f"sent {_describe(sent)}, got back {_describe(got)}"
                )
            if got != sent:
                first = next(
                    (i for i, (a, b) in enumerate(zip(sent, got)) if a != b),
                    min(len(sent), len(got)),
                )
                raise AssertionError(
                    f"echo differs for {_describe(sent)}: got {len(got)} units, "
                    f"first difference at offset {first}"
                )

        ws.close(CloseCode.NORMAL_CLOSURE, "bye")

        # The sync client records both close frames: ours (close_sent) and
        # the server's answer (close_rcvd). Both present = handshake done.
        proto = ws.protocol
        if proto.close_sent is None or proto.close_sent.code != 1000:
            raise AssertionError(f"our close frame was not sent: {proto.close_sent!r}")
        if proto.close_rcvd is None:
            raise AssertionError(
                "closing handshake did not complete: no close frame from the server"
            )
        if proto.close_rcvd.code != 1000:
            raise AssertionError(
                f"server answered close with code {proto.close_rcvd.code}, expected 1000"
            )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} ws://HOST:PORT/PATH", file=sys.stderr)
        return 2
    try:
        run(argv[1])
    except Exception as e:  # mismatch, refused, handshake rejected, closed early...
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
