// SPDX-License-Identifier: MIT
import Foundation

/// A small XML writer: elements with attributes and text, escaped for XML 1.0. No dependency, no DOM.
///
/// Text and attribute values are escaped (`&`, `<`, `>`, `"`, `'`); characters XML 1.0 cannot carry (C0 controls
/// other than tab, newline and carriage return, lone surrogates, U+FFFE/U+FFFF) become U+FFFD, so any string a run
/// produces (firmware output included) yields well-formed XML.
public struct XMLWriter: Sendable {
    /// The document so far.
    public private(set) var text = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    private var open: [String] = []

    public init() {}

    /// `s` as XML character data.
    public static func escapeText(_ s: String) -> String { escape(s, attribute: false) }

    /// `s` as an attribute value (for double quotes); tab, newline and carriage return are kept as references so
    /// attribute-value normalisation does not turn them into spaces.
    public static func escapeAttribute(_ s: String) -> String { escape(s, attribute: true) }

    private static func escape(_ s: String, attribute: Bool) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for u in s.unicodeScalars {
            switch u {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += attribute ? "&quot;" : "\""
            case "'": out += attribute ? "&apos;" : "'"
            case "\t": out += attribute ? "&#9;" : "\t"
            case "\n": out += attribute ? "&#10;" : "\n"
            case "\r": out += "&#13;"
            default:
                let v = u.value
                let allowed = (v >= 0x20 && v <= 0xD7FF) || (v >= 0xE000 && v <= 0xFFFD) || v >= 0x10000
                out.unicodeScalars.append(allowed ? u : "\u{FFFD}")
            }
        }
        return out
    }

    private static func attributes(_ attrs: KeyValuePairs<String, String>) -> String {
        attrs.map { " \($0.key)=\"\(escapeAttribute($0.value))\"" }.joined()
    }

    private var indent: String { String(repeating: "  ", count: open.count) }

    /// Opens `<name attrs>`; close it with `end()`.
    public mutating func start(_ name: String, _ attrs: KeyValuePairs<String, String> = [:]) {
        text += "\(indent)<\(name)\(Self.attributes(attrs))>\n"
        open.append(name)
    }

    /// Closes the innermost open element.
    public mutating func end() {
        let name = open.removeLast()
        text += "\(indent)</\(name)>\n"
    }

    /// `<name attrs>text</name>`, or `<name attrs/>` without text.
    public mutating func element(_ name: String, _ attrs: KeyValuePairs<String, String> = [:], text body: String? = nil)
    {
        if let body {
            text += "\(indent)<\(name)\(Self.attributes(attrs))>\(Self.escapeText(body))</\(name)>\n"
        } else {
            text += "\(indent)<\(name)\(Self.attributes(attrs))/>\n"
        }
    }
}

/// `minivmm run --junit FILE`: a run (or the attack matrix) as JUnit XML for CI test reporters.
///
/// One test case per invariant, per conformance check and per attack verdict, plus one for the run's outcome; under
/// the matrix one test suite per row and one test case per cell. A case fails (`<failure>`, the detail or evidence as
/// its message) when it does not show what the strategy table expects: an invariant the strategy expects to fail
/// (the naive baseline's invariant 3) passes when it failed. `--json` stays the full report.
public enum JUnitReport {
    /// One test case before it is written.
    struct Case {
        var name: String
        var classname: String
        /// The failure message and type, nil when the case passed.
        var failure: (message: String, type: String)?
        var output: String?
    }

    static func seconds(_ t: Double?) -> String { String(format: "%.3f", max(0, t ?? 0)) }

    static func outcomeCase(_ outcome: RunOutcome, _ detail: String, classname: String) -> Case {
        Case(
            name: "run outcome", classname: classname,
            failure: outcome == .completed ? nil : ("run \(outcome.rawValue): \(detail)", "outcome"),
            output: "\(outcome.rawValue): \(detail)")
    }

    static func invariantCase(_ inv: InvariantResult, classname: String) -> Case {
        let observed = inv.passed ? "held" : "failed"
        let failure: (String, String)? =
            inv.asExpected
            ? nil
            : (
                "invariant \(inv.id) \(inv.name) \(observed) (expected: \(inv.expected.rawValue)): \(inv.detail)",
                "invariant"
            )
        return Case(
            name: "invariant \(inv.id) \(inv.name)", classname: classname, failure: failure,
            output: "\(observed) (expected: \(inv.expected.rawValue)): \(inv.detail)")
    }

    static func attackCase(
        _ attack: Attack, verdict: AttackVerdict, expected: AttackVerdict, evidence: String, outcome: RunOutcome,
        classname: String
    ) -> Case {
        let note = outcome == .completed ? "" : " (run \(outcome.rawValue))"
        let line = "\(verdict.rawValue)\(note) (expected: \(expected.rawValue)): \(evidence)"
        return Case(
            name: "attack \(attack.rawValue)", classname: classname,
            failure: verdict == expected ? nil : ("attack \(attack.rawValue): \(line)", "attack"), output: line)
    }

