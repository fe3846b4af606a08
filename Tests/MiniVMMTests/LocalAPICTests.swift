// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

/// The userspace local APIC register model: both views, #GP rules, IPIs, priority bookkeeping.
@Suite struct LocalAPICTests {
    let x2APICBase = UInt32(MSR_X2APIC_BASE)

    @Test func idAndVersionInXAPICMode() {
        let apic = LocalAPIC(apicID: 3, isBSP: false)
        #expect(apic.readMMIO(offset: 0x20) == 0x0300_0000)
        #expect(apic.readMMIO(offset: 0x30) == 0x0005_0014)
        #expect(apic.readMMIO(offset: 0xF0) == 0xFF)
        #expect(apic.readMMIO(offset: 0xE0) == 0xFFFF_FFFF)
        for lvt in stride(from: UInt32(0x320), through: 0x370, by: 0x10) {
            #expect(apic.readMMIO(offset: lvt) == 0x1_0000)
        }
    }

    @Test func idAndVersionInX2APICMode() {
        let apic = LocalAPIC(apicID: 300, isBSP: false)
        #expect(apic.readMSR(0x802, x2APICEnabled: true) == .value(300))
        #expect(apic.readMSR(0x803, x2APICEnabled: true) == .value(0x0005_0014))
        // Cluster 300 >> 4 = 18, logical bit 300 & 15 = 12.
        #expect(apic.readMSR(0x80D, x2APICEnabled: true) == .value(18 << 16 | 1 << 12))
        #expect(apic.readMSR(0x80F, x2APICEnabled: true) == .value(0xFF))
    }

    @Test func x2APICMSRsFaultOutsideX2APICMode() {
        let apic = LocalAPIC(apicID: 0, isBSP: true)
        #expect(apic.readMSR(0x802, x2APICEnabled: false) == .generalProtection)
        #expect(apic.writeMSR(0x808, value: 0, x2APICEnabled: false).gp)
        #expect(apic.writeMSR(0x830, value: 0x4500, x2APICEnabled: false) == (true, nil))
    }

    @Test func x2APICGeneralProtectionRules() {
        let apic = LocalAPIC(apicID: 1, isBSP: false)
        // Write-only registers cannot be read.
        #expect(apic.readMSR(0x80B, x2APICEnabled: true) == .generalProtection)
        #expect(apic.readMSR(0x83F, x2APICEnabled: true) == .generalProtection)
        // Read-only registers cannot be written.
        #expect(apic.writeMSR(0x802, value: 7, x2APICEnabled: true).gp)
        #expect(apic.writeMSR(0x803, value: 0, x2APICEnabled: true).gp)
        #expect(apic.writeMSR(0x80D, value: 0, x2APICEnabled: true).gp)
        #expect(apic.writeMSR(0x810, value: 0, x2APICEnabled: true).gp)
        // xAPIC-only registers do not exist: DFR, ICR high.
        #expect(apic.readMSR(0x80E, x2APICEnabled: true) == .generalProtection)
        #expect(apic.readMSR(0x831, x2APICEnabled: true) == .generalProtection)
        #expect(apic.writeMSR(0x831, value: 0, x2APICEnabled: true).gp)
        // EOI and ESR take 0 only; bits 63:32 are reserved outside ICR; SELF_IPI bits 31:8 are reserved.
        #expect(apic.writeMSR(0x80B, value: 1, x2APICEnabled: true).gp)
        #expect(!apic.writeMSR(0x80B, value: 0, x2APICEnabled: true).gp)
        #expect(apic.writeMSR(0x828, value: 1, x2APICEnabled: true).gp)
        #expect(apic.writeMSR(0x808, value: 1 << 32, x2APICEnabled: true).gp)
        #expect(apic.writeMSR(0x83F, value: 0x130, x2APICEnabled: true).gp)
        // Reserved ICR bits.
        #expect(apic.writeMSR(0x830, value: 0x2000 | 0x4500, x2APICEnabled: true).gp)
        // Outside the x2APIC range.
        #expect(apic.readMSR(0x900, x2APICEnabled: true) == .generalProtection)
        // TPR is read-write.
        #expect(!apic.writeMSR(0x808, value: 0x20, x2APICEnabled: true).gp)
        #expect(apic.readMSR(0x808, x2APICEnabled: true) == .value(0x20))
    }

