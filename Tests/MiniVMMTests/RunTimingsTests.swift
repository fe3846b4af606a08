// SPDX-License-Identifier: MIT
import Testing

@testable import MiniVMM

/// The phase list that cuts a run's wall time into named, consecutive pieces.
@Suite struct RunTimingsTests {
    static let marks: [String: Double] = [
        "vcpus-created": 0.2, "boot-start": 0.25, "aps-online": 0.5, "smram-locked": 1.5, "boot-done": 1.5,
        "hot-remove-done": 1.6, "hot-add-done": 1.7,
    ]

    @Test func phasesCoverTheWholeRun() {
        let p = RunTimings.phases(
            startUp: 0.01, marks: Self.marks, vcpusCreated: 0.2, end: 1.8, teardown: 0.1)
        #expect(
            p.map(\.name) == [
                "start-up", "machine set-up and vCPU creation", "firmware reset to boot start", "AP bring-up",
                "relocation", "boot finish", "hot-remove", "hot-add", "finish", "teardown",
            ])
        let sum = p.reduce(0) { $0 + $1.seconds }
        #expect(abs(sum - (0.01 + 1.8 + 0.1)) < 1e-9)
        #expect(abs(p[4].seconds - 1.0) < 1e-9)
    }

    @Test func aMissingMarkMergesItsPhaseIntoTheNext() {
        var m = Self.marks
        m["aps-online"] = nil
        let p = RunTimings.phases(startUp: 0, marks: m, vcpusCreated: 0.2, end: 1.8, teardown: 0)
        #expect(p.contains { $0.name == "AP bring-up + relocation" && abs($0.seconds - 1.25) < 1e-9 })
        #expect(abs(p.reduce(0) { $0 + $1.seconds } - 1.8) < 1e-9)
    }

    @Test func marksOutOfOrderOrPastTheEndAreIgnored() {
        // A firmware's reports are not trusted: a "relocation done" before "APs online", or after the run's end.
        let m: [String: Double] = ["vcpus-created": 0.1, "aps-online": 0.9, "smram-locked": 0.5, "boot-done": 7]
        let p = RunTimings.phases(startUp: 0, marks: m, vcpusCreated: 0.1, end: 1.0, teardown: 0.05)
        #expect(p.allSatisfy { $0.seconds >= 0 })
        #expect(abs(p.reduce(0) { $0 + $1.seconds } - 1.05) < 1e-9)
        #expect(p.map(\.name).last == "teardown")
    }
}
