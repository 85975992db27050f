#!/usr/bin/env python3
"""Reference vectors for the Fossil delta codec (src/delta/fossil.rs).

Writes tests/data/fossil/<case>/{source,target} from fixed seeds, then
`fossil test-delta-create source target delta` (Fossil's own delta_create,
the reference) writes each `delta`. tests/delta_vectors.rs checks that
`delta::fossil::Encoder::encode` writes the same bytes and that every
delta applies; tests/js/delta.test.mjs applies them with web/wsgate.js.

    apt-get install fossil          # Debian's, 2.21 at the time of writing
    scripts/fossil_vectors.py       # rewrites tests/data/fossil/

The inputs depend on nothing but this file: running it again rewrites the
same bytes (and `git status` shows whether Fossil's output changed).
"""

import os
import random
import shutil
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "data", "fossil")

KINDS = ["cpu", "mem", "rps", "p50", "p99", "errors", "conns", "queue", "disk", "net"]


def dashboard(values):
    """The 200-metric dashboard: one JSON object, compact."""
    body = ",".join('"svc%02d.%s":%s' % (i // 10, KINDS[i % 10], v) for i, v in enumerate(values))
    return ("{" + body + "}").encode()


def metric_values(rng):
    return ["%.2f" % (rng.random() * 10 ** rng.randint(0, 4)) for _ in range(200)]


def words(rng, n, vocab):
    return " ".join(rng.choice(vocab) for _ in range(n))


def cases():
    rng = random.Random(16)
    vocab = "the quick brown fox jumps over lazy dog gateway channel offset epoch delta publication subscriber".split()
    out = {}
    out["empty"] = (b"", b"")
    out["empty-source"] = (b"", b'{"hello":"world","n":[1,2,3],"nested":{"a":true,"b":null}}' * 3)
    out["empty-target"] = (words(rng, 20, vocab).encode(), b"")
    out["tiny-source"] = (b"0123456789", b"0123456789 and then a good deal more text after it")
    out["source-16"] = (b"abcdefghijklmnop", b"xxabcdefghijklmnopyy abcdefghijklmnop")
    out["source-32"] = (b"abcdefghijklmnopABCDEFGHIJKLMNOP", b"ABCDEFGHIJKLMNOP abcdefghijklmnop ABCDEFGHIJKLMNOP")
    v = metric_values(rng)
    out["identical"] = (dashboard(v), dashboard(v))
    w = list(v)
    for i in rng.sample(range(200), 4):
        w[i] = "%.2f" % (rng.random() * 1000)
    out["dashboard-tick"] = (dashboard(v), dashboard(w))
    w = list(v)
    for i in rng.sample(range(200), 50):
        w[i] = "%.2f" % (rng.random() * 1000)
    out["dashboard-50"] = (dashboard(v), dashboard(w))
    paras = [words(rng, rng.randint(20, 60), vocab) for _ in range(30)]
    moved = list(paras)
    rng.shuffle(moved)
    moved[3] = words(rng, 40, vocab)
    out["text-moves"] = ("\n".join(paras).encode(), "\n".join(moved).encode())
    blob = bytes(rng.getrandbits(8) for _ in range(6000)) + b"\0" * 300
    tgt = blob[:2000] + bytes(rng.getrandbits(8) for _ in range(100)) + blob[2500:] + blob[100:900]
    out["binary"] = (blob, tgt)
    names = ["Žižek", "Дмитрий", "東京都", "😀 party", "naïve café", "Ελλάδα", "ﷺ", "a\u2028b"]
    src = "{" + ",".join('"user%03d":"%s %d"' % (i, rng.choice(names), i) for i in range(120)) + "}"
    t = src.replace("Дмитрий 5", "Дмитрия 5").replace("東京都 1", "京都 1").replace("café", "cafè", 3)
    out["utf8"] = (src.encode(), t.encode())
    block = bytes(range(0x70, 0x80)) + bytes(range(0x90, 0xA0))
    out["repetitive"] = (block * 600, block * 300 + b"!" + block * 299 + b"?")
    big = "\n".join(words(rng, 12, vocab) + " %d" % i for i in range(800)).encode()
    edited = bytearray(big)
    for _ in range(20):
        at = rng.randrange(len(edited))
        edited[at:at + 5] = b"EDIT!"
    out["large"] = (big, b"prefix " + bytes(edited) + b" suffix")
    out["unrelated"] = (words(rng, 300, vocab).encode(), bytes(rng.getrandbits(8) for _ in range(1500)))
    core = words(rng, 200, vocab).encode()
    out["prepend-append"] = (core, b"<<" + core[:700] + b"--" + core[700:] + b">>")
    return out


def main():
    fossil = shutil.which("fossil")
    if not fossil:
        sys.exit("fossil not found: apt-get install fossil")
    version = subprocess.run([fossil, "version"], capture_output=True, text=True, check=True).stdout.strip()
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    for name, (source, target) in cases().items():
        d = os.path.join(OUT, name)
        os.makedirs(d)
        with open(os.path.join(d, "source"), "wb") as f:
            f.write(source)
        with open(os.path.join(d, "target"), "wb") as f:
            f.write(target)
        subprocess.run([fossil, "test-delta-create", "source", "target", "delta"], cwd=d, check=True)
        size = os.path.getsize(os.path.join(d, "delta"))
        print("%-15s source %6d  target %6d  delta %6d" % (name, len(source), len(target), size))
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            "Reference Fossil deltas: `delta` is what `fossil test-delta-create source target delta`\n"
            "wrote (%s). Made by scripts/fossil_vectors.py; checked by\n"
            "tests/delta_vectors.rs (our encoder, byte for byte) and tests/js/delta.test.mjs.\n" % version
        )


if __name__ == "__main__":
    main()
