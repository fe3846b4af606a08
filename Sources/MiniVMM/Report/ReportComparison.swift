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
    public static let excludedPaths: Set<String> = [
        "backend", "timings", "counters.exits", "counters.extraIoctls", "cpuDumps",
    ]

    /// The differing fields of `a` and `b`, in path order.
    public static func differences(_ a: RunReport, _ b: RunReport) throws -> [FieldDifference] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        let ta = try JSONSerialization.jsonObject(with: e.encode(a), options: [.fragmentsAllowed])
        let tb = try JSONSerialization.jsonObject(with: e.encode(b), options: [.fragmentsAllowed])
        var out: [FieldDifference] = []
        walk(ta, tb, path: "", into: &out)
        return out
    }

    /// Loads a report written by `minivmm run --json`.
    public static func load(path: String) throws -> RunReport {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw MachineError.invalidConfiguration("cannot read report \(path)")
        }
        do {
            return try JSONDecoder().decode(RunReport.self, from: data)
        } catch {
            throw MachineError.invalidConfiguration(
                "\(path) is not a minivmm run report (\(error.localizedDescription))")
        }
    }

    private static func walk(_ a: Any?, _ b: Any?, path: String, into out: inout [FieldDifference]) {
        if excludedPaths.contains(path) { return }
        switch (a, b) {
        case (let da as [String: Any], let db as [String: Any]):
            for key in Set(da.keys).union(db.keys).sorted() {
                walk(da[key], db[key], path: path.isEmpty ? key : "\(path).\(key)", into: &out)
            }
        case (let la as [Any], let lb as [Any]):
            if la.count != lb.count {
                out.append(FieldDifference(path: "\(path).count", left: "\(la.count)", right: "\(lb.count)"))
            }
            for i in 0..<max(la.count, lb.count) {
                walk(i < la.count ? la[i] : nil, i < lb.count ? lb[i] : nil, path: "\(path)[\(i)]", into: &out)
            }
        default:
            let sa = text(a)
            let sb = text(b)
            if sa != sb { out.append(FieldDifference(path: path, left: sa, right: sb)) }
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
