// SPDX-License-Identifier: MIT
import GuestFirmware
import Testing

@testable import MiniVMM

/// Every invariant fed observations that satisfy it and observations that violate it, for each strategy's
/// hot-add action: a check that cannot fail proves nothing.
struct InvariantTests {
    static let tsegBase: UInt64 = 0x7E0_0000
    static let tsegBytes: UInt64 = 2 << 20
    static let tile = UInt32(MINIVMM_SMM_TILE)

    static func smbase(_ i: Int) -> UInt32 { UInt32(tsegBase) + UInt32(i) * tile }

    static func entry(_ phase: Phase, _ smbase: UInt32, inSMRAM: Bool) -> SMIEntryRecord {
        SMIEntryRecord(phase: phase, smbase: smbase, entry: smbase &+ 0x8000, inSMRAM: inSMRAM, savedCS: 0, savedRIP: 0)
    }

    /// A CPU relocated at boot at 3000:8000 (ordinary RAM at the time) to its tile.
    static func bootCPU(_ id: Int) -> CPUObservation {
        var o = CPUObservation(apicID: id)
        o.smbaseHistory = [
            SMBASEEvent(cause: .reset, phase: .boot, smbase: 0x30000),
            SMBASEEvent(cause: .rsm, phase: .boot, smbase: smbase(id)),
        ]
        o.smiEntries = [entry(.boot, 0x30000, inSMRAM: false)]
        return o
    }

    /// Strategy A: relocated at boot, ejected, re-added without RESET, next SMI in its TSEG tile.
    static func hotAddedA(_ id: Int) -> CPUObservation {
        var o = bootCPU(id)
        o.hotAdded = true
        o.smbaseAtEject = smbase(id)
        o.smbaseAtHotAdd = smbase(id)
        o.smbaseHistory.append(SMBASEEvent(cause: .hotAdd, phase: .hotAdd, smbase: smbase(id)))
        o.smiEntries.append(entry(.hotAdd, smbase(id), inSMRAM: true))
        return o
    }

    /// Strategy B: never present at boot; RESET and SMBASE loaded from its register at hot-add.
    static func hotAddedB(_ id: Int) -> CPUObservation {
        var o = CPUObservation(apicID: id)
        o.hotAdded = true
        o.smbaseRegisterAtHotAdd = smbase(id)
        o.smbaseAtHotAdd = smbase(id)
        o.smbaseHistory = [
            SMBASEEvent(cause: .reset, phase: .boot, smbase: 0x30000),
            SMBASEEvent(cause: .reset, phase: .hotAdd, smbase: 0x30000),
            SMBASEEvent(cause: .hotAdd, phase: .hotAdd, smbase: smbase(id)),
        ]
        o.smiEntries = [entry(.hotAdd, smbase(id), inSMRAM: true)]
        return o
    }

    /// Strategies C and N: RESET at hot-add, relocated at 0x38000 (`inSMRAM`: C's locked window, N's ordinary RAM),
    /// then an SMI in TSEG.
    static func hotAddedReset(_ id: Int, firstInSMRAM: Bool) -> CPUObservation {
        var o = CPUObservation(apicID: id)
        o.hotAdded = true
        o.smbaseAtHotAdd = 0x30000
        o.smbaseHistory = [
            SMBASEEvent(cause: .reset, phase: .boot, smbase: 0x30000),
            SMBASEEvent(cause: .reset, phase: .hotAdd, smbase: 0x30000),
            SMBASEEvent(cause: .hotAdd, phase: .hotAdd, smbase: 0x30000),
            SMBASEEvent(cause: .rsm, phase: .hotAdd, smbase: smbase(id)),
        ]
        o.smiEntries = [entry(.hotAdd, 0x30000, inSMRAM: firstInSMRAM), entry(.hotAdd, smbase(id), inSMRAM: true)]
        return o
    }

    static func windows(tseg: Bool = true, defaultSMBASE: Bool = false) -> [SMRAMWindow] {
        let m = SMRAMMap(tsegBase: tsegBase, tsegBytes: tsegBytes)
        _ = m.apply(
            SMRAMControl(
                tsegEnabled: tseg, tsegBytes: tseg ? tsegBytes : 0, gSMRAME: true, dOpen: false, locked: tseg,
                defaultSMBASEState: defaultSMBASE ? .locked : .open))
        return m.windows
    }

    static func input(
        _ s: Strategy, _ cpus: [CPUObservation], hotAdd: [Int], presentAtBoot: Int = 2,
        windows w: [SMRAMWindow]? = nil, accesses: SMRAMAccessCounters = SMRAMAccessCounters()
    ) -> Invariants.Input {
        .init(
            spec: s.spec, cpus: cpus, presentAtBoot: presentAtBoot, hotAdd: hotAdd, tsegBase: tsegBase,
            tsegBytes: tsegBytes, windows: w ?? windows(defaultSMBASE: s == .smramAtDefaultSMBASE),
            smramAccesses: accesses, hotAddRefused: false)
    }

