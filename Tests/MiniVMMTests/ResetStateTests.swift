// SPDX-License-Identifier: MIT
import CKVM
import Testing

@testable import MiniVMM

/// RESET, INIT and SIPI states against SDM Vol. 3A Table 10-1 and KVM `kvm_vcpu_reset` / `vmx_vcpu_reset`.
@Suite("RESET, INIT and SIPI")
struct ResetStateTests {
    /// The register state RESET and INIT share.
    func expectCommonInitState(_ s: ArchState, rdx: UInt64) {
        #expect(s.regs.rip == 0xFFF0)
        #expect(s.regs.rflags == 0x2)
        #expect(s.regs.rdx == rdx)
        for gpr in GPR.allCases where gpr != .rdx { #expect(s.regs[gpr] == 0, "\(gpr)") }
        #expect(s.sregs.cs.selector == 0xF000 && s.sregs.cs.base == 0xFFFF_0000 && s.sregs.cs.limit == 0xFFFF)
        #expect(s.sregs.cs.type == 0xB && s.sregs.cs.s == 1 && s.sregs.cs.present == 1 && s.sregs.cs.dpl == 0)
        #expect(s.sregs.cs.db == 0 && s.sregs.cs.g == 0 && s.sregs.cs.l == 0 && s.sregs.cs.unusable == 0)
        for seg in SegmentRegister.allCases where seg != .cs {
            let v = s.sregs[keyPath: seg.keyPath]
            #expect(v.selector == 0 && v.base == 0 && v.limit == 0xFFFF && v.type == 3, "\(seg)")
            #expect(v.s == 1 && v.present == 1 && v.dpl == 0 && v.db == 0 && v.g == 0 && v.unusable == 0, "\(seg)")
        }
        #expect(s.sregs.ldt.type == 2 && s.sregs.ldt.present == 1 && s.sregs.ldt.s == 0)
        #expect(s.sregs.ldt.limit == 0xFFFF && s.sregs.ldt.base == 0 && s.sregs.ldt.selector == 0)
        #expect(s.sregs.tr.type == 0xB && s.sregs.tr.present == 1 && s.sregs.tr.s == 0)
        #expect(s.sregs.tr.limit == 0xFFFF && s.sregs.tr.base == 0 && s.sregs.tr.selector == 0)
        #expect(s.sregs.gdt.base == 0 && s.sregs.gdt.limit == 0xFFFF)
        #expect(s.sregs.idt.base == 0 && s.sregs.idt.limit == 0xFFFF)
        #expect(s.sregs.cr2 == 0 && s.sregs.cr3 == 0 && s.sregs.cr4 == 0 && s.sregs.cr8 == 0 && s.sregs.efer == 0)
        #expect(s.dr6 == 0xFFFF_0FF0 && s.dr7 == 0x400)
        #expect(s.interruptShadow == 0 && s.nmiMasked == false)
    }

    @Test("Power-on RESET of the BSP and of an AP")
    func powerOn() {
        let bsp = ArchState.powerOn(isBSP: true)
        expectCommonInitState(bsp, rdx: 0x600)
        #expect(bsp.sregs.cr0 == 0x6000_0010)
        #expect(bsp.sregs.apic_base == 0xFEE0_0900)
        let ap = ArchState.powerOn(isBSP: false, cpuidSignature: 0x000A_06A4)
        expectCommonInitState(ap, rdx: 0x000A_06A4)
        #expect(ap.sregs.apic_base == 0xFEE0_0800)
        #expect(SMBASERule.afterReset == 0x30000)
    }

    @Test("INIT keeps CR0.CD/NW, the APIC base and SMBASE; resets everything else")
    func initSignal() {
        var dirty = longModeState()
        dirty.sregs.cr0 = 0x4000_0033 | X86.CR0.pg  // CD set, NW clear
        dirty.sregs.apic_base = 0xFEE0_0C00  // enabled + x2APIC, not BSP
        dirty.nmiMasked = true
        dirty.interruptShadow = 1
        let s = dirty.afterINIT()
        expectCommonInitState(s, rdx: 0x600)
        #expect(s.sregs.cr0 == 0x4000_0010)
        #expect(s.sregs.apic_base == 0xFEE0_0C00)
        #expect(SMBASERule.afterINIT(current: 0x7F00_0000) == 0x7F00_0000)

        dirty.sregs.cr0 = 0x6000_0011
        #expect(dirty.afterINIT().sregs.cr0 == 0x6000_0010)
        dirty.sregs.cr0 = 0x11
        #expect(dirty.afterINIT().sregs.cr0 == 0x10)
    }

    @Test("SIPI: CS = vector << 8 : vector << 12, RIP 0, the rest is the INIT state")
    func sipi() {
        let waiting = ArchState.powerOn(isBSP: false).afterINIT(cpuidSignature: 0x806EA)
        let s = waiting.atSIPI(vector: 0x9A)
        #expect(s.sregs.cs.selector == 0x9A00)
        #expect(s.sregs.cs.base == 0x9_A000)
        #expect(s.regs.rip == 0)
        var expected = waiting
        expected.sregs.cs.selector = 0x9A00
        expected.sregs.cs.base = 0x9A000
        expected.regs.rip = 0
        #expect(s == expected)
        #expect(s.sregs.cs.limit == 0xFFFF && s.sregs.cs.type == 0xB)
        #expect(s.regs.rdx == 0x806EA)
        #expect(waiting.atSIPI(vector: 0xFF).sregs.cs.base == 0xF_F000)
    }

    @Test("ArchState equality compares every byte of regs and sregs")
    func equality() {
        let a = ArchState.powerOn(isBSP: true)
        var b = a
        #expect(a == b)
        b.sregs.gs.padding = 1
        #expect(a != b)
        b = a
        b.regs.r15 = 1
        #expect(a != b)
        b = a
        b.nmiMasked = true
        #expect(a != b)
    }
}
