// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

/// ICR decoding (SDM Vol. 3A 11.6.1) with the values the firmware writes.
@Suite struct InterruptCommandTests {
    @Test func x2APICInitToCPU5() throws {
        let icr = try #require(InterruptCommand.decodeX2APIC(UInt64(5) << 32 | 0x4500))
        #expect(icr.mode == .initIPI)
        #expect(icr.level)
        #expect(!icr.triggerLevel)
        #expect(icr.destination == .physical(5))
        #expect(!icr.isINITDeassert)
    }

    @Test func x2APICStartupCarriesVector() throws {
        let icr = try #require(InterruptCommand.decodeX2APIC(UInt64(3) << 32 | 0x4608))
        #expect(icr.mode == .startup)
        #expect(icr.vector == UInt8(MINIVMM_SIPI_VECTOR))
        #expect(icr.destination == .physical(3))
    }

    @Test func x2APICSMI() throws {
        let icr = try #require(InterruptCommand.decodeX2APIC(UInt64(1) << 32 | 0x4200))
        #expect(icr.mode == .smi)
        #expect(icr.vector == 0)
        #expect(icr.destination == .physical(1))
    }

    @Test func contractConstantsMatchTheModes() {
        #expect(UInt32(APIC_ICR_DM_INIT) >> 8 == UInt32(DeliveryMode.initIPI.rawValue))
        #expect(UInt32(APIC_ICR_DM_STARTUP) >> 8 == UInt32(DeliveryMode.startup.rawValue))
        #expect(UInt32(APIC_ICR_DM_SMI) >> 8 == UInt32(DeliveryMode.smi.rawValue))
        #expect(UInt32(APIC_ICR_DM_NMI) >> 8 == UInt32(DeliveryMode.nmi.rawValue))
    }

    @Test func physicalDestinationAbove255InX2APIC() throws {
        let icr = try #require(InterruptCommand.decodeX2APIC(UInt64(300) << 32 | 0x4200))
        #expect(icr.destination == .physical(300))
        #expect(icr.destination.targets(sender: 0, present: Array(0..<512)) == [300])
        #expect(icr.destination.targets(sender: 0, present: Array(0..<256)) == [])
    }

    @Test func x2APICBroadcastID() throws {
        let icr = try #require(InterruptCommand.decodeX2APIC(0xFFFF_FFFF_0000_4200))
        #expect(icr.destination == .allIncludingSelf)
    }

    @Test func xAPICBroadcastID() throws {
        let icr = try #require(InterruptCommand.decodeXAPIC(low: 0x4500, high: 0xFF00_0000))
        #expect(icr.destination == .allIncludingSelf)
        #expect(icr.destination.targets(sender: 1, present: [2, 0, 1]) == [0, 1, 2])
    }

    @Test func xAPICDestinationInHighBits31To24() throws {
        let icr = try #require(InterruptCommand.decodeXAPIC(low: 0x4608, high: 0x0700_0000))
        #expect(icr.destination == .physical(7))
        #expect(icr.vector == 8)
        // Only bits 31:24 of ICR high form the xAPIC destination.
        let low = try #require(InterruptCommand.decodeXAPIC(low: 0x4608, high: 0x00FF_FFFF))
        #expect(low.destination == .physical(0))
    }

    @Test func shorthands() throws {
        let selfIPI = try #require(InterruptCommand.decodeXAPIC(low: 0x4_4030, high: 0x0500_0000))
        #expect(selfIPI.destination == .selfOnly)
        #expect(selfIPI.destination.targets(sender: 2, present: [0, 1, 2]) == [2])
        let all = try #require(InterruptCommand.decodeX2APIC(0x8_4200))
        #expect(all.destination == .allIncludingSelf)
        let allButSelf = try #require(InterruptCommand.decodeX2APIC(UInt64(9) << 32 | 0xC_4500))
        #expect(allButSelf.destination == .allExcludingSelf)
        #expect(allButSelf.destination.targets(sender: 1, present: [3, 1, 0]) == [0, 3])
    }

    @Test func initDeassertIsRecognised() throws {
        // INIT, level de-assert, level-triggered: what old MP start-up code sends after INIT.
        let deassert = try #require(InterruptCommand.decodeXAPIC(low: 0x8500, high: 0))
        #expect(deassert.isINITDeassert)
        // Edge-triggered INIT with level 0 is still a real INIT (KVM accepts it).
        let edge = try #require(InterruptCommand.decodeXAPIC(low: 0x0500, high: 0))
        #expect(!edge.isINITDeassert)
        let assertLevel = try #require(InterruptCommand.decodeXAPIC(low: 0xC500, high: 0))
        #expect(!assertLevel.isINITDeassert)
    }

    @Test func reservedDeliveryModeDoesNotDecode() {
        #expect(InterruptCommand.decodeX2APIC(0x4300) == nil)
        #expect(InterruptCommand.decodeXAPIC(low: 0x4300, high: 0) == nil)
    }

    @Test func logicalDestinationIsUnsupported() throws {
        let icr = try #require(InterruptCommand.decodeXAPIC(low: 0x4830, high: 0x0100_0000))
        #expect(icr.destination == .logical(1))
        #expect(!icr.destination.isSupported)
        #expect(icr.destination.targets(sender: 0, present: [0, 1]) == [])
    }

    @Test func physicalToAbsentCPUReachesNobody() {
        #expect(IPIDestination.physical(4).targets(sender: 0, present: [0, 1, 2, 3]) == [])
        #expect(IPIDestination.physical(2).targets(sender: 0, present: [0, 2]) == [2])
    }
}
