// SPDX-License-Identifier: MIT
import Foundation
import GuestFirmware

/// One invariant of DESIGN.md §5, judged from the VMM's observations.
public struct InvariantResult: Codable, Sendable, Equatable {
    public var id: Int
    public var name: String
    /// What the VMM observed: the invariant held.
    public var passed: Bool
    public var detail: String
    /// What the strategy's table says it must show (`fails` only for the insecure-by-design baseline).
    public var expected: Expectation = .holds

    public init(id: Int, name: String, passed: Bool, detail: String, expected: Expectation = .holds) {
        self.id = id
        self.name = name
        self.passed = passed
        self.detail = detail
        self.expected = expected
    }

    /// Whether the observation matches the strategy's expectation.
    public var asExpected: Bool {
        switch expected {
        case .holds: passed
        case .fails: !passed
        case .either: true
        }
    }
}

/// The outcome of `--attack`: the VMM's verdict from its SMRAM canary, with the evidence.
public struct AttackReport: Codable, Sendable, Equatable {
    public var attack: Attack
    public var verdict: AttackVerdict
    public var evidence: String
}

/// Per-CPU part of the report.
public struct CPUReport: Codable, Sendable {
    public var apicID: Int
    public var state: CPURunState
    public var present: Bool
    public var smbase: UInt32
    public var hotAdded: Bool
    public var smbaseHistory: [SMBASEEvent]
    public var smiEntries: [SMIEntryRecord]
}

/// Timings in seconds (excluded when two reports are compared).
public struct RunTimings: Codable, Sendable {
    public var total: Double
    public var vcpuCreation: Double
    /// Machine start to the firmware's BOOT_DONE (SMRAM locked, OS loop starting).
    public var boot: Double?
    public var apBringUp: Double?
    public var relocation: Double?
    public var hotRemove: Double?
    public var hotAdd: Double?
    /// The whole run cut into consecutive phases, from the runner's start (opening `/dev/kvm`) to the end of the
    /// VM's teardown (the last vCPU fd closed, which is when KVM's `kvm_destroy_vm` runs, and guest memory
    /// unmapped): the phases add up to `wall` by construction, so no time is left unnamed.
    public var phases: [PhaseTiming]?
    /// What a user waits for, from the runner's start to the end of teardown (`total` is the machine's run alone).
    public var wall: Double?

    /// The phase list from the machine's marks (seconds since the machine's start, `end` = `total`), with the
    /// runner's start-up before the machine and the teardown after it. A mark missing from a run merges its phase
    /// into the next one; marks out of order (a firmware's reports are not trusted) are ignored.
    public static func phases(
        startUp: Double, marks: [String: Double], vcpusCreated: Double?, end: Double, teardown: Double
    ) -> [PhaseTiming] {
        var out = [PhaseTiming(name: "start-up", seconds: max(0, startUp))]
        var last = 0.0
        let cuts: [(String, Double?)] = [
            ("machine set-up and vCPU creation", vcpusCreated), ("firmware reset to boot start", marks["boot-start"]),
            ("AP bring-up", marks["aps-online"]), ("relocation", marks["smram-locked"]),
            ("boot finish", marks["boot-done"]), ("hot-remove", marks["hot-remove-done"]),
            ("hot-add", marks["hot-add-done"]),
        ]
        var pending: [String] = []
        for (name, at) in cuts {
            pending.append(name)
            guard let at, at >= last, at <= end else { continue }
            out.append(PhaseTiming(name: pending.joined(separator: " + "), seconds: at - last))
            last = at
            pending = []
        }
        pending.append("finish")
        out.append(PhaseTiming(name: pending.joined(separator: " + "), seconds: max(0, end - last)))
        out.append(PhaseTiming(name: "teardown", seconds: max(0, teardown)))
        return out
    }
}

/// What the run cost the host in memory (excluded when two reports are compared: host-dependent).
public struct HostUsage: Codable, Sendable, Equatable {
    /// The process's resident set at the runner's start and its peak by the end of the run (`getrusage`
    /// `ru_maxrss`), KiB. KVM's own per-vCPU allocations are kernel memory and not in either.
    public var startResidentKiB: Int
    public var peakResidentKiB: Int
    /// KVM vCPUs created: one per CPU that existed, plus the backend's extra ones (SMRAM view).
    public var vcpus: Int
    /// KVM VMs they were spread over (both views; the emulated backend needs more than two when the CPUs outnumber
    /// what one VM may hold). Absent from reports written before it existed.
    public var kvmVMs: Int?
    /// (peak − start) / possible CPUs and / vCPUs, KiB.
    public var perPossibleCPUKiB: Double
    public var perVCPUKiB: Double

