// SPDX-License-Identifier: MIT
import Foundation
import Testing

@testable import MiniVMM

/// The kvm-vs-emulated report comparison on synthetic reports: identical reports give no difference, one
/// flipped field gives exactly that field, excluded fields never count.
struct ReportComparisonTests {
    static func report(backend: String = "emulated") -> RunReport {
        let entry = { (smbase: UInt32, phase: Phase) in
            SMIEntryRecord(
                phase: phase, smbase: smbase, entry: smbase + 0x8000, inSMRAM: smbase != 0x30000, savedCS: 0x800,
                savedRIP: 0x2)
        }
        let cpus = (0..<3).map { i in
            CPUReport(
                apicID: i, state: .halted, present: true, smbase: 0x7f0_0000 + UInt32(i) * 0x400, hotAdded: i == 2,
                smbaseHistory: [
                    SMBASEEvent(cause: .reset, phase: .boot, smbase: 0x30000),
                    SMBASEEvent(cause: .rsm, phase: .boot, smbase: 0x7f0_0000 + UInt32(i) * 0x400),
                ],
                smiEntries: [entry(0x30000, .boot), entry(0x7f0_0000 + UInt32(i) * 0x400, .hotAdd)])
        }
        return RunReport(
            strategy: .relocateAllAtBoot, backend: backend, saveStateFormat: .amd64, maxCPUs: 3, bootCPUs: 2,
            hotAdd: [2], hotplugReset: false, outcome: .completed, outcomeDetail: "firmware finished",
            guestExitStatus: 1, tsegBase: 0x7f0_0000, tsegBytes: 1 << 20, tsegBytesPerPossibleCPU: 349525.3,
            smramClosed: true, smramLocked: true,
            smramWindows: [SMRAMWindowReport(kind: .tseg, base: 0x7f0_0000, size: 1 << 20, closed: true, locked: true)],
            smramBytesPerPossibleCPU: 1024, smramBytesNeeded: 0x10C00, hotAddRefusals: [], attack: nil,
            invariants: [InvariantResult(id: 1, name: "relocation", passed: true, detail: "ok")], cpus: cpus,
            counters: RunCounters(
                exits: 100, extraIoctls: 9, smis: 6, rsms: 6, unknownPortAccesses: 0, unknownMSRAccesses: 0,
                unknownMMIOAccesses: 0, romWrites: 0, smramAccesses: SMRAMAccessCounters(),
                deniedSMBASERegisterAccesses: 0),
            timings: RunTimings(total: 1, vcpuCreation: 0.1), firmwareReports: ["BOOT_START 0"], cpuDumps: nil)
    }

    @Test("identical reports have no differing field")
    func identical() throws {
        #expect(try ReportComparison.differences(Self.report(), Self.report()).isEmpty)
    }

    @Test("backend name, timings, exits, ioctls and dumps are excluded")
    func excluded() throws {
        var b = Self.report(backend: "kvm")
        b.timings.total = 99
        b.counters.exits = 7
        b.counters.extraIoctls = 12345
        b.cpuDumps = []
        #expect(try ReportComparison.differences(Self.report(), b).isEmpty)
    }

