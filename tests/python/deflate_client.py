#!/usr/bin/env python3
"""Peer-client check of permessage-deflate on an echo endpoint, using the
`websockets` library (which offers permessage-deflate by default, as
browsers do).

    python3 tests/python/deflate_client.py ws://127.0.0.1:PORT/echo

For each of several offers (websockets' default one, and ones with
server_max_window_bits, client_max_window_bits=9, and either
no_context_takeover), checks that the server accepted permessage-deflate,
then sends JSON text messages (small, 1 KB repeated, 100 KB, 1 MiB) and
binary messages, and checks that each comes back exactly. Closes with 1000.

Prints one line per offer with the server's answer, then `ok`; exits 0 on
success, 1 on failure (message on stderr), 2 on bad usage.
"""

from __future__ import annotations

import json
import os
import ssl
import sys

from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import CloseCode
from websockets.sync.client import connect

TIMEOUT = 10.0

OFFERS: list[tuple[str, ClientPerMessageDeflateFactory | None]] = [
    ("default", None),  # websockets' own: permessage-deflate; client_max_window_bits
    ("server_max_window_bits=10", ClientPerMessageDeflateFactory(server_max_window_bits=10)),
    ("client_max_window_bits=9", ClientPerMessageDeflateFactory(client_max_window_bits=9)),
    (
        "no_context_takeover both",
        ClientPerMessageDeflateFactory(
            server_no_context_takeover=True, client_no_context_takeover=True
        ),
    ),
]



def tls_kwargs(url: str) -> dict:
    """For a wss:// URL: trust the test CA named by $WSGATE_CA (and only
    it), so the certificate is checked, not ignored."""
    ca = os.environ.get("WSGATE_CA")
    if url.startswith("wss://") and ca:
        return {"ssl": ssl.create_default_context(cafile=ca)}
    return {}

def _messages() -> list[str | bytes]:
    def pub(i: int) -> str:
        return json.dumps(
            {"channel": "prices", "offset": i, "data": {"symbol": "BTC-USD", "bid": 64000 + i}}
        )

    return (
        ["", "x", json.dumps({"op": "ping"})]
        + ["[" + ",".join(pub(i + k) for k in range(10)) + "]" for i in range(20)]
        + ["κόσμε " * 20000, pub(1) * 30000]
        + [bytes(range(256)) * 400, b"\x00" * 100_000]
    )


def _describe(msg: str | bytes) -> str:
    kind = "text" if isinstance(msg, str) else "binary"
    return f"{kind} message of {len(msg)}"


def run_one(url: str, name: str, factory: ClientPerMessageDeflateFactory | None) -> str:
    kwargs = {"extensions": [factory], "compression": None} if factory else {}
    with connect(
        url,
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        max_size=None,
        **kwargs,
        **tls_kwargs(url),
    ) as ws:
        answer = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        if "permessage-deflate" not in answer:
            raise AssertionError(f"{name}: server did not accept permessage-deflate: {answer!r}")
        names = [e.name for e in ws.protocol.extensions]
        if names != ["permessage-deflate"]:
            raise AssertionError(f"{name}: extensions in use: {names}")
        for sent in _messages():
            ws.send(sent)
            try:
                got = ws.recv(timeout=TIMEOUT)
            except TimeoutError:
                raise AssertionError(f"{name}: no echo within {TIMEOUT}s for {_describe(sent)}")
            if got != sent:
                raise AssertionError(f"{name}: sent {_describe(sent)}, got {_describe(got)}")
        ws.close(CloseCode.NORMAL_CLOSURE)
        if ws.protocol.close_rcvd is None or ws.protocol.close_rcvd.code != 1000:
            raise AssertionError(f"{name}: close reply {ws.protocol.close_rcvd}")
    return answer


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        for name, factory in OFFERS:
            print(f"{name}: {run_one(argv[1], name, factory)}")
    except Exception as e:  # noqa: BLE001 - report anything as a failure
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
