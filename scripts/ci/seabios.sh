#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Stock firmware lane: Debian's SeaBIOS (package `seabios`, installed through apt when missing; never committed) on
# the emulated backend, run to "No bootable device", then the report's findings checked: the boot CPU relocated to
# 0xA0000 in the A-segment by one SMI, CPU 1 never relocated (SMBASE 0x30000, no SMI), the A-segment closed as
# SMRAM, SMRAM never locked. A bounded run (--timeout) that checks what the VMM observed, never how long it took.
#
#     bash scripts/ci/seabios.sh [MINIVMM_BINARY]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
minivmm=${1:-.build/debug/minivmm}
bios=/usr/share/seabios/bios-256k.bin

if [[ ! -e $bios ]]; then
    if [[ ${EUID} -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
    echo "installing seabios (apt)"
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends seabios >/dev/null
fi
echo "SeaBIOS: $bios ($(dpkg-query -W -f='${Version}' seabios 2>/dev/null || echo 'version unknown'))"

report=$(mktemp -d)/seabios.json
"$minivmm" run --firmware "$bios" --stock --smm emulated --max-cpus 2 --timeout 60 \
    --until-console "No bootable device" --json "$report" | grep -v '^guest: ' || {
    echo "seabios: minivmm run failed (report: $report)" >&2
    exit 1
}

python3 - "$report" <<'PY'
import json, sys

r = json.load(open(sys.argv[1]))
f = r.get("findings") or {}
problems = []
def need(ok, what):
    if not ok:
        problems.append(what)

need(r["outcome"] == "completed", f"outcome {r['outcome']}: {r['outcomeDetail']}")
cpus = {c["apicID"]: c for c in f.get("cpus", [])}
boot, ap = cpus.get(0, {}), cpus.get(1, {})
need(boot.get("relocated") and boot.get("smbase") == 0xA0000 and boot.get("region") == "a-segment",
     f"boot CPU not relocated to 0xA0000 in the A-segment: {boot}")
need(boot.get("smis") == 1 and boot.get("firstEntry") == 0x38000, f"boot CPU: not one SMI entered at 0x38000: {boot}")
need(not ap.get("relocated", True) and ap.get("smbase") == 0x30000 and ap.get("smis") == 0,
     f"CPU 1 should never be relocated (SMBASE 0x30000, no SMI): {ap}")
windows = {w["kind"]: w for w in f.get("windows", [])}
aseg = windows.get("a-segment", {})
need(aseg.get("closed") and aseg.get("firstClosedAt") is not None, f"A-segment never closed as SMRAM: {aseg}")
need(f.get("smramLocked") is False and all(not w["locked"] for w in windows.values()), "SMRAM was locked")
need(r["counters"]["smis"] == 1 and r["counters"]["rsms"] == 1, f"SMIs/RSMs: {r['counters']}")
line = (f.get("lines") or ["(no findings)"])[0]
if problems:
    print("seabios: FAIL: " + "; ".join(problems), file=sys.stderr)
    sys.exit(1)
print("seabios: ok: " + line)
PY