    public init(startResidentKiB: Int, peakResidentKiB: Int, vcpus: Int, maxCPUs: Int, kvmVMs: Int? = nil) {
        self.startResidentKiB = startResidentKiB
        self.peakResidentKiB = peakResidentKiB
        self.vcpus = vcpus
        self.kvmVMs = kvmVMs
        let grown = Double(max(0, peakResidentKiB - startResidentKiB))
        perPossibleCPUKiB = grown / Double(max(1, maxCPUs))
        perVCPUKiB = grown / Double(max(1, vcpus))
    }

    /// The resident set now, KiB (`/proc/self/statm`), or 0 when it cannot be read.
    public static func residentKiBNow() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = s.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * (Int(sysconf(Int32(_SC_PAGESIZE))) / 1024)
    }

    /// The peak resident set so far, KiB (`ru_maxrss`).
    public static func peakResidentKiB() -> Int {
        var u = rusage()
        guard getrusage(RUSAGE_SELF.rawValue, &u) == 0 else { return 0 }
        return Int(u.ru_maxrss)
    }
}

/// One phase of a run and how long it took.
public struct PhaseTiming: Codable, Sendable, Equatable {
    public var name: String
    public var seconds: Double
}

/// Counters for the run.
public struct RunCounters: Codable, Sendable {
    public var exits: Int
    public var extraIoctls: Int
    public var smis: Int
    public var rsms: Int
    public var unknownPortAccesses: Int
    public var unknownMSRAccesses: Int
    public var unknownMMIOAccesses: Int
    public var romWrites: Int
    public var smramAccesses: SMRAMAccessCounters
    /// Non-SMM accesses to the hotplug block's SMBASE registers (strategy B), ignored.
    public var deniedSMBASERegisterAccesses: Int
    /// Writes to locked SMRAM registers (MCH 0x9C after LCK, 0x9D/0x9E after D_LCK), ignored.
    public var lockedSMRAMRegisterWrites: Int = 0
    /// Records left out of the report once their list reached its cap (SMI entries and SMBASE events per CPU,
    /// hot-add refusals): the report stays bounded whatever the firmware does.
    public var droppedRecords: Int = 0
}

/// A CPU's state when a run ended abnormally.
public struct CPUDump: Codable, Sendable {
    public var cpu: Int
    public var state: CPURunState
    public var inSMM: Bool
    public var cs: String
    public var rip: String
    public var rax: String
    public var rsp: String
    public var lastExits: [String]
}

/// One SMRAM window at the end of a run.
public struct SMRAMWindowReport: Codable, Sendable, Equatable {
    public var kind: SMRAMWindowKind
    public var base: UInt64
    public var size: UInt64
    public var closed: Bool
    public var locked: Bool
}

/// The report of one run (`--json FILE` writes it; the summary prints it for people).
public struct RunReport: Codable, Sendable {
    public var strategy: Strategy
    public var backend: String
    public var saveStateFormat: SaveStateFormat
    public var maxCPUs: Int
    public var bootCPUs: Int
    public var hotAdd: [Int]
    public var hotplugReset: Bool
    public var outcome: RunOutcome
    public var outcomeDetail: String
    /// `(v << 1) | 1` for the value v the guest wrote to isa-debug-exit, not truncated (a 32-bit v of 0x80000000
    /// is status 0x100000001, not the success status 1 an 8-bit process exit code would show).
    public var guestExitStatus: Int64?
    public var tsegBase: UInt64
    public var tsegBytes: UInt64
    public var tsegBytesPerPossibleCPU: Double
    public var smramClosed: Bool
    public var smramLocked: Bool
    /// Every SMRAM window as the run ended (TSEG; the default-SMBASE window of MCH 0x9C).
    public var smramWindows: [SMRAMWindowReport]
    /// SMRAM the strategy's firmware reserves per possible CPU, and what it needs at this run's max CPUs.
    public var smramBytesPerPossibleCPU: Int
    public var smramBytesNeeded: Int
    public var hotAddRefusals: [String]
    /// `--attack`: the verdict and its evidence.
    public var attack: AttackReport?
    public var invariants: [InvariantResult]
    public var cpus: [CPUReport]
    public var counters: RunCounters
    public var timings: RunTimings
    /// Host memory; nil in reports written before it existed.
    public var host: HostUsage?
    public var firmwareReports: [String]
    public var cpuDumps: [CPUDump]?
    /// `--firmware builtin:conformance`: its console and verdicts (the run has no invariants then: the scenario
    /// they judge never ran).
    public var conformance: ConformanceResult?
    /// `--firmware FILE --stock`: what the VMM observed the firmware do with SMBASE and SMRAM (no invariants are judged).
    public var findings: FirmwareFindings?
    /// The firmware file of a `--firmware FILE --stock` run.
    public var firmware: String?
    /// `--pflash`: the flash units as the run ended.
    public var pflash: [PFlashUnitReport]? = nil

