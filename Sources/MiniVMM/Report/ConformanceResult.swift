// SPDX-License-Identifier: MIT

/// What the conformance firmware (`--firmware builtin:conformance`) printed: every console line, in order, and its
/// `PASS name` / `FAIL name: expected X got Y` verdicts. The firmware judges itself from inside the guest; the VMM
/// only records what it said, so `compare` sees every line and a difference between backends is a differing field.
public struct ConformanceResult: Codable, Sendable, Equatable {
    /// One check as the firmware printed it.
    public struct Check: Codable, Sendable, Equatable {
        public var name: String
        public var passed: Bool
        /// The whole line (with the expected and observed values when it failed).
        public var line: String
    }

    /// The console, line by line (at most `maxLines`; `droppedLines` counts the rest).
    public var console: [String]
    public var checks: [Check]
    /// The firmware's `SUMMARY:` line (nil when the run ended before it).
    public var summary: String?
    public var droppedLines = 0

    /// A firmware can print without bound: the report keeps this many lines.
    public static let maxLines = 2000

    public var passedCount: Int { checks.filter(\.passed).count }
    public var failedCount: Int { checks.count - passedCount }

    /// Parses the console text (complete lines) and the unterminated last line, if any.
    public init(consoleText: String, partialLine: String = "") {
        var lines = consoleText.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        if !partialLine.isEmpty { lines.append(partialLine) }
        if lines.count > Self.maxLines {
            droppedLines = lines.count - Self.maxLines
            lines = Array(lines.prefix(Self.maxLines))
        }
        console = lines
        checks = lines.compactMap(Self.parse)
        summary = lines.last { $0.hasPrefix("SUMMARY:") }
    }

    /// `PASS name` or `FAIL name: ...` as a check; any other line is not one.
    static func parse(_ line: String) -> Check? {
        if line.hasPrefix("PASS ") {
            let name = String(line.dropFirst(5))
            return name.isEmpty ? nil : Check(name: name, passed: true, line: line)
        }
        if line.hasPrefix("FAIL ") {
            let rest = line.dropFirst(5)
            let name = rest.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            return name.isEmpty ? nil : Check(name: name, passed: false, line: line)
        }
        return nil
    }
}
