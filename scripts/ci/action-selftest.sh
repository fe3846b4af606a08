#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Runs the composite action's steps (action.yml) as a script, as a firmware repository's job would run them:
# the build step, then scripts/ci/minivmm-check.sh with the action's inputs in the environment. Three cases:
#   1. the built-in firmware: the check must pass;
#   2. a 4 KiB image whose reset vector writes a failing status (3) to isa-debug-exit (port 0xF4): the check must
#      fail with exit 2 and name the outcome (guest-failure, status 7);
#   3. a 4 KiB image whose reset vector exits successfully without relocating SMBASE: the run completes, so the
#      check must fail with exit 1 and name invariant 1 (no CPU took an SMI).
# Usage: scripts/ci/action-selftest.sh   (from .ci/run; needs an openable /dev/kvm)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
    printf 'action-selftest: error: %s\n' "$*" >&2
    exit 1
}

# The action's steps must be the ones run here: the check script, inputs passed through env.
# (The literal text of action.yml: $GITHUB_ACTION_PATH stays unexpanded.)
# shellcheck disable=SC2016
{
    grep -q 'bash "$GITHUB_ACTION_PATH/scripts/ci/minivmm-check.sh"' action.yml ||
        fail "action.yml no longer runs scripts/ci/minivmm-check.sh"
    grep -q 'swift build -c release --package-path "$GITHUB_ACTION_PATH"' action.yml ||
        fail "action.yml no longer builds minivmm as this script does"
}

# Step 1 of the action: build minivmm (GITHUB_ACTION_PATH is this checkout).
export GITHUB_ACTION_PATH=$root
swift build -c release --package-path "$GITHUB_ACTION_PATH"
MINIVMM="$(swift build -c release --package-path "$GITHUB_ACTION_PATH" --show-bin-path)/minivmm"
export MINIVMM

# A 4 KiB flat image: HLT everywhere, and at the reset vector (0xFFFFFFF0, offset 0xFF0)
#   mov al, STATUS ; out 0xF4, al ; jmp $
image() {
    local status=$1 file=$2
    {
        head -c 4080 /dev/zero | tr '\0' '\364'
        printf '\260\\x%02x\346\364\353\376' "$status" | xargs -0 printf '%b'
        printf '\364\364\364\364\364\364\364\364\364\364'
    } >"$file"
    [[ $(stat -c %s "$file") -eq 4096 ]] || fail "$file is not 4096 bytes"
}

# check NAME EXPECTED_STATUS MUST_NAME [VAR=VALUE...]: step 2 of the action with those inputs.
check() {
    local name=$1 want=$2 must=$3 st=0
    shift 3
    echo "==> action self-test: $name (expect exit $want)"
    env MINIVMM_OUT="$work/$name" MINIVMM_MAX_CPUS=8 MINIVMM_BOOT_CPUS=2 MINIVMM_STRATEGY=relocate-all-at-boot \
        MINIVMM_BACKEND=auto "$@" bash scripts/ci/minivmm-check.sh >"$work/$name.log" 2>&1 || st=$?
    cat "$work/$name.log"
    [[ $st -eq $want ]] || fail "$name: the check exited $st, expected $want"
    grep -qF -- "$must" "$work/$name.log" || fail "$name: the output does not name '$must'"
    [[ -s $work/$name/minivmm.json && -s $work/$name/minivmm.junit.xml ]] || fail "$name: reports missing"
    if command -v xmllint >/dev/null 2>&1; then
        xmllint --noout --schema Tests/schemas/junit.xsd "$work/$name/minivmm.junit.xml"
    fi
    echo "==> action self-test: $name: ok (exit $st)"
}

image 3 "$work/fails.bin"
image 0 "$work/no-smbase.bin"

check builtin 0 "minivmm-check: PASS"
check failing-status 2 "::error title=minivmm::outcome: guest-failure: firmware exited with isa-debug-exit status 7" \
    MINIVMM_FIRMWARE="$work/fails.bin" MINIVMM_ARGS="--timeout 60"
check no-relocation 1 "::error title=minivmm::invariant 1 relocation at 3000:8000" \
    MINIVMM_FIRMWARE="$work/no-smbase.bin" MINIVMM_ARGS="--timeout 60"
echo "action-selftest: 3 passed, 0 failed"