    /// True when the run finished and every invariant shows what the strategy table expects of it (the naive
    /// baseline must fail invariant 3): what bench and the matrix count as a good run.
    public var asExpected: Bool { outcome == .completed && invariants.allSatisfy { $0.asExpected } }

    /// True when the run finished, every invariant held and no attack compromised SMRAM.
    public var passed: Bool {
        outcome == .completed && invariants.allSatisfy(\.passed) && attack?.verdict != .compromised
            && (conformance.map { $0.failedCount == 0 && $0.summary != nil } ?? true)
    }

    public func jsonData() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(self)
    }

    /// The human summary.
    public var summary: String {
        if let c = conformance { return conformanceSummary(c) }
        if let f = findings { return findingsSummary(f) }
        func hex<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
        var s = """
            minivmm: strategy \(strategy.spec.letter) \(strategy.rawValue), backend \(backend), \(saveStateFormat.rawValue) save-state map
              CPUs: \(maxCPUs) possible, \(bootCPUs) at boot, hot-add \(hotAdd.isEmpty ? "none" : hotAdd.map(String.init).joined(separator: ","))\(hotplugReset ? " (with RESET)" : " (INIT only)")
              TSEG: \(hex(tsegBase)) + \(tsegBytes >> 10) KiB (\(String(format: "%.0f", tsegBytesPerPossibleCPU)) bytes per possible CPU), \(smramClosed ? "closed" : "open"), \(smramLocked ? "locked" : "unlocked"); default-SMBASE window \(smramWindows.first { $0.kind == .defaultSMBASE }.map { $0.locked ? "locked as SMRAM" : "ordinary RAM" } ?? "absent")
              SMRAM per possible CPU: \(smramBytesPerPossibleCPU) bytes; this strategy needs \(smramBytesNeeded >> 10) KiB at \(maxCPUs) CPUs
              outcome: \(outcome.rawValue): \(outcomeDetail)

            """
        let relocated = cpus.filter { $0.smiEntries.first?.entry == 0x38000 }.count
        s += "  SMIs: \(counters.smis), RSMs: \(counters.rsms), CPUs first entering at 0x38000: \(relocated)\n"
        let unseen = cpus.reduce(0) { $0 + $1.smiEntries.filter { !$0.entryObserved }.count }
        if unseen > 0 {
            s +=
                "  unobserved: saved CS:RIP of \(unseen) SMIs whose entry the backend did not see (absent in the report)\n"
        }
        s += "  exits: \(counters.exits), ioctls beyond KVM_RUN: \(counters.extraIoctls)\n"
        s +=
            "  non-SMM accesses to closed SMRAM: \(counters.smramAccesses.reads) reads (all-ones), \(counters.smramAccesses.writes) writes (dropped)\n"
        if counters.deniedSMBASERegisterAccesses > 0 || counters.lockedSMRAMRegisterWrites > 0
            || counters.smramAccesses.dmaBlocked > 0
        {
            s +=
                "  ignored: \(counters.deniedSMBASERegisterAccesses) non-SMM SMBASE-register accesses, \(counters.lockedSMRAMRegisterWrites) writes to locked SMRAM registers, \(counters.smramAccesses.dmaBlocked) DMA accesses to SMRAM\n"
        }
        for c in cpus where c.hotAdded {
            let hist = c.smbaseHistory.map { "\($0.cause.rawValue):\(hex($0.smbase))" }.joined(separator: " → ")
            let last =
                c.smiEntries.last.map { "last SMI at \(hex($0.entry))\($0.inSMRAM ? " (SMRAM)" : " (ordinary RAM!)")" }
                ?? "no SMI"
            s += "  CPU \(c.apicID) (hot-added): \(hist); \(last)\n"
        }
        for r in hotAddRefusals { s += "  hot-add refused: \(r)\n" }
        s += String(
            format: "  time: %.3f s total, %.3f s vCPU creation%@\n", timings.total, timings.vcpuCreation,
            timings.relocation.map { String(format: ", %.3f s relocation", $0) } ?? "")
        if let phases = timings.phases, let wall = timings.wall {
            s += String(format: "  wall: %.3f s = ", wall)
            s += phases.map { "\($0.name) " + String(format: "%.3f", $0.seconds) }.joined(separator: ", ") + "\n"
        }
        if let h = host {
            s += String(
                format:
                    "  host memory: peak resident %.1f MiB (%.1f MiB at start), %d vCPUs%@: %.1f KiB per possible CPU, %.1f KiB per vCPU\n",
                Double(h.peakResidentKiB) / 1024, Double(h.startResidentKiB) / 1024, h.vcpus,
                h.kvmVMs.map { " in \($0) KVM VMs" } ?? "", h.perPossibleCPUKiB, h.perVCPUKiB)
        }
        for inv in invariants {
            s += "  [\(inv.passed ? "PASS" : "FAIL")] invariant \(inv.id) \(inv.name): \(inv.detail)\n"
        }
        if let a = attack {
            s += "  attack \(a.attack.rawValue): \(a.verdict.rawValue): \(a.evidence)\n"
        }
        return s + dumpsAndResult
    }
}

