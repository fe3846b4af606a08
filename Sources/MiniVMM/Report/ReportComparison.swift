// SPDX-License-Identifier: MIT
import Foundation

/// One field whose value differs between two reports, by its JSON path (e.g. `cpus[2].smiEntries[1].savedRIP`).
public struct FieldDifference: Codable, Sendable, Equatable, CustomStringConvertible {
    public var path: String
    /// The JSON text of each side (`absent` when the field is missing on that side).
    public var left: String
    public var right: String

    public var description: String { "\(path): \(left) ≠ \(right)" }
}

/// Field-by-field comparison of two run reports (DESIGN §2: the same firmware and scenario must give the same
/// report on both SMM backends). Compared on the reports' JSON form, so every field a report has takes part,
/// including ones added later, except those that legitimately depend on the backend or the host:
public enum ReportComparison {
    /// Fields excluded from the comparison, as JSON paths: the backend's name, wall-clock timings, and the
    /// costs of observation (exits and ioctls differ by design: the emulated backend single-steps every SMM
    /// instruction in userspace, the kvm backend lets KVM run them), and failure dumps (raw exit records).
    /// `firmwareReports` is the firmware's own log (never an input to a check), and its idle reports depend on when
    /// the controller's SCIs happen to arrive. Array indexes are written `[]` here: `rows[].bootSeconds` excludes that
    /// field of every row (attack matrices). A `--stock` run's findings are compared through their fields; the times at
    /// which windows closed and locked are wall-clock timings, and the finding lines (which quote them) are the same
    /// fields in words.
    public static let excludedPaths: Set<String> = [
        "backend", "timings", "host", "counters.exits", "counters.extraIoctls", "cpuDumps", "firmwareReports",
        "rows[].bootSeconds", "rows[].hotAddSeconds", "findings.lines", "findings.windows[].firstClosedAt",
        "findings.windows[].lockedAt",
    ]

    /// Fields a backend may report as unobserved (absent): the saved CS:RIP of an SMI whose entry the kvm backend
    /// did not see itself (no entry probe, no hardware breakpoint honoured; `SMIEntryRecord.savedCS`). When one
    /// side has such a field and the other has not, the field is skipped and listed as unobserved; when both have
    /// it, it is compared as any other field (and a field absent on both sides is equal).
    public static let observableOnlyAtEntry: Set<String> = Set(
        SMIEntryRecord.fieldsObservableOnlyAtEntry.map { "cpus[].smiEntries[].\($0)" })

    /// The outcome of a comparison: the differing fields, and the fields skipped because one side did not
    /// observe them (`observableOnlyAtEntry`; `absent` on that side).
    public struct Outcome: Sendable, Equatable {
        public var differences: [FieldDifference] = []
        public var unobserved: [FieldDifference] = []
    }

    /// The differing fields of `a` and `b`, in path order.
    public static func differences(_ a: RunReport, _ b: RunReport) throws -> [FieldDifference] {
        try compare(encoded(a), encoded(b)).differences
    }

    /// `differences(a, b)` with the fields skipped as unobserved.
    public static func compare(_ a: RunReport, _ b: RunReport) throws -> Outcome {
        try compare(encoded(a), encoded(b))
    }

    /// The differing fields of two attack matrices (`minivmm run --strategy all --attack --json`).
    public static func differences(_ a: AttackMatrix, _ b: AttackMatrix) throws -> [FieldDifference] {
        try compare(encoded(a), encoded(b)).differences
    }

