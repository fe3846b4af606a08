// SPDX-License-Identifier: MIT
import KVMBridge
import Testing

@testable import MiniVMM

/// The VMM's exit handling decisions, from synthetic exits (Firecracker's `test_handle_kvm_exit`).
struct ExitClassifierTests {
    @Test func trapFetchInSMMIsTheVectorAndOnlyThere() {
        let e = VCPUExit.internalError(suberror: 1, data: [])
        #expect(ExitClassifier.classify(e, inSMM: true, csBase: Layout.smmTrapBase, rip: 6) == .smmTrap(vector: 6))
        #expect(ExitClassifier.classify(e, inSMM: true, csBase: Layout.smmTrapBase, rip: 13) == .smmTrap(vector: 13))
        if case .fatal = ExitClassifier.classify(e, inSMM: false, csBase: Layout.smmTrapBase, rip: 6) {
        } else {
            Issue.record("outside SMM an emulation failure is fatal")
        }
        if case .fatal = ExitClassifier.classify(e, inSMM: true, csBase: 0x30000, rip: 6) {
        } else {
            Issue.record("an emulation failure elsewhere in SMM is fatal")
        }
    }

    /// fuzz-exit's finding: a `KVM_EXIT_IO` whose data lies outside the vCPU mapping stops the run with a reason.
    @Test func malformedIOExitIsFatal() {
        let e = VCPUExit.malformedIO(port: 0x510, dataOffset: UInt64.max, length: 4)
        guard case .fatal(let why) = ExitClassifier.classify(e, inSMM: false, csBase: 0, rip: 0) else {
            Issue.record("a malformed I/O exit must be fatal")
            return
        }
        #expect(why.contains("malformed io 0x510"))
    }

    @Test func shutdownIsATripleFaultAndKicksResume() {
        if case .tripleFault = ExitClassifier.classify(.shutdown, inSMM: false, csBase: 0, rip: 0) {
        } else {
            Issue.record("shutdown")
        }
        #expect(ExitClassifier.classify(.interrupted, inSMM: false, csBase: 0, rip: 0) == .resume)
        #expect(ExitClassifier.classify(.irqWindowOpen, inSMM: false, csBase: 0, rip: 0) == .resume)
        #expect(ExitClassifier.classify(.hlt, inSMM: true, csBase: 0, rip: 0) == .halt)
        #expect(ExitClassifier.classify(.rdmsr(index: 0x9E, reason: 1), inSMM: false, csBase: 0, rip: 0) == .msrRead)
        if case .fatal(let why) = ExitClassifier.classify(.unknown(77), inSMM: false, csBase: 0, rip: 0) {
            #expect(why.contains("77"))
        } else {
            Issue.record("unknown")
        }
    }

    @Test func singleStepInSMMIsAnInstructionBoundaryAndFatalOutside() {
        let step = VCPUExit.debug(exception: 1, pc: 0x7E0_8004, dr6: 0x4000, dr7: 0x400)
        #expect(ExitClassifier.classify(step, inSMM: true, csBase: 0x7E0_0000, rip: 0x8004) == .smmStep)
        if case .fatal = ExitClassifier.classify(step, inSMM: false, csBase: 0, rip: 0) {
        } else {
            Issue.record("a debug exit outside SMM is unexpected")
        }
    }

    @Test func recognisesRSMWithPrefixes() {
        #expect(ExitClassifier.isRSM([0x0F, 0xAA, 0, 0]))
        #expect(ExitClassifier.isRSM([0x66, 0x67, 0x0F, 0xAA]))
        #expect(!ExitClassifier.isRSM([0x0F, 0x0B, 0, 0]))  // UD2 is a real #UD in SMM
        #expect(!ExitClassifier.isRSM([0x90, 0x0F, 0xAA]))
    }
}

struct HotAddDefaultsTests {
    @Test func defaultHotAddIncludesTheHighestCPU() {
        #expect(MachineConfig.defaultHotAdd(maxCPUs: 1024, bootCPUs: 2) == [2, 512, 1023])
        #expect(MachineConfig.defaultHotAdd(maxCPUs: 2, bootCPUs: 2) == [])
        #expect(MachineConfig.defaultHotAdd(maxCPUs: 3, bootCPUs: 2) == [2])
    }
}
