# SPDX-License-Identifier: MIT
# shellcheck shell=sh disable=SC3043 # busybox sh, which has `local`
#
# The nested-KVM lane's scenarios. Runs INSIDE the guest that scripts/nested-kvm.sh boots (busybox sh, as
# /scenarios.sh, in /tmp, with /dev/kvm from kvm_amd, which has SMM). Its exit status is the lane's verdict:
# /init prints `NESTED-LANE: PASS` for 0, else `NESTED-LANE: FAIL (status N)`.
#
# To add a scenario, add a line at the end:
#   run_one NAME ARGS...    one `minivmm run ARGS... --json /tmp/NAME.json`, which must exit 0;
#   run_pair NAME ARGS...   the same scenario on --smm kvm and --smm emulated (/tmp/NAME.kvm.json and
#                           /tmp/NAME.emulated.json), then `minivmm compare` of the two: 0 differing fields;
#   run_pair_kvm NAME "KVM-ARGS" ARGS...  the same with KVM-ARGS added on the kvm side only (e.g. the built-in
#                           firmware without its SMM entry probe there, the normal one on the emulated side).
# Timings here are not comparable with the host's (each VM exit costs about 31 µs): use it for correctness.

failures=0
expect_fail=0

say() { echo "nested: $*"; }

# Centiseconds since boot (busybox date has no sub-second format).
now_cs() {
    local up _
    read -r up _ </proc/uptime
    # "12.05" -> 1205; the 1 in front keeps a fraction such as 08 from reading as octal.
    echo $((${up%.*} * 100 + 1${up#*.} - 100))
}

# Seconds, with two decimals, since a now_cs value.
since() {
    local d=$(($(now_cs) - $1))
    printf '%d.%02d' $((d / 100)) $((d % 100))
}

# fail WHAT: counts a failure and says so.
fail() {
    failures=$((failures + 1))
    say "FAIL $*"
}

# caps: prints `minivmm caps` and KVM_CAP_X86_SMM=1 when this KVM has SMM (the reason this lane exists).
caps() {
    say "minivmm caps:"
    if ! minivmm caps >/tmp/caps.txt 2>&1; then
        cat /tmp/caps.txt
        fail "minivmm caps"
        return
    fi
    cat /tmp/caps.txt
    if grep -q 'KVM_CAP_X86_SMM: yes' /tmp/caps.txt; then
        echo "KVM_CAP_X86_SMM=1"
    else
        echo "KVM_CAP_X86_SMM=0"
        fail "this KVM has no SMM: the kvm backend cannot run here"
    fi
}

# run_one NAME ARGS...: one minivmm run with its report in /tmp/NAME.json; its exit status must be 0.
# Returns minivmm's exit status. (busybox sh has `local`; without it a caller's variables would change.)
run_one() {
    local name="$1" t0 st
    shift
    say "run $name: minivmm run $* --json /tmp/$name.json"
    t0=$(now_cs)
    minivmm run "$@" --json "/tmp/$name.json" >"/tmp/$name.out" 2>&1
    st=$?
    cat "/tmp/$name.out"
    if [ "$st" -eq 0 ]; then
        say "PASS $name ($(since "$t0") s)"
    else
        fail "$name (minivmm exited $st after $(since "$t0") s)"
    fi
    return "$st"
}

# guarded SECONDS OUT CMD...: runs CMD with output to OUT; if it outlives SECONDS (minivmm's own --timeout should
# end it first), prints every thread's state and kernel stack, kills it, and returns 124.
guarded() {
    local limit="$1" out="$2" pid n=0 t
    shift 2
    "$@" >"$out" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$n" -ge "$limit" ]; then
            say "STUCK after $n s: $*"
            for t in /proc/"$pid"/task/*; do
                echo "thread $(cat "$t/comm") state $(cut -d' ' -f3 "$t/stat") wchan $(cat "$t/wchan" 2>/dev/null)"
            done | sort | uniq -c | sort -rn | head -n 20
            for t in /proc/"$pid"/task/*; do
                echo "== $(cat "$t/comm") $(cut -d' ' -f3 "$t/stat")"
                head -n 8 "$t/stack" 2>/dev/null
            done | head -n 80
            kill -9 "$pid"
            wait "$pid" 2>/dev/null
            return 124
        fi
        sleep 1
        n=$((n + 1))
    done
    wait "$pid"
}

# run_pair NAME ARGS...: the same scenario on --smm kvm (KVM's own SMM) and --smm emulated, then
# `minivmm compare` of the two reports, field by field (timings and observation costs excluded). Any differing
# field fails the lane. The scenario's own verdict is checked separately: with expect_fail=1, the scenario must
# fail its invariants (minivmm exit 1) on both backends.
run_pair_once() {
    local name="$1" want=0
    shift
    [ "$expect_fail" = 1 ] && want=1
    for backend in kvm emulated; do
        local t0 st
        t0=$(now_cs)
        guarded 300 "/tmp/$name.$backend.out" minivmm run --smm "$backend" --timeout 240 "$@" \
            --json "/tmp/$name.$backend.json"
        st=$?
        if [ "$st" -ne "$want" ]; then
            grep -v '^guest:' "/tmp/$name.$backend.out" | tail -n 40
            # Where the SMIs interrupted the CPUs (saved RIP: how many of each), for races around HLT.
            grep '"savedRIP"' "/tmp/$name.$backend.json" 2>/dev/null | sort | uniq -c
            fail "$name on $backend: minivmm exited $st, expected $want ($(since "$t0") s)"
            return 1
        fi
        say "$name on $backend: exit $st as expected ($(since "$t0") s)"
    done
    if minivmm compare "/tmp/$name.kvm.json" "/tmp/$name.emulated.json" >"/tmp/$name.cmp" 2>&1; then
        say "PASS $name: $(tail -n 1 "/tmp/$name.cmp")"
    else
        cat "/tmp/$name.cmp"
        fail "$name: the kvm and emulated reports differ"
        return 1
    fi
}

# run_pair NAME ARGS...: run_pair_once, and once more if it failed. A scenario that passes only on the second try
# is counted and named at the end (the first failure stays in the log above); one that fails twice fails the lane.
# Two rare failures inside this TCG-emulated guest motivate it: a 256-CPU emulated run that timed out, and one in
# which CPU 90 was never relocated (see the closing note of issue 4); neither was reproduced in ~100 later runs.
retried=""
run_pair() {
    local before="$failures"
    run_pair_once "$@" && return 0
    failures="$before"
    say "RETRY $1 (its first attempt failed; output above)"
    retried="$retried $1"
    run_pair_once "$@"
}

# run_pair_kvm NAME "KVM-ARGS" ARGS...: run_pair_once with KVM-ARGS (a word list) on the kvm side only. Used with
# `--firmware builtin:noprobe` on kvm: the kvm backend must observe a firmware whose SMI handlers give it no exit
# at entry (issue 9, gap 4). Compare then skips, and counts, the fields the kvm side reports unobserved (the saved
# CS:RIP of SMIs whose entry it did not see); every other field must match.
run_pair_kvm() {
    local name="$1" kargs="$2" want=0 backend
    shift 2
    [ "$expect_fail" = 1 ] && want=1
    for backend in kvm emulated; do
        local t0 st extra=""
        [ "$backend" = kvm ] && extra="$kargs"
        t0=$(now_cs)
        # shellcheck disable=SC2086 # $extra is a word list
        guarded 300 "/tmp/$name.$backend.out" minivmm run --smm "$backend" --timeout 240 $extra "$@" \
            --json "/tmp/$name.$backend.json"
        st=$?
        if [ "$st" -ne "$want" ]; then
            grep -v '^guest:' "/tmp/$name.$backend.out" | tail -n 40
            fail "$name on $backend: minivmm exited $st, expected $want ($(since "$t0") s)"
            return 1
        fi
        say "$name on $backend${extra:+ ($extra)}: exit $st as expected ($(since "$t0") s)"
    done
    if minivmm compare "/tmp/$name.kvm.json" "/tmp/$name.emulated.json" >"/tmp/$name.cmp" 2>&1; then
        grep 'unobserved, not compared' "/tmp/$name.cmp"
        say "PASS $name: $(tail -n 1 "/tmp/$name.cmp")"
    else
        cat "/tmp/$name.cmp"
        fail "$name: the kvm and emulated reports differ"
        return 1
    fi
}

# kvm_cpu_limit: the kvm backend holds every CPU in one KVM VM (KVM's SMM, its in-kernel local APICs), so where
# this KVM allows fewer than 4096 vCPUs per VM, `--smm kvm --max-cpus 4096` must be one line naming
# KVM_CAP_MAX_VCPUS, status 64, before any KVM work (the emulated backend spreads its vCPUs over several VMs instead).
kvm_cpu_limit() {
    local max st
    max=$(sed -n 's/^max vCPUs: //p' /tmp/caps.txt)
    if [ -z "$max" ] || [ "$max" -ge 4096 ]; then
        say "kvm CPU limit: this KVM allows ${max:-?} vCPUs per VM, nothing to refuse at 4096"
        return
    fi
    minivmm run --smm kvm --max-cpus 4096 --boot-cpus 2 >/tmp/kvmlimit.out 2>&1
    st=$?
    cat /tmp/kvmlimit.out
    if [ "$st" -eq 64 ] && [ "$(wc -l </tmp/kvmlimit.out)" -eq 1 ] && grep -q 'KVM_CAP_MAX_VCPUS' /tmp/kvmlimit.out; then
        say "PASS kvm CPU limit: --smm kvm --max-cpus 4096 refused in one line (KVM allows $max per VM)"
    else
        fail "kvm CPU limit: --smm kvm --max-cpus 4096 exited $st"
    fi
}

# injected_difference NAME: flips one field (the first savedRIP) of a copy of NAME's kvm report; compare must
# catch it, so the lane proves its comparison can fail.
injected_difference() {
    local name="$1" src="/tmp/$1.kvm.json" bad="/tmp/$1.tampered.json"
    awk '!done && /"savedRIP" : [0-9]/ { sub(/"savedRIP" : /, "\"savedRIP\" : 1"); done = 1 } { print }' \
        "$src" >"$bad"
    if cmp -s "$src" "$bad"; then
        fail "injected difference: no savedRIP field to flip in $src"
    elif minivmm compare "$bad" "/tmp/$name.emulated.json" >/tmp/injected.cmp 2>&1; then
        cat /tmp/injected.cmp
        fail "injected difference: compare did not notice a flipped savedRIP"
    else
        say "PASS injected difference caught: $(grep savedRIP /tmp/injected.cmp | head -n 1) ($(tail -n 1 /tmp/injected.cmp))"
    fi
}

# qmp_pair NAME: one QMP-driven hot-add (minivmm's own client, `minivmm qmp`: no Python in here) on --smm kvm and
# on --smm emulated: strategy A boots 4 CPUs, the client unplugs CPU 3, waits for DEVICE_DELETED, plugs it back and
# finishes the firmware; then `minivmm compare` of the two reports.
qmp_pair() {
    local name="$1" sock="/tmp/$1.sock" backend pid n
    for backend in kvm emulated; do
        rm -f "$sock"
        minivmm run --smm "$backend" --timeout 240 --max-cpus 4 --boot-cpus 4 --strategy A --qmp "unix:$sock" \
            --qmp-wait --json "/tmp/$name.$backend.json" >"/tmp/$name.$backend.out" 2>&1 &
        pid=$!
        n=0
        while [ ! -S "$sock" ] && [ "$n" -lt 100 ]; do
            sleep 0.1
            n=$((n + 1))
        done
        if ! minivmm qmp --timeout 200 "unix:$sock" \
            '{"execute":"device_del","arguments":{"id":"/machine/unattached/device[3]"}}' wait:DEVICE_DELETED \
            '{"execute":"device_add","arguments":{"driver":"qemu64-x86_64-cpu","socket-id":3,"core-id":0,"thread-id":0}}' \
            '{"execute":"x-minivmm-finish"}' wait:SHUTDOWN >"/tmp/$name.$backend.qmp" 2>&1; then
            cat "/tmp/$name.$backend.qmp"
            fail "$name on $backend: the QMP client failed"
        fi
        if ! wait "$pid"; then
            tail -n 40 "/tmp/$name.$backend.out"
            fail "$name on $backend: minivmm exited non-zero"
            return 1
        fi
        say "$name on $backend: QMP hot-add completed"
    done
    if minivmm compare "/tmp/$name.kvm.json" "/tmp/$name.emulated.json" >"/tmp/$name.cmp" 2>&1; then
        say "PASS $name: $(tail -n 1 "/tmp/$name.cmp")"
    else
        cat "/tmp/$name.cmp"
        fail "$name: the QMP-driven kvm and emulated reports differ"
    fi
}

# Conformance checks whose lines differ in this lane for a known reason that lies in minivmm, not in KVM's SMM, as
# `NAME NAME...`, each with its reason in a comment here; each must show up (the lane fails once one no longer does:
# remove it here) and no other line may differ. None now: entry.idtr-base and entry.idtr-limit were here until the
# emulated backend learnt that this lane's CPU (SVM under QEMU TCG) does not stop at hardware breakpoints and that
# KVM's emulator drops the single-step TF (EmulatedSMMWatch.swift); issue 9.
conformance_known=''

# known_line LINE: whether a console line or a compare line is about a known difference (or the SUMMARY line,
# whose counts follow from them, and the report fields that follow from the SUMMARY: the firmware's isa-debug-exit
# status and the run's outcome; the consoles without the known lines are compared on their own).
known_line() {
    local k
    case "$1" in *SUMMARY* | "  guestExitStatus: "* | "  outcome: "* | "  outcomeDetail: "*) return 0 ;; esac
    for k in $conformance_known; do
        case "$1" in *" $k:"* | *" $k" | *" $k\""* | *" $k\" "*) return 0 ;; esac
    done
    return 1
}

# filtered FILE: FILE without the lines known_line accepts.
filtered() {
    local line
    while IFS= read -r line; do
        known_line "$line" || printf '%s\n' "$line"
    done <"$1"
}

# known_compare FILE: the `minivmm compare` lines of FILE that are not about a known check: a check's `.passed`
# line goes with its `.line` line (same index), which names the check.
known_compare() {
    local line idx known_idx=' '
    while IFS= read -r line; do
        case "$line" in
        *"conformance.checks["*"].line:"*)
            if known_line "$line"; then
                idx=${line#*checks[}
                known_idx="$known_idx${idx%%]*} "
            fi
            ;;
        esac
    done <"$1"
    while IFS= read -r line; do
        known_line "$line" && continue
        case "$line" in
        *"conformance.checks["*"].passed:"*)
            idx=${line#*checks[}
            case "$known_idx" in *" ${idx%%]*} "*) continue ;; esac
            ;;
        esac
        printf '%s\n' "$line"
    done <"$1"
}

# conformance_pair NAME ARGS...: the conformance firmware (--firmware builtin:conformance) on --smm kvm and --smm
# emulated. KVM's own SMM is the oracle: every check must PASS there but the known ones above (a FAIL on KVM means the
# firmware expects the wrong thing). Its console is printed with the prefix `CONFORMANCE-KVM NAME `
# (scripts/nested/record-conformance.sh turns those lines into Tests/conformance/expected-NAME.txt); the emulated
# backend's console must match it line for line and `minivmm compare` must find no differing field, apart from the
# known lines; each known check must still differ somewhere in the four pairs (conformance_all).
# The image is $conformance_firmware (builtin:conformance unless a caller sets it).
conformance_seen=''
conformance_firmware=builtin:conformance
conformance_pair() {
    local name="$1" backend st t0 ok=1 line k
    shift
    for backend in kvm emulated; do
        t0=$(now_cs)
        guarded 300 "/tmp/$name.$backend.out" minivmm run --smm "$backend" --timeout 240 \
            --firmware "$conformance_firmware" "$@" --json "/tmp/$name.$backend.json"
        st=$?
        sed -n 's/^guest: //p' "/tmp/$name.$backend.out" >"/tmp/$name.$backend.console"
        [ "$st" -gt 1 ] && grep -v '^guest:' "/tmp/$name.$backend.out" | tail -n 12
        say "$name on $backend: minivmm exited $st ($(since "$t0") s), $(grep -c '^PASS ' "/tmp/$name.$backend.console") PASS, $(grep -c '^FAIL ' "/tmp/$name.$backend.console") FAIL"
        if [ "$st" -gt 1 ] || ! grep -q '^SUMMARY' "/tmp/$name.$backend.console"; then
            fail "$name: the conformance firmware did not finish on the $backend backend (exit $st)"
            ok=0
        fi
        for k in $conformance_known; do
            grep -q "^FAIL $k:" "/tmp/$name.$backend.console" && conformance_seen="$conformance_seen $k"
        done
        if [ "$backend" = kvm ]; then
            sed "s/^/CONFORMANCE-KVM $name /" "/tmp/$name.kvm.console"
            if filtered "/tmp/$name.kvm.console" | grep -q '^FAIL '; then
                filtered "/tmp/$name.kvm.console" | grep '^FAIL '
                fail "$name: the conformance firmware does not pass on KVM's own SMM"
                ok=0
            fi
        fi
    done
    filtered "/tmp/$name.kvm.console" >"/tmp/$name.kvm.cmpconsole"
    filtered "/tmp/$name.emulated.console" >"/tmp/$name.emulated.cmpconsole"
    if ! diff "/tmp/$name.kvm.cmpconsole" "/tmp/$name.emulated.cmpconsole" >"/tmp/$name.console.diff"; then
        cat "/tmp/$name.console.diff"
        fail "$name: the emulated backend's console differs from KVM's"
        ok=0
    fi
    minivmm compare "/tmp/$name.kvm.json" "/tmp/$name.emulated.json" >"/tmp/$name.cmp" 2>&1
    grep '≠' "/tmp/$name.cmp" >"/tmp/$name.cmplines"
    if known_compare "/tmp/$name.cmplines" | grep -q .; then
        cat "/tmp/$name.cmp"
        fail "$name: the kvm and emulated reports differ"
        ok=0
    else
        say "$name: $(tail -n 1 "/tmp/$name.cmp") (known lines only: $(grep -c . "/tmp/$name.cmplines"))"
    fi
    [ "$ok" = 1 ] && say "PASS $name: identical consoles and reports but for the known lines"
}

# badrsm_pair NAME ARGS...: builtin:conformance-badrsm, whose last act is an RSM with a saved CR0 that has PG without
# PE, on both backends: KVM's RSM rejects it and shuts the machine down, so both runs must end as a triple fault
# (minivmm exit 2) with the same console, the last line announcing that RSM.
badrsm_pair() {
    local name="$1" backend st ok=1
    shift
    for backend in kvm emulated; do
        guarded 300 "/tmp/$name.$backend.out" minivmm run --smm "$backend" --timeout 120 \
            --firmware builtin:conformance-badrsm "$@" --json "/tmp/$name.$backend.json"
        st=$?
        sed -n 's/^guest: //p' "/tmp/$name.$backend.out" >"/tmp/$name.$backend.console"
        say "$name on $backend: minivmm exited $st: $(grep -m 1 '^  outcome:' "/tmp/$name.$backend.out")"
        if [ "$st" -ne 2 ] || ! grep -q '^  outcome: triple-fault' "/tmp/$name.$backend.out" ||
            ! tail -n 1 "/tmp/$name.$backend.console" | grep -q '^rsm.bad-cr0:'; then
            grep -v '^guest:' "/tmp/$name.$backend.out" | tail -n 12
            fail "$name: the invalid RSM did not shut the machine down on the $backend backend"
            ok=0
        fi
    done
    if ! diff "/tmp/$name.kvm.console" "/tmp/$name.emulated.console"; then
        fail "$name: the consoles differ"
        ok=0
    fi
    [ "$ok" = 1 ] && say "PASS $name: a triple fault at the invalid RSM on both backends"
}

# conformance_all: the conformance firmware on 1 and 2 CPUs, with the 64-bit and the 32-bit save-state map; the same
# firmware without its SMM entry probe (the kvm backend observes it from KVM's state alone, so nothing of minivmm
# perturbs it there); the invalid RSM on both maps.
conformance_all() {
    conformance_pair conformance-cpus1 --max-cpus 1
    conformance_pair conformance-cpus2 --max-cpus 2
    conformance_pair conformance-cpus1-legacy32 --max-cpus 1 --no-long-mode
    conformance_pair conformance-cpus2-legacy32 --max-cpus 2 --no-long-mode
    conformance_firmware=builtin:conformance-noprobe
    conformance_pair conformance-noprobe-cpus2 --max-cpus 2
    conformance_firmware=builtin:conformance
    badrsm_pair badrsm --max-cpus 1
    badrsm_pair badrsm-legacy32 --max-cpus 1 --no-long-mode
    for k in $conformance_known; do
        case "$conformance_seen " in
        *" $k "*) say "known conformance difference still seen: $k" ;;
        *) fail "the known conformance difference $k no longer shows: remove it from conformance_known" ;;
        esac
    done
}

# ---- the scenarios -----------------------------------------------------------------------------------------

say "kernel $(uname -r)"
caps
kvm_cpu_limit
# max CPUs 1, 4, 64 and 256 with hot-remove and hot-add (the default hot-add set: first removed, a middle one,
# the highest), both save-state formats, and QEMU's RESET-on-hot-add, which strategy A must fail on both.
run_pair cpus1 --max-cpus 1 --boot-cpus 1
run_pair cpus4 --max-cpus 4 --boot-cpus 2
run_pair cpus4-legacy32 --max-cpus 4 --boot-cpus 2 --no-long-mode
run_pair cpus64 --max-cpus 64 --boot-cpus 2
run_pair cpus64-legacy32 --max-cpus 64 --boot-cpus 4 --hot-add 4,31,63 --no-long-mode
run_pair cpus256 --max-cpus 256 --boot-cpus 2
# The kvm backend's scale on every CI run: 1024 possible CPUs, as the host's demo (the summary's `wall:` line names
# where the time goes on each backend).
run_pair cpus1024 --max-cpus 1024 --boot-cpus 2
expect_fail=1
run_pair reset8 --max-cpus 8 --boot-cpus 2 --hotplug-reset
expect_fail=0
# Strategies B (the VMM loads MSR 0x9E from the hotplug block's SMBASE register at hot-add), C (SMRAM at the default
# SMBASE: MCH 0x9C locked, the window leaves address space 0) and N (relocation in ordinary RAM: invariant 3 must
# fail on both backends), then the attack matrix: every strategy under every attack, compared row by row.
run_pair stratB64 --strategy B --max-cpus 64 --boot-cpus 2
run_pair stratC64 --strategy C --max-cpus 64 --boot-cpus 2
run_pair stratC8-legacy32 --strategy C --max-cpus 8 --boot-cpus 2 --no-long-mode
run_pair stratC8-remove --strategy C --max-cpus 8 --boot-cpus 2 --hot-remove 1,7
expect_fail=1
run_pair stratN8 --strategy N --max-cpus 8 --boot-cpus 2
expect_fail=0
run_pair matrix64 --strategy all --attack --max-cpus 64 --boot-cpus 2
say "the attack matrix on the kvm backend (KVM's own SMM):"
sed -n '/^minivmm attack matrix/,/^MATRIX/p' /tmp/matrix64.kvm.out
injected_difference cpus4
# The built-in firmware without its SMM entry probe on the kvm backend (KVM's SMM flag, MSR 0x9E and MSR_SMI_COUNT
# at every exit, single-stepping armed with each KVM_SMI), against the normal firmware on the emulated backend:
# complete, passing reports, compare skipping only the saved CS:RIP the kvm side reports unobserved. The last pair
# asks for the entry breakpoint too (this nested host does not honour it: QEMU TCG's SVM; the run must still be
# complete). Strategy N is not here: its hot-added CPU takes two SMI IPIs with no exit in between, whose SMBASEs
# exit granularity cannot observe, and the kvm run says so and fails.
run_pair_kvm noprobe4 "--firmware builtin:noprobe" --max-cpus 4 --boot-cpus 2
run_pair_kvm noprobe8-legacy32 "--firmware builtin:noprobe" --max-cpus 8 --boot-cpus 2 --no-long-mode
run_pair_kvm noprobe64 "--firmware builtin:noprobe" --max-cpus 64 --boot-cpus 2
run_pair_kvm noprobeB64 "--firmware builtin:noprobe" --strategy B --max-cpus 64 --boot-cpus 2
run_pair_kvm noprobeC8-remove "--firmware builtin:noprobe" --strategy C --max-cpus 8 --boot-cpus 2 --hot-remove 1,7
expect_fail=1
run_pair_kvm noprobe-reset8 "--firmware builtin:noprobe" --max-cpus 8 --boot-cpus 2 --hotplug-reset
expect_fail=0
run_pair_kvm noprobe4-bp "--firmware builtin:noprobe --smm-entry-breakpoint" --max-cpus 4 --boot-cpus 2
# Debian's SeaBIOS, stock (nested-kvm.sh copies it in when the host has the seabios package), on both backends: one
# APM SMI on the boot CPU relocates it to 0xA0000 in the A-segment, CPU 1 is never relocated, SMRAM is never locked
# (the same findings as on the host, scripts/ci/seabios.sh), and the two reports must not differ in any field both
# backends observe. SeaBIOS's handler executes its RSM in the F-segment (0xFE2C1), outside the SMRAM the emulated
# backend scans for RSM: a session whose scanned code holds no RSM is single-stepped (EmulatedSMMWatch.armWatch).
if [ -e /usr/share/seabios/bios-256k.bin ]; then
    for b in kvm emulated; do
        if run_one seabios-$b --smm $b --firmware /usr/share/seabios/bios-256k.bin --stock --max-cpus 2 \
            --until-console "No bootable device" --timeout 240; then
            grep -q '^  findings: boot CPU relocated to 0xA0000; CPU 1 never relocated (SMBASE 0x30000); SMRAM never locked$' \
                /tmp/seabios-$b.out || fail "seabios-$b: not the expected findings"
        fi
    done
    if [ -e /tmp/seabios-kvm.json ] && [ -e /tmp/seabios-emulated.json ]; then
        if minivmm compare /tmp/seabios-kvm.json /tmp/seabios-emulated.json >/tmp/seabios.cmp 2>&1; then
            say "PASS seabios pair: $(tail -n 1 /tmp/seabios.cmp)"
        else
            cat /tmp/seabios.cmp
            fail "seabios: the kvm and emulated reports differ"
        fi
    fi
else
    say "SKIPPED seabios: no /usr/share/seabios/bios-256k.bin in the initramfs (the host has no seabios package)"
fi
# Debian's OVMF 2022.11, SMM build (OVMF_CODE_4M.secboot.fd + OVMF_VARS_4M.fd as the pflash pair, the variable store a
# copy in /tmp), stock, on KVM's own SMM, to its SMRAM lock (--until-smram-locked): every CPU must be relocated into
# TSEG and SMRAM locked, or the lane fails. Without stepping SMM code (--no-smm-stepping): OVMF's SMM code is millions
# of instructions, ~31 us per step here. The lane's outer QEMU is Debian's 7.2 rebuilt with a fix
# (scripts/nested/build-qemu.sh): Debian's own aborts in OVMF's DXE phase, about 4 s in ("tcg_handle_interrupt: assertion
# failed: (qemu_mutex_iothread_locked())"; QEMU 10.0.2 from bookworm-backports the same way): OVMF's interrupt handlers
# restore CR8 on every return (CpuExceptionHandlerLib ExceptionHandlerAsm.nasm, `mov cr8, rax`), and TCG's SVM
# `helper_write_crN` (case 8) called cpu_interrupt(CPU_INTERRUPT_VIRQ) without the big lock while the nested KVM had an
# interrupt window (V_IRQ) open; the built-in firmwares never write CR8. With the fix: both CPUs relocated into TSEG
# (CPU 0 to SMBASE 0xFFC1000, CPU 1 to 0xFFC3000, each after its first SMI at 0x38000), SMRAM locked at 20.5 s, 276
# SMIs, 34,248 exits. Without the patched QEMU (NESTED_QEMU=system) nested-kvm.sh leaves OVMF out and this is skipped.
#
# Not on the emulated backend. On the host its KVM (kvm_pvm) cannot emulate SEC's x87 FINIT (9B DB E3) at 0xfffced35 (19
# exits, KVM_EXIT_INTERNAL_ERROR). In this lane, with two CPUs, it stops in PEI (TSEG closed at 1.1-2.7 s, never
# reopened by DXE): the boot CPU broadcasts INIT (ICR 0xC4500) and SIPI (0xC462F) to all but itself, CPU 1 halts again
# at 10:efe9d57, and the boot CPU spins at 10:efea669 with RAX = "STAP" (MpInitLib's WAKEUP_AP_SIGNAL: it waits for CPU
# 1 to clear its wake-up signal); no SMI in 240 s. The kvm backend gets past this point, so the emulated backend differs
# from KVM here. With one CPU it reaches DXE and the relocation SMI (at 0x38000), which then takes #UD in SMM at
# 0xFFDC889 in the image at 0xFFD3000 (OVMF's exception dump on COM1): OVMF's relocation stub jumps into
# PiSmmCpuDxeSmm's SmmStartup in TSEG, whose RSM lies outside the code the backend scans for RSM while TSEG is open, so
# the SMRAM-view vCPU, which is not in SMM, most likely executes it.
if [ -e /usr/share/OVMF/OVMF_CODE_4M.secboot.fd ] && [ -e /usr/share/OVMF/OVMF_VARS_4M.fd ]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.fd /tmp/ovmf-kvm-vars.fd
    if run_one ovmf-kvm --smm kvm --no-smm-stepping \
        --pflash /usr/share/OVMF/OVMF_CODE_4M.secboot.fd,/tmp/ovmf-kvm-vars.fd --max-cpus 2 --memory 256 \
        --until-smram-locked --timeout 240; then
        grep -q '^  findings: boot CPU relocated to 0x[0-9A-F]*; CPU 1 relocated to 0x[0-9A-F]*; SMRAM locked$' \
            /tmp/ovmf-kvm.out || fail "ovmf-kvm: not every CPU relocated, or SMRAM not locked"
        [ "$(grep -c '"region" : "tseg"' /tmp/ovmf-kvm.json)" -eq 2 ] || fail "ovmf-kvm: not every SMBASE in TSEG"
    fi
else
    say "SKIPPED ovmf-kvm: no OVMF in the initramfs (the host has no ovmf package, or NESTED_QEMU=system)"
fi
qmp_pair qmp-hotadd4
# The conformance firmware: KVM's SMM against the emulated model, check by check.
conformance_all

[ -n "$retried" ] && say "passed only on a second attempt:$retried"
if [ "$failures" -eq 0 ]; then
    say "all scenarios passed"
else
    say "$failures failed"
fi
[ "$failures" -eq 0 ]
