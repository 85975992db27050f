#!/usr/bin/env bash
# Items 7-9 of issue 12, before and after: run one hostile pattern of
# scripts/attack_memory.py against a freshly started gateway (default
# configuration: heartbeats on, trim_memory 10 s), print its JSON line.
#
#   scripts/attack_memory.sh MODE [BIN_DIR] [-- extra attack_memory.py flags]
#
# MODE: churn | replay | history. BIN_DIR holds `wsgate` (default
# target/release; build the baseline with `git archive main | tar -x -C
# /tmp/base && (cd /tmp/base && cargo build --release --bin wsgate)` and
# pass /tmp/base/target/release). Env: PORT (18180), WSGATE_FLAGS (extra
# gateway flags), DURATION (30). Nothing is pinned (the bystander runs in
# a process of its own); on a shared box, alternate runs of the two
# binaries and compare medians (../shared/MEASURING.md).
set -euo pipefail
mode=${1:?usage: attack_memory.sh MODE [BIN_DIR] [-- flags]}
shift
bin=target/release
if [[ $# -gt 0 && $1 != -- ]]; then bin=$1; shift; fi
[[ ${1:-} == -- ]] && shift
port=${PORT:-18180}
here=$(cd "$(dirname "$0")" && pwd)
log=$(mktemp /tmp/attack-gateway-XXXX.log)
# shellcheck disable=SC2086
"$bin/wsgate" --listen "127.0.0.1:$port" ${WSGATE_FLAGS:-} 2>"$log" &
gw=$!
trap 'kill $gw 2>/dev/null; wait $gw 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
python3 "$here/attack_memory.py" "$mode" --addr "127.0.0.1:$port" --pid "$gw" \
  --duration "${DURATION:-30}" "$@"
if grep -q panicked "$log"; then echo "the gateway panicked:" >&2; cat "$log" >&2; exit 1; fi
