#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The kvm SMM backend on a host whose KVM has KVM_CAP_X86_SMM (GitHub-hosted runners): a few scenarios on
# --smm kvm and on --smm emulated with `minivmm compare` of the two reports (0 differing fields), then the attack
# matrix on --smm kvm. The nested lane (scripts/nested-kvm.sh) does the same inside QEMU for hosts without KVM SMM.
# Usage: scripts/ci/kvm-native.sh OUTDIR   (--json reports and JUnit files land in OUTDIR)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${1:-reports}
mkdir -p "$out"
swift build -c release
minivmm="$(swift build -c release --show-bin-path)/minivmm"

caps=$("$minivmm" caps)
grep -q 'KVM_CAP_X86_SMM: yes' <<<"$caps" || {
    echo "kvm-native: this KVM has no SMM: use scripts/nested-kvm.sh" >&2
    exit 1
}

failures=0
# pair NAME ARGS...: the scenario on both backends, then compare.
pair() {
    local name=$1
    shift
    local st=0
    for smm in kvm emulated; do
        echo "==> $name --smm $smm: minivmm run $*"
        "$minivmm" run --quiet "$@" --smm "$smm" --json "$out/$name.$smm.json" --junit "$out/$name.$smm.junit.xml" || st=$?
        # naive fails invariant 3 by design (exit 1); anything else must pass.
        if [[ $st -ne 0 && ! ($st -eq 1 && $name == naive*) ]]; then
            echo "kvm-native: FAIL $name --smm $smm exited $st"
            failures=$((failures + 1))
        fi
        st=0
    done
    if ! "$minivmm" compare "$out/$name.kvm.json" "$out/$name.emulated.json"; then
        echo "kvm-native: FAIL $name: the backends' reports differ"
        failures=$((failures + 1))
    fi
}

pair relocate-all-16 --strategy A --max-cpus 16 --boot-cpus 2
pair hotplug-reg-16 --strategy B --max-cpus 16 --boot-cpus 2
pair default-smbase-16 --strategy C --max-cpus 16 --boot-cpus 2
pair naive-16 --strategy N --max-cpus 16 --boot-cpus 2
pair relocate-all-64-no-lm --strategy A --max-cpus 64 --boot-cpus 4 --no-long-mode

echo "==> attack matrix --smm kvm"
if ! "$minivmm" run --strategy all --attack --max-cpus 16 --smm kvm --json "$out/matrix.kvm.json" \
    --junit "$out/matrix.kvm.junit.xml"; then
    echo "kvm-native: FAIL the attack matrix on --smm kvm is not as expected"
    failures=$((failures + 1))
fi
if [[ $failures -ne 0 ]]; then
    echo "kvm-native: $failures failed"
    exit 1
fi
echo "kvm-native: ok"
