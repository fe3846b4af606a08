// SPDX-License-Identifier: MIT
import CKVM
import Testing

@testable import MiniVMM

/// `enterSMM` against the entry-state table of reference/kvm-smm.md §2 and `leaveSMM` against §3 (KVM smm.c).
@Suite("SMI entry and RSM")
struct SMMTransitionTests {
    struct EntryCase: Sendable, CustomTestStringConvertible {
        let smbase: UInt32
        let csSelector: UInt16
        let format: SaveStateFormat
        var testDescription: String { "SMBASE 0x\(String(smbase, radix: 16)) \(format)" }
    }

    static let entryCases: [EntryCase] = [
        EntryCase(smbase: 0x30000, csSelector: 0x3000, format: .legacy32),
        EntryCase(smbase: 0x30000, csSelector: 0x3000, format: .amd64),
        // TSEG-style SMBASE: (0x07F00000 >> 4) & 0xFFFF truncates the selector to 0.
        EntryCase(smbase: 0x07F0_0000, csSelector: 0x0000, format: .legacy32),
        EntryCase(smbase: 0x07F0_0000, csSelector: 0x0000, format: .amd64),
        EntryCase(smbase: 0x7F0A_8000, csSelector: 0xA800, format: .amd64),
    ]

    @Test("SMI entry state, field by field", arguments: entryCases)
    func entryState(c: EntryCase) {
        let before = distinctiveState()
        let entry = enterSMM(from: before, smbase: c.smbase, format: c.format)
        let s = entry.state
        #expect(entry.map == SaveStateMap.encode(before, smbase: c.smbase, format: c.format))
        #expect(entry.insideNMI == false)
        #expect(s.nmiMasked == true)
        #expect(s.interruptShadow == 0)
        #expect(s.regs.rflags == 0x2)
        #expect(s.regs.rip == 0x8000)
        #expect(s.sregs.cr0 == 0x0005_0032)  // 0x80050033 & ~(PE|EM|TS|PG)
        #expect(s.sregs.cr4 == 0)
        #expect(s.sregs.idt.base == 0 && s.sregs.idt.limit == 0)
        #expect(s.dr7 == 0x400)
        #expect(s.sregs.cs.selector == c.csSelector)
        #expect(s.sregs.cs.base == UInt64(c.smbase))
        for seg in SegmentRegister.allCases {
            let v = s.sregs[keyPath: seg.keyPath]
            if seg != .cs { #expect(v.selector == 0 && v.base == 0, "\(seg)") }
            #expect(v.limit == 0xFFFF_FFFF && v.type == 3 && v.s == 1 && v.dpl == 0, "\(seg)")
            #expect(v.db == 0 && v.l == 0 && v.g == 1 && v.avl == 0 && v.present == 1 && v.unusable == 0, "\(seg)")
        }
        #expect(s.sregs.efer == (c.format == .amd64 ? 0 : before.sregs.efer & ~0x400))
        // Unchanged: GPRs, CR2, CR3, CR8, GDTR, LDTR, TR, DR6, APIC base.
        for gpr in GPR.allCases { #expect(s.regs[gpr] == before.regs[gpr], "\(gpr)") }
        #expect(s.sregs.cr2 == before.sregs.cr2 && s.sregs.cr3 == before.sregs.cr3 && s.sregs.cr8 == before.sregs.cr8)
        #expect(same(s.sregs.gdt, before.sregs.gdt))
        #expect(same(s.sregs.ldt, before.sregs.ldt))
        #expect(same(s.sregs.tr, before.sregs.tr))
        #expect(s.dr6 == before.dr6)
        #expect(s.sregs.apic_base == before.sregs.apic_base)
    }

    @Test("An SMI with NMIs already blocked is taken inside NMI")
    func entryInsideNMI() {
        var before = distinctiveState()
        before.nmiMasked = true
        let entry = enterSMM(from: before, smbase: 0x30000, format: .legacy32)
        #expect(entry.insideNMI == true)
        #expect(entry.state.nmiMasked == true)
    }

    @Test("RSM right after the SMI restores the interrupted state", arguments: SaveStateFormat.allCases)
    func rsmRestores(format: SaveStateFormat) throws {
        var before = format == .amd64 ? longModeState() : protectedModeState()
        before.interruptShadow = 0
        let entry = enterSMM(from: before, smbase: 0x000A_0000, format: format)
        let exit = try leaveSMM(map: entry.map, format: format, current: entry.state, insideNMI: entry.insideNMI).get()
        #expect(exit.smbase == 0x000A_0000)
        #expect(exit.state == before)
        // The 32-bit map does not hold R8-R15 or EFER: RSM leaves them as they were at RSM time.
        if format == .legacy32 {
            #expect(exit.state.regs.r15 == 0xEEEE_0000_0000_000F)
            #expect(exit.state.sregs.efer == 0x800)
        }
    }

    @Test("RSM restores CR4.PCIDE and the PCID in CR3 (rsm_enter_protected_mode)")
    func rsmRestoresPCID() throws {
        var before = longModeState()
        before.sregs.cr4 |= X86.CR4.pcide
        before.sregs.cr3 = 0x0000_0001_0000_0005
        before.interruptShadow = 0
        let entry = enterSMM(from: before, smbase: 0x30000, format: .amd64)
        let exit = try leaveSMM(map: entry.map, format: .amd64, current: entry.state, insideNMI: false).get()
        #expect(exit.state.sregs.cr4 == before.sregs.cr4)
        #expect(exit.state.sregs.cr3 == 0x0000_0001_0000_0005)
        #expect(exit.state.sregs.efer == 0xD01)  // LMA comes back with CR0.PG
        #expect(exit.state == before)
    }

    @Test("RSM loads SMBASE from 0xFEF8 (32-bit) or 0xFF00 (AMD64), nowhere else")
    func rsmRelocatesSMBASE() throws {
        let legacy = enterSMM(from: protectedModeState(), smbase: 0x30000, format: .legacy32)
        var map = legacy.map
        setField(&map, 0xFF00, 4, 0x0BAD_0000)  // io_inst_restart/auto_hlt in the 32-bit map: ignored
        #expect(
            try leaveSMM(map: map, format: .legacy32, current: legacy.state, insideNMI: false).get().smbase == 0x30000)
        setField(&map, 0xFF00, 4, 0)
        setField(&map, 0xFEF8, 4, 0x000A_0000)
        #expect(
            try leaveSMM(map: map, format: .legacy32, current: legacy.state, insideNMI: false).get().smbase == 0xA0000)

        let long = enterSMM(from: longModeState(), smbase: 0x30000, format: .amd64)
        map = long.map
        setField(&map, 0xFEF8, 4, 0x0BAD_0000)  // reserved3 in the AMD64 map: ignored
        #expect(try leaveSMM(map: map, format: .amd64, current: long.state, insideNMI: false).get().smbase == 0x30000)
        setField(&map, 0xFF00, 4, 0x7F00_0000)
        #expect(
            try leaveSMM(map: map, format: .amd64, current: long.state, insideNMI: false).get().smbase == 0x7F00_0000)
    }

    @Test("No SMBASE alignment check and no revision check (KVM has neither)", arguments: SaveStateFormat.allCases)
    func rsmChecksNeitherAlignmentNorRevision(format: SaveStateFormat) throws {
        let entry = enterSMM(
            from: format == .amd64 ? longModeState() : protectedModeState(), smbase: 0x30000, format: format)
        var map = entry.map
        setField(&map, Int(format.smbaseFieldOffset), 4, 0x0003_0123)
        setField(&map, 0xFEFC, 4, 0xFFFF_FFFF)
        let exit = try leaveSMM(map: map, format: format, current: entry.state, insideNMI: false).get()
        #expect(exit.smbase == 0x0003_0123)
    }

    @Test("A handler's edit of the saved EAX/RAX takes effect", arguments: SaveStateFormat.allCases)
    func rsmLoadsEditedEAX(format: SaveStateFormat) throws {
        let entry = enterSMM(
            from: format == .amd64 ? longModeState() : protectedModeState(), smbase: 0x30000, format: format)
        var map = entry.map
        if format == .amd64 {
            setField(&map, 0xFFF8, 8, 0x1122_3344_DEAD_BEEF)
        } else {
            setField(&map, 0xFFD0, 4, 0xDEAD_BEEF)
        }
        let exit = try leaveSMM(map: map, format: format, current: entry.state, insideNMI: false).get()
        #expect(exit.state.regs.rax == (format == .amd64 ? 0x1122_3344_DEAD_BEEF : 0xDEAD_BEEF))
    }

    @Test("RSM ignores the auto-HALT and I/O restart fields")
    func rsmIgnoresRestartFields() throws {
        let before = protectedModeState()
        let entry = enterSMM(from: before, smbase: 0x30000, format: .legacy32)
        var map = entry.map
        setField(&map, 0xFF02, 2, 1)
        setField(&map, 0xFF00, 2, 0xFF)
        let exit = try leaveSMM(map: map, format: .legacy32, current: entry.state, insideNMI: false).get()
        #expect(exit.state.regs.rip == before.regs.rip)
    }

    struct Corruption: Sendable, CustomTestStringConvertible {
        let name: String
        let format: SaveStateFormat
        let offset: Int
        let width: Int
        let value: UInt64
        let register: RSMFailure.Register
        var testDescription: String { "\(format): \(name)" }
    }

    static let corruptions: [Corruption] = [
        Corruption(
            name: "CR0.PG without PE", format: .legacy32, offset: 0xFFFC, width: 4, value: 0x8000_0010, register: .cr0),
        Corruption(
            name: "CR0.NW without CD", format: .legacy32, offset: 0xFFFC, width: 4, value: 0x2000_0011, register: .cr0),
        Corruption(name: "CR0 bit 32", format: .amd64, offset: 0xFF58, width: 8, value: 0x1_8005_0033, register: .cr0),
        Corruption(
            name: "CR0.PG without PE", format: .amd64, offset: 0xFF58, width: 8, value: 0x8000_0010, register: .cr0),
        Corruption(name: "CR4 bit 26", format: .legacy32, offset: 0xFF14, width: 4, value: 0x0400_0290, register: .cr4),
        Corruption(name: "CR4 bit 15", format: .amd64, offset: 0xFF48, width: 8, value: 0x0000_86A0, register: .cr4),
        Corruption(
            name: "CR4 bit 40", format: .amd64, offset: 0xFF48, width: 8, value: 0x100_0000_06A0, register: .cr4),
        Corruption(
            name: "CR4.PCIDE outside long mode", format: .legacy32, offset: 0xFF14, width: 4, value: 0x0002_0290,
            register: .cr4),
        Corruption(
            name: "long mode without CR4.PAE", format: .amd64, offset: 0xFF48, width: 8, value: 0x0000_0680,
            register: .cr0),
        Corruption(name: "DR7 bit 32", format: .amd64, offset: 0xFF60, width: 8, value: 0x1_0000_0400, register: .dr7),
        Corruption(
            name: "DR6 bit 63", format: .amd64, offset: 0xFF68, width: 8, value: 0x8000_0000_FFFF_0FF0, register: .dr6),
        Corruption(name: "EFER bit 1", format: .amd64, offset: 0xFED0, width: 8, value: 0xD03, register: .efer),
        Corruption(
            name: "CR3 above MAXPHYADDR", format: .amd64, offset: 0xFF50, width: 8, value: 1 << 55, register: .cr3),
    ]

    @Test("Invalid CR0/CR3/CR4/DR6/DR7/EFER in the map make RSM fail (triple fault)", arguments: corruptions)
    func rsmRejects(c: Corruption) {
        let entry = enterSMM(
            from: c.format == .amd64 ? longModeState() : protectedModeState(), smbase: 0x30000, format: c.format)
        var map = entry.map
        setField(&map, c.offset, c.width, c.value)
        let result = leaveSMM(map: map, format: c.format, current: entry.state, insideNMI: false)
        guard case .failure(let failure) = result else {
            Issue.record("RSM accepted \(c.name)")
            return
        }
        #expect(failure.register == c.register)
        #expect(failure.description.contains(c.register.rawValue))
    }

    @Test("DR6/DR7 are loaded through kvm_set_dr: fixed bits forced, volatile bits kept")
    func rsmNormalizesDebugRegisters() throws {
        let entry = enterSMM(from: longModeState(), smbase: 0x30000, format: .amd64)
        var map = entry.map
        setField(&map, 0xFF68, 8, 0)
        setField(&map, 0xFF60, 8, 0xFFFF_FFFF)
        let exit = try leaveSMM(map: map, format: .amd64, current: entry.state, insideNMI: false).get()
        #expect(exit.state.dr6 == 0xFFFF_0FF0)
        #expect(exit.state.dr7 == 0xFFFF_2FFF)
    }

    @Test(
        "DR7 0x700 set by the guest: the map saves it, SMM runs with 0x400, RSM restores it (or the handler's edit)",
        arguments: [(SaveStateFormat.legacy32, 0xFFC8, 0xFFCC, 4), (.amd64, 0xFF60, 0xFF68, 8)])
    func debugRegistersRoundTrip(format: SaveStateFormat, dr7At: Int, dr6At: Int, width: Int) throws {
        var before = format == .amd64 ? longModeState() : protectedModeState()
        before.dr7 = 0x700
        before.dr6 = 0xFFFF_0FF1
        let entry = enterSMM(from: before, smbase: 0x30000, format: format)
        #expect(field(entry.map, dr7At, width) == 0x700)
        #expect(field(entry.map, dr6At, width) == 0xFFFF_0FF1)
        #expect(entry.state.dr7 == 0x400)
        #expect(entry.state.dr6 == 0xFFFF_0FF1)
        // In SMM the handler sets DR7 to 0x500: RSM reloads the map's value, not the live one.
        var inSMM = entry.state
        inSMM.dr7 = 0x500
        let back = try leaveSMM(map: entry.map, format: format, current: inSMM, insideNMI: false).get()
        #expect(back.state.dr7 == 0x700)
        #expect(back.state.dr6 == 0xFFFF_0FF1)
        var edited = entry.map
        setField(&edited, dr7At, width, 0x600)
        setField(&edited, dr6At, width, 0xFFFF_0FF2)
        let fromEdit = try leaveSMM(map: edited, format: format, current: inSMM, insideNMI: false).get()
        #expect(fromEdit.state.dr7 == 0x600)
        #expect(fromEdit.state.dr6 == 0xFFFF_0FF2)
    }

    @Test("NMIs: unmasked by RSM unless they were masked before the SMI")
    func rsmNMIMask() throws {
        var before = protectedModeState()
        let plain = enterSMM(from: before, smbase: 0x30000, format: .legacy32)
        #expect(plain.state.nmiMasked)
        let unmasked = try leaveSMM(map: plain.map, format: .legacy32, current: plain.state, insideNMI: plain.insideNMI)
            .get()
        #expect(unmasked.state.nmiMasked == false)

        before.nmiMasked = true
        let nested = enterSMM(from: before, smbase: 0x30000, format: .legacy32)
        let masked = try leaveSMM(
            map: nested.map, format: .legacy32, current: nested.state, insideNMI: nested.insideNMI
        ).get()
        #expect(masked.state.nmiMasked == true)
    }

    @Test(
        "The interrupt shadow is saved in int_shadow, cleared in SMM and restored by RSM",
        arguments: SaveStateFormat.allCases)
    func rsmInterruptShadow(format: SaveStateFormat) throws {
        var before = format == .amd64 ? longModeState() : protectedModeState()
        before.interruptShadow = 2  // KVM_X86_SHADOW_INT_STI
        let entry = enterSMM(from: before, smbase: 0x30000, format: format)
        let shadowOffset = format == .amd64 ? 0xFECB : 0xFF1A
        #expect(field(entry.map, shadowOffset, 1) == 2)
        #expect(entry.state.interruptShadow == 0)
        var current = entry.state
        current.interruptShadow = 1  // a MOV SS inside the handler does not leak out
        #expect(
            try leaveSMM(map: entry.map, format: format, current: current, insideNMI: false).get().state.interruptShadow
                == 2)
        var map = entry.map
        setField(&map, shadowOffset, 1, 0)
        #expect(
            try leaveSMM(map: map, format: format, current: current, insideNMI: false).get().state.interruptShadow == 0)
    }

    @Test("RSM from a handler that entered protected mode (CR0.PE set at RSM)")
    func rsmFromProtectedHandler() throws {
        let before = longModeState()
        let entry = enterSMM(from: before, smbase: 0x30000, format: .amd64)
        var current = entry.state
        current.sregs.cr0 |= X86.CR0.pe
        current.sregs.cs = kvm_segment(selector: 8, base: 0, limit: 0xFFFF_FFFF, type: 0xB, s: 1, db: 1, g: 1)
        var expected = before
        expected.interruptShadow = 1
        let exit = try leaveSMM(map: entry.map, format: .amd64, current: current, insideNMI: false).get()
        #expect(exit.state == expected)
    }

    @Test("A 32-bit map loads 32-bit values zero-extended and keeps the upper GPRs")
    func rsm32BitZeroExtends() throws {
        var at = protectedModeState()
        at.regs.rax = 0xFFFF_FFFF_0000_0001  // upper half set at RSM time
        let entry = enterSMM(from: protectedModeState(), smbase: 0x30000, format: .legacy32)
        var current = entry.state
        current.regs.rax = at.regs.rax
        current.regs.r9 = 0x9999
        let exit = try leaveSMM(map: entry.map, format: .legacy32, current: current, insideNMI: false).get()
        #expect(exit.state.regs.rax == 0x1100_0000)
        #expect(exit.state.regs.r9 == 0x9999)
    }
}
