#!/usr/bin/env python3
"""Write the seed corpora: fuzz/corpus/<target>/seed-<name>.

A handful of small valid and invalid inputs per target, in each target's
input layout (see the doc comment at the top of fuzz_targets/<target>.rs).
Only `seed-*` files are committed; what libFuzzer adds to the corpus while it
runs is ignored by git (fuzz/.gitignore). Rerun after changing a layout
(seeds are overwritten, never deleted: remove a renamed one by hand):

    python3 fuzz/make_seeds.py

Tokens are signed with the test keys of tests/keys/ through `openssl`.
"""

import base64
import json
import os
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(HERE, "..", "tests", "keys")
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data, keep=False):
    """Write a seed; `keep`: leave an existing one alone (for seeds that
    differ on every run, such as ECDSA signatures, to spare the diff)."""
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "seed-" + name)
    if keep and os.path.exists(path):
        return
    if isinstance(data, str):
        data = data.encode()
    with open(path, "wb") as f:
        f.write(data)


# --- frames -----------------------------------------------------------------

def frame(op, payload=b"", fin=True, rsv=0, mask=b"\x11\x22\x33\x44", length=None):
    """One frame; `mask=None` for a server frame; `length` forces the
    length encoding (7, 16 or 64 bits)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    m = 0x80 if mask is not None else 0
    n = len(payload)
    enc = length or (7 if n < 126 else 16 if n < 65536 else 64)
    if enc == 7:
        head = bytes([b0, m | n])
    elif enc == 16:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return head + mask + masked


def frames_seeds():
    # flags: bit 0 role (1 = client); bits 1-2 chunk (0:1, 1:7, 2:100,
    # 3:whole); bits 3-4 limit (0:64, 1:1000, 2:70000, 3:16 MiB).
    def flags(client=False, chunk=3, limit=3):
        return bytes([(1 if client else 0) | chunk << 1 | limit << 3])

    seed = b"\x2a\x07"
    srv = lambda name, stream, **kw: write("frame_decoder", name, flags(**kw) + seed + stream)
    close = lambda code, reason=b"": struct.pack(">H", code) + reason

    srv("text", frame(1, "hello"))
    srv("text-bytewise", frame(1, "hello") + frame(2, b"\x00\x01\x02"), chunk=0)
    srv("binary-16bit", frame(2, bytes(range(256)) * 2), chunk=2)
    srv("binary-64bit-len", frame(2, b"abc", length=64), chunk=1)
    srv(
        "fragmented-with-ping",
        frame(1, "κό".encode(), fin=False) + frame(9, "p") + frame(0, "σμε".encode()),
        chunk=1,
    )
    srv("ping-pong-close", frame(9, "hb") + frame(10, "x") + frame(8, close(1000, b"bye")))
    srv("close-empty", frame(8))
    srv("close-4001", frame(8, close(4001, b"slow")))
    srv("too-big", frame(2, b"x" * 100), limit=0)
    srv("too-big-fragments", frame(2, b"x" * 40, fin=False) + frame(0, b"y" * 40), limit=0)
    srv("unmasked", frame(1, "hi", mask=None))
    srv("reserved-opcode", frame(3, "x"))
    srv("rsv1", frame(1, "x", rsv=4))
    srv("control-too-long", frame(9, b"p" * 126))
    srv("fragmented-control", frame(9, "p", fin=False))
    srv("bad-utf8", frame(1, b"ok\xc3\x28"), chunk=1)
    srv("utf8-split-at-end", frame(1, b"\xe2\x82", fin=False) + frame(0, b"\xac"), chunk=0)
    srv("close-one-byte", frame(8, b"\x03"))
    srv("close-bad-code", frame(8, close(1005)))
    srv("continuation-first", frame(0, "x"))
    srv("frame-after-close", frame(8, close(1000)) + frame(1, "late"))
    srv("length-msb", bytes([0x82, 0xFF]) + b"\x80" + b"\x00" * 7 + b"\x11\x22\x33\x44")
    cli = lambda name, stream, **kw: srv(name, stream, client=True, **kw)
    cli("client-text", frame(1, "hello", mask=None) + frame(9, "", mask=None), chunk=1)
    cli("client-masked", frame(1, "hello"))
    cli("client-close", frame(8, close(1001, b"going"), mask=None))


# --- handshake --------------------------------------------------------------

UPGRADE = (
    "GET /ws?channel=chat HTTP/1.1\r\nHost: gw.example\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def handshake_seeds():
    sel = b"\x03"  # max_head 8192
    h = lambda name, req, s=sel: write("handshake", name, s + req.encode())
    h("upgrade", UPGRADE.format(extra=""))
    h(
        "upgrade-protocols-token",
        UPGRADE.format(extra="Sec-WebSocket-Protocol: wsgate.v1, bearer.a.b.c\r\n"
                       "Origin: https://app.example\r\n"),
    )
    h("upgrade-authorization", UPGRADE.format(extra="Authorization: Bearer a.b.c\r\n"))
    h("upgrade-deflate", UPGRADE.format(
        extra="Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"))
    h("post", UPGRADE.replace("GET", "POST", 1).format(extra=""))
    h("http10", UPGRADE.replace("HTTP/1.1", "HTTP/1.0", 1).format(extra=""))
    h("version-8", UPGRADE.replace("Version: 13", "Version: 8").format(extra=""))
    h("short-key", UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==").format(extra=""))
    h("no-upgrade", "GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
    h("partial", "GET /ws HTTP/1.1\r\nHost: g")
    h("tls-hello", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    h("head-too-large", "GET / HTTP/1.1\r\nX: " + "a" * 100 + "\r\n\r\n", b"\x00")
    h(
        "response-101",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
    )


# --- client ops -------------------------------------------------------------

def ops_seeds():
    ops = {
        "subscribe": {"id": 1, "op": "subscribe", "channel": "chat"},
        "subscribe-since": {"id": 1, "op": "subscribe", "channel": "chat",
                            "since": {"epoch": "e1", "offset": 41}},
        "unsubscribe": {"id": "two", "op": "unsubscribe", "channel": "chat"},
        "publish": {"id": 3, "op": "publish", "channel": "chat", "data": {"text": "hi", "n": [1, 2.5, None]}},
        "presence": {"id": 4, "op": "presence", "channel": "chat:room"},
        "ping": {"id": 5, "op": "ping"},
        "refresh": {"id": 6, "op": "refresh", "token": "a.b.c"},
        "unknown-op": {"id": 7, "op": "dance"},
        "missing-channel": {"op": "subscribe"},
        "bad-since": {"op": "subscribe", "channel": "c", "since": {"offset": "x"}},
    }
    for name, op in ops.items():
        write("client_ops", name, json.dumps(op, ensure_ascii=False))
    write("client_ops", "escaped-channel", r'{"id":[1,{"a":null}],"op":"subscribe","channel":"ch\u0061t\n"}')
    write("client_ops", "not-json", "{")
    write("client_ops", "array", "[1]")
    write("client_ops", "big-id", '{"id":1e999,"op":"ping"}')


# --- jwt --------------------------------------------------------------------

def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_openssl(key, msg):
    with tempfile.NamedTemporaryFile() as f:
        f.write(msg)
        f.flush()
        return subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", key, f.name],
            check=True, capture_output=True,
        ).stdout


def der_to_raw(sig):
    """ECDSA DER (SEQUENCE of two INTEGERs) to r || s, 32 bytes each."""
    assert sig[0] == 0x30
    i = 2 if sig[1] < 0x80 else 3
    out = b""
    for _ in range(2):
        assert sig[i] == 0x02
        n = sig[i + 1]
        v = sig[i + 2:i + 2 + n].lstrip(b"\x00")
        out += v.rjust(32, b"\x00")
        i += 2 + n
    return out


def token(alg, claims, key=None):
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}))
    body = b64(json.dumps(claims))
    msg = f"{head}.{body}".encode()
    if alg == "RS256":
        sig = sign_openssl(os.path.join(KEYS, "rs256-private.pem"), msg)
    elif alg == "ES256":
        sig = der_to_raw(sign_openssl(os.path.join(KEYS, "es256-private.pem"), msg))
    else:
        sig = b"\x00" * 32
    return f"{head}.{body}.{b64(sig)}"


def jwt_seeds():
    now = 1_700_000_000
    claims = {"sub": "alice", "exp": 4_000_000_000, "nbf": now - 60, "iat": now,
              "subscribe": ["chat:*", "news", "$user:*"], "publish": ["chat:lobby"]}
    raw = lambda name, tok, keep=False: write(
        "jwt", name, b"\x00" + struct.pack("<I", now) + tok.encode(), keep)
    signed = lambda name, payload: write("jwt", name, b"\x01" + struct.pack("<I", now) + payload.encode())
    raw("rs256-valid", token("RS256", claims))
    raw("es256-valid", token("ES256", claims), keep=True)  # ECDSA: a new signature each time
    raw("rs256-expired", token("RS256", dict(claims, exp=now - 3600)))
    raw("hs256-forged", token("HS256", claims))
    raw("none", token("none", claims)[:-43])
    raw("garbage", "not.a.jwt")
    raw("empty-parts", "..")
    signed("claims-valid", json.dumps(claims))
    signed("claims-minimal", json.dumps({"sub": "u", "exp": 4_000_000_000}))
    signed("claims-expired", json.dumps({"sub": "u", "exp": now - 10}))
    signed("claims-not-yet", json.dumps({"sub": "u", "exp": 4_000_000_000, "nbf": now + 3600}))
    signed("claims-float-exp", '{"sub":"u","exp":4000000000.5,"subscribe":[]}')
    signed("claims-bad-types", '{"sub":7,"exp":"x","subscribe":"chat:*","publish":[1]}')
    signed("claims-aud", json.dumps({"sub": "u", "exp": 4_000_000_000, "aud": ["a", "b"], "iss": "i"}))
    signed("claims-not-json", "{")


# --- http -------------------------------------------------------------------

def http_seeds():
    h = lambda name, q, head="": write("http_query", name, q + ("\0" + head if head else ""))
    h("channels", "channel=a&channel=b%3Ac&x=1+2&channel=")
    h("token", "token=eyJhbGciOiJIUzI1NiJ9.e30.sig&last_event_id=abc")
    h("bad-escape", "channel=%zz&token=%e2%82%ac")
    h("post-length", "", "POST /api/publish HTTP/1.1\r\nHost: gw\r\nContent-Length: 12\r\n\r\n")
    h("post-chunked", "", "POST /api/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    h("two-lengths", "", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
    h("too-long", "", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n")
    h("keep-alive-10", "a=b", "GET /sse?channel=x&token=t HTTP/1.0\r\nConnection: keep-alive\r\n"
      "Authorization: Bearer tok\r\n\r\n")


# --- permessage-deflate ----------------------------------------------------

def deflate_raw(data, wbits=15):
    """RFC 7692 §7.2.1: raw deflate, sync flush, 00 00 ff ff stripped."""
    import zlib
    c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def deflate_seeds():
    # flags: bit 0 dedicated; bit 1 structured; bits 2-3 chunk; bits 4-5
    # limit (0:64, 1:1000, 2:70000, 3:1 MiB); bits 6-7 client window bits.
    def flags(dedicated=False, structured=False, chunk=3, limit=3, bits=2):
        return bytes([int(dedicated) | int(structured) << 1 | chunk << 2 | limit << 4 | bits << 6])

    def d(name, rest, corrupt=(0, 0), **kw):
        write("deflate", name, flags(**kw) + b"\x2a\x07" + bytes(corrupt) + rest)

    text = "κόσμε hello hello hello hello hello".encode()
    d("raw-text", frame(1, deflate_raw(text), rsv=4))
    d("raw-binary-bytewise", frame(2, deflate_raw(bytes(range(64)) * 4), rsv=4), chunk=0)
    d("raw-fragmented", frame(1, deflate_raw(text)[:5], fin=False, rsv=4)
      + frame(9, "p") + frame(0, deflate_raw(text)[5:]), chunk=1)
    d("raw-uncompressed-then-compressed", frame(1, "plain") + frame(1, deflate_raw(b"z" * 300), rsv=4))
    d("raw-bomb", frame(2, deflate_raw(b"\x00" * 60000), rsv=4), limit=1)
    d("raw-corrupt", frame(1, b"\xff\xff\xff\xff", rsv=4))
    d("raw-bad-utf8", frame(1, deflate_raw(b"ok \xff\xfe"), rsv=4))
    d("raw-rsv1-on-continuation", frame(1, "a", fin=False) + frame(0, deflate_raw(b"b"), rsv=4))
    d("raw-rsv1-on-ping", frame(9, b"", rsv=4))
    d("raw-dedicated-context", frame(1, deflate_raw(text), rsv=4) * 2, dedicated=True)
    msgs = b"\xff".join([b"\x01hello hello hello hello", b"\x00" + bytes(range(200)), b"\x01" + text * 10])
    d("msgs-shared", msgs, structured=True)
    d("msgs-dedicated-9bits", msgs, structured=True, dedicated=True, bits=0, chunk=2)
    d("msgs-over-limit", msgs, structured=True, limit=0)
    d("msgs-corrupt", msgs, structured=True, corrupt=(40, 0x10))


# --- resume tokens and cursors ----------------------------------------------

def resume_seeds():
    r = lambda name, tok, max_channels=8: write("resume_token", name, bytes([max_channels]) + tok.encode())
    triples = [["chat", "e1", 41], ["news:eu", "f2", 0], ["$user:alice", "u", 7]]
    r("three", b64(json.dumps(triples)))
    r("one-padded", b64(json.dumps([["a", "e", 1]])) + "==")
    r("empty-list", b64("[]"))
    r("too-many", b64(json.dumps(triples)), 1)
    r("negative", b64('[["a","e",-1]]'))
    r("escapes", b64('[["\\u00e9\\n","\\ud83d\\ude00",18446744073709551615]]'))
    r("not-base64", "!!!")
    r("object", b64('{"a":1}'))
    r("whitespace", " " + b64(json.dumps(triples)) + " ")


def publication_seeds():
    p = lambda name, text: write("publication_data", name, text.encode())
    p("pretty-crlf", '{\r\n  "text": "hi there",\r\n  "n": [1,\n 2]\r\n}')
    p("bare-cr", '["a",\r\r"b"]')
    p("tabs-escapes", '{"x":\n\n{"y":\t"tab\\tinside \\" \\\\"}}')
    p("string-only", '"data: forged\\n\\nid: x"')
    p("unicode", '{"emoji" : "\u00e9 \U0001F600", "z"\t:\tnull}')
    p("number", ' -1.50e+3 ')
    p("nested-empty", '[ [ ] , { } , [ { "a" : [ ] } ] ]')
    p("not-json", '{"a":')


# --- pipelined ops through a session ----------------------------------------

def pipeline_seeds():
    """Steps of fuzz_targets/op_pipeline.rs: an op is (kind << 3, channel);
    4 delivers the queued ops; 5, arg answers a request (arg >> 1 picks it,
    arg & 1: an error); 6, ch publishes live; 7 closes."""
    SUB, UNSUB, PUB, PRES, PING, BAD, REFRESH, BINARY = (k << 3 for k in range(8))
    DELIVER, ANSWER, LIVE, CLOSE = 4, 5, 6, 7
    seeds = {
        # The lead's examples.
        "sub-unsub-sub": [SUB, 0, UNSUB, 0, SUB, 0, DELIVER, ANSWER, 0, ANSWER, 0],
        "sub-a-unsub-b-sub-c": [SUB, 0, UNSUB, 1, SUB, 2, DELIVER, ANSWER, 2, ANSWER, 0],
        # A subscribe answered while an earlier publish waits, live traffic.
        "answered-out-of-order": [PUB, 0, SUB, 1, PUB, 1, PING, 0, DELIVER, ANSWER, 2,
                                  LIVE, 1, LIVE, 1, ANSWER, 0, ANSWER, 0],
        "presence-after-subscribe": [SUB, 0, PRES, 0, DELIVER, ANSWER, 0, ANSWER, 0],
        "close-with-answers-pending": [SUB, 0, SUB, 1, PUB, 0, DELIVER, CLOSE, ANSWER, 0, ANSWER, 0],
        "limit-and-a-refused-subscribe": [SUB, 0, SUB, 1, SUB, 2, DELIVER, ANSWER, 3, ANSWER, 0, ANSWER, 0],
        "refresh-waits": [SUB, 0, REFRESH, 0, PUB, 0, BINARY, 0, BAD, 0, DELIVER, LIVE, 0, ANSWER, 0],
    }
    for name, steps in seeds.items():
        write("op_pipeline", name, bytes(steps))


def delta_seeds():
    """delta: a 2-byte split point, then a (source) and b (target)."""
    def pair(a, b):
        return struct.pack(">H", len(a)) + a + b

    metrics = ",".join('"m%03d":%d.%02d' % (i, i * 7, i % 100) for i in range(60))
    dash = ("{" + metrics + "}").encode()
    write("delta", "dashboard-tick", pair(dash, dash.replace(b'"m010":70.10', b'"m010":71.25')))
    write("delta", "utf8-edit", pair('{"u":"Дмитрий 😀 café"}'.encode(), '{"u":"Дмитрия 😃 cafè"}'.encode()))
    write("delta", "identical", pair(b"[1,2,3,4,5,6,7,8,9,10,11,12,13]", b"[1,2,3,4,5,6,7,8,9,10,11,12,13]"))
    write("delta", "empty", b"\x00\x00")
    write("delta", "a-delta-as-b", pair(b"abcdefghijklmnopqrstuvwxyz", b"1a\n5@0,3:xyz10@5,2NfrBs;"))
    write("delta", "binary", pair(bytes(range(256)) * 2, bytes(range(128, 256)) + bytes(range(256))))


if __name__ == "__main__":
    frames_seeds()
    handshake_seeds()
    ops_seeds()
    pipeline_seeds()
    jwt_seeds()
    http_seeds()
    resume_seeds()
    deflate_seeds()
    publication_seeds()
    delta_seeds()
    for t in sorted(os.listdir(CORPUS)):
        n = len([f for f in os.listdir(os.path.join(CORPUS, t)) if f.startswith("seed-")])
        print(f"{t}: {n} seeds")
