// SPDX-License-Identifier: MIT
import CKVM
import Testing

@testable import MiniVMM

/// Field-by-field checks of the two state-save layouts against reference/kvm-smm.md §1 (KVM `check_smram_offsets`).
/// Offsets are typed here as literals on purpose, independently of `SaveStateMap.Legacy32` / `.AMD64`.
@Suite("SMM state-save map")
struct SaveStateMapTests {
    let state = distinctiveState()

    @Test("Format choice, revision IDs and SMBASE field offsets")
    func formatProperties() {
        #expect(SaveStateFormat.forGuest(longModeCPUID: true) == .amd64)
        #expect(SaveStateFormat.forGuest(longModeCPUID: false) == .legacy32)
        #expect(SaveStateFormat.legacy32.revision == 0x0002_0000)
        #expect(SaveStateFormat.amd64.revision == 0x0002_0064)
        #expect(SaveStateFormat.legacy32.smbaseFieldOffset == 0xFEF8)
        #expect(SaveStateFormat.amd64.smbaseFieldOffset == 0xFF00)
        #expect(SaveStateMap.offsetFromSMBASE == 0xFE00)
        #expect(SaveStateMap.size == 512)
    }

    @Test("Segment flags use the descriptor high-dword positions; AMD64 attributes are flags >> 8")
    func segmentFlags() {
        let flatCode = kvm_segment(selector: 8, base: 0, limit: 0xFFFF_FFFF, type: 0xB, s: 1, db: 1, g: 1)
        #expect(SaveStateMap.segmentFlags(flatCode) == 0x00C0_9B00)
        let map = SaveStateMap.encode(
            ArchState(
                sregs: {
                    var s = kvm_sregs(); s.cs = flatCode; return s
                }()), smbase: 0x30000, format: .amd64)
        #expect(field(map, 0xFE12, 2) == 0xC09B)  // kvm-smm.md §8: a flat 32-bit code segment saves 0xC09B
        let every = kvm_segment(
            selector: 0, base: 0, limit: 0, type: 0xF, s: 1, dpl: 3, present: 1, db: 1, l: 1, g: 1, avl: 1)
        #expect(SaveStateMap.segmentFlags(every) == 0x00F0_FF00)
        let decoded = SaveStateMap.segment(selector: 1, base: 2, limit: 3, flags: 0x0050_4500)
        #expect(decoded.type == 5 && decoded.s == 0 && decoded.dpl == 2 && decoded.present == 0)
        #expect(decoded.avl == 1 && decoded.l == 0 && decoded.db == 1 && decoded.g == 0 && decoded.unusable == 1)
    }