    static func write(
        suite name: String, time: Double?, properties: KeyValuePairs<String, String>, cases: [Case],
        to w: inout XMLWriter
    ) {
        let failures = cases.filter { $0.failure != nil }.count
        w.start(
            "testsuite",
            [
                "name": name, "tests": String(cases.count), "failures": String(failures), "errors": "0", "skipped": "0",
                "time": seconds(time),
            ])
        w.start("properties")
        for (k, v) in properties { w.element("property", ["name": k, "value": v]) }
        w.end()
        for c in cases {
            w.start("testcase", ["name": c.name, "classname": c.classname, "time": "0.000"])
            if let f = c.failure { w.element("failure", ["message": f.message, "type": f.type], text: f.message) }
            if let o = c.output { w.element("system-out", text: o) }
            w.end()
        }
        w.end()
    }

    /// The classname of a strategy's cases: `minivmm.<letter>.<strategy>`, with `.hotplug-reset` for that row.
    static func classname(_ s: Strategy, hotplugReset: Bool) -> String {
        "minivmm.\(s.spec.letter).\(s.rawValue)\(hotplugReset ? ".hotplug-reset" : "")"
    }

    /// A single run: its outcome, each invariant and the attack verdict, if any.
    public static func xml(_ r: RunReport) -> String {
        let cls = classname(r.strategy, hotplugReset: r.hotplugReset)
        var cases = [outcomeCase(r.outcome, r.outcomeDetail, classname: cls)]
        cases += r.invariants.map { invariantCase($0, classname: cls) }
        // The conformance firmware's own checks, one case each (the line it printed as the output or failure).
        cases += (r.conformance?.checks ?? []).map {
            Case(
                name: "conformance \($0.name)", classname: "minivmm.conformance",
                failure: $0.passed ? nil : ($0.line, "conformance"), output: $0.line)
        }
        if let a = r.attack {
            cases.append(
                attackCase(
                    a.attack, verdict: a.verdict,
                    expected: r.strategy.spec.expectedVerdict(a.attack, hotplugReset: r.hotplugReset),
                    evidence: a.evidence, outcome: r.outcome, classname: cls))
        }
        var w = XMLWriter()
        let failures = cases.filter { $0.failure != nil }.count
        w.start(
            "testsuites",
            [
                "name": "minivmm", "tests": String(cases.count), "failures": String(failures), "errors": "0",
                "time": seconds(r.timings.total),
            ])
        write(
            suite: r.conformance == nil
                ? "minivmm run: \(r.strategy.spec.letter) \(r.strategy.rawValue)" : "minivmm run: conformance firmware",
            time: r.timings.total,
            properties: [
                "backend": r.backend, "maxCPUs": String(r.maxCPUs), "bootCPUs": String(r.bootCPUs),
                "hotAdd": r.hotAdd.map(String.init).joined(separator: ","), "hotplugReset": String(r.hotplugReset),
            ], cases: cases, to: &w)
        w.end()
        return w.text
    }

    /// The attack matrix: one suite per row, with its outcome, invariants and one case per cell.
    public static func xml(_ m: AttackMatrix) -> String {
        var suites: [(MatrixRow, [Case])] = []
        for row in m.rows {
            let cls = classname(row.strategy, hotplugReset: row.hotplugReset)
            var cases = [outcomeCase(row.outcome, row.outcomeDetail, classname: cls)]
            cases += row.invariants.map { invariantCase($0, classname: cls) }
            cases += row.attacks.map {
                attackCase(
                    $0.attack, verdict: $0.verdict, expected: $0.expected, evidence: $0.evidence, outcome: $0.outcome,
                    classname: cls)
            }
            suites.append((row, cases))
        }
        let tests = suites.map(\.1.count).reduce(0, +)
        let failures = suites.map { $0.1.filter { $0.failure != nil }.count }.reduce(0, +)
        var w = XMLWriter()
        w.start(
            "testsuites",
            ["name": "minivmm attack matrix", "tests": String(tests), "failures": String(failures), "errors": "0"])
        for (row, cases) in suites {
            write(
                suite: "minivmm matrix: \(row.label)", time: (row.bootSeconds ?? 0) + (row.hotAddSeconds ?? 0),
                properties: [
                    "backend": m.backend, "maxCPUs": String(m.maxCPUs), "bootCPUs": String(m.bootCPUs),
                    "hotAdd": m.hotAdd.map(String.init).joined(separator: ","),
                    "hotplugReset": String(row.hotplugReset),
                ], cases: cases, to: &w)
        }
        w.end()
        return w.text
    }
}
