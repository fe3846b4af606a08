#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The drop-in check for firmware projects: what the composite action (action.yml at the repository root) runs,
# and the plain shell recipe of the README. It runs `minivmm run` on a firmware image with --json and --junit,
# prints the summary, names every failed invariant and an unfinished run's outcome (as GitHub annotations, which
# are plain lines elsewhere), and exits with minivmm's status: 0 when every invariant held, 1 when one failed,
# 2 when the run did not complete, 64 for bad input, 3 when the host cannot run the machine.
#
# Inputs, from the environment (the action passes its inputs this way, never spliced into the script):
#   MINIVMM            the minivmm binary (default: minivmm on PATH)
#   MINIVMM_FIRMWARE   flat firmware image, as QEMU's -bios (empty: minivmm's built-in firmware)
#   MINIVMM_MAX_CPUS   possible CPUs (default 8)
#   MINIVMM_BOOT_CPUS  CPUs at boot (default 2)
#   MINIVMM_STRATEGY   relocate-all-at-boot, hotplug-smbase-register, smram-at-default-smbase, naive, a letter, or
#                      all (default relocate-all-at-boot)
#   MINIVMM_BACKEND    --smm: auto, kvm or emulated (default auto)
#   MINIVMM_ARGS       further `minivmm run` flags, split on spaces (e.g. "--hot-add 2,9 --timeout 120")
#   MINIVMM_OUT        directory for minivmm.json, minivmm.junit.xml and minivmm.txt (default minivmm-report)
set -uo pipefail

minivmm=${MINIVMM:-minivmm}
out=${MINIVMM_OUT:-minivmm-report}
mkdir -p -- "$out" || exit 64

args=(run --max-cpus "${MINIVMM_MAX_CPUS:-8}" --boot-cpus "${MINIVMM_BOOT_CPUS:-2}"
    --strategy "${MINIVMM_STRATEGY:-relocate-all-at-boot}" --smm "${MINIVMM_BACKEND:-auto}"
    --json "$out/minivmm.json" --junit "$out/minivmm.junit.xml")
if [[ -n ${MINIVMM_FIRMWARE:-} ]]; then args+=(--firmware "$MINIVMM_FIRMWARE"); fi
if [[ -n ${MINIVMM_ARGS:-} ]]; then
    read -r -a extra <<<"$MINIVMM_ARGS"
    args+=("${extra[@]}")
fi

echo "minivmm-check: $minivmm ${args[*]}"
"$minivmm" "${args[@]}" >"$out/minivmm.txt"
status=$?
cat "$out/minivmm.txt"

# GitHub annotation data: %, CR and LF escaped as the runner expects.
annotate() {
    local s=${1//'%'/'%25'}
    s=${s//$'\r'/'%0D'}
    s=${s//$'\n'/'%0A'}
    echo "::error title=minivmm::$s"
}

if [[ $status -ne 0 ]]; then
    # The summary's lines name what failed: the outcome of an unfinished run, each failed invariant, and in the
    # attack matrix each cell or invariant that is not what the strategy table expects.
    while IFS= read -r line; do
        case $line in
        *"outcome: completed"*) ;;
        "  outcome: "*) annotate "${line#  }" ;;
        *"[FAIL] invariant "*) annotate "${line#*\[FAIL\] }" ;;
        *"unexpectedly: "* | *"FAIL: "*) annotate "${line#  }" ;;
        esac
    done <"$out/minivmm.txt"
    if ! grep -q . "$out/minivmm.txt"; then annotate "minivmm run exited $status (see the log above)"; fi
    echo "minivmm-check: FAIL (minivmm exited $status); reports in $out/"
else
    echo "minivmm-check: PASS; reports in $out/"
fi
if [[ -n ${GITHUB_STEP_SUMMARY:-} ]]; then
    { echo '```'; cat "$out/minivmm.txt"; echo '```'; } >>"$GITHUB_STEP_SUMMARY"
fi
exit "$status"
