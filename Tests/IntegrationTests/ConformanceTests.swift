// SPDX-License-Identifier: MIT
import Firmware
import Foundation
import KVMBridge
import Testing

@testable import MiniVMM

/// The conformance firmware (`--firmware builtin:conformance`) on the emulated backend, against what it printed on
/// KVM's own SMM (the oracle, recorded in the nested-KVM lane by scripts/nested/record-conformance.sh into
/// Tests/conformance/expected-*.txt). Every line must match, except the checks listed in
/// Tests/conformance/known-differences-emulated.txt (gaps of the emulated model being fixed, each with its reason);
/// a listed check that matches fails too, so the list shrinks as the fixes land.
@Suite(.serialized, .needsKVM)
struct ConformanceTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("conformance")

    /// The recorded configurations: the expected file's suffix, CPUs, long mode (64-bit map) or not (32-bit map),
    /// the built-in image (`noprobe-*`: builtin:conformance-noprobe, the handler without the SMM entry probe).
    static let configurations: [(name: String, cpus: Int, longMode: Bool)] = [
        ("cpus1", 1, true), ("cpus2", 2, true), ("cpus1-legacy32", 1, false), ("cpus2-legacy32", 2, false),
        ("noprobe-cpus2", 2, true),
    ]

    static func image(_ name: String) -> (bytes: [UInt8], name: String) {
        name.hasPrefix("noprobe-")
            ? (FirmwareImage.conformanceNoProbe, "builtin:conformance-noprobe")
            : (FirmwareImage.conformance, "builtin:conformance")
    }

    static func run(
        cpus: Int, longMode: Bool,
        image: (bytes: [UInt8], name: String) = (FirmwareImage.conformance, "builtin:conformance")
    ) throws -> RunReport {
        var c = MachineConfig()
        c.maxCPUs = cpus
        c.bootCPUs = cpus
        c.hotAdd = []
        c.longMode = longMode
        c.firmware = image.bytes
        c.firmwareName = image.name
        c.firmwareKind = .conformance
        c.backend = .emulated
        c.console = false
        c.quiet = true
        c.timeoutSeconds = 120
        let kvm = try KVM()
        try c.validate(kvmMaxVCPUs: kvm.maxVCPUs())
        return try MiniVMMRunner.run(c, kvm: kvm)
    }

    static func lines(_ file: String) throws -> [String] {
        let text = try String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8)
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        return lines
    }

    @Test(
        "the emulated backend prints what KVM's SMM printed, but for the listed known differences",
        arguments: configurations.map(\.name))
    func matchesKVM(name: String) throws {
        let config = try #require(Self.configurations.first { $0.name == name })
        let expected = try Self.lines("expected-\(name).txt")
        let known = try ConsoleComparison.knownDifferences(Self.lines("known-differences-emulated.txt"))
        #expect(
            expected.contains { $0.hasPrefix("SUMMARY: ") } && !expected.contains { $0.hasPrefix("FAIL ") },
            "the recording must be a passing KVM run")
        let report = try Self.run(cpus: config.cpus, longMode: config.longMode, image: Self.image(name))
        let result = try #require(report.conformance, "a conformance run records its console")
        #expect(report.invariants.isEmpty, "the hotplug invariants do not judge a conformance run")
        let problems = ConsoleComparison.problems(expected: expected, got: result.console, known: known)
        #expect(problems.isEmpty, "\(name): \(problems.count) problems:\n\(problems.joined(separator: "\n"))")
        // The run's outcome follows the firmware's exit status: PASS only when every check passed.
        #expect(report.passed == (result.failedCount == 0))
        #expect((report.outcome == .completed) == (result.failedCount == 0), "\(report.outcomeDetail)")
    }

    /// builtin:conformance-badrsm ends with an RSM whose saved CR0 has PG without PE: `kvm_set_cr0` rejects it in
    /// `rsm_enter_protected_mode` and KVM makes the failed RSM a triple fault (smm.c `emulator_leave_smm`, em_rsm;
    /// the nested lane's `badrsm_pair` checks that KVM's own SMM shuts down there too).
    @Test("an RSM with an invalid saved CR0 ends the run as a triple fault at that RSM", arguments: [true, false])
    func invalidRSMShutsDown(longMode: Bool) throws {
        let report = try Self.run(
            cpus: 1, longMode: longMode, image: (FirmwareImage.conformanceBadRSM, "builtin:conformance-badrsm"))
        #expect(report.outcome == .tripleFault, "\(report.outcomeDetail)")
        #expect(report.outcomeDetail.contains("RSM"), "\(report.outcomeDetail)")
        #expect(report.outcomeDetail.contains("PG set without PE"), "\(report.outcomeDetail)")
        let result = try #require(report.conformance)
        #expect(result.summary == nil, "the run ends at the RSM, before any SUMMARY")
        #expect(result.checks.isEmpty)
        #expect(result.console.last?.hasPrefix("rsm.bad-cr0: ") == true, "\(result.console)")
        #expect(!report.passed)
    }

    @Test("every known difference names a check that exists in a recording, with a reason")
    func knownDifferencesAreRecordedChecks() throws {
        let known = try ConsoleComparison.knownDifferences(Self.lines("known-differences-emulated.txt"))
        var names = Set<String>()
        for c in Self.configurations {
            for line in try Self.lines("expected-\(c.name).txt") {
                if let check = ConformanceResult.parse(line) { names.insert(check.name) }
            }
        }
        for (check, reason) in known {
            #expect(names.contains(check), "\(check) is in no recording")
            #expect(!reason.isEmpty, "\(check) has no reason")
        }
    }
}