    @Test("32-bit map: every field at its kvm_smram_state_32 offset")
    func legacy32Layout() {
        let s = state
        let map = SaveStateMap.encode(s, smbase: 0x000A_8000, format: .legacy32)
        #expect(map.count == 512)
        var covered = Set<Int>()
        func check(_ offset: Int, _ width: Int, _ expected: UInt64, _ what: String) {
            #expect(field(map, offset, width) == expected, "\(what) at 0x\(String(offset, radix: 16))")
            covered.formUnion(offset..<(offset + width))
        }
        check(0xFEF8, 4, 0x000A_8000, "smbase")
        check(0xFEFC, 4, 0x0002_0000, "revision")
        check(0xFF00, 2, 0, "io_inst_restart")
        check(0xFF02, 2, 0, "auto_hlt_restart")
        check(0xFF14, 4, 0x06A0, "cr4")
        check(0xFF1A, 1, 1, "int_shadow")
        let caches: [(SegmentRegister, Int, Int)] = [
            (.es, 0xFF84, 0xFFA8), (.cs, 0xFF90, 0xFFAC), (.ss, 0xFF9C, 0xFFB0), (.ds, 0xFF2C, 0xFFB4),
            (.fs, 0xFF38, 0xFFB8), (.gs, 0xFF44, 0xFFBC),
        ]
        for (seg, cache, selector) in caches {
            let v = s.sregs[keyPath: seg.keyPath]
            check(selector, 4, UInt64(v.selector), "\(seg) selector")
            check(cache, 4, UInt64(SaveStateMap.segmentFlags(v)), "\(seg) flags")
            check(cache + 4, 4, UInt64(v.limit), "\(seg) limit")
            check(cache + 8, 4, v.base & 0xFFFF_FFFF, "\(seg) base")
        }
        check(0xFF90, 4, 0x00C0_9B00, "cs flags literal")
        check(0xFF9C, 4, 0x0050_F700, "ss flags literal (avl, dpl 3, type 7)")
        check(0xFF44, 4, 0x0000_7900, "gs flags literal (not present)")
        check(0xFF54, 4, 0x07FF, "idtr limit")
        check(0xFF58, 4, 0x0000_A000, "idtr base")
        check(0xFF5C, 4, 0x0000_8B00, "tr flags")
        check(0xFF60, 4, 0x67, "tr limit")
        check(0xFF64, 4, 0x0000_7000, "tr base")
        check(0xFF70, 4, 0x57, "gdtr limit")
        check(0xFF74, 4, 0x0000_9000, "gdtr base")
        check(0xFF78, 4, 0x0000_8200, "ldtr flags")
        check(0xFF7C, 4, 0x1FF, "ldtr limit")
        check(0xFF80, 4, 0x0000_8000, "ldtr base")
        check(0xFFC0, 4, 0x48, "ldtr selector")
        check(0xFFC4, 4, 0x40, "tr selector")
        check(0xFFC8, 4, 0x712, "dr7")
        check(0xFFCC, 4, 0xFFFF_4FF1, "dr6")
        let names = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
        for (i, name) in names.enumerated() {
            check(0xFFD0 + 4 * i, 4, UInt64(0x1100_0000 + i * 0x0001_0101), name)
        }
        check(0xFFD0, 4, s.regs.rax & 0xFFFF_FFFF, "eax @FFD0")
        check(0xFFEC, 4, s.regs.rdi & 0xFFFF_FFFF, "edi @FFEC")
        check(0xFFF0, 4, 0x1234_5678, "eip")
        check(0xFFF4, 4, 0x0020_0A46, "eflags")
        check(0xFFF8, 4, 0x0012_3000, "cr3 (low 32 bits)")
        check(0xFFFC, 4, 0x8005_0033, "cr0")
        // Everything KVM does not fill stays 0 (memset before saving).
        for offset in 0xFE00..<0x10000 where !covered.contains(offset) {
            #expect(map[offset - 0xFE00] == 0, "byte at 0x\(String(offset, radix: 16)) should be 0")
        }
    }

    @Test("AMD64 map: every field at its kvm_smram_state_64 offset")
    func amd64Layout() {
        let s = state
        let map = SaveStateMap.encode(s, smbase: 0x07F0_0000, format: .amd64)
        var covered = Set<Int>()
        func check(_ offset: Int, _ width: Int, _ expected: UInt64, _ what: String) {
            #expect(field(map, offset, width) == expected, "\(what) at 0x\(String(offset, radix: 16))")
            covered.formUnion(offset..<(offset + width))
        }
        let records: [(SegmentRegister, Int)] = [
            (.es, 0xFE00), (.cs, 0xFE10), (.ss, 0xFE20), (.ds, 0xFE30), (.fs, 0xFE40), (.gs, 0xFE50),
        ]
        for (seg, at) in records {
            let v = s.sregs[keyPath: seg.keyPath]
            check(at, 2, UInt64(v.selector), "\(seg) selector")
            check(at + 2, 2, UInt64(SaveStateMap.segmentFlags(v) >> 8), "\(seg) attributes")
            check(at + 4, 4, UInt64(v.limit), "\(seg) limit")
            check(at + 8, 8, v.base, "\(seg) base")
        }
        check(0xFE12, 2, 0xC09B, "cs attributes literal")
        check(0xFE48, 8, 0xFFFF_8000_00F0_0000, "fs base literal (64-bit)")
        check(0xFE64, 4, 0x57, "gdtr limit")
        check(0xFE68, 8, 0x7_0000_9000, "gdtr base")
        check(0xFE70, 2, 0x48, "ldtr selector")
        check(0xFE72, 2, 0x82, "ldtr attributes")
        check(0xFE74, 4, 0x1FF, "ldtr limit")
        check(0xFE78, 8, 0x6_0000_8000, "ldtr base")
        check(0xFE84, 4, 0x7FF, "idtr limit")
        check(0xFE88, 8, 0x8_0000_A000, "idtr base")
        check(0xFE90, 2, 0x40, "tr selector")
        check(0xFE92, 2, 0x8B, "tr attributes")
        check(0xFE94, 4, 0x67, "tr limit")
        check(0xFE98, 8, 0x5_0000_7000, "tr base")
        check(0xFEC8, 1, 0, "io_inst_restart")
        check(0xFEC9, 1, 0, "auto_hlt_restart")
        check(0xFECB, 1, 1, "int_shadow")
        check(0xFED0, 8, 0xD01, "efer")
        check(0xFEFC, 4, 0x0002_0064, "revision")
        check(0xFF00, 4, 0x07F0_0000, "smbase")
        check(0xFF48, 8, 0x06A0, "cr4")
        check(0xFF50, 8, 0x9_0012_3000, "cr3")
        check(0xFF58, 8, 0x8005_0033, "cr0")
        check(0xFF60, 8, 0x712, "dr7")
        check(0xFF68, 8, 0xFFFF_4FF1, "dr6")
        check(0xFF70, 8, 0x0020_0A46, "rflags")
        check(0xFF78, 8, 0x0000_7FFF_1234_5678, "rip")
        // gprs[15 - i] = register i: R15 at FF80 ... RAX at FFF8.
        let order: [(Int, UInt64, String)] = [
            (0xFFF8, s.regs.rax, "rax"), (0xFFF0, s.regs.rcx, "rcx"), (0xFFE8, s.regs.rdx, "rdx"),
            (0xFFE0, s.regs.rbx, "rbx"), (0xFFD8, s.regs.rsp, "rsp"), (0xFFD0, s.regs.rbp, "rbp"),
            (0xFFC8, s.regs.rsi, "rsi"), (0xFFC0, s.regs.rdi, "rdi"), (0xFFB8, s.regs.r8, "r8"),
            (0xFFB0, s.regs.r9, "r9"), (0xFFA8, s.regs.r10, "r10"), (0xFFA0, s.regs.r11, "r11"),
            (0xFF98, s.regs.r12, "r12"), (0xFF90, s.regs.r13, "r13"), (0xFF88, s.regs.r14, "r14"),
            (0xFF80, s.regs.r15, "r15"),
        ]
        for (at, value, name) in order { check(at, 8, value, name) }
        check(0xFFF8, 8, 0x0000_AB00_1100_0000, "rax literal")
        for offset in 0xFE00..<0x10000 where !covered.contains(offset) {
            #expect(map[offset - 0xFE00] == 0, "byte at 0x\(String(offset, radix: 16)) should be 0")
        }
    }