    private static func encoded<T: Encodable>(_ v: T) throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return try e.encode(v)
    }

    private static func compare(_ a: Data, _ b: Data) throws -> Outcome {
        let ta = try JSONSerialization.jsonObject(with: a, options: [.fragmentsAllowed])
        let tb = try JSONSerialization.jsonObject(with: b, options: [.fragmentsAllowed])
        var out = Outcome()
        walk(ta, tb, path: "", into: &out)
        return out
    }

    /// What a `--json` file holds.
    public enum Document {
        case report(RunReport)
        case matrix(AttackMatrix)

        public var backend: String {
            switch self {
            case .report(let r): r.backend
            case .matrix(let m): m.backend
            }
        }
    }

    /// Loads a run report or an attack matrix written by `minivmm run --json`.
    public static func loadDocument(path: String) throws -> Document {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MachineError.invalidConfiguration("cannot read report \(path)")
        }
        if let m = try? JSONDecoder().decode(AttackMatrix.self, from: data) { return .matrix(m) }
        return .report(try load(path: path))
    }

    /// The differing fields of two documents of the same kind.
    public static func differences(_ a: Document, _ b: Document) throws -> [FieldDifference] {
        try compare(a, b).differences
    }

    /// The differing and the unobserved fields of two documents of the same kind.
    public static func compare(_ a: Document, _ b: Document) throws -> Outcome {
        switch (a, b) {
        case (.report(let x), .report(let y)): return try compare(encoded(x), encoded(y))
        case (.matrix(let x), .matrix(let y)): return try compare(encoded(x), encoded(y))
        default: throw MachineError.invalidConfiguration("cannot compare a run report with an attack matrix")
        }
    }

    /// Loads a report written by `minivmm run --json`.
    public static func load(path: String) throws -> RunReport {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MachineError.invalidConfiguration("cannot read report \(path)")
        }
        do {
            return try JSONDecoder().decode(RunReport.self, from: data)
        } catch {
            throw MachineError.invalidConfiguration("\(path) is not a minivmm run report: \(describe(error))")
        }
    }

    /// A decoding error as one line naming the field (Foundation's own text names none).
    static func describe(_ error: any Error) -> String {
        func path(_ c: DecodingError.Context) -> String {
            let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return p.hasPrefix(".") ? String(p.dropFirst()) : p
        }
        switch error {
        case DecodingError.keyNotFound(let key, let c):
            let at = path(c)
            return "missing field \(at.isEmpty ? "" : at + ".")\(key.stringValue)"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "field \(path(c)) has the wrong type"
        case DecodingError.dataCorrupted(let c):
            return c.codingPath.isEmpty ? "not JSON" : "field \(path(c)) holds an invalid value"
        default:
            return "\(error)"
        }
    }

    /// `path` with every array index written `[]`.
    static func pattern(_ path: String) -> String {
        path.replacingOccurrences(of: "\\[[0-9]+\\]", with: "[]", options: .regularExpression)
    }

    private static func walk(_ a: Any?, _ b: Any?, path: String, into out: inout Outcome) {
        if excludedPaths.contains(path) || excludedPaths.contains(pattern(path)) { return }
        if (a == nil) != (b == nil) && observableOnlyAtEntry.contains(pattern(path)) {
            out.unobserved.append(FieldDifference(path: path, left: text(a), right: text(b)))
            return
        }
        switch (a, b) {
        case (let da as [String: Any], let db as [String: Any]):
            for key in Set(da.keys).union(db.keys).sorted() {
                walk(da[key], db[key], path: path.isEmpty ? key : "\(path).\(key)", into: &out)
            }
        case (let la as [Any], let lb as [Any]):
            if la.count != lb.count {
                out.differences.append(
                    FieldDifference(path: "\(path).count", left: "\(la.count)", right: "\(lb.count)"))
            }
            for i in 0..<max(la.count, lb.count) {
                walk(i < la.count ? la[i] : nil, i < lb.count ? lb[i] : nil, path: "\(path)[\(i)]", into: &out)
            }
        default:
            let sa = text(a)
            let sb = text(b)
            if sa != sb { out.differences.append(FieldDifference(path: path, left: sa, right: sb)) }
        }
    }

    /// A leaf value as JSON text (`absent` for a missing field).
    private static func text(_ v: Any?) -> String {
        guard let v else { return "absent" }
        if v is NSNull { return "null" }
        if let s = v as? String { return "\"\(s)\"" }
        if let data = try? JSONSerialization.data(withJSONObject: v, options: [.fragmentsAllowed, .sortedKeys]),
            let s = String(data: data, encoding: .utf8)
        {
            return s
        }
        return "\(v)"
    }
}