    @Test("a stock run's findings are compared field by field, without the times windows closed and locked at")
    func findings() throws {
        func stock(closedAt: Double, relocatedTo: UInt32) -> RunReport {
            var r = Self.report()
            r.findings = FirmwareFindings(
                cpus: [
                    .init(
                        apicID: 0, smis: 1, relocated: true, smbase: relocatedTo, region: .aSegment,
                        firstEntry: 0x38000,
                        firstEntryInSMRAM: false)
                ],
                windows: [.init(kind: .aSegment, closed: true, locked: false, firstClosedAt: closedAt, lockedAt: nil)],
                smramLocked: false, nonSMMReads: 0, nonSMMWrites: 0, dmaBlocked: 0,
                lines: ["A-segment closed at \(closedAt) s"])
            return r
        }
        #expect(
            try ReportComparison.differences(
                stock(closedAt: 0.5, relocatedTo: 0xA0000), stock(closedAt: 1.25, relocatedTo: 0xA0000)
            ).isEmpty)
        let d = try ReportComparison.differences(
            stock(closedAt: 0.5, relocatedTo: 0xA0000), stock(closedAt: 0.5, relocatedTo: 0xB0000))
        #expect(d.map(\.path) == ["findings.cpus[0].smbase"])
    }

    @Test("an injected difference in one field is caught, named by its path")
    func injected() throws {
        var b = Self.report(backend: "kvm")
        b.cpus[2].smiEntries[1].savedRIP = 0x3
        let d = try ReportComparison.differences(Self.report(), b)
        #expect(d == [FieldDifference(path: "cpus[2].smiEntries[1].savedRIP", left: "2", right: "3")])
    }

    @Test("extra entries, changed counters and enum values all count")
    func structural() throws {
        var b = Self.report()
        b.cpus[1].smbaseHistory.append(SMBASEEvent(cause: .hotAdd, phase: .hotAdd, smbase: 1))
        b.counters.smis = 5
        b.cpus[0].state = .running
        b.guestExitStatus = nil
        let paths = try ReportComparison.differences(Self.report(), b).map(\.path)
        #expect(
            paths == [
                "counters.smis", "cpus[0].state", "cpus[1].smbaseHistory.count", "cpus[1].smbaseHistory[2]",
                "guestExitStatus",
            ])
    }

    @Test("a report file round-trips through load, a non-report is a one-line error")
    func loading() throws {
        let dir = FileManager.default.temporaryDirectory
        let good = dir.appendingPathComponent("minivmm-cmp-\(getpid()).json")
        let bad = dir.appendingPathComponent("minivmm-cmp-bad-\(getpid()).json")
        defer {
            try? FileManager.default.removeItem(at: good)
            try? FileManager.default.removeItem(at: bad)
        }
        try Self.report().jsonData().write(to: good)
        try Data("{\"x\": 1}".utf8).write(to: bad)
        #expect(try ReportComparison.differences(ReportComparison.load(path: good.path), Self.report()).isEmpty)
        #expect(throws: MachineError.self) { try ReportComparison.load(path: bad.path) }
        #expect(throws: MachineError.self) { try ReportComparison.load(path: "/nonexistent/r.json") }
    }
}

/// Fields one backend could not observe (issue 9, gap 4): skipped and listed, never a weaker comparison of what
/// both sides observed.
struct UnobservedFieldComparisonTests {
    @Test("a saved CS:RIP absent on one side is skipped and listed as unobserved, not counted as a difference")
    func skippedWhenOneSideDidNotObserve() throws {
        var kvm = ReportComparisonTests.report(backend: "kvm")
        kvm.cpus[1].smiEntries[0].savedCS = nil
        kvm.cpus[1].smiEntries[0].savedRIP = nil
        let o = try ReportComparison.compare(kvm, ReportComparisonTests.report())
        #expect(o.differences.isEmpty)
        #expect(
            o.unobserved == [
                FieldDifference(path: "cpus[1].smiEntries[0].savedCS", left: "absent", right: "2048"),
                FieldDifference(path: "cpus[1].smiEntries[0].savedRIP", left: "absent", right: "2"),
            ])
        // The JSON form really leaves the fields out.
        let json = String(decoding: try kvm.jsonData(), as: UTF8.self)
        #expect(json.components(separatedBy: "\"savedRIP\"").count - 1 == 5)
    }

    @Test("a saved RIP both sides observed is still compared")
    func observedOnBothSidesStillCompared() throws {
        var kvm = ReportComparisonTests.report(backend: "kvm")
        kvm.cpus[1].smiEntries[0].savedCS = nil
        kvm.cpus[2].smiEntries[1].savedRIP = 0x3
        let o = try ReportComparison.compare(kvm, ReportComparisonTests.report())
        #expect(o.differences == [FieldDifference(path: "cpus[2].smiEntries[1].savedRIP", left: "3", right: "2")])
        #expect(o.unobserved.map(\.path) == ["cpus[1].smiEntries[0].savedCS"])
    }

    @Test("only the fields declared observable at entry may be absent: a missing SMI record is a difference")
    func otherAbsentFieldsDiffer() throws {
        #expect(
            ReportComparison.observableOnlyAtEntry == ["cpus[].smiEntries[].savedCS", "cpus[].smiEntries[].savedRIP"])
        var kvm = ReportComparisonTests.report(backend: "kvm")
        kvm.cpus[0].smiEntries.removeLast()
        let o = try ReportComparison.compare(kvm, ReportComparisonTests.report())
        #expect(o.differences.map(\.path).contains("cpus[0].smiEntries.count"))
        #expect(o.differences.contains { $0.path == "cpus[0].smiEntries[1]" && $0.left == "absent" })
        #expect(o.unobserved.isEmpty)
    }

    @Test("the summary names unobserved entries")
    func summaryNamesThem() {
        var kvm = ReportComparisonTests.report(backend: "kvm")
        #expect(!kvm.summary.contains("unobserved"))
        kvm.cpus[2].smiEntries[0].savedRIP = nil
        #expect(kvm.summary.contains("unobserved: saved CS:RIP of 1 SMIs"))
    }
}
