// SPDX-License-Identifier: MIT
import CKVM

@testable import MiniVMM

/// Reads a little-endian field of `width` bytes at `offset` from SMBASE in a 512-byte map (which starts at 0xFE00).
func field(_ map: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
    (0..<width).reduce(0) { $0 | UInt64(map[offset - 0xFE00 + $1]) << (8 * UInt64($1)) }
}

/// Writes a little-endian field of `width` bytes at `offset` from SMBASE.
func setField(_ map: inout [UInt8], _ offset: Int, _ width: Int, _ value: UInt64) {
    for i in 0..<width { map[offset - 0xFE00 + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
}

/// Bytes equality for C structs in expectations.
func same<T: BitwiseCopyable>(_ a: T, _ b: T) -> Bool { bytesEqual(a, b) }

/// A state with a different value in every register and segment field, to catch swapped or misplaced fields.
/// The upper halves of 64-bit values differ from the lower halves so truncation is visible.
func distinctiveState() -> ArchState {
    var regs = kvm_regs()
    for gpr in GPR.allCases {
        regs[gpr] = UInt64(0xAB00 + gpr.rawValue) << 32 | UInt64(0x1100_0000 + gpr.rawValue * 0x0001_0101)
    }
    regs.rip = 0x0000_7FFF_1234_5678
    regs.rflags = 0x0020_0A46

    var sregs = kvm_sregs()
    sregs.es = kvm_segment(
        selector: 0x0010, base: 0x1_0000_E000, limit: 0x000E_FFFF, type: 0x3, s: 1, dpl: 0, present: 1, db: 1, g: 0)
    sregs.cs = kvm_segment(
        selector: 0x0008, base: 0x2_0000_C000, limit: 0xFFFF_FFFF, type: 0xB, s: 1, dpl: 0, present: 1, db: 1, g: 1)
    sregs.ss = kvm_segment(
        selector: 0x0023, base: 0x3_0000_5000, limit: 0x0005_FFFF, type: 0x7, s: 1, dpl: 3, present: 1, db: 1, g: 0,
        avl: 1)
    sregs.ds = kvm_segment(
        selector: 0x002B, base: 0x4_0000_D000, limit: 0x000D_FFFF, type: 0x1, s: 1, dpl: 2, present: 1, db: 0, g: 1)
    sregs.fs = kvm_segment(
        selector: 0x0033, base: 0xFFFF_8000_00F0_0000, limit: 0x000F_0FFF, type: 0x5, s: 1, dpl: 1, present: 1, db: 0,
        l: 1)
    sregs.gs = kvm_segment(
        selector: 0x003B, base: 0xFFFF_9000_0060_0000, limit: 0x0006_0000, type: 0x9, s: 1, dpl: 3, present: 0,
        unusable: 1)
    sregs.tr = kvm_segment(
        selector: 0x0040, base: 0x5_0000_7000, limit: 0x0000_0067, type: 0xB, s: 0, dpl: 0, present: 1)
    sregs.ldt = kvm_segment(
        selector: 0x0048, base: 0x6_0000_8000, limit: 0x0000_01FF, type: 0x2, s: 0, dpl: 0, present: 1)
    sregs.gdt = kvm_dtable(base: 0x7_0000_9000, limit: 0x0057)
    sregs.idt = kvm_dtable(base: 0x8_0000_A000, limit: 0x07FF)
    sregs.cr0 = 0x8005_0033
    sregs.cr2 = 0x0000_1234_DEAD_0000
    sregs.cr3 = 0x0000_0009_0012_3000
    sregs.cr4 = 0x0000_06A0
    sregs.cr8 = 0x5
    sregs.efer = 0xD01
    sregs.apic_base = 0xFEE0_0900
    return ArchState(
        regs: regs, sregs: sregs, dr6: 0xFFFF_4FF1, dr7: 0x0000_0712, interruptShadow: 1, nmiMasked: false)
}

/// A valid 32-bit protected-mode state of a guest without long mode (for `.legacy32` round trips).
/// Values fit in 32 bits; R8–R15 are nonzero to show that the 32-bit map leaves them alone.
func protectedModeState() -> ArchState {
    var state = distinctiveState()
    for gpr in GPR.allCases {
        state.regs[gpr] =
            gpr.rawValue < 8
            ? UInt64(0x1100_0000 + gpr.rawValue * 0x0001_0101) : 0xEEEE_0000_0000_0000 + UInt64(gpr.rawValue)
    }
    state.regs.rip = 0x0010_2345
    state.regs.rflags = 0x0000_0246
    for seg in SegmentRegister.allCases {
        state.sregs[keyPath: seg.keyPath].base &= 0xFFFF_FFFF
        state.sregs[keyPath: seg.keyPath].l = 0
    }
    state.sregs.tr.base &= 0xFFFF_FFFF
    state.sregs.ldt.base &= 0xFFFF_FFFF
    state.sregs.gdt.base &= 0xFFFF_FFFF
    state.sregs.idt.base &= 0xFFFF_FFFF
    state.sregs.cr0 = 0x8001_0031  // PG | WP | NE | ET | PE
    state.sregs.cr3 = 0x0012_3000
    state.sregs.cr4 = 0x0000_0290  // OSFXSR | PGE | PSE
    state.sregs.efer = 0x800  // NX: not in the 32-bit map, must survive RSM untouched
    state.dr6 = 0xFFFF_4FF1
    state.dr7 = 0x0000_0712
    return state
}

/// A valid 64-bit long-mode state (for `.amd64` round trips).
func longModeState() -> ArchState {
    var state = distinctiveState()
    state.sregs.cs.l = 1
    state.sregs.cs.db = 0
    state.sregs.fs.l = 0
    state.sregs.cr0 = 0x8005_0033  // PG | AM | WP | NE | ET | MP | PE
    state.sregs.cr4 = 0x0000_06A0  // OSXMMEXCPT | OSFXSR | PGE | PAE
    state.sregs.efer = 0xD01  // NX | LMA | LME | SCE
    state.sregs.cr3 = 0x0000_0009_0012_3000
    return state
}
