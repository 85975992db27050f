#!/usr/bin/env bash
# Run the cargo-fuzz targets on stable Rust (no sanitizer: `-s none`).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 60); TARGETs default to every target in
# fuzz/Cargo.toml. Installs cargo-fuzz if it is missing. Each target starts
# from fuzz/corpus/<target>/ (the committed seed-* files plus whatever
# earlier runs added, which git ignores). Prints executions and coverage per
# target; exits non-zero if any target crashed, with the reproducer in
# fuzz/artifacts/<target>/ (replay: cargo fuzz run -s none TARGET FILE).
#
# Long runs (hours, both cores), for example:
#   scripts/fuzz.sh 14400 frame_decoder handshake
#   FUZZ_JOBS=2 scripts/fuzz.sh 3600 frame_decoder     # 2 workers on one target
#
# FUZZ_PARALLEL=N runs N targets at a time (default: the number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
jobs="${FUZZ_JOBS:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz =="
    cargo install --locked cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

echo "== fuzz: ${targets[*]} (${secs}s each) =="
cd fuzz
# Build every target once, up front, so that compile time does not eat
# fuzzing time (`cargo fuzz build` takes one target or all).
cargo fuzz build -s none

logs="$(mktemp -d)"
# Targets run PARALLEL at a time (default: one per core); each still gets
# its full SECONDS. With FUZZ_JOBS > 1 they run one after the other.
parallel="${FUZZ_PARALLEL:-$(nproc)}"
[ "$jobs" -gt 1 ] && parallel=1

run_target() { # target -> writes $logs/$t.log and $logs/$t.rc
    local t="$1" log="$logs/$1.log" rc extra=()
    mkdir -p "corpus/$t"
    [ "$jobs" -gt 1 ] && extra=(-jobs="$jobs" -workers="$jobs")
    set +e
    cargo fuzz run -s none "$t" -- \
        -max_total_time="$secs" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    set -e
    # With -jobs, libFuzzer writes each worker's output to fuzz-N.log.
    [ "$jobs" -gt 1 ] && cat fuzz-*.log >>"$log" 2>/dev/null && rm -f fuzz-*.log
    echo "$rc" >"$logs/$t.rc"
}

running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$parallel" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_target "$t" &
    running=$((running + 1))
done
wait

failed=()
for t in "${targets[@]}"; do
    log="$logs/$t.log"
    rc=$(cat "$logs/$t.rc" 2>/dev/null || echo 1)
    execs=$( (grep -h '^stat::number_of_executed_units' "$log" || true) | awk '{s += $2} END {print s + 0}')
    cov=$( (grep -ho 'cov: [0-9]*' "$log" || true) | tail -n 1)
    if [ "$rc" -ne 0 ] || grep -q -e 'panicked at' -e 'ERROR: libFuzzer' "$log"; then
        failed+=("$t")
        echo "$t: CRASH after $execs executions ($cov)"
        grep -h -e 'panicked at' -A 3 "$log" | head -n 20 || true
        grep -h -e 'Test unit written to' "$log" || true
    else
        echo "$t: ok, $execs executions, $cov"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashes in ${failed[*]} (logs in $logs)"
    exit 1
fi
rm -rf "$logs"
echo "fuzz: ${#targets[@]} targets, no crash"