    @Test("decode(encode(x)) gives back every field RSM loads", arguments: SaveStateFormat.allCases)
    func roundTrip(format: SaveStateFormat) {
        let s = state
        let decoded = SaveStateMap.decode(SaveStateMap.encode(s, smbase: 0x0123_4560, format: format), format: format)
        let wide = format == .amd64
        let narrow: (UInt64) -> UInt64 = { wide ? $0 : $0 & 0xFFFF_FFFF }
        #expect(decoded.gprs.count == (wide ? 16 : 8))
        for (gpr, value) in zip(GPR.allCases, decoded.gprs) { #expect(value == narrow(s.regs[gpr]), "\(gpr)") }
        #expect(decoded.rip == narrow(s.regs.rip))
        #expect(decoded.rflags == s.regs.rflags)
        #expect(decoded.cr0 == s.sregs.cr0)
        #expect(decoded.cr3 == narrow(s.sregs.cr3))
        #expect(decoded.cr4 == s.sregs.cr4)
        #expect(decoded.dr6 == s.dr6 && decoded.dr7 == s.dr7)
        #expect(decoded.efer == (wide ? s.sregs.efer : nil))
        #expect(decoded.smbase == 0x0123_4560)
        #expect(decoded.revision == format.revision)
        #expect(decoded.interruptShadow == 1)
        #expect(decoded.autoHALTRestart == 0 && decoded.ioInstructionRestart == 0)
        for (seg, value) in zip(SegmentRegister.allCases, decoded.segments) {
            var expected = s.sregs[keyPath: seg.keyPath]
            expected.base = narrow(expected.base)
            #expect(same(value, expected), "\(seg)")
        }
        var tr = s.sregs.tr
        var ldt = s.sregs.ldt
        var gdt = s.sregs.gdt
        var idt = s.sregs.idt
        tr.base = narrow(tr.base)
        ldt.base = narrow(ldt.base)
        gdt.base = narrow(gdt.base)
        idt.base = narrow(idt.base)
        #expect(same(decoded.tr, tr) && same(decoded.ldtr, ldt) && same(decoded.gdtr, gdt) && same(decoded.idtr, idt))
        #expect(decoded.segments[SegmentRegister.gs.rawValue].unusable == 1)  // not present -> unusable
    }
}
