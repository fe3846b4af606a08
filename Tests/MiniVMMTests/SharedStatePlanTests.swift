// SPDX-License-Identifier: MIT
import Testing

@testable import MiniVMM

/// Which MSRs of `KVM_GET_MSR_INDEX_LIST` the emulated backend carries between a CPU's two vCPUs at SMI entry and RSM.
@Suite("Shared-state MSR choice")
struct SharedStatePlanTests {
    @Test(
        "per-CPU architectural MSRs are carried",
        arguments: [
            0x174, 0x175, 0x176, 0xC000_0081, 0xC000_0082, 0xC000_0083, 0xC000_0084, 0xC000_0102, 0xC000_0103, 0x277,
            0x1A0, 0x1D9, 0x2FF, 0x250, 0x200,
        ] as [UInt32])
    func carried(msr: UInt32) {
        #expect(SharedStatePlan.carries(msr))
    }

    @Test(
        "the TSC, KVM's paravirtual MSRs, MSR_SMI_COUNT and read-only identification MSRs are not",
        arguments: [
            0x10, 0x3B, 0x6E0, 0x11, 0x12, 0x4B56_4D00, 0x4B56_4D01, 0x4B56_4D07, 0x4B56_4DFF, 0x34, 0x8B, 0xCE, 0x10A,
            0x345, 0xFE, 0x1DB, 0x1DE,
        ] as [UInt32])
    func notCarried(msr: UInt32) {
        #expect(!SharedStatePlan.carries(msr))
    }

    @Test("the MTRRs KVM emulates but does not list: def type, 11 fixed, 8 variable pairs")
    func mtrrs() {
        #expect(SharedStatePlan.mtrrs.count == 1 + 11 + 16)
        #expect(Set(SharedStatePlan.mtrrs).count == SharedStatePlan.mtrrs.count)
        #expect(SharedStatePlan.mtrrs.allSatisfy(SharedStatePlan.carries))
    }
}
