# SPDX-License-Identifier: MIT
# shellcheck shell=sh disable=SC3043 # busybox sh, which has `local`
#
# The nested-KVM lane's scenarios. Runs INSIDE the guest that scripts/nested-kvm.sh boots (busybox sh, as
# /scenarios.sh, in /tmp, with /dev/kvm from kvm_amd, which has SMM). Its exit status is the lane's verdict:
# /init prints `NESTED-LANE: PASS` for 0, else `NESTED-LANE: FAIL (status N)`.
#
# To add a scenario, add a line at the end:
#   run_one NAME ARGS...    one `minivmm run ARGS... --json /tmp/NAME.json`, which must exit 0;
#   run_pair NAME ARGS...   the same scenario on --smm emulated and --smm kvm (NAME.emulated, NAME.kvm),
#                           then `minivmm compare` of the two reports once that command exists.
# Timings here are not comparable with the host's (each VM exit costs about 31 µs): use it for correctness.

failures=0

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

# run_pair NAME ARGS...: the same scenario on both backends. A kvm run that minivmm answers with
# "not implemented" is reported as SKIP rather than counted as a failure, until the kvm backend lands.
run_pair() {
    local name="$1" t0 e k
    shift
    run_one "$name.emulated" --smm emulated "$@"
    e=$?
    say "run $name.kvm: minivmm run --smm kvm $* --json /tmp/$name.kvm.json"
    t0=$(now_cs)
    minivmm run --smm kvm "$@" --json "/tmp/$name.kvm.json" >"/tmp/$name.kvm.out" 2>&1
    k=$?
    cat "/tmp/$name.kvm.out"
    if [ "$k" -ne 0 ] && grep -q 'not implemented' "/tmp/$name.kvm.out"; then
        say "SKIP $name.kvm (the kvm backend is not implemented yet)"
        return 0
    elif [ "$k" -ne 0 ]; then
        fail "$name.kvm (minivmm exited $k after $(since "$t0") s)"
        return "$k"
    fi
    say "PASS $name.kvm ($(since "$t0") s)"
    # Compare the two reports field for field, once minivmm has a compare command.
    if [ "$e" -eq 0 ] && minivmm help compare >/dev/null 2>&1; then
        if minivmm compare "/tmp/$name.emulated.json" "/tmp/$name.kvm.json"; then
            say "PASS $name: emulated and kvm reports agree"
        else
            fail "$name: emulated and kvm reports differ"
        fi
    fi
}

# ---- the scenarios -----------------------------------------------------------------------------------------

say "kernel $(uname -r)"
caps
run_one e4 --smm emulated --max-cpus 4 --boot-cpus 2 --hot-add 2
# Next: run_pair p4 --max-cpus 4 --boot-cpus 2 --hot-add 2   (and more pairs: --no-long-mode, --attack, ...)

if [ "$failures" -eq 0 ]; then
    say "all scenarios passed"
else
    say "$failures failed"
fi
[ "$failures" -eq 0 ]
