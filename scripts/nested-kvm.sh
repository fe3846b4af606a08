#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# The nested-KVM lane: runs minivmm on a KVM that has SMM, on a host whose own /dev/kvm has none.
#
# This host's KVM (kvm_pvm) reports KVM_CAP_X86_SMM = 0. A Debian 12 cloud kernel booted under QEMU with
# software emulation and an SVM CPU model (-accel tcg -cpu max) loads kvm_amd with KVM_CAP_X86_SMM = 1,
# so minivmm's kvm backend can run there (reference/nested-kvm-smm.md has the measured recipe).
#
#     bash scripts/nested-kvm.sh [--scenarios FILE] [--no-build] [--smp N] [--mem SIZE]
#
# Steps: build minivmm statically (.build/static); install QEMU if missing; fetch the kernel that
# linux-image-cloud-amd64 names and busybox-static into .build/nested/ (reused when already there); pack an
# initramfs with busybox, kvm.ko + kvm-amd.ko and their dependencies, minivmm with the few shared libraries
# it needs, and the scenario script (default scripts/nested/scenarios.sh) as /scenarios.sh; boot it and stream
# the guest's serial console. The guest's /init prints `NESTED-LANE: PASS` when the scenario script exited 0,
# else `NESTED-LANE: FAIL (status N)`; this script's exit status follows that marker (QEMU's does not carry it).
#
# The outer QEMU is Debian 12's QEMU 7.2 rebuilt with one fix (scripts/nested/build-qemu.sh, about 4 minutes once,
# cached in .build/nested/qemu): Debian's own aborts as soon as a nested guest writes CR8 while its KVM has an
# interrupt window open, which OVMF does on every interrupt return (qemu-7.2-tcg-svm-cr8-bql.patch says more).
#
# Needs root (or sudo) only to apt-get install QEMU and its build tools. Environment: NESTED_TIMEOUT (seconds for
# the boot, default 600), NESTED_STALL (seconds of console silence after which a stalled guest is booted once
# more, default 180), NESTED_QEMU=system (boot Debian's unpatched qemu-system-x86_64 instead; the ovmf-kvm
# scenario is then skipped, as that QEMU aborts on it), NESTED_KERNEL_META (default linux-image-cloud-amd64; linux-image-amd64 also works: its
# kvm-amd.ko depends on ccp.ko, which the dependency walk picks up).
set -euo pipefail

# ---- settings ----------------------------------------------------------------------------------------------

caller_dir=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

cache="$repo/.build/nested"
scenarios="$repo/scripts/nested/scenarios.sh"
build=1
# One virtual CPU: with -smp 2 (multi-threaded TCG) the guest kernel's timers stalled under load ("rcu_preempt
# kthread timer wakeup didn't happen", then the guest died) and about 1 in 50 minivmm runs failed in ways no run
# with -smp 1 showed (0 of 50 256-CPU runs on both backends failed). minivmm's vCPU threads share it.
smp=1
mem=3G
timeout_s=${NESTED_TIMEOUT:-600}
# Seconds without a byte on the guest's console after which the guest counts as stalled (see stall_watch).
stall_s=${NESTED_STALL:-180}
kernel_meta=${NESTED_KERNEL_META:-linux-image-cloud-amd64}
minivmm="$repo/.build/static/release/minivmm"
# The outer QEMU binary (set by outer_qemu) and the ROM search path for it.
qemu_bin=""
qemu_rom_dirs=()
# The modules /init loads, dependencies first; filled by collect_module.
modules=()

# ---- helpers -----------------------------------------------------------------------------------------------

die() {
    printf 'nested-kvm: error: %s\n' "$*" >&2
    exit 1
}

# A progress line with the seconds since the script started.
step() { printf 'nested-kvm: [%3ds] %s\n' "$SECONDS" "$*"; }

usage() { echo "usage: scripts/nested-kvm.sh [--scenarios FILE] [--no-build] [--smp N] [--mem SIZE]"; }

# Root in containers has no sudo; elsewhere apt-get runs through sudo.
if [[ ${EUID} -eq 0 ]]; then sudo=(); else sudo=(sudo); fi

# Runs a command with its output in a log file; on failure shows the log's tail and dies with $1.
quietly() {
    local what=$1 log="$cache/last-command.log"
    shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "$what failed (full output: $log)"
    fi
}

