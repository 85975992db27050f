#!/usr/bin/env python3
# Issue 14: many half-done TLS handshakes against a gateway on the TLS port.
#   python3 scripts/tls_half_handshakes.py PORT N SRC_IP HOLD_SECONDS
# (run one per source address: 127.0.0.2, 127.0.0.3, ...; ~7,500 per process)
# Open N connections to 127.0.0.1:PORT from SRC, each sending most of a
# real ClientHello (Python's ssl), then hold them until the server closes
# each (the handshake deadline) or HOLD seconds pass. Prints how many were
# closed by the server.
import socket, ssl, sys, time, selectors
port, n, src, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
i, o = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(i, o, server_hostname="localhost")
try: obj.do_handshake()
except ssl.SSLWantReadError: pass
hello = o.read()
part = hello[:len(hello) - 10]
sel = selectors.DefaultSelector()
socks = []
for k in range(n):
    s = socket.socket(); s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
    s.bind((src, 0)); s.connect(("127.0.0.1", port)); s.sendall(part)
    s.setblocking(False); sel.register(s, selectors.EVENT_READ); socks.append(s)
print(f"{src}: {n} open, ClientHello {len(hello)} B, sent {len(part)}", flush=True)
closed, end = 0, time.time() + hold
while closed < n and time.time() < end:
    for key, _ in sel.select(timeout=1):
        try: d = key.fileobj.recv(100)
        except OSError: d = b""
        if not d:
            sel.unregister(key.fileobj); key.fileobj.close(); closed += 1
print(f"{src}: {closed} of {n} closed by the server", flush=True)