/// `minivmm run --firmware builtin:...` as a user runs it.
@Suite(.needsKVM)
struct ConformanceCLITests {
    @Test("a conformance run writes its console and verdicts to the report; the exit status follows them")
    func conformanceRunReport() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent(
            "conformance-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: path) }
        let r = try MiniVMMBinary.run([
            "run", "--firmware", "builtin:conformance", "--max-cpus", "1", "--timeout", "120", "--quiet", "--json",
            path.path,
        ])
        let report = try JSONDecoder().decode(RunReport.self, from: Data(contentsOf: path))
        let c = try #require(report.conformance)
        #expect(c.summary == "SUMMARY: \(c.passedCount) passed, \(c.failedCount) failed")
        #expect(c.console.first == "minivmm conformance firmware")
        #expect(report.invariants.isEmpty)
        #expect(r.status == (c.failedCount == 0 ? 0 : 1), "stdout: \(r.stdout) stderr: \(r.stderr)")
        #expect(report.guestExitStatus == (c.failedCount == 0 ? 1 : 3))
        // JUnit: the outcome and one case per check, failing exactly where the firmware printed FAIL.
        let xml = JUnitReport.xml(report)
        #expect(xml.components(separatedBy: "<testcase ").count - 1 == 1 + c.checks.count)
        #expect(xml.components(separatedBy: "type=\"conformance\"").count - 1 == c.failedCount)
    }

    @Test(
        "an unknown built-in image and hotplug options with the conformance firmware are bad input (64)",
        arguments: [
            ["--firmware", "builtin:nope"], ["--firmware", "builtin:conformance", "--hot-add", "1"],
            ["--firmware", "builtin:conformance", "--strategy", "all"],
        ])
    func badInput(args: [String]) throws {
        let r = try MiniVMMBinary.run(["run", "--max-cpus", "2"] + args)
        #expect(r.status == 64, "stderr: \(r.stderr)")
    }

    @Test("--firmware builtin runs the default image")
    func builtinNamesTheDefault() throws {
        let r = try MiniVMMBinary.run(["run", "--firmware", "builtin", "--max-cpus", "1", "--quiet"])
        #expect(r.status == 0, "stderr: \(r.stderr)")
        #expect(r.stdout == "PASS\n")
    }
}