    @Test("strategy A: every invariant holds on a good run and fails on each violation")
    func strategyA() {
        let good = Self.input(
            .relocateAllAtBoot, [Self.bootCPU(0), Self.bootCPU(1), Self.hotAddedA(2)], hotAdd: [2], presentAtBoot: 3)
        #expect(Invariants.check(good).allSatisfy { $0.passed && $0.asExpected })

        var shared = good
        shared.cpus[1].smbaseHistory[1].smbase = Self.smbase(0)
        #expect(Invariants.relocation(shared).detail.contains("share SMBASE"))
        var outside = good
        outside.cpus[0].smbaseHistory[1].smbase = 0x30000
        #expect(Invariants.relocation(outside).detail.contains("not inside TSEG"))
        var wrongEntry = good
        wrongEntry.cpus[0].smiEntries[0] = Self.entry(.boot, Self.smbase(0), inSMRAM: true)
        #expect(!Invariants.relocation(wrongEntry).passed)
        var never = good
        never.cpus[1].smiEntries = []
        #expect(Invariants.relocation(never).detail.contains("never took an SMI"))

        // --hotplug-reset: the CPU comes back with 0x30000 and its next SMI enters 0x38000 in ordinary RAM.
        var reset = good
        reset.cpus[2].smbaseAtHotAdd = 0x30000
        reset.cpus[2].smiEntries[1] = Self.entry(.hotAdd, 0x30000, inSMRAM: false)
        let two = Invariants.smbaseAtHotAdd(reset)
        #expect(!two.passed && two.detail.contains("RESET"))
        #expect(!Invariants.hotAddSMIInSMRAM(reset).passed)

        var initChanged = good
        initChanged.cpus[2].smiEntries[1] = Self.entry(.hotAdd, Self.smbase(5), inSMRAM: true)
        #expect(Invariants.smbaseAtHotAdd(initChanged).detail.contains("across INIT"))
        var noSMI = good
        noSMI.cpus[2].smiEntries.removeLast()
        #expect(Invariants.hotAddSMIInSMRAM(noSMI).detail.contains("took no SMI"))
    }

    @Test("strategy B: the SMBASE register must be programmed and loaded, and no SMI enters 0x38000")
    func strategyB() {
        let good = Self.input(
            .hotplugSMBASERegister, [Self.bootCPU(0), Self.bootCPU(1), Self.hotAddedB(5)], hotAdd: [5])
        #expect(Invariants.check(good).allSatisfy { $0.passed && $0.asExpected })
        #expect(Invariants.relocation(good).detail.contains("1 at a preset SMBASE"))

        var unprogrammed = good
        unprogrammed.cpus[2].smbaseRegisterAtHotAdd = nil
        #expect(Invariants.smbaseAtHotAdd(unprogrammed).detail.contains("never programmed"))
        var notLoaded = good
        notLoaded.cpus[2].smbaseAtHotAdd = 0x30000
        #expect(!Invariants.smbaseAtHotAdd(notLoaded).passed)
        var at38000 = good
        at38000.cpus[2].smiEntries = [Self.entry(.hotAdd, 0x30000, inSMRAM: false)]
        #expect(!Invariants.relocation(at38000).passed)
        #expect(!Invariants.hotAddSMIInSMRAM(at38000).passed)
    }

    @Test("strategy C: relocation of the hot-added CPU must happen inside the locked default-SMBASE window")
    func strategyC() {
        let cpus = [Self.bootCPU(0), Self.bootCPU(1), Self.hotAddedReset(6, firstInSMRAM: true)]
        let good = Self.input(.smramAtDefaultSMBASE, cpus, hotAdd: [6])
        #expect(Invariants.check(good).allSatisfy { $0.passed && $0.asExpected })

        var openWindow = good
        openWindow.windows = Self.windows(defaultSMBASE: false)
        #expect(Invariants.smramInvisible(openWindow).detail.contains("default-smbase SMRAM was never closed"))
        var ordinary = good
        ordinary.cpus[2] = Self.hotAddedReset(6, firstInSMRAM: false)
        #expect(!Invariants.hotAddSMIInSMRAM(ordinary).passed)
        var keptOld = good
        keptOld.cpus[2].smbaseAtHotAdd = Self.smbase(6)
        #expect(Invariants.smbaseAtHotAdd(keptOld).detail.contains("not 0x30000"))
    }

    @Test("strategy N: invariant 3 must be seen to fail, and a passing one is flagged")
    func strategyN() {
        let cpus = [Self.bootCPU(0), Self.bootCPU(1), Self.hotAddedReset(3, firstInSMRAM: false)]
        let r = Invariants.check(Self.input(.naive, cpus, hotAdd: [3]))
        #expect(r.map(\.passed) == [true, true, false, true])
        #expect(r.allSatisfy { $0.asExpected })
        #expect(r[2].detail.contains("insecure by design"))

        let safeLooking = [Self.bootCPU(0), Self.bootCPU(1), Self.hotAddedReset(3, firstInSMRAM: true)]
        let r2 = Invariants.check(Self.input(.naive, safeLooking, hotAdd: [3]))
        #expect(r2[2].passed && !r2[2].asExpected)
    }