    @Test func x2APICICRWriteSendsAndReadsBack() {
        let apic = LocalAPIC(apicID: 0, isBSP: true)
        let result = apic.writeMSR(x2APICBase + 0x30, value: UInt64(260) << 32 | 0x4608, x2APICEnabled: true)
        #expect(!result.gp)
        #expect(
            result.ipi
                == InterruptCommand(
                    vector: 8, mode: .startup, level: true, triggerLevel: false, destination: .physical(260)))
        #expect(apic.readMSR(0x830, x2APICEnabled: true) == .value(UInt64(260) << 32 | 0x4608))
    }

    @Test func selfIPIMSR() {
        let apic = LocalAPIC(apicID: 4, isBSP: false)
        let result = apic.writeMSR(0x83F, value: 0x30, x2APICEnabled: true)
        #expect(!result.gp)
        #expect(result.ipi?.destination == .selfOnly)
        #expect(result.ipi?.vector == 0x30)
        #expect(result.ipi?.mode == .fixed)
    }

    @Test func xAPICICRLowWriteSends() {
        let apic = LocalAPIC(apicID: 0, isBSP: true)
        #expect(apic.writeMMIO(offset: 0x310, value: 0x0200_0000) == nil)
        let ipi = apic.writeMMIO(offset: 0x300, value: 0x4500)
        #expect(
            ipi
                == InterruptCommand(
                    vector: 0, mode: .initIPI, level: true, triggerLevel: false, destination: .physical(2)))
        #expect(apic.readMMIO(offset: 0x310) == 0x0200_0000)
        // Delivery status (bit 12) always reads 0.
        _ = apic.writeMMIO(offset: 0x300, value: 0x1000 | 0x4200)
        #expect(apic.readMMIO(offset: 0x300) == 0x4200)
    }

    @Test func xAPICOddWidthsAndReadOnlyWritesAreIgnored() {
        let apic = LocalAPIC(apicID: 2, isBSP: false)
        #expect(apic.readMMIO(offset: 0x20, size: 1) == 0)
        #expect(apic.readMMIO(offset: 0x24) == 0)
        #expect(apic.writeMMIO(offset: 0x300, value: 0x4500, size: 2) == nil)
        #expect(apic.writeMMIO(offset: 0x20, value: 0x0700_0000) == nil)
        #expect(apic.readMMIO(offset: 0x20) == 0x0200_0000)
        #expect(apic.ignoredAccessCount == 4)
    }

    @Test func fixedInterruptPriority() {
        let apic = LocalAPIC(apicID: 0, isBSP: true)
        #expect(apic.nextInjectable() == nil)
        apic.acceptFixed(vector: 0x30)
        apic.acceptFixed(vector: 0x51)
        #expect(apic.nextInjectable() == 0x51)
        apic.didInject(vector: 0x51)
        #expect(apic.isInService(0x51))
        #expect(!apic.isPending(0x51))
        // 0x30 is in a lower class than the in-service 0x51: blocked until EOI.
        #expect(apic.nextInjectable() == nil)
        apic.acceptFixed(vector: 0x55)  // same class as in service: still blocked
        #expect(apic.nextInjectable() == nil)
        apic.acceptFixed(vector: 0x60)
        #expect(apic.nextInjectable() == 0x60)
        apic.didInject(vector: 0x60)
        // EOI clears the highest in-service vector first.
        _ = apic.writeMMIO(offset: 0xB0, value: 0)
        #expect(!apic.isInService(0x60))
        #expect(apic.isInService(0x51))
        #expect(!apic.writeMSR(0x80B, value: 0, x2APICEnabled: true).gp)
        #expect(!apic.isInService(0x51))
        #expect(apic.nextInjectable() == 0x55)
        // TPR blocks classes at or below it.
        _ = apic.writeMMIO(offset: 0x80, value: 0x50)
        #expect(apic.nextInjectable() == nil)
        _ = apic.writeMMIO(offset: 0x80, value: 0x4F)
        #expect(apic.nextInjectable() == 0x55)
        // The ISR/IRR banks are visible: vector 0x55 is bit 21 of IRR word 2 (offset 0x220).
        #expect(apic.readMMIO(offset: 0x220) & (1 << 21) != 0)
    }

    @Test func processorPriorityRegister() {
        let apic = LocalAPIC(apicID: 0, isBSP: true)
        apic.acceptFixed(vector: 0x55)
        apic.didInject(vector: 0x55)
        // Same class: PPR is the full TPR; lower TPR class: PPR is the ISR class.
        _ = apic.writeMMIO(offset: 0x80, value: 0x52)
        #expect(apic.readMMIO(offset: 0xA0) == 0x52)
        _ = apic.writeMMIO(offset: 0x80, value: 0x42)
        #expect(apic.readMMIO(offset: 0xA0) == 0x50)
        #expect(apic.readMSR(0x80A, x2APICEnabled: true) == .value(0x50))
    }

    @Test func illegalVectorLatchesESR() {
        let apic = LocalAPIC(apicID: 0, isBSP: true)
        apic.acceptFixed(vector: 3)
        #expect(apic.nextInjectable() == nil)
        #expect(apic.readMMIO(offset: 0x280) == 0)
        _ = apic.writeMMIO(offset: 0x280, value: 0)
        #expect(apic.readMMIO(offset: 0x280) == 0x40)
    }

    @Test func initKeepsIDAndResetsRegisters() {
        let apic = LocalAPIC(apicID: 7, isBSP: false)
        _ = apic.writeMMIO(offset: 0xF0, value: 0x1FF)
        _ = apic.writeMMIO(offset: 0x80, value: 0x20)
        _ = apic.writeMMIO(offset: 0x350, value: 0x700)
        _ = apic.writeMMIO(offset: 0xD0, value: 0x0100_0000)
        apic.acceptFixed(vector: 0x40)
        #expect(apic.readMMIO(offset: 0x350) == 0x700)
        apic.initSignal()
        #expect(apic.readMMIO(offset: 0x20) == 0x0700_0000)
        #expect(apic.readMSR(0x802, x2APICEnabled: true) == .value(7))
        #expect(apic.readMMIO(offset: 0xF0) == 0xFF)
        #expect(apic.readMMIO(offset: 0x80) == 0)
        #expect(apic.readMMIO(offset: 0x350) == 0x1_0000)
        #expect(apic.readMMIO(offset: 0xD0) == 0)
        #expect(!apic.isPending(0x40))
    }

    @Test func softwareDisabledAPICMasksLVTs() {
        let apic = LocalAPIC(apicID: 0, isBSP: true)
        _ = apic.writeMMIO(offset: 0x350, value: 0x700)
        #expect(apic.readMMIO(offset: 0x350) == 0x1_0700)
        _ = apic.writeMMIO(offset: 0xF0, value: 0x1FF)
        _ = apic.writeMMIO(offset: 0x350, value: 0x700)
        #expect(apic.readMMIO(offset: 0x350) == 0x700)
        _ = apic.writeMMIO(offset: 0xF0, value: 0xFF)
        #expect(apic.readMMIO(offset: 0x350) == 0x1_0700)
    }

    @Test func resetAPICBase() {
        #expect(LocalAPIC.resetAPICBase(isBSP: true) == 0xFEE0_0900)
        #expect(LocalAPIC.resetAPICBase(isBSP: false) == 0xFEE0_0800)
    }
}
