#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Builds the libFuzzer targets under Fuzz/ (MINIVMM_FUZZ=1, -sanitize=fuzzer,address, scratch path .build/fuzz) and
# runs each for N seconds (default 30) from its committed seeds in Fuzz/corpus/<target>/. New inputs go to
# .build/fuzz/corpus/<target>/, crashes to .build/fuzz/artifacts/<target>/. Fails on any crash, printing per target
# the executions and coverage libFuzzer reports.
#
#     bash scripts/fuzz.sh [seconds-per-target] [target...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-30}
shift || true
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "fuzz.sh: seconds must be a positive integer" >&2; exit 2; }
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(fwcfg hotplug q35 apic portbus smm exit report)

scratch=.build/fuzz
build=(swift build -c release --scratch-path "$scratch" -Xswiftc -sanitize=fuzzer,address)
export MINIVMM_FUZZ=1
for t in "${targets[@]}"; do
    echo "==> build fuzz-$t"
    "${build[@]}" --product "fuzz-$t" 2>&1 | grep -v "Cannot export local symbol '__asan_extra_spill_area'" | tail -3
    [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "fuzz.sh: building fuzz-$t failed" >&2; exit 1; }
done
bin=$("${build[@]}" --show-bin-path)

# Swift's runtime keeps metadata caches for the life of the process: leak reports would be noise.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
failed=()
printf '\n%-8s %10s %8s %8s %s\n' target execs cov ft result
for t in "${targets[@]}"; do
    corpus=$scratch/corpus/$t
    artifacts=$scratch/artifacts/$t/
    log=$scratch/logs/$t.log
    mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
    status=ok
    "$bin/fuzz-$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
        -artifact_prefix="$artifacts" "$corpus" "Fuzz/corpus/$t" >"$log" 2>&1 || status=CRASH
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | awk '{print $2}')
    printf '%-8s %10s %8s %8s %s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$status"
    if [[ $status != ok ]]; then
        failed+=("$t")
        grep -E 'ERROR|fuzz invariant|Fatal error|SUMMARY|Test unit written' "$log" | head -8 | sed 's/^/    /'
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crash in: ${failed[*]} (logs in $scratch/logs, inputs in $scratch/artifacts)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no crash"