    @Test("invariant 4 fails when SMRAM stays open or unlocked, or a read could see SMRAM")
    func smramInvisible() {
        let cpus = [Self.bootCPU(0)]
        #expect(Invariants.smramInvisible(Self.input(.relocateAllAtBoot, cpus, hotAdd: [])).passed)
        let open = Self.input(.relocateAllAtBoot, cpus, hotAdd: [], windows: Self.windows(tseg: false))
        #expect(Invariants.smramInvisible(open).detail.contains("never closed"))
        var leaky = SMRAMAccessCounters()
        leaky.readsReturnedAllOnes = false
        let r = Invariants.smramInvisible(Self.input(.relocateAllAtBoot, cpus, hotAdd: [], accesses: leaky))
        #expect(!r.passed && r.detail.contains("could return data"))
    }

    @Test("a refused hot-add fails invariants 2 and 3")
    func refusedHotAdd() {
        var i = Self.input(.relocateAllAtBoot, [Self.bootCPU(0), Self.bootCPU(1)], hotAdd: [1])
        i.hotAddRefused = true
        #expect(!Invariants.smbaseAtHotAdd(i).passed && !Invariants.hotAddSMIInSMRAM(i).passed)
    }
}

/// The strategy table against the firmware contract, and the SMRAM window arithmetic.
struct StrategyTableTests {
    @Test func oneRowPerFirmwareStrategy() {
        #expect(Strategy.allCases.count == Int(MINIVMM_STRATEGY_COUNT))
        #expect(Set(Strategy.allCases.map(\.firmwareID)) == Set((0..<UInt32(MINIVMM_STRATEGY_COUNT))))
        #expect(Strategy.allCases.map(\.spec.letter) == ["A", "B", "C", "N"])
        #expect(Attack.allCases.count == Int(MINIVMM_ATTACK_COUNT) - 1)
    }

    @Test func onlyNaiveIsExpectedToFail() {
        for s in Strategy.allCases {
            let failing = (1...4).filter { s.spec.expectation($0) == .fails }
            #expect(failing == (s == .naive ? [3] : []), "\(s)")
        }
        #expect(Strategy.smramAtDefaultSMBASE.spec.smramWindows == [.tseg, .defaultSMBASE])
        #expect(Strategy.relocateAllAtBoot.spec.smramBytes(maxCPUs: 1024) == 0x10000 + 1024 * 1024)
    }

    @Test func windowsAreWrappingSafe() {
        let m = SMRAMMap(tsegBase: 0x7F0_0000, tsegBytes: 1 << 20)
        _ = m.apply(
            SMRAMControl(
                tsegEnabled: true, tsegBytes: 1 << 20, gSMRAME: true, dOpen: false, locked: true,
                defaultSMBASEState: .locked))
        #expect(m.isClosed(0x7F0_0000, count: 4))
        #expect(m.isClosed(0x7EF_FFFE, count: 4))
        #expect(!m.isClosed(0x7EF_FFFC, count: 4))
        #expect(m.isClosed(0x3_8000, count: 1))
        #expect(!m.isClosed(0x5_0000, count: 8))
        #expect(!m.isClosed(0xFFFF_FFFF_FFFF_FFF8, count: 16))
        #expect(!m.isClosed(0, count: 0))
        #expect(m.window(holdingEntryOf: 0x7F0_0000) == .tseg)
        #expect(m.window(holdingEntryOf: 0x30000) == .defaultSMBASE)
        #expect(m.window(holdingEntryOf: 0xFFFF_FFFF) == nil)
        #expect(m.window(holdingEntryOf: 0x7FF_8000) == nil)  // entry page would run past TSEG's end
    }
}

/// Guest-physical ranges from any guest value: no overflow, no trap.
struct GuestRangeTests {
    @Test func fetchAtTheTopOfTheAddressSpaceIsNil() throws {
        let m = try GuestMemory(ramSize: 2 << 20, firmware: [UInt8](repeating: 0xF4, count: 4096))
        #expect(m.fetch(0xFFFF_FFFF_FFFF_FFFC, count: 6) == nil)
        #expect(m.fetch(0xFFFF_FFFF_FFFF_FFFF, count: 1) == nil)
        #expect(m.fetch(0xFFFF_FFF0, count: 6) == [0xF4, 0xF4, 0xF4, 0xF4, 0xF4, 0xF4])
        #expect(m.fetch(0xFFFF_FFFE, count: 6) == nil, "runs past 4 GiB")
        #expect(!m.isRAM(0x1000, count: -1))
        #expect(!m.isRAM(0xFFFF_FFFF_FFFF_F000, count: 0x2000))
        #expect(m.zero(0x1000, count: 16))
        #expect(!m.zero(0x1000, count: Int(UInt32.max)))
    }
}
