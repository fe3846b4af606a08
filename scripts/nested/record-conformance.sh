#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Records what the conformance firmware prints on KVM's own SMM (the oracle) into Tests/conformance/expected-*.txt,
# which the host's ConformanceTests compare the emulated backend with, line for line.
#
#     bash scripts/nested/record-conformance.sh [--no-build]
#
# Runs the nested-KVM lane (scripts/nested-kvm.sh) with only the conformance pairs of scripts/nested/scenarios.sh:
# its helper functions, `caps` and `conformance_all`. Each pair prints the kvm console with the prefix
# `CONFORMANCE-KVM NAME `; those lines become Tests/conformance/expected-NAME.txt. The lane's own verdict (which
# also needs the emulated backend to match) does not stop the recording, but a kvm run that did not end with a
# SUMMARY line, or that printed a FAIL line, does: the firmware's expectation is then wrong, not the model.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
repo=$PWD
out="$repo/Tests/conformance"
scenarios=$(mktemp /tmp/conformance-scenarios.XXXXXX.sh)
trap 'rm -f "$scenarios"' EXIT

# The helpers (everything above the scenario list), then the conformance pairs only.
sed '/^# ---- the scenarios ----/,$d' scripts/nested/scenarios.sh >"$scenarios"
cat >>"$scenarios" <<'SCENARIOS'
caps
conformance_all
[ "$failures" -eq 0 ]
SCENARIOS

status=0
bash scripts/nested-kvm.sh --scenarios "$scenarios" "$@" || status=$?
log="$repo/.build/nested/serial.log"
[[ -f $log ]] || { echo "record-conformance: no serial log at $log" >&2; exit 1; }

mkdir -p "$out"
names=$(tr -d '\r' <"$log" | sed -n 's/^CONFORMANCE-KVM \([^ ]*\) .*/\1/p' | sort -u)
[[ -n $names ]] || { echo "record-conformance: the lane printed no CONFORMANCE-KVM lines" >&2; exit 1; }
# Checks the kvm backend itself perturbs (Tests/conformance/kvm-backend-perturbed.txt, `check: reason`): recorded as
# the PASS line KVM's SMM gives, with the SUMMARY counts adjusted; a listed check that passes on the kvm backend is
# named (once the backend is fixed, remove it from the list).
perturbed=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' -e 's/:.*//' "$out/kvm-backend-perturbed.txt")
bad=0
for name in $names; do
    file="$out/expected-${name#conformance-}.txt"
    tr -d '\r' <"$log" | sed -n "s/^CONFORMANCE-KVM $name //p" >"$file"
    for check in $perturbed; do
        if grep -qx "PASS $check" "$file"; then
            echo "record-conformance: $name: $check passed on the kvm backend in this run (if it does every time, remove it from kvm-backend-perturbed.txt)"
        elif grep -q "^FAIL $check: " "$file"; then
            echo "record-conformance: $name: recording $check as PASS (perturbed by the kvm backend): $(grep "^FAIL $check: " "$file")"
            sed -i "s/^FAIL $check: .*/PASS $check/" "$file"
            awk '/^SUMMARY: [0-9]+ passed, [0-9]+ failed$/ { sub(/^SUMMARY: /, ""); p = $1 + 1; f = $3 - 1;
                print "SUMMARY: " p " passed, " f " failed"; next } { print }' "$file" >"$file.tmp" && mv "$file.tmp" "$file"
        fi
    done
    if ! grep -q '^SUMMARY: ' "$file" || grep -q '^FAIL ' "$file"; then
        echo "record-conformance: $name on KVM did not pass every check (see $file)" >&2
        bad=1
    fi
    echo "record-conformance: $file: $(grep -c '^PASS ' "$file") PASS, $(grep -c '^FAIL ' "$file") FAIL"
done
if ((status != 0)); then
    echo "record-conformance: the lane itself failed (status $status): the emulated backend differs from KVM" >&2
fi
exit "$bad"
