// SPDX-License-Identifier: MIT
import Foundation
import KVMBridge
import MiniVMM
import Testing

/// `xmllint` (Debian's libxml2-utils, which `.ci/run` installs) and the committed JUnit schema.
enum XMLLint {
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"
    static let path: String? = ["/usr/bin/xmllint", "/usr/local/bin/xmllint", "/bin/xmllint"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }
    /// Tests/schemas/junit.xsd, after the Jenkins xUnit plugin's junit-10.xsd (its header cites the source).
    static let schema = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("schemas/junit.xsd").path

    /// Runs `xmllint --noout --schema junit.xsd FILE`: its exit status and what it printed.
    static func validate(_ file: String) throws -> (status: Int32, output: String) {
        let xmllint = try #require(path, "xmllint is missing: apt-get install libxml2-utils")
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("xmllint-\(UUID().uuidString)")
        try Data().write(to: out)
        defer { try? FileManager.default.removeItem(at: out) }
        let handle = try FileHandle(forWritingTo: out)
        defer { try? handle.close() }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: xmllint)
        p.arguments = ["--noout", "--schema", schema, file]
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        p.waitUntilExit()
        return (p.terminationStatus, try String(contentsOf: out, encoding: .utf8))
    }
}

/// The XML writer's escaping, and `--junit`'s path check (no KVM needed).
struct JUnitWriterTests {
    @Test func textAndAttributesAreEscaped() {
        #expect(XMLWriter.escapeText("a<b & c>d \"q\" 'a'") == "a&lt;b &amp; c&gt;d \"q\" 'a'")
        #expect(
            XMLWriter.escapeAttribute("a<b & \"q\" 'a'\n\tx") == "a&lt;b &amp; &quot;q&quot; &apos;a&apos;&#10;&#9;x")
        // Characters XML 1.0 cannot carry become U+FFFD; tab, newline and non-ASCII text stay.
        #expect(XMLWriter.escapeText("x\u{0}y\u{1B}z\u{FFFE}") == "x\u{FFFD}y\u{FFFD}z\u{FFFD}")
        #expect(XMLWriter.escapeText("≠ \t\n→") == "≠ \t\n→")
    }

    @Test func elementsNestAndSelfClose() {
        var w = XMLWriter()
        w.start("a", ["n": "1 & 2"])
        w.element("b")
        w.element("c", ["m": "<"], text: "x > y")
        w.end()
        #expect(
            w.text
                == "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<a n=\"1 &amp; 2\">\n  <b/>\n  <c m=\"&lt;\">x &gt; y</c>\n</a>\n"
        )
    }

    @Test func unwritableJUnitPathIsOneLineBeforeTheRun() throws {
        for (path, why) in [("/nonexistent-dir/r.xml", "No such file or directory"), ("/", "is a directory")] {
            let r = try MiniVMMBinary.run(["run", "--junit", path])
            #expect(r.status == 64)
            #expect(r.stdout.isEmpty)
            #expect(r.stderr == "minivmm: error: cannot write --junit \(path): \(why)\n")
        }
    }
}

/// `minivmm run --junit` on real /dev/kvm, validated against the committed JUnit schema with xmllint. Outside CI
/// the suite skips without /dev/kvm or without xmllint; under CI=true it runs and fails without either.
@Suite(
    .enabled(
        if: XMLLint.isCI || (KVM.isAvailable && XMLLint.path != nil),
        "needs an openable /dev/kvm and xmllint (apt-get install libxml2-utils); CI=true forces these tests"))
struct JUnitTests {
    static func tempFile(_ name: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("minivmm-junit-\(UUID().uuidString)-\(name)").path
    }

    /// Runs minivmm with `--junit`, validates the file against the schema, and returns its text and the exit status.
    func runJUnit(_ args: [String]) throws -> (status: Int32, xml: String, stderr: String) {
        let file = Self.tempFile("r.xml")
        defer { try? FileManager.default.removeItem(atPath: file) }
        let r = try MiniVMMBinary.run(["run", "--quiet"] + args + ["--junit", file])
        let xml = try String(contentsOfFile: file, encoding: .utf8)
        let v = try XMLLint.validate(file)
        #expect(v.status == 0, "xmllint: \(v.output)\n\(xml)")
        #expect(v.output.contains("validates"), "\(v.output)")
        return (r.status, xml, r.stderr)
    }

    @Test func naiveRunPassesAsJUnitWhereItFailsByDesign() throws {
        let r = try runJUnit(["--strategy", "naive", "--max-cpus", "4"])
        #expect(r.status == 1, "naive fails invariant 3, so the run exits 1: \(r.stderr)")
        // Outcome + 4 invariants; invariant 3 failed as the strategy expects, so nothing is a <failure>.
        #expect(r.xml.contains("<testsuites name=\"minivmm\" tests=\"5\" failures=\"0\" errors=\"0\""), "\(r.xml)")
        #expect(r.xml.contains("<testcase name=\"invariant 3 hot-added CPU&apos;s SMIs enter SMRAM\""), "\(r.xml)")
        #expect(r.xml.contains("failed (expected: fails)"))
        #expect(!r.xml.contains("<failure"))
    }

    @Test func failingInvariantIsAFailureWithItsDetail() throws {
        // Strategy A with QEMU's RESET on hot-add: invariants 2 and 3 fail where A expects them to hold.
        let r = try runJUnit(["--strategy", "A", "--hotplug-reset", "--max-cpus", "4"])
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.xml.contains("<failure message=\"invariant 2 "), "\(r.xml)")
        #expect(r.xml.contains("held (expected: holds)"))
        #expect(r.xml.contains("failures=\"0\"") == false)
    }

    @Test func matrixHasACaseForEveryCell() throws {
        let r = try runJUnit(["--strategy", "all", "--attacks", "plant,dma", "--max-cpus", "4"])
        #expect(r.status == 0, "\(r.stderr)")
        // Rows A, A + --hotplug-reset, B, C, N; each: outcome + 4 invariants + its cells (2, or plant alone).
        let cases = r.xml.components(separatedBy: "<testcase ").count - 1
        #expect(cases == 4 * (1 + 4 + 2) + (1 + 4 + 1), "\(r.xml)")
        #expect(!r.xml.contains("<failure"), "\(r.xml)")
        #expect(r.xml.contains("<testcase name=\"attack plant\" classname=\"minivmm.N.naive\""))
        #expect(r.xml.contains("compromised (expected: compromised)"))
    }
}
