#!/usr/bin/env bash
# Browser tests of the JavaScript client and the demo (tests/browser/*.test.mjs)
# in headless Chromium driven by playwright-core:
#   - installs what is missing: Debian's chromium (and nodejs/npm) with apt,
#     playwright-core with npm (never a browser download of its own);
#   - builds target/release/wsgate and starts it on a free loopback port with
#     tests/browser/gateway.toml;
#   - runs `node --test tests/browser/`, one file at a time (tls.test.mjs
#     starts a gateway of its own serving wss:// with a test CA);
#   - stops the gateway; the last line is `browser: N passed, M failed`.
# Exits non-zero if anything failed. The demo screenshot lands in
# reports/browser/demo.png, the gateway's log in reports/browser/gateway.log.
#
# Environment: WSGATE_BIN=path skips the build and uses that binary;
# BROWSER_TEST_TIMEOUT (seconds, default 900) bounds the test run.
set -euo pipefail
cd "$(dirname "$0")/.."

REPORTS=reports/browser
mkdir -p "$REPORTS"

echo "== browser: setup =="
apt_need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || apt_need+=(chromium)
command -v node >/dev/null 2>&1 || apt_need+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_need+=(npm)
# tls.test.mjs makes its test CA with openssl (and pins the leaf's key in
# Chromium: no NSS tools needed).
command -v openssl >/dev/null 2>&1 || apt_need+=(openssl)
if [ "${#apt_need[@]}" -gt 0 ]; then
    echo "installing: ${apt_need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_need[@]}" fonts-dejavu-core
fi
CHROMIUM=$(command -v chromium || command -v chromium-browser)
export CHROMIUM
echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"); node: $(node --version)"

if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi

if [ -n "${WSGATE_BIN:-}" ]; then
    BIN=$WSGATE_BIN
else
    echo "== browser: build =="
    cargo build --release --bin wsgate
    BIN=target/release/wsgate
fi

PORT=$(node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
URL="http://127.0.0.1:$PORT"
"$BIN" -c tests/browser/gateway.toml --listen "127.0.0.1:$PORT" --workers 2 >"$REPORTS/gateway.log" 2>&1 &
GW_PID=$!
stop_gateway() {
    if kill -0 "$GW_PID" 2>/dev/null; then
        kill "$GW_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$GW_PID" 2>/dev/null || true
    fi
}
trap stop_gateway EXIT
for i in $(seq 100); do
    if curl -fs "$URL/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$GW_PID" 2>/dev/null || [ "$i" = 100 ]; then
        echo "the gateway did not start:"; cat "$REPORTS/gateway.log"
        echo "browser: 0 passed, 1 failed"
        exit 1
    fi
    sleep 0.1
done
echo "gateway: $BIN on $URL (log: $REPORTS/gateway.log)"

echo "== browser: tests =="
TAP="$REPORTS/results.tap"
status=0
WSGATE_URL="$URL" timeout "${BROWSER_TEST_TIMEOUT:-900}" \
    node --test --test-concurrency=1 --test-reporter=tap tests/browser/ 2>&1 | tee "$TAP" || status=$?
stop_gateway

passed=$(grep -E '^# pass [0-9]+' "$TAP" | tail -1 | awk '{print $3}')
failed=$(grep -E '^# fail [0-9]+' "$TAP" | tail -1 | awk '{print $3}')
cancelled=$(grep -E '^# cancelled [0-9]+' "$TAP" | tail -1 | awk '{print $3}')
passed=${passed:-0}
failed=$(( ${failed:-0} + ${cancelled:-0} ))
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi # the runner itself failed or timed out
if [ -f "$REPORTS/demo.png" ]; then echo "screenshot: $REPORTS/demo.png"; fi
echo "browser: $passed passed, $failed failed"
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ]