extension RunReport {
    /// The summary's last lines, shared by both kinds of run: the CPU dumps of an unfinished run, then RESULT.
    var dumpsAndResult: String {
        var s = ""
        for d in cpuDumps ?? [] {
            s +=
                "  CPU \(d.cpu) \(d.state.rawValue)\(d.inSMM ? " in SMM" : "") at \(d.cs):\(d.rip) rax=\(d.rax) rsp=\(d.rsp); last exits: \(d.lastExits.suffix(4).joined(separator: " | "))\n"
        }
        return s + (passed ? "RESULT: PASS\n" : "RESULT: FAIL\n")
    }

    /// A conformance run that ran to its end and reported failed checks through isa-debug-exit (exit status 1 of
    /// `minivmm run`, as a failed invariant; a run that never reached its summary is unfinished, status 2).
    public var conformanceChecksFailed: Bool {
        guard let c = conformance, c.summary != nil else { return false }
        return guestExitStatus == (Int64(MINIVMM_CONFORMANCE_EXIT_FAIL) << 1) | 1
    }

    /// The summary of a `--firmware FILE --stock` run: what the firmware did, as findings.
    func findingsSummary(_ f: FirmwareFindings) -> String {
        var s = """
            minivmm: firmware \(firmware ?? "file"), backend \(backend), \(saveStateFormat.rawValue) save-state map, \(bootCPUs) CPUs at boot of \(maxCPUs)
              outcome: \(outcome.rawValue): \(outcomeDetail)
              SMIs: \(counters.smis), RSMs: \(counters.rsms), exits: \(counters.exits), unknown port accesses: \(counters.unknownPortAccesses), unknown MMIO accesses: \(counters.unknownMMIOAccesses)

            """
        s += String(format: "  time: %.3f s total\n", timings.total)
        for (i, line) in f.lines.enumerated() { s += "  \(i == 0 ? "findings" : "finding"): \(line)\n" }
        for u in pflash ?? [] { s += "  pflash: \(u.line)\n" }
        return s + dumpsAndResult
    }

    /// The summary of a conformance run: the firmware's verdicts, not the hotplug scenario's.
    func conformanceSummary(_ c: ConformanceResult) -> String {
        var s = """
            minivmm: conformance firmware, backend \(backend), \(saveStateFormat.rawValue) save-state map, \(bootCPUs) CPUs
              outcome: \(outcome.rawValue): \(outcomeDetail)
              checks: \(c.passedCount) passed, \(c.failedCount) failed\(c.summary.map { " (firmware: \($0))" } ?? " (no SUMMARY line)")

            """
        for check in c.checks where !check.passed { s += "  \(check.line)\n" }
        return s + dumpsAndResult
    }
}
