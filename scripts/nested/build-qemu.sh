#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Builds the nested lane's outer QEMU: Debian 12's QEMU, 7.2+dfsg-7+deb12u18 (the upstream source and Debian's
# patch series, 7.2.1-7.2.22 stable included, from deb.debian.org, each checked against its SHA-256), plus one fix,
# qemu-7.2-tcg-svm-cr8-bql.patch (TCG's SVM raised a virtual interrupt without the big lock when a nested guest
# wrote CR8; OVMF's interrupt handlers do, and QEMU aborted). Debian's patches matter: the upstream 7.2.0 source
# alone triple-faults OVMF's nested reset vector code. Only qemu-system-x86_64 with TCG, no optional features (the lane runs it with -nodefaults, a kernel and
# an initramfs). The ROMs it needs come from Debian's qemu-system-data and seabios packages (-L, see nested-kvm.sh).
#
#     bash scripts/nested/build-qemu.sh OUT_DIR      # prints OUT_DIR/qemu-system-x86_64; reused when present
#
# About 4 minutes on 2 cores. Needs root (or sudo) for apt-get install of the build tools.
set -euo pipefail

out=${1:?usage: build-qemu.sh OUT_DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patch_file="$here/qemu-7.2-tcg-svm-cr8-bql.patch"
pool=http://deb.debian.org/debian/pool/main/q/qemu
orig=qemu_7.2+dfsg.orig.tar.xz
orig_sha256=91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f
debian=qemu_7.2+dfsg-7+deb12u18.debian.tar.xz
debian_sha256=28a1c86310ee53b6bf1854cffe6f6be6ed29a08db7d05759f8ac57b8d6a6cb2f
# The patch's own hash is part of the cache key: a changed patch rebuilds.
stamp="$out/.built-$(sha256sum "$patch_file" | cut -c1-16)"

die() {
    printf 'build-qemu: error: %s\n' "$*" >&2
    exit 1
}
say() { printf 'build-qemu: [%3ds] %s\n' "$SECONDS" "$*" >&2; }

if [[ -x $out/qemu-system-x86_64 && -e $stamp ]]; then
    echo "$out/qemu-system-x86_64"
    exit 0
fi
if [[ ${EUID} -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
mkdir -p "$out"
log="$out/build.log"
: >"$log"

tools=(meson ninja-build pkg-config libglib2.0-dev libpixman-1-dev libfdt-dev python3 curl xz-utils patch)
missing=()
for p in "${tools[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    say "apt-get install ${missing[*]}"
    apt-cache show --no-all-versions "${missing[0]}" >/dev/null 2>&1 || "${sudo[@]}" apt-get update -q >>"$log" 2>&1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >>"$log" 2>&1 || die "apt-get install failed (log: $log)"
fi

src="$out/src"
rm -rf "$src"
mkdir -p "$src"
# fetch NAME SHA256: downloads NAME from Debian's pool into $out and checks it.
fetch() {
    say "fetching $pool/$1"
    curl -fsS --retry 3 -o "$out/$1" "$pool/$1" || die "download failed: $pool/$1"
    echo "$2  $out/$1" | sha256sum -c --quiet - || die "$1: SHA-256 mismatch"
}
fetch "$orig" "$orig_sha256"
fetch "$debian" "$debian_sha256"
tar -xf "$out/$orig" -C "$src" --strip-components=1 || die "unpacking $orig failed"
tar -xf "$out/$debian" -C "$src" || die "unpacking $debian failed"
rm -f "$out/$orig" "$out/$debian"
say "applying Debian's patch series and the CR8 fix"
while read -r p _; do
    [[ -z $p || $p == \#* ]] && continue
    (cd "$src" && patch -p1 --quiet --no-backup-if-mismatch <"debian/patches/$p") >>"$log" 2>&1 ||
        die "Debian's $p does not apply (log: $log)"
done <"$src/debian/patches/series"
(cd "$src" && patch -p1 --quiet <"$patch_file") >>"$log" 2>&1 || die "the CR8 patch does not apply (log: $log)"
# Debian's dfsg source drops the prebuilt firmware: never unpack the edk2 images (x86_64-softmmu would).
sed -i 's/^    unpack_edk2_blobs = bzip2.found()$/    unpack_edk2_blobs = false/' "$src/meson.build"
grep -q '^    unpack_edk2_blobs = false$' "$src/meson.build" || die "meson.build: the edk2 line was not found"

say "configuring (x86_64-softmmu, TCG only)"
mkdir -p "$src/build"
(cd "$src/build" && ../configure --target-list=x86_64-softmmu --without-default-features --disable-docs \
    --disable-werror --enable-tcg --enable-fdt=system --disable-install-blobs) >>"$log" 2>&1 ||
    die "configure failed (log: $log)"
say "building qemu-system-x86_64"
(cd "$src/build" && ninja qemu-system-x86_64) >>"$log" 2>&1 || die "build failed (log: $log)"
cp "$src/build/qemu-system-x86_64" "$out/qemu-system-x86_64"
rm -rf "$src"
rm -f "$out"/.built-*
touch "$stamp"
say "built $out/qemu-system-x86_64"
echo "$out/qemu-system-x86_64"