apt_updated=0
apt_update() {
    if ((apt_updated == 0)); then
        step "apt-get update"
        quietly "apt-get update" "${sudo[@]}" apt-get update
        apt_updated=1
    fi
}

# ensure_tool COMMAND PACKAGE: installs PACKAGE with apt-get when COMMAND is not on the PATH.
ensure_tool() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    step "installing $pkg (for $cmd)"
    # A fresh machine may have no package lists yet: update only when apt cannot see the package.
    apt-cache show --no-all-versions "$pkg" >/dev/null 2>&1 || apt_update
    quietly "apt-get install $pkg" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$pkg"
    command -v "$cmd" >/dev/null 2>&1 || die "$pkg is installed but $cmd is still not on the PATH"
}

# ---- arguments ---------------------------------------------------------------------------------------------

parse_args() {
    while (($# > 0)); do
        case $1 in
        --scenarios)
            (($# >= 2)) || die "--scenarios needs a file"
            # Relative to where the script was started, not to the repository root.
            if [[ $2 == /* ]]; then scenarios=$2; else scenarios="$caller_dir/$2"; fi
            shift 2
            ;;
        --no-build)
            build=0
            shift
            ;;
        --smp)
            if (($# < 2)) || ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then die "--smp needs a positive number"; fi
            smp=$2
            shift 2
            ;;
        --mem)
            if (($# < 2)) || ! [[ $2 =~ ^[1-9][0-9]*[MGT]?$ ]]; then die "--mem needs a size such as 3G or 2048M"; fi
            mem=$2
            shift 2
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument: $1 ($(usage))" ;;
        esac
    done
    [[ -f $scenarios ]] || die "no scenario script at $scenarios"
    [[ $timeout_s =~ ^[1-9][0-9]*$ ]] || die "NESTED_TIMEOUT must be a positive number of seconds"
    [[ $stall_s =~ ^[1-9][0-9]*$ ]] || die "NESTED_STALL must be a positive number of seconds"
}

# ---- minivmm -----------------------------------------------------------------------------------------------

build_minivmm() {
    if ((build)); then
        command -v swift >/dev/null 2>&1 || die "swift is not on the PATH (or pass --no-build)"
        step "building minivmm (release, static Swift stdlib, .build/static)"
        swift build -c release --static-swift-stdlib --scratch-path .build/static --product minivmm ||
            die "swift build failed"
    fi
    [[ -x $minivmm ]] || die "no minivmm binary at $minivmm (build without --no-build first)"
}

# ---- Debian packages ---------------------------------------------------------------------------------------

# Sets kernel_pkg to the kernel package the metapackage depends on, e.g. linux-image-6.1.0-56-cloud-amd64.
kernel_package() {
    local depends
    depends=$(apt-cache show --no-all-versions "$kernel_meta" 2>/dev/null | sed -n 's/^Depends: //p') || true
    if [[ -z $depends ]]; then
        # A fresh machine may have no package lists yet.
        apt_update
        depends=$(apt-cache show --no-all-versions "$kernel_meta" 2>/dev/null | sed -n 's/^Depends: //p') || true
    fi
    [[ -n $depends ]] || die "apt-cache knows no package $kernel_meta"
    # "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)[, ...]": the first linux-image-* name.
    kernel_pkg=$(tr ',' '\n' <<<"$depends" | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n 1)
    [[ -n $kernel_pkg ]] || die "$kernel_meta depends on no linux-image package ($depends)"
}

# fetch_package NAME: downloads and unpacks a package into $cache/pkg/NAME once; sets pkg_dir to that folder.
fetch_package() {
    local name=$1 dir="$cache/pkg/$1" deb
    pkg_dir=$dir
    if [[ ! -e "$dir/.unpacked" ]]; then
        step "fetching $name"
        rm -rf "$dir" "$cache/deb/$name"
        mkdir -p "$cache/deb/$name"
        # apt-get download runs as the _apt user where it can: let it write the folder.
        chmod 0777 "$cache/deb/$name"
        if ! (cd "$cache/deb/$name" && apt-get download -q "$name") >"$cache/last-command.log" 2>&1; then
            # Stale package lists name versions the mirror no longer has: update once and retry.
            apt_update
            (cd "$cache/deb/$name" && quietly "apt-get download $name" apt-get download -q "$name")
        fi
        deb=$(find "$cache/deb/$name" -name '*.deb' | head -n 1)
        [[ -n $deb ]] || die "apt-get download $name left no .deb"
        mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir" || die "dpkg-deb -x $deb failed"
        rm -f "$deb"
        touch "$dir/.unpacked"
    fi
}

# ---- kernel modules ----------------------------------------------------------------------------------------

# Module name (underscores, as in depends=) -> path of its .ko, .ko.xz, .ko.zst or .ko.gz file.
declare -A module_files=()
index_modules() {
    local moddir=$1 file base
    while IFS= read -r file; do
        base=${file##*/}
        base=${base%%.ko*}
        module_files[${base//-/_}]=$file
    done < <(find "$moddir" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
    ((${#module_files[@]} > 0)) || die "no kernel modules under $moddir"
}

# unpack_module SOURCE DEST: copies a module, decompressed (busybox insmod may not read compressed ones).
unpack_module() {
    local src=$1 dest=$2
    case $src in
    *.ko) cp "$src" "$dest" ;;
    *.ko.xz) ensure_tool xz xz-utils && xz -dc "$src" >"$dest" ;;
    *.ko.zst) ensure_tool zstd zstd && zstd -qdc "$src" >"$dest" ;;
    *.ko.gz) gzip -dc "$src" >"$dest" ;;
    *) die "unknown module format: $src" ;;
    esac
}

# The comma-separated depends= of a (decompressed) module, from its .modinfo section.
module_depends() {
    local ko=$1
    if command -v modinfo >/dev/null 2>&1; then
        modinfo -F depends "$ko"
    elif command -v objcopy >/dev/null 2>&1; then
        objcopy -O binary --only-section=.modinfo "$ko" "$ko.modinfo"
        tr '\0' '\n' <"$ko.modinfo" | sed -n 's/^depends=//p'
        rm -f "$ko.modinfo"
    else
        # .modinfo is a run of NUL-terminated key=value strings: the whole file read the same way finds it.
        tr '\0' '\n' <"$ko" | sed -n 's/^depends=//p' | head -n 1
    fi
}

# collect_module NAME DESTDIR: stages NAME's dependencies, then NAME, appending each to $modules once.
collect_module() {
    local name=${1//-/_} dest=$2 dep deps m
    for m in "${modules[@]}"; do [[ $m == "$name" ]] && return 0; done
    [[ -n ${module_files[$name]:-} ]] || die "kernel module $name not found in $kernel_pkg"
    unpack_module "${module_files[$name]}" "$dest/$name.ko"
    deps=$(module_depends "$dest/$name.ko")
    for dep in ${deps//,/ }; do
        collect_module "$dep" "$dest"
    done
    modules+=("$name")
}

# ---- initramfs ---------------------------------------------------------------------------------------------

# copy_into ROOT PATH: copies PATH (following symlinks) to the same path under ROOT.
copy_into() {
    mkdir -p "$1$(dirname "$2")"
    cp -L "$2" "$1$2"
}

write_init() {
    local init=$1
    cat >"$init" <<EOF
#!/bin/sh
# /init of the nested-KVM lane, written by scripts/nested-kvm.sh.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1

finish() {
    if [ "\$1" -eq 0 ]; then echo "NESTED-LANE: PASS"; else echo "NESTED-LANE: FAIL (status \$1)"; fi
    sync
    sleep 0.2 # let the serial port drain before the power goes
    poweroff -f
}

echo "nested-kvm guest: Linux \$(uname -r), \$(nproc) CPUs, \$(sed -n 's/^MemTotal: *//p' /proc/meminfo) RAM"
for m in ${modules[*]}; do
    insmod /lib/modules/\$m.ko || { echo "nested-kvm guest: insmod \$m failed"; finish 90; }
done
if [ ! -c /dev/kvm ]; then
    echo "nested-kvm guest: /dev/kvm is missing after loading ${modules[*]}"
    finish 91
fi
echo "nested-kvm guest: loaded ${modules[*]}; running /scenarios.sh"
cd /tmp
sh /scenarios.sh
finish \$?
EOF
    chmod 0755 "$init"
}

# build_initramfs BUSYBOX MODDIR OUT: stages and packs the initramfs (newc cpio, gzip) into OUT.
build_initramfs() {
    local busybox=$1 moddir=$2 out=$3 root="$cache/initramfs" applet lib
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc,lib/modules}

    # busybox, with a symlink per applet.
    cp "$busybox" "$root/bin/busybox"
    while IFS= read -r applet; do
        [[ -e "$root/$applet" ]] || ln -s /bin/busybox "$root/$applet"
    done < <("$busybox" --list-full)

    # kvm-amd and kvm, with everything their .modinfo says they depend on.
    index_modules "$moddir"
    collect_module kvm_amd "$root/lib/modules"
    collect_module kvm "$root/lib/modules"

    # minivmm and the shared libraries it names (glibc, libstdc++, libgcc_s, libm and the loader).
    cp "$minivmm" "$root/bin/minivmm"
    while IFS= read -r lib; do
        copy_into "$root" "$lib"
    done < <(ldd "$minivmm" | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) (0x.*/\1/p')

    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    cp "$scenarios" "$root/scenarios.sh"
    # Debian's SeaBIOS for the stock-firmware pair, when the host has the package (never committed).
    if [[ -e /usr/share/seabios/bios-256k.bin ]]; then
        mkdir -p "$root/usr/share/seabios"
        cp /usr/share/seabios/bios-256k.bin "$root/usr/share/seabios/"
    fi
    # Debian's OVMF (SMM build: code and the variable store template) for the ovmf-kvm scenario, when the host has
    # the package and the outer QEMU is the patched one (Debian's aborts on it: see build-qemu.sh).
    if [[ ${NESTED_QEMU:-} != system && -e /usr/share/OVMF/OVMF_CODE_4M.secboot.fd && -e /usr/share/OVMF/OVMF_VARS_4M.fd ]]; then
        mkdir -p "$root/usr/share/OVMF"
        cp /usr/share/OVMF/OVMF_CODE_4M.secboot.fd /usr/share/OVMF/OVMF_VARS_4M.fd "$root/usr/share/OVMF/"
    fi
    write_init "$root/init"

    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | "$busybox" cpio -o -H newc 2>/dev/null) |
        gzip -1 >"$out" || die "packing the initramfs failed"
}

# ---- boot --------------------------------------------------------------------------------------------------

# The background processes of boot, ended if this script stops early.
qemu_pid=""
tail_pid=""
watch_pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    local pid
    for pid in $qemu_pid $tail_pid $watch_pid; do
        kill "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stall_watch PID LOG: ends PID (QEMU under timeout) when LOG has not grown for $stall_s seconds, and leaves
# LOG.stalled. Seen in this lane (2 of about 8 full runs in December 2026): QEMU idle at 0% CPU, the guest silent,
# even the scenarios' own 300 s watchdog (a `sleep 1` loop) never firing, i.e. the guest kernel's timers stalled.
stall_watch() {
    local pid=$1 log=$2 last=-1 size quiet=0
    while kill -0 "$pid" 2>/dev/null; do
        sleep 5
        size=$(stat -c %s "$log" 2>/dev/null || echo 0)
        if [[ $size == "$last" ]]; then quiet=$((quiet + 5)); else quiet=0; last=$size; fi
        if ((quiet >= stall_s)); then
            : >"$log.stalled"
            kill "$pid" 2>/dev/null || true
            return 0
        fi
    done
}

# boot KERNEL INITRD LOG: runs the guest under a host-side timeout, streaming its serial console.
boot() {
    local kernel=$1 initrd=$2 log=$3 status=0
    rm -f "$log" "$log.stalled"
    : >"$log"
    timeout -k 10 "$timeout_s" "$qemu_bin" "${qemu_rom_dirs[@]}" -nodefaults -accel tcg -cpu max -smp "$smp" -m "$mem" \
        -display none -monitor none -serial "file:$log" -no-reboot \
        -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 panic=-1 quiet" \
        </dev/null &
    qemu_pid=$!
    # The console's CRLF line ends, made plain, unbuffered so CI shows each line as it comes.
    tail -n +1 -F --pid="$qemu_pid" "$log" 2>/dev/null | sed -u 's/\r$//' &
    tail_pid=$!
    stall_watch "$qemu_pid" "$log" &
    watch_pid=$!
    wait "$qemu_pid" || status=$?
    kill "$watch_pid" 2>/dev/null || true
    wait "$watch_pid" 2>/dev/null || true
    wait "$tail_pid" || true
    qemu_pid=""
    tail_pid=""
    watch_pid=""
    return "$status"
}

# verdict LOG QEMU_STATUS: exits 0 on the PASS marker, else dies saying why.
verdict() {
    local log=$1 qemu_status=$2 marker
    marker=$(tr -d '\r' <"$log" | grep -a '^NESTED-LANE: ' | tail -n 1) || true
    case $marker in
    "NESTED-LANE: PASS")
        step "PASS (serial log: $log)"
        exit 0
        ;;
    "NESTED-LANE: FAIL"*) die "the scenarios failed: ${marker#NESTED-LANE: } (serial log: $log)" ;;
    esac
    if ((qemu_status == 124 || qemu_status == 137)); then
        die "timed out after ${timeout_s}s with no NESTED-LANE marker (serial log: $log; NESTED_TIMEOUT raises the limit)"
    fi
    die "no NESTED-LANE marker in the serial log (QEMU exited with status $qemu_status; log: $log)"
}

# ---- outer QEMU --------------------------------------------------------------------------------------------

# Sets qemu_bin: Debian's QEMU package stays installed for its ROMs (qemu-system-data, seabios), and the lane boots
# the patched build of the same version unless NESTED_QEMU=system.
outer_qemu() {
    ensure_tool qemu-system-x86_64 qemu-system-x86
    if [[ ${NESTED_QEMU:-} == system ]]; then
        qemu_bin=$(command -v qemu-system-x86_64)
        return
    fi
    [[ -z ${NESTED_QEMU:-} ]] || die "NESTED_QEMU must be empty or 'system'"
    step "outer QEMU: Debian's 7.2 with the CR8 fix (scripts/nested/build-qemu.sh; built once, then cached)"
    qemu_bin=$(bash "$repo/scripts/nested/build-qemu.sh" "$cache/qemu") || die "building the outer QEMU failed"
    # The build installs no ROMs: Debian's packages hold them (linuxboot_dma.bin, bios-256k.bin).
    qemu_rom_dirs=(-L /usr/share/qemu -L /usr/share/seabios)
}

# ---- main --------------------------------------------------------------------------------------------------

main() {
    parse_args "$@"
    mkdir -p "$cache"
    build_minivmm
    outer_qemu

    kernel_package
    fetch_package "$kernel_pkg"
    # Kernels an earlier run fetched, before the metapackage moved on, are not needed any more.
    find "$cache/pkg" "$cache/deb" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -name "$kernel_pkg" \
        -exec rm -rf {} +
    local kdir=$pkg_dir kernel="" moddir="" busybox f
    fetch_package busybox-static
    busybox="$pkg_dir/bin/busybox"
    for f in "$kdir"/boot/vmlinuz-*; do [[ -f $f ]] && kernel=$f; done
    for f in "$kdir"/lib/modules/*/kernel "$kdir"/usr/lib/modules/*/kernel; do [[ -d $f ]] && moddir=$f; done
    [[ -n $kernel ]] || die "$kernel_pkg has no boot/vmlinuz-*"
    [[ -n $moddir ]] || die "$kernel_pkg has no lib/modules/*/kernel"
    [[ -x $busybox ]] || die "busybox-static has no bin/busybox"

    step "packing the initramfs ($kernel_pkg, $(basename "$scenarios"))"
    build_initramfs "$busybox" "$moddir" "$cache/initrd.gz"
    step "initramfs: $(du -h "$cache/initrd.gz" | cut -f1), modules: ${modules[*]}"

    step "booting (QEMU TCG, -cpu max, -smp $smp, -m $mem, timeout ${timeout_s}s)"
    local status=0
    boot "$kernel" "$cache/initrd.gz" "$cache/serial.log" || status=$?
    step "QEMU exited with status $status"
    if [[ -e $cache/serial.log.stalled ]]; then
        # A stalled guest says nothing about minivmm: boot once more, and say so (the first log is kept).
        cp "$cache/serial.log" "$cache/serial-stalled.log"
        step "the guest printed nothing for ${stall_s}s (stalled; log: $cache/serial-stalled.log): booting once more"
        status=0
        boot "$kernel" "$cache/initrd.gz" "$cache/serial.log" || status=$?
        step "QEMU exited with status $status"
        [[ -e $cache/serial.log.stalled ]] &&
            die "the guest stalled again: nothing on its console for ${stall_s}s (serial logs: $cache/serial-stalled.log, $cache/serial.log)"
    fi
    verdict "$cache/serial.log" "$status"
}

main "$@"
