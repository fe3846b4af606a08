#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Guest-level fuzz lane (issue 11): random and mutated firmware images run on minivmm with a short --timeout.

Each image must end with one of the documented exit statuses (0 passed, 1 an invariant failed, 2 the run did not
complete) and leave a parseable --json report whose outcome is a known one; never a crash (a signal), a hang past
the timeout, status 3/64 (the images are valid input) or a truncated report.

Images: fully random 4 KiB images; the built-in firmware with random byte flips (the mutations land in real code
paths: fw_cfg, SMM handlers, the OS loop); and small random real-mode programs that pick from port writes to every
device minivmm models, SMIs, DMA descriptors, SMRAM register writes and jumps.

    scripts/fuzz/guest-fuzz.py BINARY [--runs N] [--seed S] [--timeout SECONDS]
"""
import argparse, json, os, random, subprocess, sys, tempfile, time

OUTCOMES = {"completed", "guest-failure", "triple-fault", "cpu-stopped", "timeout", "vmm-error", "stopped",
            "interrupted", "guest-reset"}
PORTS = [0x402, 0xF4, 0xB2, 0xB3, 0x510, 0x511, 0x514, 0x518, 0xCF8, 0xCFC, 0xCFD, 0xCFE, 0xCD8, 0xCDC, 0xCDD,
         0xCE0, 0x600, 0x604, 0x80, 0x3F8, 0x70, 0x71, 0x92, 0x608, 0x630, 0x634]


def random_program(rng):
    """16-bit real-mode code at the image start, reached from the reset vector."""
    code = bytearray()
    for _ in range(rng.randrange(4, 40)):
        k = rng.randrange(8)
        port = rng.choice(PORTS)
        if k == 0:  # mov dx, port; mov eax, imm32; out dx, eax
            code += bytes([0xBA, port & 0xFF, port >> 8, 0x66, 0xB8]) + rng.getrandbits(32).to_bytes(4, "little")
            code += bytes([0x66, 0xEF])
        elif k == 1:  # mov dx, port; mov al, imm8; out dx, al
            code += bytes([0xBA, port & 0xFF, port >> 8, 0xB0, rng.getrandbits(8), 0xEE])
        elif k == 2:  # mov dx, port; in eax, dx
            code += bytes([0xBA, port & 0xFF, port >> 8, 0x66, 0xED])
        elif k == 3:  # mov word [imm16], imm16 (low memory, e.g. DMA descriptors, 0x38000 via DS 0)
            code += bytes([0xC7, 0x06]) + rng.getrandbits(16).to_bytes(2, "little") + rng.getrandbits(16).to_bytes(2, "little")
        elif k == 4:  # mov ax, imm16; mov ds, ax
            code += bytes([0xB8]) + rng.choice([0, 0x3000, 0x7000, 0x9000, rng.getrandbits(16)]).to_bytes(2, "little")
            code += bytes([0x8E, 0xD8])
        elif k == 5:  # wrmsr: x2APIC enable or an ICR write
            ecx = rng.choice([0x1B, 0x830, 0x80B, 0x80F, 0x9E, rng.getrandbits(32)])
            code += bytes([0x66, 0xB9]) + ecx.to_bytes(4, "little") + bytes([0x66, 0xB8])
            code += rng.getrandbits(32).to_bytes(4, "little") + bytes([0x66, 0x31, 0xD2, 0x0F, 0x30])
        elif k == 6:  # random bytes
            code += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 6)))
        else:  # jmp back a little (a loop) or hlt
            code += bytes([0xEB, (256 - rng.randrange(2, 12)) & 0xFF]) if rng.random() < 0.3 else bytes([0xF4])
    return bytes(code[:3000])


def image_from_program(code):
    img = bytearray([0xF4] * 4096)
    img[:len(code)] = code
    rel = (0xF000 - (0xFFF0 + 3)) & 0xFFFF
    img[0xFF0:0xFF3] = bytes([0xE9, rel & 0xFF, rel >> 8])
    return bytes(img)


def mutated_builtin(rng, builtin):
    img = bytearray(builtin)
    for _ in range(rng.randrange(1, 9)):
        i = rng.randrange(len(img) - 16)  # keep the reset vector
        img[i] = rng.getrandbits(8)
    return bytes(img)


def extract_builtin(bindir, tmp):
    """The built-in image from the build's firmware object (section .rodata.minivmm_firmware), or None."""
    obj = os.path.join(bindir, "GuestFirmware.build", "firmware_image.S.o")
    out = os.path.join(tmp, "builtin.bin")
    for tool in ("llvm-objcopy", "objcopy"):
        try:
            subprocess.run([tool, "-O", "binary", "--only-section=.rodata.minivmm_firmware", obj, out],
                           check=True, capture_output=True)
            data = open(out, "rb").read()
            if len(data) == 0x10000:
                return data
        except (OSError, subprocess.CalledProcessError):
            continue
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--timeout", type=float, default=2.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="minivmm-guest-fuzz-")
    # The built-in image to mutate: MINIVMM_BUILTIN_IMAGE, else extracted from the build's firmware object.
    builtin = None
    path = os.environ.get("MINIVMM_BUILTIN_IMAGE")
    if path and os.path.exists(path):
        builtin = open(path, "rb").read()
    else:
        builtin = extract_builtin(os.path.dirname(os.path.abspath(args.binary)), tmp)
    print(f"guest-fuzz: seed {args.seed}, {args.runs} images, --timeout {args.timeout}, "
          f"built-in image {'found' if builtin else 'not found (no mutations of it)'}")
    failures = 0
    counts = {}
    for n in range(args.runs):
        kind = n % 3
        if kind == 0:
            img = bytes(rng.getrandbits(8) for _ in range(4096))
            what = "random"
        elif kind == 1 and builtin:
            img = mutated_builtin(rng, builtin)
            what = "mutated built-in"
        else:
            img = image_from_program(random_program(rng))
            what = "random program"
        fw = os.path.join(tmp, f"fw{n}.bin")
        rep = os.path.join(tmp, f"r{n}.json")
        open(fw, "wb").write(img)
        cpus = rng.choice([1, 2, 4, 8])
        cmd = [args.binary, "run", "--firmware", fw, "--max-cpus", str(cpus), "--boot-cpus", str(min(cpus, 2)),
               "--timeout", str(args.timeout), "--json", rep, "--quiet"]
        if n % 4 == 3:  # every fourth image as stock firmware: QEMU's q35 chipset, PM block free to land at 0x600
            cmd.append("--stock")
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout + 10)
        except subprocess.TimeoutExpired:
            failures += 1
            print(f"FAIL image {n} ({what}): no exit within --timeout + 10 s; kept {fw}")
            continue
        took = time.monotonic() - t0
        problem = None
        if p.returncode < 0:
            problem = f"killed by signal {-p.returncode}"
        elif p.returncode not in (0, 1, 2):
            problem = f"exit status {p.returncode}: {p.stderr.strip()[:200]}"
        elif took > args.timeout + 1.5:
            problem = f"took {took:.1f} s for --timeout {args.timeout}"
        else:
            try:
                outcome = json.load(open(rep))["outcome"]
                counts[outcome] = counts.get(outcome, 0) + 1
                if outcome not in OUTCOMES:
                    problem = f"unknown outcome {outcome}"
            except Exception as e:  # noqa: BLE001 - any unreadable report is the finding
                problem = f"report unreadable: {e}"
        if problem:
            failures += 1
            keep = os.path.join(tmp, f"failing-{n}.bin")
            os.replace(fw, keep)
            print(f"FAIL image {n} ({what}, {cpus} CPUs): {problem}; kept {keep}")
    print("guest-fuzz: outcomes " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"{args.runs - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