/// Line-by-line comparison of a console with the recorded KVM console, allowing only the listed known differences.
enum ConsoleComparison {
    /// `check-name: reason` lines; `#` starts a comment, blank lines are skipped.
    static func knownDifferences(_ lines: [String]) throws -> [String: String] {
        var known: [String: String] = [:]
        for raw in lines {
            let line =
                raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init)?
                .trimmingCharacters(in: .whitespaces) ?? ""
            if line.isEmpty { continue }
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, !parts[0].isEmpty else {
                throw MachineError.invalidConfiguration("known-differences line is not `check: reason`: \(raw)")
            }
            known[parts[0]] = parts[1]
        }
        return known
    }

    /// Every way `got` departs from `expected`: a differing line whose check is not listed, a listed check whose line
    /// matches (the fix landed: shrink the list), and lines missing or extra. The SUMMARY line is derived from the
    /// others: it is compared only when no listed check occurs.
    static func problems(expected: [String], got: [String], known: [String: String]) -> [String] {
        var out: [String] = []
        let listedOccurs = expected.contains { ConformanceResult.parse($0).map { known[$0.name] != nil } ?? false }
        for i in 0..<max(expected.count, got.count) {
            guard i < expected.count else {
                out.append("line \(i + 1): extra line `\(got[i])`")
                continue
            }
            guard i < got.count else {
                out.append("line \(i + 1): missing `\(expected[i])`")
                continue
            }
            let e = expected[i]
            let g = got[i]
            if e.hasPrefix("SUMMARY: ") && listedOccurs {
                if !g.hasPrefix("SUMMARY: ") { out.append("line \(i + 1): expected a SUMMARY line, got `\(g)`") }
                continue
            }
            let ec = ConformanceResult.parse(e)
            let gc = ConformanceResult.parse(g)
            if let ec, let reason = known[ec.name] {
                if gc?.name != ec.name {
                    out.append("line \(i + 1): expected check \(ec.name), got `\(g)`")
                } else if e == g {
                    out.append(
                        "line \(i + 1): \(ec.name) now matches KVM: remove it from the known differences (\(reason))")
                }
                continue
            }
            if e != g { out.append("line \(i + 1): expected `\(e)`, got `\(g)`") }
        }
        return out
    }
}

/// The comparison itself can fail: unlisted differences, listed checks that match, and missing lines are reported.
@Suite struct ConsoleComparisonTests {
    let expected = ["header", "PASS a", "PASS b", "SUMMARY: 2 passed, 0 failed"]

    @Test func identicalConsolesHaveNoProblems() {
        #expect(ConsoleComparison.problems(expected: expected, got: expected, known: [:]).isEmpty)
    }

    @Test func anUnlistedDifferenceIsAProblem() {
        let got = ["header", "PASS a", "FAIL b: expected 0x1 got 0x2", "SUMMARY: 1 passed, 1 failed"]
        let p = ConsoleComparison.problems(expected: expected, got: got, known: [:])
        #expect(p.count == 2)
    }

    @Test func aListedDifferenceIsAllowedAndTheSummaryIsThenDerived() {
        let got = ["header", "PASS a", "FAIL b: expected 0x1 got 0x2", "SUMMARY: 1 passed, 1 failed"]
        #expect(ConsoleComparison.problems(expected: expected, got: got, known: ["b": "gap"]).isEmpty)
    }

    @Test func aListedCheckThatMatchesIsAProblem() {
        let p = ConsoleComparison.problems(expected: expected, got: expected, known: ["b": "gap"])
        #expect(p.count == 1 && p[0].contains("now matches"))
    }

    @Test func missingAndExtraLinesAreProblems() {
        #expect(ConsoleComparison.problems(expected: expected, got: Array(expected.prefix(2)), known: [:]).count == 2)
        #expect(ConsoleComparison.problems(expected: expected, got: expected + ["x"], known: [:]).count == 1)
    }

    @Test func knownDifferencesParse() throws {
        let k = try ConsoleComparison.knownDifferences(["# comment", "", "a.b: the reason # tail", "c: r2"])
        #expect(k == ["a.b": "the reason", "c": "r2"])
        #expect(throws: MachineError.self) { try ConsoleComparison.knownDifferences(["no reason here"]) }
    }

    @Test func consoleParsing() {
        let r = ConformanceResult(
            consoleText: "hello\nPASS x\nFAIL y: expected 0x1 got 0x2\nSUMMARY: 1 passed, 1 failed\n")
        #expect(r.checks.map(\.name) == ["x", "y"])
        #expect(r.passedCount == 1 && r.failedCount == 1)
        #expect(r.summary == "SUMMARY: 1 passed, 1 failed")
        #expect(ConformanceResult(consoleText: "", partialLine: "PASS z").checks.map(\.name) == ["z"])
    }
}
