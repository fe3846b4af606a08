#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Writes the hand-made seeds of Fuzz/corpus/<target>/ (the firmware's own access sequences, in each target's input
format; see the doc comment of each target). Run from the repository root: python3 Fuzz/make_seeds.py"""
import os
import struct

def u8(v): return struct.pack("<B", v & 0xFF)
def u16(v): return struct.pack("<H", v & 0xFFFF)
def u32(v): return struct.pack("<I", v & 0xFFFFFFFF)
def u64(v): return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)

seeds = {}

# fw_cfg: op%7 — 0 select(u16), 1 reads(n, port bit each), 3 DMA(inside, at, control, short?, len, near?, addr),
# 4 poke(at, n, bytes), 6 select features-ok. Files sorted: 0x20 features-ok, 0x21 requested, 0x22 supported.
def dma(at, control, length, addr):
    return u8(3) + u8(1) + u16(at) + u32(control) + u8(1) + u16(length) + u8(1) + u16(addr)
seeds["fwcfg"] = {
    "signature-read": u8(0) + u16(0) + u8(1) + u8(4) + bytes(4),
    "directory-dma": dma(0x100, (0x19 << 16) | 0x08 | 0x02, 0x200, 0x1000),
    "smi-negotiation": u8(4) + u16(0x2000) + u8(8) + u64(3) + dma(0x100, (0x21 << 16) | 0x08 | 0x10, 8, 0x2000)
    + u8(6) + u8(0) + u16(0x20) + u8(1) + u8(1) + u8(0),
    "dma-bad-descriptor": u8(3) + u8(0) + u64(0xFFFFFFFFFFFFFFF0) + u32(0x02) + u8(0) + u32(0xFFFFFFFF) + u8(0) + u64(0),
}

# hotplug: possible, present mask, then op%6 (bit 7 = in SMM): 1 write(reg index, short?, value), 0 read(off, size).
def hp_w(reg, value, smm=False): return u8(1 | (0x80 if smm else 0)) + u8(reg) + u8(0) + u32(value)
def hp_r(off, size, smm=False): return u8(0 | (0x80 if smm else 0)) + u8(off) + u8(size)
seeds["hotplug"] = {
    "scan-and-clear": u8(3) + u16(0x3) + u8(3) + u8(8 + 2) + hp_w(0, 0) + hp_w(2, 0) + hp_r(4, 1) + hp_w(1, 2),
    "smbase-register": u8(3) + u16(0x7) + hp_w(0, 2) + hp_w(2, 0x80, True) + hp_w(3, 0x38000, True)
    + hp_r(8, 4, True) + hp_r(8, 4),
    "eject": u8(3) + u16(0x7) + hp_w(0, 2) + hp_w(1, 8) + hp_w(0, 0) + hp_w(1, 8),
}

# q35: ext TSEG u16, smbase-smram bool, then op%5: 0 address(u8 bus?, reg), 1 access(port, size, rd?, value).
def cfg(reg): return u8(0) + u8(0) + u8(reg)
def wr(port_off, size_sel, value): return u8(1) + u8(port_off) + u8(size_sel) + u8(0) + u32(value)
def rd(port_off, size_sel): return u8(1) + u8(port_off) + u8(size_sel) + u8(1)
seeds["q35"] = {
    "tseg-lock": u16(16) + u8(1) + cfg(0x50) + wr(4, 1, 0xFFFF) + rd(4, 1) + cfg(0x9C) + wr(6, 0, 0x01)
    + wr(6, 0, 0x39) + cfg(0x9C) + wr(5, 0, 0x4A) + wr(5, 0, 0x02),
    "smbase-lock": u16(0) + u8(1) + cfg(0x9C) + wr(4, 0, 0xFF) + rd(4, 0) + wr(4, 0, 0x02) + wr(4, 0, 0x01),
}

# apic: id (short?, u8), bsp, present count, sender, then op%9: 1 MMIO write(short?, off>>4, value, size), 3 MSR write.
seeds["apic"] = {
    "init-sipi-sipi": u8(1) + u8(0) + u8(1) + u8(4) + u8(0)
    + u8(1) + u8(1) + u8(0x31) + u32(0x02000000) + u8(2)
    + u8(1) + u8(1) + u8(0x30) + u32(0x000C4500) + u8(2)
    + u8(1) + u8(1) + u8(0x30) + u32(0x000C4608) + u8(2),
    "x2apic-smi-broadcast": u8(1) + u8(0) + u8(1) + u8(4) + u8(0)
    + u8(3) + u16(0x830 - 0x7F0) + u8(0) + u64(0xFFFFFFFF_00000200) + u8(1),
    "fixed-and-eoi": u8(1) + u8(1) + u8(0) + u8(2) + u8(1) + u8(4) + u8(0x41) + u8(5) + u8(6) + u8(4) + u8(3),
}

# portbus: maxCPUs, bootCPUs, then op (bit 7 read, bit 6 raw port, bit 5 SMM, op%8 device), port offset, size sel, cpu.
def out(dev, off, size_sel, value, smm=False, cpu=0):
    return u8(dev | (0x20 if smm else 0)) + u8(off) + u8(size_sel) + u8(cpu) + u32(value)
def inp(dev, off, size_sel, smm=False): return u8(0x80 | dev | (0x20 if smm else 0)) + u8(off) + u8(size_sel) + u8(0)
seeds["portbus"] = {
    "firmware-boot": u8(4) + u8(2) + out(0, 0, 0, 0x41) + out(3, 0, 1, 0x0000) + inp(3, 1, 0) + inp(3, 1, 0)
    + out(4, 0, 2, 0x8000009C) + out(4, 4, 0, 0xFF) + inp(4, 4, 0) + out(2, 0, 0, 0x01) + out(6, 0, 2, 0x01000000)
    + out(5, 0, 2, 1) + out(5, 5, 0, 0) + inp(5, 4, 0) + out(1, 0, 2, 0),
}

# smm: format bool, smbase, regs, sregs, dr6, dr7, shadow, nmi, then map choice (1 = next 512 bytes).
REGS, SREGS = 18 * 8, 8 * 24 + 2 * 16 + 7 * 8 + 4 * 8  # sizeof(struct kvm_regs), sizeof(struct kvm_sregs)
flat = bytes(REGS) + bytes(SREGS)
seeds["smm"] = {
    "amd64-roundtrip": u8(1) + u32(0x30000) + flat + u64(0xFFFF0FF0) + u64(0x400) + u8(0) + u8(0) + u8(0) + u8(0) + u8(1) + u8(0),
    "legacy32-relocate": u8(0) + u32(0x30000) + flat + u64(0xFFFF0FF0) + u64(0x400) + u8(1) + u8(1) + u8(0) + u8(2)
    + u16(0x0F8) + u8(0x80) + u16(0x0F9) + u8(0x03) + u8(1) + u8(1),
    "arbitrary-map": u8(1) + u32(0x7F000) + flat + u64(0) + u64(0) + u8(0) + u8(0) + u8(1) + bytes(range(256)) * 2 + u8(1) + u8(0),
}

# exit: reason byte, then the kvm_run page (io at offset 32: direction, size, port, count, data_offset).
def run(reason, payload): return u8(reason) + bytes(32) + payload
seeds["exit"] = {
    "io-out": run(2, u8(1) + u8(1) + u16(0x402) + u32(1) + u64(4096)),
    "io-in": run(2, u8(0) + u8(2) + u16(0x511) + u32(1) + u64(4096)),
    "mmio": run(6, u64(0xFEE00300) + u64(0x4500) + u32(4) + u8(1)),
    "internal-error": run(17, u32(1) + u32(4) + u64(1) * 4),
}

def report(extra=""):
    return ('{"backend":"emulated","rows":[%s]}' % extra).encode()
seeds["report"] = {
    "matrix-empty": u8(0) + report(),
    "not-json": u8(0) + b"{\"strategy\":",
    "spliced-row": u8(1) + b'{"strategy":"relocate-all-at-boot","bootSeconds":1.5}',
}

for target, files in seeds.items():
    os.makedirs(f"Fuzz/corpus/{target}", exist_ok=True)
    for name, data in files.items():
        with open(f"Fuzz/corpus/{target}/{name}", "wb") as f:
            f.write(data)
