// SPDX-License-Identifier: MIT
import ArgumentParser
import Foundation

/// `minivmm compare A.json B.json`: the two reports field by field (timings, the backend name and observation
/// costs excluded; see `ReportComparison.excludedPaths`). Exits 1 when any field differs.
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Compare two run reports or attack matrices (--json files) field by field, timings excluded")

    @Argument(help: "The first report (e.g. from --smm kvm).")
    var left: String

    @Argument(help: "The second report (e.g. from --smm emulated).")
    var right: String

    @Option(parsing: .unconditional, help: "Print at most this many differing fields.")
    var limit = 40

    func validate() throws {
        guard limit >= 0 else { throw ValidationError("--limit must be 0 or more (got \(limit))") }
    }

    func run() throws {
        let a = try ReportComparison.loadDocument(path: left)
        let b = try ReportComparison.loadDocument(path: right)
        let outcome = try ReportComparison.compare(a, b)
        let diffs = outcome.differences
        print(
            "compare \(left) (\(a.backend)) with \(right) (\(b.backend)); excluded: \(ReportComparison.excludedPaths.sorted().joined(separator: ", "))"
        )
        for d in diffs.prefix(max(limit, 0)) { print("  \(d)") }
        if diffs.count > limit { print("  … and \(diffs.count - limit) more") }
        if !outcome.unobserved.isEmpty {
            // Skipped, not equal: one backend could not see these (e.g. the kvm backend without an entry probe).
            let fields = Set(outcome.unobserved.map { ReportComparison.pattern($0.path) }).sorted()
            let left = outcome.unobserved.filter { $0.left == "absent" }.count
            print(
                "  unobserved, not compared: \(outcome.unobserved.count) fields (\(fields.joined(separator: ", "))): \(left) absent in \(a.backend), \(outcome.unobserved.count - left) in \(b.backend)"
            )
        }
        print(
            "\(diffs.count) differing fields\(outcome.unobserved.isEmpty ? "" : ", \(outcome.unobserved.count) unobserved")"
        )
        if !diffs.isEmpty { throw ExitCode(1) }
    }
}
