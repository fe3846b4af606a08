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

/// DESIGN.md §5 invariants from synthetic observations: each can fail.
struct InvariantsTests {
    let tsegBase: UInt64 = 0x7E0_0000
    let tsegBytes: UInt64 = 2 << 20

    func relocated(_ id: Int, to smbase: UInt32, firstEntry: UInt32 = 0x38000) -> CPUObservation {
        var o = CPUObservation(apicID: id)
        o.smbaseHistory = [
            SMBASEEvent(cause: .reset, phase: .boot, smbase: 0x30000),
            SMBASEEvent(cause: .rsm, phase: .boot, smbase: smbase),
        ]
        o.smiEntries = [
            SMIEntryRecord(
                phase: .boot, smbase: 0x30000, entry: firstEntry, inSMRAM: false, savedCS: 0x800, savedRIP: 2)
        ]
        return o
    }

    func input(_ cpus: [CPUObservation], hotAdd: [Int] = [], closed: Bool = true) -> Invariants.Input {
        .init(
            strategy: .relocateAllAtBoot, cpus: cpus, hotAdd: hotAdd, hotplugReset: false, tsegBase: tsegBase,
            tsegBytes: tsegBytes, smramClosed: closed, smramLocked: closed, smramAccesses: SMRAMAccessCounters(),
            hotAddRefused: false)
    }

    @Test func relocationPassesAndFails() {
        let good = [relocated(0, to: 0x7E0_0000), relocated(1, to: 0x7E0_0400)]
        #expect(Invariants.relocation(input(good)).passed)
        let shared = [relocated(0, to: 0x7E0_0400), relocated(1, to: 0x7E0_0400)]
        #expect(!Invariants.relocation(input(shared)).passed)
        let outside = [relocated(0, to: 0x30000)]
        #expect(Invariants.relocation(input(outside)).detail.contains("not inside TSEG"))
        let wrongEntry = [relocated(0, to: 0x7E0_0000, firstEntry: 0x7E0_8000)]
        #expect(!Invariants.relocation(input(wrongEntry)).passed)
    }

    @Test func hotAddInvariantsSeeResetAndOrdinaryRAM() {
        var c = relocated(1, to: 0x7E0_0400)
        c.hotAdded = true
        c.smbaseAtEject = 0x7E0_0400
        c.smbaseAtHotAdd = 0x7E0_0400
        c.smiEntries.append(
            SMIEntryRecord(
                phase: .hotAdd, smbase: 0x7E0_0400, entry: 0x7E0_8400, inSMRAM: true, savedCS: 0, savedRIP: 0))
        let ok = input([relocated(0, to: 0x7E0_0000), c], hotAdd: [1])
        #expect(Invariants.smbaseSurvivesHotAdd(ok).passed)
        #expect(Invariants.hotAddSMIInSMRAM(ok).passed)

        var reset = c
        reset.smbaseAtHotAdd = 0x30000
        reset.smiEntries[1] = SMIEntryRecord(
            phase: .hotAdd, smbase: 0x30000, entry: 0x38000, inSMRAM: false, savedCS: 0, savedRIP: 0)
        let bad = input([relocated(0, to: 0x7E0_0000), reset], hotAdd: [1])
        let two = Invariants.smbaseSurvivesHotAdd(bad)
        #expect(!two.passed && two.detail.contains("RESET"))
        #expect(!Invariants.hotAddSMIInSMRAM(bad).passed)
    }

    @Test func smramMustBeClosedAndLocked() {
        #expect(Invariants.smramInvisible(input([], closed: true)).passed)
        #expect(!Invariants.smramInvisible(input([], closed: false)).passed)
    }

    @Test func defaultHotAddIncludesTheHighestCPU() {
        #expect(MachineConfig.defaultHotAdd(maxCPUs: 1024, bootCPUs: 2) == [2, 512, 1023])
        #expect(MachineConfig.defaultHotAdd(maxCPUs: 2, bootCPUs: 2) == [])
        #expect(MachineConfig.defaultHotAdd(maxCPUs: 3, bootCPUs: 2) == [2])
    }
}
